"""Segmentation and coalescing for a TUN device with a virtio-net header (sans-IO).

Why: every packet that crosses a TUN device one at a time costs a system call and a trip
through the kernel's IP and TCP code.  Network cards avoid this with *offloads*, and a TUN
device opened with ``IFF_VNET_HDR`` offers userspace the same ones.  Every read and write then
starts with a ``struct virtio_net_hdr`` (10 bytes) that says what the packet behind it really
is:

* **TSO** (send side, ``TUNSETOFFLOAD`` with ``TUN_F_TSO4|TUN_F_TSO6``): the kernel hands over
  a TCP *super-packet* of up to 64 KB, one IP and TCP header in front of the payload of many
  segments, and ``gso_size`` says how long each segment is.  Userspace cuts it into the
  packets it stands for: :func:`segments`.  (**USO**, ``TUN_F_USO4|TUN_F_USO6``, is the same
  for UDP.)  The kernel leaves their checksums to be completed (``TUN_F_CSUM``), so a packet
  may also come with ``VIRTIO_NET_HDR_F_NEEDS_CSUM``: "the checksum starting at
  ``csum_start`` is yours to finish".
* **GRO** (receive side): userspace merges consecutive TCP segments of one flow into a
  super-packet, writes it once, and the kernel's TCP stack takes it in one pass:
  :func:`coalesce`.

Header fields (little-endian on every modern kernel)::

    flags       u8    1 = NEEDS_CSUM
    gso_type    u8    0 none, 1 TCPv4, 4 TCPv6, 5 UDP (plus 0x80: ECN)
    hdr_len     u16   bytes of headers in front of the payload
    gso_size    u16   payload bytes per segment
    csum_start  u16   where the checksummed part starts (the transport header)
    csum_offset u16   where the checksum is, from csum_start (16 for TCP, 6 for UDP)

Everything here takes and returns bytes and memoryviews; nothing does I/O.  docs/offload.md
walks through both directions.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "VNET_HDR",
    "VNET_HDR_LEN",
    "ZERO_VNET_HDR",
    "OffloadError",
    "checksum",
    "coalesce",
    "ones_complement_sum",
    "segments",
]

#: ``struct virtio_net_hdr``: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
#: "Nothing offloaded": the kernel checks the packet's checksums as usual.
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

Buffer: TypeAlias = bytes | bytearray | memoryview

NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
_GSO_ECN = 0x80
_PROTO_TCP = 6
_PROTO_UDP = 17
_TCP_FIN, _TCP_PSH, _TCP_ACK, _TCP_CWR = 0x01, 0x08, 0x10, 0x80
#: Offsets in the TCP header: sequence number, flags, checksum.
_TCP_SEQ, _TCP_FLAGS, _TCP_CSUM = 4, 13, 16
_UDP_LENGTH, _UDP_CSUM = 4, 6
_MAX_IP_PACKET = 65535
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
#: IPv4 total length and identification (offset 2).
_IPV4_LENGTH_ID = struct.Struct("!HH")


class OffloadError(ValueError):
    """A virtio-net header the kernel should never have written (unknown GSO type...)."""


# --- checksums ----------------------------------------------------------------------------------
#
# The Internet checksum (RFC 1071) is the ones' complement of the ones' complement sum of the
# data read as 16-bit big-endian words.  Ones' complement addition is addition modulo 0xFFFF,
# so any integer congruent to the sum modulo 0xFFFF will do until the end, where it is *folded*
# into 16 bits.  Python has no fast loop over 16-bit words, but zlib's Adler-32 runs a C loop
# that adds bytes: its low half is 1 + (sum of the bytes) modulo 65521.  Over at most 256 bytes
# that sum cannot reach 65521, so it comes out exact.  Split a packet into six strided planes
# (bytes 0, 6, 12, ...; 1, 7, 13, ...; ...): planes 0, 2, 4 hold the high bytes of the words,
# planes 1, 3, 5 the low bytes, and each is at most 256 bytes long for up to 1536 bytes of data.
# Then sum = 256 * (high bytes) + (low bytes).  It costs six slices and six Adler-32 calls, about
# half of ``int.from_bytes(data, "big") % 0xFFFF``.


def _sum_upto_1536(data: bytes) -> int:
    adler = zlib.adler32
    high = (
        (adler(data[0::6]) & 0xFFFF) + (adler(data[2::6]) & 0xFFFF) + (adler(data[4::6]) & 0xFFFF)
    )
    low = (adler(data[1::6]) & 0xFFFF) + (adler(data[3::6]) & 0xFFFF) + (adler(data[5::6]) & 0xFFFF)
    return 256 * (high - 3) + (low - 3)  # each Adler-32 started from 1


def ones_complement_sum(data: Buffer) -> int:
    """The sum of ``data`` read as 16-bit big-endian words (an odd last byte is padded).

    Returns:
        A non-negative integer congruent to the ones' complement sum modulo 0xFFFF (unfolded:
        add more sums to it, then :func:`checksum` it).
    """
    size = len(data)
    if size <= 128:
        # A header: the data as one big number is congruent to the sum of its 16-bit words
        # modulo 0xFFFF, since 0x10000 is 1 modulo 0xFFFF.
        value = int.from_bytes(data, "big")
        return value << 8 if size & 1 else value
    if size <= 1536:
        return _sum_upto_1536(bytes(data))
    blob = bytes(data)
    return sum(_sum_upto_1536(blob[start : start + 1536]) for start in range(0, len(blob), 1536))


def checksum(total: int) -> int:
    """The Internet checksum for the unfolded sum ``total`` (of non-zero data).

    Folding a non-zero sum gives 1..0xFFFF (ones' complement addition of non-zero words never
    gives +0), and the checksum is its complement.  ``total`` may be negative (sums subtracted).
    """
    folded = total % 0xFFFF
    return 0xFFFF ^ (folded or 0xFFFF)


class _PayloadSums:
    """Sums of slices of one super-packet's payload, from six strided planes taken once.

    Cutting a super-packet needs the sum of each segment's payload.  The planes of
    :func:`ones_complement_sum` are taken once for the whole payload (six slicing passes over
    64 KB instead of six per segment); a segment's bytes are then a slice of each plane.
    """

    def __init__(self, payload: bytes) -> None:
        self._planes = [memoryview(payload[j::6]) for j in range(6)]

    def of(self, start: int, end: int) -> int:
        """The unfolded sum of ``payload[start:end]`` (at most 1536 bytes) as 16-bit words."""
        adler = zlib.adler32
        first, skip = divmod(start, 6)
        last, tail = divmod(end, 6)
        # Plane j holds payload bytes j, j + 6, ...: those from `start` on begin at index
        # `first`, or `first + 1` for the planes before `skip`; likewise up to `end`.
        p0, p1, p2, p3, p4, p5 = self._planes
        even = (
            (adler(p0[first + (skip > 0) : last + (tail > 0)]) & 0xFFFF)
            + (adler(p2[first + (skip > 2) : last + (tail > 2)]) & 0xFFFF)
            + (adler(p4[first + (skip > 4) : last + (tail > 4)]) & 0xFFFF)
            - 3
        )
        odd = (
            (adler(p1[first + (skip > 1) : last + (tail > 1)]) & 0xFFFF)
            + (adler(p3[first + (skip > 3) : last + (tail > 3)]) & 0xFFFF)
            + (adler(p5[first + (skip > 5) : last + (tail > 5)]) & 0xFFFF)
            - 3
        )
        # Even payload offsets are the high bytes of the segment's words if it starts at one.
        return 256 * odd + even if start & 1 else 256 * even + odd


# --- the send side: cutting super-packets -------------------------------------------------------


def segments(frame: memoryview) -> Iterator[memoryview]:
    """The packets one read from the TUN device stands for.

    The packets are written in place: each segment's headers go right in front of its
    payload, over the tail of the previous segment's payload, so ``frame`` is changed and a
    packet is only valid until the next one is asked for.

    Args:
        frame: one read: a virtio-net header, then a packet or a super-packet.

    Yields:
        Each packet, as the kernel would have sent it without the offload: checksums complete,
        lengths, IPv4 identifications and TCP sequence numbers in order, FIN and PSH only on the
        last segment, CWR only on the first.

    Raises:
        OffloadError: the header asks for something impossible (an unknown GSO type, offsets
            outside the packet).
    """
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    packet = frame[VNET_HDR_LEN:]
    gso_type &= ~_GSO_ECN
    if gso_type == GSO_NONE:
        if flags & NEEDS_CSUM:
            _complete_checksum(packet, csum_start, csum_offset)
        yield packet
    elif gso_type in (GSO_TCPV4, GSO_TCPV6):
        yield from _split_tcp(packet, csum_start, gso_size)
    elif gso_type == GSO_UDP_L4:
        yield from _split_udp(packet, csum_start, gso_size)
    else:
        raise OffloadError(f"unknown GSO type {gso_type}")


def _complete_checksum(packet: memoryview, start: int, offset: int) -> None:
    """Finish a partial checksum: the field holds the pseudo-header's sum already."""
    where = start + offset
    if not start or where + 2 > len(packet):
        raise OffloadError(f"checksum at {start}+{offset} is outside a {len(packet)}-byte packet")
    value = checksum(ones_complement_sum(packet[start:]))
    if offset == _UDP_CSUM and value == 0:
        value = 0xFFFF  # a computed UDP checksum of 0 is sent as all ones (RFC 768)
    _U16.pack_into(packet, where, value)


def _headers(packet: memoryview, ip_len: int) -> tuple[int, int]:
    """(the pseudo-header's address sum, IP version 4 or 6) of a packet."""
    if ip_len == 0 or len(packet) < ip_len:
        raise OffloadError("a super-packet without an IP header")
    version = packet[0] >> 4
    if version == 4 and ip_len >= 20:
        return ones_complement_sum(packet[12:20]), 4
    if version == 6 and ip_len >= 40:
        return ones_complement_sum(packet[8:40]), 6
    raise OffloadError(f"a super-packet of IP version {version} with a {ip_len}-byte IP header")


def _split_tcp(packet: memoryview, ip_len: int, mss: int) -> Iterator[memoryview]:
    """Cut a TCP super-packet into segments of ``mss`` payload bytes (the kernel's rules)."""
    address_sum, version = _headers(packet, ip_len)
    tcp_len = (packet[ip_len + 12] >> 4) * 4 if len(packet) >= ip_len + 20 else 0
    hdr_len = ip_len + tcp_len
    if tcp_len < 20 or hdr_len > len(packet) or mss == 0:
        raise OffloadError("a TCP super-packet with a broken header or no segment size")
    template = bytes(packet[:hdr_len])  # the headers, before the segments overwrite them
    payload = _payload_sums(packet, hdr_len, mss)
    first_seq = _U32.unpack_from(template, ip_len + _TCP_SEQ)[0]
    first_flags = template[ip_len + _TCP_FLAGS]
    first_id = _U16.unpack_from(template, 4)[0]
    # The checksummed fields that stay the same from segment to segment, summed once: the
    # IPv4 header without length, identification and checksum; the TCP header without
    # sequence number, flags and checksum; the pseudo-header's addresses and protocol.
    ip_sum = ones_complement_sum(template[:2] + template[6:10] + template[12:ip_len])
    tcp_template = bytearray(template[ip_len:])
    tcp_template[_TCP_SEQ : _TCP_SEQ + 4] = bytes(4)
    tcp_template[_TCP_FLAGS] = 0
    tcp_template[_TCP_CSUM : _TCP_CSUM + 2] = bytes(2)
    tcp_sum = ones_complement_sum(tcp_template) + address_sum + _PROTO_TCP
    seq_at, flags_at, csum_at = ip_len + _TCP_SEQ, ip_len + _TCP_FLAGS, ip_len + _TCP_CSUM
    payload_len = len(packet) - hdr_len
    last = max(0, -(-payload_len // mss) - 1)
    for index in range(last + 1):
        offset = index * mss  # where this segment's payload starts, in the payload
        size = mss if index < last else payload_len - offset
        base = offset  # where its headers go, in the packet: right in front of the payload
        if index:
            packet[base : base + hdr_len] = template
        flags = first_flags
        if index < last:
            flags &= ~(_TCP_FIN | _TCP_PSH)
        if index:
            flags &= ~_TCP_CWR
        seq = (first_seq + offset) & 0xFFFFFFFF
        if version == 4:
            ident = (first_id + index) & 0xFFFF
            _IPV4_LENGTH_ID.pack_into(packet, base + 2, hdr_len + size, ident)
            _U16.pack_into(packet, base + 10, checksum(ip_sum + hdr_len + size + ident))
        else:
            _U16.pack_into(packet, base + 4, tcp_len + size)
        _U32.pack_into(packet, base + seq_at, seq)
        packet[base + flags_at] = flags
        total = tcp_sum + tcp_len + size + seq + flags + payload(offset, offset + size)
        _U16.pack_into(packet, base + csum_at, checksum(total))
        yield packet[base : base + hdr_len + size]


def _split_udp(packet: memoryview, ip_len: int, size: int) -> Iterator[memoryview]:
    """Cut a UDP super-packet into datagrams of ``size`` payload bytes (USO)."""
    address_sum, version = _headers(packet, ip_len)
    hdr_len = ip_len + 8
    if hdr_len > len(packet) or size == 0:
        raise OffloadError("a UDP super-packet with a broken header or no segment size")
    template = bytes(packet[:hdr_len])
    payload = _payload_sums(packet, hdr_len, size)
    first_id = _U16.unpack_from(template, 4)[0]
    ip_sum = ones_complement_sum(template[:2] + template[6:10] + template[12:ip_len])
    ports_sum = ones_complement_sum(template[ip_len : ip_len + 4]) + address_sum + _PROTO_UDP
    payload_len = len(packet) - hdr_len
    last = max(0, -(-payload_len // size) - 1)
    for index in range(last + 1):
        offset = index * size
        length = size if index < last else payload_len - offset
        base = offset
        if index:
            packet[base : base + hdr_len] = template
        udp_len = 8 + length
        if version == 4:
            ident = (first_id + index) & 0xFFFF
            _IPV4_LENGTH_ID.pack_into(packet, base + 2, hdr_len + length, ident)
            _U16.pack_into(packet, base + 10, checksum(ip_sum + hdr_len + length + ident))
        else:
            _U16.pack_into(packet, base + 4, udp_len)
        _U16.pack_into(packet, base + ip_len + _UDP_LENGTH, udp_len)
        # The length counts twice: in the pseudo-header and in the UDP header.
        total = ports_sum + 2 * udp_len + payload(offset, offset + length)
        _U16.pack_into(packet, base + ip_len + _UDP_CSUM, checksum(total) or 0xFFFF)
        yield packet[base : base + hdr_len + length]


def _payload_sums(packet: memoryview, hdr_len: int, size: int) -> Callable[[int, int], int]:
    """What sums the payload's pieces of ``size`` bytes: planes taken once, if pieces are small."""
    payload = bytes(packet[hdr_len:])
    if size <= 1536:
        return _PayloadSums(payload).of
    return lambda start, end: ones_complement_sum(payload[start:end])


# --- the receive side: merging segments ---------------------------------------------------------


def _tcp_offsets(packet: memoryview) -> tuple[int, int] | None:
    """(IP header length, TCP header length) if *packet* may start a run, else None."""
    size = len(packet)
    first = packet[0]
    if first == 0x45:  # IPv4, no options
        if size < 40 or packet[9] != _PROTO_TCP or packet[6] & 0x3F or packet[7]:
            return None  # not TCP, or a fragment (MF set or an offset)
        ip_len = 20
    elif first >> 4 == 6:
        if size < 60 or packet[6] != _PROTO_TCP:
            return None
        ip_len = 40
    else:
        return None
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    if tcp_len < 20 or size <= ip_len + tcp_len:
        return None  # no payload: a pure ACK is not worth merging
    flags = packet[ip_len + 13]
    if flags != _TCP_ACK and flags != _TCP_ACK | _TCP_PSH:
        return None
    return ip_len, tcp_len


def _flow_mask(ip_len: int, tcp_len: int) -> int:
    """The mask that keeps, of an IP+TCP header read as one big-endian number, what is compared.

    Blanked (allowed to differ between the segments of a run): the IPv4 total length and header
    checksum, or the IPv6 payload length; the TCP checksum; and the PSH flag.  Everything else
    is compared: version and header lengths, TOS/traffic class, flow label, DF, TTL/hop limit,
    protocol, addresses, ports, ACK number, the other flags, window, urgent pointer, options
    must be equal; the IPv4 identification and the sequence number must count on by exactly
    one and by the segment size (:func:`coalesce` adds that to what it expects).
    """
    mask = bytearray(b"\xff" * (ip_len + tcp_len))
    varying = [2, 3, 10, 11] if ip_len == 20 else [4, 5]
    varying += [ip_len + 16, ip_len + 17]
    for offset in varying:
        mask[offset] = 0
    mask[ip_len + 13] = 0xFF & ~_TCP_PSH
    return int.from_bytes(mask, "big")


#: _flow_mask for every (IP header length, TCP header length), built once.
_FLOW_MASKS = {
    (ip_len, tcp_len): _flow_mask(ip_len, tcp_len)
    for ip_len in (20, 40)
    for tcp_len in range(20, 61, 4)
}


def coalesce(packets: list[memoryview]) -> list[list[Buffer]]:
    """Plan the writes for a batch of IP packets, merging TCP runs into super-packets.

    A segment joins the run in front of it when the kernel's own GRO would merge it:

    * IPv4 without options or fragmentation, or IPv6 with TCP as the next header;
    * same addresses, ports, TOS/traffic class (and IPv6 flow label), DF flag, TTL/hop limit,
      ACK number, window, urgent pointer, TCP header length and options; only the ACK flag,
      plus PSH on the last segment of a run;
    * its sequence number continues the run exactly, and its IPv4 identification counts on by
      one; every segment but the last has the run's segment size, an even one; a run stays
      within 65535 bytes.

    The first segment is checked field by field (:func:`_tcp_offsets`); each next one with a
    single comparison: its header, read as one number and masked (:func:`_flow_mask`), must
    equal the first one's plus what the sequence number and identification advance by.  (With a
    memoryview slice per field it cost 1.8-2.1 us a segment of a 44-segment run.)

    The merged header gets the total length and a fresh IPv4 header checksum, and its TCP
    checksum is the one of the whole super-packet, worked out from the segments' own checksums
    without reading their payloads (:func:`_merged`).  The virtio-net header does *not* say
    NEEDS_CSUM, so the kernel verifies that checksum over the whole payload before it takes the
    data, as it would verify each segment written alone: a segment damaged before it was
    encrypted is refused, with its run.

    Args:
        packets: decrypted IP packets, in the order they arrived.  The views must stay valid
            until the writes are done (the plan refers to them, it does not copy).

    Returns:
        One list of buffers per write, for ``os.writev(fd, buffers)``; the first buffer of each
        is its virtio-net header.
    """
    writes: list[list[Buffer]] = []
    count = len(packets)
    i = 0
    while i < count:
        first = packets[i]
        offsets = _tcp_offsets(first) if first else None
        if offsets is None:
            writes.append([ZERO_VNET_HDR, first])
            i += 1
            continue
        ip_len, tcp_len = offsets
        header_len = ip_len + tcp_len
        segment = len(first) - header_len
        total = segment
        j = i + 1
        if first[ip_len + 13] == _TCP_ACK and not segment & 1:  # PSH always ends a run
            mask = _FLOW_MASKS[offsets]
            header = int.from_bytes(first[:header_len], "big")
            headers = header  # the headers' sum, for the merged checksum
            # What the next segment's header must be, masked: the sequence number (counted from
            # the right at tcp_len - 8 bytes) on by `segment`, the IPv4 identification by one.
            step = segment << (tcp_len - 8) * 8
            if ip_len == 20:
                step += 1 << (header_len - 6) * 8
            expected = (header & mask) + step
            while j < count:
                nxt = packets[j]
                size = len(nxt) - header_len
                if size <= 0 or size > segment or header_len + total + size > _MAX_IP_PACKET:
                    break
                header = int.from_bytes(nxt[:header_len], "big")
                if header & mask != expected:
                    break  # another flow, a gap, another option... (or a counter wrapped)
                headers += header
                expected += step
                total += size
                j += 1
                if size < segment or nxt[ip_len + 13] != _TCP_ACK:
                    break  # a short segment or a PSH: the run's last
        if j == i + 1:
            writes.append([ZERO_VNET_HDR, first])
            i += 1
            continue
        writes.append(_merged(packets[i:j], ip_len, header_len, total, headers))
        i = j
    return writes


def _merged(
    run: list[memoryview], ip_len: int, header_len: int, total: int, headers: int
) -> list[Buffer]:
    """The writev buffers of a run of segments merged behind one header.

    The TCP checksum of the merged packet covers its pseudo-header, its TCP header and all the
    payloads.  A segment's checksum is right when its pseudo-header, TCP header (checksum
    included) and payload sum to 0 modulo 0xFFFF, so the payloads sum to minus the rest: header
    arithmetic alone, with ``headers``, the sum of the segments' IP and TCP headers read as
    numbers.  (A valid IPv4 header sums to 0 itself; an IPv6 one to its fixed words plus its
    payload length.  A segment whose checksum, or IPv4 header checksum, is wrong makes the
    merged checksum wrong: the kernel then refuses the whole run.)
    """
    first = run[0]
    count = len(run)
    segment = len(first) - header_len
    tcp_header_len = header_len - ip_len
    tcp_lengths = count * tcp_header_len + total  # the segments' TCP lengths, summed
    if ip_len == 20:
        address_sum = int.from_bytes(first[12:20], "big")
        tcp_headers = headers
    else:
        address_sum = int.from_bytes(first[8:40], "big")
        fixed = int.from_bytes(first[:40], "big") - (tcp_header_len + segment)
        tcp_headers = headers - count * fixed - tcp_lengths
    payloads = -(count * (address_sum + _PROTO_TCP) + tcp_lengths + tcp_headers)
    header = bytearray(first[:header_len])
    header[ip_len + 13] = run[-1][ip_len + 13]  # PSH of the last segment, if it had one
    header[ip_len + _TCP_CSUM : ip_len + _TCP_CSUM + 2] = bytes(2)
    tcp_length = tcp_header_len + total
    if ip_len == 20:
        _U16.pack_into(header, 2, header_len + total)
        header[10:12] = bytes(2)
        _U16.pack_into(header, 10, checksum(int.from_bytes(header[:20], "big")))
        gso_type = GSO_TCPV4
    else:
        _U16.pack_into(header, 4, tcp_length)
        gso_type = GSO_TCPV6
    whole = address_sum + _PROTO_TCP + tcp_length
    whole += int.from_bytes(header[ip_len:header_len], "big") + payloads
    _U16.pack_into(header, ip_len + _TCP_CSUM, checksum(whole))
    buffers: list[Buffer] = [VNET_HDR.pack(0, gso_type, header_len, segment, 0, 0), header]
    buffers.extend(packet[header_len:] for packet in run)
    return buffers
