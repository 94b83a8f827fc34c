"""What the WireGuard core asks of its runtime besides its results, and what it tells it.

The core (:class:`~minivpn.wireguard.core.WireGuardCore`) never touches a socket, a TUN device
or a clock.  ``encapsulate`` and ``decapsulate`` return what to do with the packet or datagram
at hand (:mod:`minivpn.wireguard.results`); everything else a call sets in motion is queued for
``WireGuardCore.take_actions()`` as *actions*, frozen value objects the runtime carries out in
order:

* :class:`SendDatagram`: send these bytes over UDP to this endpoint (a handshake initiation, a
  keepalive, a packet that waited for a session);
* :class:`ListenPortChanged`, :class:`FwmarkChanged`: a UAPI ``set`` changed how the UDP socket
  must be bound: rebind it;
* the rest are *events*, for logs, statistics and tests: :class:`HandshakeCompleted`,
  :class:`HandshakeFailed`, :class:`KeyMaterialZeroed`, :class:`ModeMismatch`, in layer-2 mode
  :class:`MacMoved` and, when the core was built with ``report_drops=True``,
  :class:`PacketDropped`.

Dropped packets are always counted by reason in ``core.drops``
(a ``dict[DropReason, int]``), and per peer where a peer is known
(``peer.counters.drops``, :mod:`minivpn.wireguard.counters`), whether or not they are also
reported as events.  A tracer, when one is attached, sees each of them with its context
(:mod:`minivpn.wireguard.trace`).

An *endpoint* is the ``(host, port)`` pair a UDP socket uses: the host is an IP address as text
(``"192.0.2.1"``, ``"fd00::1"``), never a name: the runtime resolves names first.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, TypeAlias

import attrs

if TYPE_CHECKING:
    from minivpn.wireguard.keys import PublicKey

__all__ = [
    "Action",
    "DropReason",
    "Endpoint",
    "FwmarkChanged",
    "HandshakeCompleted",
    "HandshakeFailed",
    "KeyMaterialZeroed",
    "ListenPortChanged",
    "MacMoved",
    "ModeMismatch",
    "PacketDropped",
    "SendDatagram",
]

#: A UDP address: an IP address as text (no host names) and a port.
Endpoint: TypeAlias = tuple[str, int]


class DropReason(enum.Enum):
    """Why the core dropped a datagram or a packet.  The values are stable names for statistics."""

    #: Not a WireGuard message: unknown type, wrong length.
    MALFORMED = "malformed"
    #: A handshake message arrived, or had to be sent, while the device has no private key.
    NO_PRIVATE_KEY = "no_private_key"
    #: A handshake message whose mac1 is wrong: it was not made for our public key.
    INVALID_MAC1 = "invalid_mac1"
    #: Under load, a handshake message without a valid mac2: we answered with a cookie reply.
    COOKIE_REQUIRED = "cookie_required"
    #: Under load, too many handshake messages from one source address.
    RATE_LIMITED = "rate_limited"
    #: An initiation that authenticates a static key that is not one of our peers.
    UNKNOWN_PEER = "unknown_peer"
    #: A handshake message that does not authenticate, or a response we are not waiting for.
    HANDSHAKE_INVALID = "handshake_invalid"
    #: An initiation whose timestamp is not newer than the last one accepted from that peer.
    REPLAYED_INITIATION = "replayed_initiation"
    #: An initiation less than 20 ms after the previous one accepted from that peer.
    INITIATION_FLOOD = "initiation_flood"
    #: A peer's public key is a low-order point: it is configured but can never be used.
    LOW_ORDER_KEY = "low_order_key"
    #: A cookie reply that does not decrypt, or answers nothing we sent.
    INVALID_COOKIE_REPLY = "invalid_cookie_reply"
    #: A response, cookie reply or data message whose receiver index is not ours (any more).
    UNKNOWN_INDEX = "unknown_index"
    #: A data message under a keypair older than REJECT_AFTER_TIME.
    KEYPAIR_EXPIRED = "keypair_expired"
    #: A data message that does not decrypt (tampered, or not for this keypair).
    DECRYPTION_FAILED = "decryption_failed"
    #: A data message whose counter was already seen, or is too old for the replay window.
    REPLAYED_COUNTER = "replayed_counter"
    #: A decrypted (or outgoing) packet that is not a well-formed IPv4/IPv6 packet.
    INVALID_INNER_PACKET = "invalid_inner_packet"
    #: A decrypted packet whose source address is not in the sending peer's allowed IPs.
    DISALLOWED_SOURCE = "disallowed_source"
    #: An outgoing packet whose destination is in no peer's allowed IPs.
    NO_ROUTE = "no_route"
    #: The same for a multicast or broadcast destination: what the kernel sends on any link
    #: (IPv6 router solicitations, MLD reports), which WireGuard, point to point, does not carry.
    MULTICAST = "multicast"
    #: A datagram for a peer whose endpoint is not known yet.
    NO_ENDPOINT = "no_endpoint"
    #: A staged packet (waiting for a handshake) pushed out by a newer one: the queue is full.
    STAGED_OVERFLOW = "staged_overflow"
    #: Staged packets discarded: the handshake was given up, keys were zeroed, or the peer removed.
    STAGED_FLUSHED = "staged_flushed"
    #: Under load, a handshake message that would get a cookie reply, but its source (or all
    #: sources together) had as many cookie replies as allowed.
    COOKIE_RATE_LIMITED = "cookie_rate_limited"
    #: A peer sends what the other mode carries: IP packets to an interface in ``Mode = tap``,
    #: or Ethernet frames to one in ``Mode = tun`` (docs/l2.md, "On the wire").
    MODE_MISMATCH = "mode_mismatch"
    #: ``Mode = tap``: a frame shorter than an Ethernet header, whose length header does not
    #: match the message, or whose source MAC address is not a unicast address.
    INVALID_FRAME = "invalid_frame"
    #: ``Mode = tap``: a frame from the TAP device longer than its MTU + 14: it would not fit
    #: one datagram (frames are never fragmented).
    OVERSIZED_FRAME = "oversized_frame"
    #: ``Mode = tap``: a frame whose source MAC address is not in the sending peer's AllowedMACs.
    DISALLOWED_MAC = "disallowed_mac"
    #: ``Mode = tap``: a broadcast, multicast or unknown-unicast frame beyond its port's flood
    #: limit (the switch's storm control, docs/l2.md).
    FLOOD_LIMITED = "flood_limited"
    # The runtime's drops, counted by the core all the same (``core.note_drop``):
    #: A datagram the kernel would not send: larger than the path's MTU (EMSGSIZE).
    PACKET_TOO_BIG = "packet_too_big"
    #: A datagram the kernel refused to send for another reason (no route to the endpoint, the
    #: socket's buffer full, no socket of the endpoint's address family).
    SEND_FAILED = "send_failed"
    #: A decrypted packet not written to the TUN device: its link is down.
    TUN_LINK_DOWN = "tun_link_down"
    #: A decrypted packet the TUN device refused (EINVAL) or had no room for.
    TUN_WRITE_FAILED = "tun_write_failed"
    #: A read from the TUN device whose virtio-net header made no sense.
    TUN_BAD_FRAME = "tun_bad_frame"
    #: A handshake message that found the queue of handshake messages full (a flood; counted
    #: by the runtime, :mod:`minivpn.wireguard.handshake_queue`).
    HANDSHAKE_QUEUE_FULL = "handshake_queue_full"


@attrs.frozen
class SendDatagram:
    """Send ``data`` as one UDP datagram to ``endpoint``.

    Attributes:
        data: the whole WireGuard message.
        endpoint: where to send it.
    """

    data: bytes | bytearray = attrs.field(repr=lambda data: f"<{len(data)} bytes>")
    endpoint: Endpoint


@attrs.frozen
class HandshakeCompleted:
    """A handshake with a peer completed: a new keypair is in use for sending.

    For the initiator that is when the response arrives; for the responder, when the first data
    message (often a keepalive) under the new keys arrives and confirms them.

    Attributes:
        public_key: the peer.
        initiator: whether we sent the initiation.
    """

    public_key: PublicKey
    initiator: bool


@attrs.frozen
class HandshakeFailed:
    """We gave up retrying a handshake (after about REKEY_ATTEMPT_TIME) and dropped staged packets.

    The next packet for the peer starts a new round of attempts.

    Attributes:
        public_key: the peer.
        attempts: how many initiations were sent in this round.
    """

    public_key: PublicKey
    attempts: int


@attrs.frozen
class KeyMaterialZeroed:
    """No new session for 3 x REJECT_AFTER_TIME: every key and handshake state of a peer is gone.

    Attributes:
        public_key: the peer.
    """

    public_key: PublicKey


@attrs.frozen
class PacketDropped:
    """A datagram or packet was dropped (only reported when the core has ``report_drops``).

    Attributes:
        reason: why.
        public_key: the peer concerned, when known.
    """

    reason: DropReason
    public_key: PublicKey | None = None


@attrs.frozen
class ModeMismatch:
    """A peer sends what the other mode carries: its configuration's ``Mode`` differs from ours.

    An interface in ``Mode = tap`` received an IP packet (the peer is in layer-3 mode, or is
    not minivpn), or one in ``Mode = tun`` received an Ethernet frame (the peer is in
    ``Mode = tap``).  The message authenticated: it really is that peer.  Dropped, and counted
    as ``MODE_MISMATCH``.

    Attributes:
        public_key: the peer.
        received: ``"packet"`` or ``"frame"``: what arrived.
    """

    public_key: PublicKey
    received: str


@attrs.frozen
class MacMoved:
    """``Mode = tap``: a MAC address was seen behind another port of the switch than before.

    Attributes:
        mac: the address (6 bytes).
        old: the peer it was behind, or None for this interface's own TAP device.
        new: the peer it is behind now, or None for the TAP device.
        unreported: moves (of any address) the switch did not report since the one reported
            before this (a flapping address is reported once per 10 s): the log says how many.
    """

    mac: bytes
    old: PublicKey | None
    new: PublicKey | None
    unreported: int = 0


@attrs.frozen
class ListenPortChanged:
    """UAPI set ``listen_port``: rebind the UDP socket to ``port`` (0: any free port).

    Attributes:
        port: the new port.
    """

    port: int


@attrs.frozen
class FwmarkChanged:
    """UAPI set ``fwmark``: apply it to the UDP socket with ``SO_MARK`` (0: none).

    Attributes:
        fwmark: the new mark.
    """

    fwmark: int


Action: TypeAlias = (
    SendDatagram
    | HandshakeCompleted
    | HandshakeFailed
    | KeyMaterialZeroed
    | ModeMismatch
    | MacMoved
    | PacketDropped
    | ListenPortChanged
    | FwmarkChanged
)
