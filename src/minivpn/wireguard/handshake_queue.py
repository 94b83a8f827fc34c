"""Handshake messages wait in a bounded queue of their own, and decide when we are "under load".

A handshake message costs the responder Diffie-Hellman work (about 0.3 ms of CPU here), a data
message a few microseconds.  If both were processed in the order they arrive, by the one thread
that does everything, a flood of handshake messages -- easy to make: a valid mac1 only needs our
*public* key -- would starve the live sessions' data.  So, as in wireguard-go and the Linux
kernel, the receive loops only sort: a data message is decrypted at once, and a handshake-type
message (initiation, response, cookie reply) is put in a :class:`HandshakeQueue` for a task of
its own (:mod:`minivpn.runtime.vpn`, ``_handshakes``), which works through the queue in short
slices, so that the data tasks get their turn between two slices.

The queue holds at most :data:`QUEUE_SIZE` messages (wireguard-go's ``QueueHandshakeSize``);
what arrives while it is full is dropped, and counted
(``DropReason.HANDSHAKE_QUEUE_FULL``).

**A CPU budget**: the handshake task may use :data:`HANDSHAKE_TIME_BUDGET` seconds of CPU time
a second, saved up to :data:`HANDSHAKE_TIME_BURST` (a token bucket, :meth:`HandshakeQueue.charge`,
:meth:`HandshakeQueue.resume_at`); when it has used them up it waits.  So data keeps the rest
of the thread whatever arrives, and when more handshake work arrives than the budget pays for,
a backlog forms.  0.4 s a second answers 1000 handshakes a second (``tests/bench/handshakes.py``;
0.25 s answered about 850).

**Under load** (the core then answers a handshake message without a valid mac2 with a cookie
reply instead of spending a Diffie-Hellman operation on it, and rate-limits each source) once
:data:`UNDER_LOAD_QUEUE` or more messages wait *and* the budget is used up, and for
:data:`~minivpn.wireguard.constants.UNDER_LOAD_AFTER_TIME` (1 s) after.  The count is
wireguard-go's rule (an eighth of the queue), which its goroutines on every core meet only under
a real flood; one thread meets it with any burst, so a backlog the saved-up budget can still
clear (a burst of legitimate handshakes) does not count.  Under load a message costs a few
microseconds instead of a few hundred, so the backlog soon goes: to keep a flood from turning
"under load" off and on again (a second of cookies, then Diffie-Hellman work until the budget
and the queue say "load" again, a gap in which anyone gets in without a cookie), load also lasts
while handshake messages keep arriving at :data:`UNDER_LOAD_RATE` a second or more, about what
the budget pays for at full price.

Sans-IO: the runtime passes ``now`` (monotonic seconds) and the CPU time it measured.
"""

from __future__ import annotations

import collections
import math
import struct
from typing import TYPE_CHECKING

from minivpn.wireguard.constants import UNDER_LOAD_AFTER_TIME
from minivpn.wireguard.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    RESPONSE_SIZE,
    MessageType,
)

if TYPE_CHECKING:
    from minivpn.wireguard.device import Buffer
    from minivpn.wireguard.events import Endpoint

__all__ = [
    "HANDSHAKE_TIME_BUDGET",
    "HANDSHAKE_TIME_BURST",
    "QUEUE_SIZE",
    "UNDER_LOAD_QUEUE",
    "UNDER_LOAD_RATE",
    "HandshakeQueue",
    "is_handshake_message",
]

#: The most handshake messages waiting at once (wireguard-go ``QueueHandshakeSize``).
QUEUE_SIZE = 1024
#: From this many waiting messages on, the device is under load (wireguard-go: an eighth).
UNDER_LOAD_QUEUE = QUEUE_SIZE // 8
#: CPU seconds a second the handshake work may use (the rate of the token bucket).
HANDSHAKE_TIME_BUDGET = 0.4
#: CPU seconds of handshake work that can be saved up while there is none (the bucket's size).
HANDSHAKE_TIME_BURST = 0.05
#: Handshake messages a second that keep the device under load once it is: what the budget
#: answers at full price (docs/performance.md, "Handshakes": 1000 a second).
UNDER_LOAD_RATE = 1000

#: The exact size of each handshake message type.
_SIZES = {
    int(MessageType.HANDSHAKE_INITIATION): INITIATION_SIZE,
    int(MessageType.HANDSHAKE_RESPONSE): RESPONSE_SIZE,
    int(MessageType.COOKIE_REPLY): COOKIE_REPLY_SIZE,
}
_TYPE_WORD = struct.Struct("<I")


def is_handshake_message(datagram: Buffer) -> bool:
    """Whether *datagram* has the type word and the exact size of a handshake message.

    Anything else that is not a data message is malformed, and cheap to drop where it arrives.
    """
    return len(datagram) >= 4 and _SIZES.get(_TYPE_WORD.unpack_from(datagram)[0]) == len(datagram)


class HandshakeQueue:
    """Handshake messages waiting for the handshake task, the load they make, its CPU budget.

    Args:
        size: the most messages waiting at once.
        budget: CPU seconds a second for the work (:data:`HANDSHAKE_TIME_BUDGET`).
        burst: CPU seconds that can be saved up (:data:`HANDSHAKE_TIME_BURST`).

    Attributes:
        dropped: messages refused because the queue was full.
    """

    def __init__(
        self,
        size: int = QUEUE_SIZE,
        *,
        budget: float = HANDSHAKE_TIME_BUDGET,
        burst: float = HANDSHAKE_TIME_BURST,
    ) -> None:
        if not (0 < budget <= 1 and burst > 0):
            raise ValueError(f"need 0 < budget ({budget}) <= 1 and burst ({burst}) > 0")
        self.size = size
        self.budget = budget
        self.burst = burst
        self.dropped = 0
        self._messages: collections.deque[tuple[Endpoint, bytes]] = collections.deque()
        self._backlog_until = -math.inf
        self._seconds = burst  # CPU seconds the work may still use now
        self._refilled: float | None = None
        # Arrivals in the current one-second window, and in the one before it.
        self._window = -math.inf
        self._arrivals = 0
        self._arrivals_before = 0

    def __len__(self) -> int:
        return len(self._messages)

    def offer(self, source: Endpoint, datagram: Buffer, now: float) -> bool:
        """Queue a copy of *datagram* from *source*; False (and counted) if the queue is full."""
        self._count_arrival(now)
        messages = self._messages
        if len(messages) >= self.size:
            self.dropped += 1
            return False
        messages.append((source, bytes(datagram)))
        if len(messages) >= UNDER_LOAD_QUEUE:
            self._refill(now)
            if self._seconds <= 0:
                self._backlog_until = now + UNDER_LOAD_AFTER_TIME
        return True

    def _count_arrival(self, now: float) -> None:
        """Count one arrival; while under load, a rate of UNDER_LOAD_RATE or more extends it."""
        if now - self._window >= 1.0:
            # The window before is the one that just ended, or nothing if more time went by.
            self._arrivals_before = self._arrivals if now - self._window < 2.0 else 0
            self._window, self._arrivals = now, 0
        self._arrivals += 1
        if now < self._backlog_until:
            # The last second's arrivals: this window's, and the share of the one before it
            # that is less than a second old.
            recent = self._arrivals + self._arrivals_before * (1.0 - (now - self._window))
            if recent >= UNDER_LOAD_RATE:
                self._backlog_until = now + UNDER_LOAD_AFTER_TIME

    def pop(self) -> tuple[Endpoint, bytes]:
        """The oldest waiting message and its source.

        Raises:
            IndexError: the queue is empty.
        """
        return self._messages.popleft()

    def under_load(self, now: float) -> bool:
        """Whether the device is under load at *now*: a backlog now, or less than 1 s ago."""
        return now < self._backlog_until

    def charge(self, cpu_seconds: float, now: float) -> None:
        """Count *cpu_seconds* of handshake work done just before *now*."""
        self._refill(now)
        self._seconds -= cpu_seconds

    def resume_at(self, now: float) -> float | None:
        """When the work may go on, if the budget is used up now; None if it may go on now."""
        self._refill(now)
        if self._seconds > 0:
            return None
        return now + -self._seconds / self.budget + 1e-6

    def _refill(self, now: float) -> None:
        if self._refilled is not None and now > self._refilled:
            self._seconds = min(self.burst, self._seconds + (now - self._refilled) * self.budget)
        self._refilled = now if self._refilled is None else max(now, self._refilled)
