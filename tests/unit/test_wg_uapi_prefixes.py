"""Tests of how UAPI reads and writes prefixes (``allowed_ip=``), and of the :class:`Prefix` value.

The UAPI module parses and formats prefixes with its own integer code (``ipaddress`` was too
slow for configurations of 100,000 prefixes).  These tests hold that code to the standard
library: an oracle built on ``ipaddress`` plus the rules wireguard-go applies on top (decimal
prefix length without sign or leading zeros, no zone, host bits cleared), on generated text
that is mostly valid or nearly so; and to RFC 5952 for the text written back.  The errno of
each kind of bad prefix is checked against a real wireguard-go by
tests/netns/test_uapi_reference.py.
"""

from __future__ import annotations

import ipaddress
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivpn.wireguard.allowedips import AllowedIPs, InvalidNetwork, Network, Prefix
from minivpn.wireguard.keys import PublicKey
from minivpn.wireguard.uapi import (
    EINVAL,
    AllowedIPChange,
    SetRequest,
    UapiRequestParser,
    format_allowed_ip,
)

PEER_HEX = bytes(range(100, 132)).hex()


def parse_allowed_ip(text: str) -> SetRequest:
    """Send one ``allowed_ip=<text>`` line through the real parser."""
    data = f"set=1\npublic_key={PEER_HEX}\nallowed_ip={text}\n\n".encode()
    [event] = UapiRequestParser().feed(data)
    assert isinstance(event, SetRequest)
    return event


def oracle_parse(text: str) -> Prefix | None:
    """What ``allowed_ip=<text>`` means, by ``ipaddress`` and wireguard-go's extra rules."""
    address_text, slash, length_text = text.rpartition("/")
    if not slash or not re.fullmatch(r"0|[1-9][0-9]*", length_text):
        return None
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    if int(length_text) > address.max_prefixlen:
        return None
    return Prefix.from_network(ipaddress.ip_network((address, int(length_text)), strict=False))


def oracle_format(network: Network) -> str:
    """Go's ``netip.Prefix.String``: ``ipaddress``'s text, but IPv4-mapped keeps dotted form."""
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return f"::ffff:{mapped}/{network.prefixlen}"
    return str(network)


# --- generated prefix text --------------------------------------------------------------------


@st.composite
def _ipv4_texts(draw: st.DrawFn) -> str:
    octets = draw(
        st.lists(
            st.sampled_from([0, 1, 10, 99, 100, 199, 200, 255]) | st.integers(0, 255),
            min_size=4,
            max_size=4,
        )
    )
    # Mostly plain decimal; sometimes a leading zero, which Go and ipaddress both refuse.
    return ".".join(draw(st.sampled_from([str(o), f"0{o}", f"{o:03d}"])) for o in octets)


@st.composite
def _ipv6_texts(draw: st.DrawFn) -> str:
    values = draw(
        st.lists(
            st.sampled_from([0, 0, 0, 1, 0xABC, 0xFFFF]) | st.integers(0, 0xFFFF),
            min_size=8,
            max_size=8,
        )
    )
    style = draw(st.sampled_from(["compressed", "exploded", "padded", "upper", "dotted", "zone"]))
    address = ipaddress.IPv6Address(struct.pack("!8H", *values))
    if style == "exploded":
        return address.exploded
    if style == "upper":
        return str(address).upper()
    if style == "dotted":  # an IPv4 tail, ::ffff:1.2.3.4 or any other
        head = ":".join(f"{value:x}" for value in values[:6])
        return f"{head}:{ipaddress.IPv4Address(struct.pack('!2H', *values[6:]))}"
    if style == "zone":
        return f"{address}%{draw(st.sampled_from(['eth0', '1', '']))}"
    groups = [f"{value:x}" for value in values]
    if style == "padded":
        groups = [group.zfill(draw(st.integers(1, 5))) for group in groups]
    # "::" in place of any run of zero groups (one or more), or none.
    runs = [(i, j) for i in range(8) for j in range(i + 1, 9) if set(values[i:j]) == {0}]
    compress: bool = draw(st.booleans())
    if runs and compress:
        i, j = draw(st.sampled_from(runs))
        return ":".join(groups[:i]) + "::" + ":".join(groups[j:])
    return ":".join(groups)


_lengths = st.integers(0, 140).map(str) | st.sampled_from(["00", "08", "+8", "-1", " 8", "", "٣"])


@st.composite
def _prefix_texts(draw: st.DrawFn) -> str:
    address = draw(_ipv4_texts() | _ipv6_texts())
    text = f"{address}/{draw(_lengths)}"
    if draw(st.integers(0, 3)) == 0:  # a one-character slip: insert, delete or replace
        position = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from("0129afAF:./%x "))
        skip = draw(st.integers(0, 1))
        text = text[:position] + char + text[position + skip :]
    return text


_arbitrary_texts = st.text(alphabet="0123456789abcdefABCDEF:./%x", max_size=45)


@settings(max_examples=2000)
@given(text=_prefix_texts() | _arbitrary_texts)
def test_allowed_ip_text_is_read_as_ipaddress_reads_it(text: str) -> None:
    request = parse_allowed_ip(text)
    expected = oracle_parse(text)
    if expected is None:
        assert request.errno == EINVAL
        assert request.peers[0].allowed_ips == ()  # the peer, as before the bad line
    else:
        assert request.errno == 0
        assert request.peers[0].allowed_ips == (AllowedIPChange(expected),)


def test_prefix_text_examples() -> None:
    cases = {
        "10.1.2.3/8": Prefix(4, 8, 0x0A000000),
        "0.0.0.0/0": Prefix(4, 0, 0),
        "255.255.255.255/32": Prefix(4, 32, 0xFFFFFFFF),
        "FD00::1/8": Prefix(6, 8, 0xFD << 120),
        "::/0": Prefix(6, 0, 0),
        "1:2:3:4:5:6:7::/128": Prefix(6, 128, 0x0001000200030004000500060007 << 16),
        "::ffff:1.2.3.4/128": Prefix(6, 128, 0xFFFF01020304),
    }
    for text, expected in cases.items():
        assert parse_allowed_ip(text).peers[0].allowed_ips[0].prefix == expected, text
    for bad in (
        "10.0.0.0/33",
        "10.0.0.0/08",
        "010.0.0.0/8",
        "fd00::1%eth0/64",
        "1::2::3/64",
        "1:2:3:4:5:6:7:8::/64",
        "12345::/16",
        "::/129",
        "10.0.0.0",
        "/8",
        "fd00::/+8",
    ):
        assert parse_allowed_ip(bad).errno == EINVAL, bad


def test_long_garbage_is_refused_quickly() -> None:
    """Lines up to 64 KiB reach the parser; none of these may make its expressions crawl."""
    for text in ("a:" * 30000 + "Z/1", ":" * 60000 + "/1", "1." * 30000 + "/1", "f" * 60000):
        assert parse_allowed_ip(text).errno == EINVAL


# --- writing prefixes back ----------------------------------------------------------------------

_networks = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: ipaddress.IPv4Network(t, strict=False)
    ),
    # Few distinct groups, so that runs of zeros (and ::ffff:0:0/96) come up often.
    st.tuples(
        st.lists(
            st.sampled_from([0, 0, 1, 0xFFFF]) | st.integers(0, 0xFFFF), min_size=8, max_size=8
        ).map(lambda groups: int.from_bytes(struct.pack("!8H", *groups))),
        st.integers(96, 128) | st.integers(0, 128),
    ).map(lambda t: ipaddress.IPv6Network(t, strict=False)),
)


@settings(max_examples=1000)
@given(network=_networks)
def test_format_allowed_ip_writes_what_go_writes(network: Network) -> None:
    prefix = Prefix.from_network(network)
    assert format_allowed_ip(prefix) == format_allowed_ip(network) == oracle_format(network)
    # And it reads back as the same prefix.
    assert parse_allowed_ip(format_allowed_ip(prefix)).peers[0].allowed_ips[0].prefix == prefix


def test_format_allowed_ip_follows_rfc5952() -> None:
    """RFC 5952 section 4.2: compress the longest run of two or more zero groups, the first
    one on a tie; never a single group."""
    cases = {
        "1:0:0:1:0:0:0:1": "1:0:0:1::1",
        "1:0:0:2:3:0:0:4": "1::2:3:0:0:4",
        "1:0:2:3:4:5:6:7": "1:0:2:3:4:5:6:7",
        "0:0:0:0:0:0:0:0": "::",
        "0:0:0:0:0:0:0:1": "::1",
        "1:0:0:0:0:0:0:0": "1::",
        "0:0:1:0:0:0:1:0": "0:0:1::1:0",
        "fd00:0:0:0:0:0:0:0": "fd00::",
        "0:0:0:0:0:ffff:102:304": "::ffff:1.2.3.4",
    }
    for full, expected in cases.items():
        address = int(ipaddress.IPv6Address(full))
        assert format_allowed_ip(Prefix(6, 128, address)) == f"{expected}/128", full


# --- the Prefix value ---------------------------------------------------------------------------


@given(network=_networks)
def test_prefix_converts_both_ways(network: Network) -> None:
    prefix = Prefix.from_network(network)
    assert (prefix.version, prefix.length) == (network.version, network.prefixlen)
    assert prefix.to_network() == network
    assert str(prefix) == str(network)


def test_prefix_refuses_what_is_not_a_network() -> None:
    for version, length, address in [
        (5, 8, 0),  # no such IP version
        (4, 33, 0),
        (4, -1, 0),
        (6, 129, 0),
        (4, 24, 0x0A000001),  # host bits set
        (6, 64, 1),
        (4, 32, 1 << 32),  # too wide
        (4, 0, -1),
    ]:
        with pytest.raises(InvalidNetwork):
            Prefix(version, length, address)


def test_allowed_ip_change_takes_a_network_or_a_prefix() -> None:
    network = ipaddress.ip_network("fd00:1::/32")
    change = AllowedIPChange(network, remove=True)
    assert change == AllowedIPChange(Prefix(6, 32, 0xFD000001 << 96), remove=True)
    assert change.network == network


@settings(max_examples=200)
@given(
    operations=st.lists(
        st.tuples(st.sampled_from(["insert", "remove"]), _networks, st.sampled_from("abc")),
        max_size=30,
    )
)
def test_prefix_methods_match_the_network_methods(
    operations: list[tuple[str, Network, str]],
) -> None:
    """insert_prefix/remove_prefix/prefixes_for_peer do what insert/remove/entries_for_peer do."""
    peers = {name: PublicKey(bytes([ord(name)]) * 32) for name in "abc"}
    by_network: AllowedIPs[PublicKey] = AllowedIPs()
    by_prefix: AllowedIPs[PublicKey] = AllowedIPs()
    for operation, network, name in operations:
        peer, prefix = peers[name], Prefix.from_network(network)
        if operation == "insert":
            by_network.insert(network, peer)
            by_prefix.insert_prefix(prefix, peer)
        else:
            assert by_network.remove(network, peer) == by_prefix.remove_prefix(prefix, peer)
    for peer in peers.values():
        assert by_prefix.entries_for_peer(peer) == by_network.entries_for_peer(peer)
        assert by_prefix.prefixes_for_peer(peer) == [
            Prefix.from_network(network) for network in by_network.entries_for_peer(peer)
        ]
        for network in by_network.entries_for_peer(peer):
            for address in (network.network_address, network.broadcast_address):
                assert by_prefix.lookup(address.packed) is by_network.lookup(address.packed)
    assert len(by_prefix) == len(by_network)
