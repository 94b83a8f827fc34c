"""The pure part of the device layer: ioctl numbers, flags, struct ifreq, interface names.

The ioctl numbers and flag values are checked against an independent derivation: the
``_IOW``/``_IOR`` encoding recomputed here, and the installed kernel header when it is there.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivpn.tuntap import ioctl
from minivpn.tuntap.errors import InvalidDeviceName, TunError
from minivpn.tuntap.ioctl import DeviceConfig, Mode

IF_TUN_H = Path("/usr/include/linux/if_tun.h")


def _ioc(direction: int, number: int, size: int = 4) -> int:
    """asm-generic/ioctl.h: dir (2 bits) << 30 | size (14 bits) << 16 | type << 8 | nr."""
    return direction << 30 | size << 16 | ord("T") << 8 | number


_WRITE, _READ = 1, 2


@pytest.mark.parametrize(
    ("value", "direction", "number"),
    [
        (ioctl.TUNSETIFF, _WRITE, 202),
        (ioctl.TUNSETPERSIST, _WRITE, 203),
        (ioctl.TUNSETOWNER, _WRITE, 204),
        (ioctl.TUNSETGROUP, _WRITE, 206),
        (ioctl.TUNGETFEATURES, _READ, 207),
        (ioctl.TUNSETOFFLOAD, _WRITE, 208),
        (ioctl.TUNGETIFF, _READ, 210),
        (ioctl.TUNSETVNETHDRSZ, _WRITE, 216),
    ],
)
def test_ioctl_numbers_follow_the_ioc_encoding(value: int, direction: int, number: int) -> None:
    assert value == _ioc(direction, number)


@pytest.mark.skipif(not IF_TUN_H.exists(), reason="kernel headers not installed")
def test_flags_match_the_kernel_header() -> None:
    defines = dict(
        re.findall(r"^#define\s+(IFF_\w+)\s+(0x[0-9a-fA-F]+)", IF_TUN_H.read_text(), re.M)
    )
    for name in ("IFF_TUN", "IFF_TAP", "IFF_MULTI_QUEUE", "IFF_PERSIST", "IFF_NO_PI"):
        assert getattr(ioctl, name) == int(defines[name], 16), name
    assert int(defines["IFF_VNET_HDR"], 16) == ioctl.IFF_VNET_HDR
    assert int(defines["IFF_TUN_EXCL"], 16) == ioctl.IFF_TUN_EXCL
    offloads = dict(
        re.findall(r"^#define\s+(TUN_F_\w+)\s+(0x[0-9a-fA-F]+)", IF_TUN_H.read_text(), re.M)
    )
    for name in ("TUN_F_CSUM", "TUN_F_TSO4", "TUN_F_TSO6", "TUN_F_TSO_ECN"):
        assert getattr(ioctl, name) == int(offloads[name], 16), name


def test_ifreq_is_the_full_40_byte_struct_with_flags_after_the_name() -> None:
    packed = ioctl.pack_ifreq(b"tun0", 0x1001)
    assert len(packed) == 40
    assert packed[:16] == b"tun0" + bytes(12)
    assert packed[16:18] == struct.pack("=H", 0x1001)  # host byte order, as the kernel reads it
    assert packed[18:] == bytes(22)


def test_unpack_stops_at_the_first_nul() -> None:
    raw = b"tap7\0garbage!!!!" + struct.pack("=H", 0x0802) + bytes(22)
    assert ioctl.unpack_ifreq(raw) == ("tap7", 0x0802)


_name_chars = st.characters(exclude_characters="/: \t\n\v\f\r\x00%\xa0", codec="utf-8")
valid_names = (
    st.text(_name_chars, min_size=1, max_size=15)
    .filter(lambda n: len(n.encode()) <= 15 and n not in (".", ".."))
    .filter(lambda n: 0xA0 not in n.encode())
)


@given(valid_names, st.integers(0, 0xFFFF))
def test_ifreq_round_trip(name: str, flags: int) -> None:
    assert ioctl.unpack_ifreq(ioctl.pack_ifreq(ioctl.encode_name(name), flags)) == (name, flags)


@pytest.mark.parametrize(
    "name", ["tun0", "a", "x" * 15, "wg-vpn.1", "tap_Ä", "é" * 7, "...", "t.0"]
)
def test_valid_names(name: str) -> None:
    assert ioctl.encode_name(name) == name.encode()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("x" * 16, "16 bytes"),
        ("é" * 8, "16 bytes"),
        (".", "reserved"),
        ("..", "reserved"),
        ("a/b", "'/'"),
        ("a b", "' '"),
        ("a:b", "':'"),
        ("tab\there", "'\\t'"),
        ("nbsp\u00a0", "'\\xa0'"),  # UTF-8 C2 A0: the kernel's isspace() says 0xA0 is space
        ("tà", "'\\xa0'"),  # UTF-8 C3 A0: refused by the kernel for the same reason
        ("nul\0", "'\\x00'"),
        ("tun%d", "template"),
    ],
)
def test_invalid_names_are_refused_with_the_reason(name: str, why: str) -> None:
    with pytest.raises(InvalidDeviceName, match="invalid interface name") as info:
        ioctl.encode_name(name)
    assert why in str(info.value)


def test_templates_need_exactly_one_percent_d() -> None:
    assert ioctl.encode_name("tun%d", allow_template=True) == b"tun%d"
    assert ioctl.encode_name("%dvpn", allow_template=True) == b"%dvpn"
    for bad in ("tun%s", "t%d%d", "t%%d", "t%"):
        with pytest.raises(InvalidDeviceName, match="exactly one '%d'"):
            ioctl.encode_name(bad, allow_template=True)


@given(st.text(max_size=40))
def test_any_text_is_either_a_valid_name_or_refused(name: str) -> None:
    try:
        raw = ioctl.encode_name(name, allow_template=True)
    except InvalidDeviceName:
        return
    assert 1 <= len(raw) < ioctl.IFNAMSIZ
    assert not set(raw) & set(b"/: \t\n\v\f\r\x00\xa0")
    assert raw not in (b".", b"..")


@given(
    valid_names.filter(lambda n: len(n.encode()) <= 14),
    st.integers(0, 14),
    st.sampled_from("/: \t\n\r\x00"),
)
def test_a_forbidden_character_anywhere_is_refused(name: str, at: int, bad: str) -> None:
    spoiled = name[:at] + bad + name[at:]
    with pytest.raises(InvalidDeviceName, match="must not contain"):
        ioctl.encode_name(spoiled)


@pytest.mark.parametrize(
    ("flags", "mode", "pi", "multi_queue", "vnet_hdr", "persist"),
    [
        (0x1801, Mode.TUN, False, False, False, True),  # `ip tuntap add mode tun`
        (0x1802, Mode.TAP, False, False, False, True),  # `ip tuntap add mode tap`
        (0x0001, Mode.TUN, True, False, False, False),  # TUN with PI, temporary
        (0x1101, Mode.TUN, False, True, False, False),  # multi-queue
        (0x5802, Mode.TAP, False, False, True, True),  # TAP, vnet header, persistent
        (0x0902, Mode.TAP, True, True, False, True),
    ],
)
def test_decoding_tun_flags(
    flags: int, mode: Mode, pi: bool, multi_queue: bool, vnet_hdr: bool, persist: bool
) -> None:
    config = DeviceConfig.from_ifr_flags("x", flags)
    assert (config.mode, config.pi, config.multi_queue, config.vnet_hdr) == (
        mode,
        pi,
        multi_queue,
        vnet_hdr,
    )
    assert bool(flags & ioctl.IFF_PERSIST) is persist


@given(st.sampled_from(Mode), st.booleans(), st.booleans(), st.booleans())
def test_config_flags_round_trip(mode: Mode, pi: bool, multi_queue: bool, vnet_hdr: bool) -> None:
    config = DeviceConfig("t", mode, pi, multi_queue, vnet_hdr)
    assert DeviceConfig.from_ifr_flags("t", config.ifr_flags) == config
    assert DeviceConfig.from_ifr_flags("t", config.ifr_flags | ioctl.IFF_PERSIST) == config


@pytest.mark.parametrize("flags", [0x0000, 0x1000, 0x0003, 0x0004])
def test_flags_without_a_device_type_are_refused(flags: int) -> None:
    with pytest.raises(TunError, match="unknown TUN/TAP device type"):
        Mode.from_flags(flags)


def test_flag_names() -> None:
    assert ioctl.flag_names(0x1801) == ["TUN", "PERSIST", "NO_PI"]
    assert ioctl.flag_names(0x0102) == ["TAP", "MULTI_QUEUE"]
    assert ioctl.flag_names(0x10000) == ["0x10000"]
    assert ioctl.flag_names(0) == []
