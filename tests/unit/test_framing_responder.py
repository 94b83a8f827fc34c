"""Tests for the ping/ARP/neighbor-discovery responder (minivpn.framing.responder).

Replies are checked three ways, none of which trusts the responder's own checksum code: the
plain reference checksum from ``tests/helpers/packets.py``, tshark's checksum validation, and
tcpdump's reading of the reply.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers.packets import (
    BROADCAST_MAC,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    MAC_A,
    MAC_B,
    arp,
    ethernet,
    ethernet_vlan,
    icmp_echo,
    icmpv6_echo,
    ipv4,
    ipv6,
    neighbor_solicitation,
    pseudo_header6,
    reference_checksum,
    solicited_node,
    udp,
    write_reference_pcap,
)
from tests.helpers.tools import needs_tool, tcpdump_lines, tshark_fields

from minivpn.framing.decode import Link
from minivpn.framing.responder import answer_untrusted, internet_checksum

if TYPE_CHECKING:
    from pathlib import Path

MY_MAC = bytes.fromhex("02000000aa01")
DATA = bytes(range(56))
ECHO4 = ipv4("10.9.0.1", "10.9.0.2", 1, icmp_echo(True, 7, 3, DATA))
ECHO6 = ipv6("fd00::1", "fd00::2", 58, icmpv6_echo("fd00::1", "fd00::2", True, 7, 3, DATA))
NS_DST = solicited_node("fd00::2")
NS = ipv6(
    "fd00::1", NS_DST, 58, neighbor_solicitation("fd00::1", NS_DST, "fd00::2", MAC_A), hop_limit=255
)


# -------------------------------------------------------------------------------------------
# internet_checksum
# -------------------------------------------------------------------------------------------


@given(data=st.binary(max_size=300))
def test_checksum_matches_reference(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@pytest.mark.parametrize(
    "data", [b"", b"\x00\x00", b"\xff\xff", b"\xff\xff\xff\xff", b"\xff", b"\x00\x01\xff\xfe"]
)
def test_checksum_edge_cases(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@pytest.mark.parametrize("length", range(130))
def test_checksum_matches_reference_at_every_short_length(length: int) -> None:
    for fill in (0x00, 0xFF, 0x5A):
        data = bytes((fill + 37 * index) % 256 for index in range(length))
        assert internet_checksum(data) == reference_checksum(data)


def test_checksum_accepts_views() -> None:
    assert internet_checksum(memoryview(ECHO4)[20:]) == 0  # a correct message sums to zero
    assert internet_checksum(bytearray(b"\x01")) == reference_checksum(b"\x01")


# -------------------------------------------------------------------------------------------
# Echo replies
# -------------------------------------------------------------------------------------------


def test_ipv4_echo_reply_fields_and_checksums() -> None:
    reply = answer_untrusted(ECHO4, Link.IP)
    assert reply is not None
    assert reply[0] == 0x45
    assert struct.unpack("!H", reply[2:4])[0] == len(reply) == len(ECHO4)
    assert reply[8] == 64  # TTL
    assert reply[9] == 1  # ICMP
    assert reply[12:16] == ipaddress.IPv4Address("10.9.0.2").packed
    assert reply[16:20] == ipaddress.IPv4Address("10.9.0.1").packed
    assert reference_checksum(reply[:20]) == 0
    icmp = reply[20:]
    assert reference_checksum(icmp) == 0
    assert icmp[0:2] == b"\x00\x00"  # echo reply, code 0
    assert icmp[4:8] == struct.pack("!HH", 7, 3)
    assert icmp[8:] == DATA


def test_ipv6_echo_reply_fields_and_checksum() -> None:
    reply = answer_untrusted(ECHO6, Link.IP)
    assert reply is not None
    assert reply[0] >> 4 == 6
    assert struct.unpack("!H", reply[4:6])[0] == len(reply) - 40
    assert reply[6] == 58
    assert reply[7] == 64  # hop limit
    assert reply[8:24] == ipaddress.IPv6Address("fd00::2").packed
    assert reply[24:40] == ipaddress.IPv6Address("fd00::1").packed
    icmp = reply[40:]
    assert reference_checksum(pseudo_header6("fd00::2", "fd00::1", 58, len(icmp)) + icmp) == 0
    assert icmp[0:2] == bytes((129, 0))
    assert icmp[4:8] == struct.pack("!HH", 7, 3)
    assert icmp[8:] == DATA


def test_reply_drops_ipv4_options_and_ethernet_padding() -> None:
    request = ipv4(
        "10.9.0.1", "10.9.0.2", 1, icmp_echo(True, 1, 2, b"hi"), options=bytes.fromhex("94040000")
    )
    frame = ethernet(MY_MAC, MAC_A, 0x0800, request + bytes(20))
    reply = answer_untrusted(frame, Link.ETHERNET, my_mac=MY_MAC)
    assert reply is not None
    packet = reply[14:]
    assert packet[0] == 0x45
    assert len(packet) == 20 + 8 + 2
    assert packet[28:] == b"hi"


@needs_tool("tshark")
@needs_tool("tcpdump")
def test_real_tools_accept_the_replies(tmp_path: Path) -> None:
    replies = [answer_untrusted(ECHO4, Link.IP), answer_untrusted(ECHO6, Link.IP)]
    assert all(reply is not None for reply in replies)
    path = tmp_path / "replies.pcap"
    write_reference_pcap(path, LINKTYPE_RAW, [reply for reply in replies if reply is not None])
    assert tcpdump_lines(path) == [
        "IP 10.9.0.2 > 10.9.0.1: ICMP echo reply, id 7, seq 3, length 64",
        "IP6 fd00::2 > fd00::1: ICMP6, echo reply, id 7, seq 3, length 64",
    ]
    rows = tshark_fields(
        path,
        ["ip.checksum.status", "icmp.checksum.status", "icmpv6.checksum.status", "data.data"],
        "-o",
        "ip.check_checksum:TRUE",
    )
    assert rows == [["1", "1", "", DATA.hex()], ["", "", "1", DATA.hex()]]


@given(
    identifier=st.integers(0, 0xFFFF),
    sequence=st.integers(0, 0xFFFF),
    data=st.binary(max_size=1400),
    v6=st.booleans(),
)
def test_any_echo_request_gets_a_valid_reply(
    identifier: int, sequence: int, data: bytes, v6: bool
) -> None:
    if v6:
        request = ipv6(
            "fd00::1",
            "fd00::2",
            58,
            icmpv6_echo("fd00::1", "fd00::2", True, identifier, sequence, data),
        )
        expected = ipv6(
            "fd00::2",
            "fd00::1",
            58,
            icmpv6_echo("fd00::2", "fd00::1", False, identifier, sequence, data),
        )
    else:
        request = ipv4("10.9.0.1", "10.9.0.2", 1, icmp_echo(True, identifier, sequence, data))
        expected = ipv4(
            "10.9.0.2", "10.9.0.1", 1, icmp_echo(False, identifier, sequence, data),
            identification=0, flags_offset=0x4000,
        )  # fmt: skip
    assert answer_untrusted(request, Link.IP) == expected


# -------------------------------------------------------------------------------------------
# Ethernet: ARP, neighbor discovery, wrapped echo replies
# -------------------------------------------------------------------------------------------


def test_arp_request_for_any_address_gets_my_mac() -> None:
    request = ethernet(
        BROADCAST_MAC, MAC_A, 0x0806, arp(1, MAC_A, "10.9.0.1", bytes(6), "10.9.0.77")
    )
    reply = answer_untrusted(request, Link.ETHERNET, my_mac=MY_MAC)
    assert reply == ethernet(MAC_A, MY_MAC, 0x0806, arp(2, MY_MAC, "10.9.0.77", MAC_A, "10.9.0.1"))


@needs_tool("tcpdump")
def test_tcpdump_reads_arp_reply(tmp_path: Path) -> None:
    request = ethernet(
        BROADCAST_MAC, MAC_A, 0x0806, arp(1, MAC_A, "10.9.0.1", bytes(6), "10.9.0.2")
    )
    reply = answer_untrusted(request, Link.ETHERNET, my_mac=MY_MAC)
    assert reply is not None
    path = tmp_path / "arp.pcap"
    write_reference_pcap(path, LINKTYPE_ETHERNET, [reply])
    assert tcpdump_lines(path, "-e") == [
        "02:00:00:00:aa:01 > aa:bb:cc:dd:ee:ff, ethertype ARP (0x0806), length 42: "
        "Reply 10.9.0.2 is-at 02:00:00:00:aa:01, length 28"
    ]


def test_neighbor_solicitation_gets_advertisement() -> None:
    frame = ethernet(bytes.fromhex("3333ff000002"), MAC_A, 0x86DD, NS)
    reply = answer_untrusted(frame, Link.ETHERNET, my_mac=MY_MAC)
    assert reply is not None
    assert reply[:14] == MAC_A + MY_MAC + b"\x86\xdd"
    packet = reply[14:]
    assert packet[6] == 58
    assert packet[7] == 255  # neighbor discovery requires hop limit 255
    assert packet[8:24] == ipaddress.IPv6Address("fd00::2").packed
    assert packet[24:40] == ipaddress.IPv6Address("fd00::1").packed
    icmp = packet[40:]
    assert reference_checksum(pseudo_header6("fd00::2", "fd00::1", 58, len(icmp)) + icmp) == 0
    assert icmp[0:2] == bytes((136, 0))
    assert icmp[4:8] == struct.pack("!I", 0x60000000)  # Solicited + Override, not Router
    assert icmp[8:24] == ipaddress.IPv6Address("fd00::2").packed
    assert icmp[24:] == bytes((2, 1)) + MY_MAC  # target link-layer address option


@needs_tool("tshark")
def test_tshark_validates_neighbor_advertisement(tmp_path: Path) -> None:
    frame = ethernet(bytes.fromhex("3333ff000002"), MAC_A, 0x86DD, NS)
    reply = answer_untrusted(frame, Link.ETHERNET, my_mac=MY_MAC)
    assert reply is not None
    path = tmp_path / "na.pcap"
    write_reference_pcap(path, LINKTYPE_ETHERNET, [reply])
    rows = tshark_fields(
        path,
        [
            "icmpv6.checksum.status",
            "icmpv6.nd.na.target_address",
            "icmpv6.nd.na.flag.s",
            "icmpv6.nd.na.flag.o",
            "icmpv6.nd.na.flag.r",
            "icmpv6.opt.linkaddr",
        ],
    )
    assert rows == [["1", "fd00::2", "1", "1", "0", "02:00:00:00:aa:01"]]


def test_echo_over_ethernet_swaps_macs() -> None:
    for packet, ethertype in ((ECHO4, 0x0800), (ECHO6, 0x86DD)):
        frame = ethernet(MY_MAC, MAC_A, ethertype, packet)
        reply = answer_untrusted(frame, Link.ETHERNET, my_mac=MY_MAC)
        assert reply is not None
        assert reply[:14] == MAC_A + MY_MAC + ethertype.to_bytes(2, "big")
        assert reply[14:] == answer_untrusted(packet, Link.IP)


def test_ethernet_needs_my_mac() -> None:
    with pytest.raises(ValueError, match="my_mac"):
        answer_untrusted(ethernet(MY_MAC, MAC_A, 0x0800, ECHO4), Link.ETHERNET)
    with pytest.raises(ValueError, match="my_mac"):
        answer_untrusted(ethernet(MY_MAC, MAC_A, 0x0800, ECHO4), Link.ETHERNET, my_mac=b"\x01")


# -------------------------------------------------------------------------------------------
# What must not be answered
# -------------------------------------------------------------------------------------------


def _corrupt_last_byte(packet: bytes) -> bytes:
    return packet[:-1] + bytes([packet[-1] ^ 0xFF])


NOT_ANSWERED_IP = {
    "echo-reply": ipv4("10.9.0.2", "10.9.0.1", 1, icmp_echo(False, 7, 3, DATA)),
    "echo6-reply": ipv6(
        "fd00::2", "fd00::1", 58, icmpv6_echo("fd00::2", "fd00::1", False, 7, 3, DATA)
    ),
    "bad-icmp-checksum": _corrupt_last_byte(ECHO4),
    "bad-icmp6-checksum": _corrupt_last_byte(ECHO6),
    "multicast": ipv4("10.9.0.1", "224.0.0.1", 1, icmp_echo(True, 7, 3, DATA)),
    "broadcast": ipv4("10.9.0.1", "255.255.255.255", 1, icmp_echo(True, 7, 3, DATA)),
    "multicast6": ipv6(
        "fd00::1", "ff02::1", 58, icmpv6_echo("fd00::1", "ff02::1", True, 7, 3, DATA)
    ),
    "fragment": ipv4("10.9.0.1", "10.9.0.2", 1, icmp_echo(True, 7, 3, DATA), flags_offset=0x2000),
    "udp": ipv4("10.9.0.1", "10.9.0.2", 17, udp(50000, 55000, b"x")),
    "truncated": ECHO4[:30],
    "garbage": b"\x00" * 40,
    # Over TUN there is no neighbor discovery: a solicitation is not a ping.
    "neighbor-solicitation-on-tun": NS,
}


@pytest.mark.parametrize("name", NOT_ANSWERED_IP)
def test_not_answered_on_tun(name: str) -> None:
    assert answer_untrusted(NOT_ANSWERED_IP[name], Link.IP) is None


def _ns_frame(src: str, target: str, hop_limit: int = 255) -> bytes:
    dst = solicited_node(target)
    message = neighbor_solicitation(src, dst, target, None if src == "::" else MAC_A)
    return ethernet(
        bytes.fromhex("3333ff000002"),
        MAC_A,
        0x86DD,
        ipv6(src, dst, 58, message, hop_limit=hop_limit),
    )


NOT_ANSWERED_ETHERNET = {
    "arp-probe": ethernet(
        BROADCAST_MAC, MAC_A, 0x0806, arp(1, MAC_A, "0.0.0.0", bytes(6), "10.9.0.2")
    ),
    "gratuitous-arp": ethernet(
        BROADCAST_MAC, MAC_A, 0x0806, arp(1, MAC_A, "10.9.0.1", bytes(6), "10.9.0.1")
    ),
    "arp-reply": ethernet(MY_MAC, MAC_A, 0x0806, arp(2, MAC_A, "10.9.0.1", MY_MAC, "10.9.0.2")),
    "duplicate-address-detection": _ns_frame("::", "fd00::2"),
    "ns-routed-hop-limit": _ns_frame("fd00::1", "fd00::2", hop_limit=64),
    "ns-bad-checksum": _corrupt_last_byte(_ns_frame("fd00::1", "fd00::2")),
    "vlan-tagged-echo": ethernet_vlan(MY_MAC, MAC_A, 10, 0, 0x0800, ECHO4),
    "unknown-ethertype": ethernet(MY_MAC, MAC_B, 0x88B5, b"hello"),
    "short-frame": MY_MAC + MAC_A,
}


@pytest.mark.parametrize("name", NOT_ANSWERED_ETHERNET)
def test_not_answered_on_tap(name: str) -> None:
    assert answer_untrusted(NOT_ANSWERED_ETHERNET[name], Link.ETHERNET, my_mac=MY_MAC) is None


@given(data=st.binary(max_size=200), link=st.sampled_from(Link))
def test_arbitrary_bytes_never_raise(data: bytes, link: Link) -> None:
    reply = answer_untrusted(data, link, my_mac=MY_MAC)
    assert reply is None or isinstance(reply, bytes)


@given(
    sample=st.sampled_from(
        [(Link.IP, ECHO4), (Link.IP, ECHO6), (Link.ETHERNET, _ns_frame("fd00::1", "fd00::2"))]
        + [(Link.ETHERNET, frame) for frame in NOT_ANSWERED_ETHERNET.values()]
    ),
    cut=st.integers(0, 200),
    changes=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
)
def test_mutated_requests_never_raise(
    sample: tuple[Link, bytes], cut: int, changes: list[tuple[int, int]]
) -> None:
    link, original = sample
    packet = bytearray(original)
    for position, value in changes:
        packet[position % len(packet)] = value
    del packet[cut % (len(packet) + 1) :]
    reply = answer_untrusted(packet, link, my_mac=MY_MAC)
    assert reply is None or isinstance(reply, bytes)
