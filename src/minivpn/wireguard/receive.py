"""The way in: a UDP datagram becomes an IP packet, a handshake reply, or a drop with a reason.

The functions in this file occur in the order datagrams are processed (as in wireguard-go's
``device/receive.go``):

1. :meth:`ReceivePath.decapsulate` looks at the message type; a *data message* goes on to
   :meth:`ReceivePath._receive_data_message`: find the keypair by the receiver index, check its
   age, decrypt, *then* check the counter against the replay window, promote a responder's
   ``next`` keypair on its first use (:meth:`ReceivePath._confirm_next_keypair`), follow the
   sender's address and tell the timers, and deliver what the message carries: here, check
   the inner packet's source against the peer's allowed IPs
   (:meth:`ReceivePath._check_inner_packet`).  Layer 2 (``Mode = tap``,
   :meth:`~minivpn.wireguard.ethernet.EthernetCore.decapsulate_frame`) takes the same steps
   and delivers differently: it switches the frame inside;
2. a *handshake message* goes on to :meth:`ReceivePath._receive_handshake_message`: mac1,
   always; under load, mac2 or a cookie reply, and a rate limit per source; then the initiation
   (:meth:`ReceivePath._consume_initiation`, answered with a response), the response
   (:meth:`ReceivePath._consume_response`) or the cookie reply
   (:meth:`ReceivePath._consume_cookie_reply`).

Everything here parses bytes an attacker chose: nothing raises, every refusal is a
:class:`~minivpn.wireguard.results.Dropped` result with its reason.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, TypeVar

from minivpn.wireguard.constants import REJECT_AFTER_MESSAGES
from minivpn.wireguard.cookie import cookie_source
from minivpn.wireguard.errors import (
    DecryptionError,
    HandshakeError,
    HandshakeFlood,
    InvalidMessage,
    LowOrderKey,
    ReplayedHandshake,
    UnknownPeer,
)
from minivpn.wireguard.events import DropReason, ModeMismatch
from minivpn.wireguard.messages import (
    INITIATION_SIZE,
    RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
    CookieReply,
    HandshakeInitiation,
    HandshakeResponse,
    MessageType,
    parse_message_untrusted,
)
from minivpn.wireguard.noise import (
    consume_initiation_untrusted,
    consume_response_untrusted,
    create_response,
)
from minivpn.wireguard.results import (
    DONE,
    Decapsulated,
    Done,
    Dropped,
    WriteToNetwork,
    WriteToTunnel,
)
from minivpn.wireguard.send import TRANSPORT_OVERHEAD, SendPath

if TYPE_CHECKING:
    from collections.abc import Callable

    from minivpn.wireguard.device import Buffer
    from minivpn.wireguard.events import Endpoint
    from minivpn.wireguard.keypair import Keypair
    from minivpn.wireguard.keys import PublicKey
    from minivpn.wireguard.noise import PeerHandshakeState, StaticIdentity
    from minivpn.wireguard.peer import Peer

__all__ = ["ReceivePath"]

#: type (4), receiver index, counter: the header of a data message (little-endian).
_TRANSPORT_HEADER = struct.Struct("<IIQ")
_TRANSPORT_DATA = int(MessageType.TRANSPORT_DATA)
#: The sender index of a handshake message (bytes 4-7).
_SENDER_INDEX = struct.Struct("<4xI")
#: The total length and source address of an IPv4 header; the payload length and source
#: address of an IPv6 header.
_IPV4_LENGTH_SOURCE = struct.Struct("!2xH8x4s")
_IPV6_LENGTH_SOURCE = struct.Struct("!4xH2x16s")
_IPV4_HEADER_SIZE = 20
_IPV6_HEADER_SIZE = 40

#: What the last step of a data message makes of its plaintext: for layer 3,
#: ``WriteToTunnel | Dropped``; for layer 2, ``FrameReceived``.
Delivered = TypeVar("Delivered")


class ReceivePath(SendPath):
    """The receive direction of the per-packet path (see the module docstring)."""

    def decapsulate(
        self, source: Endpoint, datagram: Buffer, out: memoryview, now: float
    ) -> Decapsulated:
        """Process one UDP datagram from ``source``, whatever it holds.

        Args:
            source: the sender's ``(ip, port)``.
            datagram: the datagram (attacker-controlled: anything is handled, nothing
                raises).  A memoryview saves a copy of the ciphertext.
            out: where to write the decrypted packet or a reply: at least ``len(datagram)``
                bytes.  Its content beyond the result's size is unspecified.
            now: the current monotonic time.

        Returns:
            :class:`WriteToTunnel`: write ``out[:size]``, a decrypted packet, to the TUN device;
            :class:`WriteToNetwork`: send ``out[:size]`` (a handshake response or a cookie
            reply) to ``endpoint``;
            :class:`Done`: nothing to write (a keepalive, a handshake message consumed);
            :class:`Dropped`: why not (also counted in :attr:`drops`).
            Anything else the datagram sets in motion (the keepalive that confirms new keys,
            packets that waited for them) waits in :meth:`take_actions`.
        """
        if self.packet_tracer is not None:  # someone traces: the tracer runs the datagram through
            return self.packet_tracer.decapsulate(self, source, datagram, out, now)
        if len(datagram) < TRANSPORT_OVERHEAD or datagram[0] != _TRANSPORT_DATA:
            return self._receive_handshake_message(source, datagram, out, now)
        return self._receive_data_message(source, datagram, out, now, self._check_inner_packet)

    def _receive_data_message(
        self,
        source: Endpoint,
        datagram: Buffer,
        out: memoryview,
        now: float,
        deliver: Callable[[Peer, memoryview, int, float], Delivered],
    ) -> Delivered | Done | Dropped:
        """A data message: decrypt it, check it, and hand what it carries to ``deliver``.

        ``deliver(peer, out, size, now)`` is the one step in which the two modes differ: layer 3
        checks the IP packet (:meth:`_check_inner_packet`), layer 2 switches the Ethernet frame
        (:meth:`~minivpn.wireguard.ethernet.EthernetCore._switch_frame`).  ``out[:size]`` holds
        the plaintext, padding included, of an authenticated message from ``peer``.
        """
        word, receiver, counter = _TRANSPORT_HEADER.unpack_from(datagram)
        if word != _TRANSPORT_DATA:  # the three bytes after the type must be zero
            return self._drop(DropReason.MALFORMED)
        keypair = self._index.keypairs.get(receiver)
        if keypair is None:
            return self._drop(DropReason.UNKNOWN_INDEX)
        peer = keypair.peer
        if now >= keypair.reject_at:
            return self._drop(DropReason.KEYPAIR_EXPIRED, peer)
        plain_size = len(datagram) - TRANSPORT_OVERHEAD
        try:
            keypair.receiver.open_into(counter, datagram[TRANSPORT_HEADER_SIZE:], out[:plain_size])
        except DecryptionError:
            return self._drop(DropReason.DECRYPTION_FAILED, peer)
        # Only now, with the message authenticated, may its counter move the replay window.
        if not keypair.replay.check_and_update(counter, REJECT_AFTER_MESSAGES):
            return self._drop(DropReason.REPLAYED_COUNTER, peer)
        if keypair is peer.keypairs.next:
            self._confirm_next_keypair(peer, keypair, source, now)
        # The bookkeeping of an authenticated message, in wireguard-go's order.
        peer.endpoint = source  # roaming: follow the source of the last authenticated datagram
        timers = peer.timers
        current = peer.keypairs.current
        if (
            current is not None
            and now > current.rekey_on_receive_at
            and not timers.sent_last_minute_handshake
        ):  # keepKeyFreshReceiving: an initiator whose keys are about to expire rekeys, once
            timers.sent_last_minute_handshake = True
            self._send_handshake_initiation(peer, now, is_retry=False)
        if peer.persistent_keepalive_interval:  # only then is there a keepalive to push back
            timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.any_authenticated_packet_received()
        peer.rx_bytes += len(datagram)
        if plain_size == 0:
            peer.counters.keepalives_received += 1
            return DONE  # a keepalive: it did its job by arriving
        timers.data_received(now)
        return deliver(peer, out, plain_size, now)

    def _confirm_next_keypair(
        self, peer: Peer, keypair: Keypair, source: Endpoint, now: float
    ) -> None:
        """The first data message under ``next`` arrived: the responder's handshake is done."""
        retired = peer.keypairs.confirm_next(keypair)
        if retired is None:
            return
        self._index.retire_keypairs(retired)
        peer.endpoint = source
        self._handshake_complete(peer, initiator=False)
        self._send_staged_packets(peer, now)

    def _check_inner_packet(
        self, peer: Peer, out: memoryview, size: int, now: float
    ) -> WriteToTunnel | Dropped:
        """Cut the decrypted packet to its IP length; check its source is the peer's to use.

        Args:
            peer: the peer it came from.
            out: holds the packet, padding included, at ``out[:size]``.
            size: its length as decrypted.
            now: not needed here (layer 2's last step needs it: the switch ages its table).
        """
        version = out[0] >> 4
        length: int
        source: bytes
        if version == 4 and size >= _IPV4_HEADER_SIZE:
            length, source = _IPV4_LENGTH_SOURCE.unpack_from(out)
            if length > size or length < _IPV4_HEADER_SIZE:
                return self._drop(DropReason.INVALID_INNER_PACKET, peer)
        elif version == 6 and size >= _IPV6_HEADER_SIZE:
            length, source = _IPV6_LENGTH_SOURCE.unpack_from(out)
            length += _IPV6_HEADER_SIZE
            if length > size:
                return self._drop(DropReason.INVALID_INNER_PACKET, peer)
        else:
            if size >= 2 and version < 4:
                # Top bits 00: the frame header of a peer in Mode = tap (ethernet.py).
                self._actions.append(ModeMismatch(peer.public_key, "frame"))
                return self._drop(DropReason.MODE_MISMATCH, peer)
            return self._drop(DropReason.INVALID_INNER_PACKET, peer)
        # Cryptokey routing, the other way: the peer may only use its own allowed IPs.
        if self._route(source) is not peer:
            return self._drop(DropReason.DISALLOWED_SOURCE, peer)
        return WriteToTunnel(length, peer.public_key)

    # --- handshake messages --------------------------------------------------------------------

    def _receive_handshake_message(
        self, source: Endpoint, datagram: Buffer, out: memoryview, now: float
    ) -> WriteToNetwork | Done | Dropped:
        """An initiation, a response or a cookie reply (wireguard-go ``RoutineHandshake``)."""
        try:
            # Checks the type word and the exact length of each message type.
            message = parse_message_untrusted(datagram)
        except InvalidMessage:
            return self._drop(DropReason.MALFORMED)
        if isinstance(message, CookieReply):
            return self._consume_cookie_reply(message, now)
        checker = self._cookie_checker
        identity = self._identity
        if checker is None or identity is None:
            return self._drop(DropReason.NO_PRIVATE_KEY)
        # mac1 first, always: it costs one hash, and proves the sender knows our public key.
        if not checker.check_mac1(datagram):
            return self._drop(DropReason.INVALID_MAC1)
        if self.under_load:
            address = cookie_source(source[0], source[1])
            if not checker.check_mac2(datagram, address, now):
                # Make the sender prove it receives at its address before we spend a
                # Diffie-Hellman on it: answer with a cookie, and count the message dropped.
                # A cookie reply costs CPU too: a few per source and second, and no more.
                if not self._cookie_reply_limiter.allow(address[:-2], now):
                    return self._drop(DropReason.COOKIE_RATE_LIMITED)
                sender_index = _SENDER_INDEX.unpack_from(datagram)[0]
                reply = checker.create_reply(datagram, sender_index, address, now, self._rng)
                self._drop(DropReason.COOKIE_REQUIRED)
                return _write_reply(out, reply, source)
            if not self._rate_limiter.allow(address[:-2], now):
                return self._drop(DropReason.RATE_LIMITED)
        if isinstance(message, HandshakeInitiation):
            return self._consume_initiation(identity, message, source, out, now)
        assert isinstance(message, HandshakeResponse)
        return self._consume_response(identity, message, source, now)

    def _lookup_handshake(self, public_key: PublicKey) -> PeerHandshakeState | None:
        peer = self._peers.get(public_key)
        return peer.handshake if peer is not None else None

    def _consume_initiation(
        self,
        identity: StaticIdentity,
        message: HandshakeInitiation,
        source: Endpoint,
        out: memoryview,
        now: float,
    ) -> WriteToNetwork | Done | Dropped:
        """Authenticate an initiation and answer it; the new keypair waits in ``next``."""
        try:
            state = consume_initiation_untrusted(identity, message, self._lookup_handshake, now)
        except UnknownPeer as exc:
            return self._drop(DropReason.UNKNOWN_PEER, public_key=exc.public_key)
        except ReplayedHandshake:
            return self._drop(DropReason.REPLAYED_INITIATION)
        except HandshakeFlood:
            return self._drop(DropReason.INITIATION_FLOOD)
        except LowOrderKey:
            return self._drop(DropReason.LOW_ORDER_KEY)
        except HandshakeError:
            return self._drop(DropReason.HANDSHAKE_INVALID)
        peer = self._peers[state.remote_static]
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.any_authenticated_packet_received()
        peer.endpoint = source
        peer.rx_bytes += INITIATION_SIZE
        peer.counters.initiations_received += 1
        # The response (wireguard-go: CreateMessageResponse, then BeginSymmetricSession).
        peer.last_sent_handshake = now
        # Our own initiation, if one was in flight, is superseded.
        self._index.retire_handshake(state.local_index)
        index = self._index.new_handshake_index(peer)
        response = peer.cookies.add_macs(create_response(state, index, self._rng).to_bytes(), now)
        self._begin_session(peer, now)
        timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.any_authenticated_packet_sent()
        peer.tx_bytes += len(response)
        peer.counters.responses_sent += 1
        return _write_reply(out, response, source)

    def _consume_response(
        self, identity: StaticIdentity, message: HandshakeResponse, source: Endpoint, now: float
    ) -> WriteToNetwork | Done | Dropped:
        """Finish the handshake we initiated: the new keypair is ``current`` at once."""
        peer = self._index.handshakes.get(message.receiver)
        if peer is None:
            return self._drop(DropReason.UNKNOWN_INDEX)
        try:
            consume_response_untrusted(identity, peer.handshake, message)
        except LowOrderKey:
            return self._drop(DropReason.LOW_ORDER_KEY, peer)
        except HandshakeError:
            return self._drop(DropReason.HANDSHAKE_INVALID, peer)
        peer.endpoint = source
        peer.rx_bytes += RESPONSE_SIZE
        peer.counters.responses_received += 1
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.any_authenticated_packet_received()
        self._begin_session(peer, now)
        self._handshake_complete(peer, initiator=True)
        # Confirm the new keys to the responder (and flush staged packets) right away.
        self._send_keepalive(peer, now)
        return DONE

    def _consume_cookie_reply(self, message: CookieReply, now: float) -> Done | Dropped:
        """Keep the cookie for the mac2 of our next initiation to that peer."""
        peer = self._index.peer_for_index(message.receiver)
        if peer is None:
            return self._drop(DropReason.UNKNOWN_INDEX)
        try:
            peer.cookies.consume_reply_untrusted(message, now)
        except (HandshakeError, DecryptionError):
            return self._drop(DropReason.INVALID_COOKIE_REPLY, peer)
        peer.counters.cookie_replies_received += 1
        return DONE


def _write_reply(out: memoryview, reply: bytes, destination: Endpoint) -> WriteToNetwork:
    """Put a handshake reply in ``out`` for the caller to send."""
    out[: len(reply)] = reply
    return WriteToNetwork(len(reply), destination)
