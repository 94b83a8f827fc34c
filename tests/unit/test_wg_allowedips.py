"""Tests of the cryptokey routing table (minivpn.wireguard.allowedips).

The fixed cases are the kernel's allowedips self-test (wireguard-linux-compat
src/selftest/allowedips.c), re-typed as data; these are pure table lookups, no traffic.  The
property test follows wireguard-go's allowedips_rand_test.go: a slow, obviously correct router
(a list scanned longest prefix first) is the oracle.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivpn.wireguard.allowedips import AllowedIPs, InvalidNetwork, Network


class Peer:
    """A peer stand-in: the table compares peers by identity only."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Peer({self.name})"


def ip4(a: int, b: int, c: int, d: int) -> bytes:
    return bytes([a, b, c, d])


def ip6(a: int, b: int, c: int, d: int) -> bytes:
    return struct.pack("!4I", a, b, c, d)


def net(address: bytes, cidr: int) -> Network:
    return ipaddress.ip_network((address, cidr), strict=False)


def test_kernel_selftest_lookups() -> None:
    a, b, c, d, e, f, g, h = (Peer(n) for n in "abcdefgh")
    t: AllowedIPs[Peer] = AllowedIPs()
    inserts = [
        (ip4(192, 168, 4, 0), 24, a),
        (ip4(192, 168, 4, 4), 32, b),
        (ip4(192, 168, 0, 0), 16, c),
        (ip4(192, 95, 5, 64), 27, d),
        (ip4(192, 95, 5, 65), 27, c),  # replaces the previous entry; host bits masked
        (ip6(0x26075300, 0x60006B00, 0, 0xC05F0543), 128, d),
        (ip6(0x26075300, 0x60006B00, 0, 0), 64, c),
        (ip4(0, 0, 0, 0), 0, e),
        (ip6(0, 0, 0, 0), 0, e),
        (ip6(0, 0, 0, 0), 0, f),  # replaces the previous entry
        (ip6(0x24046800, 0, 0, 0), 32, g),
        (ip6(0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF), 64, h),
        (ip6(0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF), 128, a),
        (ip6(0x24446800, 0x40E40800, 0xDEAEBEEF, 0x0DEFBEEF), 128, c),
        (ip6(0x24446800, 0xF0E40800, 0xEEAEBEEF, 0), 98, b),
        (ip4(64, 15, 112, 0), 20, g),
        (ip4(64, 15, 123, 211), 25, h),
        (ip4(10, 0, 0, 0), 25, a),
        (ip4(10, 0, 0, 128), 25, b),
        (ip4(10, 1, 0, 0), 30, a),
        (ip4(10, 1, 0, 4), 30, b),
        (ip4(10, 1, 0, 8), 29, c),
        (ip4(10, 1, 0, 16), 29, d),
    ]
    for address, cidr, peer in inserts:
        t.insert(net(address, cidr), peer)
    expected = [
        (ip4(192, 168, 4, 20), a),
        (ip4(192, 168, 4, 0), a),
        (ip4(192, 168, 4, 4), b),
        (ip4(192, 168, 200, 182), c),
        (ip4(192, 95, 5, 68), c),
        (ip4(192, 95, 5, 96), e),
        (ip6(0x26075300, 0x60006B00, 0, 0xC05F0543), d),
        (ip6(0x26075300, 0x60006B00, 0, 0xC02E01EE), c),
        (ip6(0x26075300, 0x60006B01, 0, 0), f),
        (ip6(0x24046800, 0x40040806, 0, 0x1006), g),
        (ip6(0x24046800, 0x40040806, 0x1234, 0x5678), g),
        (ip6(0x240467FF, 0x40040806, 0x1234, 0x5678), f),
        (ip6(0x24046801, 0x40040806, 0x1234, 0x5678), f),
        (ip6(0x24046800, 0x40040800, 0x1234, 0x5678), h),
        (ip6(0x24046800, 0x40040800, 0, 0), h),
        (ip6(0x24046800, 0x40040800, 0x10101010, 0x10101010), h),
        (ip6(0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF), a),
        (ip4(64, 15, 116, 26), g),
        (ip4(64, 15, 127, 3), g),
        (ip4(64, 15, 123, 1), g),
        (ip4(64, 15, 123, 128), h),
        (ip4(64, 15, 123, 129), h),
        (ip4(10, 0, 0, 52), a),
        (ip4(10, 0, 0, 220), b),
        (ip4(10, 1, 0, 2), a),
        (ip4(10, 1, 0, 6), b),
        (ip4(10, 1, 0, 10), c),
        (ip4(10, 1, 0, 20), d),
    ]
    assert [(addr, t.lookup(addr)) for addr, _ in expected] == expected

    for first in (1, 64, 128, 192, 255):
        t.insert(net(ip4(first, 0, 0, 0), 32), a)
    t.remove_by_peer(a)
    for first in (1, 64, 128, 192, 255):
        assert t.lookup(ip4(first, 0, 0, 0)) is not a


def test_kernel_selftest_remove_by_peer_nested() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("192.168.0.0/16", a)
    t.insert("192.168.0.0/24", a)
    t.remove_by_peer(a)
    assert t.lookup(ip4(192, 168, 0, 1)) is None
    assert len(t) == 0


def test_kernel_selftest_entries_are_masked() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net(ip4(192, 95, 5, 93), 27), a)
    t.insert(net(ip6(0x26075300, 0x60006B00, 0, 0xC05F0543), 128), a)
    t.insert(net(ip4(10, 1, 0, 20), 29), a)
    t.insert(net(ip6(0x26075300, 0x6D8A6BF8, 0xDAB1F1DF, 0xC05F1523), 83), a)
    t.insert(net(ip6(0x26075300, 0x6D8A6BF8, 0xDAB1F1DF, 0xC05F1523), 21), a)
    assert t.entries_for_peer(a) == [
        net(ip4(192, 95, 5, 64), 27),
        net(ip6(0x26075300, 0x60006B00, 0, 0xC05F0543), 128),
        net(ip4(10, 1, 0, 16), 29),
        net(ip6(0x26075300, 0x6D8A6BF8, 0xDAB1E000, 0), 83),
        net(ip6(0x26075000, 0, 0, 0), 21),
    ]


def test_kernel_selftest_128_long_v6_prefixes() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    addresses = []
    for i in range(128):
        value = (1 << 128) - 1 - (1 << i)  # all ones but one bit
        addresses.append(value.to_bytes(16, "big"))
        t.insert(net(addresses[-1], 128), a)
    assert all(t.lookup(address) is a for address in addresses)
    assert t.lookup(b"\xff" * 16) is None
    t.remove_by_peer(a)
    assert len(t) == 0


def test_insert_for_another_peer_moves_the_prefix() -> None:
    alice, bob = Peer("alice"), Peer("bob")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.0/24", alice)
    t.insert("10.9.0.0/16", alice)
    t.insert("10.0.0.0/24", bob)
    assert t.lookup(ip4(10, 0, 0, 1)) is bob
    assert t.entries_for_peer(alice) == [ipaddress.ip_network("10.9.0.0/16")]
    assert t.entries_for_peer(bob) == [ipaddress.ip_network("10.0.0.0/24")]
    # Removing it "for alice" is a no-op now: only the owner may remove a prefix.
    assert not t.remove("10.0.0.0/24", alice)
    assert t.lookup(ip4(10, 0, 0, 1)) is bob
    assert t.remove("10.0.0.0/24", bob)
    assert t.lookup(ip4(10, 0, 0, 1)) is None
    assert t.entries_for_peer(bob) == []


def test_reinsert_moves_to_the_end_of_the_owners_list() -> None:
    alice = Peer("alice")
    t: AllowedIPs[Peer] = AllowedIPs()
    for prefix in ("10.0.0.0/8", "fd00::/8", "192.0.2.0/24"):
        t.insert(prefix, alice)
    t.insert("10.1.2.3/8", alice)  # same prefix after masking
    assert [str(n) for n in t.entries_for_peer(alice)] == ["fd00::/8", "192.0.2.0/24", "10.0.0.0/8"]
    assert len(t) == 3


def test_default_routes_and_host_routes_per_family() -> None:
    v4, v6, host4, host6 = Peer("v4"), Peer("v6"), Peer("host4"), Peer("host6")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("0.0.0.0/0", v4)
    assert t.lookup(ipaddress.IPv6Address("fd00::1").packed) is None  # families are separate
    t.insert("::/0", v6)
    t.insert("198.51.100.7/32", host4)
    t.insert("fd00::7/128", host6)
    assert t.lookup(ip4(198, 51, 100, 7)) is host4
    assert t.lookup(ip4(198, 51, 100, 8)) is v4
    assert t.lookup(ip4(255, 255, 255, 255)) is v4
    assert t.lookup(ipaddress.IPv6Address("fd00::7").packed) is host6
    assert t.lookup(ipaddress.IPv6Address("fd00::8").packed) is v6
    # An IPv4-mapped IPv6 address is an IPv6 address: it does not match IPv4 prefixes.
    t.remove("::/0", v6)
    assert t.lookup(ipaddress.IPv6Address("::ffff:198.51.100.7").packed) is None


def test_lookup_of_other_lengths_is_none() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("0.0.0.0/0", Peer("x"))
    assert t.lookup(b"") is None
    assert t.lookup(b"\x00" * 5) is None


def test_invalid_network_text() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    for bad in ("10.0.0.0/33", "garbage", "fd00::/129", ""):
        with pytest.raises(InvalidNetwork):
            t.insert(bad, Peer("x"))
    with pytest.raises(InvalidNetwork):
        t.remove("nope", Peer("x"))


def test_insert_returns_the_masked_network() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    assert str(t.insert("fd00:1:2:3::9/40", Peer("x"))) == "fd00:1::/40"


# --- property test against a slow oracle -----------------------------------------------------


class SlowRouter:
    """wireguard-go's SlowRouter: a list of (cidr, network, peer), scanned longest first."""

    def __init__(self) -> None:
        self.routes: list[tuple[int, Network, Peer]] = []

    def insert(self, network: Network, peer: Peer) -> None:
        self.routes = [r for r in self.routes if r[1] != network]
        self.routes.append((network.prefixlen, network, peer))
        self.routes.sort(key=lambda r: -r[0])  # stable: ties keep order, irrelevant for LPM

    def remove(self, network: Network, peer: Peer) -> None:
        self.routes = [r for r in self.routes if not (r[1] == network and r[2] is peer)]

    def remove_by_peer(self, peer: Peer) -> None:
        self.routes = [r for r in self.routes if r[2] is not peer]

    def lookup(self, address: bytes) -> Peer | None:
        ip = ipaddress.ip_address(address)
        for _, network, peer in self.routes:
            if network.version == ip.version and ip in network:
                return peer
        return None

    def networks_of(self, peer: Peer) -> set[Network]:
        return {network for _, network, owner in self.routes if owner is peer}


PEERS = [Peer(str(i)) for i in range(6)]


@st.composite
def _networks(draw: st.DrawFn) -> Network:
    # Few distinct base addresses, so that prefixes nest and collide often.
    version = draw(st.sampled_from([4, 6]))
    width = 32 if version == 4 else 128
    base = draw(st.sampled_from([0, 0x0A000000 << (width - 32), (1 << width) - 1]))
    noise = draw(st.integers(0, (1 << width) - 1)) >> draw(st.integers(0, width))
    length = draw(st.integers(0, width))
    if version == 4:
        return ipaddress.IPv4Network((base ^ noise, length), strict=False)
    return ipaddress.IPv6Network((base ^ noise, length), strict=False)


_operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), _networks(), st.sampled_from(PEERS)),
        st.tuples(st.just("remove"), _networks(), st.sampled_from(PEERS)),
        st.tuples(st.just("remove_by_peer"), st.none(), st.sampled_from(PEERS)),
    ),
    max_size=60,
)


def _probe_addresses(networks: list[Network], extra: list[int]) -> list[bytes]:
    """Addresses at the edges of every network, plus random ones."""
    probes: list[bytes] = []
    for network in networks:
        probes.append(network.network_address.packed)
        probes.append(network.broadcast_address.packed)
        width = network.max_prefixlen
        if network.prefixlen > 0:
            # Just outside the network, on both sides.
            low = int(network.network_address) - 1
            high = int(network.broadcast_address) + 1
            for value in (low, high):
                if 0 <= value < 1 << width:
                    probes.append(value.to_bytes(width // 8, "big"))
    for value in extra:
        probes.append((value & 0xFFFFFFFF).to_bytes(4, "big"))
        probes.append(value.to_bytes(16, "big"))
    return probes


@settings(max_examples=300)
@given(operations=_operations, extra=st.lists(st.integers(0, (1 << 128) - 1), max_size=10))
def test_table_matches_slow_router(
    operations: list[tuple[str, Network | None, Peer]], extra: list[int]
) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    slow = SlowRouter()
    seen: list[Network] = []
    for operation, network, peer in operations:
        if operation == "insert":
            assert network is not None
            table.insert(network, peer)
            slow.insert(network, peer)
            seen.append(network)
        elif operation == "remove":
            assert network is not None
            owned = network in slow.networks_of(peer)
            assert table.remove(network, peer) is owned
            slow.remove(network, peer)
        else:
            table.remove_by_peer(peer)
            slow.remove_by_peer(peer)
    for address in _probe_addresses(seen, extra):
        assert table.lookup(address) is slow.lookup(address), ipaddress.ip_address(address)
    for peer in PEERS:
        entries = table.entries_for_peer(peer)
        assert len(entries) == len(set(entries))
        assert set(entries) == slow.networks_of(peer)
    assert len(table) == len(slow.routes)
