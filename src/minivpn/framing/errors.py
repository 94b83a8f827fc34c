"""Errors of the framing layer.

Everything in :mod:`minivpn.framing` that parses bytes from the outside world (a TUN device, a
TCP peer, a pcap file) raises :class:`MalformedPacket` for input it cannot make sense of, and
nothing else: no ``IndexError``, no ``struct.error``.  Callers on the packet path catch
:class:`FramingError` once, count the packet as bad, and move on.
"""

from __future__ import annotations

from minivpn.errors import MinivpnError


class FramingError(MinivpnError):
    """Base class for every error of :mod:`minivpn.framing`."""


class MalformedPacket(FramingError):
    """Bytes that are not a valid packet, header, frame or pcap file (too short, bad fields)."""


class FrameTooLarge(FramingError):
    """A stream frame longer than the agreed maximum (or than a 2-byte length can say)."""
