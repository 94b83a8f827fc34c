"""A small part of tcpdump's filter language, for ``minivpn dump --filter`` (sans-IO).

``minivpn dump -c 1`` used to catch whatever crossed the device first, usually an IPv6 router
solicitation rather than the ping it was started for.  A filter picks what to show::

    minivpn dump -c 1 --filter icmp ...                          # the IPv4 ping
    minivpn dump --filter 'icmp6[icmp6type] == icmp6-echo' ...   # IPv6 echo requests only
    minivpn dump --filter 'tcp port 80 or udp port 53' ...

Every expression accepted here means what it means to tcpdump (pcap-filter(7)), so a user's
tcpdump habits carry over and the unit tests compare each expression with tcpdump's own
verdict on the same packets.  The subset:

=====================================  =====================================================
``ip``, ``ip6``, ``arp``, ``rarp``     the packet is of that protocol (ARP and RARP: TAP only)
``icmp``                               IPv4 ICMP (not ICMPv6, as in tcpdump)
``icmp6``                              ICMPv6 (also behind an IPv6 fragment header)
``tcp``, ``udp``, ``sctp``             over IPv4 or IPv6 (same fragment-header rule)
``[PROTO] [src|dst] host ADDR``        an IPv4 or IPv6 address (no names); PROTO is ``ip``,
                                       ``ip6``, ``arp`` or ``rarp``.  Without PROTO an IPv4
                                       address also matches ARP and RARP, as in tcpdump
``[PROTO] [src|dst] port N``           TCP, UDP or SCTP port; PROTO is ``tcp``, ``udp`` or
                                       ``sctp``.  IPv4: first fragments only
``icmp[icmptype] == VALUE``            also ``icmp[icmpcode]``, ``icmp6[icmp6type]``,
                                       ``icmp6[icmp6code]``, ``=`` and ``!=``; VALUE a
                                       number or a name: ``icmp-echo``, ``icmp-echoreply``,
                                       ``icmp6-echo``, ``icmp6-echoreply``, ... (below)
``not``/``!``, ``and``/``&&``,         ``not`` binds tightest; ``and`` and ``or`` have the
``or``/``||``, ``( )``                 *same* precedence, left to right, as in tcpdump:
                                       ``a or b and c`` is ``(a or b) and c``
=====================================  =====================================================

Like a compiled BPF program, a filter reads fields at fixed offsets: on Ethernet (TAP) the
EtherType at bytes 12-13 (a VLAN tag is not looked through), on a TUN device the IP version
nibble.  A primitive that would read past the end of a packet is false.  tcpdump differs there:
a BPF program that reads past the end rejects the packet outright, and which fields it reads
depends on libpcap's optimiser, so on such cut-short packets the two may disagree.
Not supported (a clear error, not a different meaning): host names, port names, a bare
address or number without ``host``/``port``, ``net``, ``ether``, ``vlan``, ``len``,
arithmetic and the other byte-offset forms.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import NoReturn

from minivpn.framing.decode import Buffer, Link
from minivpn.framing.errors import FramingError

__all__ = ["ICMP_VALUES", "FilterError", "PacketFilter", "compile_filter"]

#: The named values of pcap-filter(7) for ICMP and ICMPv6 type fields.
ICMP_VALUES = {
    "icmp-echoreply": 0,
    "icmp-unreach": 3,
    "icmp-sourcequench": 4,
    "icmp-redirect": 5,
    "icmp-echo": 8,
    "icmp-routeradvert": 9,
    "icmp-routersolicit": 10,
    "icmp-timxceed": 11,
    "icmp-paramprob": 12,
    "icmp-tstamp": 13,
    "icmp-tstampreply": 14,
    "icmp-ireq": 15,
    "icmp-ireqreply": 16,
    "icmp-maskreq": 17,
    "icmp-maskreply": 18,
    "icmp6-destinationunreach": 1,
    "icmp6-packettoobig": 2,
    "icmp6-timeexceeded": 3,
    "icmp6-parameterproblem": 4,
    "icmp6-echo": 128,
    "icmp6-echoreply": 129,
    "icmp6-multicastlistenerquery": 130,
    "icmp6-multicastlistenerreportv1": 131,
    "icmp6-multicastlistenerdone": 132,
    "icmp6-routersolicit": 133,
    "icmp6-routeradvert": 134,
    "icmp6-neighborsolicit": 135,
    "icmp6-neighboradvert": 136,
    "icmp6-redirect": 137,
}

_ETHERTYPE_IPV4, _ETHERTYPE_ARP, _ETHERTYPE_RARP, _ETHERTYPE_IPV6 = 0x0800, 0x0806, 0x8035, 0x86DD
_TCP, _UDP, _ICMP, _ICMPV6, _SCTP, _IPV6_FRAGMENT = 6, 17, 1, 58, 132, 44
_PORT_PROTOCOLS = {"tcp": (_TCP,), "udp": (_UDP,), "sctp": (_SCTP,), None: (_TCP, _UDP, _SCTP)}


class FilterError(FramingError):
    """The filter expression is not in the supported subset; the message says where."""


class _Truncated(Exception):
    """A field lies beyond the end of the packet: the primitive reading it is false."""


class _Packet:
    """The packet and its link type, with bounds-checked reads from the network layer."""

    __slots__ = ("data", "link", "net")

    def __init__(self, data: Buffer, link: Link) -> None:
        self.data = memoryview(data).cast("B")
        self.link = link
        self.net = self.data[14:] if link is Link.ETHERNET else self.data

    def ethertype(self) -> int:
        """The EtherType (Ethernet), or the one the IP version nibble stands for (TUN)."""
        if self.link is Link.ETHERNET:
            if len(self.data) < 14:
                raise _Truncated
            return int.from_bytes(self.data[12:14], "big")
        version = self.byte(0) >> 4
        return {4: _ETHERTYPE_IPV4, 6: _ETHERTYPE_IPV6}.get(version, -1)

    def byte(self, offset: int) -> int:
        if offset >= len(self.net):
            raise _Truncated
        return int(self.net[offset])

    def u16(self, offset: int) -> int:
        if offset + 2 > len(self.net):
            raise _Truncated
        return int.from_bytes(self.net[offset : offset + 2], "big")

    def field(self, offset: int, length: int) -> bytes:
        if offset + length > len(self.net):
            raise _Truncated
        return bytes(self.net[offset : offset + length])

    def ipv4_header_length(self) -> int:
        return (self.byte(0) & 0x0F) * 4

    def first_fragment(self) -> bool:
        """IPv4: the fragment offset is 0 (the transport header is in this packet)."""
        return self.u16(6) & 0x1FFF == 0


_Predicate = Callable[[_Packet], bool]


def _primitive(check: _Predicate) -> _Predicate:
    """*check*, false for a packet too short for a field it reads."""

    def guarded(packet: _Packet) -> bool:
        try:
            return check(packet)
        except _Truncated:
            return False

    return guarded


class PacketFilter:
    """A compiled filter: ``matches(packet, link)`` says whether tcpdump would show it."""

    def __init__(self, text: str, predicate: _Predicate) -> None:
        self.text = text
        self._predicate = predicate

    def matches(self, data: Buffer, link: Link) -> bool:
        """Whether *data* (an IP packet on TUN, an Ethernet frame on TAP) passes the filter."""
        return self._predicate(_Packet(data, link))

    def __repr__(self) -> str:
        return f"PacketFilter({self.text!r})"


def compile_filter(text: str) -> PacketFilter:
    """Compile a filter expression; an empty one lets everything through.

    Raises:
        FilterError: not in the supported subset (the message names the word and why).
    """
    parser = _Parser(text)
    if not parser.tokens:
        return PacketFilter(text, lambda packet: True)
    predicate = parser.expression()
    if parser.peek() is not None:
        parser.fail("expected 'and', 'or' or the end")
    return PacketFilter(text, predicate)


# --- primitives -----------------------------------------------------------------------------------


def _is(ethertype: int) -> _Predicate:
    return lambda packet: packet.ethertype() == ethertype


def _ipv4_protocol(protocol: int) -> _Predicate:
    return lambda packet: packet.ethertype() == _ETHERTYPE_IPV4 and packet.byte(9) == protocol


def _ipv6_protocol(protocol: int) -> _Predicate:
    """``ip6 proto N``: the first next header, or the one after a fragment header."""

    def check(packet: _Packet) -> bool:
        if packet.ethertype() != _ETHERTYPE_IPV6:
            return False
        next_header = packet.byte(6)
        return next_header == protocol or (
            next_header == _IPV6_FRAGMENT and packet.byte(40) == protocol
        )

    return check


def _any_protocol(protocol: int) -> _Predicate:
    ipv4, ipv6 = _ipv4_protocol(protocol), _ipv6_protocol(protocol)
    return lambda packet: ipv4(packet) or ipv6(packet)


_PROTOCOLS: dict[str, _Predicate] = {
    "ip": _primitive(_is(_ETHERTYPE_IPV4)),
    "ip6": _primitive(_is(_ETHERTYPE_IPV6)),
    "arp": _primitive(_is(_ETHERTYPE_ARP)),
    "rarp": _primitive(_is(_ETHERTYPE_RARP)),
    "icmp": _primitive(_ipv4_protocol(_ICMP)),
    "icmp6": _primitive(_ipv6_protocol(_ICMPV6)),
    "tcp": _primitive(_any_protocol(_TCP)),
    "udp": _primitive(_any_protocol(_UDP)),
    "sctp": _primitive(_any_protocol(_SCTP)),
}

#: Where the source and destination addresses are: (EtherType, source offset, destination
#: offset, length), in the network-layer header.  ARP/RARP: sender and target protocol address.
_HOST_FIELDS = {
    "ip": (_ETHERTYPE_IPV4, 12, 16, 4),
    "ip6": (_ETHERTYPE_IPV6, 8, 24, 16),
    "arp": (_ETHERTYPE_ARP, 14, 24, 4),
    "rarp": (_ETHERTYPE_RARP, 14, 24, 4),
}


def _host(address: bytes, protocol: str, direction: str | None) -> _Predicate:
    ethertype, source, destination, length = _HOST_FIELDS[protocol]
    offsets = [o for d, o in (("src", source), ("dst", destination)) if direction in (None, d)]

    def check(packet: _Packet) -> bool:
        if packet.ethertype() != ethertype:
            return False
        return any(packet.field(offset, length) == address for offset in offsets)

    return _primitive(check)


def _port(port: int, protocols: tuple[int, ...], direction: str | None) -> _Predicate:
    offsets = [o for d, o in (("src", 0), ("dst", 2)) if direction in (None, d)]

    def check(packet: _Packet) -> bool:
        ethertype = packet.ethertype()
        if ethertype == _ETHERTYPE_IPV4:
            if packet.byte(9) not in protocols or not packet.first_fragment():
                return False
            start = packet.ipv4_header_length()
        elif ethertype == _ETHERTYPE_IPV6:
            if packet.byte(6) not in protocols:  # tcpdump does not look past extension headers
                return False
            start = 40
        else:
            return False
        return any(packet.u16(start + offset) == port for offset in offsets)

    return _primitive(check)


def _icmp_field(version: int, offset: int, equal: bool, value: int) -> _Predicate:
    def check(packet: _Packet) -> bool:
        if version == 4:
            if not _PROTOCOLS["icmp"](packet) or not packet.first_fragment():
                return False
            found = packet.byte(packet.ipv4_header_length() + offset)
        else:
            if packet.ethertype() != _ETHERTYPE_IPV6 or packet.byte(6) != _ICMPV6:
                return False
            found = packet.byte(40 + offset)
        return (found == value) is equal

    return _primitive(check)


# --- the parser -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(&&|\|\||==|!=|[()\[\]!=])|([A-Za-z0-9_.:\-]+))")
_ICMP_FIELDS = {
    "icmp": {"icmptype": 0, "icmpcode": 1, "0": 0, "1": 1},
    "icmp6": {"icmp6type": 0, "icmp6code": 1, "0": 0, "1": 1},
}


class _Parser:
    """Recursive descent over the tokens; each method returns a predicate."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[str] = []
        position = 0
        while text[position:].strip():
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                bad = text[position:].strip()[:1]
                raise FilterError(f"invalid filter {text!r}: unexpected character {bad!r}")
            self.tokens.append(match.group(1) or match.group(2))
            position = match.end()
        self.index = 0

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            self.fail(f"something is missing after {self.tokens[-1]!r}")
        self.index += 1
        return token

    def fail(self, reason: str) -> NoReturn:
        token = self.peek()
        where = f" at {token!r}" if token is not None else " at the end"
        raise FilterError(f"invalid filter {self.text!r}: {reason}{where}")

    def expression(self) -> _Predicate:
        """``unary (and|or unary)*``: and/or of equal precedence, left to right."""
        result = self.unary()
        while self.peek() in ("and", "&&", "or", "||"):
            combine = _and if self.take() in ("and", "&&") else _or
            result = combine(result, self.unary())
        return result

    def unary(self) -> _Predicate:
        word = self.peek()
        if word in ("not", "!"):
            self.take()
            inner = self.unary()
            return lambda packet: not inner(packet)
        if word == "(":
            self.take()
            inner = self.expression()
            if self.peek() != ")":
                self.fail("expected ')'")
            self.take()
            return inner
        return self.primitive()

    def primitive(self) -> _Predicate:
        protocol = self.peek() if self.peek() in _PROTOCOLS else None
        if protocol is not None:
            self.take()
            if protocol in _ICMP_FIELDS and self.peek() == "[":
                return self.icmp_comparison(protocol)
        direction = self.take() if self.peek() in ("src", "dst") else None
        kind = self.peek()
        if kind == "host":
            self.take()
            return self.host(protocol, direction)
        if kind == "port":
            self.take()
            return self.port(protocol, direction)
        if direction is not None:
            self.fail(f"expected 'host' or 'port' after {direction!r}")
        if protocol is not None:
            return _PROTOCOLS[protocol]
        self.fail("expected a protocol (ip, ip6, arp, icmp, icmp6, tcp, udp), host or port")

    def host(self, protocol: str | None, direction: str | None) -> _Predicate:
        if protocol is not None and protocol not in _HOST_FIELDS:
            self.fail(f"'host' goes with ip, ip6, arp or rarp, not {protocol}")
        text = self.take()
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            self.index -= 1
            self.fail("expected an IPv4 or IPv6 address (names are not looked up)")
        wanted = 6 if protocol == "ip6" else 4 if protocol is not None else address.version
        if address.version != wanted:
            self.index -= 1
            self.fail(f"'{protocol} host' needs an IPv{wanted} address")
        if address.version == 6:
            return _host(address.packed, "ip6", direction)
        if protocol is not None:
            return _host(address.packed, protocol, direction)
        # An unqualified IPv4 host is an IPv4, ARP or RARP address (pcap-filter(7)).
        checks = [_host(address.packed, name, direction) for name in ("ip", "arp", "rarp")]
        return lambda packet: any(check(packet) for check in checks)

    def port(self, protocol: str | None, direction: str | None) -> _Predicate:
        if protocol not in _PORT_PROTOCOLS:
            self.fail(f"'port' goes with tcp, udp or sctp, not {protocol}")
        text = self.take()
        if not text.isdigit() or int(text) > 65535:
            self.index -= 1
            self.fail("expected a port number from 0 to 65535 (names are not looked up)")
        return _port(int(text), _PORT_PROTOCOLS[protocol], direction)

    def icmp_comparison(self, protocol: str) -> _Predicate:
        self.take()  # "["
        field = self.take()
        if field not in _ICMP_FIELDS[protocol]:
            self.index -= 1
            names = ", ".join(name for name in _ICMP_FIELDS[protocol] if not name.isdigit())
            self.fail(f"expected {names}")
        if self.take() != "]":
            self.index -= 1
            self.fail("expected ']'")
        operator = self.take()
        if operator not in ("=", "==", "!="):
            self.index -= 1
            self.fail("expected '==' or '!='")
        text = self.take()
        value = int(text) if text.isdigit() else ICMP_VALUES.get(text)
        if value is None or value > 255:
            self.index -= 1
            self.fail("expected a number from 0 to 255 or a name like icmp-echo")
        offset = _ICMP_FIELDS[protocol][field]
        return _icmp_field(4 if protocol == "icmp" else 6, offset, operator != "!=", value)


def _and(left: _Predicate, right: _Predicate) -> _Predicate:
    return lambda packet: left(packet) and right(packet)


def _or(left: _Predicate, right: _Predicate) -> _Predicate:
    return lambda packet: left(packet) or right(packet)
