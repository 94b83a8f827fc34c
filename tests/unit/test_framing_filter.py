"""``minivpn dump --filter``: every expression selects exactly the packets tcpdump selects.

The packets are built by the reference builders (not by minivpn), written to pcap files with
the reference writer, and read by the real ``tcpdump -r FILE EXPRESSION``: the packets it prints
must be the packets :func:`compile_filter` lets through.  Expressions are a fixed list of
everyday ones and, from hypothesis, random combinations of every primitive with ``not``,
``and``, ``or``, ``!``, ``&&``, ``||`` and parentheses -- written without parentheses as often
as with, because tcpdump gives ``and`` and ``or`` the same precedence.
"""

from __future__ import annotations

import struct
import subprocess
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.packets import (
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
    tcp,
    udp,
    write_reference_pcap,
)
from tests.helpers.tools import needs_tool, tcpdump

from minivpn.framing.decode import Link
from minivpn.framing.filter import FilterError, compile_filter

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = needs_tool("tcpdump")


def _fragment_header(next_header: int, offset: int, more: bool) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset << 3) | int(more), 7)


def _hop_by_hop(next_header: int) -> bytes:
    return struct.pack("!BB", next_header, 0) + b"\x01\x04\x00\x00\x00\x00"


SCTP_COMMON = struct.pack("!HHII", 5000, 80, 1, 0)

IP_PACKETS = [
    ipv4("10.9.0.1", "10.9.0.2", 1, icmp_echo(True, 7, 1, b"ping")),
    ipv4("10.9.0.2", "10.9.0.1", 1, icmp_echo(False, 7, 1, b"ping")),
    ipv4("10.9.0.2", "10.9.0.1", 1, icmp(3, 3, b"\x00" * 4, b"\x45" + b"\x00" * 27)),
    ipv4("10.0.0.1", "10.0.0.2", 6, tcp(50000, 80, 1, 0, 0x02)),
    ipv4("10.0.0.2", "10.0.0.1", 17, udp(53, 40000, b"answer")),
    # A later fragment: its first bytes are data, not ports (here they look like port 53).
    ipv4("10.0.0.1", "10.0.0.2", 17, struct.pack("!HH", 53, 53) + b"x" * 12, flags_offset=185),
    ipv4("10.0.0.1", "10.0.0.2", 6, tcp(443, 80, 1, 0, 0x10), options=b"\x01\x01\x01\x00"),
    ipv4("10.0.0.1", "10.0.0.2", 132, SCTP_COMMON),
    ipv6("fd00:9::1", "fd00:9::2", 58, icmpv6_echo("fd00:9::1", "fd00:9::2", True, 7, 1, b"p")),
    ipv6("fd00:9::2", "fd00:9::1", 58, icmpv6_echo("fd00:9::2", "fd00:9::1", False, 7, 1, b"p")),
    ipv6("fe80::1", "ff02::2", 58, icmpv6("fe80::1", "ff02::2", 133, 0, b"\x00" * 4)),
    ipv6(
        "fe80::1",
        "ff02::1:ff00:2",
        58,
        neighbor_solicitation("fe80::1", "ff02::1:ff00:2", "fd00:9::2", MAC_A),
    ),
    ipv6("fd00::1", "fd00::2", 6, tcp(50000, 443, 1, 0, 0x02)),
    ipv6("fd00::2", "fd00::1", 17, udp(53, 40000, b"answer")),
    ipv6("fd00::1", "fd00::2", 44, _fragment_header(17, 0, True) + udp(40000, 53, b"q")),
    ipv6(
        "fd00::1",
        "fd00::2",
        44,
        _fragment_header(58, 0, False) + icmpv6("fd00::1", "fd00::2", 128, 0, b"\x00" * 4),
    ),
    ipv6("fd00::1", "fd00::2", 0, _hop_by_hop(58) + icmpv6("fd00::1", "fd00::2", 143, 0, b"")),
    ipv4("10.0.0.1", "10.0.0.2", 17, udp(40000, 53, b"query")),
]

ETHERNET_FRAMES = [
    *(ethernet(MAC_B, MAC_A, 0x86DD if p[0] >> 4 == 6 else 0x0800, p) for p in IP_PACKETS),
    ethernet(b"\xff" * 6, MAC_A, 0x0806, arp(1, MAC_A, "10.9.0.1", b"\x00" * 6, "10.9.0.2")),
    ethernet(MAC_A, MAC_B, 0x0806, arp(2, MAC_B, "10.9.0.2", MAC_A, "10.9.0.1")),
    ethernet(b"\xff" * 6, MAC_A, 0x8035, arp(3, MAC_A, "0.0.0.0", MAC_A, "0.0.0.0")),
    ethernet_vlan(MAC_B, MAC_A, 9, 0, 0x0800, IP_PACKETS[0]),
]

PRIMITIVES = [
    "ip", "ip6", "arp", "rarp", "icmp", "icmp6", "tcp", "udp", "sctp",
    "host 10.9.0.1", "src host 10.9.0.2", "dst host 10.0.0.2", "host fd00:9::2",
    "ip6 host fe80::1", "ip6 dst host fd00::2", "arp host 10.9.0.2", "ip host 10.9.0.1",
    "rarp host 0.0.0.0", "arp src host 10.9.0.2",
    "port 80", "src port 53", "dst port 53", "tcp port 80", "udp port 53", "tcp dst port 443",
    "sctp port 80", "port 443",
    "icmp[icmptype] == icmp-echo", "icmp[icmptype] != icmp-echo", "icmp[icmptype] = 3",
    "icmp[icmpcode] == 3", "icmp6[icmp6type] == icmp6-echo", "icmp6[icmp6type] = 133",
    "icmp6[icmp6type] != icmp6-echoreply", "icmp6[icmp6code] == 0",
]  # fmt: skip

EVERYDAY = [
    "",
    "icmp",
    "icmp or icmp6",
    "not ip6",
    "icmp or icmp6 and not arp",  # (icmp or icmp6) and not arp
    "tcp port 80 or udp port 53",
    "host 10.9.0.1 and not icmp",
    "icmp6 and icmp6[icmp6type] != icmp6-routersolicit",
    "!(tcp || udp) && ip",
]


def selected_by_tcpdump(path: Path, expression: str) -> list[int]:
    """The indexes of the packets ``tcpdump -r PATH EXPRESSION`` prints."""
    result = subprocess.run(
        tcpdump("-n", "-tt", "-r", str(path), *([expression] if expression else [])),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "expression rejects all packets" in result.stderr:
        return []  # libpcap's optimiser saw it: tcpdump then refuses to read at all
    assert result.returncode == 0, (expression, result.stderr)
    # write_reference_pcap stamps packet N with 1_700_000_000 + N seconds.
    return [
        int(line.split(".", 1)[0]) - 1_700_000_000
        for line in result.stdout.splitlines()
        if line[:1].isdigit()
    ]


def selected_by_us(packets: list[bytes], link: Link, expression: str) -> list[int]:
    packet_filter = compile_filter(expression)
    return [index for index, packet in enumerate(packets) if packet_filter.matches(packet, link)]


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[Link, tuple[Path, list[bytes]]]:
    directory = tmp_path_factory.mktemp("filter")
    raw, frames = directory / "raw.pcap", directory / "ethernet.pcap"
    write_reference_pcap(raw, LINKTYPE_RAW, IP_PACKETS)
    write_reference_pcap(frames, LINKTYPE_ETHERNET, ETHERNET_FRAMES)
    return {Link.IP: (raw, IP_PACKETS), Link.ETHERNET: (frames, ETHERNET_FRAMES)}


def check_same(captures: dict[Link, tuple[Path, list[bytes]]], expression: str) -> None:
    for link, (path, packets) in captures.items():
        ours = selected_by_us(packets, link, expression)
        assert ours == selected_by_tcpdump(path, expression), (link, expression)


@pytest.mark.parametrize("expression", EVERYDAY + PRIMITIVES)
def test_everyday_expressions_and_every_primitive(
    captures: dict[Link, tuple[Path, list[bytes]]], expression: str
) -> None:
    check_same(captures, expression)


def test_the_primitives_are_not_vacuous(captures: dict[Link, tuple[Path, list[bytes]]]) -> None:
    """Each primitive selects some packets and leaves out others, on one link or the other."""
    for expression in PRIMITIVES:
        counts = [
            len(selected_by_us(packets, link, expression))
            for link, (_, packets) in captures.items()
        ]
        assert any(counts), expression
        assert any(
            count < len(packets)
            for count, (_, packets) in zip(counts, captures.values(), strict=True)
        ), expression


def expressions() -> st.SearchStrategy[str]:
    def combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(lambda a: f"not {a}", children),
            st.builds(lambda a: f"!{a}", children),
            st.builds(lambda a: f"({a})", children),
            st.builds(
                lambda a, op, b: f"{a} {op} {b}",
                children,
                st.sampled_from(["and", "or", "&&", "||"]),
                children,
            ),
        )

    return st.recursive(st.sampled_from(PRIMITIVES), combine, max_leaves=6)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(expression=expressions())
def test_random_expressions_select_what_tcpdump_selects(
    captures: dict[Link, tuple[Path, list[bytes]]], expression: str
) -> None:
    check_same(captures, expression)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("host example.org", "names are not looked up"),
        ("port http", "names are not looked up"),
        ("10.0.0.1", "expected a protocol"),
        ("net 10.0.0.0", "expected a protocol"),
        ("ip6 host 10.0.0.1", "'ip6 host' needs an IPv6 address"),
        ("arp host fd00::1", "'arp host' needs an IPv4 address"),
        ("tcp host 10.0.0.1", "'host' goes with ip, ip6, arp or rarp, not tcp"),
        ("icmp port 7", "'port' goes with tcp, udp or sctp, not icmp"),
        ("icmp[icmp6type] == 1", "expected icmptype, icmpcode"),
        ("icmp[icmptype] > 1", "unexpected character '>'"),
        ("icmp[icmptype] 1", "expected '==' or '!=' at '1'"),
        ("icmp[icmptype] == icmp-bogus", "a name like icmp-echo"),
        ("(icmp or tcp", "expected ')'"),
        (
            "icmp and",
            "expected a protocol (ip, ip6, arp, icmp, icmp6, tcp, udp), host or port at the end",
        ),
        ("port", "something is missing after 'port'"),
        ("icmp tcp", "expected 'and', 'or' or the end at 'tcp'"),
        ("icmp $ tcp", "unexpected character '$'"),
        ("src icmp", "expected 'host' or 'port' after 'src'"),
    ],
)
def test_what_is_not_supported_is_one_clear_error(expression: str, message: str) -> None:
    with pytest.raises(FilterError, match="invalid filter") as caught:
        compile_filter(expression)
    assert message in str(caught.value)


def test_a_field_past_the_end_makes_its_primitive_false() -> None:
    """Documented: on cut-short packets a primitive that reads past the end is false (tcpdump
    may reject the whole packet instead, depending on its optimiser, so this is not compared)."""
    short = ipv4("10.9.0.1", "10.9.0.2", 1, icmp_echo(True, 7, 2, b"ping"))[:8]
    assert compile_filter("ip").matches(short, Link.IP)
    assert not compile_filter("icmp").matches(short, Link.IP)  # byte 9 is missing
    assert compile_filter("not icmp").matches(short, Link.IP)
    assert not compile_filter("host 10.9.0.1").matches(short, Link.IP)
    assert not compile_filter("ip").matches(b"", Link.IP)
    assert not compile_filter("ip").matches(MAC_B + MAC_A, Link.ETHERNET)
