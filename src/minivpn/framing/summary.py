"""One line per packet, in the words of ``tcpdump -n``: what ``minivpn dump`` prints.

:func:`summarize` chains the structured decoders of :mod:`minivpn.framing.decode` and formats
one line per packet.  It mirrors the wording of ``tcpdump -n`` (``tcpdump -n -e`` for Ethernet
frames) so that output can be compared with what people already know, and it never raises:
where a layer cannot be decoded it prints tcpdump's truncation marker ``[|layer]`` (e.g.
``[|icmp]``) and stops.

Where the summary deliberately differs from tcpdump (docs/framing.md has the full list):

* TCP sequence numbers are printed as they are on the wire, like ``tcpdump -S``; tcpdump
  without ``-S`` keeps per-connection state to print them relative to the first packet.
* IPv4 fragments end with ``(frag ID:SIZE@OFFSET+)`` (``+``: more fragments follow), the
  wording older tcpdump releases used; current tcpdump shows fragments only with ``-v``.
  IPv6 fragments are printed as tcpdump prints them, ``frag (OFFSET|SIZE)``.
* Application protocols (DNS, DHCP, ...) are not decoded: UDP is always ``UDP, length N``.
* A packet shorter than its headers claim is cut off at ``[|ip]``; tcpdump goes on with
  ``truncated-ip - N bytes missing!``, because for it a short capture is normal.
"""

from __future__ import annotations

import ipaddress
import struct

from .decode import (
    Buffer,
    EthernetFrame,
    ICMPMessage,
    IPPacket,
    Link,
    decode_arp_untrusted,
    decode_ethernet_untrusted,
    decode_icmp_untrusted,
    decode_ip_untrusted,
    decode_quoted_ip_untrusted,
    decode_tcp_untrusted,
    decode_udp_untrusted,
)
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

__all__ = ["format_mac", "summarize"]

#: The MAC addresses and EtherType of an Ethernet header, read even when the rest is unusable.
_MAC_HEADER = struct.Struct("!6s6sH")
#: A UDP header: ports, length, checksum.
_UDP_HEADER = struct.Struct("!HHHH")
#: An IPv6 header without extensions.
_IPV6_HEADER_LENGTH = 40


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
        if len(view) < _MAC_HEADER.size:
            return "[|ether]"
        destination, source, _ = _MAC_HEADER.unpack_from(view)
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
        quoted = decode_quoted_ip_untrusted(message.body)
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
                return f" for {decode_quoted_ip_untrusted(body).dst}", True
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
        quoted = decode_quoted_ip_untrusted(message.body)
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
