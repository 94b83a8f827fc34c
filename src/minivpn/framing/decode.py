"""Decode packets far enough to describe them in one line, the way ``tcpdump -n`` does.

Two layers live here:

* **Structured decoders** (``decode_*_untrusted``) turn bytes into frozen value objects:
  :class:`EthernetFrame`, :class:`ARPPacket`, :class:`IPPacket`, :class:`TCPSegment`,
  :class:`UDPDatagram` and :class:`ICMPMessage`.  Each decodes one layer and hands the next
  layer's bytes on as a :class:`memoryview` into the original buffer (no copy).  They are
  strict: a header that is cut short or has impossible fields raises :class:`MalformedPacket`,
  so a caller never sees half-decoded data.
* :func:`summarize` chains the decoders and formats one line per packet.  It mirrors the
  wording of ``tcpdump -n`` (``tcpdump -n -e`` for Ethernet frames) so that output can be
  compared with what people already know, and it never raises: where a layer cannot be
  decoded it prints tcpdump's truncation marker ``[|layer]`` (e.g. ``[|icmp]``) and stops.

Where the summary deliberately differs from tcpdump (docs/framing.md has the full list):

* TCP sequence numbers are printed as they are on the wire, like ``tcpdump -S``; tcpdump
  without ``-S`` keeps per-connection state to print them relative to the first packet.
* IPv4 fragments end with ``(frag ID:SIZE@OFFSET+)`` (``+``: more fragments follow), the
  wording older tcpdump releases used; current tcpdump shows fragments only with ``-v``.
  IPv6 fragments are printed as tcpdump prints them, ``frag (OFFSET|SIZE)``.
* Application protocols (DNS, DHCP, ...) are not decoded: UDP is always ``UDP, length N``.
* A packet shorter than its headers claim is cut off at ``[|ip]``; tcpdump goes on with
  ``truncated-ip - N bytes missing!``, because for it a short capture is normal.

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
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_LLDP,
    ETHERTYPE_MIN,
    ETHERTYPE_VLAN,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
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


def _decode_ip(view: memoryview, *, allow_truncated: bool) -> IPPacket:
    """Decode an IP packet; ``allow_truncated`` accepts a cut-off payload.

    ICMP error messages quote only the start of the packet that caused them, so decoding that
    quote needs the lenient mode: headers must be complete, the payload may be short.
    """
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


# ---------------------------------------------------------------------------------------------
# One-line summaries
# ---------------------------------------------------------------------------------------------


def format_mac(mac: bytes) -> str:
    """Format a MAC address the usual way: ``aa:bb:cc:dd:ee:ff``."""
    return mac.hex(":")


def summarize(data: Buffer, link: Link, *, ethernet_header: bool = True) -> str:
    """Describe a packet or frame in one line, in the words of ``tcpdump -n``.

    Never raises for any input bytes: a layer that cannot be decoded ends the line with
    tcpdump's truncation marker (``[|ip]``, ``[|tcp]``, ``[|icmp6]``, ...).

    Args:
        data: one packet (``Link.IP``) or one frame (``Link.ETHERNET``).
        link: what ``data`` is.
        ethernet_header: for Ethernet frames, start with the MAC addresses and EtherType like
            ``tcpdump -e``; without it the line looks like a TUN packet's (``IP ...``,
            ``ARP, ...``).

    Returns:
        The summary, e.g. ``IP 10.9.0.1 > 10.9.0.2: ICMP echo request, id 7, seq 1, length 64``.
    """
    view = memoryview(data)
    if link is Link.ETHERNET:
        return _summarize_ethernet(view, ethernet_header)
    return _summarize_ip(view, named=True)


_ETHERTYPE_NAMES = {
    ETHERTYPE_IPV4: "IPv4",
    ETHERTYPE_ARP: "ARP",
    ETHERTYPE_VLAN: "802.1Q",
    ETHERTYPE_IPV6: "IPv6",
    ETHERTYPE_LLDP: "LLDP",
}


def _ethertype_text(ethertype: int) -> str:
    return f"ethertype {_ETHERTYPE_NAMES.get(ethertype, 'Unknown')} (0x{ethertype:04x})"


def _summarize_ethernet(view: memoryview, ethernet_header: bool) -> str:
    try:
        frame = decode_ethernet_untrusted(view)
    except MalformedPacket:
        if len(view) < _ETHERNET_HEADER.size:
            return "[|ether]"
        destination, source, _ = _ETHERNET_HEADER.unpack_from(view)
        return f"{format_mac(source)} > {format_mac(destination)}, [|vlan]"

    payload_text = _ethernet_payload_summary(frame, named=not ethernet_header)
    if not ethernet_header and payload_text is not None:
        return payload_text

    head = f"{format_mac(frame.source)} > {format_mac(frame.destination)}, "
    if frame.ethertype < ETHERTYPE_MIN:
        # Not an EtherType but the length of an IEEE 802.3 frame (LLC follows, not decoded).
        return f"{head}802.3, length {min(frame.ethertype, len(frame.payload))}"
    if frame.vlan is not None:
        tag = frame.vlan
        text = (
            f"{head}{_ethertype_text(ETHERTYPE_VLAN)}, length {frame.length}: "
            f"vlan {tag.vid}, p {tag.priority}{', DEI' if tag.drop_eligible else ''}, "
            f"{_ethertype_text(frame.ethertype)}"
        )
        return f"{text}, {payload_text}" if payload_text is not None else text
    text = f"{head}{_ethertype_text(frame.ethertype)}, length {frame.length}"
    return f"{text}: {payload_text}" if payload_text is not None else text


def _ethernet_payload_summary(frame: EthernetFrame, *, named: bool) -> str | None:
    """Summarize what an Ethernet frame carries, or None for EtherTypes not decoded here."""
    if frame.ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        return _summarize_ip(frame.payload, named=named)
    if frame.ethertype == ETHERTYPE_ARP:
        text = _arp_summary(frame.payload)
        return f"ARP, {text}" if named and text != "[|arp]" else text
    return None


_ARP_OPERATIONS = {1: "Request", 2: "Reply", 3: "Reverse Request", 4: "Reverse Reply"}


def _arp_summary(view: memoryview) -> str:
    try:
        arp = decode_arp_untrusted(view)
    except MalformedPacket:
        return "[|arp]"
    length = f", length {arp.length}"
    if not arp.is_ethernet_ipv4:
        return (
            f"{_ARP_OPERATIONS.get(arp.operation, f'Unknown ({arp.operation})')}, hardware type "
            f"{arp.hardware_type}, protocol type 0x{arp.protocol_type:04x}{length}"
        )
    sender_ip = ipaddress.IPv4Address(arp.sender_protocol_address)
    target_ip = ipaddress.IPv4Address(arp.target_protocol_address)
    sender_mac = format_mac(arp.sender_hardware_address)
    target_mac = format_mac(arp.target_hardware_address)
    if arp.operation == 1:
        # tcpdump shows the target MAC of a request only when it is not all zeros.
        known = f" ({target_mac})" if any(arp.target_hardware_address) else ""
        return f"Request who-has {target_ip}{known} tell {sender_ip}{length}"
    if arp.operation == 2:
        return f"Reply {sender_ip} is-at {sender_mac}{length}"
    if arp.operation == 3:
        return f"Reverse Request who-is {target_mac} tell {sender_mac}{length}"
    if arp.operation == 4:
        return f"Reverse Reply {target_mac} at {target_ip}{length}"
    return f"Unknown ({arp.operation}){length}"


def _summarize_ip(view: memoryview, *, named: bool) -> str:
    """Summarize an IP packet; ``named`` puts ``IP``/``IP6`` in front as tcpdump does."""
    is_v6 = bool(view) and view[0] >> 4 == 6
    prefix = ("IP6 " if is_v6 else "IP ") if named else ""
    try:
        packet = decode_ip_untrusted(view)
    except MalformedPacket:
        return f"{prefix}{'[|ip6]' if is_v6 else '[|ip]'}"

    extensions = _extension_headers_summary(packet)
    ports, text = _upper_layer_summary(packet)
    src, dst = packet.src, packet.dst
    if ports is None:
        line = f"{src} > {dst}: " + " ".join(part for part in (*extensions, text) if part)
    elif extensions:
        # tcpdump's quirk, kept for recognisability: after IPv6 extension headers the ports
        # come on their own, not appended to the addresses.
        line = f"{src} > {dst}: {' '.join(extensions)} {ports[0]} > {ports[1]}: {text}"
    else:
        line = f"{src}.{ports[0]} > {dst}.{ports[1]}: {text}"
    if packet.version == 4 and packet.fragment is not None:
        fragment = packet.fragment
        more = "+" if fragment.more_fragments else ""
        line += f" (frag {fragment.identification}:{len(packet.payload)}@{fragment.offset}{more})"
    return prefix + line


def _extension_headers_summary(packet: IPPacket) -> list[str]:
    """Name the IPv6 extension headers the way tcpdump does: HBH, DSTOPT, RT6, frag."""
    parts = []
    position = _IPV6_HEADER_LENGTH
    for extension in packet.extension_headers:
        position += len(extension.header)
        if extension.protocol == IPPROTO_HOPOPTS:
            parts.append("HBH")
        elif extension.protocol == IPPROTO_DSTOPTS:
            parts.append("DSTOPT")
        elif extension.protocol == IPPROTO_ROUTING:
            _, length, routing_type, segments_left = extension.header[:4]
            parts.append(f"RT6 (len={length}, type={routing_type}, segleft={segments_left})")
        elif extension.protocol == IPPROTO_FRAGMENT and packet.fragment is not None:
            fragment_size = packet.total_length - position
            parts.append(f"frag ({packet.fragment.offset}|{fragment_size})")
    return parts


def _upper_layer_summary(packet: IPPacket) -> tuple[tuple[int, int] | None, str]:
    """Summarize the IP payload; returns the ports (for TCP and UDP) and the text."""
    proto, payload = packet.proto, packet.payload
    if packet.fragment is not None and packet.fragment.offset:
        # A later fragment holds the middle of a datagram: no header to decode.
        return None, f"ip-proto-{proto}" if packet.version == 4 else ""
    if proto == IPPROTO_TCP:
        return _tcp_summary(payload)
    if proto == IPPROTO_UDP:
        return _udp_summary(payload, first_fragment=packet.fragment is not None)
    if proto == IPPROTO_ICMP and packet.version == 4:
        return None, _icmp_summary(payload)
    if proto == IPPROTO_ICMPV6 and packet.version == 6:
        return None, _icmpv6_summary(payload)
    if proto == IPPROTO_NONE and packet.version == 6:
        return None, "no next header"
    return None, f"ip-proto-{proto} {len(payload)}"


def _ports(view: memoryview) -> tuple[int, int] | None:
    """The source and destination port of a TCP or UDP header that may be cut short."""
    if len(view) < 4:
        return None
    return (view[0] << 8) | view[1], (view[2] << 8) | view[3]


# tcpdump's letters for the TCP flags, lowest bit first: FIN SYN RST PSH ACK URG ECE CWR.
_TCP_FLAG_LETTERS = "FSRP.UEW"
_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_ACK, _TCP_URG = 0x01, 0x02, 0x04, 0x10, 0x20


def _tcp_summary(view: memoryview) -> tuple[tuple[int, int] | None, str]:
    try:
        segment = decode_tcp_untrusted(view)
    except MalformedPacket:
        return _ports(view), "[|tcp]"
    flags = segment.flags
    letters = "".join(letter for bit, letter in enumerate(_TCP_FLAG_LETTERS) if flags & (1 << bit))
    parts = [f"Flags [{letters or 'none'}]"]
    length = len(segment.payload)
    # Like tcpdump: a sequence number only when the segment occupies sequence space.
    if length or flags & (_TCP_SYN | _TCP_FIN | _TCP_RST):
        end = f":{(segment.seq + length) & 0xFFFFFFFF}" if length else ""
        parts.append(f"seq {segment.seq}{end}")
    if flags & _TCP_ACK:
        parts.append(f"ack {segment.ack}")
    parts.append(f"win {segment.window}")
    if flags & _TCP_URG:
        parts.append(f"urg {segment.urgent}")
    if segment.options:
        parts.append(f"options [{_tcp_options_summary(segment.options)}]")
    parts.append(f"length {length}")
    return (segment.src_port, segment.dst_port), ", ".join(parts)


# Options with a fixed total length (kind byte and length byte included).
_TCP_OPTION_LENGTHS = {2: 4, 3: 3, 4: 2, 8: 10}


def _tcp_options_summary(options: bytes) -> str:
    """Format TCP options like tcpdump: ``mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7``."""
    parts: list[str] = []
    offset = 0
    while offset < len(options):  # every round consumes at least one byte
        kind = options[offset]
        if kind == 0:
            parts.append("eol")
            break
        if kind == 1:
            parts.append("nop")
            offset += 1
            continue
        if offset + 1 >= len(options):
            parts.append("[bad opt]")
            break
        length = options[offset + 1]
        expected = _TCP_OPTION_LENGTHS.get(kind)
        if length < 2 or offset + length > len(options) or expected not in (None, length):
            parts.append("[bad opt]")
            break
        value = options[offset + 2 : offset + length]
        if kind == 2:
            parts.append(f"mss {int.from_bytes(value, 'big')}")
        elif kind == 3:
            parts.append(f"wscale {value[0]}")
        elif kind == 4:
            parts.append("sackOK")
        elif kind == 8:
            parts.append(
                f"TS val {int.from_bytes(value[:4], 'big')} ecr {int.from_bytes(value[4:], 'big')}"
            )
        elif kind == 5 and len(value) % 8 == 0:
            blocks = [
                f"{{{int.from_bytes(value[i : i + 4], 'big')}:"
                f"{int.from_bytes(value[i + 4 : i + 8], 'big')}}}"
                for i in range(0, len(value), 8)
            ]
            parts.append(f"sack {len(blocks)} {''.join(blocks)}")
        elif kind == 5:
            parts.append("sack invalid sack")
        else:
            parts.append(f"unknown-{kind}" + (f" 0x{value.hex()}" if value else ""))
        offset += length
    return ",".join(parts)


def _udp_summary(view: memoryview, *, first_fragment: bool) -> tuple[tuple[int, int] | None, str]:
    if first_fragment and len(view) >= _UDP_HEADER.size:
        # The length field covers the whole datagram, most of which is in later fragments.
        src_port, dst_port, length, _checksum = _UDP_HEADER.unpack_from(view)
        return (src_port, dst_port), f"UDP, length {max(length - _UDP_HEADER.size, 0)}"
    try:
        datagram = decode_udp_untrusted(view)
    except MalformedPacket:
        return _ports(view), "[|udp]"
    return (datagram.src_port, datagram.dst_port), f"UDP, length {len(datagram.payload)}"


# ICMP destination unreachable (type 3) codes, worded as tcpdump words them.
_ICMP_UNREACHABLE = {
    0: "net {dst} unreachable",
    1: "host {dst} unreachable",
    2: "{dst} protocol {proto} unreachable",
    # 3 (port) and 4 (fragmentation needed) are formatted in code.
    5: "{dst} unreachable - source route failed",
    6: "net {dst} unreachable - unknown",
    7: "host {dst} unreachable - unknown",
    8: "{dst} unreachable - source host isolated",
    9: "net {dst} unreachable - admin prohibited",
    10: "host {dst} unreachable - admin prohibited",
    11: "net {dst} unreachable - tos prohibited",
    12: "host {dst} unreachable - tos prohibited",
    13: "host {dst} unreachable - admin prohibited filter",
    14: "host {dst} unreachable - host precedence violation",
    15: "host {dst} unreachable - precedence cutoff",
}
_ICMP_TIME_EXCEEDED = {0: "time exceeded in-transit", 1: "ip reassembly time exceeded"}


def _icmp_summary(view: memoryview) -> str:
    try:
        message = decode_icmp_untrusted(view)
    except MalformedPacket:
        return "[|icmp]"
    length = f", length {len(view)}"
    if message.type in (0, 8):
        kind = "reply" if message.type == 0 else "request"
        return f"ICMP echo {kind}, id {message.identifier}, seq {message.sequence}{length}"
    if message.type == 3:
        text = _icmp_unreachable_text(message)
        return "[|icmp]" if text is None else f"ICMP {text}{length}"
    if message.type == 11:
        text = _ICMP_TIME_EXCEEDED.get(message.code, f"time exceeded-#{message.code}")
        return f"ICMP {text}{length}"
    return f"ICMP type-#{message.type}{length}"


def _icmp_unreachable_text(message: ICMPMessage) -> str | None:
    """Word a destination unreachable message; None if the quoted packet is unusable."""
    try:
        quoted = _decode_ip(message.body, allow_truncated=True)
    except MalformedPacket:
        return None
    dst = quoted.dst
    if message.code == 3:
        ports = _ports(quoted.payload)
        if ports is None:
            return None
        names = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
        if quoted.proto in names:
            return f"{dst} {names[quoted.proto]} port {ports[1]} unreachable"
        return f"{dst} protocol {quoted.proto} port {ports[1]} unreachable"
    if message.code == 4:
        mtu = message.rest_of_header & 0xFFFF  # RFC 1191: next-hop MTU in the low 16 bits
        return f"{dst} unreachable - need to frag" + (f" (mtu {mtu})" if mtu else "")
    template = _ICMP_UNREACHABLE.get(message.code, "{dst} unreachable - #{code}")
    return template.format(dst=dst, proto=quoted.proto, code=message.code)


# ICMPv6 type names, as tcpdump's print-icmp6.c spells them.
_ICMPV6_TYPES = {
    1: "destination unreachable",
    2: "packet too big",
    3: "time exceeded in-transit",
    4: "parameter problem",
    128: "echo request",
    129: "echo reply",
    130: "multicast listener query",
    131: "multicast listener report",
    132: "multicast listener done",
    133: "router solicitation",
    134: "router advertisement",
    135: "neighbor solicitation",
    136: "neighbor advertisement",
    137: "redirect",
    138: "router renumbering",
    139: "node information query",
    140: "node information reply",
    141: "inverse neighbor solicitation",
    142: "inverse neighbor advertisement",
    143: "multicast listener report v2",
    144: "ha discovery request",
    145: "ha discovery reply",
    146: "mobile router solicitation",
    147: "mobile router advertisement",
    200: "mtrace response",
    201: "mtrace message",
}
_ICMPV6_UNREACHABLE = {
    0: "unreachable route",
    1: "unreachable prohibited",
    2: "beyond scope",
    3: "unreachable address",
    4: "unreachable port",
}
_ICMPV6_PARAMETER_PROBLEM = {0: "erroneous", 1: "next header", 2: "option"}


def _icmpv6_summary(view: memoryview) -> str:
    if not view:
        return "[|icmp6]"
    name = _ICMPV6_TYPES.get(view[0], f"unknown icmp6 type ({view[0]})")
    try:
        details, complete = _icmpv6_details(decode_icmp_untrusted(view))
    except MalformedPacket:
        details, complete = "", False
    if not complete:
        return f"ICMP6, {name}{details} [|icmp6]"
    return f"ICMP6, {name}{details}, length {len(view)}"


def _ipv6_text(view: memoryview) -> str:
    """Format 16 bytes as an IPv6 address; raises MalformedPacket if there are fewer."""
    if len(view) < 16:
        raise MalformedPacket("ICMPv6 message cut short inside an address")
    return str(ipaddress.IPv6Address(bytes(view[:16])))


def _icmpv6_details(message: ICMPMessage) -> tuple[str, bool]:
    """The words after the type name, and whether the message was long enough for all of them.

    Raises:
        MalformedPacket: a field the wording needs is cut short.
    """
    body = message.body
    match message.type:
        case 128 | 129:
            return f", id {message.identifier}, seq {message.sequence}", True
        case 135:
            return f", who has {_ipv6_text(body)}", True
        case 136:
            return f", tgt is {_ipv6_text(body)}", True
        case 137:
            return f", {_ipv6_text(body[16:])} to {_ipv6_text(body)}", True
        case 2:
            return f", mtu {message.rest_of_header}", True
        case 143:
            return f", {message.sequence} group record(s)", True
        case 130 if len(body) >= 20:
            return f" v2 [gaddr {_ipv6_text(body)}]", True
        case 130 | 131 | 132:
            return f" max resp delay: {message.identifier} addr: {_ipv6_text(body)}", True
        case 1:
            return _icmpv6_unreachable_details(message)
        case 3:
            if message.code == 0:
                return f" for {_decode_ip(body, allow_truncated=True).dst}", True
            return (" (reassembly)" if message.code == 1 else ""), True
        case 4:
            problem = _ICMPV6_PARAMETER_PROBLEM.get(message.code)
            pointer = message.rest_of_header
            if problem is None:
                return f", code-#{message.code}", True
            return f", {problem} - octet {pointer}", True
    return "", True


def _icmpv6_unreachable_details(message: ICMPMessage) -> tuple[str, bool]:
    code_name = _ICMPV6_UNREACHABLE.get(message.code)
    if code_name is None:
        return f", unknown unreach code ({message.code})", True
    try:
        quoted = _decode_ip(message.body, allow_truncated=True)
    except MalformedPacket:
        return f", {code_name}", False
    if message.code == 2:
        return f", {code_name} {quoted.dst}, source address {quoted.src}", True
    if message.code != 4:
        return f", {code_name} {quoted.dst}", True
    ports = _ports(quoted.payload)
    if ports is None:
        return f", {code_name}", False
    names = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
    if quoted.proto in names:
        return f", {code_name}, {quoted.dst} {names[quoted.proto]} port {ports[1]}", True
    return f", {code_name}, {quoted.dst} protocol {quoted.proto} port {ports[1]} unreachable", True
