"""The handshake queue (minivpn.wireguard.handshake_queue): bounded, and the judge of "under load".

Each rule of the module documentation, on a fake clock: what is queued and what is refused, the
two ways of being under load (a backlog, and for 1 s after it; the CPU budget of the window,
until the window ends), and the hard limit after which the work waits for the next window.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivpn.wireguard.constants import UNDER_LOAD_AFTER_TIME
from minivpn.wireguard.handshake_queue import (
    HANDSHAKE_CPU_LIMIT,
    HANDSHAKE_TIME_BUDGET,
    QUEUE_SIZE,
    UNDER_LOAD_QUEUE,
    WINDOW,
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


def test_a_backlog_is_load_and_stays_load_for_a_second() -> None:
    queue = HandshakeQueue()
    for _ in range(UNDER_LOAD_QUEUE - 1):
        queue.offer(SOURCE, INITIATION, 10.0)
    assert not queue.under_load(10.0)
    queue.offer(SOURCE, INITIATION, 10.0)
    assert queue.under_load(10.0)
    while len(queue):
        queue.pop()
    assert queue.under_load(10.0 + UNDER_LOAD_AFTER_TIME - 0.001)  # the backlog is gone...
    assert not queue.under_load(10.0 + UNDER_LOAD_AFTER_TIME)  # ... for a second now


def test_the_cpu_budget_makes_load_until_the_window_ends() -> None:
    queue = HandshakeQueue()
    queue.charge(HANDSHAKE_TIME_BUDGET - 0.01, 5.0)  # the window opens at 5.0
    assert not queue.under_load(5.5)
    queue.charge(0.01, 5.5)
    assert queue.under_load(5.5)
    assert queue.under_load(5.0 + WINDOW - 0.001)
    assert not queue.under_load(5.0 + WINDOW)
    assert queue.resume_at(5.9) is None  # under the hard limit: the work goes on


def test_the_cpu_limit_makes_the_work_wait_for_the_next_window() -> None:
    queue = HandshakeQueue()
    queue.charge(HANDSHAKE_CPU_LIMIT, 7.0)
    assert queue.resume_at(7.3) == 7.0 + WINDOW
    assert queue.resume_at(7.0 + WINDOW) is None  # a new window, a new budget
    assert not queue.under_load(7.0 + WINDOW)


def test_budgets_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="budget"):
        HandshakeQueue(budget=0.6, limit=0.5)
    with pytest.raises(ValueError, match="budget"):
        HandshakeQueue(budget=0.0)


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
            assert resume is None or now < resume <= now + WINDOW
        assert len(queue) == len(model) <= size
        assert queue.dropped == refused
