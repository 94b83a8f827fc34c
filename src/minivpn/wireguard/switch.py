"""The learning switch of layer-2 mode: which port an Ethernet frame goes to (sans-IO).

With ``Mode = tap`` (:mod:`minivpn.wireguard.ethernet`) a minivpn interface is an Ethernet
switch whose ports are its peers and its own TAP device.  This module is that switch's brain,
the part of a Linux bridge that decides where a frame goes, and nothing else: it takes MAC
addresses, a port and the time, and answers with a port.  It sends nothing, reads no clock and
knows nothing of WireGuard; a *port* is any hashable value the caller chooses (the core uses its
``Peer`` objects, and :data:`~minivpn.wireguard.ethernet.LOCAL` for the TAP device).

The rules, as any learning bridge has them (IEEE 802.1D, "transparent bridging"):

* **Learning.**  The source MAC address of every frame that arrives on a port is remembered as
  being behind that port (:meth:`LearningSwitch.forward`).  A frame whose source is not a
  unicast address (a multicast bit, or all zeros) is refused, as a Linux bridge refuses it.
* **Aging.**  An entry not refreshed for ``aging`` seconds (300 by default, as in Linux and
  802.1D) is forgotten: a host that moved or went away stops attracting frames.
* **Forwarding.**  A frame to a known unicast address goes to that address's port only; to its
  own arrival port, nowhere (the destination heard it already).
* **Flooding.**  Broadcast, multicast and unknown unicast frames go to every port *but* the one
  they came from (split horizon: a frame never goes back where it came from).
* **Moves.**  A source address seen on another port than before has moved (a laptop changed
  sites, a VM migrated); the entry follows it, and the move is reported (:attr:`moves`), so that
  the runtime can log it: at most once per ``MOVE_REPORT_INTERVAL`` seconds for one address,
  so that an address flapping between two ports (a loop, two hosts with one address) does not
  flood the log; the moves not reported are counted (:attr:`unreported_moves`), and the next
  reported move says how many there were since the one before (``MacMove.unreported``).
* **AllowedMACs.**  A port may be limited to a list of source addresses (or prefixes, such as an
  OUI): the layer-2 form of WireGuard's cryptokey routing, where a peer may only *send from* its
  own allowed IPs.  A frame from another source is refused before anything is learned from it,
  so a peer cannot take over another host's address (or fill the table with made-up ones).
* **A size cap.**  The table holds at most ``capacity`` entries.  When it is full, a new address
  takes the place of the oldest entry of the port that holds the most entries: a port that
  floods the switch with made-up source addresses only pushes out its own entries, and the
  other ports keep theirs (a plain "evict the oldest" table would let it push out everyone's,
  and every frame to them would then be flooded: to that port too).
* **Storm control.**  Each port may flood at most ``flood_rate`` frames a second, with bursts of
  up to ``flood_burst`` (a token bucket per port, filled by the clock the caller passes): a
  flooded frame beyond that is refused (:attr:`Verdict.FLOOD_LIMITED`), so that one port
  sending broadcasts or frames to unknown addresses at line rate cannot make the switch copy
  every one of them to every other port.  Known unicast is never limited.  Switches call this
  "storm control" (a Linux bridge has none; switch vendors' defaults are a share of the link).

Per frame, :meth:`LearningSwitch.forward` does two dictionary lookups and one attribute store;
a flooded frame also takes a token; aging is checked lazily, when an entry is used.
"""

from __future__ import annotations

import enum
import math
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Final, Generic, TypeVar

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "BROADCAST",
    "DEFAULT_AGING",
    "DEFAULT_CAPACITY",
    "DEFAULT_FLOOD_BURST",
    "DEFAULT_FLOOD_RATE",
    "MOVE_REPORT_INTERVAL",
    "InvalidMac",
    "LearningSwitch",
    "MacEntry",
    "MacMove",
    "MacPrefix",
    "Verdict",
    "format_mac",
    "parse_mac",
]

#: Seconds an entry lives without being refreshed (Linux's ``ageing_time``, 802.1D's default).
DEFAULT_AGING = 300.0
#: Entries the table holds at most (a Linux bridge has no limit by default; the switch of a VPN
#: hub serves a few sites, and a cap keeps a peer that invents addresses from growing it).
DEFAULT_CAPACITY = 4096
#: Flooded frames (broadcast, multicast, unknown unicast) a second each port may send: far
#: above what ARP, neighbour discovery, DHCP and service discovery need, far below what makes a
#: hub in Python copy floods instead of forwarding unicast (docs/performance.md, "Layer 2").
DEFAULT_FLOOD_RATE = 2000.0
#: Flooded frames a port may send at once, above the rate (an ARP sweep of a /24 is 256).
DEFAULT_FLOOD_BURST = 1000.0
#: Seconds between two reported moves of one address (the others are only counted).
MOVE_REPORT_INTERVAL = 10.0
#: The broadcast address, ff:ff:ff:ff:ff:ff.
BROADCAST: Final = b"\xff" * 6
_ZERO_MAC: Final = bytes(6)
_MAC_TEXT = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")

P = TypeVar("P")


class InvalidMac(ValueError):
    """A MAC address or prefix that does not parse (the message says why)."""


def parse_mac(text: str) -> bytes:
    """``02:00:5e:10:00:01`` -> its 6 bytes (hex digits in either case, colons required).

    Raises:
        InvalidMac: not six colon-separated pairs of hex digits.
    """
    if not _MAC_TEXT.fullmatch(text):
        raise InvalidMac(f"{text[:40]!r} is not a MAC address such as 02:00:5e:10:00:01")
    return bytes.fromhex(text.replace(":", ""))


def format_mac(mac: bytes) -> str:
    """6 bytes -> ``02:00:5e:10:00:01``, as ``ip link`` writes it."""
    return mac.hex(":")


@attrs.frozen
class MacPrefix:
    """A MAC address and the number of leading bits that must match (48: that address only).

    Written ``02:00:5e:10:00:01`` or ``52:54:00:00:00:00/24`` (every address of one OUI).

    Attributes:
        address: 6 bytes, with the bits past ``length`` cleared.
        length: 0 to 48.
    """

    address: bytes
    length: int = 48

    @classmethod
    def parse(cls, text: str) -> MacPrefix:
        """Parse ``MAC`` or ``MAC/LENGTH``; host bits past the length are cleared.

        Raises:
            InvalidMac: the address or the length does not parse.
        """
        address_text, slash, length_text = text.partition("/")
        address = parse_mac(address_text)
        length = 48
        if slash:
            if not length_text.isdecimal() or len(length_text) > 2 or int(length_text) > 48:
                raise InvalidMac(f"{text[:60]!r}: the prefix length must be a number from 0 to 48")
            length = int(length_text)
        return cls(_masked(address, length), length)

    def __contains__(self, mac: object) -> bool:
        return isinstance(mac, bytes) and _masked(mac, self.length) == self.address

    def __str__(self) -> str:
        text = format_mac(self.address)
        return text if self.length == 48 else f"{text}/{self.length}"


def _masked(mac: bytes, length: int) -> bytes:
    mask = ((1 << 48) - 1) ^ ((1 << (48 - length)) - 1)
    return (int.from_bytes(mac, "big") & mask).to_bytes(6, "big")


class Verdict(enum.Enum):
    """What :meth:`LearningSwitch.forward` answers when the answer is not one port."""

    #: Broadcast, multicast or an unknown (or aged-out) destination: every port but the one
    #: the frame came from.
    FLOOD = "flood"
    #: The destination is behind the port the frame came from: it has it already.
    FILTER = "filter"
    #: The source address is not a unicast address (its group bit is set, or it is all
    #: zeros): drop the frame, learn nothing.
    INVALID_SOURCE = "invalid_source"
    #: The source address is not one the port may use (AllowedMACs): drop the frame, learn
    #: nothing.
    DISALLOWED_SOURCE = "disallowed_source"
    #: The frame would be flooded, but its port has flooded all it may for now (storm
    #: control): drop it (its source was learned).
    FLOOD_LIMITED = "flood_limited"


@attrs.frozen
class MacMove(Generic[P]):
    """A source address was seen behind another port than before.

    Attributes:
        mac: the address.
        old: the port it was behind.
        new: the port it is behind now.
        unreported: the moves (of any address) not reported since the move reported before
            this one, so that the log line of this one can say how many it did not show.
    """

    mac: bytes
    old: P
    new: P
    unreported: int = 0


@attrs.frozen
class MacEntry(Generic[P]):
    """One entry of the table, as :meth:`LearningSwitch.entries` lists it.

    Attributes:
        mac: the address.
        port: the port it is behind.
        age: seconds since a frame from it was last seen.
    """

    mac: bytes
    port: P
    age: float


class _Entry(Generic[P]):
    """Where an address was last seen, and when: one slot of the table (mutable, per frame)."""

    __slots__ = ("port", "reported", "seen")

    def __init__(self, port: P, seen: float) -> None:
        self.port = port
        self.seen = seen
        self.reported = -math.inf  # when a move of this address was last reported


class _Bucket:
    """Storm control's token bucket of one port: floods it may still send, as of when."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class LearningSwitch(Generic[P]):
    """A MAC address table with learning, aging, flooding, split horizon and AllowedMACs.

    Args:
        aging: seconds an entry lives without a frame from its address.
        capacity: the most entries the table holds (at least 1).
        flood_rate: flooded frames a second each port may send (storm control), or None: no
            limit.
        flood_burst: flooded frames a port may send at once above the rate (at least 1).

    Attributes:
        moves: addresses that moved between ports since the caller last emptied the list
            (the core turns them into events); one address at most once per
            MOVE_REPORT_INTERVAL seconds.
        unreported_moves: the moves not reported for that reason.
    """

    def __init__(
        self,
        aging: float = DEFAULT_AGING,
        capacity: int = DEFAULT_CAPACITY,
        flood_rate: float | None = DEFAULT_FLOOD_RATE,
        flood_burst: float = DEFAULT_FLOOD_BURST,
    ) -> None:
        if capacity < 1:
            raise ValueError("the MAC table needs room for at least one entry")
        if flood_burst < 1 or (flood_rate is not None and flood_rate <= 0):
            raise ValueError("storm control needs a positive rate and a burst of at least 1")
        self.aging = aging
        self.capacity = capacity
        self.flood_rate = flood_rate
        self.flood_burst = flood_burst
        self.moves: list[MacMove[P]] = []
        self.unreported_moves = 0
        self._unreported_since_report = 0  # told with the next reported move
        self._table: dict[bytes, _Entry[P]] = {}
        # The addresses behind each port, oldest learned first: where an address is evicted
        # from when the table is full.  An OrderedDict, not a dict: a dict finds its first key
        # by skipping the slots of the keys deleted before it, which under a flood of new
        # addresses made each eviction cost ~2 us instead of ~0.3 (docs/performance.md).
        self._by_port: dict[P, OrderedDict[bytes, None]] = {}
        self._allowed: dict[P, tuple[frozenset[bytes], tuple[MacPrefix, ...]]] = {}
        self._buckets: dict[P, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._table)

    # --- configuration --------------------------------------------------------------------------

    def set_allowed_macs(self, port: P, prefixes: Iterable[MacPrefix] | None) -> None:
        """Limit the source addresses *port* may use (None, the default: any unicast address).

        Entries of that port the new list does not allow are forgotten at once.
        """
        if prefixes is None:
            self._allowed.pop(port, None)
            return
        listed = tuple(prefixes)
        exact = frozenset(prefix.address for prefix in listed if prefix.length == 48)
        self._allowed[port] = (exact, tuple(p for p in listed if p.length < 48))
        for mac in list(self._by_port.get(port, ())):
            if not self._may_use(port, mac):
                self._forget(mac)

    def allowed_macs(self, port: P) -> tuple[MacPrefix, ...] | None:
        """The prefixes *port* is limited to, or None (any unicast source)."""
        allowed = self._allowed.get(port)
        if allowed is None:
            return None
        exact, prefixes = allowed
        return tuple(MacPrefix(mac) for mac in sorted(exact)) + prefixes

    def forget_port(self, port: P) -> None:
        """Forget every entry behind *port*, and its AllowedMACs (a peer was removed)."""
        for mac in list(self._by_port.get(port, ())):
            self._forget(mac)
        self._by_port.pop(port, None)
        self._allowed.pop(port, None)
        self._buckets.pop(port, None)

    # --- per frame ------------------------------------------------------------------------------

    def forward(self, source: bytes, destination: bytes, port: P, now: float) -> P | Verdict:
        """Learn where *source* is, and say where a frame to *destination* goes.

        Args:
            source, destination: the frame's MAC addresses (6 bytes each).
            port: the port the frame arrived on.
            now: the current time (seconds, any monotonic clock).

        Returns:
            The one port to send the frame to, or a :class:`Verdict`: FLOOD (every port but
            *port*), FILTER (nowhere: the destination is behind *port*), INVALID_SOURCE or
            DISALLOWED_SOURCE (drop it: the source is not a unicast address, or not one *port*
            may use), FLOOD_LIMITED (drop it: *port* floods more than storm control allows).
        """
        # Learn first: the source must be a unicast address the port may use.
        if source[0] & 1 or source == _ZERO_MAC:
            return Verdict.INVALID_SOURCE
        if port in self._allowed and not self._may_use(port, source):
            return Verdict.DISALLOWED_SOURCE
        entry = self._table.get(source)
        if entry is None:
            self._learn(source, port, now)
        else:
            if entry.port != port:
                self._move(source, entry, port, now)
            entry.seen = now
        # Then forward: broadcast and multicast (the group bit), and unknown unicast, flood.
        if destination[0] & 1:
            return self._flood(port, now)
        entry = self._table.get(destination)
        if entry is None:
            return self._flood(port, now)
        if now - entry.seen > self.aging:
            self._forget(destination)
            return self._flood(port, now)
        if entry.port == port:
            return Verdict.FILTER
        return entry.port

    def _flood(self, port: P, now: float) -> Verdict:
        """FLOOD if *port*'s bucket holds a token (it takes one), else FLOOD_LIMITED."""
        if self.flood_rate is None:
            return Verdict.FLOOD
        bucket = self._buckets.get(port)
        if bucket is None:
            bucket = self._buckets[port] = _Bucket(self.flood_burst, now)
        elapsed = max(0.0, now - bucket.stamp)
        bucket.tokens = min(self.flood_burst, bucket.tokens + elapsed * self.flood_rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return Verdict.FLOOD_LIMITED
        bucket.tokens -= 1.0
        return Verdict.FLOOD

    def _may_use(self, port: P, mac: bytes) -> bool:
        allowed = self._allowed.get(port)
        if allowed is None:
            return True
        exact, prefixes = allowed
        return mac in exact or any(mac in prefix for prefix in prefixes)

    def _learn(self, mac: bytes, port: P, now: float) -> None:
        if len(self._table) >= self.capacity:
            self._make_room(port)
        self._table[mac] = _Entry(port, now)
        self._add_behind(port, mac)

    def _move(self, mac: bytes, entry: _Entry[P], port: P, now: float) -> None:
        old = entry.port
        if now - entry.seen > self.aging:
            pass  # an aged-out entry did not move: it was dead
        elif now - entry.reported >= MOVE_REPORT_INTERVAL:
            self.moves.append(MacMove(mac, old, port, self._unreported_since_report))
            self._unreported_since_report = 0
            entry.reported = now
        else:
            self.unreported_moves += 1  # flapping: reported a moment ago
            self._unreported_since_report += 1
        behind = self._by_port[old]
        del behind[mac]
        if not behind:
            del self._by_port[old]  # as _forget does: only ports holding entries are listed
        entry.port = port
        self._add_behind(port, mac)

    def _add_behind(self, port: P, mac: bytes) -> None:
        behind = self._by_port.get(port)
        if behind is None:
            behind = self._by_port[port] = OrderedDict()
        behind[mac] = None

    def _make_room(self, port: P) -> None:
        """Evict the oldest learned entry of the port holding the most entries (*port*, the
        one learning, if it is among the largest; else, among equals, the port that has held
        entries the longest)."""
        largest = max(self._by_port, key=lambda p: (len(self._by_port[p]), p == port))
        self._forget(next(iter(self._by_port[largest])))

    def _forget(self, mac: bytes) -> None:
        entry = self._table.pop(mac)
        behind = self._by_port[entry.port]
        del behind[mac]
        if not behind:
            del self._by_port[entry.port]

    # --- reading --------------------------------------------------------------------------------

    def lookup(self, mac: bytes, now: float) -> P | None:
        """The port *mac* is behind, or None (unknown or aged out); learns nothing."""
        entry = self._table.get(mac)
        if entry is None or now - entry.seen > self.aging:
            return None
        return entry.port

    def expire(self, now: float) -> int:
        """Forget every aged-out entry now; return how many (lookups also do it, lazily)."""
        stale = [mac for mac, entry in self._table.items() if now - entry.seen > self.aging]
        for mac in stale:
            self._forget(mac)
        return len(stale)

    def entries(self, now: float) -> Iterator[MacEntry[P]]:
        """The live entries, in the order they were learned."""
        for mac, entry in self._table.items():
            age = now - entry.seen
            if age <= self.aging:
                yield MacEntry(mac, entry.port, age)
