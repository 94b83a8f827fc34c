"""Counters and rate-limited complaints for long-running tunnels.

A tunnel must survive whatever arrives from the network: a bad datagram is dropped, counted and
logged, and the next one is served.  Logging every bad datagram would let a flood of garbage
flood the log too, so :class:`RateLimitedLog` says each kind of problem once, then at most once
per interval with the number of repeats it kept quiet about.

Nothing here does I/O or reads a clock: callers pass ``now`` in, so tests need no sleeping.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Counters", "RateLimitedLog"]


@attrs.define
class Counters:
    """Packets and bytes each way, and drops by reason.

    ``tx`` is what the tunnel sent to the network (read from the device), ``rx`` what it
    received from the network (written to the device).
    """

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    drops: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def drop(self, reason: str, count: int = 1) -> None:
        """Count *count* packets dropped for *reason* (a short kebab-case word)."""
        self.drops[reason] += count

    def summary(self) -> str:
        """One line a person reads: ``tx 10 packets / 840 bytes, rx ..., dropped ...``."""
        line = (
            f"tx {self.tx_packets} packets / {self.tx_bytes} bytes, "
            f"rx {self.rx_packets} packets / {self.rx_bytes} bytes"
        )
        if self.drops:
            detail = ", ".join(f"{reason} {n}" for reason, n in sorted(self.drops.items()))
            line += f", dropped {sum(self.drops.values())} ({detail})"
        else:
            line += ", dropped 0"
        return line

    def as_dict(self) -> dict[str, object]:
        """The counters as plain data (for ``--json`` output)."""
        return {
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "drops": dict(self.drops),
        }


@attrs.define
class RateLimitedLog:
    """Say each kind of problem at most once per *interval* seconds.

    Args:
        emit: where messages go (e.g. ``logger.warning``).
        interval: seconds between two messages of the same kind.
    """

    emit: Callable[[str], object]
    interval: float = 10.0
    _last: dict[str, float] = attrs.field(factory=dict, init=False)
    _quiet: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    def __call__(self, kind: str, message: str, now: float) -> bool:
        """Log *message* unless *kind* was logged less than ``interval`` ago.

        Returns:
            True if the message was emitted.
        """
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._quiet[kind] += 1
            return False
        suppressed = self._quiet.pop(kind, 0)
        if suppressed:
            message += f" ({suppressed} more like this since the last message)"
        self._last[kind] = now
        self.emit(message)
        return True
