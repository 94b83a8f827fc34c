"""The batch receive path, ``WireGuardCore.decrypt_batch_into_untrusted``, against the plain one.

A batch is what a UDP GRO receive returns: datagrams from one source back to back, all of one
size but the last.  The batch path must leave a core exactly as feeding the same datagrams one
by one to ``decrypt_datagram_into_untrusted`` does: the same packets delivered, the same drops,
the same byte counters, endpoint, timers and keypairs.  So every test here runs two identical
worlds (same seeds: same keys, same indices) side by side, one fed datagram by datagram, the
other batch by batch the way the runtime does it, and compares them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_wg_core_harness import (
    A_ADDRESS,
    A_ENDPOINT,
    B_ADDRESS,
    B_ENDPOINT,
    Net,
    Node,
    a_to_b,
    b_to_a,
    established,
    ipv4_packet,
)

from minivpn.wireguard.core import MAX_DATAGRAM_SIZE, WireGuardCore
from minivpn.wireguard.events import SendDatagram
from minivpn.wireguard.timers import REKEY_AFTER_TIME

DATA = 4
#: Payload of every data packet in a batch: 20 + 108 = 128 bytes, a multiple of 16, so every
#: data message has the same size (128 + 32 = 160), as the datagrams of a GRO batch have.
PAYLOAD = 108
STRANGER = bytes([10, 0, 0, 9])  # a source address outside A's allowed IPs


def feed_one_by_one(core: WireGuardCore, datagrams: list[bytes], now: float) -> list[bytes]:
    out = bytearray(MAX_DATAGRAM_SIZE)
    delivered = []
    for datagram in datagrams:
        size = core.decrypt_datagram_into_untrusted(memoryview(datagram), A_ENDPOINT, out, now)
        if size:
            delivered.append(bytes(out[:size]))
    return delivered


def feed_as_batch(core: WireGuardCore, datagrams: list[bytes], now: float) -> list[bytes]:
    """The runtime's loop (runtime/vpn.py): the fast path for data messages, the rest alone."""
    data = memoryview(b"".join(datagrams))
    segment = len(datagrams[0])
    out = memoryview(bytearray(2 * len(data) + MAX_DATAGRAM_SIZE))
    packets: list[memoryview] = []
    offset = used = 0
    while offset < len(data):
        if data[offset] == DATA:
            consumed, written = core.decrypt_batch_into_untrusted(
                data[offset:], segment, A_ENDPOINT, out[used:], now, packets=packets
            )
            assert consumed > 0 or len(data) - offset < 32  # progress, unless too short
            offset += consumed
            used += written
            if offset >= len(data):
                break
        stop = min(offset + segment, len(data))
        size = core.decrypt_datagram_into_untrusted(data[offset:stop], A_ENDPOINT, out[used:], now)
        if size:
            packets.append(out[used : used + size])
            used += size
        offset = stop
    return [bytes(packet) for packet in packets]


def state(node: Node, other: Node) -> dict[str, Any]:
    """What the receive path may change, in a comparable form."""
    peer = node.peer(other)
    timers = peer.timers
    slots = peer.keypairs
    return {
        "drops": node.drops(),
        "rx_bytes": peer.rx_bytes,
        "endpoint": peer.endpoint,
        "timers": {
            name: getattr(timers, name)
            for name in (
                "retransmit_handshake_at",
                "send_keepalive_at",
                "new_handshake_at",
                "zero_key_material_at",
                "persistent_keepalive_at",
                "handshake_attempts",
                "need_another_keepalive",
                "sent_last_minute_handshake",
            )
        },
        "keypairs": [
            None if keypair is None else keypair.local_index
            for keypair in (slots.previous, slots.current, slots.next)
        ],
        "actions": sorted(type(action).__name__ for action in node.core.take_actions()),
    }


def twins(seed: int = 1) -> tuple[tuple[Net, Node, Node], tuple[Net, Node, Node]]:
    one, two = established(seed), established(seed)
    assert state(one[2], one[1]) == state(two[2], two[1])  # the same world, twice
    return one, two


def data_message(net: Net, a: Node, source: bytes = A_ADDRESS, payload: bytes = b"") -> bytes:
    packet = ipv4_packet(source, B_ADDRESS, payload.ljust(PAYLOAD, b"."))
    result = a.core.encrypt_packet(packet, net.now)
    assert result is not None
    return bytes(result[0])


# What can be in a batch (all data-message sized, so that they can share one GRO batch).
kinds = st.sampled_from(
    ["data", "data", "data", "replay", "corrupt", "unknown index", "bad source", "junk type 1"]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(kinds, min_size=1, max_size=20),
    st.sampled_from([None, "keepalive", "initiation-size junk", "short"]),
    st.integers(0, 5),
    st.booleans(),
)
def test_a_batch_does_what_the_datagrams_do_one_by_one(
    items: list[str], last: str | None, persistent_keepalive: int, b_spoke_last: bool
) -> None:
    (net1, a1, b1), (net2, _, b2) = twins()
    for net, b in ((net1, b1), (net2, b2)):
        b.peer(a1).persistent_keepalive_interval = persistent_keepalive
        if b_spoke_last:  # B's keepalive timer is off: the first data packet arms it
            net.send(b, b_to_a(b"from B"))
            assert b.peer(a1).timers.send_keepalive_at is None
    datagrams: list[bytes] = []
    for n, kind in enumerate(items):
        fresh = data_message(net1, a1, payload=f"packet {n}".encode())
        if kind == "replay" and datagrams:
            datagrams.append(datagrams[n // 2])
        elif kind == "corrupt":
            datagrams.append(fresh[:-1] + bytes([fresh[-1] ^ 1]))
        elif kind == "unknown index":
            datagrams.append(fresh[:4] + b"\xee\xee\xee\xee" + fresh[8:])
        elif kind == "bad source":
            datagrams.append(data_message(net1, a1, source=STRANGER))
        elif kind == "junk type 1":
            datagrams.append(b"\x01" + fresh[1:])
        else:
            datagrams.append(fresh)
    if last == "keepalive":
        a1.core._send_keepalive(a1.peer(b1), net1.now)  # what A's keepalive timer does
        (keepalive,) = [a.data for a in a1.core.take_actions() if isinstance(a, SendDatagram)]
        assert len(keepalive) == 32
        datagrams.append(bytes(keepalive))
    elif last == "initiation-size junk":
        datagrams.append(b"\x01" + bytes(147))
    elif last == "short":
        datagrams.append(b"\x04" + bytes(20))
    net1.now += 1.0
    net2.now += 1.0
    one = feed_one_by_one(b1.core, datagrams, net1.now)
    two = feed_as_batch(b2.core, datagrams, net2.now)
    assert one == two
    assert state(b1, a1) == state(b2, a1)


def test_a_batch_spanning_a_new_session_confirms_it_as_one_by_one() -> None:
    """Data under the old keypair, then under B's unconfirmed ``next``: two runs."""
    (net1, a1, b1), (net2, _, b2) = twins()
    old = [data_message(net1, a1, payload=b"old %d" % n) for n in range(3)]
    # A rekeys (its keypair is old); B answers and parks the new keypair in `next`.
    for net in (net1, net2):
        net.now += REKEY_AFTER_TIME + 1
        net.wall += REKEY_AFTER_TIME + 1  # a newer initiation timestamp
    (initiation,) = [
        action.data
        for action in a1.core.send_packet(a_to_b(b"trigger"), net1.now)
        if isinstance(action, SendDatagram) and action.data[0] == 1
    ]
    responses = []
    for b in (b1, b2):
        size = b.core.decrypt_datagram_into_untrusted(
            initiation, A_ENDPOINT, bytearray(200), net1.now
        )
        assert size == 0
        responses.append(
            [action.data for action in b.core.take_actions() if isinstance(action, SendDatagram)]
        )
    assert responses[0] == responses[1]
    a1.core.receive_datagram(responses[0][0], B_ENDPOINT, net1.now)  # A now sends with it
    new = [data_message(net1, a1, payload=b"new %d" % n) for n in range(3)]
    assert b1.peer(a1).keypairs.next is not None
    datagrams = old + new
    assert len({len(d) for d in datagrams}) == 1
    assert feed_one_by_one(b1.core, datagrams, net1.now) == feed_as_batch(
        b2.core, datagrams, net2.now
    )
    assert b1.peer(a1).keypairs.next is None  # confirmed: promoted to current
    assert state(b1, a1) == state(b2, a1)


def test_packets_are_cut_to_their_ip_length_and_laid_one_after_the_other() -> None:
    (net, a, b), _ = twins()
    datagrams = [data_message(net, a, payload=b"x" * n) for n in (0, 1, 107)]
    assert len({len(d) for d in datagrams}) == 1  # all padded to the same size
    data = memoryview(b"".join(datagrams))
    out = memoryview(bytearray(len(data)))
    packets: list[memoryview] = []
    consumed, used = b.core.decrypt_batch_into_untrusted(
        data, len(datagrams[0]), A_ENDPOINT, out, net.now, packets=packets
    )
    assert consumed == len(data)
    expected = [
        ipv4_packet(A_ADDRESS, B_ADDRESS, (b"x" * n).ljust(PAYLOAD, b".")) for n in (0, 1, 107)
    ]
    assert [bytes(p) for p in packets] == expected
    assert used == sum(len(p) for p in expected)
    assert bytes(out[:used]) == b"".join(expected)


def test_the_fast_path_stops_at_the_first_message_that_is_not_data() -> None:
    (net, a, b), _ = twins()
    first, second = (data_message(net, a, payload=b"%d" % n) for n in range(2))
    junk = b"\x01" + bytes(len(first) - 1)
    data = memoryview(first + junk + second)
    packets: list[memoryview] = []
    consumed, _ = b.core.decrypt_batch_into_untrusted(
        data, len(first), A_ENDPOINT, memoryview(bytearray(len(data))), net.now, packets=packets
    )
    assert consumed == len(first)
    assert len(packets) == 1
