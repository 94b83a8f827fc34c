"""Decode packets layer by layer into value objects, strictly: a bad header is an error.

The **structured decoders** (``decode_*_untrusted``) turn bytes into frozen value objects:
:class:`EthernetFrame`, :class:`ARPPacket`, :class:`IPPacket`, :class:`TCPSegment`,
:class:`UDPDatagram` and :class:`ICMPMessage`.  Each decodes one layer and hands the next
layer's bytes on as a :class:`memoryview` into the original buffer (no copy).  They are strict:
a header that is cut short or has impossible fields raises :class:`MalformedPacket`, so a
caller never sees half-decoded data.  :func:`decode_quoted_ip_untrusted` is the lenient
exception, for the start of a packet that an ICMP error quotes.

:func:`minivpn.framing.summary.summarize` chains them into one line in the words of
``tcpdump -n``; the responder (:mod:`minivpn.framing.responder`) uses them to answer pings.

The module also has three small helpers that read one field without a full decode:
:func:`inner_ip_length_untrusted`, :func:`ip_source_untrusted` and
:func:`ip_destination_untrusted`.  (WireGuard's per-packet path reads the same fields inline,
at offsets into its buffers, to save a call and a copy per packet.)
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import attrs

from .errors import MalformedPacket
from .protocols import (
    ETHERTYPE_IPV4,
    ETHERTYPE_VLAN,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
)

Buffer = bytes | bytearray | memoryview
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Link(enum.Enum):
    """What the first byte of a captured buffer is.

    ``IP`` is a bare IPv4 or IPv6 packet, as a TUN device without the PI header delivers it;
    ``ETHERNET`` is an Ethernet II frame, as a TAP device delivers it.
    """

    IP = "ip"
    ETHERNET = "ethernet"


# ---------------------------------------------------------------------------------------------
# Value objects
# ---------------------------------------------------------------------------------------------
# The ``payload`` fields are views into the caller's buffer: cheap, but only valid while that
# buffer is not reused.  Call ``bytes(...)`` on them to keep the data.


@attrs.frozen
class VlanTag:
    """An IEEE 802.1Q tag.

    Attributes:
        vid: the VLAN identifier, 0 to 4095.
        priority: the priority code point (PCP), 0 to 7.
        drop_eligible: the DEI bit.
    """

    vid: int
    priority: int
    drop_eligible: bool


@attrs.frozen
class EthernetFrame:
    """An Ethernet II frame, with at most one 802.1Q tag removed.

    Attributes:
        destination: 6-byte destination MAC address.
        source: 6-byte source MAC address.
        ethertype: EtherType of ``payload`` (for a tagged frame, the one after the tag).  Values
            below 0x0600 are an IEEE 802.3 length instead.
        vlan: the 802.1Q tag, if the frame had one.
        payload: everything after the header and tag, including any padding.
        length: length of the whole frame.
    """

    destination: bytes
    source: bytes
    ethertype: int
    vlan: VlanTag | None
    payload: memoryview
    length: int


@attrs.frozen
class ARPPacket:
    """An ARP packet (RFC 826); addresses are raw bytes of the lengths the header gives.

    Attributes:
        hardware_type: 1 for Ethernet.
        protocol_type: the EtherType of the protocol addresses, 0x0800 for IPv4.
        operation: 1 request, 2 reply (3 and 4 are RARP).
        sender_hardware_address: the sender's MAC address.
        sender_protocol_address: the sender's IP address.
        target_hardware_address: the target's MAC address (zero in a request).
        target_protocol_address: the IP address asked about.
        length: length of the ARP bytes including any trailing padding.
    """

    hardware_type: int
    protocol_type: int
    operation: int
    sender_hardware_address: bytes
    sender_protocol_address: bytes
    target_hardware_address: bytes
    target_protocol_address: bytes
    length: int

    @property
    def is_ethernet_ipv4(self) -> bool:
        """Whether this is the common case: Ethernet MAC addresses and IPv4 addresses."""
        return (
            self.hardware_type == 1
            and self.protocol_type == ETHERTYPE_IPV4
            and len(self.sender_hardware_address) == 6
            and len(self.sender_protocol_address) == 4
        )


@attrs.frozen
class Fragment:
    """Where a fragment sits in the original datagram (IPv4 flags/offset or IPv6 header).

    Attributes:
        identification: the datagram identification shared by all its fragments.
        offset: byte offset of this fragment's data in the original payload.
        more_fragments: the MF flag: more fragments follow this one.
    """

    identification: int
    offset: int
    more_fragments: bool


@attrs.frozen
class ExtensionHeader:
    """One IPv6 extension header that was skipped to reach the upper-layer protocol.

    Attributes:
        protocol: its own protocol number (0 hop-by-hop, 43 routing, 44 fragment, 60
            destination options).
        header: its raw bytes.
    """

    protocol: int
    header: bytes


@attrs.frozen
class IPPacket:
    """An IPv4 or IPv6 packet.

    Attributes:
        version: 4 or 6.
        src: source address.
        dst: destination address.
        proto: the upper-layer protocol (for IPv6: the next header after the extension
            headers; for a non-first IPv6 fragment, the value in its fragment header).
        total_length: length of the packet according to its header (IPv4 total length, IPv6
            payload length + 40).  Bytes after it (e.g. Ethernet padding) are not part of it.
        header_length: bytes before the upper-layer payload (IPv4 header with options, or
            IPv6 header plus extension headers).
        ttl: time to live (IPv4) or hop limit (IPv6).
        fragment: set if this packet is a fragment.
        extension_headers: the IPv6 extension headers, in order (empty for IPv4).
        payload: the upper-layer bytes, ``header_length`` to ``total_length``.
    """

    version: int
    src: IPAddress
    dst: IPAddress
    proto: int
    total_length: int
    header_length: int
    ttl: int
    fragment: Fragment | None
    extension_headers: tuple[ExtensionHeader, ...]
    payload: memoryview


@attrs.frozen
class TCPSegment:
    """A TCP segment (RFC 9293).

    Attributes:
        src_port: source port.
        dst_port: destination port.
        seq: sequence number.
        ack: acknowledgment number (meaningful when the ACK flag is set).
        flags: the 8 flag bits, FIN = 0x01 ... CWR = 0x80.
        window: the receive window, unscaled.
        urgent: the urgent pointer.
        header_length: data offset in bytes, 20 to 60.
        options: the raw option bytes.
        payload: the data after the header.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int
    header_length: int
    options: bytes
    payload: memoryview


@attrs.frozen
class UDPDatagram:
    """A UDP datagram (RFC 768).

    Attributes:
        src_port: source port.
        dst_port: destination port.
        length: the UDP length field: header plus data.
        checksum: the checksum field (0: none, IPv4 only).
        payload: the data, ``length - 8`` bytes.
    """

    src_port: int
    dst_port: int
    length: int
    checksum: int
    payload: memoryview


@attrs.frozen
class ICMPMessage:
    """An ICMP (RFC 792) or ICMPv6 (RFC 4443) message; both share this layout.

    Attributes:
        type: the message type, e.g. 8 echo request (ICMP), 128 echo request (ICMPv6).
        code: the subtype.
        checksum: the checksum field.
        rest_of_header: the 4 type-specific bytes after the checksum as a big-endian number
            (echo: identifier and sequence; packet too big: the MTU; ...).
        body: everything after those 8 bytes.
    """

    type: int
    code: int
    checksum: int
    rest_of_header: int
    body: memoryview

    @property
    def identifier(self) -> int:
        """The echo identifier (first half of ``rest_of_header``)."""
        return self.rest_of_header >> 16

    @property
    def sequence(self) -> int:
        """The echo sequence number (second half of ``rest_of_header``)."""
        return self.rest_of_header & 0xFFFF


# ---------------------------------------------------------------------------------------------
# Structured decoders
# ---------------------------------------------------------------------------------------------

_ETHERNET_HEADER = struct.Struct("!6s6sH")
_VLAN_TAG = struct.Struct("!HH")
_ARP_FIXED = struct.Struct("!HHBBH")
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_IPV6_FRAGMENT = struct.Struct("!BBHI")
_TCP_HEADER = struct.Struct("!HHIIBBHHH")
_UDP_HEADER = struct.Struct("!HHHH")
_ICMP_HEADER = struct.Struct("!BBHI")

_IPV4_HEADER_LENGTH = 20
_IPV6_HEADER_LENGTH = 40
_IPV6_EXTENSION_HEADERS = frozenset(
    {IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS}
)


def decode_ethernet_untrusted(data: Buffer) -> EthernetFrame:
    """Decode an Ethernet II header, and one 802.1Q VLAN tag if there is one.

    Args:
        data: the whole frame, as a TAP device delivers it (no preamble, no FCS).

    Returns:
        The frame, with the payload as a view into ``data``.

    Raises:
        MalformedPacket: the frame is shorter than its header (and tag).
    """
    view = memoryview(data)
    if len(view) < _ETHERNET_HEADER.size:
        raise MalformedPacket(f"Ethernet frame of {len(view)} bytes is shorter than its header")
    destination, source, ethertype = _ETHERNET_HEADER.unpack_from(view)
    offset = _ETHERNET_HEADER.size
    vlan = None
    if ethertype == ETHERTYPE_VLAN:
        if len(view) < offset + _VLAN_TAG.size:
            raise MalformedPacket("Ethernet frame cut short inside its 802.1Q tag")
        tag_control, ethertype = _VLAN_TAG.unpack_from(view, offset)
        vlan = VlanTag(
            vid=tag_control & 0x0FFF,
            priority=tag_control >> 13,
            drop_eligible=bool(tag_control & 0x1000),
        )
        offset += _VLAN_TAG.size
    return EthernetFrame(destination, source, ethertype, vlan, view[offset:], len(view))


def decode_arp_untrusted(data: Buffer) -> ARPPacket:
    """Decode an ARP packet of any hardware and protocol address sizes.

    Args:
        data: the Ethernet payload (trailing padding is allowed).

    Returns:
        The packet.

    Raises:
        MalformedPacket: shorter than the addresses its header announces.
    """
    view = memoryview(data)
    if len(view) < _ARP_FIXED.size:
        raise MalformedPacket(f"ARP packet of {len(view)} bytes is shorter than its header")
    hardware_type, protocol_type, hw_len, proto_len, operation = _ARP_FIXED.unpack_from(view)
    needed = _ARP_FIXED.size + 2 * (hw_len + proto_len)
    if len(view) < needed:
        raise MalformedPacket(f"ARP packet of {len(view)} bytes, its addresses need {needed}")
    offset = _ARP_FIXED.size
    addresses = []  # sender hardware, sender protocol, target hardware, target protocol
    for size in (hw_len, proto_len, hw_len, proto_len):
        addresses.append(bytes(view[offset : offset + size]))
        offset += size
    return ARPPacket(
        hardware_type=hardware_type,
        protocol_type=protocol_type,
        operation=operation,
        sender_hardware_address=addresses[0],
        sender_protocol_address=addresses[1],
        target_hardware_address=addresses[2],
        target_protocol_address=addresses[3],
        length=len(view),
    )


def decode_ip_untrusted(data: Buffer) -> IPPacket:
    """Decode an IPv4 or IPv6 header, skipping the common IPv6 extension headers.

    Args:
        data: the packet, starting at the IP header.  Bytes after the length its header gives
            (e.g. Ethernet padding) are ignored.

    Returns:
        The packet, with the upper-layer payload as a view into ``data``.

    Raises:
        MalformedPacket: not IPv4 or IPv6, a header is cut short or inconsistent, or the
            packet is shorter than its header says.
    """
    return _decode_ip(memoryview(data), allow_truncated=False)


def decode_quoted_ip_untrusted(data: Buffer) -> IPPacket:
    """Decode the start of an IP packet as an ICMP error message quotes it.

    ICMP error messages quote only the start of the packet that caused them, so decoding that
    quote needs a lenient mode: the headers must be complete, the payload may be short.

    Raises:
        MalformedPacket: the headers are cut short or impossible.
    """
    return _decode_ip(memoryview(data), allow_truncated=True)


def _decode_ip(view: memoryview, *, allow_truncated: bool) -> IPPacket:
    """Decode an IP packet; ``allow_truncated`` accepts a cut-off payload."""
    if not view:
        raise MalformedPacket("an empty packet has no IP header")
    version = view[0] >> 4
    if version == 4:
        return _decode_ipv4(view, allow_truncated)
    if version == 6:
        return _decode_ipv6(view, allow_truncated)
    raise MalformedPacket(f"IP version {version} is neither 4 nor 6")


def _decode_ipv4(view: memoryview, allow_truncated: bool) -> IPPacket:
    if len(view) < _IPV4_HEADER_LENGTH:
        raise MalformedPacket(f"IPv4 packet of {len(view)} bytes is shorter than its header")
    (version_ihl, _tos, total_length, identification, flags_offset, ttl, proto, _checksum,
     src, dst) = _IPV4_HEADER.unpack_from(view)  # fmt: skip
    header_length = (version_ihl & 0x0F) * 4
    if header_length < _IPV4_HEADER_LENGTH:
        raise MalformedPacket(f"IPv4 header length {header_length} is below the minimum 20")
    if header_length > len(view):
        raise MalformedPacket(f"IPv4 header of {header_length} bytes is cut short")
    if total_length < header_length:
        raise MalformedPacket(f"IPv4 total length {total_length} is below its header length")
    if total_length > len(view) and not allow_truncated:
        raise MalformedPacket(
            f"IPv4 total length {total_length} exceeds the {len(view)} bytes received"
        )
    fragment_offset = (flags_offset & 0x1FFF) * 8
    more_fragments = bool(flags_offset & 0x2000)
    fragment = (
        Fragment(identification, fragment_offset, more_fragments)
        if fragment_offset or more_fragments
        else None
    )
    return IPPacket(
        version=4,
        src=ipaddress.IPv4Address(src),
        dst=ipaddress.IPv4Address(dst),
        proto=proto,
        total_length=total_length,
        header_length=header_length,
        ttl=ttl,
        fragment=fragment,
        extension_headers=(),
        payload=view[header_length : min(total_length, len(view))],
    )


def _decode_ipv6(view: memoryview, allow_truncated: bool) -> IPPacket:
    if len(view) < _IPV6_HEADER_LENGTH:
        raise MalformedPacket(f"IPv6 packet of {len(view)} bytes is shorter than its header")
    _vtf, payload_length, next_header, hop_limit, src, dst = _IPV6_HEADER.unpack_from(view)
    total_length = _IPV6_HEADER_LENGTH + payload_length
    if total_length > len(view) and not allow_truncated:
        raise MalformedPacket(
            f"IPv6 payload length {payload_length} exceeds the "
            f"{len(view) - _IPV6_HEADER_LENGTH} bytes received"
        )
    end = min(total_length, len(view))
    offset = _IPV6_HEADER_LENGTH
    extension_headers: list[ExtensionHeader] = []
    fragment = None
    # Each extension header is at least 8 bytes long and we only move forward, so this loop
    # ends after at most len(view) / 8 rounds.
    while next_header in _IPV6_EXTENSION_HEADERS:
        if end - offset < 8:
            raise MalformedPacket(f"IPv6 extension header {next_header} is cut short")
        if next_header == IPPROTO_FRAGMENT:
            following, _reserved, offset_flags, identification = _IPV6_FRAGMENT.unpack_from(
                view, offset
            )
            fragment = Fragment(identification, offset_flags & 0xFFF8, bool(offset_flags & 1))
            length = _IPV6_FRAGMENT.size
        else:
            following = view[offset]
            length = (view[offset + 1] + 1) * 8  # "Hdr Ext Len": 8-byte units after the first 8
            if length > end - offset:
                raise MalformedPacket(f"IPv6 extension header {next_header} is cut short")
        extension_headers.append(
            ExtensionHeader(next_header, bytes(view[offset : offset + length]))
        )
        offset += length
        next_header = following
        if fragment is not None and fragment.offset:
            break  # a later fragment continues the payload; nothing in it is a header
    return IPPacket(
        version=6,
        src=ipaddress.IPv6Address(src),
        dst=ipaddress.IPv6Address(dst),
        proto=next_header,
        total_length=total_length,
        header_length=offset,
        ttl=hop_limit,
        fragment=fragment,
        extension_headers=tuple(extension_headers),
        payload=view[offset:end],
    )


def decode_tcp_untrusted(data: Buffer) -> TCPSegment:
    """Decode a TCP header.

    Args:
        data: the IP payload.

    Returns:
        The segment.

    Raises:
        MalformedPacket: shorter than 20 bytes, or a data offset below 20 or past the end.
    """
    view = memoryview(data)
    if len(view) < _TCP_HEADER.size:
        raise MalformedPacket(f"TCP segment of {len(view)} bytes is shorter than its header")
    src_port, dst_port, seq, ack, offset_byte, flags, window, _checksum, urgent = (
        _TCP_HEADER.unpack_from(view)
    )
    header_length = (offset_byte >> 4) * 4
    if not _TCP_HEADER.size <= header_length <= len(view):
        raise MalformedPacket(
            f"TCP header length {header_length} outside 20..{len(view)} (the segment length)"
        )
    return TCPSegment(
        src_port,
        dst_port,
        seq,
        ack,
        flags,
        window,
        urgent,
        header_length,
        bytes(view[_TCP_HEADER.size : header_length]),
        view[header_length:],
    )


def decode_udp_untrusted(data: Buffer) -> UDPDatagram:
    """Decode a UDP header.

    Args:
        data: the IP payload.

    Returns:
        The datagram; its payload ends where the UDP length field says.

    Raises:
        MalformedPacket: shorter than 8 bytes, or a length field below 8 or past the end.
    """
    view = memoryview(data)
    if len(view) < _UDP_HEADER.size:
        raise MalformedPacket(f"UDP datagram of {len(view)} bytes is shorter than its header")
    src_port, dst_port, length, checksum = _UDP_HEADER.unpack_from(view)
    if not _UDP_HEADER.size <= length <= len(view):
        raise MalformedPacket(f"UDP length {length} outside 8..{len(view)} (the bytes received)")
    return UDPDatagram(src_port, dst_port, length, checksum, view[_UDP_HEADER.size : length])


def decode_icmp_untrusted(data: Buffer) -> ICMPMessage:
    """Decode the 8-byte header that ICMP and ICMPv6 messages share.

    Every message type this package looks at has the 4 type-specific bytes after the checksum,
    so a message shorter than 8 bytes is treated as malformed.

    Args:
        data: the IP payload.

    Returns:
        The message.

    Raises:
        MalformedPacket: shorter than 8 bytes.
    """
    view = memoryview(data)
    if len(view) < _ICMP_HEADER.size:
        raise MalformedPacket(f"ICMP message of {len(view)} bytes is shorter than its header")
    icmp_type, code, checksum, rest = _ICMP_HEADER.unpack_from(view)
    return ICMPMessage(icmp_type, code, checksum, rest, view[_ICMP_HEADER.size :])


# ---------------------------------------------------------------------------------------------
# Fast helpers for the packet path
# ---------------------------------------------------------------------------------------------


def inner_ip_length_untrusted(packet: Buffer) -> int:
    """Return the length an IP packet's own header gives it.

    WireGuard pads plaintext to a multiple of 16 bytes; after decryption this length says
    where the real packet ends.

    Args:
        packet: an IPv4 or IPv6 packet, possibly followed by padding.

    Returns:
        IPv4 total length, or IPv6 payload length + 40.

    Raises:
        MalformedPacket: not IPv4/IPv6, shorter than the fixed header, or the length is below
            the header size or larger than ``len(packet)``.
    """
    if not packet:
        raise MalformedPacket("an empty packet has no IP header")
    version = packet[0] >> 4
    if version == 4 and len(packet) >= _IPV4_HEADER_LENGTH:
        length = (packet[2] << 8) | packet[3]
        if length < _IPV4_HEADER_LENGTH:
            raise MalformedPacket(f"IPv4 total length {length} is below the header size")
    elif version == 6 and len(packet) >= _IPV6_HEADER_LENGTH:
        length = ((packet[4] << 8) | packet[5]) + _IPV6_HEADER_LENGTH
    else:
        raise MalformedPacket(f"not a complete IPv4 or IPv6 header (version {version})")
    if length > len(packet):
        raise MalformedPacket(f"IP length {length} exceeds the {len(packet)} bytes available")
    return length


def ip_source_untrusted(packet: Buffer) -> bytes:
    """Return the source address of an IP packet as raw bytes (4 for IPv4, 16 for IPv6).

    Args:
        packet: an IPv4 or IPv6 packet.

    Returns:
        The address bytes, e.g. for a lookup in a routing table keyed by bytes.

    Raises:
        MalformedPacket: not IPv4/IPv6 or shorter than the fixed header.
    """
    return _ip_address_untrusted(packet, v4_offset=12, v6_offset=8)


def ip_destination_untrusted(packet: Buffer) -> bytes:
    """Return the destination address of an IP packet as raw bytes (4 for IPv4, 16 for IPv6).

    Args:
        packet: an IPv4 or IPv6 packet.

    Returns:
        The address bytes, e.g. for a lookup in a routing table keyed by bytes.

    Raises:
        MalformedPacket: not IPv4/IPv6 or shorter than the fixed header.
    """
    return _ip_address_untrusted(packet, v4_offset=16, v6_offset=24)


def _ip_address_untrusted(packet: Buffer, *, v4_offset: int, v6_offset: int) -> bytes:
    """The address at *v4_offset* (4 bytes) or *v6_offset* (16 bytes), by IP version."""
    if packet:
        version = packet[0] >> 4
        if version == 4 and len(packet) >= _IPV4_HEADER_LENGTH:
            return bytes(packet[v4_offset : v4_offset + 4])
        if version == 6 and len(packet) >= _IPV6_HEADER_LENGTH:
            return bytes(packet[v6_offset : v6_offset + 16])
    raise MalformedPacket("not a complete IPv4 or IPv6 header")
