"""Tests of the per-source handshake rate limiter (minivpn.wireguard.ratelimit).

The schedule is the kernel's self-test (wireguard-linux-compat src/selftest/ratelimiter.c), run
on a fake clock instead of msleep(): a burst of 5 passes, the 6th is refused, 1/20 s later one
more passes, 2/20 s later two more.
"""

from __future__ import annotations

import ipaddress
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from minivpn.wireguard.ratelimit import PACKETS_BURSTABLE, PACKETS_PER_SECOND, RateLimiter

COST = Fraction(1, PACKETS_PER_SECOND)  # seconds of refill per packet

# (seconds to wait before, expected result), as in the kernel's expected_results[].
SCHEDULE: list[tuple[Fraction, bool]] = [
    *[(Fraction(0), True)] * PACKETS_BURSTABLE,
    (Fraction(0), False),
    (COST, True),
    (Fraction(0), False),
    (2 * COST, True),
    (Fraction(0), True),
    (Fraction(0), False),
]

SOURCES = [
    ipaddress.ip_address(text).packed
    for text in (
        "192.0.2.1",
        "198.51.100.77",
        "203.0.113.255",
        "10.1.2.3",
        "fd00::1",
        "fd00:5100:100::2",
        "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    )
]


def test_kernel_schedule_for_every_source_independently() -> None:
    limiter = RateLimiter()
    now = Fraction(1000)
    for step, (wait, expected) in enumerate(SCHEDULE):
        now += wait
        for source in SOURCES:
            assert limiter.allow(source, float(now)) is expected, (step, source)
            # The kernel also checks that a different source, new at this moment, passes.
            neighbour = bytes([source[0] ^ 0x80, *source[1:-1], (source[-1] + step + 1) % 256])
            assert limiter.allow(neighbour, float(now)), (step, neighbour)


def test_port_is_not_part_of_the_key_and_v4_v6_are_distinct() -> None:
    limiter = RateLimiter()
    v4 = ipaddress.ip_address("192.0.2.1").packed
    mapped = ipaddress.ip_address("::ffff:192.0.2.1").packed
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(v4, 5.0)
    assert not limiter.allow(v4, 5.0)
    assert limiter.allow(mapped, 5.0)


def test_refill_is_capped_at_the_burst() -> None:
    limiter = RateLimiter()
    source = ipaddress.ip_address("198.51.100.1").packed
    assert limiter.allow(source, 0.0)
    # 0.9 s of silence is 18 packets worth of refill, but the bucket holds only 5.
    results = [limiter.allow(source, 0.9) for _ in range(PACKETS_BURSTABLE + 1)]
    assert results == [True] * PACKETS_BURSTABLE + [False]


def test_idle_entries_are_collected() -> None:
    limiter = RateLimiter()
    for i in range(10):
        limiter.allow(bytes([10, 0, 0, i]), 1.0)
    assert len(limiter) == 10
    limiter.allow(bytes([10, 0, 1, 0]), 1.5)
    limiter.collect(2.0)  # nothing idle for more than 1 s yet
    assert len(limiter) == 11
    limiter.collect(2.2)
    assert len(limiter) == 1
    # allow() collects on its own, at most once a second.
    limiter.allow(bytes([10, 0, 2, 0]), 10.0)
    assert len(limiter) == 1


def test_capacity_refuses_new_sources_when_full() -> None:
    limiter = RateLimiter(max_entries=3)
    assert [limiter.allow(bytes([10, 0, 0, i]), 0.0) for i in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert limiter.allow(bytes([10, 0, 0, 0]), 0.0)  # known sources still get their tokens
    # Once the old entries are idle for over a second they make room again.
    assert limiter.allow(bytes([10, 0, 0, 3]), 1.5)


def test_clock_going_backwards_refills_nothing() -> None:
    limiter = RateLimiter()
    source = b"\x0a\x00\x00\x01"
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(source, 100.0)
    assert not limiter.allow(source, 99.0)  # no refill, and no debt either:
    assert limiter.allow(source, 99.0 + float(COST))  # one packet's worth after the step back


class BucketModel:
    """An independent token bucket, in exact fractions of a packet, that never forgets."""

    def __init__(self) -> None:
        self.buckets: dict[int, tuple[Fraction, Fraction]] = {}  # source -> (time, tokens)

    def allow(self, source: int, now: Fraction) -> bool:
        if source not in self.buckets:
            self.buckets[source] = (now, Fraction(PACKETS_BURSTABLE - 1))
            return True
        last, tokens = self.buckets[source]
        tokens = min(Fraction(PACKETS_BURSTABLE), tokens + (now - last) * PACKETS_PER_SECOND)
        if tokens >= 1:
            self.buckets[source] = (now, tokens - 1)
            return True
        self.buckets[source] = (now, tokens)
        return False


@settings(max_examples=200)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.one_of(st.integers(0, 60), st.integers(0, 1500), st.sampled_from([50, 1000, 1001])),
        ),
        max_size=120,
    )
)
def test_matches_an_exact_model_including_garbage_collection(
    steps: list[tuple[int, int]],
) -> None:
    # Waits are whole milliseconds, so float seconds round to exact nanoseconds.  Gaps of more
    # than a second make the limiter collect entries: that must never change a decision.
    limiter = RateLimiter()
    model = BucketModel()
    now_ms = 0
    for source, wait_ms in steps:
        now_ms += wait_ms
        expected = model.allow(source, Fraction(now_ms, 1000))
        assert limiter.allow(bytes([10, 0, 0, source]), now_ms / 1000) is expected
