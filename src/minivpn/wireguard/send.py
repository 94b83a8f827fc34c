"""The way out: an IP packet from the TUN device becomes a WireGuard data message.

The functions in this file occur in the order packets are processed (as in wireguard-go's
``device/send.go``):

1. :meth:`SendPath.encapsulate`: cryptokey routing picks the peer by the packet's destination;
   without a session the packet is staged and a handshake starts (:meth:`SendPath._stage`);
2. :meth:`SendPath._send_data`: the message is built (:meth:`SendPath._seal`: padding, header,
   ChaCha20-Poly1305) and the peer's timers and counters are told;
3. what a handshake sets in motion: :meth:`SendPath._send_staged_packets` once keys exist,
   :meth:`SendPath._send_handshake_initiation`, :meth:`SendPath._send_keepalive`.

Only step 1 returns a result (:mod:`minivpn.wireguard.results`); the datagrams of steps 3 go out
as :class:`~minivpn.wireguard.events.SendDatagram` actions (``core.take_actions()``).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from minivpn.wireguard.constants import PADDING_MULTIPLE, REKEY_AFTER_MESSAGES, REKEY_TIMEOUT
from minivpn.wireguard.crypto import TAG_SIZE
from minivpn.wireguard.device import Buffer, Device
from minivpn.wireguard.events import DropReason, SendDatagram
from minivpn.wireguard.messages import TRANSPORT_HEADER_SIZE, MessageType
from minivpn.wireguard.noise import create_initiation
from minivpn.wireguard.results import Encapsulated, Queued, WriteToNetwork

if TYPE_CHECKING:
    from minivpn.wireguard.keypair import Keypair
    from minivpn.wireguard.peer import Peer

__all__ = ["TRANSPORT_OVERHEAD", "SendPath", "padded_size"]

#: Bytes a data message adds around its (padded) plaintext: 16 of header, 16 of tag.
TRANSPORT_OVERHEAD = TRANSPORT_HEADER_SIZE + TAG_SIZE

#: type (4), receiver index, counter: the header of a data message (little-endian).
_TRANSPORT_HEADER = struct.Struct("<IIQ")
_TRANSPORT_DATA = int(MessageType.TRANSPORT_DATA)
#: The destination address of an IPv4 header (bytes 16-19) and of an IPv6 one (24-39).
_IPV4_DESTINATION = struct.Struct("!16x4s")
_IPV6_DESTINATION = struct.Struct("!24x16s")
#: Zero padding of each possible length (padding is always shorter than 16 bytes).
_ZERO_PADDING = tuple(bytes(n) for n in range(PADDING_MULTIPLE))


def _unrouted(destination: bytes) -> DropReason:
    """Why a packet to *destination*, in no peer's allowed IPs, is dropped."""
    # ff00::/8; 224.0.0.0/4, and above it the broadcast address.
    multicast = destination[0] == 0xFF if len(destination) == 16 else destination[0] >= 224
    return DropReason.MULTICAST if multicast else DropReason.NO_ROUTE


def padded_size(size: int, mtu: int) -> int:
    """The plaintext size after padding a packet of ``size`` bytes (``calculatePaddingSize``).

    Plaintexts are padded with zeros to a multiple of 16 bytes, so that the length of a data
    message reveals less about its content, but never beyond the MTU: a full-size packet stays
    full-size.  A packet longer than the MTU is padded as its last MTU-sized piece would be.
    An ``mtu`` of 0 means "no cap".

    Args:
        size: the packet's length in bytes.
        mtu: the device's MTU.

    Returns:
        The padded length, at least ``size`` and less than ``size + 16``.
    """
    last_unit = size
    if mtu and last_unit > mtu:
        last_unit %= mtu
    padded = (last_unit + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)
    if mtu and padded > mtu:
        padded = mtu
    return size + padded - last_unit


class SendPath(Device):
    """The send direction of the per-packet path (see the module docstring)."""

    def encapsulate(self, packet: Buffer, out: memoryview, now: float) -> Encapsulated:
        """Encrypt an IP packet read from the TUN device for the peer its destination routes to.

        Args:
            packet: an IPv4 or IPv6 packet.  It is only read (and copied if it must wait for a
                handshake).
            out: where to write the data message: at least ``len(packet) + 15 + 32`` bytes.
            now: the current monotonic time.

        Returns:
            :class:`WriteToNetwork`: send ``out[:size]`` to ``endpoint``;
            :class:`Queued`: the packet waits for a handshake, which is under way;
            :class:`Dropped`: why not (also counted in :attr:`drops`).
            A handshake to start, and anything else the call sets in motion, waits in
            :meth:`take_actions`.
        """
        if self.packet_tracer is not None:  # someone traces: the tracer runs the packet through
            return self.packet_tracer.encapsulate(self, packet, out, now)
        # Cryptokey routing: the destination address (IPv4 bytes 16-19, IPv6 24-39) picks the
        # peer.
        size = len(packet)
        version = packet[0] >> 4 if size else 0
        destination: bytes
        if version == 4 and size >= 20:
            (destination,) = _IPV4_DESTINATION.unpack_from(packet)
        elif version == 6 and size >= 40:
            (destination,) = _IPV6_DESTINATION.unpack_from(packet)
        else:
            return self._drop(DropReason.INVALID_INNER_PACKET)
        peer = self._route(destination)
        if peer is None:
            return self._drop(_unrouted(destination))
        # A session that may still send, or the packet waits for a new one.
        keypair = peer.keypairs.current
        if keypair is None or not keypair.can_send(now):
            self._stage(peer, bytes(packet), now)
            return Queued(peer.public_key)
        endpoint = peer.endpoint
        if endpoint is None:
            return self._drop(DropReason.NO_ENDPOINT, peer)
        return WriteToNetwork(self._send_data(peer, keypair, packet, out, now), endpoint)

    def _send_data(
        self, peer: Peer, keypair: Keypair, packet: Buffer, out: memoryview, now: float
    ) -> int:
        """Build the data message for ``packet`` (or a keepalive) and note that it is sent.

        The caller has checked that the keypair can send and that the peer has an endpoint.

        Returns:
            The size of the message written at the start of ``out``.
        """
        size = self._seal(keypair, packet, out)
        peer.tx_bytes += size
        timers = peer.timers
        if peer.persistent_keepalive_interval:  # only then is there a keepalive to push back
            timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.any_authenticated_packet_sent()
        if len(packet):
            timers.data_sent(now)
        # keepKeyFreshSending: the initiator rekeys after REKEY_AFTER_TIME, anyone after
        # REKEY_AFTER_MESSAGES (wireguard-go compares the counter *after* this message).
        if keypair.send_counter > REKEY_AFTER_MESSAGES or now > keypair.rekey_at:
            self._send_handshake_initiation(peer, now, is_retry=False)
        return size

    def _seal(self, keypair: Keypair, packet: Buffer, out: memoryview) -> int:
        """Write the data message carrying ``packet`` at the start of ``out``.

        ``type=4 | receiver index | counter | ChaCha20-Poly1305(packet + zero padding)``, the
        counter being the message's nonce and the receiver index the peer's name for the
        keypair (:mod:`minivpn.wireguard.messages`).

        Returns:
            The size of the message.
        """
        size = len(packet)
        padded = padded_size(size, self.mtu)
        plaintext = packet
        if padded != size:
            plaintext = self._pad_buffer[:padded]
            plaintext[:size] = packet
            plaintext[size:] = _ZERO_PADDING[padded - size]
        counter = keypair.send_counter
        keypair.send_counter = counter + 1
        _TRANSPORT_HEADER.pack_into(out, 0, _TRANSPORT_DATA, keypair.remote_index, counter)
        end = TRANSPORT_HEADER_SIZE + padded + TAG_SIZE
        keypair.sender.seal_into(counter, plaintext, out[TRANSPORT_HEADER_SIZE:end])
        return end

    # --- waiting for a session -----------------------------------------------------------------

    def _stage(self, peer: Peer, packet: bytes, now: float) -> None:
        """Queue a packet until a session is usable, and make sure a handshake is under way."""
        if peer.staged_full:
            peer.staged.popleft()
            self._drop(DropReason.STAGED_OVERFLOW, peer)
        peer.staged.append(packet)
        self._send_staged_packets(peer, now)

    def _send_staged_packets(self, peer: Peer, now: float) -> None:
        """Send the staged packets if the current keypair can, else start a handshake."""
        staged = peer.staged
        while staged:
            keypair = peer.keypairs.current
            if keypair is None or not keypair.can_send(now):
                self._send_handshake_initiation(peer, now, is_retry=False)
                return
            packet = staged.popleft()
            if peer.endpoint is None:
                self._drop(DropReason.NO_ENDPOINT, peer)
                continue
            out = memoryview(bytearray(len(packet) + PADDING_MULTIPLE + TRANSPORT_OVERHEAD))
            size = self._send_data(peer, keypair, packet, out, now)
            self._actions.append(SendDatagram(bytes(out[:size]), peer.endpoint))
            if not packet:
                peer.counters.keepalives_sent += 1
            if self.tracer is not None:
                self.tracer.staged_sent(peer, packet, out, size)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        """Send an empty data message (or let staged packets serve as one)."""
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged_packets(peer, now)

    # --- handshake initiations -----------------------------------------------------------------

    def _send_handshake_initiation(self, peer: Peer, now: float, *, is_retry: bool) -> None:
        """Start (or retry) a handshake with ``peer``, at most once per REKEY_TIMEOUT."""
        timers = peer.timers
        if not is_retry:
            timers.handshake_attempts = 0
        if now - peer.last_sent_handshake < REKEY_TIMEOUT:
            return
        peer.last_sent_handshake = now
        identity = self._identity
        if identity is None:
            self._drop(DropReason.NO_PRIVATE_KEY, peer)
            return
        if peer.is_low_order:
            self._drop(DropReason.LOW_ORDER_KEY, peer)
            return
        state = peer.handshake
        self._index.retire_handshake(state.local_index)
        index = self._index.new_handshake_index(peer)
        message = create_initiation(identity, state, index, self._wall_clock(), self._rng)
        datagram = peer.cookies.add_macs(message.to_bytes(), now)
        timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.any_authenticated_packet_sent()
        self._send_handshake_message(peer, datagram)
        timers.handshake_initiated(now)
        if self.tracer is not None:
            self.tracer.initiation_sent(peer, index, now, is_retry=is_retry)

    def _send_handshake_message(self, peer: Peer, datagram: bytes) -> None:
        """Queue a handshake message for the peer's endpoint, if it has one."""
        if peer.endpoint is None:
            self._drop(DropReason.NO_ENDPOINT, peer)
            return
        peer.tx_bytes += len(datagram)
        peer.counters.initiations_sent += 1
        self._actions.append(SendDatagram(datagram, peer.endpoint))
