"""Every timer path of the core, driven by a fake clock: no sleeping, no real time.

``net.advance(seconds)`` moves the fake monotonic (and wall) clock forward, calling
``handle_timer`` exactly at each ``next_deadline()``, as a runtime would; datagrams are
delivered at once unless a test holds them back.  Times below are relative to ``t0``, the
moment the session was established or the first packet sent.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers.wgnet import (
    A_ENDPOINT,
    B_ENDPOINT,
    Net,
    Node,
    a_to_b,
    b_to_a,
    connect,
    established,
    pair,
)

from minivpn.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEY_MATERIAL_AFTER,
)
from minivpn.wireguard.events import (
    DropReason,
    HandshakeCompleted,
    HandshakeFailed,
    KeyMaterialZeroed,
)
from minivpn.wireguard.timers import PeerTimers, TimerQueue
from minivpn.wireguard.uapi import PeerSet, SetRequest

INITIATION, RESPONSE, TRANSPORT = 1, 2, 4


def initiation_times(net: Net, node: Node) -> list[float]:
    return [d.sent_at for d in net.datagrams(node, INITIATION)]


def keepalive_times(net: Net, node: Node) -> list[float]:
    return [d.sent_at for d in net.datagrams(node, TRANSPORT) if len(d.data) == 32]


def lonely_a() -> tuple[Net, Node, Node]:
    """A, with a peer B whose endpoint swallows everything (B is not on the network)."""
    net = Net()
    a = net.add("A", A_ENDPOINT, 1)
    b = Net().add("B", B_ENDPOINT, 2)  # configured, but on another "network"
    connect(a, b)
    return net, a, b


# --- handshake retransmission and giving up ------------------------------------------------


def test_initiation_is_retransmitted_every_5_seconds_with_jitter_then_given_up() -> None:
    net, a, b = lonely_a()
    t0 = net.now
    net.send(a, a_to_b(b"waiting"))
    net.advance(200)
    times = initiation_times(net, a)
    # The first attempt and MAX_TIMER_HANDSHAKES + 1 retries, as wireguard-go.
    assert len(times) == MAX_TIMER_HANDSHAKES + 2
    assert times[0] == t0
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(REKEY_TIMEOUT <= gap < REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX for gap in gaps)
    assert len({round(gap, 6) for gap in gaps}) > 1, "the retries are jittered"
    # Retries span the whole REKEY_ATTEMPT_TIME.
    assert times[-1] - t0 >= REKEY_ATTEMPT_TIME
    [(failed_at, name, failed)] = [e for e in net.event_times if isinstance(e[2], HandshakeFailed)]
    assert name == "A"
    assert failed == HandshakeFailed(b.public_key, MAX_TIMER_HANDSHAKES + 2)
    assert (
        times[-1] + REKEY_TIMEOUT
        <= failed_at
        < times[-1] + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
    )
    # The packet waiting for the session was dropped.
    assert a.core.drops[DropReason.STAGED_FLUSHED] == 1
    assert not a.peer(b).staged


def test_after_giving_up_keys_are_zeroed_and_the_next_packet_starts_over() -> None:
    net, a, _ = lonely_a()
    t0 = net.now
    net.send(a, a_to_b())
    net.advance(ZERO_KEY_MATERIAL_AFTER + 200)
    [(failed_at, _, _)] = [e for e in net.event_times if isinstance(e[2], HandshakeFailed)]
    [(zeroed_at, _, _)] = [e for e in net.event_times if isinstance(e[2], KeyMaterialZeroed)]
    assert zeroed_at == pytest.approx(failed_at + ZERO_KEY_MATERIAL_AFTER)
    assert len(initiation_times(net, a)) == MAX_TIMER_HANDSHAKES + 2  # silence since
    assert len(a.core._index) == 0  # no index left behind
    net.send(a, a_to_b())
    assert initiation_times(net, a)[-1] == net.now
    assert net.now > t0


def test_a_completed_handshake_stops_retransmission() -> None:
    net, a, _ = pair()
    net.hold = True
    net.send(a, a_to_b())
    initiation = net.take_held()[0]
    net.advance(REKEY_TIMEOUT + 1)  # one retransmission
    retry = net.take_held()
    assert [d.data[0] for d in retry] == [INITIATION]
    net.hold = False
    net.deliver(retry[0])
    net.advance(60)
    assert initiation_times(net, a) == [initiation.sent_at, retry[0].sent_at]


# --- rekeying ---------------------------------------------------------------------------------


def test_initiator_rekeys_when_sending_after_120_seconds_and_responder_does_not() -> None:
    net, a, b = established()
    t0 = net.now
    before = len(initiation_times(net, a))
    net.advance(REKEY_AFTER_TIME - 1)
    net.send(a, a_to_b(b"at 119 s"))
    net.send(b, b_to_a(b"at 119 s"))
    assert len(initiation_times(net, a)) == before
    net.advance(2)
    net.send(b, b_to_a(b"responder at 121 s"))
    assert initiation_times(net, b) == []  # only the initiator rekeys on time
    assert len(initiation_times(net, a)) == before
    net.send(a, a_to_b(b"initiator at 121 s"))
    assert initiation_times(net, a)[-1] == pytest.approx(t0 + REKEY_AFTER_TIME + 1)
    # The new handshake completed; a new current keypair on both sides.
    completed = [e for e in net.event_times if isinstance(e[2], HandshakeCompleted) and e[0] > t0]
    assert [name for _, name, _ in completed] == ["A", "B"]
    assert a.peer(b).keypairs.current.created == pytest.approx(t0 + 121)  # type: ignore[union-attr]


def test_keypair_is_rejected_after_180_seconds() -> None:
    net, a, b = established()
    t0 = net.now
    net.hold = True
    net.advance(100)
    net.take_held()
    net.send(a, a_to_b(b"sent at 100 s"))
    [late] = net.take_held()
    net.advance(REJECT_AFTER_TIME - 100 + 1)
    net.take_held()  # whatever the timers sent meanwhile is lost
    net.deliver(late)  # arrives at 181 s: its keypair is too old
    assert b.delivered == []
    assert b.drops() == {"keypair_expired": 1}
    # B cannot send with it either: its packet is staged and a handshake starts.
    net.send(b, b_to_a(b"at 181 s"))
    held = net.take_held()
    assert [d.data[0] for d in held] == [INITIATION]
    assert b.peer(a).staged
    assert net.now == pytest.approx(t0 + REJECT_AFTER_TIME + 1)


def test_initiator_that_only_receives_rekeys_before_expiry() -> None:
    net, a, b = established()
    t0 = net.now
    net.advance(160)
    net.send(b, b_to_a(b"at 160 s"))
    assert len(initiation_times(net, a)) == 1  # only the first handshake
    net.advance(6)  # 166 s: past REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
    net.send(b, b_to_a(b"at 166 s"))
    times = initiation_times(net, a)
    assert len(times) == 2
    assert times[-1] == pytest.approx(t0 + 166)


# --- keepalives -------------------------------------------------------------------------------


def test_passive_keepalive_10_seconds_after_receiving_data() -> None:
    net, _, b = established()
    t0 = net.now
    net.advance(30)
    # The data that confirmed the session at t0 gets a keepalive at t0 + 10, and only one.
    assert keepalive_times(net, b) == [pytest.approx(t0 + KEEPALIVE_TIMEOUT)]


def test_no_passive_keepalive_when_we_answered_with_data() -> None:
    net, a, b = established()
    t0 = net.now
    net.advance(5)
    net.send(b, b_to_a(b"an answer"))
    net.advance(30)
    # B answered within 10 s, so no keepalive from B; A got data, so A sends one at 15 s.
    assert keepalive_times(net, b) == []
    assert keepalive_times(net, a)[-1] == pytest.approx(t0 + 5 + KEEPALIVE_TIMEOUT)


def test_data_while_keepalive_is_pending_asks_for_another_one() -> None:
    net, a, b = established()
    t0 = net.now
    net.advance(3)
    net.send(a, a_to_b(b"more"))
    net.advance(40)
    assert keepalive_times(net, b) == [
        pytest.approx(t0 + KEEPALIVE_TIMEOUT),
        pytest.approx(t0 + 2 * KEEPALIVE_TIMEOUT),
    ]


def test_new_handshake_15_seconds_after_data_sent_without_answer() -> None:
    net, a, _ = pair()
    net.send(a, a_to_b(b"first"))  # the session is up; B will not answer this one
    t0 = net.now
    del net.nodes[B_ENDPOINT]  # B vanishes: nothing comes back
    net.advance(3)
    net.send(a, a_to_b(b"anybody there?"))  # does not push the timer back: it is pending
    net.advance(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 1)
    times = initiation_times(net, a)
    assert len(times) == 2
    waited = times[-1] - t0
    assert waited >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
    assert waited < KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX


def test_answer_cancels_the_new_handshake_timer() -> None:
    net, a, b = established()
    net.send(a, a_to_b(b"question"))
    net.advance(2)
    net.send(b, b_to_a(b"answer"))
    net.advance(30)
    assert len(initiation_times(net, a)) == 1


def _turn_persistent_keepalive_on(net: Net, a: Node, b: Node, seconds: int) -> None:
    set_request = SetRequest(peers=[PeerSet(b.public_key, persistent_keepalive_interval=seconds)])
    assert a.core.apply(set_request, net.now) == 0
    net.handle(a, a.core.take_actions())


def test_persistent_keepalive_every_interval_while_idle() -> None:
    net, a, b = established()
    net.advance(30)  # let the passive keepalive of the handshake go by
    t1 = net.now
    _turn_persistent_keepalive_on(net, a, b, 25)
    net.advance(80)
    assert [t for t in keepalive_times(net, a) if t >= t1] == [
        pytest.approx(t1 + 25 * n) for n in (0, 1, 2, 3)
    ]
    assert [d for d in net.sent if d.source == B_ENDPOINT and d.sent_at >= t1] == []


def test_persistent_keepalive_comes_25_seconds_after_the_last_authenticated_packet() -> None:
    net, a, b = established()
    net.advance(30)
    t1 = net.now
    _turn_persistent_keepalive_on(net, a, b, 25)
    for _ in range(4):
        net.advance(20)
        net.send(a, a_to_b(b"busy"))  # each packet (and B's keepalive answer) pushes it back
    net.advance(60)
    traffic = sorted(
        d.sent_at for d in net.sent if A_ENDPOINT in (d.source, d.destination) and d.sent_at >= t1
    )
    persistent = [t for t in keepalive_times(net, a) if t > t1]
    assert persistent, "idle at the end: at least one persistent keepalive"
    for at in persistent:
        previous = max(t for t in traffic if t < at)
        assert at - previous == pytest.approx(25)
    # ...and A was never silent for longer than the interval.
    assert max(later - earlier for earlier, later in itertools.pairwise(traffic)) <= 25 + 1e-9


def test_key_material_is_zeroed_540_seconds_after_the_last_session() -> None:
    net, a, b = established()
    t0 = net.now
    net.advance(ZERO_KEY_MATERIAL_AFTER - 1)
    assert a.peer(b).keypairs.current is not None
    net.advance(2)
    zeroed = [(t, name) for t, name, e in net.event_times if isinstance(e, KeyMaterialZeroed)]
    assert zeroed == [
        (pytest.approx(t0 + ZERO_KEY_MATERIAL_AFTER), "A"),
        (pytest.approx(t0 + ZERO_KEY_MATERIAL_AFTER), "B"),
    ]
    assert a.peer(b).keypairs.current is None
    assert len(a.core._index) == 0
    assert a.core.next_deadline() is None
    # A new packet simply starts a new session.
    net.send(a, a_to_b(b"again"))
    assert b.delivered[-1] == a_to_b(b"again")


# --- the deadline bookkeeping -------------------------------------------------------------


def _armed_deadlines(node: Node) -> list[float]:
    return [at for peer in node.core.peers.values() for at in peer.timers.armed().values()]


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "wait", "lose", "keepalive"]),
            st.floats(min_value=0.001, max_value=40),
        ),
        max_size=40,
    )
)
def test_next_deadline_is_never_later_than_an_armed_timer(steps: list[tuple[str, float]]) -> None:
    net, a, b = pair(seed=21)
    for action, amount in steps:
        if action == "a":
            net.send(a, a_to_b())
        elif action == "b":
            net.send(b, b_to_a())
        elif action == "lose":
            net.hold = not net.hold
            net.take_held()
        elif action == "keepalive":
            a.peer(b).persistent_keepalive_interval = int(amount) + 1
        else:
            net.advance(amount)
        for node in (a, b):
            deadline = node.core.next_deadline()
            armed = _armed_deadlines(node)
            if armed:
                assert deadline is not None
                assert deadline <= min(armed)
    net.hold = False
    net.advance(1000)  # and everything settles without endless timers


def test_timer_queue_skips_stale_entries_and_returns_each_peer_once() -> None:
    queue = TimerQueue()
    _, a, b = pair()
    first = PeerTimers(a.peer(b), queue, random.Random(1))
    second = PeerTimers(b.peer(a), queue, random.Random(2))
    first.schedule(10.0)
    first.schedule(5.0)  # earlier: a second entry, the 10 s one goes stale
    second.schedule(7.0)
    assert queue.next_deadline() == 5.0
    assert queue.pop_due(4.0) == []
    assert queue.pop_due(8.0) == [first, second]
    assert math.isinf(first.scheduled_at)
    assert queue.pop_due(20.0) == []  # the stale 10 s entry is skipped
    assert queue.next_deadline() is None
    second.stop()
    second.schedule(1.0)
    assert queue.next_deadline() is None  # stopped timers are never due
