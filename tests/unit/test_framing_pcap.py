"""Tests for the sans-IO pcap writer and reader (minivpn.framing.pcap).

Files written here are read back by the real tcpdump and tshark, and files tcpdump writes are
read by our reader.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers.packets import MAC_A, MAC_B, UDP_PACKET_V4, UDP_PACKET_V6, ethernet
from tests.helpers.tools import needs_tool, tcpdump, tshark_fields

from minivpn.framing.errors import MalformedPacket
from minivpn.framing.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    pcap_global_header,
    pcap_record,
    read_pcap_untrusted,
)

if TYPE_CHECKING:
    from pathlib import Path

TIMESTAMP = 1_700_000_000.123456


def _write(
    path: Path, linktype: int, records: list[tuple[float, bytes]], snaplen: int = 262144
) -> None:
    with path.open("wb") as file:
        file.write(pcap_global_header(linktype, snaplen=snaplen))
        for timestamp, packet in records:
            file.write(pcap_record(packet, timestamp, snaplen=snaplen))


def test_header_layout() -> None:
    header = pcap_global_header(LINKTYPE_RAW)
    assert len(header) == 24
    assert header[:4] == bytes.fromhex("d4c3b2a1")  # 0xa1b2c3d4 little-endian: microseconds
    assert struct.unpack("<HHiIII", header[4:]) == (2, 4, 0, 0, 262144, 101)


@needs_tool("tcpdump")
def test_tcpdump_reads_raw_ip_file(tmp_path: Path) -> None:
    path = tmp_path / "raw.pcap"
    _write(path, LINKTYPE_RAW, [(TIMESTAMP, UDP_PACKET_V4), (TIMESTAMP + 1.5, UDP_PACKET_V6)])
    result = subprocess.run(
        tcpdump("-n", "-tt", "-r", str(path)), capture_output=True, text=True, check=True
    )
    assert "link-type RAW" in result.stderr
    assert result.stdout.splitlines() == [
        "1700000000.123456 IP 10.0.0.1.50000 > 10.0.0.2.55000: UDP, length 20",
        "1700000001.623456 IP6 fd00::1.50000 > fd00::2.55000: UDP, length 20",
    ]


@needs_tool("tcpdump")
def test_tcpdump_reads_ethernet_file(tmp_path: Path) -> None:
    path = tmp_path / "ethernet.pcap"
    _write(path, LINKTYPE_ETHERNET, [(TIMESTAMP, ethernet(MAC_B, MAC_A, 0x0800, UDP_PACKET_V4))])
    result = subprocess.run(
        tcpdump("-n", "-e", "-t", "-r", str(path)), capture_output=True, text=True, check=True
    )
    assert "link-type EN10MB" in result.stderr
    assert result.stdout.startswith(
        "aa:bb:cc:dd:ee:ff > 11:22:33:44:55:66, ethertype IPv4 (0x0800), length 62: 10.0.0.1.50000"
    )


@needs_tool("tshark")
def test_tshark_sees_timestamps_and_snaplen_cut(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    _write(path, LINKTYPE_RAW, [(TIMESTAMP, UDP_PACKET_V4), (2.0, UDP_PACKET_V6)], snaplen=40)
    rows = tshark_fields(path, ["frame.time_epoch", "frame.len", "frame.cap_len"])
    assert [(float(epoch), int(length), int(cut)) for epoch, length, cut in rows] == [
        (pytest.approx(TIMESTAMP, abs=1e-6), len(UDP_PACKET_V4), 40),
        (2.0, len(UDP_PACKET_V6), 40),
    ]


@needs_tool("tcpdump")
@pytest.mark.parametrize("precision", ["micro", "nano"])
def test_reader_reads_what_tcpdump_writes(tmp_path: Path, precision: str) -> None:
    ours, theirs = tmp_path / "ours.pcap", tmp_path / "theirs.pcap"
    records = [(TIMESTAMP, UDP_PACKET_V4), (TIMESTAMP + 0.25, UDP_PACKET_V6)]
    _write(ours, LINKTYPE_RAW, records)
    subprocess.run(
        tcpdump(f"--time-stamp-precision={precision}", "-r", str(ours), "-w", str(theirs)),
        capture_output=True,
        check=True,
    )
    linktype, read = read_pcap_untrusted(theirs.read_bytes())
    assert linktype == LINKTYPE_RAW
    assert [packet for _, packet in read] == [packet for _, packet in records]
    assert [timestamp for timestamp, _ in read] == [pytest.approx(t, abs=1e-6) for t, _ in records]


def test_reader_accepts_big_endian_files() -> None:
    data = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)
    data += struct.pack(">IIII", 10, 500000, 3, 3) + b"abc"
    assert read_pcap_untrusted(data) == (LINKTYPE_ETHERNET, [(10.5, b"abc")])


_records = st.lists(
    st.tuples(
        st.integers(0, 2**32 - 2).map(float) | st.floats(0, 2**31, allow_nan=False),
        st.binary(max_size=200),
    ),
    max_size=10,
)


@given(linktype=st.sampled_from([LINKTYPE_RAW, LINKTYPE_ETHERNET]), records=_records)
def test_write_read_round_trip(linktype: int, records: list[tuple[float, bytes]]) -> None:
    data = pcap_global_header(linktype) + b"".join(
        pcap_record(packet, timestamp) for timestamp, packet in records
    )
    read_linktype, read = read_pcap_untrusted(data)
    assert read_linktype == linktype
    assert [packet for _, packet in read] == [packet for _, packet in records]
    for (timestamp, _), (original, _) in zip(read, records, strict=True):
        assert abs(timestamp - original) <= 0.5e-6 + 1e-9 * original


def test_microseconds_round_up_into_the_next_second() -> None:
    record = pcap_record(b"x", 1.9999999)
    assert struct.unpack("<IIII", record[:16]) == (2, 0, 1, 1)


def test_snaplen_cuts_stored_bytes_but_keeps_original_length() -> None:
    record = pcap_record(bytes(100), 0.0, snaplen=60)
    assert struct.unpack("<IIII", record[:16]) == (0, 0, 60, 100)
    assert len(record) == 16 + 60


@pytest.mark.parametrize("timestamp", [-1.0, 2.0**32])
def test_timestamp_out_of_range(timestamp: float) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        pcap_record(b"x", timestamp)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xd4\xc3\xb2\xa1" + bytes(10),
        b"not a pcap file at all, no.....",
        struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 0, 0, 0, 65535, 1),
        pcap_global_header(LINKTYPE_RAW) + bytes(10),
        pcap_global_header(LINKTYPE_RAW) + struct.pack("<IIII", 0, 0, 100, 100) + bytes(99),
    ],
)
def test_reader_rejects_malformed_files(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        read_pcap_untrusted(data)


@given(
    data=st.binary(max_size=100)
    | st.binary(max_size=100).map(lambda tail: pcap_global_header(1) + tail)
)
def test_reader_on_arbitrary_bytes_only_raises_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        read_pcap_untrusted(data)
