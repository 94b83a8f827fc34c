"""The WireGuard state machine, sans-IO: datagrams, packets and clock values in, actions out.

:class:`WireGuardCore` is one WireGuard device: our static key, the peers, the index table of
sessions, the cryptokey routing table and the timers.  It is driven by a runtime (see
``docs/wireguard.md`` and :mod:`minivpn.runtime`) in the style of aioquic's ``QuicConnection``:

* a datagram arrives on the UDP socket: :meth:`~WireGuardCore.receive_datagram` (or the fast
  path :meth:`~WireGuardCore.decrypt_datagram_into_untrusted`);
* an IP packet arrives from the TUN device: :meth:`~WireGuardCore.send_packet` (or the fast path
  :meth:`~WireGuardCore.encrypt_packet_into`);
* time passes: :meth:`~WireGuardCore.next_deadline` says when to call
  :meth:`~WireGuardCore.handle_timer`;
* ``wg`` configures the device: :meth:`~WireGuardCore.apply` a UAPI set request,
  :meth:`~WireGuardCore.snapshot` for a get request.

Each call returns a list of actions (:mod:`minivpn.wireguard.events`): datagrams to send, packets
to deliver, events.  The fast paths return their main result directly and leave any side effects
(a handshake started, staged packets flushed...) for :meth:`~WireGuardCore.take_actions`.

Time is two different clocks, both passed in: ``now``, a monotonic clock in seconds (trio's
``trio.current_time()``) given to every call, drives the timers and every expiry; the wall clock
(``wall_clock``, :func:`time.time` unless injected) only goes into the TAI64N timestamp of
initiations and the "latest handshake" that ``wg show`` prints.

The receive path, message by message (wireguard-go ``device/receive.go``):

1. *Handshake initiation*: check mac1 (always) and, under load, mac2 (else answer with a cookie
   reply) and the per-source rate limit; decrypt and authenticate it, check its timestamp is newer
   than the last one from that peer and that it is not a flood; answer with a response and park
   the new keypair in ``next``.
2. *Handshake response*: the same mac checks; find our initiation by the receiver index, finish
   the handshake, install the keypair as ``current``, send a keepalive to confirm it.
3. *Cookie reply*: decrypt the cookie with the mac1 we last sent, remember it for mac2.
4. *Transport data*: find the keypair by the receiver index, decrypt, *then* check the counter
   against the replay window, promote ``next`` if this is the first packet under it, check the
   inner packet's source against the peer's allowed IPs, deliver.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeAlias

from minivpn.wireguard.allowedips import AllowedIPs, Network
from minivpn.wireguard.config import Config, ConfigError
from minivpn.wireguard.cookie import CookieChecker, cookie_source
from minivpn.wireguard.errors import (
    DecryptionError,
    HandshakeError,
    HandshakeFlood,
    InvalidMessage,
    LowOrderKey,
    ReplayedHandshake,
    UnknownPeer,
    WireGuardError,
)
from minivpn.wireguard.events import (
    Action,
    DeliverPacket,
    DropReason,
    Endpoint,
    FwmarkChanged,
    HandshakeCompleted,
    HandshakeFailed,
    KeyMaterialZeroed,
    ListenPortChanged,
    PacketDropped,
    SendDatagram,
)
from minivpn.wireguard.keypair import IndexTable, Keypair
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey
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
    PeerHandshakeState,
    StaticIdentity,
    begin_session,
    consume_initiation_untrusted,
    consume_response_untrusted,
    create_initiation,
    create_response,
)
from minivpn.wireguard.peer import Peer
from minivpn.wireguard.ratelimit import RateLimiter
from minivpn.wireguard.replay import REJECT_AFTER_MESSAGES
from minivpn.wireguard.timers import (
    DEFAULT_MTU,
    KEEPALIVE_TIMEOUT,
    MAX_PEERS,
    MAX_TIMER_HANDSHAKES,
    PADDING_MULTIPLE,
    REKEY_AFTER_MESSAGES,
    REKEY_TIMEOUT,
    ZERO_KEY_MATERIAL_AFTER,
    Timer,
    TimerQueue,
)
from minivpn.wireguard.uapi import (
    EINVAL,
    DeviceSnapshot,
    PeerSnapshot,
    SetRequest,
    format_allowed_ip,
    format_endpoint,
)

if TYPE_CHECKING:
    from minivpn.wireguard.noise import SessionKeys

__all__ = [
    "MAX_DATAGRAM_SIZE",
    "TRANSPORT_OVERHEAD",
    "Buffer",
    "WireGuardCore",
    "padded_size",
]

#: What the data-path methods accept as a packet or datagram.
Buffer: TypeAlias = bytes | bytearray | memoryview
#: A callable returning that many random bytes (``os.urandom``).
Rng: TypeAlias = Callable[[int], bytes]

#: The largest UDP payload; buffers of this size hold any datagram or packet.
MAX_DATAGRAM_SIZE = 65535
#: Bytes a data message adds around its (padded) plaintext: 16 of header, 16 of tag.
TRANSPORT_OVERHEAD = TRANSPORT_HEADER_SIZE + 16

_TRANSPORT_HEADER = struct.Struct("<IIQ")
_U32 = struct.Struct("<I")
_U16_BE = struct.Struct("!H")
#: The total length and source address of an IPv4 header; the payload length and source
#: address of an IPv6 header.
_IPV4_LENGTH_SOURCE = struct.Struct("!2xH8x4s")
_IPV6_LENGTH_SOURCE = struct.Struct("!4xH2x16s")
#: The destination address of an IPv4 or IPv6 header, as bytes (a dictionary key).
_IPV4_DESTINATION = struct.Struct("!16x4s")
_IPV6_DESTINATION = struct.Struct("!24x16s")
_TRANSPORT_TYPE = int(MessageType.TRANSPORT_DATA)
_IPV4_HEADER_SIZE = 20
_IPV6_HEADER_SIZE = 40
#: Zero padding of each possible length, built once (padding is always under 16 bytes).
_ZERO_PADDING = tuple(bytes(n) for n in range(PADDING_MULTIPLE))
_NO_ACTIONS: Sequence[Action] = ()
#: Entries in the allowed-IPs lookup cache before it is emptied.
_ROUTE_CACHE_SIZE = 4096


def padded_size(size: int, mtu: int) -> int:
    """The plaintext size after padding a packet of ``size`` bytes (``calculatePaddingSize``).

    Plaintexts are padded with zeros to a multiple of 16 bytes, so that the length of a data
    message reveals less about its content, but never beyond the MTU: a full-size packet stays
    full-size.  A packet longer than the MTU (it can happen with offloads) is padded as its
    last MTU-sized piece would be.  An ``mtu`` of 0 means "no cap".

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


class WireGuardCore:
    """A WireGuard device as a sans-IO state machine.

    The runtime's UDP loop, in outline (trio; docs/wireguard.md has the whole runtime)::

        core = WireGuardCore.from_config(config, now=trio.current_time())
        while True:
            deadline = core.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                size, addr = await sock.recvfrom_into(buffer)
                n = core.decrypt_datagram_into_untrusted(
                    view[:size], addr[:2], out, trio.current_time()
                )
                if n:
                    await tun.send(out_view[:n])
            # handle_timer() also returns what the fast path queued (handshakes...).
            for action in core.handle_timer(trio.current_time()):
                ...  # SendDatagram: sock.sendto; DeliverPacket: tun; the rest: log

    Attributes:
        mtu: the TUN device's MTU; padding never goes beyond it.  The runtime keeps it current.
        listen_port: the UDP port: configured, and once bound the port actually bound (the
            runtime assigns it after binding, since port 0 means "any").
        fwmark: the firewall mark for the UDP socket (0: none).
        under_load: whether the device is "under load": handshake messages then need a valid
            mac2 (else they get a cookie reply) and pass a per-source rate limit.  The runtime
            decides: wireguard-go says yes while 128 or more handshake messages wait to be
            processed, and for UNDER_LOAD_AFTER_TIME (1 s) after.
        report_drops: also report every drop as a :class:`PacketDropped` action.
        drops: count of dropped datagrams and packets, by reason.
    """

    def __init__(
        self,
        private_key: PrivateKey | None = None,
        *,
        listen_port: int = 0,
        fwmark: int = 0,
        mtu: int = DEFAULT_MTU,
        rng: Rng = os.urandom,
        jitter: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        report_drops: bool = False,
    ) -> None:
        """Create a device with no peers.

        Args:
            private_key: our static private key; None (or the all-zero key) for none yet.
            listen_port: the UDP port (only stored and reported; the runtime binds).
            fwmark: the firewall mark (only stored and reported).
            mtu: the TUN device's MTU.
            rng: source of random bytes: indices, ephemeral keys, cookie secrets and nonces.
            jitter: source of the random delays added to handshake timers.
            wall_clock: returns the wall-clock time in seconds (for TAI64N timestamps and the
                time of the last handshake).
            report_drops: report drops as :class:`PacketDropped` actions too.
        """
        self.mtu = mtu
        self.listen_port = listen_port
        self.fwmark = fwmark
        self.under_load = False
        self.report_drops = report_drops
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self._rng = rng
        self._jitter = jitter if jitter is not None else random.Random()
        self._wall_clock = wall_clock
        self._identity: StaticIdentity | None = None
        self._cookie_checker: CookieChecker | None = None
        self._peers: dict[PublicKey, Peer] = {}
        self._allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self._index = IndexTable(rng)
        # The data path's view of the index table (one attribute lookup less per packet).
        self._keypairs_by_index = self._index.keypairs
        self._timers = TimerQueue()
        self._rate_limiter = RateLimiter()
        self._actions: list[Action] = []
        # The peer of the last packet the data path delivered (for DeliverPacket events).
        self._delivered_from: Peer | None = None
        # Scratch buffers of the data path, allocated once: the padded plaintext of an outgoing
        # packet, and the decrypted packet for the convenience methods.
        self._pad_buffer = bytearray(MAX_DATAGRAM_SIZE)
        self._pad_view = memoryview(self._pad_buffer)
        self._receive_buffer = bytearray(MAX_DATAGRAM_SIZE)
        self._receive_view = memoryview(self._receive_buffer)
        # Destination/source address bytes -> peer: see _lookup_route.
        self._routes: dict[bytes, Peer] = {}
        if private_key is not None and not private_key.is_zero():
            self._set_identity(private_key)

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
    ) -> WireGuardCore:
        """Build a device from a parsed configuration file, as ``wg setconf`` would.

        A peer with a persistent keepalive starts its handshake at once (its first keepalive
        is sent when the interval is turned on, as with UAPI).  A ``[Peer]`` whose public key
        is our own is ignored, as wireguard-go ignores it.

        Args:
            config: the configuration.
            now: the current monotonic time.
            endpoints: resolved endpoints, for peers whose ``Endpoint`` is a host name: the
                runtime resolves the names and passes ``(ip, port)`` here, by public key.
                Entries here override the file's endpoints.
            mtu: the TUN device's MTU; default: the config's wg-quick ``MTU``, else 1420.
            rng: see :class:`WireGuardCore`.
            jitter: see :class:`WireGuardCore`.
            wall_clock: see :class:`WireGuardCore`.
            report_drops: see :class:`WireGuardCore`.

        Raises:
            ConfigError: a peer's endpoint is a host name with no entry in ``endpoints``.
        """
        interface = config.interface
        if mtu is None:
            mtu = interface.mtu if interface.mtu is not None else DEFAULT_MTU
        core = cls(
            interface.private_key,
            listen_port=interface.listen_port or 0,
            fwmark=interface.fwmark or 0,
            mtu=mtu,
            rng=rng,
            jitter=jitter,
            wall_clock=wall_clock,
            report_drops=report_drops,
        )
        resolved = endpoints or {}
        for peer_config in config.peers:
            if peer_config.public_key == core.public_key:
                continue
            endpoint = resolved.get(peer_config.public_key)
            if endpoint is None and peer_config.endpoint is not None:
                if peer_config.endpoint.ip is None:
                    raise ConfigError(
                        f"the endpoint host {peer_config.endpoint.host!r} of peer "
                        f"{peer_config.public_key.to_base64()} was not resolved"
                    )
                endpoint = (peer_config.endpoint.host, peer_config.endpoint.port)
            core.add_peer(
                peer_config.public_key,
                preshared_key=peer_config.preshared_key,
                endpoint=endpoint,
                allowed_ips=peer_config.allowed_ips,
                persistent_keepalive=peer_config.persistent_keepalive or 0,
                now=now,
            )
        return core

    def __repr__(self) -> str:
        key = self.public_key.to_base64() if self.public_key is not None else "no key"
        return f"WireGuardCore({key}, {len(self._peers)} peers)"

    # --- configuration ---------------------------------------------------------------------------

    @property
    def public_key(self) -> PublicKey | None:
        """Our static public key, or None while there is no private key."""
        return self._identity.public_key if self._identity is not None else None

    @property
    def private_key(self) -> PrivateKey | None:
        """Our static private key, or None."""
        return self._identity.private_key if self._identity is not None else None

    @property
    def peers(self) -> Mapping[PublicKey, Peer]:
        """The peers by public key, in the order they were added (read-only view)."""
        return types.MappingProxyType(self._peers)

    @property
    def allowed_ips(self) -> AllowedIPs[Peer]:
        """The cryptokey routing table (read it; change it with :meth:`add_peer`, :meth:`apply`)."""
        return self._allowed_ips

    def _set_identity(self, private_key: PrivateKey) -> None:
        self._identity = StaticIdentity(private_key)
        self._cookie_checker = CookieChecker(self._identity.public_key)

    def set_private_key(self, private_key: PrivateKey | None, now: float) -> None:
        """Change our static private key, as wireguard-go's ``SetPrivateKey`` does.

        A peer whose public key equals the new public key is removed (we cannot be our own
        peer).  Every other peer's handshake in progress is abandoned and its sessions stop
        sending (they were made with the old key); the next packet starts a new handshake.

        Args:
            private_key: the new key; None or the all-zero key clears it.
            now: the current monotonic time.
        """
        if private_key is not None and private_key.is_zero():
            private_key = None
        if private_key == self.private_key:
            return
        if private_key is None:
            self._identity = None
            self._cookie_checker = None
        else:
            own = self._peers.get(private_key.public_key())
            if own is not None:
                self._remove(own)
            self._set_identity(private_key)
        for peer in self._peers.values():
            self._expire_current_keypairs(peer, now)

    def add_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        allowed_ips: Iterable[Network | str] = (),
        persistent_keepalive: int = 0,
        now: float,
    ) -> Peer:
        """Add a peer.

        A low-order public key is accepted (as WireGuard accepts it) but the peer will never
        be sent anything.  A persistent keepalive interval sends a keepalive at once, which
        starts a handshake.

        Args:
            public_key: the peer's static public key.
            preshared_key: optional preshared key.
            endpoint: ``(ip, port)`` to send to until the peer roams; None: wait for it.
            allowed_ips: prefixes routed to the peer (taken from any other peer that has them).
            persistent_keepalive: seconds between keepalives (0: off).
            now: the current monotonic time.

        Returns:
            The new peer.

        Raises:
            WireGuardError: the peer exists already, is our own public key, or there are
                already MAX_PEERS peers.
            InvalidNetwork: an allowed IP is not a prefix.
        """
        if public_key in self._peers:
            raise WireGuardError(f"peer {public_key.to_base64()} exists already")
        if public_key == self.public_key:
            raise WireGuardError("a peer cannot have the device's own public key")
        peer = self._new_peer(public_key)
        if preshared_key is not None:
            peer.preshared_key = preshared_key
        peer.endpoint = endpoint
        for network in allowed_ips:
            self._allowed_ips.insert(network, peer)
        self._routes.clear()
        if persistent_keepalive:
            peer.persistent_keepalive_interval = persistent_keepalive
            self._send_keepalive(peer, now)
        return peer

    def _new_peer(self, public_key: PublicKey) -> Peer:
        if len(self._peers) >= MAX_PEERS:
            raise WireGuardError(f"too many peers (the limit is {MAX_PEERS})")
        peer = Peer(public_key, PresharedKey.zero(), self._timers, self._jitter)
        self._peers[public_key] = peer
        return peer

    def remove_peer(self, public_key: PublicKey) -> bool:
        """Remove a peer, its allowed IPs, sessions and staged packets.

        Returns:
            Whether the peer existed.
        """
        peer = self._peers.get(public_key)
        if peer is None:
            return False
        self._remove(peer)
        return True

    def remove_all_peers(self) -> None:
        """Remove every peer (UAPI ``replace_peers=true``)."""
        for peer in list(self._peers.values()):
            self._remove(peer)

    def _remove(self, peer: Peer) -> None:
        self._allowed_ips.remove_by_peer(peer)
        self._routes.clear()
        self._zero_and_flush_all(peer)
        peer.timers.stop()
        del self._peers[peer.public_key]

    def apply(self, request: SetRequest, now: float) -> int:
        """Apply a UAPI ``set=1`` request, with wireguard-go's semantics.

        Device part: ``private_key`` (:meth:`set_private_key`), ``listen_port`` and ``fwmark``
        (stored, and announced with :class:`ListenPortChanged`/:class:`FwmarkChanged` so that
        the runtime rebinds), ``replace_peers``.  Then each peer part, in order: ``remove``;
        create unless ``update_only``; ``replace_allowed_ips``; preshared key, endpoint,
        persistent keepalive (turning it on sends a keepalive at once); ``allowed_ip`` additions
        and removals; then any staged packets go out (or a handshake starts).  A part naming our
        own public key is ignored.

        Args:
            request: the parsed request (it may carry the errno of a malformed line, after
                which nothing was parsed: what came before is applied, as wireguard-go does).
            now: the current monotonic time.

        Returns:
            The errno to answer: 0, the request's own errno, or ``EINVAL`` when a peer could
            not be created (too many peers).  A runtime that fails to rebind the port answers
            ``EADDRINUSE`` instead.
        """
        device = request.device
        if device.private_key is not None:
            self.set_private_key(device.private_key, now)
        if device.listen_port is not None:
            self.listen_port = device.listen_port
            self._actions.append(ListenPortChanged(device.listen_port))
        if device.fwmark is not None:
            self.fwmark = device.fwmark
            self._actions.append(FwmarkChanged(device.fwmark))
        if device.replace_peers:
            self.remove_all_peers()
        for part in request.peers:
            if part.public_key == self.public_key:
                continue  # a "dummy" peer: wireguard-go ignores the device's own key
            peer = self._peers.get(part.public_key)
            if part.remove:
                if peer is not None:
                    self._remove(peer)
                continue
            if peer is None:
                if part.update_only:
                    continue
                if len(self._peers) >= MAX_PEERS:
                    return EINVAL
                peer = self._new_peer(part.public_key)
            if part.replace_allowed_ips:
                self._allowed_ips.remove_by_peer(peer)
            if part.preshared_key is not None:
                peer.preshared_key = part.preshared_key
            if part.endpoint is not None:
                address, port = part.endpoint
                peer.endpoint = (str(address), port)
            keepalive_turned_on = False
            if part.persistent_keepalive_interval is not None:
                old = peer.persistent_keepalive_interval
                peer.persistent_keepalive_interval = part.persistent_keepalive_interval
                keepalive_turned_on = old == 0 and part.persistent_keepalive_interval != 0
            # Prefixes, not ipaddress networks: a big configuration has 100,000+ of them.
            for change in part.allowed_ips:
                if change.remove:
                    self._allowed_ips.remove_prefix(change.prefix, peer)
                else:
                    self._allowed_ips.insert_prefix(change.prefix, peer)
            self._routes.clear()  # the cache of allowed-IPs lookups may be stale now
            # wireguard-go's handlePostConfig.
            if keepalive_turned_on:
                self._send_keepalive(peer, now)
            self._send_staged_packets(peer, now)
        return request.errno

    def snapshot(self) -> DeviceSnapshot:
        """The device as UAPI ``get=1`` reports it (format it with ``format_get_response``)."""
        peers = []
        for peer in self._peers.values():
            seconds, nanoseconds = 0, 0
            if peer.last_handshake_wall is not None:
                total_ns = int(peer.last_handshake_wall * 1_000_000_000)
                seconds, nanoseconds = divmod(total_ns, 1_000_000_000)
            psk = peer.preshared_key
            peers.append(
                PeerSnapshot(
                    public_key=peer.public_key,
                    preshared_key=None if psk.is_zero() else psk,
                    endpoint=_format_endpoint(peer.endpoint),
                    last_handshake_time_sec=seconds,
                    last_handshake_time_nsec=nanoseconds,
                    tx_bytes=peer.tx_bytes,
                    rx_bytes=peer.rx_bytes,
                    persistent_keepalive_interval=peer.persistent_keepalive_interval,
                    allowed_ips=[
                        format_allowed_ip(prefix)
                        for prefix in self._allowed_ips.prefixes_for_peer(peer)
                    ],
                )
            )
        return DeviceSnapshot(
            private_key=self.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            peers=peers,
        )

    # --- the general API: actions out --------------------------------------------------------

    def take_actions(self) -> Sequence[Action]:
        """Return and forget the actions queued by earlier calls (the fast paths queue theirs).

        Call it after every fast-path call (or batch of them); it costs nothing when empty.
        """
        if not self._actions:
            return _NO_ACTIONS
        actions = self._actions
        self._actions = []
        return actions

    def receive_datagram(
        self, data: Buffer, addr: Endpoint, now: float, *, under_load: bool | None = None
    ) -> list[Action]:
        """Process one UDP datagram from ``addr``, whatever it holds.

        Args:
            data: the datagram (attacker-controlled: anything is handled, nothing raises).
            addr: the source ``(ip, port)``.
            now: the current monotonic time.
            under_load: overrides :attr:`under_load` for this datagram.

        Returns:
            The actions: at most one :class:`DeliverPacket` first, then anything queued.
        """
        size = self.decrypt_datagram_into_untrusted(
            data, addr, self._receive_view, now, under_load=under_load
        )
        actions: list[Action] = []
        if size:
            assert self._delivered_from is not None  # set whenever a packet is delivered
            packet = bytes(self._receive_buffer[:size])
            actions.append(DeliverPacket(packet, self._delivered_from.public_key))
        actions.extend(self.take_actions())
        return actions

    def send_packet(self, packet: Buffer, now: float) -> list[Action]:
        """Encrypt an IP packet read from the TUN device for the peer its destination routes to.

        Without a usable session the packet is staged (at most MAX_STAGED_PACKETS per peer)
        and a handshake starts; it goes out once the session is ready.

        Args:
            packet: the IPv4/IPv6 packet.
            now: the current monotonic time.

        Returns:
            The actions: the data message (if it could go now), then anything queued.
        """
        result = self.encrypt_packet(packet, now)
        actions: list[Action] = []
        if result is not None:
            actions.append(SendDatagram(*result))
        actions.extend(self.take_actions())
        return actions

    def next_deadline(self) -> float | None:
        """When to call :meth:`handle_timer` next (monotonic seconds), or None for never.

        It may be a little early (the core then finds nothing to do), never late.  Ask again
        after every call: any call can arm a timer.
        """
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> list[Action]:
        """Run every timer due at ``now``.

        Returns:
            The actions, including any queued by earlier fast-path calls.
        """
        for timers in self._timers.pop_due(now):
            while timers.active and (timer := timers.pop_due(now)) is not None:
                self._on_timer(timers.peer, timer, now)
            if timers.active:
                timers.reschedule()
        return list(self.take_actions())

    # --- the fast data path ------------------------------------------------------------------
    #
    # These methods run once per packet.  A Python call or attribute lookup costs tens of
    # nanoseconds, ChaCha20-Poly1305 of 1400 bytes about a microsecond, so they are written
    # flat: the timer events that are a single assignment are inlined (each one commented with
    # the PeerTimers method it stands for), the allowed-IPs lookups go through a cache
    # (_lookup_route), and the padding is written in the caller's buffer when it has room.

    def encrypt_packet(self, packet: Buffer, now: float) -> tuple[bytearray, Endpoint] | None:
        """Fast path of :meth:`send_packet`: the data message and where to send it.

        Args:
            packet: an IPv4/IPv6 packet read from the TUN device.
            now: the current monotonic time.

        Returns:
            ``(datagram, endpoint)``, or None if nothing can be sent now (the packet was
            staged or dropped).  Side effects are queued for :meth:`take_actions`.
        """
        size = len(packet)
        # Copy into the scratch buffer, which has room for the padding.
        self._pad_buffer[:size] = packet
        datagram = bytearray(padded_size(size, self.mtu) + TRANSPORT_OVERHEAD)
        result = self.encrypt_packet_into(self._pad_view, size, datagram, now)
        return (datagram, result[1]) if result is not None else None

    def encrypt_packet_into(
        self,
        buffer: bytearray | memoryview,
        length: int,
        out: bytearray | memoryview,
        now: float,
    ) -> tuple[int, Endpoint] | None:
        """Like :meth:`encrypt_packet`, with no allocation: the runtime's data path.

        Args:
            buffer: a writable buffer holding the packet in ``buffer[:length]``.  The zero
                padding (under 16 bytes) is written right after the packet when the buffer has
                room for it (make it at least ``length + 15`` bytes); otherwise the packet is
                copied first.
            length: the packet's length.
            out: where to write the data message: at least ``length + 15 + 32`` bytes.
            now: the current monotonic time.

        Returns:
            ``(size, endpoint)``: send ``out[:size]`` to ``endpoint``; or None if nothing can
            be sent now (the packet was staged or dropped).  Side effects are queued for
            :meth:`take_actions`.
        """
        # Cryptokey routing: the destination address picks the peer.
        version = buffer[0] >> 4 if length else 0
        if version == 4 and length >= _IPV4_HEADER_SIZE:
            (destination,) = _IPV4_DESTINATION.unpack_from(buffer)
        elif version == 6 and length >= _IPV6_HEADER_SIZE:
            (destination,) = _IPV6_DESTINATION.unpack_from(buffer)
        else:
            self._drop(DropReason.INVALID_INNER_PACKET)
            return None
        peer = self._routes.get(destination) or self._lookup_route(destination)
        if peer is None:
            self._drop(DropReason.NO_ROUTE)
            return None
        keypair = peer.keypairs.current
        # Keypair.can_send(), inlined.
        if (
            keypair is None
            or keypair.send_counter >= REJECT_AFTER_MESSAGES
            or now >= keypair.reject_at
        ):
            self._stage(peer, bytes(buffer[:length]), now)
            return None
        endpoint = peer.endpoint
        if endpoint is None:
            self._drop(DropReason.NO_ENDPOINT, peer)
            return None
        return self._seal_into(peer, keypair, buffer, length, out, now=now), endpoint

    def decrypt_datagram_untrusted(
        self, data: Buffer, addr: Endpoint, now: float, *, under_load: bool | None = None
    ) -> bytes | None:
        """Fast path of :meth:`receive_datagram`: the packet to deliver, if any.

        Any message type is accepted; handshake messages are processed as by
        :meth:`receive_datagram`, their actions queued for :meth:`take_actions`.

        Returns:
            The decrypted, authorised IP packet, or None (not a data message, a keepalive, or
            dropped).
        """
        size = self.decrypt_datagram_into_untrusted(
            data, addr, self._receive_view, now, under_load=under_load
        )
        return bytes(self._receive_buffer[:size]) if size else None

    def decrypt_datagram_into_untrusted(
        self,
        data: Buffer,
        addr: Endpoint,
        out: bytearray | memoryview,
        now: float,
        *,
        under_load: bool | None = None,
    ) -> int:
        """Process any datagram; write the packet to deliver, if any, at the start of ``out``.

        This is the receive path itself, the one :meth:`receive_datagram` and
        :meth:`decrypt_datagram_untrusted` wrap, and the runtime's data path (no allocation for
        a data message).  Data messages are handled right here, in the order wireguard-go
        handles them: find the keypair by receiver index, check its age, decrypt, *then* check
        the counter against the replay window, promote ``next``, roam, update the timers,
        check the inner packet.  Any other message goes to :meth:`_receive_handshake_class`,
        with its actions queued for :meth:`take_actions`.

        Args:
            data: the datagram (a memoryview of the receive buffer saves a copy).
            addr: its source ``(ip, port)``.
            out: room for the plaintext: at least ``len(data) - 32`` bytes (65535 is always
                enough).  Its content beyond the returned size is unspecified.
            now: the current monotonic time.
            under_load: overrides :attr:`under_load` for this datagram.

        Returns:
            The size of the packet to deliver, ``out[:size]``; 0 when there is none.
        """
        size = len(data)
        if size < TRANSPORT_OVERHEAD or data[0] != _TRANSPORT_TYPE:
            self._receive_handshake_class(
                data, addr, now, self.under_load if under_load is None else under_load
            )
            return 0
        word, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
        if word != _TRANSPORT_TYPE:  # the three bytes after the type must be zero
            self._drop(DropReason.MALFORMED)
            return 0
        keypair = self._keypairs_by_index.get(receiver)
        if keypair is None:
            self._drop(DropReason.UNKNOWN_INDEX)
            return 0
        peer = keypair.peer
        if now >= keypair.reject_at:
            self._drop(DropReason.KEYPAIR_EXPIRED, peer)
            return 0
        plain_size = size - TRANSPORT_OVERHEAD
        view = data if isinstance(data, memoryview) else memoryview(data)
        out_view = out if isinstance(out, memoryview) else memoryview(out)
        try:
            keypair.receiver.open_into(counter, view[TRANSPORT_HEADER_SIZE:], out_view[:plain_size])
        except DecryptionError:
            self._drop(DropReason.DECRYPTION_FAILED, peer)
            return 0
        # Only now, with the message authenticated, may its counter move the replay window.
        if not keypair.replay.check_and_update(counter, REJECT_AFTER_MESSAGES):
            self._drop(DropReason.REPLAYED_COUNTER, peer)
            return 0

        if keypair is peer.keypairs.next:
            self._confirm_next_keypair(peer, keypair, addr, now)
        self._account_received(peer, size, 1 if plain_size else 0, addr, now)
        if plain_size == 0:
            return 0  # a keepalive: it has done its job by arriving
        return self._check_inner_packet(peer, out_view, 0, plain_size)

    def decrypt_batch_into_untrusted(
        self,
        data: memoryview,
        segment: int,
        addr: Endpoint,
        out: memoryview,
        now: float,
        *,
        packets: list[memoryview],
    ) -> tuple[int, int]:
        """Decrypt the data messages at the start of a batch of datagrams from one sender.

        A UDP GRO receive returns a batch: datagrams from one source laid back to back,
        each ``segment`` bytes but the last.  This is :meth:`decrypt_datagram_into_untrusted`
        for the data messages of such a batch, with the per-peer bookkeeping (byte counter,
        roaming, timers, the rekey check) done once per run of messages under the same
        keypair instead of once per message.  That gives the same result: every message of
        the run arrived at the same ``now`` from the same ``addr``, and each step is
        idempotent then (``data_received`` is called twice for a run with two or more data
        packets, which is what the later calls amount to).  Only the order of the actions
        queued (a drop reported before an initiation) may differ.

        It stops before the first datagram that is not a data message: the caller hands it
        to :meth:`decrypt_datagram_into_untrusted` (which handshakes need anyway) and may
        call this again for the rest.

        Args:
            data: the batch (attacker-controlled: anything is handled, nothing raises).
            segment: the size of each datagram (the last may be shorter); > 0.
            addr: the source ``(ip, port)`` of every datagram of the batch.
            out: where to write the packets, one after the other: at least ``len(data)``
                bytes.
            now: the current monotonic time.
            packets: the delivered packets are appended to it, as views of ``out``.

        Returns:
            ``(consumed, used)``: the bytes of ``data`` processed, and of ``out`` written.
        """
        end = len(data)
        offset = used = 0
        keypairs_by_index = self._keypairs_by_index
        unpack_header = _TRANSPORT_HEADER.unpack_from
        check_inner_packet = self._check_inner_packet
        # The run of messages under one keypair, whose bookkeeping is pending.
        run_keypair: Keypair | None = None
        run_bytes = run_data_packets = 0
        while offset < end:
            stop = min(offset + segment, end)  # the last datagram may be shorter
            size = stop - offset
            if data[offset] != _TRANSPORT_TYPE or size < TRANSPORT_OVERHEAD:
                break
            word, receiver, counter = unpack_header(data, offset)
            keypair = keypairs_by_index.get(receiver)
            if word != _TRANSPORT_TYPE or keypair is None or now >= keypair.reject_at:
                self._drop_unopened(word, keypair)
                offset = stop
                continue
            peer = keypair.peer
            plain_size = size - TRANSPORT_OVERHEAD
            try:
                keypair.receiver.open_into(
                    counter,
                    data[offset + TRANSPORT_HEADER_SIZE : stop],
                    out[used : used + plain_size],
                )
            except DecryptionError:
                self._drop(DropReason.DECRYPTION_FAILED, peer)
                offset = stop
                continue
            offset = stop
            if not keypair.replay.check_and_update(counter, REJECT_AFTER_MESSAGES):
                self._drop(DropReason.REPLAYED_COUNTER, peer)
                continue
            if keypair is not run_keypair:
                if run_keypair is not None:
                    self._account_received(run_keypair.peer, run_bytes, run_data_packets, addr, now)
                run_keypair, run_bytes, run_data_packets = keypair, 0, 0
                if keypair is peer.keypairs.next:
                    self._confirm_next_keypair(peer, keypair, addr, now)
            run_bytes += size
            if plain_size:
                run_data_packets += 1
                length = check_inner_packet(peer, out, used, plain_size)
                if length:
                    packets.append(out[used : used + length])
                    used += length
        if run_keypair is not None:
            self._account_received(run_keypair.peer, run_bytes, run_data_packets, addr, now)
        return offset, used

    def _drop_unopened(self, word: int, keypair: Keypair | None) -> None:
        """Count a data message dropped before decryption (bad type word, index, age)."""
        if word != _TRANSPORT_TYPE:
            self._drop(DropReason.MALFORMED)
        elif keypair is None:
            self._drop(DropReason.UNKNOWN_INDEX)
        else:
            self._drop(DropReason.KEYPAIR_EXPIRED, keypair.peer)

    def _account_received(
        self, peer: Peer, size: int, data_packets: int, addr: Endpoint, now: float
    ) -> None:
        """The bookkeeping of authenticated data messages from ``peer`` (``size`` bytes).

        Args:
            peer: the sender.
            size: the messages' total size.
            data_packets: how many of them carried a packet (the others were keepalives).
            addr: their source: the peer's endpoint from now on (roaming).
            now: the current monotonic time.
        """
        peer.rx_bytes += size
        peer.endpoint = addr  # roaming: follow the source of the last authenticated datagram
        timers = peer.timers
        # keepKeyFreshReceiving: an initiator whose keys are about to expire rekeys, once.
        current = peer.keypairs.current
        if (
            current is not None
            and now > current.rekey_on_receive_at
            and not timers.sent_last_minute_handshake
        ):
            timers.sent_last_minute_handshake = True
            self._send_handshake_initiation(peer, now, is_retry=False)
        if peer.persistent_keepalive_interval:
            timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.new_handshake_at = None  # timers.any_authenticated_packet_received()
        if data_packets:
            timers.data_received(now)
            if data_packets > 1:
                # The second call (and any later one) only notes "data arrived while the
                # keepalive timer was armed".
                timers.data_received(now)

    def _lookup_route(self, address: bytes) -> Peer | None:
        """The peer whose allowed IPs contain ``address``, remembered in a small cache.

        The table's lookup costs a few hundred nanoseconds in Python; a dictionary probe by
        the address bytes a tenth of that.  The cache only holds hits, is cleared whenever
        the allowed IPs change, and is emptied when it grows past its size, so that scanning
        many addresses cannot make it grow without bound.
        """
        peer = self._allowed_ips.lookup(address)
        if peer is not None:
            if len(self._routes) >= _ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[address] = peer
        return peer

    # --- sending data ------------------------------------------------------------------------

    def _seal_into(
        self,
        peer: Peer,
        keypair: Keypair,
        buffer: bytearray | memoryview,
        size: int,
        out: bytearray | memoryview,
        *,
        now: float,
    ) -> int:
        """Build in ``out`` the data message carrying the packet ``buffer[:size]``.

        The caller has checked that the keypair can send.  This also does the bookkeeping of
        a sent packet: byte counter, timers, and a new handshake when the keypair gets old.

        Returns:
            The size of the data message.
        """
        # Pad with zeros to a multiple of 16, capped at the MTU (padded_size, inlined for
        # packets up to the MTU: a full-size one is not padded at all).
        padded = (size + PADDING_MULTIPLE - 1) & -PADDING_MULTIPLE
        mtu = self.mtu
        if padded > mtu:
            padded = mtu if size <= mtu else padded_size(size, mtu)
        if padded != size:
            if len(buffer) < padded:  # no room after the packet: pad a copy
                self._pad_buffer[:size] = buffer[:size]
                buffer = self._pad_view
            buffer[size:padded] = _ZERO_PADDING[padded - size]
        plaintext = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        out_view = out if isinstance(out, memoryview) else memoryview(out)
        total = padded + TRANSPORT_OVERHEAD
        counter = keypair.send_counter
        keypair.send_counter = counter + 1
        _TRANSPORT_HEADER.pack_into(out_view, 0, _TRANSPORT_TYPE, keypair.remote_index, counter)
        keypair.sender.seal_into(counter, plaintext[:padded], out_view[TRANSPORT_HEADER_SIZE:total])
        peer.tx_bytes += total

        timers = peer.timers
        if peer.persistent_keepalive_interval:
            timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.send_keepalive_at = None  # timers.any_authenticated_packet_sent()
        if size and timers.new_handshake_at is None:
            timers.data_sent(now)
        # keepKeyFreshSending: the initiator rekeys after REKEY_AFTER_TIME, anyone after
        # REKEY_AFTER_MESSAGES (wireguard-go compares the counter *after* this message).
        if counter >= REKEY_AFTER_MESSAGES or now > keypair.rekey_at:
            self._send_handshake_initiation(peer, now, is_retry=False)
        return total

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
            size = len(packet)
            self._pad_buffer[:size] = packet
            datagram = bytearray(padded_size(size, self.mtu) + TRANSPORT_OVERHEAD)
            self._seal_into(peer, keypair, self._pad_view, size, datagram, now=now)
            self._actions.append(SendDatagram(datagram, peer.endpoint))

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        """Send an empty data message (or let staged packets serve as one)."""
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged_packets(peer, now)

    # --- receiving -----------------------------------------------------------------------------

    def _check_inner_packet(self, peer: Peer, buffer: memoryview, start: int, size: int) -> int:
        """Cut a decrypted packet to its IP length; check its source is the peer's to use.

        Args:
            peer: the peer it came from.
            buffer: holds the packet at ``buffer[start:start + size]``.
            start: where it starts (an offset, not a slice: one memoryview less per packet).
            size: its length as decrypted (padding included).

        Returns:
            The packet's length, or 0 if it is dropped.
        """
        # One unpack gives the length field and the source address (bytes, a dictionary key).
        version = buffer[start] >> 4
        length: int
        source: bytes
        if version == 4 and size >= _IPV4_HEADER_SIZE:
            length, source = _IPV4_LENGTH_SOURCE.unpack_from(buffer, start)
            if length > size or length < _IPV4_HEADER_SIZE:
                self._drop(DropReason.INVALID_INNER_PACKET, peer)
                return 0
        elif version == 6 and size >= _IPV6_HEADER_SIZE:
            length, source = _IPV6_LENGTH_SOURCE.unpack_from(buffer, start)
            length += _IPV6_HEADER_SIZE
            if length > size:
                self._drop(DropReason.INVALID_INNER_PACKET, peer)
                return 0
        else:
            self._drop(DropReason.INVALID_INNER_PACKET, peer)
            return 0
        # Cryptokey routing, the other way: the peer may only use its own allowed IPs.
        if (self._routes.get(source) or self._lookup_route(source)) is not peer:
            self._drop(DropReason.DISALLOWED_SOURCE, peer)
            return 0
        self._delivered_from = peer
        return length

    def _confirm_next_keypair(
        self, peer: Peer, keypair: Keypair, addr: Endpoint, now: float
    ) -> None:
        """The first data message under ``next`` arrived: the responder's handshake is done."""
        retired = peer.keypairs.confirm_next(keypair)
        if retired is None:
            return
        self._index.retire_keypairs(retired)
        peer.endpoint = addr
        self._handshake_complete(peer, initiator=False)
        self._send_staged_packets(peer, now)

    def _receive_handshake_class(
        self, data: Buffer, addr: Endpoint, now: float, under_load: bool
    ) -> None:
        """Handle an initiation, a response or a cookie reply (wireguard-go RoutineHandshake)."""
        try:
            # Checks the type word and the exact length of each message type.
            message = parse_message_untrusted(data)
        except InvalidMessage:
            self._drop(DropReason.MALFORMED)
            return
        if isinstance(message, CookieReply):
            self._consume_cookie_reply(message, now)
            return
        checker = self._cookie_checker
        if checker is None or self._identity is None:
            self._drop(DropReason.NO_PRIVATE_KEY)
            return
        # mac1 first, always: it costs one hash, and proves the sender knows our public key.
        if not checker.check_mac1(data):
            self._drop(DropReason.INVALID_MAC1)
            return
        if under_load:
            source = cookie_source(addr[0], addr[1])
            if not checker.check_mac2(data, source, now):
                # Make the sender prove it receives at its address before we spend a DH on it.
                sender_index = _U32.unpack_from(data, 4)[0]
                reply = checker.create_reply(data, sender_index, source, now, self._rng)
                self._actions.append(SendDatagram(reply, addr))
                self._drop(DropReason.COOKIE_REQUIRED)
                return
            if not self._rate_limiter.allow(source[:-2], now):
                self._drop(DropReason.RATE_LIMITED)
                return
        if isinstance(message, HandshakeInitiation):
            self._consume_initiation(self._identity, message, addr, now)
        elif isinstance(message, HandshakeResponse):
            self._consume_response(self._identity, message, addr, now)

    def _lookup_handshake(self, public_key: PublicKey) -> PeerHandshakeState | None:
        peer = self._peers.get(public_key)
        return peer.handshake if peer is not None else None

    def _consume_initiation(
        self, identity: StaticIdentity, message: HandshakeInitiation, addr: Endpoint, now: float
    ) -> None:
        try:
            state = consume_initiation_untrusted(identity, message, self._lookup_handshake, now)
        except UnknownPeer:
            self._drop(DropReason.UNKNOWN_PEER)
            return
        except ReplayedHandshake:
            self._drop(DropReason.REPLAYED_INITIATION)
            return
        except HandshakeFlood:
            self._drop(DropReason.INITIATION_FLOOD)
            return
        except LowOrderKey:
            self._drop(DropReason.LOW_ORDER_KEY)
            return
        except HandshakeError:
            self._drop(DropReason.HANDSHAKE_INVALID)
            return
        peer = self._peers[state.remote_static]
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.any_authenticated_packet_received()
        peer.endpoint = addr
        peer.rx_bytes += INITIATION_SIZE
        self._send_handshake_response(peer, now)

    def _consume_response(
        self, identity: StaticIdentity, message: HandshakeResponse, addr: Endpoint, now: float
    ) -> None:
        peer = self._index.handshakes.get(message.receiver)
        if peer is None:
            self._drop(DropReason.UNKNOWN_INDEX)
            return
        try:
            consume_response_untrusted(identity, peer.handshake, message)
        except LowOrderKey:
            self._drop(DropReason.LOW_ORDER_KEY, peer)
            return
        except HandshakeError:
            self._drop(DropReason.HANDSHAKE_INVALID, peer)
            return
        peer.endpoint = addr
        peer.rx_bytes += RESPONSE_SIZE
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.any_authenticated_packet_received()
        self._begin_session(peer, now)
        self._handshake_complete(peer, initiator=True)
        # Confirm the new keys to the responder (and flush staged packets) right away.
        self._send_keepalive(peer, now)

    def _consume_cookie_reply(self, message: CookieReply, now: float) -> None:
        peer = self._index.peer_for_index(message.receiver)
        if peer is None:
            self._drop(DropReason.UNKNOWN_INDEX)
            return
        try:
            peer.cookies.consume_reply_untrusted(message, now)
        except (HandshakeError, DecryptionError):
            self._drop(DropReason.INVALID_COOKIE_REPLY, peer)

    # --- handshakes ------------------------------------------------------------------------------

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
        self._send_to_peer(peer, datagram)
        timers.handshake_initiated(now)

    def _send_handshake_response(self, peer: Peer, now: float) -> None:
        """Answer the initiation just consumed, and park the new keypair in ``next``."""
        peer.last_sent_handshake = now
        state = peer.handshake
        # Our own initiation, if one was in flight, is superseded.
        self._index.retire_handshake(state.local_index)
        index = self._index.new_handshake_index(peer)
        message = create_response(state, index, self._rng)
        datagram = peer.cookies.add_macs(message.to_bytes(), now)
        self._begin_session(peer, now)
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now, peer.persistent_keepalive_interval)
        timers.any_authenticated_packet_sent()
        self._send_to_peer(peer, datagram)

    def _begin_session(self, peer: Peer, now: float) -> Keypair:
        """Turn the completed handshake into a keypair in the right slot."""
        keys: SessionKeys = begin_session(peer.handshake)
        keypair = Keypair(keys, peer, now)
        self._index.handshake_to_keypair(keypair)
        self._index.retire_keypairs(peer.keypairs.install(keypair))
        peer.timers.session_derived(now)
        return keypair

    def _handshake_complete(self, peer: Peer, *, initiator: bool) -> None:
        peer.timers.handshake_complete()
        peer.last_handshake_wall = self._wall_clock()
        self._actions.append(HandshakeCompleted(peer.public_key, initiator))

    def _send_to_peer(self, peer: Peer, datagram: bytes) -> None:
        """Send a handshake message to the peer's endpoint, if it has one."""
        if peer.endpoint is None:
            self._drop(DropReason.NO_ENDPOINT, peer)
            return
        peer.tx_bytes += len(datagram)
        self._actions.append(SendDatagram(datagram, peer.endpoint))

    # --- timers --------------------------------------------------------------------------------

    def _on_timer(self, peer: Peer, timer: Timer, now: float) -> None:
        """Run one expired timer (wireguard-go ``expired*`` in device/timers.go)."""
        timers = peer.timers
        if timer is Timer.RETRANSMIT_HANDSHAKE:
            if timers.handshake_attempts > MAX_TIMER_HANDSHAKES:
                # Give up: drop what waits for a session, and erase the half-done handshake
                # later.  The next packet for this peer starts over.
                timers.send_keepalive_at = None
                self._flush_staged(peer)
                if timers.zero_key_material_at is None:
                    timers.zero_key_material_at = now + ZERO_KEY_MATERIAL_AFTER
                    timers.schedule(timers.zero_key_material_at)
                self._actions.append(
                    # handshake_attempts counts the retries; add the first attempt.
                    HandshakeFailed(peer.public_key, timers.handshake_attempts + 1)
                )
            else:
                timers.handshake_attempts += 1
                self._send_handshake_initiation(peer, now, is_retry=True)
        elif timer is Timer.NEW_HANDSHAKE:
            # We sent data KEEPALIVE_TIMEOUT + REKEY_TIMEOUT ago and heard nothing back.
            self._send_handshake_initiation(peer, now, is_retry=False)
        elif timer is Timer.SEND_KEEPALIVE:
            self._send_keepalive(peer, now)
            if timers.need_another_keepalive:
                timers.need_another_keepalive = False
                timers.send_keepalive_at = now + KEEPALIVE_TIMEOUT
                timers.schedule(timers.send_keepalive_at)
        elif timer is Timer.PERSISTENT_KEEPALIVE:
            if peer.persistent_keepalive_interval:
                self._send_keepalive(peer, now)
        elif timer is Timer.ZERO_KEY_MATERIAL:
            self._zero_and_flush_all(peer)
            self._actions.append(KeyMaterialZeroed(peer.public_key))

    def _flush_staged(self, peer: Peer) -> None:
        """Discard the packets waiting for a session (a waiting keepalive is not counted)."""
        for packet in peer.staged:
            if packet:
                self._drop(DropReason.STAGED_FLUSHED, peer)
        peer.staged.clear()

    def _zero_and_flush_all(self, peer: Peer) -> None:
        """Forget every keypair and the handshake in progress; drop staged packets."""
        self._index.retire_keypairs(peer.keypairs.clear())
        self._index.retire_handshake(peer.handshake.local_index)
        peer.handshake.clear()
        self._flush_staged(peer)

    def _expire_current_keypairs(self, peer: Peer, now: float) -> None:
        """Our key changed: abandon the handshake in progress, stop sending with old sessions."""
        self._index.retire_handshake(peer.handshake.local_index)
        peer.handshake.clear()
        peer.last_sent_handshake = now - REKEY_TIMEOUT - 1  # allow a new initiation at once
        for keypair in (peer.keypairs.current, peer.keypairs.next):
            if keypair is not None:
                keypair.expire()

    # --- statistics ----------------------------------------------------------------------------

    def _drop(self, reason: DropReason, peer: Peer | None = None) -> None:
        self.drops[reason] += 1
        if self.report_drops:
            self._actions.append(
                PacketDropped(reason, peer.public_key if peer is not None else None)
            )


def _format_endpoint(endpoint: Endpoint | None) -> str | None:
    if endpoint is None:
        return None
    host, port = endpoint
    try:
        return format_endpoint(ipaddress.ip_address(host), port)
    except ValueError:  # not an address: the runtime broke the "no host names" rule
        return f"{host}:{port}"
