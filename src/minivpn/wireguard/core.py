"""The WireGuard state machine, sans-IO: datagrams, packets and clock values in, results out.

:class:`WireGuardCore` is one WireGuard device: our static key, the peers, the index table of
sessions, the cryptokey routing table and the timers.  A runtime (:mod:`minivpn.runtime.vpn`)
drives it, in the style of aioquic's ``QuicConnection`` and boringtun's ``Tunn``:

* an IP packet arrives from the TUN device: :meth:`~WireGuardCore.encapsulate` (the way out,
  :mod:`minivpn.wireguard.send`);
* a UDP datagram arrives: :meth:`~WireGuardCore.decapsulate` (the way in,
  :mod:`minivpn.wireguard.receive`);
* time passes: :meth:`~WireGuardCore.next_deadline` says when to call
  :meth:`~WireGuardCore.handle_timer`;
* ``wg`` configures the device: :meth:`~WireGuardCore.apply` a UAPI set request,
  :meth:`~WireGuardCore.snapshot` for a get request.

``encapsulate`` and ``decapsulate`` return one typed result each (:mod:`minivpn.wireguard.results`):
what to do with the packet or datagram at hand.  Everything else a call sets in motion --
handshake messages, keepalives, packets that waited for a session, events to log -- waits in
:meth:`~WireGuardCore.take_actions` (:mod:`minivpn.wireguard.events`).

The class is assembled in layers, one module per concern (:mod:`minivpn.wireguard.device` lists
them): this one adds the configuration and the timers to the two directions of the data path.

Time is two different clocks, both passed in: ``now``, a monotonic clock in seconds (trio's
``trio.current_time()``) given to every call, drives the timers and every expiry; the wall clock
(``wall_clock``, :func:`time.time` unless injected) only goes into the TAI64N timestamp of
initiations and the "latest handshake" that ``wg show`` prints.
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import TYPE_CHECKING

from minivpn.wireguard.config import Config, ConfigError
from minivpn.wireguard.constants import (
    DEFAULT_MTU,
    KEEPALIVE_TIMEOUT,
    MAX_PEERS,
    MAX_TIMER_HANDSHAKES,
    REKEY_TIMEOUT,
    ZERO_KEY_MATERIAL_AFTER,
)
from minivpn.wireguard.errors import WireGuardError
from minivpn.wireguard.events import (
    Action,
    DropReason,
    Endpoint,
    FwmarkChanged,
    HandshakeFailed,
    KeyMaterialZeroed,
    ListenPortChanged,
)
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from minivpn.wireguard.peer import Peer
from minivpn.wireguard.receive import ReceivePath
from minivpn.wireguard.timers import Timer
from minivpn.wireguard.uapi import (
    EINVAL,
    DeviceSnapshot,
    PeerSnapshot,
    SetRequest,
    format_allowed_ip,
    format_endpoint,
)

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Mapping

    from minivpn.wireguard.allowedips import Network
    from minivpn.wireguard.device import Rng

__all__ = ["WireGuardCore"]


class WireGuardCore(ReceivePath):
    """A WireGuard device as a sans-IO state machine.

    Build it with ``WireGuardCore(private_key, listen_port=..., mtu=...)`` (the arguments:
    :class:`~minivpn.wireguard.device.Device`) or :meth:`from_config`.  One packet each way,
    the way :mod:`minivpn.runtime.vpn`'s plain loops do it (docs/vpn.md walks through them)::

        result = core.encapsulate(packet, out, trio.current_time())
        if isinstance(result, WriteToNetwork):
            sock.sendto(out[: result.size], result.endpoint)

        result = core.decapsulate(source, datagram, out, trio.current_time())
        if isinstance(result, WriteToTunnel):
            tun.write_nowait(out[: result.size])
        elif isinstance(result, WriteToNetwork):
            sock.sendto(out[: result.size], result.endpoint)

        for action in core.take_actions():   # handshakes, keepalives, events
            ...

    and a timer task sleeps until :meth:`next_deadline`, then calls :meth:`handle_timer`.
    """

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
            rng: see :class:`~minivpn.wireguard.device.Device`.
            jitter: see :class:`~minivpn.wireguard.device.Device`.
            wall_clock: see :class:`~minivpn.wireguard.device.Device`.
            report_drops: see :class:`~minivpn.wireguard.device.Device`.

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

    # --- configuration ---------------------------------------------------------------------------

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
                    drops=[(reason.value, n) for reason, n in peer.counters.drops.items()],
                    counters=peer.counters.as_dict(peer.rx_bytes, peer.tx_bytes),
                )
            )
        return DeviceSnapshot(
            private_key=self.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            peers=peers,
            drops=[(reason.value, n) for reason, n in self.drops.items() if n],
        )

    # --- timers --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When to call :meth:`handle_timer` next (monotonic seconds), or None for never.

        It may be a little early (the core then finds nothing to do), never late.  Ask again
        after every call: any call can arm a timer.
        """
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> list[Action]:
        """Run every timer due at ``now``.

        Returns:
            What the timers set in motion, and anything still waiting in
            :meth:`take_actions` (the same list).
        """
        for timers in self._timers.pop_due(now):
            while timers.active and (timer := timers.pop_due(now)) is not None:
                self._on_timer(timers.peer, timer, now)
            if timers.active:
                timers.reschedule()
        return list(self.take_actions())

    def _on_timer(self, peer: Peer, timer: Timer, now: float) -> None:
        """Run one expired timer (wireguard-go ``expired*`` in device/timers.go)."""
        timers = peer.timers
        if self.tracer is not None:
            self.tracer.timer(peer, timer, now)
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


def _format_endpoint(endpoint: Endpoint | None) -> str | None:
    if endpoint is None:
        return None
    host, port = endpoint
    try:
        return format_endpoint(ipaddress.ip_address(host), port)
    except ValueError:  # not an address: the runtime broke the "no host names" rule
        return f"{host}:{port}"
