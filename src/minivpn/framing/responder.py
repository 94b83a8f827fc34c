"""Answer pings, ARP and neighbor solicitations: a tiny stand-in host behind a TUN/TAP device.

With a responder on the device, a real ``ping`` through the device gets replies without any
peer, which makes the device layer testable on its own.  For a TUN device with local address
``10.9.0.1/24``, ``ping 10.9.0.2`` makes the kernel send an echo request from 10.9.0.1 to
10.9.0.2 out of the device; :func:`answer_untrusted` returns the echo reply from 10.9.0.2 to
10.9.0.1, and writing it back to the device delivers it to ``ping``.

A TAP device carries Ethernet frames, so the kernel first has to find the MAC address of
10.9.0.2: it broadcasts an ARP request (IPv4) or multicasts a neighbor solicitation (IPv6).
The responder answers both for *any* address with ``my_mac`` (a "proxy" for the whole
subnet), then answers the pings that follow, wrapped in Ethernet with the MAC addresses swapped.

What it answers, and what it deliberately leaves alone:

* ICMP echo request -> echo reply (type 0, addresses swapped, TTL 64, checksums recomputed;
  IPv4 options are not echoed).
* ICMPv6 echo request -> echo reply (type 129, hop limit 64, checksum over the IPv6
  pseudo-header).
* ARP request (Ethernet only) -> ARP reply "target is-at my_mac".  Not answered: ARP probes
  (sender 0.0.0.0) and gratuitous ARP (sender = target): answering those would tell the
  kernel its own address is taken.
* Neighbor solicitation (Ethernet only) -> neighbor advertisement with the Solicited and
  Override flags and a target link-layer address option.  Not answered: solicitations from
  the unspecified address ``::``, which are duplicate address detection for the kernel's
  own address.
* Not answered: requests to multicast or broadcast destinations (a reply would need a
  unicast source we do not have), fragments, requests with bad checksums, 802.1Q-tagged
  frames, and everything else.
"""

from __future__ import annotations

import struct

from .decode import (
    ICMPMessage,
    IPPacket,
    Link,
    decode_arp_untrusted,
    decode_ethernet_untrusted,
    decode_icmp_untrusted,
    decode_ip_untrusted,
)
from .errors import MalformedPacket
from .protocols import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
)

#: TTL / hop limit of the replies (Linux's default).
REPLY_TTL = 64

_ICMP_ECHO_REPLY, _ICMP_ECHO_REQUEST = 0, 8
_ICMPV6_ECHO_REQUEST, _ICMPV6_ECHO_REPLY = 128, 129
_ICMPV6_NEIGHBOR_SOLICITATION, _ICMPV6_NEIGHBOR_ADVERTISEMENT = 135, 136
_ND_OPTION_TARGET_LINK_LAYER_ADDRESS = 2
_NA_FLAG_SOLICITED = 0x40000000
_NA_FLAG_OVERRIDE = 0x20000000
_ARP_REQUEST, _ARP_REPLY = 1, 2

_ETHERNET_HEADER = struct.Struct("!6s6sH")
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_ICMP_HEADER = struct.Struct("!BBH")
_ARP_ETHERNET_IPV4 = struct.Struct("!HHBBH6s4s6s4s")
_PSEUDO_HEADER_TAIL = struct.Struct("!I3xB")  # IPv6 pseudo-header: length, zeros, next header


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """Compute the Internet checksum (RFC 1071) used by IPv4, ICMP, ICMPv6, UDP and TCP.

    The checksum is the one's complement of the one's-complement sum of the data taken as
    big-endian 16-bit words (an odd final byte is padded with a zero byte).  Summing data
    whose checksum field is already filled in gives 0 when the checksum is right.

    Args:
        data: the bytes to sum (with the checksum field zeroed when computing one).

    Returns:
        The 16-bit checksum to store in the header.
    """
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    # Shortcut that stays in C: read the data as one big integer of 16-bit digits.  Since
    # 2**16 == 1 (mod 0xFFFF), that integer modulo 0xFFFF equals the sum of its 16-bit words
    # modulo 0xFFFF, which is the one's-complement sum, except that one's complement writes
    # a nonzero multiple of 0xFFFF as 0xFFFF, not 0.
    number = int.from_bytes(data, "big")
    total = number % 0xFFFF
    if total == 0 and number != 0:
        total = 0xFFFF
    return 0xFFFF - total


def _ipv6_pseudo_header_sum_input(src: bytes, dst: bytes, length: int, next_header: int) -> bytes:
    """The IPv6 pseudo-header (RFC 8200 section 8.1) that ICMPv6/UDP/TCP checksums cover."""
    return src + dst + _PSEUDO_HEADER_TAIL.pack(length, next_header)


def answer_untrusted(
    frame_or_packet: bytes | bytearray | memoryview,
    link: Link,
    *,
    my_mac: bytes | None = None,
) -> bytes | None:
    """Build the answer to a ping, ARP request or neighbor solicitation, if it deserves one.

    Args:
        frame_or_packet: what was read from the device: an IP packet (``Link.IP``, a TUN
            device without PI) or an Ethernet frame (``Link.ETHERNET``, a TAP device).
        link: which of the two it is.
        my_mac: the MAC address to claim in ARP replies and neighbor advertisements; required
            for ``Link.ETHERNET``.

    Returns:
        The bytes to write back to the device, or None when there is nothing to answer
        (including malformed input).

    Raises:
        ValueError: ``link`` is ``Link.ETHERNET`` and ``my_mac`` is not 6 bytes.
    """
    if link is Link.IP:
        try:
            return _answer_ip(decode_ip_untrusted(frame_or_packet))
        except MalformedPacket:
            return None
    if my_mac is None or len(my_mac) != 6:
        raise ValueError("answering Ethernet frames needs my_mac, a 6-byte MAC address")
    try:
        return _answer_ethernet(frame_or_packet, bytes(my_mac))
    except MalformedPacket:
        return None


def _answer_ethernet(data: bytes | bytearray | memoryview, my_mac: bytes) -> bytes | None:
    frame = decode_ethernet_untrusted(data)
    if frame.vlan is not None:
        return None
    if frame.ethertype == ETHERTYPE_ARP:
        reply = _answer_arp(frame.payload, my_mac)
        if reply is None:
            return None
        return _ETHERNET_HEADER.pack(frame.source, my_mac, ETHERTYPE_ARP) + reply
    if frame.ethertype not in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        return None
    packet = decode_ip_untrusted(frame.payload)
    reply = _answer_neighbor_solicitation(packet, my_mac)
    if reply is not None:
        return _ETHERNET_HEADER.pack(frame.source, my_mac, ETHERTYPE_IPV6) + reply
    reply = _answer_ip(packet)
    if reply is None:
        return None
    # Echo replies go back the way the request came: swap the MAC addresses.
    return _ETHERNET_HEADER.pack(frame.source, frame.destination, frame.ethertype) + reply


def _answer_ip(packet: IPPacket) -> bytes | None:
    if packet.fragment is not None or packet.dst.is_multicast or packet.src.is_unspecified:
        return None
    if packet.version == 4:
        if packet.proto != IPPROTO_ICMP or packet.dst.packed == b"\xff\xff\xff\xff":
            return None
        return _answer_icmp_echo(packet)
    if packet.proto != IPPROTO_ICMPV6:
        return None
    return _answer_icmpv6_echo(packet)


def _answer_icmp_echo(packet: IPPacket) -> bytes | None:
    message = decode_icmp_untrusted(packet.payload)
    if message.type != _ICMP_ECHO_REQUEST or internet_checksum(packet.payload) != 0:
        return None
    icmp = _with_checksum(_echo_reply_body(message, _ICMP_ECHO_REPLY), offset=2)
    total_length = 20 + len(icmp)
    header = _IPV4_HEADER.pack(
        0x45,  # version 4, header length 5 words: options are not echoed
        0,
        total_length,
        0,  # identification: this packet is never fragmented, so any value will do
        0x4000,  # DF
        REPLY_TTL,
        IPPROTO_ICMP,
        0,
        packet.dst.packed,
        packet.src.packed,
    )
    return _with_checksum(header, offset=10) + icmp


def _answer_icmpv6_echo(packet: IPPacket) -> bytes | None:
    message = decode_icmp_untrusted(packet.payload)
    if message.type != _ICMPV6_ECHO_REQUEST:
        return None
    pseudo = _ipv6_pseudo_header_sum_input(
        packet.src.packed, packet.dst.packed, len(packet.payload), IPPROTO_ICMPV6
    )
    if internet_checksum(pseudo + packet.payload) != 0:
        return None
    body = _echo_reply_body(message, _ICMPV6_ECHO_REPLY)
    return _ipv6_icmp_packet(packet.dst.packed, packet.src.packed, body, REPLY_TTL)


def _echo_reply_body(request: ICMPMessage, reply_type: int) -> bytearray:
    """The reply message with a zero checksum: same identifier, sequence and data."""
    body = bytearray(_ICMP_HEADER.pack(reply_type, 0, 0))
    body += request.rest_of_header.to_bytes(4, "big")
    body += request.body
    return body


def _with_checksum(data: bytearray | bytes, *, offset: int) -> bytes:
    """Fill in the 16-bit checksum at ``offset`` (which must hold zeros) over all of ``data``."""
    buffer = bytearray(data)
    buffer[offset : offset + 2] = internet_checksum(buffer).to_bytes(2, "big")
    return bytes(buffer)


def _ipv6_icmp_packet(src: bytes, dst: bytes, icmp: bytearray, hop_limit: int) -> bytes:
    """An IPv6 packet carrying ``icmp`` (checksum zero), with the ICMPv6 checksum filled in."""
    pseudo = _ipv6_pseudo_header_sum_input(src, dst, len(icmp), IPPROTO_ICMPV6)
    icmp[2:4] = internet_checksum(pseudo + icmp).to_bytes(2, "big")
    header = _IPV6_HEADER.pack(6 << 28, len(icmp), IPPROTO_ICMPV6, hop_limit, src, dst)
    return header + icmp


def _answer_arp(payload: memoryview, my_mac: bytes) -> bytes | None:
    arp = decode_arp_untrusted(payload)
    if not arp.is_ethernet_ipv4 or arp.operation != _ARP_REQUEST:
        return None
    sender_ip, target_ip = arp.sender_protocol_address, arp.target_protocol_address
    if sender_ip in (b"\x00\x00\x00\x00", target_ip):
        return None  # an ARP probe or a gratuitous ARP: nobody is asking us anything
    return _ARP_ETHERNET_IPV4.pack(
        1,
        ETHERTYPE_IPV4,
        6,
        4,
        _ARP_REPLY,
        my_mac,
        target_ip,  # "the address you asked about is at my_mac"
        arp.sender_hardware_address,
        sender_ip,
    )


def _answer_neighbor_solicitation(packet: IPPacket, my_mac: bytes) -> bytes | None:
    """The neighbor advertisement (RFC 4861 section 7.2.4) for a solicitation, else None."""
    if packet.version != 6 or packet.proto != IPPROTO_ICMPV6 or packet.fragment is not None:
        return None
    message = decode_icmp_untrusted(packet.payload)
    if message.type != _ICMPV6_NEIGHBOR_SOLICITATION or message.code != 0:
        return None
    # RFC 4861 7.1.1: a valid solicitation has hop limit 255 (it cannot have been routed).
    if packet.ttl != 255 or len(message.body) < 16 or packet.src.is_unspecified:
        return None
    target = bytes(message.body[:16])
    if target[0] == 0xFF:
        return None  # RFC 4861 7.1.1: the target must not be a multicast address
    pseudo = _ipv6_pseudo_header_sum_input(
        packet.src.packed, packet.dst.packed, len(packet.payload), IPPROTO_ICMPV6
    )
    if internet_checksum(pseudo + packet.payload) != 0:
        return None
    advertisement = bytearray(_ICMP_HEADER.pack(_ICMPV6_NEIGHBOR_ADVERTISEMENT, 0, 0))
    advertisement += (_NA_FLAG_SOLICITED | _NA_FLAG_OVERRIDE).to_bytes(4, "big")
    advertisement += target
    # Option: type 2 (target link-layer address), length 1 (in units of 8 bytes), the MAC.
    advertisement += bytes((_ND_OPTION_TARGET_LINK_LAYER_ADDRESS, 1)) + my_mac
    # The advertisement comes from the target address and goes to whoever asked; neighbor
    # discovery messages always have hop limit 255.
    return _ipv6_icmp_packet(target, packet.src.packed, advertisement, 255)
