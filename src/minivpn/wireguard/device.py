"""A WireGuard device's state, and what both directions of the data path share.

:class:`~minivpn.wireguard.core.WireGuardCore` is built in layers, one module each, so that each
direction of the per-packet path reads top to bottom in the order a packet is processed (as
wireguard-go's ``device/send.go`` and ``device/receive.go`` do)::

    device.py   Device         the state: keys, peers, index table, allowed IPs, timers,
                               counters, the queue of actions; cryptokey routing; sessions
    send.py     SendPath       encapsulate(): an IP packet from the TUN -> a data message;
                               staging packets, handshake initiations, keepalives
    receive.py  ReceivePath    decapsulate(): a UDP datagram -> an IP packet, a handshake
                               reply, or a drop with its reason
    core.py     WireGuardCore  configuration (wg setconf, UAPI get/set) and the timers

Each layer may use the ones above it in this list.  Nothing here does I/O or reads a clock: the
runtime passes ``now`` (monotonic seconds) into every call.
"""

from __future__ import annotations

import os
import random
import time
import types
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeAlias

from minivpn.wireguard.allowedips import AllowedIPs
from minivpn.wireguard.constants import DEFAULT_MTU
from minivpn.wireguard.cookie import CookieChecker
from minivpn.wireguard.events import Action, DropReason, HandshakeCompleted, PacketDropped
from minivpn.wireguard.keypair import IndexTable, Keypair
from minivpn.wireguard.noise import StaticIdentity, begin_session
from minivpn.wireguard.ratelimit import CookieReplyLimiter, RateLimiter
from minivpn.wireguard.results import Dropped
from minivpn.wireguard.timers import TimerQueue

if TYPE_CHECKING:
    from minivpn.wireguard.keys import PrivateKey, PublicKey
    from minivpn.wireguard.peer import Peer
    from minivpn.wireguard.trace import Tracer

__all__ = ["MAX_DATAGRAM_SIZE", "Buffer", "Device", "Rng"]

#: What the data path accepts as a packet or datagram.
Buffer: TypeAlias = bytes | bytearray | memoryview
#: A callable returning that many random bytes (``os.urandom``).
Rng: TypeAlias = Callable[[int], bytes]

#: The largest UDP payload; a buffer of this size holds any datagram or packet.
MAX_DATAGRAM_SIZE = 65535
#: Entries in the cache of allowed-IPs lookups before it is emptied (see Device._route).
_ROUTE_CACHE_SIZE = 4096
_NO_ACTIONS: Sequence[Action] = ()


class Device:
    """The state of one WireGuard device, and the operations both directions use.

    Attributes:
        mtu: the TUN device's MTU; padding never goes beyond it.  The runtime keeps it current.
        listen_port: the UDP port: configured, and once bound the port actually bound (the
            runtime assigns it after binding, since port 0 means "any").
        fwmark: the firewall mark for the UDP socket (0: none).
        under_load: whether the device is "under load": handshake messages then need a valid
            mac2 (else they get a cookie reply, rate-limited) and pass a per-source rate limit.
            The runtime decides (:mod:`minivpn.wireguard.handshake_queue`).
        report_drops: also report every drop as a :class:`PacketDropped` action.
        drops: count of dropped datagrams and packets, by reason (per peer, too:
            ``peer.counters.drops``).
        tracer: who is tracing this device (:mod:`minivpn.wireguard.trace`), or None.  The
            handshake, timer and drop paths tell it what they do.
        packet_tracer: the same tracer, looked at once per packet by ``encapsulate`` and
            ``decapsulate``: when it is set, the call goes through the tracer, which clears
            it while it runs the packet through the path.  None is all the per-packet path
            pays for tracing when nobody traces.
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
        self.tracer: Tracer | None = None
        self.packet_tracer: Tracer | None = None
        self._rng = rng
        self._jitter = jitter if jitter is not None else random.Random()
        self._wall_clock = wall_clock
        self._identity: StaticIdentity | None = None
        self._cookie_checker: CookieChecker | None = None
        self._peers: dict[PublicKey, Peer] = {}
        self._allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self._routes: dict[bytes, Peer] = {}
        self._index = IndexTable(rng)
        self._timers = TimerQueue()
        self._rate_limiter = RateLimiter()
        self._cookie_reply_limiter = CookieReplyLimiter()
        self._actions: list[Action] = []
        # Where a packet is padded before it is sealed (see SendPath._seal).
        self._pad_buffer = memoryview(bytearray(MAX_DATAGRAM_SIZE))
        if private_key is not None and not private_key.is_zero():
            self._set_identity(private_key)

    def __repr__(self) -> str:
        key = self.public_key.to_base64() if self.public_key is not None else "no key"
        return f"{type(self).__name__}({key}, {len(self._peers)} peers)"

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
        """The cryptokey routing table (read it; change it through the configuration calls)."""
        return self._allowed_ips

    def _set_identity(self, private_key: PrivateKey) -> None:
        self._identity = StaticIdentity(private_key)
        self._cookie_checker = CookieChecker(self._identity.public_key)

    def take_actions(self) -> Sequence[Action]:
        """Return and forget what earlier calls set in motion besides their results.

        A handshake initiation to send, a keepalive, staged packets flushed, events to log: see
        :mod:`minivpn.wireguard.events`.  Call it after every call (or batch of calls) to
        ``encapsulate``, ``decapsulate``, ``apply`` and ``handle_timer``; it costs nothing
        when there is nothing.
        """
        if not self._actions:
            return _NO_ACTIONS
        actions = self._actions
        self._actions = []
        return actions

    # --- cryptokey routing ---------------------------------------------------------------------

    def _route(self, address: bytes) -> Peer | None:
        """The peer whose allowed IPs contain ``address`` (4 or 16 bytes), or None.

        This is cryptokey routing, used both ways: an outgoing packet's *destination* picks
        the peer it is encrypted for; an incoming packet's *source* must route back to the peer
        it came from.  The table (:mod:`minivpn.wireguard.allowedips`) costs a few hundred
        nanoseconds in Python; a dictionary of the answers, keyed by the address bytes, a tenth
        of that.  The cache only holds hits, is emptied whenever the allowed IPs change, and
        when it grows past its size, so that scanning many addresses cannot grow it for ever.
        """
        peer = self._routes.get(address)
        if peer is None:
            peer = self._allowed_ips.lookup(address)
            if peer is not None:
                if len(self._routes) >= _ROUTE_CACHE_SIZE:
                    self._routes.clear()
                self._routes[address] = peer
        return peer

    # --- sessions ------------------------------------------------------------------------------

    def _begin_session(self, peer: Peer, now: float) -> Keypair:
        """Turn the completed handshake into a keypair, in the slot its role gives it."""
        keypair = Keypair(begin_session(peer.handshake), peer, now)
        self._index.handshake_to_keypair(keypair)
        self._index.retire_keypairs(peer.keypairs.install(keypair))
        peer.timers.session_derived(now)
        return keypair

    def _handshake_complete(self, peer: Peer, *, initiator: bool) -> None:
        """The new keys are in use: stop retransmitting, note the time ``wg show`` prints."""
        peer.timers.handshake_complete()
        peer.last_handshake_wall = self._wall_clock()
        self._actions.append(HandshakeCompleted(peer.public_key, initiator))
        if self.tracer is not None:
            self.tracer.session(peer, initiator)

    # --- tracing -------------------------------------------------------------------------------

    def attach_tracer(self, tracer: Tracer | None) -> None:
        """Start tracing with *tracer* (None: stop); one tracer at a time."""
        self.tracer = self.packet_tracer = tracer

    def peer_for_index(self, index: int) -> Peer | None:
        """The peer whose session, or handshake in progress, we named *index* (for traces)."""
        return self._index.peer_for_index(index)

    # --- statistics ----------------------------------------------------------------------------

    def _drop(
        self, reason: DropReason, peer: Peer | None = None, *, public_key: PublicKey | None = None
    ) -> Dropped:
        """Count a drop (and report it, with ``report_drops``); the result that says so.

        Args:
            reason: why.
            peer: the peer concerned, if it is one of ours (its counters count the drop too).
            public_key: the key concerned when it is no peer of ours (an initiation from an
                unknown key).
        """
        self.drops[reason] += 1
        if peer is not None:
            peer.counters.count_drop(reason)
            public_key = peer.public_key
        if self.report_drops:
            self._actions.append(PacketDropped(reason, public_key))
        if self.tracer is not None:
            self.tracer.drop(reason, peer, public_key)
        return Dropped(reason, public_key)

    def note_drop(self, reason: DropReason, public_key: PublicKey | None = None) -> None:
        """Count, and trace, a drop the runtime made: a send or a TUN write the kernel refused.

        Args:
            reason: one of the runtime's reasons (``PACKET_TOO_BIG``, ``SEND_FAILED``,
                ``TUN_*``, ``HANDSHAKE_QUEUE_FULL``).
            public_key: the peer concerned, when the runtime knows it.
        """
        self._drop(reason, self._peers.get(public_key) if public_key is not None else None)
