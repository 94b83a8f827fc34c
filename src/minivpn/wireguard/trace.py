"""Tracing: what the core did with each packet, datagram, handshake and timer, as values.

WireGuard says nothing about what it drops, on purpose: a stranger must learn nothing.  The
person who runs the interface is no stranger, and ``minivpn trace`` answers for them, event by
event, the question "where did my packet go?".  This module is the core's half, sans-IO: the
events are immutable values (named tuples, cheap to make), a :class:`Tracer` collects them from
a :class:`~minivpn.wireguard.core.WireGuardCore`, and :func:`event_json` turns one into the
plain object the trace socket sends (:mod:`minivpn.runtime.trace_server`).  The words people
read are made from that object by :mod:`minivpn.trace_lines`.

The events of one packet, in the order the path takes (send.py and receive.py)::

    out:  tun_read -> route -> data_sent                   (or queued, or a drop)
    in:   datagram -> decrypted -> replay_checked -> source_checked -> tun_write
          datagram -> decrypted -> replay_checked -> keepalive_received
          datagram -> handshake_received -> handshake_sent (our response, or a cookie reply)

and, from the paths that are not per packet: ``handshake_sent`` (an initiation: why, which
attempt), ``session`` (a handshake completed), ``timer`` (one of the five timers fired: what
it does), ``handshake_failed`` (we gave up: the likely cause), and ``drop`` for every drop,
with its reason and, when it concerns the packet or datagram in hand, that packet's context.

**Nothing when nobody traces.**  The core has two attributes for its tracer
(:class:`~minivpn.wireguard.device.Device`): ``tracer``, which the handshake, timer and drop
paths call, and ``packet_tracer``, the one check on the per-packet path: ``encapsulate`` and
``decapsulate`` hand the call to :meth:`Tracer.encapsulate` / :meth:`Tracer.decapsulate` when
it is set.  Those clear it, run the call through the path as usual, and make the events from
what went in and what came out: the packet, the result, the header the path wrote into
``out``.  So the path itself holds no tracing code beyond that check, and a drop finds its
context (which packet, from where) in the tracer, set around the call.

**Bounded when someone does.**  The tracer holds at most ``capacity`` events until they are
taken (:meth:`Tracer.take`).  A packet that finds no room for its events is not traced at all
(no event is even made: the call costs the check and a counter) and counts as lost, as does an
event that finds no room; the trace shows the count where the gap is.  How fast events are
taken is the runtime's decision: it gives the trace a share of the CPU, and a reader that is
slower than that loses events, never slowing the tunnel.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from minivpn.wireguard.constants import MAX_TIMER_HANDSHAKES
from minivpn.wireguard.diagnosis import peer_failure_cause
from minivpn.wireguard.events import DropReason
from minivpn.wireguard.results import DONE, Dropped, Queued, WriteToNetwork, WriteToTunnel
from minivpn.wireguard.timers import Timer

if TYPE_CHECKING:
    from minivpn.wireguard.allowedips import Prefix
    from minivpn.wireguard.device import Buffer
    from minivpn.wireguard.events import Endpoint
    from minivpn.wireguard.keys import PublicKey
    from minivpn.wireguard.peer import Peer
    from minivpn.wireguard.receive import ReceivePath
    from minivpn.wireguard.results import Decapsulated, Encapsulated
    from minivpn.wireguard.send import SendPath

__all__ = [
    "CAPACITY",
    "HEAD",
    "DataSent",
    "DatagramReceived",
    "Decrypted",
    "Drop",
    "HandshakeFailed",
    "HandshakeReceived",
    "HandshakeSent",
    "KeepaliveReceived",
    "PacketQueued",
    "ReplayChecked",
    "Routed",
    "SessionEstablished",
    "SourceChecked",
    "TimerFired",
    "TraceEvent",
    "Tracer",
    "TunRead",
    "TunWrite",
    "event_json",
    "message_kind",
]

#: Events a tracer holds until they are taken.
CAPACITY = 4096
#: Bytes of a packet kept in its events: every header of a TCP/IPv6 packet, and what an ICMP
#: error quotes.  The packet's length is kept too, so that a summary can be made of the head.
HEAD = 128
#: The most events one packet or datagram makes (datagram, session, decrypted, replay_checked,
#: source_checked, tun_write, and a drop or two): the room a packet needs to be traced at all.
_EVENTS_PER_PACKET = 8

#: type, receiver index, counter: the header of a data message.
_DATA_HEADER = struct.Struct("<IIQ")
#: The sender index of an initiation or a response (bytes 4-7), the receiver index of a
#: response (bytes 8-11) and of a cookie reply (bytes 4-7).
_SENDER = struct.Struct("<4xI")
_RESPONSE_RECEIVER = struct.Struct("<8xI")
_COOKIE_RECEIVER = struct.Struct("<4xI")
_DATA = 4
_MESSAGE_KINDS = {1: "initiation", 2: "response", 3: "cookie_reply", 4: "data"}

# --- the events -----------------------------------------------------------------------------------
# Each has ``time`` first: the core's monotonic clock when it happened (the runtime turns it
# into wall-clock time).  ``peer`` is the peer's public key, None where no peer is known.


class TunRead(NamedTuple):
    """A packet read from the TUN device, on its way out.

    Attributes:
        time: when.
        length: its length.
        head: its first :data:`HEAD` bytes.
        peer: the peer its destination routes to, or None.
    """

    time: float
    length: int
    head: bytes
    peer: PublicKey | None


class Routed(NamedTuple):
    """Cryptokey routing chose the peer: the allowed IPs prefix that holds the destination."""

    time: float
    peer: PublicKey
    destination: bytes
    prefix: Prefix


class PacketQueued(NamedTuple):
    """The packet waits for a session; a handshake is under way.

    Attributes:
        waiting: packets waiting for the peer now, this one included.
        session: why there is no usable session: ``none`` or ``expired``.
    """

    time: float
    peer: PublicKey
    waiting: int
    session: str


class DataSent(NamedTuple):
    """A data message left for the peer's endpoint (``keepalive``: with nothing inside).

    Attributes:
        receiver_index: the peer's index of the keypair used.
        counter: the message's counter (its nonce).
        size: the datagram's size.
    """

    time: float
    peer: PublicKey
    endpoint: Endpoint
    receiver_index: int
    counter: int
    size: int
    keepalive: bool


class DatagramReceived(NamedTuple):
    """A UDP datagram arrived.

    Attributes:
        source: its sender's address.
        size: its size.
        kind: its first byte, the message type (1-4 for WireGuard's messages).
        peer: the peer its receiver index names, when it names one.
        receiver_index, counter: for a data message, its header.
    """

    time: float
    source: Endpoint
    size: int
    kind: int
    peer: PublicKey | None
    receiver_index: int | None
    counter: int | None


class Decrypted(NamedTuple):
    """The data message decrypted and authenticated under the peer's keypair."""

    time: float
    peer: PublicKey
    receiver_index: int
    counter: int


class ReplayChecked(NamedTuple):
    """Its counter was not seen before and is inside the replay window."""

    time: float
    peer: PublicKey
    counter: int


class KeepaliveReceived(NamedTuple):
    """It was a keepalive: nothing inside, its job was to arrive."""

    time: float
    peer: PublicKey


class SourceChecked(NamedTuple):
    """The inner packet's source address is the peer's to use: this prefix of its allowed IPs."""

    time: float
    peer: PublicKey
    source: bytes
    prefix: Prefix


class TunWrite(NamedTuple):
    """The decrypted packet is written to the TUN device."""

    time: float
    peer: PublicKey
    length: int
    head: bytes


class HandshakeSent(NamedTuple):
    """A handshake message left.

    Attributes:
        kind: ``initiation``, ``response`` or ``cookie_reply``.
        endpoint: where to, or None when the peer has no endpoint (then it did not leave).
        sender_index: our index in it (initiation, response), else None.
        why: for an initiation, why one was sent (``no session``, ``retry 3 of 19``...).
    """

    time: float
    peer: PublicKey | None
    kind: str
    endpoint: Endpoint | None
    sender_index: int | None
    why: str


class HandshakeReceived(NamedTuple):
    """A handshake message was accepted.

    Attributes:
        kind: ``initiation``, ``response`` or ``cookie_reply``.
        outcome: what came of it, in words.
    """

    time: float
    peer: PublicKey | None
    kind: str
    source: Endpoint
    outcome: str


class SessionEstablished(NamedTuple):
    """A handshake completed: new keys are in use (``initiator``: we started it)."""

    time: float
    peer: PublicKey
    initiator: bool


class TimerFired(NamedTuple):
    """One of the peer's timers expired (:mod:`minivpn.wireguard.timers`).

    Attributes:
        timer: its name (``retransmit_handshake``...).
        action: what it does now, in words.
    """

    time: float
    peer: PublicKey
    timer: str
    action: str


class HandshakeFailed(NamedTuple):
    """We gave up on a handshake after ``attempts`` initiations; the likely cause, in words."""

    time: float
    peer: PublicKey
    attempts: int
    cause: str


class Drop(NamedTuple):
    """A packet or datagram was dropped.

    Attributes:
        reason: why.
        peer: the peer concerned, or the key an initiation claimed (``unknown_peer``), or None.
        source: for a datagram, its sender.
        kind: for a datagram, its type byte.
        receiver_index, counter: for a data message, its header.
        length, head: the packet concerned (an outgoing packet, or the decrypted one for the
            inner packet's reasons), or 0 and empty.
    """

    time: float
    reason: DropReason
    peer: PublicKey | None
    source: Endpoint | None
    kind: int | None
    receiver_index: int | None
    counter: int | None
    length: int
    head: bytes


TraceEvent: TypeAlias = (
    TunRead
    | Routed
    | PacketQueued
    | DataSent
    | DatagramReceived
    | Decrypted
    | ReplayChecked
    | KeepaliveReceived
    | SourceChecked
    | TunWrite
    | HandshakeSent
    | HandshakeReceived
    | SessionEstablished
    | TimerFired
    | HandshakeFailed
    | Drop
)

#: The drops that concern the datagram in hand, and the steps of a data message it passed by
#: then (receive.py: decrypt, then the replay window, then the inner packet).
_RECEIVE_REASONS = frozenset(
    {
        DropReason.MALFORMED,
        DropReason.INVALID_MAC1,
        DropReason.COOKIE_REQUIRED,
        DropReason.RATE_LIMITED,
        DropReason.UNKNOWN_PEER,
        DropReason.HANDSHAKE_INVALID,
        DropReason.REPLAYED_INITIATION,
        DropReason.INITIATION_FLOOD,
        DropReason.INVALID_COOKIE_REPLY,
        DropReason.UNKNOWN_INDEX,
        DropReason.KEYPAIR_EXPIRED,
        DropReason.DECRYPTION_FAILED,
        DropReason.REPLAYED_COUNTER,
        DropReason.INVALID_INNER_PACKET,
        DropReason.DISALLOWED_SOURCE,
        DropReason.MODE_MISMATCH,
    }
)
_AFTER_DECRYPTION = frozenset({DropReason.REPLAYED_COUNTER})
_AFTER_REPLAY_CHECK = frozenset(
    {DropReason.INVALID_INNER_PACKET, DropReason.DISALLOWED_SOURCE, DropReason.MODE_MISMATCH}
)
#: The drops that concern an older packet than the one in hand, or none.
_NOT_THIS_PACKET = frozenset({DropReason.STAGED_OVERFLOW, DropReason.STAGED_FLUSHED})

_TIMER_ACTIONS = {
    Timer.NEW_HANDSHAKE: "we sent data and heard nothing back for 15 s: a new handshake",
    Timer.SEND_KEEPALIVE: "we received data and sent nothing for 10 s: a keepalive",
    Timer.PERSISTENT_KEEPALIVE: "the persistent keepalive",
    Timer.ZERO_KEY_MATERIAL: "no new session for 9 minutes: every key of the peer is erased",
}


def message_kind(kind: int | None) -> str:
    """The name of a message type byte: ``initiation``, ..., ``data``, or ``unknown``."""
    return _MESSAGE_KINDS.get(kind, "unknown") if kind is not None else "unknown"


def _key(peer: Peer | None) -> PublicKey | None:
    return peer.public_key if peer is not None else None


def _address(packet: Buffer, v4_offset: int, v6_offset: int) -> bytes | None:
    """The address bytes at an IPv4 or IPv6 offset, or None for anything else."""
    version = packet[0] >> 4 if len(packet) else 0
    if version == 4 and len(packet) >= 20:
        return bytes(packet[v4_offset : v4_offset + 4])
    if version == 6 and len(packet) >= 40:
        return bytes(packet[v6_offset : v6_offset + 16])
    return None


class Tracer:
    """Collects the events of one core (attach it with ``core.attach_tracer(tracer)``).

    Args:
        capacity: the most events held until :meth:`take`.
        packets: make the per-packet events; without, only handshakes, timers and drops (with
            their packet's context) are traced.

    Attributes:
        events: the events not taken yet, oldest first.
        lost: events, or whole packets, left out for want of room since the last :meth:`take`.
        packets: as given; may be changed at any time.
        own_public_key: our public key (the runtime keeps it current; it is only named in
            the advice of ``handshake_failed``).
    """

    def __init__(self, capacity: int = CAPACITY, *, packets: bool = True) -> None:
        self.capacity = capacity
        self.packets = packets
        self.events: list[TraceEvent] = []
        self.lost = 0
        self.own_public_key: PublicKey | None = None
        self._now = 0.0
        # What the path has in hand during a traced call (see drop()): an outgoing packet, or
        # an incoming datagram, its header and where its plaintext goes.
        self._packet: Buffer | None = None
        self._source: Endpoint | None = None
        self._kind: int | None = None
        self._index: int | None = None
        self._counter: int | None = None
        self._out: memoryview | None = None

    def take(self) -> tuple[list[TraceEvent], int]:
        """The events so far and the count of those lost; both start again from nothing."""
        events, lost = self.events, self.lost
        self.events, self.lost = [], 0
        return events, lost

    def _add(self, event: TraceEvent) -> None:
        if len(self.events) < self.capacity:
            self.events.append(event)
        else:
            self.lost += 1

    def _no_room_for_a_packet(self) -> bool:
        if len(self.events) + _EVENTS_PER_PACKET <= self.capacity:
            return False
        self.lost += 1
        return True

    # --- the way out ---------------------------------------------------------------------------

    def encapsulate(
        self, core: SendPath, packet: Buffer, out: memoryview, now: float
    ) -> Encapsulated:
        """``core.encapsulate``, traced: the packet, the route, then the message sent."""
        self._now = now
        core.packet_tracer = None  # the call below runs the path itself, not this again
        try:
            if not self.packets:  # only a drop's context
                self._packet = packet
                try:
                    return core.encapsulate(packet, out, now)
                finally:
                    self._packet = None
            if self._no_room_for_a_packet():
                return core.encapsulate(packet, out, now)
            found = None
            destination = _address(packet, 16, 24)
            if destination is not None:
                found = core.allowed_ips.lookup_prefix(destination)
            peer = found[1] if found is not None else None
            current = peer.keypairs.current if peer is not None else None
            self._add(TunRead(now, len(packet), bytes(packet[:HEAD]), _key(peer)))
            if found is not None and destination is not None:
                self._add(Routed(now, found[1].public_key, destination, found[0]))
            self._packet = packet
            try:
                result = core.encapsulate(packet, out, now)
            finally:
                self._packet = None
        finally:
            core.packet_tracer = self
        if peer is not None:
            if isinstance(result, WriteToNetwork):
                _, index, counter = _DATA_HEADER.unpack_from(out)
                self._add(
                    DataSent(
                        now, peer.public_key, result.endpoint, index, counter, result.size, False
                    )
                )
            elif isinstance(result, Queued):
                session = "none" if current is None else "expired"
                self._add(PacketQueued(now, peer.public_key, len(peer.staged), session))
        return result

    def staged_sent(self, peer: Peer, packet: bytes, out: memoryview, size: int) -> None:
        """A packet that waited for the session, or a keepalive, left (``out[:size]``)."""
        if not self.packets or peer.endpoint is None:
            return
        _, index, counter = _DATA_HEADER.unpack_from(out)
        keepalive = not packet
        self._add(
            DataSent(self._now, peer.public_key, peer.endpoint, index, counter, size, keepalive)
        )

    def initiation_sent(self, peer: Peer, sender_index: int, now: float, *, is_retry: bool) -> None:
        """An initiation was made for *peer* (and sent, if it has an endpoint)."""
        self._now = now
        attempt = peer.timers.handshake_attempts
        if is_retry:
            why = f"retry {attempt} of {MAX_TIMER_HANDSHAKES + 1}, no response for 5 s"
        else:
            current = peer.keypairs.current
            if current is None:
                why = "no session yet"
            elif not current.can_send(now):
                why = "the session expired"
            else:
                why = f"rekey: the session is {now - current.created:.0f} s old"
        self._add(
            HandshakeSent(now, peer.public_key, "initiation", peer.endpoint, sender_index, why)
        )

    # --- the way in ----------------------------------------------------------------------------

    def decapsulate(
        self, core: ReceivePath, source: Endpoint, datagram: Buffer, out: memoryview, now: float
    ) -> Decapsulated:
        """``core.decapsulate``, traced: the datagram, then each step it passed."""
        self._now = now
        core.packet_tracer = None  # the call below runs the path itself, not this again
        try:
            if self.packets and self._no_room_for_a_packet():
                return core.decapsulate(source, datagram, out, now)
            kind = datagram[0] if len(datagram) else -1
            index = counter = None
            if kind == _DATA and len(datagram) >= _DATA_HEADER.size:
                _, index, counter = _DATA_HEADER.unpack_from(datagram)
            peer = None
            if self.packets or kind != _DATA:
                peer = _addressee(core, kind, datagram, index)
            if self.packets:
                self._add(
                    DatagramReceived(now, source, len(datagram), kind, _key(peer), index, counter)
                )
            self._source, self._kind, self._index, self._counter = source, kind, index, counter
            self._out = out
            try:
                result = core.decapsulate(source, datagram, out, now)
            finally:
                self._source = self._kind = self._index = self._counter = self._out = None
        finally:
            core.packet_tracer = self
        if not isinstance(result, Dropped):
            if kind == _DATA and index is not None and counter is not None:
                if self.packets:
                    self._data_received(core, result, index, counter, out)
            else:  # a handshake message: traced with or without the packets
                self._handshake_received(core, result, kind=kind, peer=peer, source=source, out=out)
        return result

    def _data_received(
        self, core: ReceivePath, result: Decapsulated, index: int, counter: int, out: memoryview
    ) -> None:
        """The steps of a data message that got through (the drops say where others stopped)."""
        if isinstance(result, WriteToTunnel):
            key = result.public_key
            self._add(Decrypted(self._now, key, index, counter))
            self._add(ReplayChecked(self._now, key, counter))
            source = _address(out, 12, 8)
            found = core.allowed_ips.lookup_prefix(source) if source is not None else None
            if source is not None and found is not None:
                self._add(SourceChecked(self._now, key, source, found[0]))
            self._add(TunWrite(self._now, key, result.size, bytes(out[: min(result.size, HEAD)])))
        elif result is DONE:
            peer = core.peer_for_index(index)
            if peer is not None:
                self._add(Decrypted(self._now, peer.public_key, index, counter))
                self._add(ReplayChecked(self._now, peer.public_key, counter))
                self._add(KeepaliveReceived(self._now, peer.public_key))

    def _handshake_received(
        self,
        core: ReceivePath,
        result: Decapsulated,
        *,
        kind: int,
        peer: Peer | None,
        source: Endpoint,
        out: memoryview,
    ) -> None:
        """A handshake message that was accepted, and our reply to it."""
        name = message_kind(kind)
        if isinstance(result, WriteToNetwork) and out[0] == 2:
            # Our response: its sender index is ours, and names the peer now.
            sender = _SENDER.unpack_from(out)[0]
            key = _key(core.peer_for_index(sender))
            outcome = "answered, new keys wait for the peer's first data message"
            self._add(HandshakeReceived(self._now, key, name, source, outcome))
            self._add(HandshakeSent(self._now, key, "response", result.endpoint, sender, ""))
        elif isinstance(result, WriteToNetwork) and out[0] == 3:
            why = "under load: prove your address first"
            self._add(HandshakeSent(self._now, None, "cookie_reply", result.endpoint, None, why))
        elif kind == 3:
            self._add(HandshakeReceived(self._now, _key(peer), name, source, "cookie stored"))

    # --- what the path reports: sessions, timers, drops --------------------------------------

    def session(self, peer: Peer, initiator: bool) -> None:
        """A handshake with *peer* completed: the response we waited for, or (responder) the
        peer's first data message under the new keys."""
        if initiator and self._source is not None and self._kind == 2:
            self._add(
                HandshakeReceived(self._now, peer.public_key, "response", self._source, "accepted")
            )
        self._add(SessionEstablished(self._now, peer.public_key, initiator))

    def timer(self, peer: Peer, timer: Timer, now: float) -> None:
        """One of *peer*'s timers fired; say what it does."""
        self._now = now
        if timer is Timer.RETRANSMIT_HANDSHAKE:
            attempts = peer.timers.handshake_attempts
            if attempts > MAX_TIMER_HANDSHAKES:
                self._add(TimerFired(now, peer.public_key, timer.value, "giving up"))
                cause = peer_failure_cause(peer, self.own_public_key)
                self._add(HandshakeFailed(now, peer.public_key, attempts + 1, cause))
                return
            action = "no response for 5 s: the initiation again"
        else:
            action = _TIMER_ACTIONS[timer]
        self._add(TimerFired(now, peer.public_key, timer.value, action))

    def drop(self, reason: DropReason, peer: Peer | None, public_key: PublicKey | None) -> None:
        """Something was dropped; with the packet in hand when the drop is about it."""
        source = kind = index = counter = None
        length, head = 0, b""
        if reason not in _NOT_THIS_PACKET:
            if self._packet is not None:
                packet = self._packet
                length, head = len(packet), bytes(packet[:HEAD])
            elif self._source is not None and reason in _RECEIVE_REASONS:
                source, kind, index, counter = self._source, self._kind, self._index, self._counter
                if reason in _AFTER_REPLAY_CHECK and self._out is not None:
                    length = _inner_length(self._out)  # the plaintext is padded: its IP length
                    head = bytes(self._out[: min(length, HEAD)])
                if self.packets and public_key is not None and index is not None:
                    # The steps this data message passed before the one that dropped it.
                    passed = reason in _AFTER_DECRYPTION or reason in _AFTER_REPLAY_CHECK
                    if passed and counter is not None:
                        self._add(Decrypted(self._now, public_key, index, counter))
                    if reason in _AFTER_REPLAY_CHECK and counter is not None:
                        self._add(ReplayChecked(self._now, public_key, counter))
        self._add(Drop(self._now, reason, public_key, source, kind, index, counter, length, head))


def _addressee(core: ReceivePath, kind: int, datagram: Buffer, index: int | None) -> Peer | None:
    """The peer a datagram's receiver index names (a data message, a response, a cookie reply)."""
    if kind == _DATA and index is not None:
        return core.peer_for_index(index)
    if kind == 2 and len(datagram) >= _RESPONSE_RECEIVER.size:
        return core.peer_for_index(_RESPONSE_RECEIVER.unpack_from(datagram)[0])
    if kind == 3 and len(datagram) >= _COOKIE_RECEIVER.size:
        return core.peer_for_index(_COOKIE_RECEIVER.unpack_from(datagram)[0])
    return None


def _inner_length(packet: memoryview) -> int:
    """The length an IP header gives its packet, or 0."""
    version = packet[0] >> 4 if len(packet) else 0
    if version == 4 and len(packet) >= 20:
        return int.from_bytes(packet[2:4], "big")
    if version == 6 and len(packet) >= 40:
        return int.from_bytes(packet[4:6], "big") + 40
    return 0


# --- JSON -----------------------------------------------------------------------------------------

_EVENT_NAMES: dict[type, str] = {
    TunRead: "tun_read",
    Routed: "route",
    PacketQueued: "queued",
    DataSent: "data_sent",
    DatagramReceived: "datagram",
    Decrypted: "decrypted",
    ReplayChecked: "replay_checked",
    KeepaliveReceived: "keepalive_received",
    SourceChecked: "source_checked",
    TunWrite: "tun_write",
    HandshakeSent: "handshake_sent",
    HandshakeReceived: "handshake_received",
    SessionEstablished: "session",
    TimerFired: "timer",
    HandshakeFailed: "handshake_failed",
    Drop: "drop",
}


def _endpoint_text(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def event_json(event: TraceEvent, clock_offset: float = 0.0) -> dict[str, Any]:
    """The plain object for one event (what ``minivpn trace --json`` prints).

    Keys: ``time`` (Unix time: the core's clock plus *clock_offset*), ``event`` (its name),
    then its fields: public keys in base64, endpoints as ``host:port``, addresses and prefixes
    as text, packet heads in hex, the drop reason by its name.
    """
    fields = event._asdict()
    result: dict[str, Any] = {"time": round(event.time + clock_offset, 6)}
    result["event"] = _EVENT_NAMES[type(event)]
    for name, value in fields.items():
        if name == "time":
            continue
        if value is None or isinstance(value, bool | int | float | str):
            result[name] = value
        elif name in ("endpoint", "source") and isinstance(value, tuple):
            result[name] = _endpoint_text(value)
        elif name in ("destination", "source") and isinstance(value, bytes):
            result[name] = str(ipaddress.ip_address(value))
        elif name == "head" and isinstance(value, bytes):
            result[name] = value.hex()
        elif isinstance(value, DropReason):
            result[name] = value.value
        elif name == "peer":
            result[name] = value.to_base64()
        else:  # a prefix
            result[name] = str(value)
    if "kind" in result and isinstance(result["kind"], int):
        result["kind"] = message_kind(result["kind"])
    return result
