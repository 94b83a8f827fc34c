"""The plain tunnel: packets from a TUN/TAP device to a peer over UDP or TCP, and back.

This is the smallest complete tunnel, and the runtime pattern the VPN reuses.  The task tree of
one running tunnel::

    run_tunnel                      open the socket, attach the device, configure it
    └── nursery
        ├── report_on_signal        SIGUSR1: print the counters
        ├── UDP:  device_to_udp     wait_readable(device) -> drain: read, send
        │         udp_to_device     wait_readable(socket) -> drain: recv, check, write
        └── TCP:  device_to_tcp     wait_readable(device) -> drain into one buffer, send it
                  connection loop   accept (listen) / connect with backoff
                  └── tcp_to_device per connection: recv, decode frames, write

Each pump waits with ``trio.lowlevel.wait_readable`` on a file descriptor and then *drains*
it: it reads until ``BlockingIOError`` (or a batch limit, after which it yields to the other
tasks), so a burst of packets costs one wake-up, not one per packet.  The hot loops use plain
non-blocking ``socket`` and ``os`` calls on preallocated buffers; trio only decides when to
run them.

Nothing here is encrypted or authenticated.  The listening side of a UDP tunnel learns its peer
from the first valid datagram (:class:`~minivpn.framing.tunnel.PeerFollower`); for a real VPN
use ``minivpn up`` (WireGuard).

Bad input never stops the tunnel: a malformed datagram, a datagram from a third host, a bad
TCP frame, a peer that vanishes -- each is counted in :class:`~minivpn.stats.Counters` and
logged at most once per interval.  Only the device being deleted ends the tunnel, with
:class:`~minivpn.tuntap.errors.DeviceGone`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import signal
import socket
import struct
from typing import Any, Literal

import attrs
import trio

from minivpn import netconf
from minivpn.errors import MinivpnError
from minivpn.framing.errors import FramingError
from minivpn.framing.stream import FrameDecoder
from minivpn.framing.tunnel import (
    PayloadKind,
    PeerFollower,
    PeerVerdict,
    check_payload,
)
from minivpn.stats import Counters, RateLimitedLog
from minivpn.tuntap.aio import READ_SIZE, TunDevice, open_tun_device
from minivpn.tuntap.ioctl import TUNSETOFFLOAD, Mode

__all__ = ["TunnelConfig", "TunnelError", "run_tunnel"]

log = logging.getLogger("minivpn.tunnel")

#: Packets handled per wake-up before the pump yields to the other tasks.
BATCH = 128
#: Socket buffer sizes asked for (the kernel caps them at net.core.[rw]mem_max).
SOCKET_BUFFER = 4 << 20
#: TCP: bytes of frames gathered before one ``send``.
TCP_SEND_BUFFER = 256 * 1024
#: Reconnect backoff for the connecting side of a TCP tunnel.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
#: Offloads asked of the kernel with ``--offload``: checksum, TSO for IPv4 and IPv6.
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
#: With --offload, the largest super-packet the kernel may hand over (it must fit a UDP
#: datagram together with the virtio header: 65507 bytes over IPv4).
OFFLOAD_GSO_MAX_SIZE = 65000

_LENGTH = struct.Struct("!H")

Transport = Literal["udp", "tcp"]


class TunnelError(MinivpnError):
    """A tunnel cannot start (bad address, port in use) or cannot go on."""


@attrs.frozen
class TunnelConfig:
    """Everything ``minivpn tunnel`` needs.

    Attributes:
        device: device name (an existing persistent device is attached; otherwise a
            temporary one is made) or None for a kernel-chosen name.
        transport: ``"udp"`` (one packet per datagram) or ``"tcp"`` (2-byte length frames).
        listen: ``(host, port)`` to listen on (host ``""`` means every address, IPv4 and IPv6).
        connect: ``(host, port)`` of the peer to connect to.
        mode: TUN (IP packets) or TAP (Ethernet frames).
        pi: the device carries the 4-byte packet-information header (both ends must agree).
        addresses: CIDRs to add to the device.
        mtu: MTU to set on the device.
        offload: read and write super-packets with a virtio-net header (TSO/checksum offload);
            both ends must use it.
        roam_after: UDP listener: seconds of silence before a new sender becomes the peer.
    """

    device: str | None
    transport: Transport
    listen: tuple[str, int] | None = None
    connect: tuple[str, int] | None = None
    mode: Mode = Mode.TUN
    pi: bool = False
    addresses: tuple[str, ...] = ()
    mtu: int | None = None
    offload: bool = False
    roam_after: float = 2.0

    def __attrs_post_init__(self) -> None:
        if (self.listen is None) == (self.connect is None):
            raise TunnelError("give exactly one of --listen and --connect")

    @property
    def payload_kind(self) -> PayloadKind:
        """What a datagram must hold to be written to the device."""
        if self.mode is Mode.TUN:
            return PayloadKind.IP_PI if self.pi else PayloadKind.IP
        return PayloadKind.ETHERNET_PI if self.pi else PayloadKind.ETHERNET


@attrs.define
class _Tunnel:
    """Shared state of one running tunnel (one per process)."""

    config: TunnelConfig
    device: TunDevice
    counters: Counters
    complain: RateLimitedLog
    #: UDP listener: who the peer is.
    follower: PeerFollower = attrs.field(factory=PeerFollower)
    #: TCP: the connection packets from the device go to (None while there is none).
    connection: socket.socket | None = None
    connection_scope: trio.CancelScope | None = None
    #: TCP: when the current connection last delivered bytes.
    last_received: float = -math.inf

    def drop(self, reason: str, message: str | None = None) -> None:
        self.counters.drop(reason)
        self.complain(reason, message or f"dropped a packet: {reason}", trio.current_time())


async def run_tunnel(
    config: TunnelConfig,
    *,
    counters: Counters | None = None,
    task_status: trio.TaskStatus[TunDevice] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Attach to the device, configure it, and carry packets until cancelled.

    Args:
        config: what to run.
        counters: where to count (a fresh :class:`Counters` if None); the caller may print it.
        task_status: ``nursery.start(run_tunnel, ...)`` gets the device once traffic flows.

    Raises:
        TunnelError: the transport cannot be set up.
        DeviceGone: the device was deleted under the tunnel.
        TunError, NetconfError: the device cannot be attached or configured.
    """
    counters = counters if counters is not None else Counters()
    log.warning(
        "this tunnel is NOT encrypted or authenticated: anyone on the path can read and inject"
        " packets (use `minivpn up` for a WireGuard VPN)"
    )
    # The socket comes first: a port in use or an unreachable peer is reported before any
    # device is made or configured.  The connecting side of TCP connects later, and again
    # whenever the connection ends.
    if config.transport == "udp":
        sock: socket.socket | None = await _udp_socket(config)
    elif config.listen is not None:
        sock = await _tcp_listener(config)
    else:
        sock = None
    try:
        async with open_tun_device(
            config.device, config.mode, pi=config.pi, vnet_hdr=config.offload
        ) as device:
            _configure_device(device, config)
            tunnel = _Tunnel(
                config,
                device,
                counters,
                RateLimitedLog(log.warning),
                PeerFollower(config.roam_after),
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_report_on_signal, counters)
                if config.transport == "udp":
                    assert sock is not None
                    nursery.start_soon(_device_to_udp, tunnel, sock)
                    nursery.start_soon(_udp_to_device, tunnel, sock)
                else:
                    nursery.start_soon(_device_to_tcp, tunnel)
                    if sock is not None:
                        nursery.start_soon(_tcp_accept, tunnel, sock)
                    else:
                        nursery.start_soon(_tcp_connect, tunnel)
                task_status.started(device)
    finally:
        if sock is not None:
            sock.close()  # every task using it has ended with the nursery


def _configure_device(device: TunDevice, config: TunnelConfig) -> None:
    """MTU, offloads, addresses, link up: through netlink and ioctl."""
    if config.offload:
        offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, offloads)
        netconf.set_gso_max_size(device.name, OFFLOAD_GSO_MAX_SIZE)
    if config.mtu is not None:
        netconf.set_mtu(device.name, config.mtu)
    for cidr in config.addresses:
        netconf.add_address(device.name, cidr)
    netconf.set_link_up(device.name)
    log.info(
        "device %s (%s%s%s) up; %s %s (%s)",
        device.name,
        config.mode.value,
        ", pi" if config.pi else "",
        ", offload" if config.offload else "",
        "listening on" if config.listen else "connecting to",
        _show(config.listen or config.connect),
        config.transport,
    )


def _peer(sockaddr: object) -> str:
    """A socket address as a person writes it: ``198.51.100.1:5000``, ``[fd00::1]:5000``."""
    if not isinstance(sockaddr, tuple) or len(sockaddr) < 2:
        return str(sockaddr)
    host, port = str(sockaddr[0]), int(sockaddr[1])
    host = host.removeprefix("::ffff:") if "." in host else host
    return _show((host, port))


def _show(hostport: tuple[str, int] | None) -> str:
    if hostport is None:
        return "-"
    host, port = hostport
    return f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"


async def _report_on_signal(counters: Counters) -> None:
    """Print the counters on SIGUSR1 (``kill -USR1 PID``)."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            log.info("%s", counters.summary())


# -- addresses --------------------------------------------------------------------------------


async def _resolve(
    host: str, port: int, *, passive: bool, kind: int
) -> tuple[int, tuple[object, ...]]:
    """(family, sockaddr) for host:port; for a listener an empty host means every address."""
    if passive and host == "":
        return socket.AF_INET6, ("::", port, 0, 0)
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=kind, flags=socket.AI_PASSIVE if passive else 0
        )
    except OSError as exc:
        raise TunnelError(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _new_socket(family: int, kind: int) -> socket.socket:
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    if family == socket.AF_INET6:
        # Listen on "::" and accept IPv4 peers too (as ::ffff:a.b.c.d).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    return sock


def _bind(sock: socket.socket, sockaddr: tuple[object, ...], what: str) -> None:
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TunnelError(f"cannot listen on {what}: the port is already in use") from None
        raise TunnelError(f"cannot listen on {what}: {exc.strerror}") from None


async def _udp_socket(config: TunnelConfig) -> socket.socket:
    """A UDP socket bound (listen) or connected (connect) as configured."""
    if config.listen is not None:
        family, sockaddr = await _resolve(*config.listen, passive=True, kind=socket.SOCK_DGRAM)
        sock = _new_socket(family, socket.SOCK_DGRAM)
        _bind(sock, sockaddr, _show(config.listen))
    else:
        assert config.connect is not None
        family, sockaddr = await _resolve(*config.connect, passive=False, kind=socket.SOCK_DGRAM)
        sock = _new_socket(family, socket.SOCK_DGRAM)
        # A connected UDP socket: the kernel drops datagrams from anyone but the peer.
        # Connecting sends nothing; it only fails when there is no route to the peer.
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            raise TunnelError(f"cannot reach {_show(config.connect)}: {exc.strerror}") from None
    return sock


# -- UDP ---------------------------------------------------------------------------------------


async def _device_to_udp(tunnel: _Tunnel, sock: socket.socket) -> None:
    """Device -> network: one datagram per packet."""
    device, counters, follower = tunnel.device, tunnel.counters, tunnel.follower
    listener = tunnel.config.listen is not None
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    read = device.read_nowait_into
    send, sendto = sock.send, sock.sendto
    while True:
        await device.wait_readable()
        for _ in range(BATCH):
            n = read(buffer)
            if n == 0:
                break
            peer: Any = follower.address
            if listener and peer is None:
                tunnel.drop("no-peer-yet", "dropping packets: no peer has sent anything yet")
                continue
            try:
                if listener:
                    sendto(view[:n], peer)
                else:
                    send(view[:n])
            except BlockingIOError:
                # The socket buffer is full: wait for room once, then give up on this packet.
                await trio.lowlevel.wait_writable(sock)
                try:
                    sendto(view[:n], peer) if listener else send(view[:n])
                except OSError as exc:
                    _count_send_error(tunnel, exc)
                    continue
            except OSError as exc:
                _count_send_error(tunnel, exc)
                continue
            counters.tx_packets += 1
            counters.tx_bytes += n
        else:
            await trio.lowlevel.checkpoint()


def _count_send_error(tunnel: _Tunnel, exc: OSError) -> None:
    if isinstance(exc, BlockingIOError):
        tunnel.drop("socket-full", "the socket buffer is full; dropping")
    elif exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
        tunnel.drop("peer-unreachable", f"the peer is unreachable ({exc.strerror}); dropping")
    elif exc.errno == errno.EMSGSIZE:
        tunnel.drop("too-big", "a packet is too big for the path to the peer; lower --mtu")
    else:
        tunnel.drop("send-error", f"cannot send to the peer: {exc.strerror}")


async def _udp_to_device(tunnel: _Tunnel, sock: socket.socket) -> None:
    """Network -> device: check each datagram, follow the peer, write it."""
    device, counters, config = tunnel.device, tunnel.counters, tunnel.config
    kind, vnet = config.payload_kind, config.offload
    listener = config.listen is not None
    follower = tunnel.follower
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    recvfrom, recv = sock.recvfrom_into, sock.recv_into
    write = device.write_nowait
    while True:
        await trio.lowlevel.wait_readable(sock)
        for _ in range(BATCH):
            try:
                if listener:
                    n, sender = recvfrom(buffer)
                else:
                    n, sender = recv(buffer), None
            except BlockingIOError:
                break
            except OSError as exc:
                # ICMP errors (the peer is not up yet) surface on the next receive.
                _count_send_error(tunnel, exc)
                continue
            reason = check_payload(view, n, kind, vnet=vnet)
            if reason is not None:
                tunnel.drop(reason, _explain(reason, sender))
                continue
            if listener:
                verdict = follower.observe(sender, trio.current_time())
                if verdict is PeerVerdict.FOREIGN:
                    tunnel.drop(
                        "foreign-source", f"dropping datagrams from {_peer(sender)}: not the peer"
                    )
                    continue
                if verdict is not PeerVerdict.PEER:
                    log.info(
                        "peer %s %s",
                        "is" if verdict is PeerVerdict.NEW_PEER else "moved to",
                        _peer(sender),
                    )
            if write(view[:n]):
                counters.rx_packets += 1
                counters.rx_bytes += n
            else:
                tunnel.drop(
                    "device-refused", "the device refused a packet (link down or malformed)"
                )


def _explain(reason: str, sender: object) -> str:
    source = f" from {_peer(sender)}" if sender is not None else ""
    if reason == "offload-mismatch":
        return f"dropping datagrams{source}: one end uses --offload and the other does not"
    return f"dropping malformed datagrams{source}"


# -- TCP ---------------------------------------------------------------------------------------


async def _device_to_tcp(tunnel: _Tunnel) -> None:
    """Device -> connection: gather a burst of packets into frames, send them in one go.

    Each packet is read straight into the send buffer two bytes after the previous frame, and
    its length is written in front: no copy of the packet is ever made.
    """
    device, counters = tunnel.device, tunnel.counters
    buffer = bytearray(TCP_SEND_BUFFER + READ_SIZE + 2)
    view = memoryview(buffer)
    read = device.read_nowait_into
    while True:
        await device.wait_readable()
        end = 0
        packets = 0
        while end <= TCP_SEND_BUFFER and packets < BATCH:
            n = read(view[end + 2 :])
            if n == 0:
                break
            _LENGTH.pack_into(buffer, end, n)
            end += n + 2
            packets += 1
        if packets == 0:
            continue
        conn = tunnel.connection
        if conn is None:
            tunnel.drop("no-connection", "dropping packets: not connected to the peer")
            counters.drops["no-connection"] += packets - 1
            continue
        if await _send_all(tunnel, conn, view[:end]):
            counters.tx_packets += packets
            counters.tx_bytes += end - 2 * packets
        await trio.lowlevel.checkpoint()


async def _send_all(tunnel: _Tunnel, conn: socket.socket, data: memoryview) -> bool:
    """Send all of *data* on the connection, waiting while the kernel buffer is full."""
    sent = 0
    while sent < len(data):
        try:
            sent += conn.send(data[sent:])
        except BlockingIOError:
            try:
                await trio.lowlevel.wait_writable(conn)
            except trio.ClosedResourceError:
                return False
        except OSError as exc:
            log.info("connection to the peer lost while sending: %s", exc.strerror)
            _drop_connection(tunnel, conn)
            return False
    return True


def _drop_connection(tunnel: _Tunnel, conn: socket.socket) -> None:
    """Forget *conn* if it is the current connection and stop its receiver."""
    if tunnel.connection is conn:
        tunnel.connection = None
        if tunnel.connection_scope is not None:
            tunnel.connection_scope.cancel()


async def _serve_connection(tunnel: _Tunnel, conn: socket.socket, peer: object) -> None:
    """Make *conn* the current connection and carry frames from it to the device until it ends."""
    if tunnel.connection is not None:
        log.info("a new connection from %s replaces the old one", peer)
        _drop_connection(tunnel, tunnel.connection)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with trio.CancelScope() as scope:
        tunnel.connection, tunnel.connection_scope = conn, scope
        log.info("connected to %s", peer)
        try:
            await _tcp_to_device(tunnel, conn)
        finally:
            if tunnel.connection is conn:
                tunnel.connection = None
            trio.lowlevel.notify_closing(conn)
            conn.close()
    log.info("connection to %s closed", peer)


async def _tcp_to_device(tunnel: _Tunnel, conn: socket.socket) -> None:
    """Connection -> device: decode length-prefixed frames and write each packet."""
    device, counters, config = tunnel.device, tunnel.counters, tunnel.config
    kind, vnet = config.payload_kind, config.offload
    decoder = FrameDecoder()
    buffer = bytearray(TCP_SEND_BUFFER)
    view = memoryview(buffer)
    write = device.write_nowait
    while True:
        try:
            n = conn.recv_into(buffer)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(conn)
            continue
        except OSError as exc:
            log.info("connection lost: %s", exc.strerror)
            return
        if n == 0:
            return  # the peer closed the connection
        tunnel.last_received = trio.current_time()
        try:
            decoder.feed(view[:n])
            frames = list(decoder.frames())
        except FramingError as exc:
            tunnel.drop("bad-frame", f"closing the connection: {exc}")
            return
        for packet in frames:
            reason = check_payload(packet, len(packet), kind, vnet=vnet)
            if reason is not None:
                tunnel.drop(reason, _explain(reason, None))
            elif write(packet):
                counters.rx_packets += 1
                counters.rx_bytes += len(packet)
            else:
                tunnel.drop(
                    "device-refused", "the device refused a packet (link down or malformed)"
                )
        # While the peer keeps sending, recv never blocks: yield, or the other direction (and
        # signals, and cancellation) would wait for the flood to end.
        await trio.lowlevel.checkpoint()


async def _tcp_listener(config: TunnelConfig) -> socket.socket:
    """A TCP socket listening on the configured address and port."""
    assert config.listen is not None
    family, sockaddr = await _resolve(*config.listen, passive=True, kind=socket.SOCK_STREAM)
    listener = _new_socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _bind(listener, sockaddr, _show(config.listen))
    listener.listen(4)
    return listener


async def _tcp_accept(tunnel: _Tunnel, listener: socket.socket) -> None:
    """Accept connections; a new one replaces the current one once that has gone quiet.

    "Quiet" is the UDP follower's rule: nothing received for ``roam_after`` seconds.
    """
    async with trio.open_nursery() as nursery:
        while True:
            try:
                conn, peer = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                log.warning("accept failed: %s", exc.strerror)
                await trio.sleep(0.1)
                continue
            conn.setblocking(False)
            if (
                tunnel.connection is not None
                and trio.current_time() - tunnel.last_received < tunnel.config.roam_after
            ):
                # The peer's connection is alive and talking: a second client does not get to
                # take over (it would be thrown out again when the first reconnects, forever).
                # A restarted peer gets in at once anyway: its old connection ended with a FIN.
                conn.close()
                tunnel.drop(
                    "foreign-connection",
                    f"refusing a connection from {_peer(peer)}: the peer's connection is active",
                )
                continue
            nursery.start_soon(_serve_connection, tunnel, conn, _peer(peer))


async def _tcp_connect(tunnel: _Tunnel) -> None:
    """Connect to the peer, serve the connection, reconnect with capped backoff when it ends."""
    assert tunnel.config.connect is not None
    host, port = tunnel.config.connect
    backoff = BACKOFF_FIRST
    while True:
        family, sockaddr = await _resolve(host, port, passive=False, kind=socket.SOCK_STREAM)
        conn = _new_socket(family, socket.SOCK_STREAM)
        try:
            try:
                conn.connect(sockaddr)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(conn)
                err = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err)) from None
        except OSError as exc:
            conn.close()
            # Refused: nothing listens on that TCP port; often the peer runs the UDP default.
            hint = " (is the peer listening with --tcp?)" if exc.errno == errno.ECONNREFUSED else ""
            tunnel.complain(
                "connect",
                f"cannot connect to {_show(tunnel.config.connect)}: {exc.strerror}{hint}; retrying",
                trio.current_time(),
            )
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        backoff = BACKOFF_FIRST
        await _serve_connection(tunnel, conn, _show(tunnel.config.connect))
        await trio.sleep(BACKOFF_FIRST)
