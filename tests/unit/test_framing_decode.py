"""Tests for minivpn.framing.decode and minivpn.framing.summary (the decoders and the lines).

The one-line summaries are checked against what the real ``tcpdump`` prints for the same
bytes (packets built by the independent builders in ``tests/helpers/packets.py``), both for a
fixed catalogue of interesting packets and for random well-formed ones.  The structured
decoders are checked by round trips against the builders, and every ``*_untrusted`` function
is fed arbitrary and mutated bytes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import struct
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.docs import REPO_ROOT, parse_markdown
from tests.helpers.packets import (
    BROADCAST_MAC,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    MAC_A,
    MAC_B,
    arp,
    ethernet,
    ethernet_vlan,
    icmp,
    icmp_echo,
    icmpv6,
    icmpv6_echo,
    ipv4,
    ipv6,
    neighbor_solicitation,
    solicited_node,
    tcp,
    udp,
    v6,
    write_reference_pcap,
)
from tests.helpers.tools import needs_tool, tcpdump_lines

from minivpn.framing.decode import (
    Link,
    decode_arp_untrusted,
    decode_ethernet_untrusted,
    decode_icmp_untrusted,
    decode_ip_untrusted,
    decode_quoted_ip_untrusted,
    decode_tcp_untrusted,
    decode_udp_untrusted,
    inner_ip_length_untrusted,
    ip_destination_untrusted,
    ip_source_untrusted,
)
from minivpn.framing.errors import MalformedPacket
from minivpn.framing.summary import summarize

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

PING_DATA = bytes(range(56))  # what ping sends by default: 56 data bytes, 64-byte ICMP message
SYN_OPTIONS = bytes.fromhex("020405b40402080a000000010000000001030307")
UDP_4 = udp(40000, 40001, b"a" * 20)


def _quoted_udp4() -> bytes:
    """The start of a UDP packet, as an ICMP error quotes it."""
    return ipv4("10.0.0.2", "10.0.0.3", 17, udp(40000, 33434, b"q" * 12))[:28]


def _quoted_udp6() -> bytes:
    return ipv6("fd00::2", "fd00::3", 17, udp(40000, 33434, b"q" * 12))[:48]


def _hop_by_hop(next_header: int) -> bytes:
    return bytes((next_header, 0)) + bytes.fromhex("010400000000")  # PadN option


def _mldv2_report() -> bytes:
    record = bytes((4, 0, 0, 0)) + v6("ff02::1:ff00:1")
    return icmpv6("fe80::1", "ff02::16", 143, 0, struct.pack("!HH", 0, 1) + record)


# Packets on a TUN device (raw IP), compared with `tcpdump -n -t -S` on LINKTYPE_RAW.
RAW_IP_CASES: dict[str, bytes] = {
    "icmp-echo-request": ipv4("10.9.0.1", "10.9.0.2", 1, icmp_echo(True, 7, 1, PING_DATA)),
    "icmp-echo-reply": ipv4("10.9.0.2", "10.9.0.1", 1, icmp_echo(False, 7, 1, PING_DATA)),
    "icmp6-echo-request": ipv6(
        "fd00::1", "fd00::2", 58, icmpv6_echo("fd00::1", "fd00::2", True, 7, 1, PING_DATA)
    ),
    "icmp6-echo-reply": ipv6(
        "fd00::2", "fd00::1", 58, icmpv6_echo("fd00::2", "fd00::1", False, 7, 1, PING_DATA)
    ),
    "tcp-syn-options": ipv4(
        "10.0.0.1", "10.0.0.2", 6, tcp(40000, 5201, 1000, 0, 0x02, options=SYN_OPTIONS)
    ),
    "tcp-syn-ack": ipv4("10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 1, 2, 0x12)),
    "tcp-push-ack-data": ipv4(
        "10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 100, 200, 0x18, data=b"x" * 10)
    ),
    "tcp-seq-wraps": ipv4(
        "10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 0xFFFFFFFF, 9, 0x18, data=b"xy")
    ),
    "tcp-fin-ack": ipv4("10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 100, 200, 0x11)),
    "tcp-rst": ipv4("10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 100, 0, 0x04)),
    "tcp-rst-ack": ipv4("10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 100, 200, 0x14)),
    "tcp-ack": ipv4("10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 100, 200, 0x10)),
    "tcp-no-flags": ipv4("10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 100, 200, 0x00)),
    "tcp-all-flags-urgent": ipv4(
        "10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 100, 200, 0xFF, urgent=5)
    ),
    "tcp-sack-blocks": ipv4(
        "10.0.0.1",
        "10.0.0.2",
        6,
        tcp(
            5201,
            40000,
            1,
            2,
            0x10,
            options=bytes.fromhex("0101051200000064000001000000020000000300"),
        ),
    ),
    "tcp-unknown-option-and-eol": ipv4(
        "10.0.0.1", "10.0.0.2", 6, tcp(5201, 40000, 1, 2, 0x10, options=bytes.fromhex("0a030000"))
    ),
    "tcp6-syn-ack": ipv6("fd00::1", "fd00::2", 6, tcp(40000, 40001, 1, 2, 0x12)),
    "udp4": ipv4("10.0.0.1", "10.0.0.2", 17, UDP_4),
    "udp6": ipv6("fd00::1", "fd00::2", 17, UDP_4),
    "ipv4-options": ipv4("10.0.0.1", "10.0.0.2", 17, UDP_4, options=bytes.fromhex("94040000")),
    "ipv4-trailing-bytes": ipv4("10.0.0.1", "10.0.0.2", 17, UDP_4) + b"pad",
    "unknown-protocol": ipv4("10.0.0.1", "10.0.0.2", 253, b"abcd"),
    "unknown-protocol6": ipv6("fd00::1", "fd00::2", 253, b"abcd"),
    "icmp-net-unreachable": ipv4("10.0.0.1", "10.0.0.2", 1, icmp(3, 0, bytes(4), _quoted_udp4())),
    "icmp-host-unreachable": ipv4("10.0.0.1", "10.0.0.2", 1, icmp(3, 1, bytes(4), _quoted_udp4())),
    "icmp-protocol-unreachable": ipv4(
        "10.0.0.1", "10.0.0.2", 1, icmp(3, 2, bytes(4), _quoted_udp4())
    ),
    "icmp-port-unreachable": ipv4("10.0.0.1", "10.0.0.2", 1, icmp(3, 3, bytes(4), _quoted_udp4())),
    "icmp-need-frag": ipv4(
        "10.0.0.1", "10.0.0.2", 1, icmp(3, 4, struct.pack("!HH", 0, 1400), _quoted_udp4())
    ),
    "icmp-admin-prohibited": ipv4("10.0.0.1", "10.0.0.2", 1, icmp(3, 13, bytes(4), _quoted_udp4())),
    "icmp-unreachable-unknown-code": ipv4(
        "10.0.0.1", "10.0.0.2", 1, icmp(3, 16, bytes(4), _quoted_udp4())
    ),
    "icmp-time-exceeded": ipv4("10.0.0.1", "10.0.0.2", 1, icmp(11, 0, bytes(4), _quoted_udp4())),
    "icmp-reassembly-time-exceeded": ipv4(
        "10.0.0.1", "10.0.0.2", 1, icmp(11, 1, bytes(4), _quoted_udp4())
    ),
    "icmp-other-type": ipv4("10.0.0.1", "10.0.0.2", 1, icmp(42, 0, bytes(4))),
    "icmp-truncated": ipv4("10.0.0.1", "10.0.0.2", 1, b"\x08\x00\x00"),
    "icmp6-neighbor-solicitation": ipv6(
        "fe80::1",
        solicited_node("fd00::2"),
        58,
        neighbor_solicitation("fe80::1", solicited_node("fd00::2"), "fd00::2", MAC_A),
        hop_limit=255,
    ),
    "icmp6-neighbor-advertisement": ipv6(
        "fd00::2",
        "fe80::1",
        58,
        icmpv6(
            "fd00::2",
            "fe80::1",
            136,
            0,
            bytes.fromhex("60000000") + v6("fd00::2") + bytes((2, 1)) + MAC_B,
        ),
        hop_limit=255,
    ),
    "icmp6-router-solicitation": ipv6(
        "fe80::1", "ff02::2", 58, icmpv6("fe80::1", "ff02::2", 133, 0, bytes(4)), hop_limit=255
    ),
    "icmp6-router-advertisement": ipv6(
        "fe80::1",
        "ff02::1",
        58,
        icmpv6("fe80::1", "ff02::1", 134, 0, bytes.fromhex("40000708") + bytes(8)),
        hop_limit=255,
    ),
    "icmp6-packet-too-big": ipv6(
        "fe80::1",
        "fd00::2",
        58,
        icmpv6("fe80::1", "fd00::2", 2, 0, struct.pack("!I", 1280) + _quoted_udp6()),
    ),
    "icmp6-port-unreachable": ipv6(
        "fe80::1", "fd00::2", 58, icmpv6("fe80::1", "fd00::2", 1, 4, bytes(4) + _quoted_udp6())
    ),
    "icmp6-address-unreachable": ipv6(
        "fe80::1", "fd00::2", 58, icmpv6("fe80::1", "fd00::2", 1, 3, bytes(4) + _quoted_udp6())
    ),
    "icmp6-beyond-scope": ipv6(
        "fe80::1", "fd00::2", 58, icmpv6("fe80::1", "fd00::2", 1, 2, bytes(4) + _quoted_udp6())
    ),
    "icmp6-time-exceeded": ipv6(
        "fe80::1", "fd00::2", 58, icmpv6("fe80::1", "fd00::2", 3, 0, bytes(4) + _quoted_udp6())
    ),
    "icmp6-parameter-problem": ipv6(
        "fe80::1",
        "fd00::2",
        58,
        icmpv6("fe80::1", "fd00::2", 4, 1, struct.pack("!I", 6) + _quoted_udp6()),
    ),
    "icmp6-redirect": ipv6(
        "fe80::1",
        "fd00::2",
        58,
        icmpv6("fe80::1", "fd00::2", 137, 0, bytes(4) + v6("fe80::9") + v6("fd00::9")),
        hop_limit=255,
    ),
    "icmp6-mldv2-report-after-hop-by-hop": ipv6(
        "fe80::1", "ff02::16", 0, _hop_by_hop(58) + _mldv2_report(), hop_limit=1
    ),
    "icmp6-truncated-echo": ipv6("fd00::1", "fd00::2", 58, b"\x81\x00\x00\x00\x00"),
    "ipv6-hop-by-hop-udp": ipv6("fd00::1", "fd00::2", 0, _hop_by_hop(17) + UDP_4),
    "ipv6-destination-options-udp": ipv6("fd00::1", "fd00::2", 60, _hop_by_hop(17) + UDP_4),
    "ipv6-two-extension-headers": ipv6(
        "fd00::1", "fd00::2", 0, _hop_by_hop(60) + _hop_by_hop(17) + UDP_4
    ),
    "ipv6-first-fragment": ipv6(
        "fd00::1", "fd00::2", 44, struct.pack("!BBHI", 17, 0, 0x0001, 0x1234) + UDP_4
    ),
    "ipv6-later-fragment": ipv6(
        "fd00::1", "fd00::2", 44, struct.pack("!BBHI", 17, 0, 16 << 3, 0x1234) + b"x" * 8
    ),
    "ipv6-no-next-header": ipv6("fd00::1", "fd00::2", 59, b""),
}

_ECHO4 = RAW_IP_CASES["icmp-echo-request"]
_ECHO6 = RAW_IP_CASES["icmp6-echo-request"]
_ARP_REQUEST = arp(1, MAC_A, "10.9.0.1", bytes(6), "10.9.0.2")

# Frames on a TAP device, compared with `tcpdump -n -t -S [-e]` on LINKTYPE_ETHERNET.
ETHERNET_CASES: dict[str, bytes] = {
    "ipv4": ethernet(MAC_B, MAC_A, 0x0800, _ECHO4),
    "ipv6": ethernet(MAC_B, MAC_A, 0x86DD, _ECHO6),
    "ipv6-to-multicast-mac": ethernet(bytes.fromhex("333300000001"), MAC_A, 0x86DD, _ECHO6),
    "arp-request": ethernet(BROADCAST_MAC, MAC_A, 0x0806, _ARP_REQUEST),
    "arp-request-known-target": ethernet(
        BROADCAST_MAC, MAC_A, 0x0806, arp(1, MAC_A, "10.9.0.1", MAC_B, "10.9.0.2")
    ),
    "arp-probe": ethernet(
        BROADCAST_MAC, MAC_A, 0x0806, arp(1, MAC_A, "0.0.0.0", bytes(6), "10.9.0.2")
    ),
    "arp-reply": ethernet(MAC_A, MAC_B, 0x0806, arp(2, MAC_B, "10.9.0.2", MAC_A, "10.9.0.1")),
    "arp-reply-padded": ethernet(
        MAC_A, MAC_B, 0x0806, arp(2, MAC_B, "10.9.0.2", MAC_A, "10.9.0.1") + bytes(18)
    ),
    "ipv4-padded": ethernet(
        MAC_B, MAC_A, 0x0800, ipv4("10.0.0.1", "10.0.0.2", 17, UDP_4) + bytes(6)
    ),
    "vlan-ipv4": ethernet_vlan(MAC_B, MAC_A, 10, 0, 0x0800, _ECHO4),
    "vlan-ipv6-priority": ethernet_vlan(MAC_B, MAC_A, 4094, 7, 0x86DD, _ECHO6),
    "vlan-drop-eligible": ethernet(MAC_B, MAC_A, 0x8100, struct.pack("!HH", 0x1000 | 10, 0x0800))
    + _ECHO4,
    "vlan-arp": ethernet_vlan(MAC_B, MAC_A, 10, 1, 0x0806, _ARP_REQUEST),
    "neighbor-solicitation": ethernet(
        bytes.fromhex("3333ff000002"), MAC_A, 0x86DD, RAW_IP_CASES["icmp6-neighbor-solicitation"]
    ),
}


def _normalize(line: str) -> str:
    """tcpdump sometimes prints two spaces where one will do; compare words, not spacing."""
    return " ".join(line.split())


def _tcpdump_one(tmp_path: Path, linktype: int, packet: bytes, *args: str) -> str:
    path = tmp_path / "one.pcap"
    write_reference_pcap(path, linktype, [packet])
    lines = tcpdump_lines(path, *args)
    assert len(lines) == 1, lines
    return lines[0]


@needs_tool("tcpdump")
@pytest.mark.parametrize("name", RAW_IP_CASES)
def test_summary_of_tun_packet_matches_tcpdump(tmp_path: Path, name: str) -> None:
    packet = RAW_IP_CASES[name]
    expected = _tcpdump_one(tmp_path, LINKTYPE_RAW, packet)
    assert _normalize(summarize(packet, Link.IP)) == _normalize(expected)


@needs_tool("tcpdump")
@pytest.mark.parametrize("name", ETHERNET_CASES)
def test_summary_of_tap_frame_matches_tcpdump_e(tmp_path: Path, name: str) -> None:
    frame = ETHERNET_CASES[name]
    expected = _tcpdump_one(tmp_path, LINKTYPE_ETHERNET, frame, "-e")
    assert _normalize(summarize(frame, Link.ETHERNET)) == _normalize(expected)


@needs_tool("tcpdump")
@pytest.mark.parametrize("name", ETHERNET_CASES)
def test_summary_without_ethernet_header_matches_tcpdump(tmp_path: Path, name: str) -> None:
    frame = ETHERNET_CASES[name]
    expected = _tcpdump_one(tmp_path, LINKTYPE_ETHERNET, frame)
    ours = summarize(frame, Link.ETHERNET, ethernet_header=False)
    assert _normalize(ours) == _normalize(expected)


def test_the_examples_in_docs_framing_md() -> None:
    """The lines docs/framing.md shows are what summarize prints (tcpdump agrees, see above)."""
    (block,) = [
        block
        for block in parse_markdown(REPO_ROOT / "docs" / "framing.md")
        if "test_the_examples_in_docs_framing_md" in (block.directive("checked by") or "")
    ]
    assert block.text.splitlines() == [
        summarize(RAW_IP_CASES["icmp-echo-request"], Link.IP),
        summarize(RAW_IP_CASES["icmp6-echo-request"], Link.IP),
        summarize(RAW_IP_CASES["tcp-syn-ack"], Link.IP),
        summarize(ETHERNET_CASES["arp-request"], Link.ETHERNET),
    ]
    assert summarize(ETHERNET_CASES["arp-request"], Link.ETHERNET, ethernet_header=False) == (
        "ARP, Request who-has 10.9.0.2 tell 10.9.0.1, length 28"
    )


_FRAGMENT_SUFFIX = re.compile(r" \(frag (\d+):(\d+)@(\d+)(\+?)\)$")


@needs_tool("tcpdump")
@pytest.mark.parametrize(
    ("flags_offset", "payload"),
    [
        (0x2000, UDP_4[:16]),  # first fragment, more follow
        (0x2002, b"m" * 16),  # middle fragment at byte 16
        (0x0004, b"l" * 12),  # last fragment at byte 32
        (0x2000, icmp_echo(True, 7, 1, b"d" * 8)),
    ],
)
def test_ipv4_fragment_summary(tmp_path: Path, flags_offset: int, payload: bytes) -> None:
    packet = ipv4("10.0.0.1", "10.0.0.2", 17 if payload[0] != 8 else 1, payload,
                  identification=77, flags_offset=flags_offset)  # fmt: skip
    ours = summarize(packet, Link.IP)
    match = _FRAGMENT_SUFFIX.search(ours)
    assert match is not None, ours
    assert match.groups() == (
        "77",
        str(len(payload)),
        str((flags_offset & 0x1FFF) * 8),
        "+" if flags_offset & 0x2000 else "",
    )
    # Without our fragment note the line is what tcpdump prints.
    expected = _tcpdump_one(tmp_path, LINKTYPE_RAW, packet)
    assert _normalize(ours[: match.start()]) == _normalize(expected)


# -------------------------------------------------------------------------------------------
# Random well-formed packets against tcpdump
# -------------------------------------------------------------------------------------------

_ipv4_addresses = st.integers(0x0A000001, 0x0AFFFFFE).map(lambda n: str(ipaddress.IPv4Address(n)))
_ipv6_addresses = st.integers(1, 2**120 - 1).map(
    lambda n: str(ipaddress.IPv6Address((0xFD << 120) | n))
)
# Ports from the dynamic range, source and destination apart: tcpdump decodes application
# protocols on well-known ports, and some when both ports are equal.
_src_ports = st.integers(50000, 54999)
_dst_ports = st.integers(55000, 59999)


@st.composite
def _tcp_options(draw: st.DrawFn) -> bytes:
    choices = [
        b"\x01",
        struct.pack("!BBH", 2, 4, draw(st.integers(0, 0xFFFF))),
        struct.pack("!BBB", 3, 3, draw(st.integers(0, 14))),
        b"\x04\x02",
        struct.pack(
            "!BBII", 8, 10, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
        ),
    ]
    options = b"".join(draw(st.lists(st.sampled_from(choices), max_size=5)))
    if len(options) > 40:
        options = b""
    return options + b"\x00" * (-len(options) % 4)


@st.composite
def _transport(draw: st.DrawFn, version: int, src: str, dst: str) -> tuple[int, bytes]:
    kind = draw(st.sampled_from(["tcp", "udp", "echo"]))
    if kind == "tcp":
        segment = tcp(
            draw(_src_ports),
            draw(_dst_ports),
            draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 0xFF)),
            window=draw(st.integers(0, 0xFFFF)),
            options=draw(_tcp_options()),
            data=draw(st.binary(max_size=40)),
            urgent=draw(st.integers(0, 0xFFFF)),
        )
        return 6, segment
    if kind == "udp":
        return 17, udp(draw(_src_ports), draw(_dst_ports), draw(st.binary(max_size=40)))
    request = draw(st.booleans())
    identifier, sequence = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))
    data = draw(st.binary(max_size=40))
    if version == 4:
        return 1, icmp_echo(request, identifier, sequence, data)
    return 58, icmpv6_echo(src, dst, request, identifier, sequence, data)


@st.composite
def _random_ip_packet(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        src, dst = draw(_ipv4_addresses), draw(_ipv4_addresses)
        proto, payload = draw(_transport(4, src, dst))
        return ipv4(src, dst, proto, payload, ttl=draw(st.integers(1, 255)))
    src, dst = draw(_ipv6_addresses), draw(_ipv6_addresses)
    proto, payload = draw(_transport(6, src, dst))
    return ipv6(src, dst, proto, payload, hop_limit=draw(st.integers(1, 255)))


@needs_tool("tcpdump")
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(packets=st.lists(_random_ip_packet(), min_size=1, max_size=25))
def test_summary_of_random_packets_matches_tcpdump(tmp_path: Path, packets: list[bytes]) -> None:
    path = tmp_path / "random.pcap"
    write_reference_pcap(path, LINKTYPE_RAW, packets)
    expected = tcpdump_lines(path)
    assert len(expected) == len(packets)
    for packet, line in zip(packets, expected, strict=True):
        assert _normalize(summarize(packet, Link.IP)) == _normalize(line)


# -------------------------------------------------------------------------------------------
# Structured decoders: round trips against the builders
# -------------------------------------------------------------------------------------------


@given(
    src=_ipv4_addresses,
    dst=_ipv4_addresses,
    proto=st.integers(0, 255),
    ttl=st.integers(0, 255),
    options=st.integers(0, 10).map(lambda words: bytes(range(1, 1 + 4 * words))),
    payload=st.binary(max_size=100),
    padding=st.binary(max_size=20),
)
def test_decode_ipv4_round_trip(
    src: str, dst: str, proto: int, ttl: int, options: bytes, payload: bytes, padding: bytes
) -> None:
    packet = ipv4(src, dst, proto, payload, ttl=ttl, options=options) + padding
    decoded = decode_ip_untrusted(packet)
    assert decoded.version == 4
    assert decoded.src == ipaddress.IPv4Address(src)
    assert decoded.dst == ipaddress.IPv4Address(dst)
    assert (decoded.proto, decoded.ttl) == (proto, ttl)
    assert decoded.header_length == 20 + len(options)
    assert decoded.total_length == 20 + len(options) + len(payload)
    assert bytes(decoded.payload) == payload
    assert decoded.fragment is None
    assert inner_ip_length_untrusted(packet) == decoded.total_length
    assert ip_source_untrusted(packet) == ipaddress.IPv4Address(src).packed
    assert ip_destination_untrusted(packet) == ipaddress.IPv4Address(dst).packed


_extension_header = st.tuples(
    st.sampled_from([0, 43, 60]), st.integers(0, 3)
)  # (protocol, length in 8-byte units beyond the first)


@given(
    src=_ipv6_addresses,
    dst=_ipv6_addresses,
    chain=st.lists(_extension_header, max_size=4),
    fragment=st.none() | st.tuples(st.integers(0, 8191), st.booleans(), st.integers(0, 2**32 - 1)),
    proto=st.sampled_from([6, 17, 58, 253]),
    hop_limit=st.integers(0, 255),
    payload=st.binary(max_size=100),
    padding=st.binary(max_size=20),
)
def test_decode_ipv6_round_trip(
    src: str,
    dst: str,
    chain: list[tuple[int, int]],
    fragment: tuple[int, bool, int] | None,
    proto: int,
    hop_limit: int,
    payload: bytes,
    padding: bytes,
) -> None:
    headers = [(protocol, bytes(8 + 8 * units)) for protocol, units in chain]
    if fragment is not None:
        offset_units, more, identification = fragment
        headers.append((44, struct.pack("!xxHI", (offset_units << 3) | more, identification)))
    # Link the chain: each header's first byte names the next one.
    next_protocols = [protocol for protocol, _ in headers[1:]] + [proto] if headers else []
    chain_bytes = b"".join(
        bytes((following, len(body) // 8 - 1 if protocol != 44 else 0)) + body[2:]
        for (protocol, body), following in zip(headers, next_protocols, strict=True)
    )
    first = headers[0][0] if headers else proto
    packet = ipv6(src, dst, first, chain_bytes + payload, hop_limit=hop_limit) + padding

    decoded = decode_ip_untrusted(packet)
    assert decoded.version == 6
    assert (decoded.src, decoded.dst) == (ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst))
    assert decoded.ttl == hop_limit
    assert decoded.proto == proto
    assert [header.protocol for header in decoded.extension_headers] == [p for p, _ in headers]
    assert decoded.header_length == 40 + len(chain_bytes)
    assert decoded.total_length == 40 + len(chain_bytes) + len(payload)
    assert bytes(decoded.payload) == payload
    if fragment is None:
        assert decoded.fragment is None
    else:
        assert decoded.fragment is not None
        assert decoded.fragment.offset == fragment[0] * 8
        assert decoded.fragment.more_fragments == fragment[1]
        assert decoded.fragment.identification == fragment[2]
    assert inner_ip_length_untrusted(packet) == decoded.total_length
    assert ip_source_untrusted(packet) == ipaddress.IPv6Address(src).packed
    assert ip_destination_untrusted(packet) == ipaddress.IPv6Address(dst).packed


@given(
    ports=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 0xFF),
    window=st.integers(0, 0xFFFF),
    urgent=st.integers(0, 0xFFFF),
    options=st.integers(0, 10).map(lambda words: b"\x01" * 4 * words),
    data=st.binary(max_size=100),
)
def test_decode_tcp_round_trip(
    ports: tuple[int, int],
    seq: int,
    ack: int,
    flags: int,
    window: int,
    urgent: int,
    options: bytes,
    data: bytes,
) -> None:
    segment = tcp(*ports, seq, ack, flags, window=window, options=options, data=data, urgent=urgent)
    decoded = decode_tcp_untrusted(segment)
    assert (decoded.src_port, decoded.dst_port) == ports
    assert (decoded.seq, decoded.ack, decoded.flags) == (seq, ack, flags)
    assert (decoded.window, decoded.urgent) == (window, urgent)
    assert decoded.header_length == 20 + len(options)
    assert decoded.options == options
    assert bytes(decoded.payload) == data


@given(
    ports=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    data=st.binary(max_size=100),
    padding=st.binary(max_size=10),
)
def test_decode_udp_round_trip(ports: tuple[int, int], data: bytes, padding: bytes) -> None:
    decoded = decode_udp_untrusted(udp(*ports, data) + padding)
    assert (decoded.src_port, decoded.dst_port) == ports
    assert decoded.length == 8 + len(data)
    assert bytes(decoded.payload) == data


@given(
    icmp_type=st.integers(0, 255),
    code=st.integers(0, 255),
    rest=st.binary(min_size=4, max_size=4),
    data=st.binary(max_size=100),
)
def test_decode_icmp_round_trip(icmp_type: int, code: int, rest: bytes, data: bytes) -> None:
    message = icmp(icmp_type, code, rest, data)
    decoded = decode_icmp_untrusted(message)
    assert (decoded.type, decoded.code) == (icmp_type, code)
    assert decoded.checksum == int.from_bytes(message[2:4], "big")
    assert decoded.rest_of_header.to_bytes(4, "big") == rest
    assert decoded.identifier == int.from_bytes(rest[:2], "big")
    assert decoded.sequence == int.from_bytes(rest[2:], "big")
    assert bytes(decoded.body) == data


@given(
    operation=st.integers(0, 0xFFFF),
    macs=st.tuples(st.binary(min_size=6, max_size=6), st.binary(min_size=6, max_size=6)),
    ips=st.tuples(_ipv4_addresses, _ipv4_addresses),
    padding=st.binary(max_size=18),
)
def test_decode_arp_round_trip(
    operation: int, macs: tuple[bytes, bytes], ips: tuple[str, str], padding: bytes
) -> None:
    packet = arp(operation, macs[0], ips[0], macs[1], ips[1]) + padding
    decoded = decode_arp_untrusted(packet)
    assert decoded.is_ethernet_ipv4
    assert decoded.operation == operation
    assert decoded.sender_hardware_address == macs[0]
    assert decoded.target_hardware_address == macs[1]
    assert decoded.sender_protocol_address == ipaddress.IPv4Address(ips[0]).packed
    assert decoded.target_protocol_address == ipaddress.IPv4Address(ips[1]).packed
    assert decoded.length == 28 + len(padding)


@given(
    macs=st.tuples(st.binary(min_size=6, max_size=6), st.binary(min_size=6, max_size=6)),
    ethertype=st.integers(0, 0xFFFF).filter(lambda value: value != 0x8100),
    vlan=st.none() | st.tuples(st.integers(0, 4095), st.integers(0, 7)),
    payload=st.binary(max_size=100),
)
def test_decode_ethernet_round_trip(
    macs: tuple[bytes, bytes], ethertype: int, vlan: tuple[int, int] | None, payload: bytes
) -> None:
    if vlan is None:
        frame = ethernet(macs[0], macs[1], ethertype, payload)
    else:
        frame = ethernet_vlan(macs[0], macs[1], vlan[0], vlan[1], ethertype, payload)
    decoded = decode_ethernet_untrusted(frame)
    assert (decoded.destination, decoded.source) == macs
    assert decoded.ethertype == ethertype
    assert bytes(decoded.payload) == payload
    assert decoded.length == len(frame)
    if vlan is None:
        assert decoded.vlan is None
    else:
        assert decoded.vlan is not None
        assert (decoded.vlan.vid, decoded.vlan.priority) == vlan
        assert decoded.vlan.drop_eligible is False


def test_payload_is_a_view_not_a_copy() -> None:
    buffer = bytearray(ipv4("10.0.0.1", "10.0.0.2", 17, UDP_4))
    decoded = decode_ip_untrusted(buffer)
    buffer[-1] = ord("z")
    assert decoded.payload[-1] == ord("z")


# -------------------------------------------------------------------------------------------
# Malformed input
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", "empty"),
        (b"\x45" + bytes(10), "IPv4 shorter than its header"),
        (b"\x60" + bytes(30), "IPv6 shorter than its header"),
        (b"\x50" + bytes(40), "version 5"),
        (b"\x44" + ipv4("10.0.0.1", "10.0.0.2", 17, UDP_4)[1:], "IHL 4"),
        (ipv4("10.0.0.1", "10.0.0.2", 17, UDP_4)[:-1], "shorter than total length"),
        (ipv6("fd00::1", "fd00::2", 17, UDP_4)[:-1], "shorter than payload length"),
        (ipv6("fd00::1", "fd00::2", 0, b"\x11\x00" + bytes(4)), "extension header cut short"),
        (ipv6("fd00::1", "fd00::2", 0, b"\x11\x05" + bytes(14)), "extension length past end"),
    ],
)
def test_decode_ip_rejects_malformed(packet: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket):
        decode_ip_untrusted(packet)
    assert summarize(packet, Link.IP).endswith(("[|ip]", "[|ip6]")), reason


def test_inner_ip_length_ignores_padding_and_rejects_overlong() -> None:
    packet = ipv6("fd00::1", "fd00::2", 17, UDP_4)
    assert inner_ip_length_untrusted(packet + bytes(13)) == len(packet)
    with pytest.raises(MalformedPacket):
        inner_ip_length_untrusted(packet[:-1])
    short_v4 = bytearray(ipv4("10.0.0.1", "10.0.0.2", 17, UDP_4))
    short_v4[2:4] = (19).to_bytes(2, "big")  # total length below the header size
    with pytest.raises(MalformedPacket):
        inner_ip_length_untrusted(short_v4)


def test_tcp_and_udp_reject_impossible_lengths() -> None:
    with pytest.raises(MalformedPacket):
        decode_tcp_untrusted(bytes(19))
    segment = bytearray(tcp(1, 2, 3, 4, 0x10))
    segment[12] = 0x40  # data offset 16 bytes < 20
    with pytest.raises(MalformedPacket):
        decode_tcp_untrusted(segment)
    segment[12] = 0xF0  # data offset 60 bytes > 20 available
    with pytest.raises(MalformedPacket):
        decode_tcp_untrusted(segment)
    with pytest.raises(MalformedPacket):
        decode_udp_untrusted(struct.pack("!HHHH", 1, 2, 7, 0))
    with pytest.raises(MalformedPacket):
        decode_udp_untrusted(struct.pack("!HHHH", 1, 2, 9, 0))


UNTRUSTED_FUNCTIONS: dict[str, Callable[[bytes | bytearray], Any]] = {
    "decode_ethernet": decode_ethernet_untrusted,
    "decode_arp": decode_arp_untrusted,
    "decode_ip": decode_ip_untrusted,
    "decode_tcp": decode_tcp_untrusted,
    "decode_udp": decode_udp_untrusted,
    "decode_icmp": decode_icmp_untrusted,
    "inner_ip_length": inner_ip_length_untrusted,
    "ip_source": ip_source_untrusted,
    "ip_destination": ip_destination_untrusted,
}


@pytest.mark.parametrize("name", UNTRUSTED_FUNCTIONS)
@given(data=st.binary(max_size=200))
def test_untrusted_decoders_raise_only_malformed_packet(name: str, data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        UNTRUSTED_FUNCTIONS[name](data)


@given(data=st.binary(max_size=200), link=st.sampled_from(Link), header=st.booleans())
def test_summarize_never_raises_on_arbitrary_bytes(data: bytes, link: Link, header: bool) -> None:
    assert isinstance(summarize(data, link, ethernet_header=header), str)


_VALID_PACKETS = [(Link.IP, packet) for packet in RAW_IP_CASES.values()] + [
    (Link.ETHERNET, frame) for frame in ETHERNET_CASES.values()
]


@given(
    sample=st.sampled_from(_VALID_PACKETS),
    cut=st.integers(0, 2000),
    changes=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
)
def test_mutated_packets_never_break_the_decoders(
    sample: tuple[Link, bytes], cut: int, changes: list[tuple[int, int]]
) -> None:
    """Valid packets with bytes changed and the tail cut off reach the deeper layers' checks."""
    link, original = sample
    packet = bytearray(original)
    for position, value in changes:
        packet[position % len(packet)] = value
    del packet[cut % (len(packet) + 1) :]
    assert isinstance(summarize(packet, link), str)
    assert isinstance(summarize(packet, link, ethernet_header=False), str)
    for function in UNTRUSTED_FUNCTIONS.values():
        with contextlib.suppress(MalformedPacket):
            function(packet)


@pytest.mark.parametrize("quoted", [_quoted_udp4(), _quoted_udp6()], ids=["ipv4", "ipv6"])
def test_a_quoted_packet_decodes_leniently_and_only_leniently(quoted: bytes) -> None:
    """An ICMP error quotes 28 (or 48) bytes: headers whole, payload cut short."""
    packet = decode_quoted_ip_untrusted(quoted)
    assert packet.proto == 17
    assert bytes(packet.payload[:2]) == struct.pack("!H", 40000)
    with pytest.raises(MalformedPacket):
        decode_ip_untrusted(quoted)
    with pytest.raises(MalformedPacket):
        decode_quoted_ip_untrusted(quoted[:19])
