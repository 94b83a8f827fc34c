"""minivpn.netconf on a real TUN link, checked against what ``ip`` reports."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from minivpn import netconf
from minivpn.tuntap import device as tun_device

if TYPE_CHECKING:
    from collections.abc import Iterator

_names = itertools.count()


def ip_json(*args: str) -> list[dict[str, Any]]:
    """``ip -json ARGS``, parsed."""
    out = subprocess.run(
        ["ip", "-json", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


@pytest.fixture
def link() -> Iterator[str]:
    """A temporary TUN link, held open for the test (so it has carrier once up)."""
    fd, name, _ = tun_device.open_device(f"mvnc{next(_names)}")
    try:
        yield name
    finally:
        os.close(fd)


def test_up_mtu_and_state(link: str) -> None:
    assert netconf.link_state(link).up is False
    netconf.set_link_up(link)
    netconf.set_mtu(link, 1420)
    state = netconf.link_state(link)
    (shown,) = ip_json("link", "show", link)
    assert (state.up, state.mtu, state.index) == (True, 1420, shown["ifindex"])
    assert "UP" in shown["flags"]
    assert state.operstate == shown["operstate"]
    netconf.set_link_up(link, up=False)
    assert netconf.link_state(link).up is False
    assert netconf.link_index(link) == shown["ifindex"]


def test_gso_max_size(link: str) -> None:
    netconf.set_gso_max_size(link, 32768)
    (shown,) = ip_json("-details", "link", "show", link)
    assert shown["gso_max_size"] == 32768


def test_addresses_v4_and_v6_are_usable_at_once(link: str) -> None:
    netconf.set_link_up(link)
    netconf.add_address(link, "10.9.10.1/24")
    netconf.add_address(link, "fd00:910::1/64")
    netconf.add_address(link, "10.9.10.1/24")  # already there: not an error
    assert netconf.addresses(link)[:2] == ["10.9.10.1/24", "fd00:910::1/64"]

    (shown,) = ip_json("addr", "show", "dev", link)
    infos = {a["local"]: a for a in shown["addr_info"]}
    assert infos["10.9.10.1"]["prefixlen"] == 24
    v6 = infos["fd00:910::1"]
    assert v6["prefixlen"] == 64
    assert v6.get("nodad") is True  # added with IFA_F_NODAD ...
    assert not v6.get("tentative")  # ... so not waiting for duplicate address detection

    netconf.del_address(link, "10.9.10.1/24")
    assert "10.9.10.1/24" not in netconf.addresses(link)
    netconf.del_address(link, "10.9.10.1/24", missing_ok=True)
    with pytest.raises(netconf.NetconfError, match=r"cannot remove address 10\.9\.10\.1/24"):
        netconf.del_address(link, "10.9.10.1/24")


def test_routes(link: str) -> None:
    netconf.set_link_up(link)
    netconf.add_route(link, "10.10.0.0/16")
    netconf.add_route(link, "10.10.0.0/16")  # the same route again: not an error
    netconf.add_route(link, "fd00:1010::/48")
    netconf.add_route(link, "10.11.0.0/16", table=100)
    main4 = [r["dst"] for r in ip_json("route", "show", "dev", link)]
    assert main4 == ["10.10.0.0/16"]
    assert [r["dst"] for r in ip_json("-6", "route", "show", "dev", link)].count(
        "fd00:1010::/48"
    ) == 1
    assert [r["dst"] for r in ip_json("route", "show", "table", "100")] == ["10.11.0.0/16"]

    netconf.del_route(link, "10.11.0.0/16", table=100)
    assert ip_json("route", "show", "table", "100") == []
    netconf.del_route(link, "10.11.0.0/16", table=100, missing_ok=True)
    with pytest.raises(netconf.NetconfError, match=r"cannot delete route 10\.11\.0\.0/16"):
        netconf.del_route(link, "10.11.0.0/16", table=100)


def test_a_route_through_another_link_is_a_conflict(link: str) -> None:
    fd, other, _ = tun_device.open_device("mvncother")
    try:
        netconf.set_link_up(link)
        netconf.set_link_up(other)
        netconf.add_route(other, "10.12.0.0/16")
        with pytest.raises(netconf.NetconfError, match="through another device already exists"):
            netconf.add_route(link, "10.12.0.0/16")
    finally:
        os.close(fd)


def test_configure_link_changes_only_what_differs(link: str) -> None:
    assert netconf.configure_link(
        link, addresses=["10.9.11.1/24"], mtu=1400, up=True, routes=["10.13.0.0/16"]
    )
    state = netconf.link_state(link)
    assert (state.up, state.mtu) == (True, 1400)
    assert "10.9.11.1/24" in netconf.addresses(link)
    assert [r["dst"] for r in ip_json("route", "show", "dev", link)] == [
        "10.9.11.0/24",
        "10.13.0.0/16",
    ]
    # Everything already as asked: succeeds again without changes.
    assert netconf.configure_link(
        link, addresses=["10.9.11.1/24"], mtu=1400, up=True, routes=["10.13.0.0/16"]
    )


def test_errors_name_the_link_and_the_problem(link: str) -> None:
    with pytest.raises(netconf.NetconfError, match="no network device named 'mvncnope'"):
        netconf.add_address("mvncnope", "10.9.12.1/24")
    with pytest.raises(netconf.NetconfError, match="invalid address 'foo'"):
        netconf.add_address(link, "foo")
    with pytest.raises(netconf.NetconfError, match=r"host bits are set \(did you mean"):
        netconf.add_route(link, "10.14.0.1/16")
    with pytest.raises(netconf.NetconfError, match="68 to 65535"):
        netconf.set_mtu(link, 10)


def test_a_veth_pair_with_its_other_end_in_another_namespace() -> None:
    namespace = f"mvncns{next(_names)}"
    subprocess.run(["ip", "netns", "add", namespace], check=True, timeout=30)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        netconf.add_veth("mvncv0", "mvncv1", peer_namespace=fd)
        (here,) = ip_json("link", "show", "mvncv0")
        (there,) = ip_json("-n", namespace, "link", "show", "mvncv1")
        assert here["link_type"] == there["link_type"] == "ether"
        assert here["ifindex"] == there["link_index"]  # each end names the other
        assert "mvncv1" not in {link["ifname"] for link in ip_json("link", "show")}
        with pytest.raises(netconf.NetconfError, match="cannot create the veth pair mvncv0"):
            netconf.add_veth("mvncv0", "mvncv2")
    finally:
        os.close(fd)
        subprocess.run(["ip", "link", "del", "mvncv0"], check=False, timeout=30)
        subprocess.run(["ip", "netns", "del", namespace], check=False, timeout=30)
