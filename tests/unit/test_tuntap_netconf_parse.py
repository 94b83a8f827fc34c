"""Argument checking of minivpn.netconf, and DeviceInfo's derived fields: no kernel needed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivpn import netconf
from minivpn.tuntap.ioctl import Mode
from minivpn.tuntap.listing import DeviceInfo


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.9.0.1/24", "10.9.0.1/24"),
        ("fd00:9::1/64", "fd00:9::1/64"),
        ("fd00:0009:0000::0001/64", "fd00:9::1/64"),
        ("192.0.2.7/32", "192.0.2.7/32"),
    ],
)
def test_interface_addresses(text: str, expected: str) -> None:
    assert str(netconf.parse_interface(text)) == expected


@pytest.mark.parametrize("text", ["foo", "10.9.0.1", "10.9.0.1/33", "10.9.0/24", "", "fd00::1/129"])
def test_bad_interface_addresses_say_what_is_expected(text: str) -> None:
    with pytest.raises(netconf.NetconfError, match=r"invalid address .*expected ADDR/PREFIX"):
        netconf.parse_interface(text)


def test_route_with_host_bits_suggests_the_network() -> None:
    with pytest.raises(
        netconf.NetconfError, match=r"host bits are set \(did you mean 10\.10\.0\.0/16"
    ):
        netconf.parse_network("10.10.0.1/16")


@pytest.mark.parametrize("text", ["10.10.0.0/16", "fd00:10::/48", "0.0.0.0/0", "203.0.113.5"])
def test_routes(text: str) -> None:
    assert netconf.parse_network(text) == ipaddress.ip_network(text)


@given(st.text(max_size=50))
def test_any_text_is_an_address_or_a_netconf_error(text: str) -> None:
    for parse in (netconf.parse_interface, netconf.parse_network):
        message = ""
        try:
            parse(text)
        except netconf.NetconfError as exc:
            message = str(exc)
        assert not message or repr(text) in message


@given(st.ip_addresses(), st.integers(0, 128))
def test_parsed_interfaces_round_trip(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int
) -> None:
    prefix = min(prefix, address.max_prefixlen)
    parsed = netconf.parse_interface(f"{address}/{prefix}")
    assert (parsed.ip, parsed.network.prefixlen) == (address, prefix)


def _info(up: bool, operstate: str) -> DeviceInfo:
    return DeviceInfo(
        name="t0",
        mode=Mode.TUN,
        pi=False,
        multi_queue=False,
        vnet_hdr=False,
        persist=True,
        owner=None,
        group=65534,
        mtu=1500,
        up=up,
        operstate=operstate,
        ifindex=3,
        addresses=("10.9.0.1/24",),
        mac=None,
        tun_flags=0x1801,
    )


@pytest.mark.parametrize(
    ("up", "operstate", "state"),
    [
        (False, "down", "down"),
        (True, "unknown", "up"),  # what an attached, up TUN reports
        (True, "up", "up"),
        (True, "down", "no-carrier"),  # up, but nobody attached
        (True, "dormant", "dormant"),
    ],
)
def test_state_for_humans(up: bool, operstate: str, state: str) -> None:
    assert _info(up, operstate).state == state


def test_json_shape_is_stable() -> None:
    assert _info(True, "down").to_json() == {
        "name": "t0",
        "mode": "tun",
        "pi": False,
        "multi_queue": False,
        "vnet_hdr": False,
        "persist": True,
        "owner": None,
        "group": 65534,
        "mtu": 1500,
        "up": True,
        "operstate": "down",
        "state": "no-carrier",
        "ifindex": 3,
        "addresses": ["10.9.0.1/24"],
        "mac": None,
        "tun_flags": 0x1801,
        "num_queues": None,
    }
