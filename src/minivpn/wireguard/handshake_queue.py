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

**Under load** (the core then answers a handshake message without a valid mac2 with a cookie
reply instead of spending a Diffie-Hellman operation on it, and rate-limits each source) when:

* :data:`UNDER_LOAD_QUEUE` or more messages wait (wireguard-go's rule: an eighth of the queue),
  and for :data:`~minivpn.wireguard.constants.UNDER_LOAD_AFTER_TIME` (1 s) after;
* or the handshake work of the current one-second window has used
  :data:`HANDSHAKE_TIME_BUDGET` seconds of CPU time, until the window ends.  A thread that also
  carries data cannot spend more on handshakes: 0.4 s answers 1000 handshakes a second
  (``tests/bench/handshakes.py``) and leaves data the rest.

And a hard limit: once the window's handshake work has used :data:`HANDSHAKE_CPU_LIMIT`, the
handshake task waits for the next window (:meth:`HandshakeQueue.resume_at`); the queue fills
and drops meanwhile.  Under load the work per message is small (mac1, mac2, and a cookie reply
the core rate-limits per source and overall), so that limit is only reached by floods well
beyond 20,000 messages a second.

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
    "HANDSHAKE_CPU_LIMIT",
    "HANDSHAKE_TIME_BUDGET",
    "QUEUE_SIZE",
    "UNDER_LOAD_QUEUE",
    "WINDOW",
    "HandshakeQueue",
    "is_handshake_message",
]

#: The most handshake messages waiting at once (wireguard-go ``QueueHandshakeSize``).
QUEUE_SIZE = 1024
#: From this many waiting messages on, the device is under load (wireguard-go: an eighth).
UNDER_LOAD_QUEUE = QUEUE_SIZE // 8
#: The length of the windows in which handshake CPU time is counted (seconds).
WINDOW = 1.0
#: CPU seconds of handshake work per window after which the device is under load until the
#: window ends.  0.25 answered about 850 handshakes a second, 0.4 all of 1000 (issue 9).
HANDSHAKE_TIME_BUDGET = 0.4
#: CPU seconds of handshake work per window after which the handshake task waits for the next
#: window: what handshakes may take from data, at the most.
HANDSHAKE_CPU_LIMIT = 0.5

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
    """Handshake messages waiting for the handshake task, and the load they make.

    Args:
        size: the most messages waiting at once.
        budget: CPU seconds per window before "under load" (:data:`HANDSHAKE_TIME_BUDGET`).
        limit: CPU seconds per window before the work waits (:data:`HANDSHAKE_CPU_LIMIT`).

    Attributes:
        dropped: messages refused because the queue was full.
    """

    def __init__(
        self,
        size: int = QUEUE_SIZE,
        *,
        budget: float = HANDSHAKE_TIME_BUDGET,
        limit: float = HANDSHAKE_CPU_LIMIT,
    ) -> None:
        if not 0 < budget <= limit <= WINDOW:
            raise ValueError(f"need 0 < budget ({budget}) <= limit ({limit}) <= {WINDOW}")
        self.size = size
        self.budget = budget
        self.limit = limit
        self.dropped = 0
        self._messages: collections.deque[tuple[Endpoint, bytes]] = collections.deque()
        self._backlog_until = -math.inf
        self._window_start = -math.inf
        self._spent = 0.0

    def __len__(self) -> int:
        return len(self._messages)

    def offer(self, source: Endpoint, datagram: Buffer, now: float) -> bool:
        """Queue a copy of *datagram* from *source*; False (and counted) if the queue is full."""
        messages = self._messages
        if len(messages) >= self.size:
            self.dropped += 1
            return False
        messages.append((source, bytes(datagram)))
        if len(messages) >= UNDER_LOAD_QUEUE:
            self._backlog_until = now + UNDER_LOAD_AFTER_TIME
        return True

    def pop(self) -> tuple[Endpoint, bytes]:
        """The oldest waiting message and its source.

        Raises:
            IndexError: the queue is empty.
        """
        return self._messages.popleft()

    def under_load(self, now: float) -> bool:
        """Whether the device is under load at *now* (see the module documentation)."""
        if now < self._backlog_until:
            return True
        return self._spent >= self.budget and now - self._window_start < WINDOW

    def charge(self, cpu_seconds: float, now: float) -> None:
        """Count *cpu_seconds* of handshake work done just before *now*."""
        self._roll(now)
        self._spent += cpu_seconds

    def resume_at(self, now: float) -> float | None:
        """When the work may go on, if this window's :attr:`limit` is spent; else None."""
        self._roll(now)
        if self._spent >= self.limit:
            return self._window_start + WINDOW
        return None

    def _roll(self, now: float) -> None:
        if now - self._window_start >= WINDOW:
            self._window_start = now
            self._spent = 0.0
