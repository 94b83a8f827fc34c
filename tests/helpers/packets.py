"""Reference packet builders for the framing tests, independent of the code under test.

The framing tests need packets whose bytes do not come from minivpn.  The builders here write
every header field by hand with :mod:`struct`, compute checksums with a deliberately plain
word-by-word loop, and write pcap files with their own few lines.
``tests/unit/test_framing_packets.py`` checks with tshark that what they build is what real
tools expect (good checksums, the right fields).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

MAC_A = bytes.fromhex("aabbccddeeff")
MAC_B = bytes.fromhex("112233445566")
BROADCAST_MAC = b"\xff" * 6

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101


def reference_checksum(data: bytes) -> int:
    """RFC 1071, written out the slow and obvious way."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def v4(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def v6(address: str) -> bytes:
    return ipaddress.IPv6Address(address).packed


def packed(address: str) -> bytes:
    """The 4 or 16 bytes of an IPv4 or IPv6 address."""
    return ipaddress.ip_address(address).packed


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """What TCP, UDP and ICMPv6 checksums cover besides the segment: IPv4's (RFC 793) or
    IPv6's (RFC 8200, 8.1) pseudo-header, by the length of the addresses."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    identification: int = 1,
    flags_offset: int = 0,
    options: bytes = b"",
) -> bytes:
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(payload),
        identification,
        flags_offset,
        ttl,
        proto,
        0,
        v4(src),
        v4(dst),
    )
    header += options
    header = header[:10] + struct.pack("!H", reference_checksum(header)) + header[12:]
    return header + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    return (
        struct.pack("!IHBB", 0x60000000, len(payload), next_header, hop_limit)
        + v6(src)
        + v6(dst)
        + payload
    )


def icmp(icmp_type: int, code: int, rest: bytes, data: bytes = b"") -> bytes:
    message = struct.pack("!BBH", icmp_type, code, 0) + rest + data
    return message[:2] + struct.pack("!H", reference_checksum(message)) + message[4:]


def icmp_echo(request: bool, identifier: int, sequence: int, data: bytes) -> bytes:
    return icmp(8 if request else 0, 0, struct.pack("!HH", identifier, sequence), data)


def pseudo_header6(src: str, dst: str, next_header: int, length: int) -> bytes:
    return pseudo_header(v6(src), v6(dst), next_header, length)


def icmpv6(src: str, dst: str, icmp_type: int, code: int, body: bytes) -> bytes:
    message = struct.pack("!BBH", icmp_type, code, 0) + body
    checksum = reference_checksum(pseudo_header6(src, dst, 58, len(message)) + message)
    return message[:2] + struct.pack("!H", checksum) + message[4:]


def icmpv6_echo(
    src: str, dst: str, request: bool, identifier: int, sequence: int, data: bytes
) -> bytes:
    body = struct.pack("!HH", identifier, sequence) + data
    return icmpv6(src, dst, 128 if request else 129, 0, body)


def neighbor_solicitation(src: str, dst: str, target: str, source_mac: bytes | None) -> bytes:
    body = b"\x00" * 4 + v6(target)
    if source_mac is not None:
        body += bytes((1, 1)) + source_mac  # source link-layer address option
    return icmpv6(src, dst, 135, 0, body)


def solicited_node(address: str) -> str:
    """The solicited-node multicast group of an address (RFC 4291 2.7.1)."""
    low = v6(address)[-3:]
    return str(ipaddress.IPv6Address(v6("ff02::1:ff00:0")[:13] + low))


def udp(src_port: int, dst_port: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", src_port, dst_port, 8 + len(data), 0) + data


def tcp(
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    *,
    window: int = 65535,
    options: bytes = b"",
    data: bytes = b"",
    urgent: int = 0,
) -> bytes:
    assert len(options) % 4 == 0
    offset = (20 + len(options)) // 4
    return (
        struct.pack(
            "!HHIIBBHHH", src_port, dst_port, seq, ack, offset << 4, flags, window, 0, urgent
        )
        + options
        + data
    )


def arp(
    operation: int, sender_mac: bytes, sender_ip: str, target_mac: bytes, target_ip: str
) -> bytes:
    return struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        0x0800,
        6,
        4,
        operation,
        sender_mac,
        v4(sender_ip),
        target_mac,
        v4(target_ip),
    )


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ethernet_vlan(
    dst: bytes, src: bytes, vid: int, priority: int, ethertype: int, payload: bytes
) -> bytes:
    tag = (priority << 13) | vid
    return dst + src + struct.pack("!HHH", 0x8100, tag, ethertype) + payload


UDP_PACKET_V4 = ipv4("10.0.0.1", "10.0.0.2", 17, udp(50000, 55000, b"a" * 20))
UDP_PACKET_V6 = ipv6("fd00::1", "fd00::2", 17, udp(50000, 55000, b"a" * 20))


def write_reference_pcap(path: Path, linktype: int, packets: list[bytes]) -> None:
    """A pcap writer independent of minivpn.framing.pcap."""
    with path.open("wb") as file:
        file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for number, packet in enumerate(packets):
            file.write(struct.pack("<IIII", 1_700_000_000 + number, 0, len(packet), len(packet)))
            file.write(packet)
