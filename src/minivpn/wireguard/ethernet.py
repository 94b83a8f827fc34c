"""Layer-2 mode (``Mode = tap``): Ethernet frames in WireGuard data messages, switched by MAC.

**A minivpn extension.**  WireGuard carries IP packets; here the same data messages carry
Ethernet frames read from a TAP device, so both ends must be minivpn with ``Mode = tap``
(docs/l2.md).  Everything else is WireGuard's, and is not copied here but called: the
handshake, the keys and their slots, the timers, cookies, the replay window, padding, roaming.
:class:`EthernetCore` *is* a :class:`~minivpn.wireguard.core.WireGuardCore`, with two more
calls beside ``encapsulate`` and ``decapsulate``, each with the steps of its layer-3 twin in
the same order; only what is inside the message, and which peer it goes to, differ::

    layer 3: encapsulate / decapsulate          layer 2: encapsulate_frame / decapsulate_frame
    ----------------------------------          ----------------------------------------------
    an IP packet from the TUN device            an Ethernet frame from the TAP device
    one peer: cryptokey routing (the            the learning switch (switch.py): one peer for
      destination in AllowedIPs)                  a known unicast MAC, else every peer with a
                                                  live session and the TAP device (flooding)
    the source IP checked against the           the source MAC learned, and checked against
      peer's AllowedIPs                           the peer's AllowedMACs
    padding cut by the IP header's length       padding cut by the frame header's length

**On the wire.**  The plaintext of a layer-2 data message is a 2-byte *frame header*, the
frame, then WireGuard's zero padding::

    0          2                             2 + n
    | n (u16)  | Ethernet frame, n bytes      | zeros, to a multiple of 16 (capped) |
      big-endian, below 0x4000

An Ethernet frame has no length field of its own, so without the header the receiver could
not cut the padding off; and the header's two top bits are zero, where an IP packet has its
version (4 or 6: top bits 01), so each mode tells the other's messages apart *after*
authenticating them, and says so (:class:`~minivpn.wireguard.events.ModeMismatch`) instead of
delivering garbage: this class on an IP packet, ``ReceivePath._check_inner_packet`` on a frame.
wireguard-go and the kernel drop a frame as "an invalid IP version".  The cost is two bytes of
each message, so the TAP device's MTU is wg-quick's rule minus 16 (the Ethernet header, 14,
and this header, 2): 1404 on a 1500-byte path, where a full frame then fills a datagram of 1500
bytes over IPv6 exactly (``padded_size`` keeps it there).

**Flooding.**  One frame may go to several peers.  ``encapsulate_frame`` and
``decapsulate_frame`` then write one data message per peer, one after the other in ``out``, and
return :class:`~minivpn.wireguard.results.Switched`, which says where each one is (and whether
the frame also goes to the TAP device).  A hub forwarding a frame from one spoke to another
re-encrypts it in the same call: the frame never touches the TAP device.  A flood goes to every
peer with a live session (a current keypair that may send); a peer without one is not sent the
frame but gets a handshake started, so that it is live for the next one.
"""

from __future__ import annotations

import enum
import os
import struct
import time
from typing import TYPE_CHECKING, Final, TypeAlias

import attrs

from minivpn.wireguard.constants import DEFAULT_MTU, PADDING_MULTIPLE
from minivpn.wireguard.core import WireGuardCore
from minivpn.wireguard.events import DropReason, MacMoved, ModeMismatch, SendDatagram
from minivpn.wireguard.messages import MessageType
from minivpn.wireguard.peer import Peer
from minivpn.wireguard.results import (
    DONE,
    DatagramAt,
    FrameReceived,
    FrameSent,
    Queued,
    Switched,
    WriteFrame,
    WriteToNetwork,
)
from minivpn.wireguard.send import TRANSPORT_OVERHEAD
from minivpn.wireguard.switch import (
    DEFAULT_AGING,
    DEFAULT_CAPACITY,
    DEFAULT_FLOOD_BURST,
    DEFAULT_FLOOD_RATE,
    LearningSwitch,
    MacEntry,
    MacPrefix,
    Verdict,
    format_mac,
)
from minivpn.wireguard.uapi import MacTableEntry

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from minivpn.wireguard.config import Config
    from minivpn.wireguard.device import Buffer, Rng
    from minivpn.wireguard.events import Action, Endpoint
    from minivpn.wireguard.keys import PrivateKey, PublicKey
    from minivpn.wireguard.uapi import DeviceSnapshot

__all__ = [
    "ETHERNET_HEADER_SIZE",
    "FRAME_HEADER_SIZE",
    "LOCAL",
    "MAX_FRAME_SIZE",
    "TAP_OVERHEAD",
    "EthernetCore",
    "Local",
    "Port",
]

#: Destination MAC, source MAC, EtherType (or 802.3 length): what every frame starts with.
ETHERNET_HEADER_SIZE = 14
#: The frame header in front of each frame inside a data message: its length.
FRAME_HEADER_SIZE = 2
#: The largest frame the header can describe: its top two bits must stay zero.
MAX_FRAME_SIZE = 0x3FFF
#: What a frame carries beyond its IP packet, inside the message: the TAP device's MTU is the
#: tunnel's (wg-quick's rule) minus this.
TAP_OVERHEAD = ETHERNET_HEADER_SIZE + FRAME_HEADER_SIZE

_FRAME_HEADER = struct.Struct("!H")
#: Destination and source MAC addresses, right after the frame header.
_ADDRESSES = struct.Struct("!2x6s6s")
_TRANSPORT_DATA = int(MessageType.TRANSPORT_DATA)
#: IP versions, as the first nibble of a plaintext shows them.
_IP_VERSIONS = (4, 6)


class Local(enum.Enum):
    """The switch's port that is not a peer: this interface's own TAP device."""

    TAP = "tap"


#: The TAP device, as a port of the switch.
LOCAL: Final = Local.TAP
#: A port of the switch: a peer, or the TAP device.
Port: TypeAlias = Peer | Local


class EthernetCore(WireGuardCore):
    """A WireGuard device that carries Ethernet frames and switches them between its peers.

    Build it as a :class:`~minivpn.wireguard.core.WireGuardCore` (the same arguments), or with
    :meth:`from_config`; two more:

    Args:
        mac_aging: seconds a learned MAC address lives without a frame from it.
        mac_table_size: the most MAC addresses the switch remembers.
        flood_rate: flooded frames a second each port (a peer, the TAP device) may send, or
            None: no limit (the switch's storm control).
        flood_burst: flooded frames a port may send at once above the rate.

    One frame each way, as :mod:`minivpn.runtime.frames` does it::

        message[2:2 + n] = frame                      # read from the TAP device behind 2 bytes
        result = core.encapsulate_frame(message[:2 + n], out, now)

        result = core.decapsulate_frame(source, datagram, out, now)
        if isinstance(result, WriteFrame):
            tap.write_nowait(out[result.start : result.start + result.size])

    and ``Switched`` results (a frame for several places) as their docstring says.

    Attributes:
        switch: the learning switch; its ports are the peers and :data:`LOCAL`.
    """

    def __init__(
        self,
        private_key: PrivateKey | None = None,
        *,
        listen_port: int = 0,
        fwmark: int = 0,
        mtu: int = DEFAULT_MTU - FRAME_HEADER_SIZE - ETHERNET_HEADER_SIZE,
        rng: Rng = os.urandom,
        jitter: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        report_drops: bool = False,
        mac_aging: float = DEFAULT_AGING,
        mac_table_size: int = DEFAULT_CAPACITY,
        flood_rate: float | None = DEFAULT_FLOOD_RATE,
        flood_burst: float = DEFAULT_FLOOD_BURST,
    ) -> None:
        super().__init__(
            private_key,
            listen_port=listen_port,
            fwmark=fwmark,
            mtu=mtu,
            rng=rng,
            jitter=jitter,
            wall_clock=wall_clock,
            report_drops=report_drops,
        )
        self.switch: LearningSwitch[Port] = LearningSwitch(
            mac_aging, mac_table_size, flood_rate, flood_burst
        )

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        now: float,
        endpoints: Mapping[PublicKey, Endpoint] | None = None,
        mtu: int | None = None,
        rng: Rng = os.urandom,
        jitter: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        report_drops: bool = False,
    ) -> EthernetCore:
        """Build a device from a ``Mode = tap`` configuration: its peers and their AllowedMACs.

        The arguments are :meth:`WireGuardCore.from_config`'s; without ``mtu`` or the
        config's ``MTU``, the TAP device's default MTU (1404).  The config's ``FloodRate``
        and ``FloodBurst``, where given, set the switch's storm control.
        """
        if mtu is None and config.interface.mtu is None:
            mtu = DEFAULT_MTU - TAP_OVERHEAD
        core = super().from_config(
            config,
            now=now,
            endpoints=endpoints,
            mtu=mtu,
            rng=rng,
            jitter=jitter,
            wall_clock=wall_clock,
            report_drops=report_drops,
        )
        assert isinstance(core, EthernetCore)
        interface = config.interface
        if interface.flood_rate is not None:  # 0: FloodRate = off
            core.switch.flood_rate = float(interface.flood_rate) if interface.flood_rate else None
        if interface.flood_burst is not None:
            core.switch.flood_burst = float(interface.flood_burst)
        for peer_config in config.peers:
            if peer_config.allowed_macs and peer_config.public_key in core.peers:
                core.set_allowed_macs(peer_config.public_key, peer_config.allowed_macs)
        return core

    # --- configuration ---------------------------------------------------------------------------

    def set_allowed_macs(self, public_key: PublicKey, prefixes: Iterable[MacPrefix] | None) -> None:
        """Limit the source MAC addresses a peer's frames may have (None: any unicast).

        Raises:
            KeyError: no such peer.
        """
        self.switch.set_allowed_macs(self._peers[public_key], prefixes)

    def _remove(self, peer: Peer) -> None:
        self.switch.forget_port(peer)
        super()._remove(peer)

    # --- the way out: a frame from the TAP device --------------------------------------------

    def encapsulate_frame(self, message: memoryview, out: memoryview, now: float) -> FrameSent:
        """Encrypt an Ethernet frame read from the TAP device for the peer(s) the switch picks.

        Args:
            message: :data:`FRAME_HEADER_SIZE` bytes of room, then the frame (the runtime reads
                the TAP device into ``message[2:]``); the core writes the frame header there.
            out: where to write the data message(s): at least ``len(message) + 47`` bytes, and
                as much again for every other peer a flooded frame goes to (what does not fit
                is queued as :class:`~minivpn.wireguard.events.SendDatagram` actions).
            now: the current monotonic time.

        Returns:
            :class:`WriteToNetwork`: send ``out[:size]`` to ``endpoint`` (known unicast);
            :class:`Switched`: send each of its datagrams (a flood);
            :class:`Queued`: the frame waits for a handshake with its peer;
            :class:`Done`: nothing to send (the destination is on this side, or no peer has
            a live session to flood to);
            :class:`Dropped`: why not (also counted in :attr:`drops`).
        """
        size = len(message) - FRAME_HEADER_SIZE
        if size < ETHERNET_HEADER_SIZE:
            return self._drop(DropReason.INVALID_FRAME)
        if size > self.mtu + ETHERNET_HEADER_SIZE:
            return self._drop(DropReason.OVERSIZED_FRAME)  # it would not fit one datagram
        _FRAME_HEADER.pack_into(message, 0, size)
        # The switch: learn where the source is (this side), pick where the frame goes.
        destination, source = _ADDRESSES.unpack_from(message)
        port = self.switch.forward(source, destination, LOCAL, now)
        if isinstance(port, Peer):
            return self._send_frame(port, message, out, now)
        if port is Verdict.FLOOD:
            datagrams = self._flood(message, None, out, 0, now)
            return Switched(0, 0, datagrams) if datagrams else DONE
        if port is Verdict.FILTER:
            return DONE  # a host on this side, which has the frame already
        if port is Verdict.FLOOD_LIMITED:
            return self._drop(DropReason.FLOOD_LIMITED)  # storm control
        return self._drop(DropReason.INVALID_FRAME)  # its source is not a unicast address

    def _send_frame(self, peer: Peer, message: Buffer, out: memoryview, now: float) -> FrameSent:
        """To one peer: a live session, or the frame waits for one (as ``encapsulate`` does)."""
        keypair = peer.keypairs.current
        if keypair is None or not keypair.can_send(now):
            self._stage(peer, bytes(message), now)
            return Queued(peer.public_key)
        endpoint = peer.endpoint
        if endpoint is None:
            return self._drop(DropReason.NO_ENDPOINT, peer)
        return WriteToNetwork(self._send_data(peer, keypair, message, out, now), endpoint)

    def _flood(
        self, message: Buffer, arrived_from: Peer | None, out: memoryview, start: int, now: float
    ) -> tuple[DatagramAt, ...]:
        """One data message per peer with a live session, except the one the frame came from.

        They are written one after the other in ``out`` from ``start``; one that does not fit
        is queued as a SendDatagram action.  A peer without a live session gets a handshake
        started instead, so that the next flood reaches it.
        """
        datagrams = []
        room = len(message) + PADDING_MULTIPLE + TRANSPORT_OVERHEAD
        for peer in self._peers.values():
            if peer is arrived_from:
                continue  # split horizon
            keypair = peer.keypairs.current
            endpoint = peer.endpoint
            if endpoint is None:
                continue
            if keypair is None or not keypair.can_send(now):
                self._send_handshake_initiation(peer, now, is_retry=False)
                continue
            if start + room <= len(out):
                size = self._send_data(peer, keypair, message, out[start:], now)
                datagrams.append(DatagramAt(start, size, endpoint))
                start += size
            else:
                spare = memoryview(bytearray(room))
                size = self._send_data(peer, keypair, message, spare, now)
                self._actions.append(SendDatagram(bytes(spare[:size]), endpoint))
        return tuple(datagrams)

    # --- the way in: a datagram from a peer ----------------------------------------------------

    def decapsulate_frame(
        self, source: Endpoint, datagram: Buffer, out: memoryview, now: float
    ) -> FrameReceived:
        """Process one UDP datagram from ``source``: a data message carrying a frame is
        switched; anything else is :meth:`decapsulate`'s (handshakes, cookies).

        A data message takes the steps of
        :meth:`~minivpn.wireguard.receive.ReceivePath.decapsulate`, by the same method
        (``_receive_data_message``); only the last one differs, which that method is given:
        :meth:`_switch_frame` instead of the inner IP packet's check.

        Args:
            source: the sender's ``(ip, port)``.
            datagram: the datagram (attacker-controlled: anything is handled, nothing raises).
            out: where to write the decrypted frame, a reply, or the data messages that carry
                the frame on to other peers: at least ``len(datagram)`` bytes, and
                ``len(datagram) + 16`` more for every other peer a flooded frame goes to
                (what does not fit is queued as SendDatagram actions).
            now: the current monotonic time.

        Returns:
            :class:`WriteFrame`: write the frame to the TAP device;
            :class:`Switched`: the frame goes to other peers (and maybe the TAP device);
            :class:`WriteToNetwork`: send ``out[:size]`` (a handshake reply) to ``endpoint``;
            :class:`Queued`: forwarded to a peer that has no session yet: it waits;
            :class:`Done`: nothing to do (a keepalive, a handshake message, a frame for a
            host behind the sender);
            :class:`Dropped`: why not (also counted in :attr:`drops`).
        """
        if len(datagram) < TRANSPORT_OVERHEAD or datagram[0] != _TRANSPORT_DATA:
            return self._receive_handshake_message(source, datagram, out, now)
        return self._receive_data_message(source, datagram, out, now, self._switch_frame)

    def _switch_frame(self, peer: Peer, out: memoryview, size: int, now: float) -> FrameReceived:
        """Check the decrypted frame, learn its source, and send it where the switch says.

        Args:
            peer: the peer it came from.
            out: holds the frame header, the frame and the padding at ``out[:size]``; what
                goes on to other peers is written after it.
            size: the decrypted length.
            now: the current monotonic time (the switch ages its table by it).
        """
        (length,) = _FRAME_HEADER.unpack_from(out)
        if length > MAX_FRAME_SIZE:  # the top bits are not zero: not a frame header
            if out[0] >> 4 in _IP_VERSIONS:
                return self._mode_mismatch(peer, "packet")
            return self._drop(DropReason.INVALID_FRAME, peer)
        end = FRAME_HEADER_SIZE + length
        if length < ETHERNET_HEADER_SIZE or end > size:
            return self._drop(DropReason.INVALID_FRAME, peer)
        destination, source = _ADDRESSES.unpack_from(out)
        port = self.switch.forward(source, destination, peer, now)
        if port is LOCAL:
            return WriteFrame(FRAME_HEADER_SIZE, length, peer.public_key)
        if isinstance(port, Peer):
            # A host behind another peer: a hub forwards the frame, re-encrypted, past its TAP.
            result = self._send_frame(port, out[:end], out[size:], now)
            if isinstance(result, WriteToNetwork):
                return Switched(0, 0, (DatagramAt(size, result.size, result.endpoint),))
            return result
        if port is Verdict.FLOOD:
            datagrams = self._flood(out[:end], peer, out, size, now)
            return Switched(FRAME_HEADER_SIZE, length, datagrams)
        if port is Verdict.FILTER:
            return DONE  # a host behind the sender: it has the frame already
        if port is Verdict.DISALLOWED_SOURCE:
            return self._drop(DropReason.DISALLOWED_MAC, peer)
        if port is Verdict.FLOOD_LIMITED:
            return self._drop(DropReason.FLOOD_LIMITED, peer)  # storm control
        return self._drop(DropReason.INVALID_FRAME, peer)  # a source that is not unicast

    def _mode_mismatch(self, peer: Peer, received: str) -> FrameReceived:
        self._actions.append(ModeMismatch(peer.public_key, received))
        return self._drop(DropReason.MODE_MISMATCH, peer)

    # --- events and state ------------------------------------------------------------------------

    def take_actions(self) -> Sequence[Action]:
        """:meth:`WireGuardCore.take_actions`, with the switch's MAC moves as events."""
        moves = self.switch.moves
        if moves:
            for move in moves:
                self._actions.append(
                    MacMoved(move.mac, _key(move.old), _key(move.new), move.unreported)
                )
            moves.clear()
        return super().take_actions()

    def mac_table(self, now: float) -> list[MacEntry[Port]]:
        """The switch's live entries (aged-out ones are forgotten first)."""
        self.switch.expire(now)
        return list(self.switch.entries(now))

    def snapshot_at(self, now: float) -> DeviceSnapshot:
        """:meth:`snapshot`, with the mode, the storm control, the MAC table and each peer's
        AllowedMACs."""
        snapshot = self.snapshot()
        table = tuple(
            MacTableEntry(format_mac(entry.mac), _key(entry.port), int(entry.age))
            for entry in self.mac_table(now)
        )
        peers = []
        for peer_snapshot in snapshot.peers:
            allowed = self.switch.allowed_macs(self._peers[peer_snapshot.public_key])
            listed = tuple(str(prefix) for prefix in allowed) if allowed is not None else ()
            peers.append(attrs.evolve(peer_snapshot, allowed_macs=listed))
        rate, burst = self.switch.flood_rate, self.switch.flood_burst
        return attrs.evolve(
            snapshot,
            mode="tap",
            mac_table=table,
            peers=peers,
            flood_rate=round(rate) if rate is not None else 0,
            flood_burst=round(burst),
        )


def _key(port: Port) -> PublicKey | None:
    """A port as events and snapshots name it: the peer's public key, or None for the TAP."""
    return port.public_key if isinstance(port, Peer) else None
