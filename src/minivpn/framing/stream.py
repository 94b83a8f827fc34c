"""Length-prefixed framing: carrying IP packets over a byte stream such as TCP.

A datagram tunnel (UDP) keeps packet boundaries for free.  A stream (TCP) does not: one
``recv`` may return half a packet, or three and a bit.  The classic answer, used by
``simpletun`` and by OpenVPN over TCP, is to send every packet behind a 2-byte big-endian
length::

    +--------+--------+---------------------------+
    | length (u16 BE) | packet (length bytes)     |   ... next frame ...
    +--------+--------+---------------------------+

:func:`encode_frame` produces one frame; :class:`FrameDecoder` is fed whatever the stream
returns and hands back whole packets as they complete.  The decoder does no I/O, so the same
code runs under trio, in a test, or in a fuzzer.

Errors cannot be skipped over: after a bad length the decoder no longer knows where the next
frame starts, so it stops for good (every later call raises) and the connection must be closed.

* A length of 0 raises :class:`MalformedPacket`: no IP packet is empty, so the peer does not
  speak this protocol (or the stream is corrupt).
* A length above ``max_frame`` raises :class:`FrameTooLarge`.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .errors import FrameTooLarge, FramingError, MalformedPacket

if TYPE_CHECKING:
    from collections.abc import Iterator

#: The largest frame a 2-byte length can describe.
MAX_FRAME = 0xFFFF
#: Size of the length prefix.
FRAME_HEADER_LENGTH = 2

_LENGTH = struct.Struct("!H")

# Consumed bytes are dropped from the front of the buffer only once they make up at least this
# much and at least half the buffer.  Dropping costs a copy of what is left, so doing it rarely
# keeps decoding linear in the bytes received (no O(n^2) re-copying of a growing backlog).
_COMPACT_THRESHOLD = 64 * 1024


def encode_frame(packet: bytes | bytearray | memoryview, max_frame: int = MAX_FRAME) -> bytes:
    """Put the 2-byte length in front of a packet.

    Args:
        packet: the packet to send.
        max_frame: the largest packet allowed (at most 65535).

    Returns:
        The frame: length prefix followed by the packet.

    Raises:
        MalformedPacket: the packet is empty.
        FrameTooLarge: the packet is longer than ``max_frame`` or 65535 bytes.
    """
    length = len(packet)
    if length == 0:
        raise MalformedPacket("cannot frame an empty packet")
    if length > max_frame or length > MAX_FRAME:
        raise FrameTooLarge(
            f"packet of {length} bytes exceeds the frame limit {min(max_frame, MAX_FRAME)}"
        )
    return _LENGTH.pack(length) + packet


class FrameDecoder:
    """Reassembles frames from stream chunks of any size.

    Usage::

        decoder = FrameDecoder()
        for packet in decoder.feed_and_drain(chunk):
            handle(packet)

    The buffer is a :class:`bytearray` with a read offset: taking a frame moves the offset,
    and consumed bytes are dropped in bulk now and then (see ``_COMPACT_THRESHOLD``).
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        """Create a decoder.

        Args:
            max_frame: the largest frame accepted, 1 to 65535.

        Raises:
            ValueError: ``max_frame`` is out of range.
        """
        if not 1 <= max_frame <= MAX_FRAME:
            raise ValueError(f"max_frame must be in 1..{MAX_FRAME}, not {max_frame}")
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._offset = 0  # start of the first unconsumed byte in _buffer
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer) - self._offset

    @property
    def broken(self) -> bool:
        """Whether a bad frame length was seen; the decoder then refuses all further work."""
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the stream.

        Raises:
            FramingError: the decoder is broken by an earlier bad frame.
        """
        self._check_usable()
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """Take the next complete frame's packet, or None if more bytes are needed.

        Raises:
            MalformedPacket: the next frame has length 0 (the decoder is now broken).
            FrameTooLarge: the next frame is longer than ``max_frame`` (ditto).
            FramingError: the decoder is broken by an earlier bad frame.
        """
        self._check_usable()
        available = len(self._buffer) - self._offset
        if available < FRAME_HEADER_LENGTH:
            self._compact()
            return None
        (length,) = _LENGTH.unpack_from(self._buffer, self._offset)
        if length == 0 or length > self._max_frame:
            self._error = (
                MalformedPacket("stream frame of length 0: the peer is not sending packets")
                if length == 0
                else FrameTooLarge(f"stream frame of {length} bytes exceeds {self._max_frame}")
            )
            raise self._error
        if available < FRAME_HEADER_LENGTH + length:
            self._compact()
            return None
        start = self._offset + FRAME_HEADER_LENGTH
        # Copy straight out of the bytearray through a view: slicing the bytearray itself
        # would copy twice.  The view must be released before the bytearray can resize.
        with memoryview(self._buffer) as view:
            packet = bytes(view[start : start + length])
        self._offset = start + length
        return packet

    def frames(self) -> Iterator[bytes]:
        """Yield every complete frame buffered so far.

        Raises:
            MalformedPacket: see :meth:`next_frame`.
            FrameTooLarge: see :meth:`next_frame`.
            FramingError: the decoder is broken by an earlier bad frame.
        """
        # Bounded: each round consumes at least 3 bytes of a finite buffer.
        while (packet := self.next_frame()) is not None:
            yield packet

    def feed_and_drain(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Feed bytes and return all frames that are now complete, in order.

        If a bad length turns up, this raises and the frames before it from this call are not
        returned (use :meth:`frames` to get those); the connection must be closed anyway.

        Raises:
            MalformedPacket: see :meth:`next_frame`.
            FrameTooLarge: see :meth:`next_frame`.
            FramingError: the decoder is broken by an earlier bad frame.
        """
        self.feed(data)
        return list(self.frames())

    def _check_usable(self) -> None:
        if self._error is not None:
            raise FramingError(
                f"stream framing is broken ({self._error}); the connection must be closed"
            ) from self._error

    def _compact(self) -> None:
        """Drop consumed bytes when that is cheap relative to the work already done."""
        if self._offset == len(self._buffer):
            self._buffer.clear()  # everything consumed: nothing to copy
            self._offset = 0
        elif self._offset >= _COMPACT_THRESHOLD and self._offset * 2 >= len(self._buffer):
            del self._buffer[: self._offset]
            self._offset = 0
