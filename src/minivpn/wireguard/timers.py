"""WireGuard's timers, as deadlines computed from the ``now`` the runtime passes in.

WireGuard keeps a session healthy with five timers per peer (paper, section 6; wireguard-go
``device/timers.go``, itself a port of the kernel's ``timers.c``).  Each is armed and cancelled by
a handful of *events* in the life of the peer:

======================  ===================================================  ====================
timer                   armed by (deadline)                                  on expiry
======================  ===================================================  ====================
retransmit_handshake    initiation sent (REKEY_TIMEOUT + jitter)             send it again, or
                                                                             give up after
                                                                             MAX_TIMER_HANDSHAKES
send_keepalive          data received, if not armed (KEEPALIVE_TIMEOUT)      send a keepalive
new_handshake           data sent, if not armed (KEEPALIVE_TIMEOUT +         new handshake: the
                        REKEY_TIMEOUT + jitter)                              peer went quiet
zero_key_material       session derived (3 x REJECT_AFTER_TIME)              forget every key
persistent_keepalive    any authenticated packet sent or received            send a keepalive
                        (the peer's interval, if set)
======================  ===================================================  ====================

and cancelled by: ``send_keepalive`` when anything authenticated is sent (the peer heard from us
anyway), ``new_handshake`` when anything authenticated is received, ``retransmit_handshake``
when the handshake completes.

Here a timer is just a deadline attribute of :class:`PeerTimers` (None when not armed): arming
and cancelling are attribute assignments, cheap enough to do for every data packet.  The core
answers "when must I be woken up?" with :class:`TimerQueue`, a heap holding, per peer, the
earliest deadline that peer *may* have.

The heap is *lazy*: it is only pushed to when a peer's earliest deadline moves earlier, never
when a deadline moves later or is cancelled.  (That happens on every packet: each sent packet
pushes the persistent keepalive back, each received one cancels new_handshake.)  So the top of
the heap is a lower bound, and sometimes the core wakes up to find nothing due; it then just
re-files the peer under its real earliest deadline.  A wasted wake-up every few seconds is a
much better deal than heap operations on every packet.

Other time-based rules are not timers but checks done when a packet goes by: a keypair older than
REKEY_AFTER_TIME triggers a new handshake when the initiator sends; one older than
REJECT_AFTER_TIME is no longer used (:mod:`minivpn.wireguard.keypair`).  The constants
themselves are in :mod:`minivpn.wireguard.constants`.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from typing import TYPE_CHECKING

from minivpn.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEY_MATERIAL_AFTER,
)

if TYPE_CHECKING:
    import random

    from minivpn.wireguard.peer import Peer

__all__ = ["PeerTimers", "Timer", "TimerQueue"]


class Timer(enum.Enum):
    """The five per-peer timers, in the order the core runs them when several are due."""

    RETRANSMIT_HANDSHAKE = "retransmit_handshake"
    NEW_HANDSHAKE = "new_handshake"
    SEND_KEEPALIVE = "send_keepalive"
    PERSISTENT_KEEPALIVE = "persistent_keepalive"
    ZERO_KEY_MATERIAL = "zero_key_material"


class TimerQueue:
    """The device's wake-up list: a heap of ``(deadline, sequence, peer timers)``.

    An entry is *live* when its deadline equals the peer's :attr:`PeerTimers.scheduled_at`;
    other entries are stale leftovers of the lazy scheme (see the module docstring) and are
    skipped.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, PeerTimers]] = []
        # A tie-breaker, so that the heap never compares two PeerTimers.
        self._sequence = itertools.count()

    def push(self, deadline: float, timers: PeerTimers) -> None:
        """File ``timers`` under ``deadline`` (called by :meth:`PeerTimers.schedule`)."""
        heapq.heappush(self._heap, (deadline, next(self._sequence), timers))

    @staticmethod
    def _is_live(deadline: float, timers: PeerTimers) -> bool:
        return timers.active and deadline == timers.scheduled_at

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None when no timer is armed.

        It can be earlier than any deadline that is really due (a lower bound).
        """
        heap = self._heap
        while heap and not self._is_live(heap[0][0], heap[0][2]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[PeerTimers]:
        """Remove and return the peers whose filed deadline is at or before ``now``.

        Each returned peer is no longer filed anywhere (``scheduled_at`` is infinity): the
        caller runs its expired timers, then files it again with :meth:`PeerTimers.reschedule`.
        """
        due: list[PeerTimers] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, timers = heapq.heappop(heap)
            if self._is_live(deadline, timers):
                timers.scheduled_at = math.inf
                due.append(timers)
        return due

    def __len__(self) -> int:
        """Entries in the heap, stale ones included (for tests and statistics)."""
        return len(self._heap)


class PeerTimers:
    """The timer state of one peer: five deadlines and the counters that go with them.

    The methods are named after wireguard-go's ``timers*`` event functions; the core calls them
    as things happen.  Times are seconds on the monotonic clock the runtime passes in.

    Attributes:
        peer: the peer these timers belong to.
        retransmit_handshake_at: deadline of the retransmit_handshake timer, or None.
        send_keepalive_at: deadline of the send_keepalive timer, or None.
        new_handshake_at: deadline of the new_handshake timer, or None.
        zero_key_material_at: deadline of the zero_key_material timer, or None.
        persistent_keepalive_at: deadline of the persistent_keepalive timer, or None.
        handshake_attempts: retries of the handshake in progress.
        need_another_keepalive: data arrived while send_keepalive was armed: re-arm it once
            it has fired.
        sent_last_minute_handshake: the initiator already started a handshake because its
            keypair is about to expire (REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT).
        scheduled_at: the deadline under which this peer is filed in the :class:`TimerQueue`
            (infinity when not filed); never later than any armed deadline.
        active: False once the peer is removed: its queue entries are then ignored.
    """

    __slots__ = (
        "_jitter",
        "_queue",
        "active",
        "handshake_attempts",
        "need_another_keepalive",
        "new_handshake_at",
        "peer",
        "persistent_keepalive_at",
        "retransmit_handshake_at",
        "scheduled_at",
        "send_keepalive_at",
        "sent_last_minute_handshake",
        "zero_key_material_at",
    )

    def __init__(self, peer: Peer, queue: TimerQueue, jitter: random.Random) -> None:
        """Create the (all disarmed) timers of ``peer``.

        Args:
            peer: the peer.
            queue: the device's timer queue.
            jitter: the random source for retransmission jitter.
        """
        self.peer = peer
        self._queue = queue
        self._jitter = jitter
        self.retransmit_handshake_at: float | None = None
        self.send_keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.zero_key_material_at: float | None = None
        self.persistent_keepalive_at: float | None = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.scheduled_at = math.inf
        self.active = True

    def __repr__(self) -> str:
        armed = ", ".join(f"{timer.value}={at:.3f}" for timer, at in self.armed().items())
        return f"PeerTimers({armed or 'none armed'})"

    # --- bookkeeping -------------------------------------------------------------------------

    def schedule(self, deadline: float) -> None:
        """Make sure the queue wakes the core at ``deadline`` at the latest."""
        if deadline < self.scheduled_at:
            self.scheduled_at = deadline
            self._queue.push(deadline, self)

    def reschedule(self) -> None:
        """File the peer again under its earliest armed deadline, if any."""
        earliest = self.earliest()
        if earliest is not None:
            self.schedule(earliest)

    def _rekey_jitter(self) -> float:
        return self._jitter.random() * REKEY_TIMEOUT_JITTER_MAX

    def armed(self) -> dict[Timer, float]:
        """The armed timers and their deadlines."""
        deadlines = {
            Timer.RETRANSMIT_HANDSHAKE: self.retransmit_handshake_at,
            Timer.NEW_HANDSHAKE: self.new_handshake_at,
            Timer.SEND_KEEPALIVE: self.send_keepalive_at,
            Timer.PERSISTENT_KEEPALIVE: self.persistent_keepalive_at,
            Timer.ZERO_KEY_MATERIAL: self.zero_key_material_at,
        }
        return {timer: at for timer, at in deadlines.items() if at is not None}

    def earliest(self) -> float | None:
        """The earliest armed deadline, or None."""
        armed = self.armed()
        return min(armed.values()) if armed else None

    def pop_due(self, now: float) -> Timer | None:
        """Disarm and return the first timer (in :class:`Timer` order) due at ``now``, if any.

        The core calls it in a loop, running each timer before asking for the next, so that a
        timer cancelled by an earlier one's action (a keepalive made unnecessary by an
        initiation, say) does not run.  Every timer is re-armed in the future, so the loop ends.
        """
        for timer, at in self.armed().items():
            if at <= now:
                # The deadline attributes are named after the timers: "<name>_at".
                setattr(self, f"{timer.value}_at", None)
                return timer
        return None

    def stop(self) -> None:
        """Disarm everything for good (the peer is being removed)."""
        self.retransmit_handshake_at = None
        self.send_keepalive_at = None
        self.new_handshake_at = None
        self.zero_key_material_at = None
        self.persistent_keepalive_at = None
        self.active = False

    # --- the events (wireguard-go timers.go) -------------------------------------------------

    def data_sent(self, now: float) -> None:
        """A data packet (not a keepalive) was sent: expect to hear back within 15 s."""
        if self.new_handshake_at is None:
            deadline = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._rekey_jitter()
            self.new_handshake_at = deadline
            self.schedule(deadline)

    def data_received(self, now: float) -> None:
        """A data packet (not a keepalive) arrived: answer within 10 s, with a keepalive if need be.

        If the timer is already armed, remember to arm it once more after it fires.
        """
        if self.send_keepalive_at is None:
            deadline = now + KEEPALIVE_TIMEOUT
            self.send_keepalive_at = deadline
            self.schedule(deadline)
        else:
            self.need_another_keepalive = True

    def any_authenticated_packet_sent(self) -> None:
        """Anything authenticated was sent: the peer hears from us, no keepalive needed."""
        self.send_keepalive_at = None

    def any_authenticated_packet_received(self) -> None:
        """Anything authenticated arrived: the peer is alive, no new handshake needed."""
        self.new_handshake_at = None

    def any_authenticated_packet_traversal(self, now: float, interval: int) -> None:
        """Anything authenticated was sent or received: push the persistent keepalive back.

        Args:
            now: the current time.
            interval: the peer's persistent keepalive interval in seconds (0: off).
        """
        if interval:
            deadline = now + interval
            previous = self.persistent_keepalive_at
            self.persistent_keepalive_at = deadline
            # A later deadline is covered by the earlier one already filed (lazy heap).
            if previous is None or deadline < previous:
                self.schedule(deadline)

    def handshake_initiated(self, now: float) -> None:
        """An initiation was sent: retransmit it if no response comes within about 5 s."""
        deadline = now + REKEY_TIMEOUT + self._rekey_jitter()
        self.retransmit_handshake_at = deadline
        self.schedule(deadline)

    def handshake_complete(self) -> None:
        """A handshake completed (response received, or first data under a new keypair)."""
        self.retransmit_handshake_at = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False

    def session_derived(self, now: float) -> None:
        """New transport keys were derived: erase everything if no newer ones come in 9 minutes."""
        deadline = now + ZERO_KEY_MATERIAL_AFTER
        self.zero_key_material_at = deadline
        self.schedule(deadline)
