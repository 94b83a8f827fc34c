"""TAI64N timestamps: how a WireGuard responder recognises a replayed handshake initiation.

Each initiation carries, encrypted, the initiator's wall-clock time as a 12-byte TAI64N label
(https://cr.yp.to/libtai/tai64.html): 8 bytes big-endian of ``2**62 + 10 + unix_seconds`` (the
``+ 10`` is the TAI-UTC offset of 1970 that TAI64 uses), then 4 bytes big-endian of nanoseconds.
The responder remembers the greatest timestamp it accepted per peer and refuses any initiation
that is not strictly newer.  Since the encoding is big-endian and fixed-width, "newer" is plain
byte-string comparison.

wireguard-go clears the low 24 bits of the nanoseconds ("whitening", about 16.8 ms of resolution)
so that a timestamp does not leak a precise clock reading; we do the same.

This is *wall-clock* time (``time.time()``), passed in by the caller, not the monotonic clock
that drives timers: the responder keeps the last timestamp it saw from us while we restart, so
ours must keep increasing across our restarts, and a monotonic clock starts over at each boot.
"""

from __future__ import annotations

import math
import struct

#: Size in bytes of a TAI64N label.
TIMESTAMP_SIZE = 12

#: The TAI64 label of the Unix epoch: 2**62 plus the 10 s TAI-UTC offset of 1970.
TAI64_EPOCH = 0x400000000000000A

#: Nanosecond bits cleared so the timestamp does not reveal the clock precisely.
WHITENER_MASK = 0x1000000 - 1

#: The timestamp that any real one is after: "nothing accepted yet".
ZERO_TIMESTAMP = bytes(TIMESTAMP_SIZE)

_LABEL = struct.Struct(">QI")
_NANOSECONDS_PER_SECOND = 1_000_000_000


def tai64n_from_ns(unix_ns: int) -> bytes:
    """Build the whitened TAI64N label of a Unix time given in nanoseconds (``time.time_ns()``)."""
    seconds, nanoseconds = divmod(unix_ns, _NANOSECONDS_PER_SECOND)
    return _LABEL.pack(TAI64_EPOCH + seconds, nanoseconds & ~WHITENER_MASK)


def tai64n(unix_time: float) -> bytes:
    """Build the whitened TAI64N label of a Unix time given in seconds (``time.time()``).

    Args:
        unix_time: seconds since the Unix epoch.  Must be finite.

    Returns:
        12 bytes: big-endian TAI64 seconds, then big-endian nanoseconds with the low 24 bits
        cleared.
    """
    seconds = math.floor(unix_time)
    # min() guards against float rounding making the fraction round up to a whole second.
    nanoseconds = min(int((unix_time - seconds) * _NANOSECONDS_PER_SECOND), 999_999_999)
    return tai64n_from_ns(seconds * _NANOSECONDS_PER_SECOND + nanoseconds)


def is_after(later: bytes, earlier: bytes) -> bool:
    """Tell whether timestamp ``later`` is strictly after ``earlier`` (byte order = time order)."""
    return later > earlier


def to_unix(label: bytes) -> float:
    """Convert a 12-byte TAI64N label back to Unix seconds, for logs (not used by the protocol)."""
    seconds, nanoseconds = _LABEL.unpack(label)
    assert isinstance(seconds, int)
    assert isinstance(nanoseconds, int)
    return float(seconds - TAI64_EPOCH) + nanoseconds / _NANOSECONDS_PER_SECOND
