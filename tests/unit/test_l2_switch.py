"""The learning switch of layer-2 mode (minivpn.wireguard.switch), sans-IO, with a fake clock.

Hypothesis drives the switch with random frames against a small model written independently
of it (a dict with ages, the rules of docs/l2.md), and the single rules get a test each.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivpn.wireguard.switch import (
    BROADCAST,
    InvalidMac,
    LearningSwitch,
    MacMove,
    MacPrefix,
    Verdict,
    format_mac,
    parse_mac,
)

A, B, C = "A", "B", "C"


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


MULTICAST = bytes.fromhex("01005e000001")
ZERO = bytes(6)


def test_unknown_destination_floods_and_the_source_is_learned() -> None:
    switch: LearningSwitch[str] = LearningSwitch()
    assert switch.forward(mac(1), mac(2), A, 0.0) is Verdict.FLOOD
    assert switch.lookup(mac(1), 0.0) == A
    assert switch.forward(mac(2), mac(1), B, 1.0) == A  # known unicast: one port
    assert switch.forward(mac(1), mac(2), A, 2.0) == B


def test_broadcast_and_multicast_flood_even_when_known() -> None:
    switch: LearningSwitch[str] = LearningSwitch()
    switch.forward(mac(2), BROADCAST, B, 0.0)
    assert switch.forward(mac(1), BROADCAST, A, 0.0) is Verdict.FLOOD
    assert switch.forward(mac(1), MULTICAST, A, 0.0) is Verdict.FLOOD


def test_split_horizon_a_destination_behind_the_arrival_port_is_filtered() -> None:
    switch: LearningSwitch[str] = LearningSwitch()
    switch.forward(mac(2), BROADCAST, A, 0.0)
    assert switch.forward(mac(1), mac(2), A, 0.0) is Verdict.FILTER


@pytest.mark.parametrize("source", [BROADCAST, MULTICAST, ZERO])
def test_a_source_that_is_not_unicast_is_refused_and_not_learned(source: bytes) -> None:
    switch: LearningSwitch[str] = LearningSwitch()
    assert switch.forward(source, mac(1), A, 0.0) is Verdict.INVALID_SOURCE
    assert len(switch) == 0


def test_aging_with_a_fake_clock() -> None:
    switch: LearningSwitch[str] = LearningSwitch(aging=300.0)
    switch.forward(mac(1), BROADCAST, A, 0.0)
    assert switch.forward(mac(2), mac(1), B, 300.0) == A  # exactly 300 s: still there
    assert switch.forward(mac(2), mac(1), B, 300.5) is Verdict.FLOOD  # aged out
    assert switch.lookup(mac(1), 300.5) is None
    assert [e.mac for e in switch.entries(300.5)] == [mac(2)]
    # refreshed entries live on
    switch.forward(mac(2), BROADCAST, B, 500.0)
    assert switch.lookup(mac(2), 799.0) == B
    assert switch.expire(801.0) == 1
    assert len(switch) == 0


def test_a_move_follows_the_address_and_is_reported_once() -> None:
    switch: LearningSwitch[str] = LearningSwitch()
    switch.forward(mac(1), BROADCAST, A, 0.0)
    switch.forward(mac(1), BROADCAST, B, 1.0)
    assert switch.lookup(mac(1), 1.0) == B
    assert switch.moves == [MacMove(mac(1), A, B)]
    switch.forward(mac(1), BROADCAST, B, 2.0)
    assert len(switch.moves) == 1
    assert switch.forward(mac(9), mac(1), C, 2.0) == B


def test_a_flapping_address_is_reported_once_per_interval_and_counted() -> None:
    switch: LearningSwitch[str] = LearningSwitch()
    switch.forward(mac(1), BROADCAST, A, 0.0)
    for n in range(1, 101):  # 100 moves between A and B in 5 seconds
        switch.forward(mac(1), BROADCAST, B if n % 2 else A, n * 0.05)
    assert switch.moves == [MacMove(mac(1), A, B)]
    assert switch.unreported_moves == 99
    assert switch.lookup(mac(1), 5.0) == A  # the table follows every move all the same
    switch.forward(mac(2), BROADCAST, A, 5.0)  # another address is reported at once
    switch.forward(mac(2), BROADCAST, B, 5.0)
    switch.forward(mac(1), BROADCAST, B, 10.05)  # 10 s after the last report: reported
    # The first report after the 99 that were not says so; the one after it has none to tell.
    assert switch.moves[1:] == [MacMove(mac(2), A, B, 99), MacMove(mac(1), A, B, 0)]
    switch.forward(mac(1), BROADCAST, A, 11.0)  # flapping again: counted...
    switch.forward(mac(1), BROADCAST, B, 12.0)
    switch.forward(mac(2), BROADCAST, A, 16.0)  # ...and told with the next report
    assert switch.moves[3:] == [MacMove(mac(2), B, A, 2)]
    assert switch.unreported_moves == 101


def test_an_aged_out_address_seen_elsewhere_is_not_a_move() -> None:
    switch: LearningSwitch[str] = LearningSwitch(aging=10.0)
    switch.forward(mac(1), BROADCAST, A, 0.0)
    switch.forward(mac(1), BROADCAST, B, 11.0)
    assert switch.moves == []
    assert switch.lookup(mac(1), 11.0) == B


def test_allowed_macs_refuse_other_sources_before_learning() -> None:
    switch: LearningSwitch[str] = LearningSwitch()
    switch.forward(mac(1), BROADCAST, A, 0.0)
    switch.set_allowed_macs(
        B, [MacPrefix.parse("02:00:00:00:00:02"), MacPrefix.parse("52:54:00:00:00:00/24")]
    )
    # B may not take over A's address, nor invent one
    assert switch.forward(mac(1), BROADCAST, B, 1.0) is Verdict.DISALLOWED_SOURCE
    assert switch.forward(mac(7), BROADCAST, B, 1.0) is Verdict.DISALLOWED_SOURCE
    assert switch.lookup(mac(1), 1.0) == A
    assert switch.moves == []
    assert switch.forward(mac(2), mac(1), B, 1.0) == A
    assert switch.forward(bytes.fromhex("525400abcdef"), mac(1), B, 1.0) == A
    assert (
        switch.forward(bytes.fromhex("525401abcdef"), mac(1), B, 1.0) is Verdict.DISALLOWED_SOURCE
    )
    assert [str(p) for p in switch.allowed_macs(B) or ()] == [
        "02:00:00:00:00:02",
        "52:54:00:00:00:00/24",
    ]
    assert switch.allowed_macs(A) is None


def test_narrowing_allowed_macs_forgets_entries_now_disallowed() -> None:
    switch: LearningSwitch[str] = LearningSwitch()
    switch.forward(mac(1), BROADCAST, A, 0.0)
    switch.forward(mac(2), BROADCAST, A, 0.0)
    switch.set_allowed_macs(A, [MacPrefix(mac(2))])
    assert [e.mac for e in switch.entries(0.0)] == [mac(2)]
    switch.forget_port(A)
    assert len(switch) == 0
    assert switch.allowed_macs(A) is None


def test_the_cap_evicts_from_the_port_with_most_entries() -> None:
    """A port inventing addresses pushes out only its own entries."""
    switch: LearningSwitch[str] = LearningSwitch(capacity=10)
    for n in range(3):
        switch.forward(mac(n), BROADCAST, A, float(n))
    for n in range(100, 200):
        switch.forward(mac(n), BROADCAST, B, 10.0)
    assert len(switch) == 10
    assert all(switch.lookup(mac(n), 10.0) == A for n in range(3))
    assert [e.mac for e in switch.entries(10.0) if e.port == B] == [mac(n) for n in range(193, 200)]


def test_storm_control_limits_each_ports_floods_to_a_rate_with_a_burst() -> None:
    switch: LearningSwitch[str] = LearningSwitch(flood_rate=10.0, flood_burst=3.0)
    flooded = [switch.forward(mac(1), BROADCAST, A, 0.0) for _ in range(5)]
    assert flooded == [Verdict.FLOOD] * 3 + [Verdict.FLOOD_LIMITED] * 2  # the burst, then none
    # Another port has a bucket of its own; unknown unicast and multicast count too.
    assert switch.forward(mac(2), mac(9), B, 0.0) is Verdict.FLOOD
    assert switch.forward(mac(2), MULTICAST, B, 0.0) is Verdict.FLOOD
    assert switch.forward(mac(2), mac(8), B, 0.0) is Verdict.FLOOD
    assert switch.forward(mac(2), mac(7), B, 0.0) is Verdict.FLOOD_LIMITED
    # Known unicast is never limited, and a limited frame's source is still learned.
    assert switch.forward(mac(1), mac(2), A, 0.0) == B
    assert switch.forward(mac(3), BROADCAST, A, 0.0) is Verdict.FLOOD_LIMITED
    assert switch.lookup(mac(3), 0.0) == A
    # The clock refills the bucket: 10 a second, one every 0.1 s, never above the burst.
    assert switch.forward(mac(1), BROADCAST, A, 0.05) is Verdict.FLOOD_LIMITED
    assert switch.forward(mac(1), BROADCAST, A, 0.1) is Verdict.FLOOD
    assert switch.forward(mac(1), BROADCAST, A, 0.1) is Verdict.FLOOD_LIMITED
    later = [switch.forward(mac(1), BROADCAST, A, 100.0) for _ in range(4)]
    assert later == [Verdict.FLOOD] * 3 + [Verdict.FLOOD_LIMITED]


def test_storm_control_off_and_a_forgotten_ports_bucket() -> None:
    unlimited: LearningSwitch[str] = LearningSwitch(flood_rate=None)
    assert all(unlimited.forward(mac(1), BROADCAST, A, 0.0) is Verdict.FLOOD for _ in range(5000))
    switch: LearningSwitch[str] = LearningSwitch(flood_rate=1.0, flood_burst=1.0)
    assert switch.forward(mac(1), BROADCAST, A, 0.0) is Verdict.FLOOD
    assert switch.forward(mac(1), BROADCAST, A, 0.0) is Verdict.FLOOD_LIMITED
    switch.forget_port(A)  # a peer removed and added again starts with a full bucket
    assert switch.forward(mac(1), BROADCAST, A, 0.0) is Verdict.FLOOD


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 10.0), (-1.0, 10.0), (10.0, 0.5)])
def test_storm_control_needs_a_positive_rate_and_burst(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="storm control"):
        LearningSwitch(flood_rate=rate, flood_burst=burst)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LearningSwitch(capacity=0)


@pytest.mark.parametrize(
    "text",
    [
        "02:00:00:00:00",
        "02-00-00-00-00-01",
        "0200.0000.0001",
        "zz:00:00:00:00:01",
        "02:00:00:00:00:01/49",
        "02:00:00:00:00:01/x",
    ],
)
def test_bad_macs_and_prefixes(text: str) -> None:
    with pytest.raises(InvalidMac):
        MacPrefix.parse(text)


def test_mac_text_round_trip_and_prefix_masking() -> None:
    assert format_mac(parse_mac("02:AB:cd:00:00:01")) == "02:ab:cd:00:00:01"
    prefix = MacPrefix.parse("52:54:00:12:34:56/24")
    assert str(prefix) == "52:54:00:00:00:00/24"
    assert bytes.fromhex("525400ffffff") in prefix
    assert bytes.fromhex("525500000000") not in prefix
    assert bytes(6) in MacPrefix.parse("00:00:00:00:00:00/0")


# --- the model: the rules, written plainly --------------------------------------------------------

PORTS = [A, B, C]
frames = st.tuples(
    st.integers(0, 12),  # source: 0 is a multicast source, else mac(n)
    st.integers(0, 12),  # destination: 0 is broadcast
    st.sampled_from(PORTS),
    st.floats(0.0, 200.0),  # time step
)


@settings(max_examples=300, deadline=None)
@given(
    traffic=st.lists(frames, max_size=60),
    capacity=st.integers(1, 20),
    aging=st.sampled_from([50.0, 300.0]),
    restrict_c=st.booleans(),
    storm=st.one_of(st.none(), st.tuples(st.sampled_from([0.01, 0.05, 1.0]), st.integers(1, 3))),
)
def test_the_switch_against_a_model(
    traffic: list[tuple[int, int, str, float]],
    capacity: int,
    aging: float,
    restrict_c: bool,
    storm: tuple[float, int] | None,
) -> None:
    rate, burst = storm if storm else (None, 1)
    switch: LearningSwitch[str] = LearningSwitch(
        aging=aging, capacity=capacity, flood_rate=rate, flood_burst=burst
    )
    # Storm control's model: per port, floods it may send and when that was counted.
    buckets: dict[str, tuple[float, float]] = {}

    def may_flood(port: str, now: float) -> bool:
        if rate is None:
            return True
        tokens, stamp = buckets.get(port, (float(burst), now))
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        buckets[port] = (tokens - 1.0 if tokens >= 1.0 else tokens, now)
        return tokens >= 1.0

    allowed_c = {mac(n) for n in range(1, 5)}
    if restrict_c:
        switch.set_allowed_macs(C, [MacPrefix(m) for m in allowed_c])
    # The model: mac -> (port, last seen); per port holding entries (in the order they came
    # to hold some: the tie-break of the cap), its addresses in the order learned there.
    table: dict[bytes, tuple[str, float]] = {}
    learned: dict[str, list[bytes]] = {}

    def add(port: str, mac_address: bytes) -> None:
        learned.setdefault(port, []).append(mac_address)

    def remove(port: str, mac_address: bytes) -> None:
        learned[port].remove(mac_address)
        if not learned[port]:
            del learned[port]

    moves: list[MacMove[str]] = []
    reported: dict[bytes, float] = {}  # when a move of an address in the table was reported
    unreported = 0
    not_yet_told = 0  # unreported moves since the last reported one
    now = 0.0
    for source_n, destination_n, port, step in traffic:
        now += step
        source = mac(source_n) if source_n else MULTICAST
        destination = mac(destination_n) if destination_n else BROADCAST
        verdict = switch.forward(source, destination, port, now)
        if not source_n:
            assert verdict is Verdict.INVALID_SOURCE
            continue
        if restrict_c and port == C and source not in allowed_c:
            assert verdict is Verdict.DISALLOWED_SOURCE
            continue
        known = table.get(source)
        if known is None:
            if len(table) >= capacity:  # full: the largest port (this one on a tie) gives one
                largest = max(learned, key=lambda p: (len(learned[p]), p == port))
                oldest = learned[largest][0]
                remove(largest, oldest)
                del table[oldest]
                reported.pop(oldest, None)
            add(port, source)
        elif known[0] != port:
            if now - known[1] <= aging and now - reported.get(source, -1e9) >= 10.0:
                moves.append(MacMove(source, known[0], port, not_yet_told))
                reported[source] = now
                not_yet_told = 0
            elif now - known[1] <= aging:
                unreported += 1
                not_yet_told += 1
            remove(known[0], source)
            add(port, source)
        table[source] = (port, now)
        target = table.get(destination)
        if target is not None and now - target[1] > aging:  # aged out: forgotten when used
            del table[destination]
            reported.pop(destination, None)
            remove(target[0], destination)
            target = None
        if not destination_n or target is None:
            assert verdict is (Verdict.FLOOD if may_flood(port, now) else Verdict.FLOOD_LIMITED)
        elif target[0] == port:
            assert verdict is Verdict.FILTER
        else:
            assert verdict == target[0]
        assert len(switch) == len(table) <= capacity
        live = {m: (p, now - seen) for m, (p, seen) in table.items() if now - seen <= aging}
        assert {e.mac: (e.port, e.age) for e in switch.entries(now)} == live
    assert switch.moves == moves
    assert switch.unreported_moves == unreported
