"""The user's half of tracing, without devices: lines, logs, verbosity, doctor, UAPI keys.

* ``trace_lines.format_event``: the exact human line of each event (the time in UTC here), and
  a word for every drop reason the core has;
* the trace server's consumers: a client queue that is bounded and reports what it lost, and
  the log's rate limit for misconfiguration drops;
* ``-v``/``-q`` anywhere on the command line, and what each level turns on (pyroute2's
  debugging only at ``-vvv``);
* ``doctor.diagnose`` on made-up states, one for each finding;
* the UAPI keys ``minivpn_drop``/``minivpn_counter``: written and read back, skipped when they
  make no sense, absent for a daemon that sends none.  That ``wg`` ignores them is checked with
  the real ``wg`` in tests/netns/test_trace.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers.wgnet import A_ADDRESS, C_ADDRESS, a_to_b, established, ipv4_packet, pair

from minivpn.cli.doctor import format_findings
from minivpn.cli.main import build_parser
from minivpn.doctor import Facts, diagnose
from minivpn.logs import configure_logging, events_level
from minivpn.netconf import LinkState
from minivpn.runtime.trace_server import (
    BadRequest,
    LogConsumer,
    SocketConsumer,
    _Batch,
    parse_request_untrusted,
)
from minivpn.trace_lines import DROP_EXPLANATIONS, format_event, short_key, summarize_head
from minivpn.wireguard.events import DropReason
from minivpn.wireguard.keys import PrivateKey, PublicKey
from minivpn.wireguard.trace import Drop, Tracer, event_json
from minivpn.wireguard.uapi import (
    DeviceSnapshot,
    PeerSnapshot,
    format_get_response,
    parse_get_response,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

KEY = "S8hxoFYUR/j1WNQ9LXzCvF3+e1GMKl3a+T5lD08Aals="
PING = "4500005491374000400194d50a4d00010a4d00020800edbc3c7a0001"


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


# --- human lines ----------------------------------------------------------------------------------

T = 1796489920.348984  # 2026-12-05 16:58:40.348984 UTC


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            {"event": "tun_read", "length": 84, "head": PING, "peer": KEY},
            "tun-read  IP 10.77.0.1 > 10.77.0.2: ICMP echo request, id 15482, seq 1, length 64",
        ),
        (
            {"event": "route", "peer": KEY, "destination": "10.77.0.2", "prefix": "10.77.0.2/32"},
            "route     10.77.0.2 is in allowed ips 10.77.0.2/32 of peer S8hxoFYU…",
        ),
        (
            {"event": "queued", "peer": KEY, "waiting": 2, "session": "none"},
            "queued    for peer S8hxoFYU…: no session yet, 2 packets waiting for the handshake",
        ),
        (
            {
                "event": "data_sent",
                "peer": KEY,
                "endpoint": "198.51.100.2:51821",
                "receiver_index": 0x76A68B0A,
                "counter": 1,
                "size": 128,
                "keepalive": False,
            },
            "data-out  to 198.51.100.2:51821 for peer S8hxoFYU…, receiver 0x76a68b0a, counter 1, "
            "128 bytes",
        ),
        (
            {
                "event": "datagram",
                "source": "198.51.100.2:51821",
                "size": 92,
                "kind": "response",
                "peer": KEY,
                "receiver_index": None,
                "counter": None,
            },
            "udp-in    response from 198.51.100.2:51821, 92 bytes, peer S8hxoFYU…",
        ),
        (
            {
                "event": "handshake_sent",
                "peer": KEY,
                "kind": "initiation",
                "endpoint": "198.51.100.2:51821",
                "sender_index": 0xD79A1EA8,
                "why": "retry 2 of 19, no response for 5 s",
            },
            "hs-out    initiation to 198.51.100.2:51821 for peer S8hxoFYU…, sender 0xd79a1ea8: "
            "retry 2 of 19, no response for 5 s",
        ),
        (
            {
                "event": "handshake_sent",
                "peer": KEY,
                "kind": "initiation",
                "endpoint": None,
                "sender_index": 1,
                "why": "no session yet",
            },
            "hs-out    initiation for peer S8hxoFYU… not sent: it has no endpoint",
        ),
        (
            {"event": "session", "peer": KEY, "initiator": False},
            "session   with peer S8hxoFYU… established (the peer initiated)",
        ),
        (
            {"event": "timer", "peer": KEY, "timer": "send_keepalive", "action": "a keepalive"},
            "timer     keepalive for peer S8hxoFYU…: a keepalive",
        ),
        (
            {"event": "handshake_failed", "peer": KEY, "attempts": 20, "cause": "nothing back"},
            "GAVE-UP   no handshake with peer S8hxoFYU… after 20 initiations: nothing back",
        ),
        (
            {
                "event": "drop",
                "reason": "replayed_counter",
                "peer": KEY,
                "source": "198.51.100.9:4000",
                "kind": "data",
                "receiver_index": 5,
                "counter": 7,
                "length": 0,
                "head": "",
            },
            "DROP      replayed_counter: data from 198.51.100.9:4000, receiver 0x00000005, "
            "counter 7: its counter was seen before, or is too old for the replay window "
            "(peer S8hxoFYU…)",
        ),
        (
            {
                "event": "drop",
                "reason": "unknown_peer",
                "peer": KEY,
                "source": "198.51.100.9:4000",
                "kind": "initiation",
                "receiver_index": None,
                "counter": None,
                "length": 0,
                "head": "",
            },
            f"DROP      unknown_peer: initiation from 198.51.100.9:4000: the public key it "
            f"claims, {KEY}, is no peer of ours",
        ),
        (
            {
                "event": "drop",
                "reason": "no_route",
                "peer": None,
                "source": None,
                "kind": None,
                "receiver_index": None,
                "counter": None,
                "length": 84,
                "head": PING,
            },
            "DROP      no_route: no peer's allowed ips contain its destination: IP 10.77.0.1 > "
            "10.77.0.2: ICMP echo request, id 15482, seq 1, length 64",
        ),
        (
            {"event": "lost", "count": 1},
            "LOST      1 event (the reader, or the trace's share of the CPU, fell behind)",
        ),
        ({"event": "future", "x": 1}, "future    event=future x=1"),
    ],
)
def test_each_event_has_its_line(utc: None, event: dict[str, Any], line: str) -> None:
    assert format_event({"time": T, **event}) == "16:58:40.348984 " + line


def test_every_drop_reason_is_explained() -> None:
    assert set(DROP_EXPLANATIONS) == {reason.value for reason in DropReason}


def test_every_event_the_core_makes_has_a_line_of_its_own(utc: None) -> None:
    net, a, b = pair()
    tracers = [Tracer(), Tracer()]
    a.core.attach_tracer(tracers[0])
    b.core.attach_tracer(tracers[1])
    net.send(a, a_to_b(b"first"))
    net.send(a, ipv4_packet(A_ADDRESS, C_ADDRESS, b"nowhere"))
    net.advance(11)
    events = tracers[0].events + tracers[1].events
    assert len({type(e) for e in events}) >= 14
    for event in events:
        line = format_event(json.loads(json.dumps(event_json(event))))
        assert "=" not in line.split(" ", 2)[1], line  # not the fallback for unknown events


def test_keys_and_heads() -> None:
    assert short_key(KEY) == "S8hxoFYU…"
    assert short_key(None) == "?"
    # Only the first bytes were kept: the summary is still the whole packet's.
    assert summarize_head(PING[:56], 84).endswith("length 64")


# --- the trace server's consumers -----------------------------------------------------------------


def _drops(count: int, reason: DropReason = DropReason.NO_ROUTE, start: float = 0.0) -> _Batch:
    events: list[Any] = [
        Drop(start + i, reason, None, None, None, None, None, 0, b"") for i in range(count)
    ]
    return _Batch(events, 0.0)


def test_a_slow_client_loses_events_and_is_told_how_many() -> None:
    one = len(_drops(1).line(0))
    client = SocketConsumer(None, drops_only=False, limit=10 * one)
    client.deliver(_drops(25), lost=0, now=1.0)
    assert client._size <= 10 * one
    lines = [json.loads(line) for line in b"".join(client._chunks).splitlines()]
    # Ten events fit; the other fifteen are counted, none is queued after the gap.
    assert [line["event"] for line in lines] == ["drop"] * 10
    assert client.lost == 15
    client._chunks, client._size = [], 0  # the client read it all
    client.deliver(_drops(1), lost=3, now=2.0)  # and the tracer itself had no room for 3
    lines = [json.loads(line) for line in b"".join(client._chunks).splitlines()]
    assert [(line["event"], line.get("count")) for line in lines] == [("lost", 18), ("drop", None)]
    assert client.lost == 0


def test_a_client_gets_only_what_it_asked_for() -> None:
    key = PrivateKey.generate().public_key()
    other = PrivateKey.generate().public_key()
    events: list[Any] = [
        Drop(0.0, DropReason.NO_ROUTE, None, None, None, None, None, 0, b""),
        Drop(0.0, DropReason.REPLAYED_COUNTER, key, None, None, None, None, 0, b""),
        Drop(0.0, DropReason.REPLAYED_COUNTER, other, None, None, None, None, 0, b""),
    ]
    client = SocketConsumer(key, drops_only=True)
    assert not client.packets
    client.deliver(_Batch(events, 0.0), lost=0, now=0.0)
    [line] = b"".join(client._chunks).splitlines()
    assert json.loads(line)["peer"] == key.to_base64()


def test_the_log_says_a_misconfiguration_once_per_interval() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("minivpn.test_events")
    logger.handlers[:] = [logging.StreamHandler(stream)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    consumer = LogConsumer(logger, interval=10.0)
    assert not consumer.packets  # INFO: no per-packet events needed
    consumer.deliver(_drops(5, start=0.0), lost=0, now=0.0)  # t = 0..4
    consumer.deliver(_drops(1, start=12.0), lost=0, now=0.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("DROP      no_route: ")
    assert lines[1].endswith("(and 4 more like it before)")


# --- verbosity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "verbosity"),
    [
        (["show"], 0),
        (["-v", "show"], 1),
        (["show", "-v"], 1),
        (["show", "wg0", "-vv"], 2),
        (["-v", "show", "-v", "wg0", "-v"], 3),
        (["up", "-v", "wg0.conf"], 1),
        (["up", "wg0.conf", "-q"], -1),
        (["-q", "trace", "wg0", "-vv"], 1),
        (["doctor", "--verbose", "wg0"], 1),
    ],
)
def test_v_and_q_count_wherever_they_stand(argv: list[str], verbosity: int) -> None:
    parser = build_parser()
    parser.parse_args(argv)
    assert parser.verbosity.value == verbosity  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("verbosity", "own", "events", "libraries"),
    [
        (-1, logging.WARNING, logging.WARNING, logging.WARNING),
        (0, logging.INFO, logging.WARNING, logging.WARNING),
        (1, logging.INFO, logging.INFO, logging.WARNING),
        (2, logging.DEBUG, logging.DEBUG, logging.WARNING),
        (3, logging.DEBUG, logging.DEBUG, logging.DEBUG),
    ],
)
def test_what_each_level_turns_on(verbosity: int, own: int, events: int, libraries: int) -> None:
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    try:
        configure_logging(verbosity, stream=io.StringIO())
        assert logging.getLogger("minivpn").level == own
        assert logging.getLogger("minivpn.events").getEffectiveLevel() == events
        assert logging.getLogger("pyroute2").getEffectiveLevel() == libraries
        assert events_level(verbosity) == events
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("minivpn").setLevel(logging.NOTSET)
        logging.getLogger("minivpn.events").setLevel(logging.NOTSET)


# --- doctor ---------------------------------------------------------------------------------------

OWN = PrivateKey.generate()
PEER = PrivateKey.generate().public_key()
OTHER = PrivateKey.generate().public_key()
LINK = LinkState("wg0", 5, True, "UNKNOWN", 1420)
NOW = 1_800_000_000.0


def peer(key: PublicKey = PEER, **fields: Any) -> PeerSnapshot:
    defaults: dict[str, Any] = {
        "endpoint": "198.51.100.2:51820",
        "allowed_ips": ["10.77.0.2/32"],
        "counters": {"initiations_sent": 1},
    }
    return PeerSnapshot(public_key=key, **{**defaults, **fields})


def findings(*peers: PeerSnapshot, facts: Facts | None = None, **device: Any) -> list[str]:
    snapshot = DeviceSnapshot(private_key=OWN, listen_port=51820, peers=peers, **device)
    facts = facts or Facts(link=LINK, paths={"198.51.100.2": ("eth0", 1500)})
    return [f"{f.subject}: {f.problem} / {f.advice}" for f in diagnose("wg0", snapshot, facts, NOW)]


def healthy(**fields: Any) -> PeerSnapshot:
    counters = {"initiations_sent": 1, "rx_data_bytes": 500, "tx_data_bytes": 500}
    return peer(last_handshake_time_sec=int(NOW) - 30, counters=counters, **fields)


def test_doctor_finds_nothing_wrong_with_a_healthy_interface() -> None:
    assert findings(healthy()) == []
    assert format_findings("wg0", 1, []) == "wg0: nothing looks wrong (1 peer checked)\n"


def test_doctor_no_handshake_ever() -> None:
    [text] = findings(peer(counters={"initiations_sent": 4}))
    assert "no handshake has ever completed" in text
    assert "nothing came back from 198.51.100.2:51820 to 4 initiations" in text


def test_doctor_handshakes_but_no_data_back() -> None:
    counters = {"initiations_sent": 1, "rx_data_bytes": 0, "tx_data_bytes": 840}
    [text] = findings(peer(last_handshake_time_sec=int(NOW) - 5, counters=counters))
    assert "we sent it 840 bytes of data, but no data came back" in text


def test_doctor_a_route_that_points_elsewhere() -> None:
    facts = Facts(link=LINK, routes={"10.77.0.2/32": ("10.77.0.2", "eth1")})
    [text] = findings(healthy(), facts=facts)
    assert "traffic for its allowed IPs 10.77.0.2/32 (e.g. 10.77.0.2) goes out of eth1" in text
    facts = Facts(link=LINK, routes={"10.77.0.2/32": ("10.77.0.2", None)})
    assert "goes nowhere (no route)" in findings(healthy(), facts=facts)[0]


def test_doctor_overlapping_allowed_ips() -> None:
    wide = healthy(allowed_ips=["10.77.0.0/24"])
    narrow = healthy(key=OTHER, allowed_ips=["10.77.0.2/32"])
    [text] = findings(wide, narrow)
    assert f"peer {OTHER.to_base64()[:8]}…: its allowed IPs 10.77.0.2/32 lie inside " in text


def test_doctor_mtu_above_the_path() -> None:
    facts = Facts(link=LINK, paths={"198.51.100.2": ("eth0", 1400)})
    [text] = findings(healthy(), facts=facts)
    assert "its MTU 1420 plus 60 bytes of WireGuard over IPv4 is 1480, more than the MTU" in text
    assert "the MTU 1400 of eth0 on the way to 198.51.100.2" in text
    assert "MTU = 1340" in text


def test_doctor_device_problems() -> None:
    snapshot = DeviceSnapshot(private_key=None, peers=())
    found = diagnose("wg0", snapshot, Facts(link=None), NOW)
    problems = [f.problem for f in found]
    assert any("no private key" in p for p in problems)
    assert any("no peers" in p for p in problems)
    assert any("no link of that name" in p for p in problems)
    down = Facts(link=LinkState("wg0", 5, False, "DOWN", 1420))
    assert any("link is down" in f for f in findings(healthy(), facts=down))
    drops = {"invalid_mac1": 2, "unknown_peer": 3, "no_route": 4}
    texts = findings(healthy(), drops=drops)
    assert any("2 handshake messages were made for another public key" in t for t in texts)
    assert any("3 initiations came from public keys that are no peers" in t for t in texts)
    assert any("4 packets routed into wg0 had a destination in no peer's" in t for t in texts)
    report = format_findings("wg0", 1, diagnose("wg0", snapshot, Facts(link=None), NOW))
    assert report.startswith("wg0: 3 problems found\n\nwg0: it has no private key")


def test_doctor_disallowed_source() -> None:
    [text] = findings(healthy(drops={"disallowed_source": 7}))
    assert "7 packets from it were dropped: their source address is not in its allowed" in text


def test_doctor_disallowed_mac() -> None:
    [text] = findings(healthy(drops={"disallowed_mac": 5}), mode="tap")
    assert "5 frames from it were dropped: their source MAC address is not in its AllowedMACs" in (
        text
    )
    assert "add the MAC addresses of the hosts behind it" in text


def test_doctor_mode_mismatch_names_both_modes_and_comes_first() -> None:
    # A tun interface hearing frames: the peer is in Mode = tap.  Its data counts as received,
    # and nothing else is wrong, but the mismatch comes first among a peer's findings.
    counters = {"initiations_sent": 1, "rx_data_bytes": 0, "tx_data_bytes": 840}
    mismatched = peer(
        last_handshake_time_sec=int(NOW) - 5, counters=counters, drops={"mode_mismatch": 3}
    )
    tun = findings(mismatched)
    assert len(tun) == 2
    assert (
        "3 messages from it were dropped: they carry Ethernet frames (it is minivpn in " in (tun[0])
    )
    assert "remove Mode = tap from its [Interface], or put Mode = tap in ours" in tun[0]
    assert "no data came back" in tun[1]
    [tap] = findings(healthy(drops={"mode_mismatch": 2}), mode="tap")
    assert "2 messages from it were dropped: they carry IP packets, but this interface is in " in (
        tap
    )
    assert "Mode = tap in its [Interface] too" in tap


def test_a_trace_request_nested_deeper_than_python_recurses_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="the request is not JSON"):
        parse_request_untrusted(b"[" * 3000 + b"\n")
    assert parse_request_untrusted(b'{"drops_only": true}\n') == (None, True)


# --- UAPI keys ------------------------------------------------------------------------------------

NAMES = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=24)
COUNTS = st.lists(st.tuples(NAMES, st.integers(0, 2**64 - 1)), max_size=5)


@given(COUNTS, COUNTS, COUNTS)
def test_counters_go_through_uapi_and_back(
    device: list[tuple[str, int]], drops: list[tuple[str, int]], counters: list[tuple[str, int]]
) -> None:
    snapshot = DeviceSnapshot(
        private_key=OWN,
        listen_port=51820,
        drops=device,
        peers=[PeerSnapshot(public_key=PEER, drops=drops, counters=counters)],
    )
    assert parse_get_response(format_get_response(snapshot)) == snapshot


def test_the_counters_of_a_running_core_go_into_its_snapshot() -> None:
    net, a, b = established()
    net.send(a, ipv4_packet(A_ADDRESS, C_ADDRESS, b"x"))
    text = format_get_response(a.core.snapshot()).decode()
    lines = text.splitlines()
    assert "minivpn_drop=no_route:1" in lines
    assert lines.index("minivpn_drop=no_route:1") < lines.index(
        f"public_key={b.public_key.to_hex()}"
    )
    assert "minivpn_counter=initiations_sent:1" in lines
    assert "minivpn_counter=responses_received:1" in lines
    parsed = parse_get_response(text)
    assert dict(parsed.drops) == {"no_route": 1}
    assert dict(parsed.peers[0].counters)["tx_data_bytes"] == 64


@pytest.mark.parametrize(
    "line",
    ["minivpn_drop=nocolon", "minivpn_drop=:5", "minivpn_drop=x:-1", "minivpn_counter=x:1e3"],
)
def test_counter_values_that_make_no_sense_are_skipped(line: str) -> None:
    text = f"listen_port=1\n{line}\npublic_key={PEER.to_hex()}\n{line}\nerrno=0\n\n"
    parsed = parse_get_response(text)
    assert parsed.drops == ()
    assert parsed.peers[0].drops == ()
    assert parsed.peers[0].counters == ()


def test_without_minivpn_keys_there_are_no_counters() -> None:
    text = f"listen_port=1\npublic_key={PEER.to_hex()}\nrx_bytes=5\nerrno=0\n\n"
    parsed = parse_get_response(text)
    assert parsed.drops == ()
    assert parsed.peers[0].counters == ()


async def test_the_pump_stops_when_its_cpu_time_is_spent_and_counts_the_rest() -> None:
    from minivpn.runtime.trace_server import PUMP_SLICE, TraceHub

    _net, a, _b = pair()
    hub = TraceHub(a.core, "wg0")
    client = SocketConsumer(None, drops_only=False)
    hub.add(client)
    assert a.core.tracer is hub.tracer is not None
    hub.tracer.events.extend(_drops(1000).events)
    hub.pump(allowance=0.0)  # time for one slice only
    lines = [json.loads(line) for line in b"".join(client._chunks).splitlines()]
    assert len(lines) == PUMP_SLICE
    hub.pump()
    lines = [json.loads(line) for line in b"".join(client._chunks).splitlines()]
    assert lines[-1] == {"time": lines[-1]["time"], "event": "lost", "count": 1000 - PUMP_SLICE}
    hub.remove(client)
    assert a.core.tracer is None
    assert a.core.packet_tracer is None
