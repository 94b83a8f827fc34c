"""Segmentation written the slow, obvious way: the reference the offload code is tested against.

``minivpn.framing.offload`` cuts super-packets with tricks (headers written in place, checksums
summed with Adler-32 over strided planes, the merged checksum derived from the segments').  The
functions here do the same jobs field by field with :mod:`struct`, from the kernel's rules
(``net/ipv4/tcp_offload.c``, ``net/ipv4/udp_offload.c``, ``net/ipv4/af_inet.c``), on packets
built, and checksums summed word by word, by the independent builders of
:mod:`tests.helpers.packets`, so that a test comparing the two does not compare the code with
itself.  ``tests/netns/test_offload_kernel.py`` checks both against the kernel.
"""

from __future__ import annotations

import ipaddress
import struct

from tests.helpers.packets import (
    ipv4,
    ipv6,
    packed,
    pseudo_header,
    reference_checksum,
    tcp,
    udp,
)

VNET_HDR = struct.Struct("<BBHHHH")
NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 4, 5
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
TCP, UDP = 6, 17
#: IPv4 "don't fragment", which Linux sets on TCP and on UDP with path MTU discovery.
_DF = 0x4000


def ip_packet(
    src: str, dst: str, proto: int, payload: bytes, *, ident: int = 0, ttl: int = 64
) -> bytes:
    """An IPv4 packet (with DF and a correct header checksum) or an IPv6 packet, by version."""
    if ipaddress.ip_address(src).version == 4:
        return ipv4(src, dst, proto, payload, ttl=ttl, identification=ident, flags_offset=_DF)
    return ipv6(src, dst, proto, payload, hop_limit=ttl)


def tcp_packet(
    src: str,
    dst: str,
    seq: int,
    payload: bytes,
    *,
    flags: int = ACK,
    sport: int = 40000,
    dport: int = 5201,
    ack: int = 7,
    window: int = 502,
    options: bytes = b"",
    ident: int = 0,
    ttl: int = 64,
    checksum: int | None = None,
) -> bytes:
    """A TCP segment with correct checksums (or the ``checksum`` given)."""
    segment = tcp(sport, dport, seq, ack, flags, window=window, options=options, data=payload)
    if checksum is None:
        checksum = reference_checksum(
            pseudo_header(packed(src), packed(dst), TCP, len(segment)) + segment
        )
    segment = segment[:16] + struct.pack("!H", checksum) + segment[18:]
    return ip_packet(src, dst, TCP, segment, ident=ident, ttl=ttl)


def udp_packet(
    src: str, dst: str, payload: bytes, *, sport: int = 4000, dport: int = 5000, ident: int = 0
) -> bytes:
    """A UDP datagram with correct checksums."""
    datagram = udp(sport, dport, payload)
    checksum = reference_checksum(
        pseudo_header(packed(src), packed(dst), UDP, len(datagram)) + datagram
    )
    datagram = datagram[:6] + struct.pack("!H", checksum or 0xFFFF) + datagram[8:]
    return ip_packet(src, dst, UDP, datagram, ident=ident)


def partial(packet: bytes) -> bytes:
    """What the kernel hands over with NEEDS_CSUM: the checksum field holds the pseudo-header
    sum (not complemented) and the rest is left for the reader to add."""
    ip_len = 20 if packet[0] >> 4 == 4 else 40
    proto = packet[9] if ip_len == 20 else packet[6]
    at = ip_len + (16 if proto == TCP else 6)
    src, dst = (packet[12:16], packet[16:20]) if ip_len == 20 else (packet[8:24], packet[24:40])
    pseudo = pseudo_header(src, dst, proto, len(packet) - ip_len)
    value = 0xFFFF ^ reference_checksum(pseudo)
    return packet[:at] + struct.pack("!H", value) + packet[at + 2 :]


def tso_frame(packet: bytes, mss: int) -> bytes:
    """A TCP or UDP super-packet as a TSO/USO read returns it: the whole packet with a partial
    checksum, behind a virtio-net header naming the segment size."""
    ip_len = 20 if packet[0] >> 4 == 4 else 40
    proto = packet[9] if ip_len == 20 else packet[6]
    if proto == TCP:
        hdr_len = ip_len + (packet[ip_len + 12] >> 4) * 4
        gso = GSO_TCPV4 if ip_len == 20 else GSO_TCPV6
        csum_offset = 16
    else:
        hdr_len, gso, csum_offset = ip_len + 8, GSO_UDP_L4, 6
    header = VNET_HDR.pack(NEEDS_CSUM, gso, hdr_len, mss, ip_len, csum_offset)
    return header + partial(packet)


def plain_frame(packet: bytes, *, needs_csum: bool = False) -> bytes:
    """A packet read behind a virtio-net header: all zero, or NEEDS_CSUM with a partial sum."""
    if not needs_csum:
        return bytes(VNET_HDR.size) + packet
    ip_len = 20 if packet[0] >> 4 == 4 else 40
    proto = packet[9] if ip_len == 20 else packet[6]
    header = VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, ip_len, 16 if proto == TCP else 6)
    return header + partial(packet)


def _fields(packet: bytes) -> tuple[int, bytes, bytes, int]:
    """(IP header length, source, destination, transport protocol)."""
    if packet[0] >> 4 == 4:
        ip_len = (packet[0] & 0x0F) * 4
        return ip_len, packet[12:16], packet[16:20], packet[9]
    return 40, packet[8:24], packet[24:40], packet[6]


def _finish(header: bytearray, ip_len: int, transport: bytes, proto: int) -> bytes:
    """Set the lengths and checksums of one segment, as the kernel's segmentation does."""
    src, dst = (
        (bytes(header[12:16]), bytes(header[16:20]))
        if ip_len == 20
        else (bytes(header[8:24]), bytes(header[24:40]))
    )
    at = 16 if proto == TCP else 6
    transport = bytearray(transport)
    if proto == UDP:
        struct.pack_into("!H", transport, 4, len(transport))
    transport[at : at + 2] = b"\0\0"
    value = reference_checksum(pseudo_header(src, dst, proto, len(transport)) + bytes(transport))
    if proto == UDP and value == 0:
        value = 0xFFFF
    struct.pack_into("!H", transport, at, value)
    if ip_len == 20:
        struct.pack_into("!H", header, 2, ip_len + len(transport))
        header[10:12] = b"\0\0"
        struct.pack_into("!H", header, 10, reference_checksum(bytes(header[:ip_len])))
    else:
        struct.pack_into("!H", header, 4, len(transport))
    return bytes(header) + bytes(transport)


def split(frame: bytes) -> list[bytes]:
    """The packets a TUN read stands for (the kernel's rules, written out)."""
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    packet = frame[VNET_HDR.size :]
    gso_type &= 0x7F
    if gso_type == GSO_NONE:
        if not flags & NEEDS_CSUM:
            return [packet]
        at = csum_start + csum_offset
        value = reference_checksum(packet[csum_start:])  # the partial sum in the field is included
        if csum_offset == 6 and value == 0:
            value = 0xFFFF
        return [packet[:at] + struct.pack("!H", value) + packet[at + 2 :]]
    ip_len, _, _, proto = _fields(packet)
    transport_len = (packet[ip_len + 12] >> 4) * 4 if proto == TCP else 8
    hdr_len = ip_len + transport_len
    payload = packet[hdr_len:]
    chunks = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)] or [b""]
    out = []
    for index, chunk in enumerate(chunks):
        ip = bytearray(packet[:ip_len])
        transport = bytearray(packet[ip_len:hdr_len])
        if ip_len == 20:
            ident = (struct.unpack_from("!H", ip, 4)[0] + index) & 0xFFFF
            struct.pack_into("!H", ip, 4, ident)
        if proto == TCP:
            seq = (struct.unpack_from("!I", transport, 4)[0] + index * gso_size) & 0xFFFFFFFF
            struct.pack_into("!I", transport, 4, seq)
            if index != len(chunks) - 1:
                transport[13] &= ~(FIN | PSH) & 0xFF
            if index:
                transport[13] &= ~CWR & 0xFF
        out.append(_finish(ip, ip_len, bytes(transport) + chunk, proto))
    return out


def resegment(buffers: list[bytes | bytearray | memoryview]) -> list[bytes]:
    """What the kernel makes of one write to a TUN device with a virtio-net header."""
    frame = b"".join(bytes(b) for b in buffers)
    flags, gso_type, _hdr_len, _gso_size, _csum_start, _csum_offset = VNET_HDR.unpack_from(frame)
    assert not flags & NEEDS_CSUM, "writes leave the checksum for the kernel to verify"
    packet = frame[VNET_HDR.size :]
    if gso_type == GSO_NONE:
        return [packet]
    ip_len, src, dst, proto = _fields(packet)
    assert proto == TCP
    # A merged write's checksum covers the whole super-packet: verify it, as the kernel does.
    segment = packet[ip_len:]
    assert reference_checksum(pseudo_header(src, dst, TCP, len(segment)) + segment) == 0, (
        "bad merged checksum"
    )
    return split(frame)


def ttl_decremented(packet: bytes) -> bytes:
    """The packet as a router forwards it: TTL or hop limit one less (IPv4 checksum updated)."""
    p = bytearray(packet)
    if p[0] >> 4 == 4:
        p[8] -= 1
        p[10:12] = b"\0\0"
        struct.pack_into("!H", p, 10, reference_checksum(bytes(p[:20])))
    else:
        p[7] -= 1
    return bytes(p)
