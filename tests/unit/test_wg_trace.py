"""The core's half of ``minivpn trace``: counters per peer, trace events as values, diagnoses.

In-memory cores (tests/helpers/wgnet.py), nothing mocked.  What is checked:

* counters: each handshake message and keepalive is counted on the side that sent it and on
  the side that received it, drops are counted per peer as well as per device, and the data
  bytes are the byte counters minus exactly those messages;
* a tracer changes nothing the core does (the same results, datagrams and counters, traced or
  not, for any sequence of datagrams), and costs nothing while detached (``packet_tracer`` is
  None, and the path never calls it);
* the events of each step, in the order of the path, for a packet out, a datagram in, a
  handshake, the timers and each drop that concerns the packet in hand;
* bounds: a full tracer makes no events for a packet and counts it lost;
* ``event_json`` makes plain JSON of every event;
* the likely cause of a failed handshake, in each case :mod:`minivpn.wireguard.diagnosis` tells
  apart.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.wgnet import (
    A_ADDRESS,
    A_ENDPOINT,
    B_ADDRESS,
    B_ENDPOINT,
    C_ADDRESS,
    Net,
    a_to_b,
    b_to_a,
    connect,
    established,
    ipv4_packet,
    pair,
    receive_datagram,
)

from minivpn.wireguard.constants import MAX_TIMER_HANDSHAKES
from minivpn.wireguard.counters import KEEPALIVE_SIZE, PeerCounters
from minivpn.wireguard.diagnosis import handshake_failure_cause, peer_failure_cause
from minivpn.wireguard.events import DropReason
from minivpn.wireguard.messages import INITIATION_SIZE, RESPONSE_SIZE
from minivpn.wireguard.trace import (
    DatagramReceived,
    DataSent,
    Decrypted,
    Drop,
    HandshakeFailed,
    HandshakeReceived,
    HandshakeSent,
    KeepaliveReceived,
    PacketQueued,
    ReplayChecked,
    Routed,
    SessionEstablished,
    SourceChecked,
    TimerFired,
    Tracer,
    TunRead,
    TunWrite,
    event_json,
    message_kind,
)


def kinds(tracer: Tracer) -> list[type]:
    return [type(event) for event in tracer.events]


def traced(node_core: object, **kwargs: object) -> Tracer:
    tracer = Tracer(**kwargs)  # type: ignore[arg-type]
    node_core.attach_tracer(tracer)  # type: ignore[attr-defined]
    return tracer


# --- counters -------------------------------------------------------------------------------------


def test_a_handshake_and_data_are_counted_on_both_sides() -> None:
    _net, a, b = established()
    of_b, of_a = a.peer(b).counters, b.peer(a).counters
    assert (of_b.initiations_sent, of_b.responses_received) == (1, 1)
    assert (of_a.initiations_received, of_a.responses_sent) == (1, 1)
    assert (of_b.initiations_received, of_b.responses_sent, of_a.initiations_sent) == (0, 0, 0)
    # The data exactly: 5 bytes of "hello" in a 20-byte IPv4 header, padded to 32, + 32.
    assert of_a.data_bytes(b.peer(a).rx_bytes, b.peer(a).tx_bytes) == (32 + 32, 0)
    assert of_b.data_bytes(a.peer(b).rx_bytes, a.peer(b).tx_bytes) == (0, 32 + 32)
    assert a.peer(b).tx_bytes == INITIATION_SIZE + 64
    assert b.peer(a).tx_bytes == RESPONSE_SIZE


def test_keepalives_are_counted_and_not_data() -> None:
    net, a, b = pair()
    net.send(a, a_to_b())
    net.advance(11)  # B received data and sent nothing for 10 s: a keepalive
    of_a = b.peer(a).counters
    assert of_a.keepalives_sent == 1
    assert a.peer(b).counters.keepalives_received == 1
    assert a.peer(b).counters.data_bytes(a.peer(b).rx_bytes, 0)[0] == 0
    assert a.peer(b).rx_bytes == RESPONSE_SIZE + KEEPALIVE_SIZE


def test_drops_are_counted_per_peer_and_per_device() -> None:
    net, a, b = established()
    net.hold = True
    net.send(a, a_to_b())
    [datagram] = net.take_held()
    net.hold = False
    net.deliver(datagram)
    net.deliver(datagram)  # a replay
    net.send(a, ipv4_packet(A_ADDRESS, C_ADDRESS, b"x"))  # no route
    assert b.peer(a).counters.drops == {DropReason.REPLAYED_COUNTER: 1}
    assert b.core.drops[DropReason.REPLAYED_COUNTER] == 1
    assert a.core.drops[DropReason.NO_ROUTE] == 1
    assert a.peer(b).counters.drops == {}  # no peer concerned


def test_a_runtime_drop_is_counted_under_its_peer() -> None:
    _net, a, b = established()
    a.core.note_drop(DropReason.PACKET_TOO_BIG, b.public_key)
    a.core.note_drop(DropReason.SEND_FAILED)
    assert a.peer(b).counters.drops == {DropReason.PACKET_TOO_BIG: 1}
    assert a.core.drops[DropReason.SEND_FAILED] == 1


@given(
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.lists(st.integers(0, 1000), min_size=6, max_size=6),
)
def test_data_bytes_are_the_byte_counters_without_handshakes_and_keepalives(
    rx: int, tx: int, counts: list[int]
) -> None:
    counters = PeerCounters()
    (
        counters.initiations_received,
        counters.responses_received,
        counters.keepalives_received,
        counters.initiations_sent,
        counters.responses_sent,
        counters.keepalives_sent,
    ) = counts
    received = rx - counts[0] * INITIATION_SIZE - counts[1] * RESPONSE_SIZE - counts[2] * 32
    sent = tx - counts[3] * INITIATION_SIZE - counts[4] * RESPONSE_SIZE - counts[5] * 32
    assert counters.data_bytes(rx, tx) == (max(received, 0), max(sent, 0))
    shown = counters.as_dict(rx, tx)
    assert (shown["rx_data_bytes"], shown["tx_data_bytes"]) == counters.data_bytes(rx, tx)
    assert shown["initiations_sent"] == counts[3]


# --- no cost, no change ---------------------------------------------------------------------------


def test_without_a_tracer_the_path_holds_nothing_to_call() -> None:
    net, a, _b = established()
    assert a.core.tracer is None
    assert a.core.packet_tracer is None
    tracer = traced(a.core)
    assert a.core.packet_tracer is tracer
    net.send(a, a_to_b())
    assert a.core.packet_tracer is tracer  # put back after each traced call
    a.core.attach_tracer(None)
    assert a.core.tracer is None
    assert a.core.packet_tracer is None
    before = len(tracer.events)
    net.send(a, a_to_b())
    assert len(tracer.events) == before


def _script(net: Net, a: object, b: object, steps: list[tuple[str, bytes]]) -> list[object]:
    """Run *steps* on a pair, recording everything the cores did."""
    from tests.helpers.wgnet import Node, send_packet

    from minivpn.wireguard.events import SendDatagram

    assert isinstance(a, Node)
    assert isinstance(b, Node)
    seen: list[object] = []
    for what, data in steps:
        if what == "a_sends":
            seen.append(send_packet(a.core, a_to_b(data), net.now))
        elif what == "b_sends":
            seen.append(send_packet(b.core, b_to_a(data), net.now))
        elif what == "garbage_to_b":
            seen.append(receive_datagram(b.core, data, A_ENDPOINT, net.now))
        else:
            net.advance(len(data))
            continue
        for output in list(seen[-1]):  # type: ignore[attr-defined]
            if isinstance(output, SendDatagram):  # delivered once, to whom it is for
                target, source = (
                    (b, A_ENDPOINT) if output.endpoint == B_ENDPOINT else (a, B_ENDPOINT)
                )
                seen.append(receive_datagram(target.core, output.data, source, net.now))
    seen.append(
        (
            {r.value: n for r, n in a.core.drops.items() if n},
            {r.value: n for r, n in b.core.drops.items() if n},
            a.peer(b).counters.as_dict(a.peer(b).rx_bytes, a.peer(b).tx_bytes),
            b.peer(a).counters.as_dict(b.peer(a).rx_bytes, b.peer(a).tx_bytes),
        )
    )
    return seen


STEPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["a_sends", "b_sends"]), st.binary(max_size=40)),
        st.tuples(st.just("garbage_to_b"), st.binary(min_size=1, max_size=200)),
        st.tuples(st.just("wait"), st.binary(max_size=30)),  # its length: seconds
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_tracing_changes_nothing_the_core_does(steps: list[tuple[str, bytes]]) -> None:
    plain = _script(*pair(seed=7), steps)
    net, a, b = pair(seed=7)
    tracers = [traced(a.core), traced(b.core, packets=False)]
    assert _script(net, a, b, steps) == plain
    for tracer in tracers:
        for event in tracer.events:
            json.dumps(event_json(event))


# --- the events of each step ----------------------------------------------------------------------


def test_the_first_packet_starts_a_handshake_and_waits_for_it() -> None:
    net, a, b = pair()
    tracer_a, tracer_b = traced(a.core), traced(b.core)
    net.send(a, a_to_b(b"first"))
    assert kinds(tracer_a) == [
        TunRead,
        Routed,
        HandshakeSent,
        PacketQueued,
        DatagramReceived,  # the response
        HandshakeReceived,
        SessionEstablished,
        DataSent,  # the packet that waited
    ]
    read, routed, initiation, queued, _, response, session, sent = tracer_a.events
    assert isinstance(read, TunRead)
    assert read.peer == b.public_key
    assert read.length == 25
    assert isinstance(routed, Routed)
    assert routed.destination == B_ADDRESS
    assert str(routed.prefix) == "10.0.0.2/32"
    assert isinstance(initiation, HandshakeSent)
    assert (initiation.kind, initiation.endpoint, initiation.why) == (
        "initiation",
        B_ENDPOINT,
        "no session yet",
    )
    assert isinstance(queued, PacketQueued)
    assert (queued.waiting, queued.session) == (1, "none")
    assert isinstance(response, HandshakeReceived)
    assert response.outcome == "accepted"
    assert session == SessionEstablished(net.now, b.public_key, True)
    assert isinstance(sent, DataSent)
    assert sent.counter == 0
    assert not sent.keepalive
    # B: the initiation answered, then the data message that confirms the session.
    assert kinds(tracer_b) == [
        DatagramReceived,
        HandshakeReceived,
        HandshakeSent,
        DatagramReceived,
        SessionEstablished,
        Decrypted,
        ReplayChecked,
        SourceChecked,
        TunWrite,
    ]
    answered = tracer_b.events[2]
    assert isinstance(answered, HandshakeSent)
    assert answered.kind == "response"
    assert answered.peer == a.public_key
    assert answered.endpoint == A_ENDPOINT
    written = tracer_b.events[-1]
    assert isinstance(written, TunWrite)
    assert written.head == a_to_b(b"first")


def test_a_data_message_in_and_out() -> None:
    net, a, b = established()
    tracer_a, tracer_b = traced(a.core), traced(b.core)
    net.send(a, a_to_b())
    assert kinds(tracer_a) == [TunRead, Routed, DataSent]
    sent = tracer_a.events[2]
    assert isinstance(sent, DataSent)
    received = tracer_b.events[0]
    assert isinstance(received, DatagramReceived)
    assert (received.kind, received.peer, received.size) == (4, a.public_key, sent.size)
    assert (received.receiver_index, received.counter) == (sent.receiver_index, sent.counter)
    checked = tracer_b.events[3]
    assert isinstance(checked, SourceChecked)
    assert checked.source == A_ADDRESS


def test_a_keepalive_in() -> None:
    net, a, _b = pair()
    net.send(a, a_to_b())
    tracer = traced(a.core)
    net.advance(11)
    assert kinds(tracer) == [DatagramReceived, Decrypted, ReplayChecked, KeepaliveReceived]


@pytest.mark.parametrize(
    ("drop", "reason", "before"),
    [
        ("replay", DropReason.REPLAYED_COUNTER, [DatagramReceived, Decrypted]),
        ("source", DropReason.DISALLOWED_SOURCE, [DatagramReceived, Decrypted, ReplayChecked]),
        ("tampered", DropReason.DECRYPTION_FAILED, [DatagramReceived]),
        ("index", DropReason.UNKNOWN_INDEX, [DatagramReceived]),
        ("garbage", DropReason.MALFORMED, [DatagramReceived]),
    ],
)
def test_each_drop_of_a_datagram_says_how_far_it_got(
    drop: str, reason: DropReason, before: list[type]
) -> None:
    net, a, b = established()
    net.hold = True
    packet = a_to_b() if drop != "source" else ipv4_packet(C_ADDRESS, B_ADDRESS, b"spoofed")
    net.send(a, packet)
    [datagram] = net.take_held()
    net.hold = False
    data = bytearray(datagram.data)
    if drop == "replay":
        net.deliver(datagram)
    elif drop == "tampered":
        data[-1] ^= 1
    elif drop == "index":
        data[4:8] = bytes(4) if data[4:8] != bytes(4) else b"\1\0\0\0"
    elif drop == "garbage":
        data = bytearray(b"\x09garbage")
    tracer = traced(b.core)
    receive_datagram(b.core, bytes(data), A_ENDPOINT, net.now)
    assert kinds(tracer) == [*before, Drop]
    dropped = tracer.events[-1]
    assert isinstance(dropped, Drop)
    assert dropped.reason is reason
    assert dropped.source == A_ENDPOINT
    if drop != "garbage":
        assert dropped.receiver_index == int.from_bytes(data[4:8], "little")
        assert dropped.counter == int.from_bytes(data[8:16], "little")
    if drop in ("replay", "source", "tampered"):
        assert dropped.peer == a.public_key
    if drop == "source":  # the packet inside, which was decrypted
        assert dropped.head == packet
        assert dropped.length == len(packet)


def test_a_packet_with_no_route_is_dropped_with_its_head() -> None:
    net, a, _b = established()
    tracer = traced(a.core)
    packet = ipv4_packet(A_ADDRESS, C_ADDRESS, b"nowhere")
    net.send(a, packet)
    assert kinds(tracer) == [TunRead, Drop]
    dropped = tracer.events[1]
    assert isinstance(dropped, Drop)
    assert dropped.reason is DropReason.NO_ROUTE
    assert (dropped.head, dropped.length, dropped.peer) == (packet, len(packet), None)


def test_a_multicast_packet_has_a_reason_of_its_own() -> None:
    net, a, _b = established()
    net.send(a, ipv4_packet(A_ADDRESS, bytes([224, 0, 0, 251]), b"mdns"))
    assert a.core.drops[DropReason.MULTICAST] == 1
    assert a.core.drops[DropReason.NO_ROUTE] == 0


def test_an_initiation_from_an_unknown_key_names_that_key() -> None:
    net = Net()
    a = net.add("A", A_ENDPOINT, 1)
    b = net.add("B", B_ENDPOINT, 2)
    stranger = net.add("C", ("192.0.2.3", 51820), 3)
    connect(a, b)
    stranger.core.add_peer(b.public_key, endpoint=B_ENDPOINT, allowed_ips=["10.0.0.2/32"], now=0)
    tracer = traced(b.core)
    net.send(stranger, ipv4_packet(C_ADDRESS, B_ADDRESS, b"hi"))
    dropped = tracer.events[-1]
    assert isinstance(dropped, Drop)
    assert dropped.reason is DropReason.UNKNOWN_PEER
    assert dropped.peer == stranger.public_key
    assert dropped.kind == 1


def test_retries_then_giving_up_with_the_likely_cause() -> None:
    net = Net()
    a = net.add("A", A_ENDPOINT, 1)
    b = Net().add("B", B_ENDPOINT, 2)  # never answers
    connect(a, b)
    tracer = traced(a.core)
    tracer.own_public_key = a.public_key
    net.send(a, a_to_b())
    net.advance(200)
    initiations = [e for e in tracer.events if isinstance(e, HandshakeSent)]
    assert len(initiations) == MAX_TIMER_HANDSHAKES + 2
    assert initiations[0].why == "no session yet"
    assert initiations[1].why == f"retry 1 of {MAX_TIMER_HANDSHAKES + 1}, no response for 5 s"
    assert initiations[-1].why.startswith(f"retry {MAX_TIMER_HANDSHAKES + 1} of ")
    timers = [e for e in tracer.events if isinstance(e, TimerFired)]
    assert {t.timer for t in timers} == {"retransmit_handshake"}
    assert timers[-1].action == "giving up"
    [failed] = [e for e in tracer.events if isinstance(e, HandshakeFailed)]
    assert failed.attempts == MAX_TIMER_HANDSHAKES + 2
    assert failed.cause.startswith("nothing came back from 192.0.2.2:51820 to 20 initiations")
    assert a.public_key.to_base64() in failed.cause
    # The packet that waited is flushed: a drop that concerns no packet in hand.
    [flushed] = [e for e in tracer.events if isinstance(e, Drop)]
    assert flushed.reason is DropReason.STAGED_FLUSHED
    assert flushed.head == b""


def test_without_packets_only_handshakes_timers_and_drops_are_traced() -> None:
    net, a, b = pair()
    tracer = traced(a.core, packets=False)
    responder = traced(b.core, packets=False)
    net.send(a, a_to_b())
    net.send(a, ipv4_packet(A_ADDRESS, C_ADDRESS, b"x"))
    assert kinds(tracer) == [HandshakeSent, HandshakeReceived, SessionEstablished, Drop]
    # The responder: the initiation received, the response sent, then the session.
    assert kinds(responder) == [HandshakeReceived, HandshakeSent, SessionEstablished]
    dropped = tracer.events[-1]
    assert isinstance(dropped, Drop)
    assert dropped.head


# --- bounds ---------------------------------------------------------------------------------------


def test_a_full_tracer_counts_what_it_leaves_out() -> None:
    net, a, _b = established()
    tracer = traced(a.core, capacity=10)
    for _ in range(5):
        net.send(a, a_to_b())
    # Two packets of three events fit with room for a whole packet (8) left... then no more.
    assert len(tracer.events) <= 10
    assert tracer.lost > 0
    assert len(tracer.events) + 3 * tracer.lost >= 15 - 3  # nothing silently missing
    events, lost = tracer.take()
    assert events
    assert lost
    assert tracer.take() == ([], 0)
    net.send(a, a_to_b())
    assert kinds(tracer) == [TunRead, Routed, DataSent]


# --- JSON -----------------------------------------------------------------------------------------


def test_event_json_is_plain_json() -> None:
    net, a, b = pair()
    tracer = traced(a.core)
    net.send(a, a_to_b(b"first"))
    net.send(a, ipv4_packet(A_ADDRESS, C_ADDRESS, b"x"))
    objects = [event_json(event, clock_offset=1000.0) for event in tracer.events]
    assert json.loads(json.dumps(objects)) == objects
    assert [o["event"] for o in objects] == [
        "tun_read",
        "route",
        "handshake_sent",
        "queued",
        "datagram",
        "handshake_received",
        "session",
        "data_sent",
        "tun_read",
        "drop",
    ]
    read, route = objects[0], objects[1]
    assert read["time"] == pytest.approx(tracer.events[0].time + 1000.0)
    assert read["head"] == a_to_b(b"first").hex()
    assert read["peer"] == b.public_key.to_base64()
    assert (route["destination"], route["prefix"]) == ("10.0.0.2", "10.0.0.2/32")
    assert objects[2]["endpoint"] == "192.0.2.2:51820"
    assert objects[4]["kind"] == "response"
    assert objects[-1]["reason"] == "no_route"


def test_message_kinds() -> None:
    assert [message_kind(k) for k in (1, 2, 3, 4, 9, None)] == [
        "initiation",
        "response",
        "cookie_reply",
        "data",
        "unknown",
        "unknown",
    ]


# --- diagnoses ------------------------------------------------------------------------------------

OURS = "wjcfl8B+UHGI65dsf04XtE1iYCXEaL1YZr34Xc1wqHA="


@pytest.mark.parametrize(
    ("endpoint", "drops", "counters", "own", "expected"),
    [
        (None, {}, {}, None, "this interface has no private key"),
        ("192.0.2.2:1", {"low_order_key": 1}, {}, OURS, "low-order point"),
        (None, {}, {}, OURS, "the peer has no endpoint"),
        ("192.0.2.2:1", {"no_endpoint": 1}, {}, OURS, "the peer has no endpoint"),
        ("192.0.2.2:1", {"handshake_invalid": 3}, {}, OURS, "did not authenticate"),
        ("192.0.2.2:1", {}, {"cookie_replies_received": 2}, OURS, "under load"),
        ("192.0.2.2:1", {}, {"initiations_sent": 1}, OURS, "to 1 initiation: the"),
        ("192.0.2.2:1", {}, {"initiations_sent": 5}, OURS, f"does not have ours ({OURS}) as"),
    ],
)
def test_the_cause_of_a_failed_handshake(
    endpoint: str | None,
    drops: dict[str, int],
    counters: dict[str, int],
    own: str | None,
    expected: str,
) -> None:
    cause = handshake_failure_cause(
        endpoint=endpoint, drops=drops, counters=counters, own_public_key=own
    )
    assert expected in cause


def test_the_cause_for_a_running_peer_reads_its_counters() -> None:
    _net, a, b = pair()
    b.peer(a).counters.count_drop(DropReason.HANDSHAKE_INVALID)
    cause = peer_failure_cause(b.peer(a), b.public_key)
    assert "responses came back from 192.0.2.1:51820 but did not authenticate" in cause
    peer = a.peer(b)
    peer.endpoint = ("fd00::2", 51820)
    assert "nothing came back from [fd00::2]:51820" in peer_failure_cause(peer, a.public_key)


# --- layer 2 (Mode = tap) -------------------------------------------------------------------------


def test_a_tap_mode_drop_is_counted_per_peer_and_traced() -> None:
    from tests.helpers.l2net import BROADCAST, frame, hub_and_spokes, mac

    from minivpn.wireguard.switch import MacPrefix
    from minivpn.wireguard.uapi import format_get_response

    net, hub, one, _ = hub_and_spokes()
    hub.core.set_allowed_macs(one.public_key, [MacPrefix(mac(1))])
    tracer = traced(hub.core, packets=False)
    net.frame_from_tap(one, frame(BROADCAST, mac(2)))  # spoke 1 pretends to be host 2
    assert hub.peer(one).counters.drops == {DropReason.DISALLOWED_MAC: 1}
    [dropped] = [e for e in tracer.events if isinstance(e, Drop)]
    assert (dropped.reason, dropped.peer) == (DropReason.DISALLOWED_MAC, one.public_key)
    text = format_get_response(hub.core.snapshot_at(net.now)).decode()
    assert "minivpn_drop=disallowed_mac:1" in text.splitlines()
    assert "minivpn_mode=tap" in text.splitlines()


def test_a_mode_mismatch_is_traced_after_the_steps_it_passed() -> None:
    net, a, b = established()
    tracer = traced(b.core)
    keypair = a.peer(b).keypairs.current
    assert keypair is not None
    out = memoryview(bytearray(256))
    # What a peer in Mode = tap sends: a frame behind its 2-byte header (top bits 00).
    size = a.core._send_data(a.peer(b), keypair, b"\x00\x3c" + bytes(60), out, net.now)
    receive_datagram(b.core, bytes(out[:size]), A_ENDPOINT, net.now)
    assert kinds(tracer) == [DatagramReceived, Decrypted, ReplayChecked, Drop]
    dropped = tracer.events[-1]
    assert isinstance(dropped, Drop)
    assert dropped.reason is DropReason.MODE_MISMATCH
    assert b.peer(a).counters.drops == {DropReason.MODE_MISMATCH: 1}
