"""Classic pcap files, written and read without doing any I/O.

A pcap file (the format of ``tcpdump -w``, described in the libpcap ``pcap-savefile(5)`` man
page and in draft-ietf-opsawg-pcap) is a 24-byte global header followed by records:

Global header (fields in the writer's byte order; the magic number tells readers which)::

    u32 magic          0xa1b2c3d4 (microsecond timestamps) or 0xa1b23c4d (nanoseconds)
    u16 version_major  2
    u16 version_minor  4
    i32 thiszone       0 (timestamps are UTC)
    u32 sigfigs        0
    u32 snaplen        longest record payload the file may contain
    u32 network        link type of every record (LINKTYPE_*)

Each record::

    u32 ts_sec         seconds since the Unix epoch
    u32 ts_usec        microseconds (nanoseconds for the 0xa1b23c4d magic)
    u32 incl_len       bytes stored in the file (at most snaplen)
    u32 orig_len       length of the packet on the wire
    incl_len bytes     the packet

minivpn writes little-endian, microsecond files.  The two link types it needs are Ethernet
(frames from a TAP device) and raw IP (packets from a TUN device without the PI header; the
first nibble says IPv4 or IPv6).  This module only builds and parses bytes; the caller opens the
file and passes a clock value, so the code is trivially testable (``tcpdump -r`` reads what
:func:`pcap_global_header` and :func:`pcap_record` produce).
"""

from __future__ import annotations

import struct

from .errors import MalformedPacket

#: Ethernet II frames (a TAP device).
LINKTYPE_ETHERNET = 1
#: Raw IPv4 or IPv6 packets, no link-layer header (a TUN device without the PI header).
LINKTYPE_RAW = 101

#: Default snapshot length: the libpcap default, larger than any packet a TUN device produces.
DEFAULT_SNAPLEN = 262144

_MAGIC_MICROSECONDS = 0xA1B2C3D4
_MAGIC_NANOSECONDS = 0xA1B23C4D

_GLOBAL_HEADER_LE = struct.Struct("<IHHiIII")
_RECORD_HEADER_LE = struct.Struct("<IIII")
_GLOBAL_HEADER_BE = struct.Struct(">IHHiIII")
_RECORD_HEADER_BE = struct.Struct(">IIII")


def pcap_global_header(linktype: int, snaplen: int = DEFAULT_SNAPLEN) -> bytes:
    """Build the 24-byte header that starts a pcap file.

    Args:
        linktype: the link type of every record, e.g. :data:`LINKTYPE_RAW`.
        snaplen: the longest record payload the file will contain.

    Returns:
        The header, little-endian, version 2.4, microsecond timestamps.

    Raises:
        ValueError: ``linktype`` or ``snaplen`` does not fit the header.
    """
    if not 0 <= linktype <= 0xFFFFFFFF or not 0 < snaplen <= 0xFFFFFFFF:
        raise ValueError(f"bad pcap linktype {linktype} or snaplen {snaplen}")
    return _GLOBAL_HEADER_LE.pack(_MAGIC_MICROSECONDS, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(
    data: bytes | bytearray | memoryview, timestamp: float, snaplen: int = DEFAULT_SNAPLEN
) -> bytes:
    """Build one pcap record: a 16-byte record header followed by the (possibly cut) packet.

    Args:
        data: the packet or frame, as seen on the link.
        timestamp: when it was seen, in seconds since the Unix epoch (e.g. ``time.time()``).
        snaplen: store at most this many bytes; use the value given to
            :func:`pcap_global_header`.  ``orig_len`` still records the full length.

    Returns:
        The record bytes, to be appended to the file after the global header.

    Raises:
        ValueError: ``timestamp`` is negative or beyond 2106 (pcap's u32 seconds).
    """
    if not 0 <= timestamp < 2**32:
        raise ValueError(f"pcap timestamp {timestamp!r} out of range")
    seconds = int(timestamp)
    microseconds = round((timestamp - seconds) * 1_000_000)
    if microseconds >= 1_000_000:  # rounding 0.9999996 s up must carry into the seconds
        seconds += 1
        microseconds -= 1_000_000
    original_length = len(data)
    stored = data[:snaplen]
    header = _RECORD_HEADER_LE.pack(seconds, microseconds, len(stored), original_length)
    return header + bytes(stored)


def read_pcap_untrusted(
    data: bytes | bytearray | memoryview,
) -> tuple[int, list[tuple[float, bytes]]]:
    """Parse a whole classic pcap file.

    Accepts both byte orders and both microsecond and nanosecond files, as libpcap does.  Meant
    for tests and small captures: everything is read into memory.

    Args:
        data: the contents of the file.

    Returns:
        ``(linktype, records)`` where each record is ``(timestamp_seconds, stored_bytes)``.

    Raises:
        MalformedPacket: not a pcap file, or a record runs past the end of ``data``.
    """
    view = memoryview(data)
    if len(view) < _GLOBAL_HEADER_LE.size:
        raise MalformedPacket(f"pcap file too short for its header ({len(view)} bytes)")
    magic_le = _GLOBAL_HEADER_LE.unpack_from(view)[0]
    magic_be = _GLOBAL_HEADER_BE.unpack_from(view)[0]
    if magic_le in (_MAGIC_MICROSECONDS, _MAGIC_NANOSECONDS):
        global_header, record_header, magic = _GLOBAL_HEADER_LE, _RECORD_HEADER_LE, magic_le
    elif magic_be in (_MAGIC_MICROSECONDS, _MAGIC_NANOSECONDS):
        global_header, record_header, magic = _GLOBAL_HEADER_BE, _RECORD_HEADER_BE, magic_be
    else:
        raise MalformedPacket(f"not a pcap file (magic {bytes(view[:4]).hex()})")
    fraction_per_second = 1_000_000 if magic == _MAGIC_MICROSECONDS else 1_000_000_000
    _, major, _minor, _zone, _sigfigs, _snaplen, linktype = global_header.unpack_from(view)
    if major != 2:
        raise MalformedPacket(f"unsupported pcap version {major}")

    records: list[tuple[float, bytes]] = []
    offset = global_header.size
    while offset < len(view):
        if len(view) - offset < record_header.size:
            raise MalformedPacket(f"pcap record header cut short at offset {offset}")
        seconds, fraction, stored_length, _original = record_header.unpack_from(view, offset)
        offset += record_header.size
        if stored_length > len(view) - offset:
            raise MalformedPacket(f"pcap record at offset {offset} runs past the end of the file")
        records.append(
            (seconds + fraction / fraction_per_second, bytes(view[offset : offset + stored_length]))
        )
        offset += stored_length
    return linktype, records
