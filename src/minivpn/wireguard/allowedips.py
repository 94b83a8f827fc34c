"""Allowed IPs: WireGuard's cryptokey routing table.

Each peer owns a set of IP prefixes.  The table answers two questions on every packet:

* sending: which peer does the packet to *destination* go to?  (no peer: drop it)
* receiving: is the decrypted packet's *source* inside the prefixes of the peer that sent it?
  (if not, drop it: a peer may only speak for the addresses it was given)

Both are longest-prefix matches, and a prefix belongs to exactly one peer: inserting a prefix
that another peer owns *moves* it.  That is how ``wg set wg0 peer B allowed-ips 10.0.0.0/24``
takes a subnet away from peer A (wireguard-go ``device/allowedips.go``; the kernel's netns
self-test relies on it).

How lookups work here
---------------------
wireguard-go and the kernel use a binary trie per address family.  In Python, walking a trie
costs an attribute lookup and a branch per node, up to 32 (IPv4) or 128 (IPv6) of them.  This
module uses a layout that is faster in Python and simpler to read: per family, one ``dict`` per
prefix length in use, mapping ``address >> (width - length)`` (the network bits of the address)
to the peer.  A lookup turns the packet's address into an ``int`` once and probes those dicts
from the longest prefix length to the shortest; the first hit is the longest match.  Its cost is
one dict probe per *distinct prefix length in use*, which in real configurations is a handful
(say /32, /24 and /0), and never more than 33 or 129.  Insertion and removal are a dict operation
plus, when a prefix length appears or disappears, rebuilding the short list of lengths.

For ``wg show`` and UAPI ``get``, every peer's prefixes are also kept in insertion order (an
ordered dict per peer), as wireguard-go keeps a per-peer list: re-inserting a prefix moves it to
the end of its owner's list, and moving it to another peer appends it there.

Prefixes as integers
--------------------
A configuration can hold a hundred thousand prefixes: WireGuard's netns test gives one peer
130,560 of them with ``wg setconf``.  An ``ipaddress`` network is convenient, but building one
costs microseconds (it parses, validates and normalises), and so does turning it back into
text; a hundred thousand of each add up to seconds.  So the table stores :class:`Prefix`
values, three integers (IP version, prefix length, network address): the UAPI parser checks
the text itself and builds them directly (:mod:`minivpn.wireguard.uapi`), and ``ipaddress``
networks are only built where the API hands them out (:meth:`AllowedIPs.entries_for_peer`).
:meth:`AllowedIPs.insert` and :meth:`AllowedIPs.remove` take networks (or text) for
convenience; :meth:`AllowedIPs.insert_prefix`, :meth:`AllowedIPs.remove_prefix` and
:meth:`AllowedIPs.prefixes_for_peer` are their fast counterparts.

Peers are arbitrary objects compared by identity (``is``), so the table is generic over the
peer type; ``None`` cannot be a peer, since :meth:`AllowedIPs.lookup` uses it for "no match".
"""

from __future__ import annotations

import ipaddress
from typing import Generic, TypeAlias, TypeVar

import attrs

from minivpn.wireguard.errors import WireGuardError

__all__ = ["AllowedIPs", "IPAddress", "IPNetwork", "InvalidNetwork", "Network", "Prefix"]

# The ``ipaddress`` unions that config.py and uapi.py annotate with are written once, here:
# this module imports nothing from minivpn.wireguard but errors, so both can import it.
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
#: An IPv4 or IPv6 network: the name this module's API uses for :data:`IPNetwork`.
Network: TypeAlias = IPNetwork

PeerT = TypeVar("PeerT")

#: The key of one prefix in the tables: (address length in bytes, prefix length, network
#: bits).  A plain tuple: it is built on every insertion and removal, and hashed in C.
_PrefixKey: TypeAlias = tuple[int, int, int]

#: Address width in bits, by IP version.
_WIDTH = {4: 32, 6: 128}


class InvalidNetwork(WireGuardError):
    """A prefix is not an IPv4 or IPv6 network (text not in CIDR notation, length out of
    range, or a :class:`Prefix` with host bits set)."""


def _check_address(prefix: Prefix, _attribute: object, address: int) -> None:
    """Validate a :class:`Prefix` (attrs runs this once ``version`` and ``length`` are set)."""
    width = _WIDTH.get(prefix.version)
    if width is None:
        raise InvalidNetwork(f"IP version {prefix.version!r} is neither 4 nor 6")
    host_bits = width - prefix.length
    if not 0 <= host_bits <= width:
        raise InvalidNetwork(f"prefix length {prefix.length!r} is not in 0..{width}")
    # The address must fit in the width and have nothing set after the first *length* bits.
    if not 0 <= address < 1 << width or address & ((1 << host_bits) - 1):
        raise InvalidNetwork(f"{address:#x} is not an IPv{prefix.version} /{prefix.length} network")


@attrs.frozen
class Prefix:
    """An IP prefix (a network) as three integers: cheap to build, hash and compare.

    It stands for the same thing as an ``ipaddress`` network and converts both ways
    (:meth:`from_network`, :meth:`to_network`); the module docstring says why it exists.

    Attributes:
        version: 4 or 6.
        length: the prefix length: 0..32 for IPv4, 0..128 for IPv6.
        address: the network address as an integer, host bits cleared.

    Raises:
        InvalidNetwork: the fields do not make a network (another version, a length out of
            range, an address too wide or with host bits set).
    """

    version: int
    length: int
    address: int = attrs.field(validator=_check_address)

    @classmethod
    def from_network(cls, network: Network) -> Prefix:
        """The prefix of an ``ipaddress`` network (which never has host bits set)."""
        return cls(network.version, network.prefixlen, int(network.network_address))

    def to_network(self) -> Network:
        """The prefix as an ``ipaddress.IPv4Network`` or ``IPv6Network``."""
        if self.version == 4:
            return ipaddress.IPv4Network((self.address, self.length))
        return ipaddress.IPv6Network((self.address, self.length))

    def __str__(self) -> str:
        """The prefix as ``ipaddress`` writes it, ``10.0.0.0/8`` (for people; not fast)."""
        return str(self.to_network())


def _as_network(network: Network | str) -> Network:
    """*network* as an ``IPv4Network``/``IPv6Network`` with its host bits cleared."""
    if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return network  # network objects never have host bits set
    try:
        return ipaddress.ip_network(network, strict=False)
    except ValueError as exc:
        raise InvalidNetwork(f"not an IP network in CIDR notation: {network!r}") from exc


class _Family(Generic[PeerT]):
    """The prefixes of one address family (IPv4 or IPv6)."""

    __slots__ = ("by_length", "search_order", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        #: prefix length -> {network bits: peer}
        self.by_length: dict[int, dict[int, PeerT]] = {}
        #: (shift, table) for every prefix length in use, longest prefix first: the lookup
        #: shifts the address right by ``shift`` to keep only that many leading bits.
        self.search_order: tuple[tuple[int, dict[int, PeerT]], ...] = ()

    def rebuild_search_order(self) -> None:
        self.search_order = tuple(
            (self.width - length, self.by_length[length])
            for length in sorted(self.by_length, reverse=True)
        )


class AllowedIPs(Generic[PeerT]):
    """Longest-prefix-match table from IPv4/IPv6 prefixes to peers.

    Example::

        table: AllowedIPs[Peer] = AllowedIPs()
        table.insert("10.0.0.0/24", alice)
        table.insert("10.0.0.7/32", bob)
        table.lookup(bytes([10, 0, 0, 7]))   # bob
        table.lookup(bytes([10, 0, 0, 8]))   # alice
    """

    def __init__(self) -> None:
        self._v4: _Family[PeerT] = _Family(32)
        self._v6: _Family[PeerT] = _Family(128)
        #: Address length in bytes -> family, for lookup().
        self._by_address_length = {4: self._v4, 16: self._v6}
        #: id(peer) -> that peer's prefixes in insertion order.  The ids stay valid because the
        #: tables hold a reference to every peer that has an entry here.
        self._entries: dict[int, dict[_PrefixKey, Prefix]] = {}

    def _key(self, prefix: Prefix) -> tuple[_Family[PeerT], _PrefixKey]:
        family = self._v4 if prefix.version == 4 else self._v6
        length = prefix.length
        bits = prefix.address >> (family.width - length)
        return family, (family.width // 8, length, bits)

    def insert(self, network: Network | str, peer: PeerT) -> Network:
        """Make *peer* the owner of *network*, taking it from its previous owner if any.

        Args:
            network: the prefix; host bits are cleared (``10.0.0.7/24`` means ``10.0.0.0/24``).
            peer: the new owner.

        Returns:
            The prefix as stored, with host bits cleared.

        Raises:
            InvalidNetwork: *network* is a string that is not a prefix.
        """
        network = _as_network(network)
        self.insert_prefix(Prefix.from_network(network), peer)
        return network

    def insert_prefix(self, prefix: Prefix, peer: PeerT) -> None:
        """:meth:`insert` for a :class:`Prefix` (no ``ipaddress`` objects involved)."""
        family, key = self._key(prefix)
        _, length, bits = key
        table = family.by_length.get(length)
        if table is None:
            table = family.by_length[length] = {}
            family.rebuild_search_order()
        previous = table.get(bits)
        if previous is not None:
            self._forget(previous, key)
        table[bits] = peer
        # Appending to a dict puts the prefix last in its owner's list, like wireguard-go.
        entries = self._entries.get(id(peer))
        if entries is None:
            entries = self._entries[id(peer)] = {}
        entries[key] = prefix

    def remove(self, network: Network | str, peer: PeerT) -> bool:
        """Remove *network* if, and only if, *peer* owns it.

        Returns:
            True if the prefix was removed.

        Raises:
            InvalidNetwork: *network* is a string that is not a prefix.
        """
        return self.remove_prefix(Prefix.from_network(_as_network(network)), peer)

    def remove_prefix(self, prefix: Prefix, peer: PeerT) -> bool:
        """:meth:`remove` for a :class:`Prefix`."""
        family, key = self._key(prefix)
        _, length, bits = key
        table = family.by_length.get(length)
        if table is None or table.get(bits) is not peer:
            return False
        self._drop(family, length, bits)
        self._forget(peer, key)
        return True

    def remove_by_peer(self, peer: PeerT) -> None:
        """Remove every prefix *peer* owns."""
        for address_length, length, bits in self._entries.pop(id(peer), {}):
            family = self._v4 if address_length == 4 else self._v6
            self._drop(family, length, bits)

    def entries_for_peer(self, peer: PeerT) -> list[Network]:
        """The prefixes *peer* owns, in the order they were (last) inserted."""
        return [prefix.to_network() for prefix in self.prefixes_for_peer(peer)]

    def prefixes_for_peer(self, peer: PeerT) -> list[Prefix]:
        """:meth:`entries_for_peer` as :class:`Prefix` values (cheaper: nothing is built)."""
        return list(self._entries.get(id(peer), {}).values())

    def lookup(self, address: bytes) -> PeerT | None:
        """The peer owning the longest prefix that contains *address*.

        This is on the per-packet path (destination of every outgoing packet, source of every
        incoming one), so it takes the raw address bytes straight out of the IP header.

        Args:
            address: 4 bytes (IPv4) or 16 bytes (IPv6), network byte order.

        Returns:
            The peer, or None if no prefix matches (or *address* has another length).
        """
        family = self._by_address_length.get(len(address))
        if family is None:
            return None
        value = int.from_bytes(address, "big")
        for shift, table in family.search_order:
            peer = table.get(value >> shift)
            if peer is not None:
                return peer
        return None

    def lookup_prefix(self, address: bytes) -> tuple[Prefix, PeerT] | None:
        """The longest prefix that contains *address*, and its peer; None if none does.

        What :meth:`lookup` answers, with the prefix that decided it: for traces and
        diagnoses, not for the per-packet path.
        """
        family = self._by_address_length.get(len(address))
        if family is None:
            return None
        value = int.from_bytes(address, "big")
        for shift, table in family.search_order:
            bits = value >> shift
            peer = table.get(bits)
            if peer is not None:
                key = (len(address), family.width - shift, bits)
                return self._entries[id(peer)][key], peer
        return None

    def __len__(self) -> int:
        """The number of prefixes in the table."""
        return sum(len(entries) for entries in self._entries.values())

    def _drop(self, family: _Family[PeerT], length: int, bits: int) -> None:
        """Delete one prefix from a family's tables (not from the per-peer lists)."""
        table = family.by_length[length]
        del table[bits]
        if not table:
            del family.by_length[length]
            family.rebuild_search_order()

    def _forget(self, peer: PeerT, key: _PrefixKey) -> None:
        """Delete one prefix from *peer*'s list (not from the family's tables)."""
        entries = self._entries[id(peer)]
        del entries[key]
        if not entries:
            del self._entries[id(peer)]
