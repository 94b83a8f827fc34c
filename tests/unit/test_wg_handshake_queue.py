"""The handshake queue (minivpn.wireguard.handshake_queue): bounded, and the judge of "under load".

Each rule of the module documentation, on a fake clock: what is queued and what is refused,
being under load (a backlog, and for 1 s after it), and the CPU budget, a token bucket.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivpn.wireguard.constants import UNDER_LOAD_AFTER_TIME
from minivpn.wireguard.handshake_queue import (
    HANDSHAKE_TIME_BUDGET,
    HANDSHAKE_TIME_BURST,
    QUEUE_SIZE,
    UNDER_LOAD_QUEUE,
    HandshakeQueue,
    is_handshake_message,
)

SOURCE = ("192.0.2.1", 51820)
INITIATION = bytes([1, 0, 0, 0]) + bytes(144)
RESPONSE = bytes([2, 0, 0, 0]) + bytes(88)
COOKIE_REPLY = bytes([3, 0, 0, 0]) + bytes(60)


def test_handshake_messages_are_told_by_type_word_and_exact_size() -> None:
    for message in (INITIATION, RESPONSE, COOKIE_REPLY):
        assert is_handshake_message(message)
        assert is_handshake_message(memoryview(bytearray(message)))
        assert not is_handshake_message(message[:-1])
        assert not is_handshake_message(message + b"\0")
        reserved = bytearray(message)
        reserved[2] = 1  # the type is a 32-bit word: reserved bytes must be zero
        assert not is_handshake_message(bytes(reserved))
    data = bytes([4, 0, 0, 0]) + bytes(60)  # a data message of a cookie reply's size
    assert not is_handshake_message(data)
    assert not is_handshake_message(b"")
    assert not is_handshake_message(b"\x01")


def test_messages_come_out_in_order_as_copies() -> None:
    queue = HandshakeQueue()
    buffer = bytearray(INITIATION)
    assert queue.offer(SOURCE, memoryview(buffer), 0.0)
    buffer[5] = 0xFF  # the receive buffer is reused at once: the queue kept its own copy
    assert queue.offer(("192.0.2.2", 1), RESPONSE, 0.0)
    assert len(queue) == 2
    assert queue.pop() == (SOURCE, INITIATION)
    assert queue.pop() == (("192.0.2.2", 1), RESPONSE)
    assert len(queue) == 0
    with pytest.raises(IndexError):
        queue.pop()


def test_a_full_queue_refuses_and_counts() -> None:
    queue = HandshakeQueue()
    accepted = [queue.offer(SOURCE, INITIATION, 0.0) for _ in range(QUEUE_SIZE + 10)]
    assert accepted == [True] * QUEUE_SIZE + [False] * 10
    assert queue.dropped == 10
    assert len(queue) == QUEUE_SIZE
    queue.pop()
    assert queue.offer(SOURCE, INITIATION, 0.0)  # room again


def test_a_backlog_beyond_the_budget_is_load_and_stays_load_for_a_second() -> None:
    queue = HandshakeQueue()
    queue.charge(HANDSHAKE_TIME_BURST, 10.0)  # the budget is used up
    for _ in range(UNDER_LOAD_QUEUE - 1):
        queue.offer(SOURCE, INITIATION, 10.0)
    assert not queue.under_load(10.0)
    queue.offer(SOURCE, INITIATION, 10.0)
    assert queue.under_load(10.0)
    while len(queue):
        queue.pop()
    assert queue.under_load(10.0 + UNDER_LOAD_AFTER_TIME - 0.001)  # the backlog is gone...
    assert not queue.under_load(10.0 + UNDER_LOAD_AFTER_TIME)  # ... for a second now


def test_a_burst_the_budget_can_still_clear_is_not_load() -> None:
    queue = HandshakeQueue()
    for _ in range(QUEUE_SIZE):
        queue.offer(SOURCE, INITIATION, 10.0)
    assert not queue.under_load(10.0)
    queue.charge(HANDSHAKE_TIME_BURST / 2, 10.01)
    queue.pop()
    queue.offer(SOURCE, INITIATION, 10.01)
    assert not queue.under_load(10.01)
    queue.charge(HANDSHAKE_TIME_BURST, 10.02)  # now it cannot keep up
    queue.pop()
    queue.offer(SOURCE, INITIATION, 10.02)
    assert queue.under_load(10.02)


def test_the_cpu_budget_is_a_token_bucket() -> None:
    queue = HandshakeQueue()
    assert queue.resume_at(5.0) is None  # a full bucket to start with
    queue.charge(HANDSHAKE_TIME_BURST, 5.0)
    resume = queue.resume_at(5.0)  # used up: wait for the refill
    assert resume is not None
    assert resume == pytest.approx(5.0)
    queue.charge(0.002, 5.0)  # a slice that ran on past the end of the budget: a debt
    resume = queue.resume_at(5.0)
    assert resume == pytest.approx(5.0 + 0.002 / HANDSHAKE_TIME_BUDGET)
    assert queue.resume_at(resume) is None
    # Idle time refills the bucket at HANDSHAKE_TIME_BUDGET a second, up to the burst only.
    queue.charge(HANDSHAKE_TIME_BURST, 100.0)
    assert queue.resume_at(100.0) is not None
    queue.charge(HANDSHAKE_TIME_BURST - 0.001, 200.0)
    assert queue.resume_at(200.0) is None
    queue.charge(0.0011, 200.0)
    assert queue.resume_at(200.0) is not None


def test_budget_over_time_is_the_budget_rate() -> None:
    """A worker that runs whenever allowed, in 2 ms slices, uses HANDSHAKE_TIME_BUDGET a second."""
    queue = HandshakeQueue()
    now, used = 0.0, 0.0
    while now < 100.0:
        resume = queue.resume_at(now)
        if resume is not None:
            now = resume
            continue
        queue.charge(0.002, now + 0.002)
        used += 0.002
        now += 0.002
    assert used / now == pytest.approx(HANDSHAKE_TIME_BUDGET, rel=0.01)


def test_budgets_must_make_sense() -> None:
    with pytest.raises(ValueError, match="budget"):
        HandshakeQueue(budget=1.5)
    with pytest.raises(ValueError, match="budget"):
        HandshakeQueue(budget=0.0)
    with pytest.raises(ValueError, match="burst"):
        HandshakeQueue(burst=0.0)


@settings(max_examples=200)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["offer", "pop", "charge"]),
            st.floats(0, 0.3),  # seconds later
            st.floats(0, 0.2),  # CPU seconds, for "charge"
        ),
        max_size=300,
    ),
    size=st.integers(1, 200),
)
def test_any_sequence_keeps_the_bound_and_the_count(
    steps: list[tuple[str, float, float]], size: int
) -> None:
    """A model: never more than *size* waiting, every refusal counted, FIFO order kept."""
    queue = HandshakeQueue(size)
    now = 100.0
    model: list[int] = []
    refused = 0
    number = 0
    for action, later, cpu in steps:
        now += later
        if action == "offer":
            number += 1
            message = number.to_bytes(4, "big")
            if queue.offer(SOURCE, message, now):
                model.append(number)
            else:
                refused += 1
        elif action == "pop" and model:
            assert queue.pop()[1] == model.pop(0).to_bytes(4, "big")
        else:
            queue.charge(cpu, now)
            resume = queue.resume_at(now)
            assert resume is None or now < resume <= now + (cpu + 1) / HANDSHAKE_TIME_BUDGET
        assert len(queue) == len(model) <= size
        assert queue.dropped == refused


def test_a_flood_stays_load_while_it_lasts_and_a_trickle_does_not() -> None:
    """Under load, messages are cheap and the backlog goes; the flood's rate keeps it load."""
    queue = HandshakeQueue(size=QUEUE_SIZE)
    source = ("192.0.2.9", 1)
    now = 10.0
    for _ in range(UNDER_LOAD_QUEUE):  # a backlog with the budget used up: load
        queue.offer(source, INITIATION, now)
    queue.charge(1.0, now)
    queue.offer(source, INITIATION, now)
    assert queue.under_load(now)
    while queue:
        queue.pop()
    # Then 5 s of 2000 messages a second, each taken at once and cheaply: still load.
    for _ in range(10_000):
        now += 1 / 2000
        assert queue.offer(source, INITIATION, now)
        queue.pop()
        queue.charge(5e-6, now)
        assert queue.under_load(now), now
    # The flood ends: once the last second's rate is under UNDER_LOAD_RATE (within a second)
    # and a second more has passed, load is over, and 10 messages a second do not keep it.
    end = now
    for _ in range(40):
        now += 0.1
        queue.offer(source, INITIATION, now)
        queue.pop()
    assert queue.under_load(end + 0.5)
    assert not queue.under_load(end + 1.0 + UNDER_LOAD_AFTER_TIME + 0.01)
    assert not queue.under_load(now)


def test_a_high_rate_alone_is_not_load() -> None:
    """2000 cheap messages a second that the budget clears never start load by themselves."""
    queue = HandshakeQueue(size=QUEUE_SIZE)
    now = 10.0
    for _ in range(4000):
        now += 1 / 2000
        queue.offer(("192.0.2.9", 1), INITIATION, now)
        queue.pop()
        queue.charge(5e-6, now)
        assert not queue.under_load(now)
