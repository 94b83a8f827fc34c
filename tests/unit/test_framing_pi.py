"""Tests for the TUN packet-information header (minivpn.framing.pi)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers.packets import UDP_PACKET_V4, UDP_PACKET_V6

from minivpn.framing.errors import MalformedPacket
from minivpn.framing.pi import (
    PI_LENGTH,
    TUN_PKT_STRIP,
    PacketInfo,
    build_pi,
    ethertype_for_ip_packet,
    parse_pi_untrusted,
)


def test_layout_flags_in_host_order_proto_big_endian() -> None:
    # struct tun_pi { __u16 flags; __be16 proto; }: the kernel copies flags as a native u16.
    flags = b"\x01\x00" if sys.byteorder == "little" else b"\x00\x01"
    assert build_pi(0x86DD, TUN_PKT_STRIP) == flags + b"\x86\xdd"
    assert build_pi(0x0800) == b"\x00\x00\x08\x00"
    assert PI_LENGTH == 4


def test_parse_known_bytes() -> None:
    flags = b"\x01\x00" if sys.byteorder == "little" else b"\x00\x01"
    info, packet = parse_pi_untrusted(flags + b"\x08\x00" + b"payload")
    assert info == PacketInfo(flags=TUN_PKT_STRIP, proto=0x0800)
    assert bytes(packet) == b"payload"


@given(proto=st.integers(0, 0xFFFF), flags=st.integers(0, 0xFFFF), payload=st.binary(max_size=100))
def test_round_trip(proto: int, flags: int, payload: bytes) -> None:
    info, packet = parse_pi_untrusted(build_pi(proto, flags) + payload)
    assert info == PacketInfo(flags=flags, proto=proto)
    assert bytes(packet) == payload


def test_packet_is_a_view_into_the_read_buffer() -> None:
    buffer = bytearray(build_pi(0x0800) + b"abc")
    _, packet = parse_pi_untrusted(buffer)
    buffer[-1] = ord("z")
    assert bytes(packet) == b"abz"


@pytest.mark.parametrize("size", [0, 1, 3])
def test_short_buffer_is_malformed(size: int) -> None:
    with pytest.raises(MalformedPacket):
        parse_pi_untrusted(bytes(size))


@given(data=st.binary(max_size=64))
def test_parse_arbitrary_bytes_only_raises_malformed(data: bytes) -> None:
    try:
        info, packet = parse_pi_untrusted(data)
    except MalformedPacket:
        assert len(data) < 4
    else:
        assert len(packet) == len(data) - 4
        assert 0 <= info.proto <= 0xFFFF


@pytest.mark.parametrize(("proto", "flags"), [(-1, 0), (0x10000, 0), (0x0800, 0x10000)])
def test_build_rejects_values_that_do_not_fit(proto: int, flags: int) -> None:
    with pytest.raises(ValueError, match="16 bits"):
        build_pi(proto, flags)


def test_ethertype_from_ip_version() -> None:
    assert ethertype_for_ip_packet(UDP_PACKET_V4) == 0x0800
    assert ethertype_for_ip_packet(UDP_PACKET_V6) == 0x86DD
    assert ethertype_for_ip_packet(memoryview(UDP_PACKET_V6)) == 0x86DD
    for bad in (b"", b"\x50", b"\x00" * 20):
        with pytest.raises(MalformedPacket):
            ethertype_for_ip_packet(bad)


@given(data=st.binary(max_size=8))
def test_ethertype_of_arbitrary_bytes_only_raises_malformed(data: bytes) -> None:
    try:
        assert ethertype_for_ip_packet(data) in (0x0800, 0x86DD)
    except MalformedPacket:
        assert not data or data[0] >> 4 not in (4, 6)
