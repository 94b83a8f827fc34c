"""Tests of the RFC 6479 replay window (minivpn.wireguard.replay).

The numbered cases and the window sweeps are the kernel's counter self-test
(wireguard-linux-compat src/selftest/counter.c, ported to wireguard-go as
replay/replay_test.go), written out again here as data.  The property test compares the filter
with a model that has no ring at all: a set of accepted counters and their maximum.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivpn.wireguard.constants import REJECT_AFTER_MESSAGES
from minivpn.wireguard.replay import WINDOW_SIZE, ReplayFilter

W = WINDOW_SIZE
T_LIM = W + 1
R = REJECT_AFTER_MESSAGES

# (case number, counter, expected) from counter.c, in order, all on one filter.
NUMBERED_CASES = [
    (1, 0, True),
    (2, 1, True),
    (3, 1, False),
    (4, 9, True),
    (5, 8, True),
    (6, 7, True),
    (7, 7, False),
    (8, T_LIM, True),
    (9, T_LIM - 1, True),
    (10, T_LIM - 1, False),
    (11, T_LIM - 2, True),
    (12, 2, True),
    (13, 2, False),
    (14, T_LIM + 16, True),
    (15, 3, False),
    (16, T_LIM + 16, False),
    (17, T_LIM * 4, True),
    (18, T_LIM * 4 - (T_LIM - 1), True),
    (19, 10, False),
    (20, T_LIM * 4 - T_LIM, False),
    (21, T_LIM * 4 - (T_LIM + 1), False),
    (22, T_LIM * 4 - (T_LIM - 2), True),
    (23, T_LIM * 4 + 1 - T_LIM, False),
    (24, 0, False),
    (25, R, False),
    (26, R - 1, True),
    (27, R, False),
    (28, R - 1, False),
    (29, R - 2, True),
    (30, R + 1, False),
    (31, R + 2, False),
    (32, R - 2, False),
    (33, R - 3, True),
    (34, 0, False),
]


def test_window_size_is_rfc6479_with_128_blocks() -> None:
    assert W == (128 - 1) * 64 == 8128
    assert R == 2**64 - 2**13 - 1


def test_numbered_counter_selftest_cases() -> None:
    replay = ReplayFilter()
    assert [n for n, _, _ in NUMBERED_CASES] == list(range(1, 35))
    failures = [
        (number, counter, expected)
        for number, counter, expected in NUMBERED_CASES
        if replay.check_and_update(counter) is not expected
    ]
    assert failures == []


def _sweeps() -> dict[str, list[tuple[int, bool]]]:
    """The kernel's window sweeps after the numbered cases, each on a fresh filter."""
    return {
        # Every counter of a full window in order, then the one just below it.
        "up_from_1": [(i, True) for i in range(1, W + 1)] + [(0, True), (0, False)],
        "up_from_2": [(i, True) for i in range(2, W + 2)] + [(1, True), (0, False)],
        # Backwards: each new counter is older than all before, but all stay in the window.
        "down_to_0": [(i, True) for i in range(W, -1, -1)],
        "down_to_1": [(i, True) for i in range(W + 1, 0, -1)] + [(0, False)],
        "down_then_new_top": [(i, True) for i in range(W, 0, -1)] + [(W + 1, True), (0, False)],
        "down_then_0_then_new_top": [(i, True) for i in range(W, 0, -1)]
        + [(0, True), (W + 1, True)],
        # wireguard-go's port writes sweep 3 and 4 one higher (W+1..1 and W+2..2).
        "go_down_to_1": [(i, True) for i in range(W + 1, 0, -1)],
        "go_down_to_2": [(i, True) for i in range(W + 2, 1, -1)] + [(0, False)],
    }


@pytest.mark.parametrize("name", sorted(_sweeps()))
def test_window_sweeps(name: str) -> None:
    replay = ReplayFilter()
    steps = _sweeps()[name]
    got = [(counter, replay.check_and_update(counter)) for counter, _ in steps]
    assert got == steps


def test_reset_forgets_everything() -> None:
    replay = ReplayFilter()
    for counter in (0, 1, 5000, 100_000):
        assert replay.check_and_update(counter)
    replay.reset()
    assert replay.check_and_update(0)
    assert replay.check_and_update(1)
    assert replay.check_and_update(5000)


@pytest.mark.parametrize("last", [64 * 300, 64 * 300 + 31, 64 * 300 + 63])
def test_boundary_is_exact_wherever_the_top_is_in_its_block(last: int) -> None:
    replay = ReplayFilter()
    assert replay.check_and_update(last)
    assert not replay.check_and_update(last - W - 1)
    assert replay.check_and_update(last - W)
    assert not replay.check_and_update(last - W)


def test_long_in_order_stream_reuses_every_ring_slot() -> None:
    # 4 laps of the 8192-bit ring: every slot is reused and must be zeroed before reuse.
    replay = ReplayFilter()
    assert all(replay.check_and_update(counter) for counter in range(4 * 8192 + 100))
    assert not any(replay.check_and_update(counter) for counter in range(3 * 8192, 4 * 8192))


def test_bits_of_a_block_that_left_the_window_do_not_reject_new_counters() -> None:
    # Block 200 is the highest; block 73 = 200 - 127 shares its ring slot with block 201.
    replay = ReplayFilter()
    top = 64 * 200 + 63
    assert replay.check_and_update(top)
    oldest = top - W  # 64 * 73 + 63: bit 63 of block 73
    assert replay.check_and_update(oldest)
    # Sliding into block 201 reuses block 73's slot: the stale bit 63 must be gone.
    assert replay.check_and_update(64 * 201 + 63)
    assert not replay.check_and_update(oldest)  # now too old


def test_a_counter_far_ahead_makes_old_ones_too_old() -> None:
    # Why the filter must only see authenticated counters: one forged high counter would
    # push every genuine packet out of the window.
    replay = ReplayFilter()
    assert replay.check_and_update(10)
    assert replay.check_and_update(2**40)
    assert not replay.check_and_update(11)


def test_limit_is_exclusive_and_does_not_change_state() -> None:
    replay = ReplayFilter()
    assert not replay.check_and_update(100, limit=100)
    assert replay.check_and_update(99, limit=100)
    # 100 was refused without moving the window, so 0 is still inside it... and fresh.
    assert replay.check_and_update(0, limit=100)


def test_negative_counter_is_refused() -> None:
    assert not ReplayFilter().check_and_update(-1)


class SetModel:
    """The replay rule without the ring: a set of accepted counters and the highest one.

    A counter is accepted iff it is below the limit, was never accepted, and is no more than
    WINDOW_SIZE below the highest accepted counter (0 before any).  This is the semantics of
    wireguard-go's ValidateCounter: the ring's memory is block-granular (it could tell counters
    up to 8191 back apart), but the explicit ``last - counter > WINDOW_SIZE`` test makes the
    boundary exact, and 128 blocks always cover the 8129 counters last-8128..last.
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last = 0

    def check_and_update(self, counter: int, limit: int) -> bool:
        if counter >= limit or counter in self.seen or counter < self.last - W:
            return False
        self.seen.add(counter)
        self.last = max(self.last, counter)
        return True


_distances = st.one_of(
    st.integers(0, 200),
    st.integers(W - 70, W + 140),  # around the window edge and the slack block
    st.integers(0, 3 * W),
    st.sampled_from([64, 127 * 64, 128 * 64, 129 * 64, 2**20, 2**40]),
)
_steps = st.lists(
    st.tuples(
        st.sampled_from(["ahead", "behind", "behind", "absolute"]), _distances, st.booleans()
    ),
    max_size=200,
)


@settings(max_examples=300)
@given(steps=_steps)
def test_filter_matches_the_set_model(steps: list[tuple[str, int, bool]]) -> None:
    replay = ReplayFilter()
    model = SetModel()
    for kind, distance, low_limit in steps:
        if kind == "ahead":
            counter = model.last + distance
        elif kind == "behind":
            counter = max(0, model.last - distance)
        else:
            counter = distance
        # Now and then a limit close to the counter, to exercise "counter >= limit".
        limit = model.last + 100 if low_limit else REJECT_AFTER_MESSAGES
        expected = model.check_and_update(counter, limit)
        assert replay.check_and_update(counter, limit) is expected, (kind, counter, limit)


@given(
    start=st.integers(0, 2**63),
    offsets=st.lists(st.integers(0, W), unique=True, max_size=300),
)
def test_everything_inside_the_window_is_accepted_once(start: int, offsets: list[int]) -> None:
    replay = ReplayFilter()
    top = start + W
    assert replay.check_and_update(top)
    for offset in offsets:
        if offset == W:
            continue  # that is top itself
        assert replay.check_and_update(start + offset)
    for offset in offsets:
        assert not replay.check_and_update(start + offset)
