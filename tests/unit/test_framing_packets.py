"""The reference packet builders (tests/helpers/packets.py) against a real tool.

The framing tests trust the builders' bytes instead of minivpn's, so the builders are checked
here: their checksums against RFC 1071's own example, their packets against tshark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.helpers.packets import (
    LINKTYPE_RAW,
    icmp_echo,
    icmpv6_echo,
    ipv4,
    ipv6,
    reference_checksum,
    write_reference_pcap,
)
from tests.helpers.tools import needs_tool, tshark_fields

if TYPE_CHECKING:
    from pathlib import Path


def test_reference_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2 (one's complement).
    assert reference_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


@needs_tool("tshark")
def test_builders_produce_packets_tshark_accepts(tmp_path: Path) -> None:
    packets = [
        ipv4("10.9.0.1", "10.9.0.2", 1, icmp_echo(True, 7, 1, b"abc")),
        ipv6("fd00::1", "fd00::2", 58, icmpv6_echo("fd00::1", "fd00::2", True, 7, 1, b"abc")),
    ]
    path = tmp_path / "builders.pcap"
    write_reference_pcap(path, LINKTYPE_RAW, packets)
    rows = tshark_fields(
        path,
        ["ip.checksum.status", "icmp.checksum.status", "icmpv6.checksum.status", "icmp.seq"],
        "-o",
        "ip.check_checksum:TRUE",
    )
    assert rows == [["1", "1", "", "1"], ["", "", "1", ""]]
