"""One WireGuard interface on trio: a thin shell around the sans-IO ``WireGuardCore``.

The runtime decides *when* things happen and moves bytes; the core decides *what* happens
(which peer, which key, whether to handshake).  The task tree of one interface::

    run_interface
    └── nursery
        ├── device_to_network     TUN fd readable -> read -> core.encapsulate -> UDP send
        ├── sockets (restartable, for `wg set listen-port`)
        │   ├── network_to_device[IPv4]   socket readable -> receive -> core.decapsulate
        │   ├── network_to_device[IPv6]                   -> TUN write; handshake messages
        │   │                                                -> the handshake queue
        │   ├── follow_endpoints          a connected socket per peer endpoint (peer_sockets)
        │   └── network_to_device[peer]   ... each with the same receive loop
        ├── handshakes            the queue -> core.decapsulate -> UDP send (a response or a
        │                         cookie reply), in slices with a CPU budget
        ├── timers                sleep until core.next_deadline() -> core.handle_timer(now)
        ├── serve_uapi            `wg` talks to /var/run/wireguard/NAME.sock
        ├── run_trace             `minivpn trace` reads NAME.trace; the log at -v (trace_server)
        ├── stop_when_removed     the socket file removed -> the interface stops
        ├── watch_link            link up/down, MTU
        └── report_on_signal      SIGUSR1 -> counters in the log

Any task failing cancels the whole nursery, so an interface is never left half alive.

Handshake messages do not go through the core where they arrive: a flood of them (a valid mac1
needs only our public key) would starve the data of the live sessions.  The receive loops put
them in a bounded queue (:class:`~minivpn.wireguard.handshake_queue.HandshakeQueue`), and the
handshakes task works through it in short slices, within a CPU budget, so the data tasks get
their turn between two slices (:func:`_handshakes`).

The two data tasks come in two versions, chosen once at start-up (:func:`offload_mode`, and
whether the device was opened with a virtio-net header) and logged:

* **one packet at a time** (:func:`_plain_device_to_network`, :func:`_plain_network_to_device`):
  one read, one ``encapsulate``, one send; one receive, one ``decapsulate``, one write.  This is
  the per-packet path as docs/vpn.md walks through it, and what runs with
  ``MINIVPN_OFFLOAD=off`` or when the kernel offers no virtio-net header;
* **the offload engine** (:class:`~minivpn.offload_engine.OffloadEngine`, the default): the same
  calls to the core, in batches -- trains of datagrams sent with one ``sendmsg`` (UDP GSO),
  trains received with one ``recvmsg`` (UDP GRO), TCP segments merged into super-packets for one
  ``writev``, optionally TCP super-packets read from the TUN device (TSO) -- and, after every
  write to the TUN device, the kernel's answers sent in the same turn
  (:meth:`_Runtime.drain_tun`).  docs/offload.md explains each; docs/performance.md has the
  measurements.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import logging
import math
import os
import signal
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING, Any

import trio

from minivpn.framing.offload import VNET_HDR_LEN, ZERO_VNET_HDR, OffloadError
from minivpn.offload_engine import MAX_DATAGRAM, OffloadEngine, lazy_buffer
from minivpn.runtime import sticky
from minivpn.runtime.peer_sockets import FOLLOW_INTERVAL, PeerSockets
from minivpn.runtime.trace_server import run_trace
from minivpn.runtime.uapi_server import UapiSocket, serve_uapi, watch_socket_path
from minivpn.tuntap.aio import READ_SIZE
from minivpn.tuntap.device import get_txqueuelen, set_txqueuelen
from minivpn.tuntap.errors import TunError
from minivpn.tuntap.ioctl import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUNSETOFFLOAD, Mode
from minivpn.wireguard.diagnosis import peer_failure_cause
from minivpn.wireguard.events import (
    Action,
    DropReason,
    FwmarkChanged,
    HandshakeCompleted,
    HandshakeFailed,
    ListenPortChanged,
    MacMoved,
    ModeMismatch,
    SendDatagram,
)
from minivpn.wireguard.handshake_queue import HandshakeQueue, is_handshake_message
from minivpn.wireguard.results import WriteToNetwork, WriteToTunnel
from minivpn.wireguard.uapi import EADDRINUSE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from minivpn.tuntap.aio import TunDevice
    from minivpn.wireguard.core import WireGuardCore
    from minivpn.wireguard.keys import PublicKey
    from minivpn.wireguard.uapi import DeviceSnapshot, SetRequest

__all__ = ["DEFAULT_OFFLOAD", "OffloadMode", "VpnError", "offload_mode", "run_interface"]

log = logging.getLogger("minivpn.vpn")

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: send one buffer as several datagrams of this size
UDP_GRO = 104  # linux/udp.h: receive a train of datagrams as one buffer
#: TUN offloads for UDP super-packets (linux/if_tun.h, kernel 6.2 and later).
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
#: Reads (or receives) a data task makes before it yields to the others.
BATCH = 64
SOCKET_BUFFER = 8 << 20
#: The first byte of a data message: every other datagram is sorted out for the handshake queue.
_TRANSPORT_DATA = 4
#: CPU seconds the handshakes task works before it lets the other tasks run.
HANDSHAKE_SLICE = 0.002
_GSO_SIZE = struct.Struct("=H")
#: The TUN device's ring of packets waiting to be read (its transmit queue) holds 500 packets
#: unless someone chose otherwise; minivpn makes it 1000.  Under one TCP stream the ring of 500
#: overflowed and dropped packets at its tail, pings among them (1-3 of 90 probes lost), where
#: 1000 lost none and kept the p99 of the ping under load at 8-12 ms (docs/performance.md,
#: "Latency under load").  wireguard-go with TSO queues 64 KB super-packets in the same 500.
TUN_DEFAULT_QUEUE, TUN_QUEUE = 500, 1000
#: The smallest packet that gets as far as the IP layer: one byte claiming IPv4 (_link_is_up).
_PROBE_PACKET = b"\x40"


class VpnError(TunError):
    """The interface cannot start or go on (port in use, device trouble)."""


class OffloadMode(enum.Enum):
    """How the data tasks move packets (``MINIVPN_OFFLOAD``; docs/offload.md)."""

    #: One packet at a time: the per-packet path alone, no virtio-net header.
    OFF = "off"
    #: The offload engine: UDP GSO and GRO, coalesced TUN writes; the TUN device hands over
    #: packets of at most the MTU.
    BATCH = "batch"
    #: The offload engine, and TCP (and UDP) super-packets read from the TUN device.
    TSO = "tso"


#: What runs when MINIVPN_OFFLOAD is not set (docs/performance.md has the measurements).
DEFAULT_OFFLOAD = OffloadMode.BATCH


def offload_mode() -> OffloadMode:
    """The offload mode ``MINIVPN_OFFLOAD`` asks for (off, batch, tso), or the default.

    Raises:
        VpnError: the variable holds something else.
    """
    value = os.environ.get("MINIVPN_OFFLOAD", "").strip().lower()
    if not value:
        return DEFAULT_OFFLOAD
    try:
        return OffloadMode(value)
    except ValueError:
        choices = ", ".join(mode.value for mode in OffloadMode)
        raise VpnError(f"MINIVPN_OFFLOAD={value!r}: expected one of {choices}") from None


class _Runtime:
    """The runtime state of one interface: device, sockets, core, and the offload engine."""

    def __init__(self, device: TunDevice, core: WireGuardCore) -> None:
        self.device = device
        self.core = core
        self.sockets: dict[int, socket.socket] = {}
        # The offload engine runs when the device has virtio-net headers; then the sockets
        # receive UDP GRO trains, which the plain loop would take for one odd datagram.
        self.offloaded = device.config.vnet_hdr
        self.gso = True  # cleared if the kernel refuses UDP_SEGMENT
        self.link_up = True
        self.timer_wakeup = trio.Event()
        self.sleeping_until = math.inf
        self.handshakes = HandshakeQueue()
        self.handshake_wakeup = trio.Event()
        self.scratch = memoryview(bytearray(MAX_DATAGRAM))  # for replies to handshake messages
        self.socket_scope: trio.CancelScope | None = None
        # A receive queue per peer: a connected socket for each endpoint (peer_sockets.py).
        self.peer_sockets = PeerSockets()
        self.engine = OffloadEngine(
            core, send=self.send_train, write=self.write_packet, handshake=self.queue_handshake
        )
        # The engine's TUN read buffer: a virtio-net header, then up to 64 KiB.
        self.frame = lazy_buffer(VNET_HDR_LEN + MAX_DATAGRAM)
        self.read_into = [self.frame]  # os.readv's argument, built once
        self.bad_frames = 0  # reads whose virtio-net header made no sense
        self.mismatched: set[PublicKey] = set()  # peers whose Mode differs, logged once each

    def bind(self, port: int) -> None:
        """Open the IPv4 and IPv6 UDP sockets on *port* (any free port if 0).

        Raises:
            VpnError: the port is in use (or nothing at all could be bound).
        """
        old = self.sockets
        new: dict[int, socket.socket] = {}
        try:
            for attempt in range(10):
                for sock in new.values():
                    sock.close()
                new = {}
                anywhere = "0.0.0.0"  # noqa: S104 (the wildcard address: every interface)
                v4 = _udp_socket(socket.AF_INET, (anywhere, port), self.core.fwmark, self.offloaded)
                new[socket.AF_INET] = v4
                chosen = v4.getsockname()[1]
                try:
                    new[socket.AF_INET6] = _udp_socket(
                        socket.AF_INET6, ("::", chosen, 0, 0), self.core.fwmark, self.offloaded
                    )
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE and port == 0 and attempt < 9:
                        continue  # the random port is free for IPv4 only: pick another
                    if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        raise
                    log.info("no IPv6 here (%s): listening on IPv4 only", exc.strerror)
                break
        except OSError as exc:
            for sock in new.values():
                sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise VpnError(f"cannot listen on UDP port {port}: it is already in use") from None
            raise VpnError(f"cannot open the UDP sockets: {exc.strerror}") from None
        for sock in old.values():
            trio.lowlevel.notify_closing(sock)
            sock.close()
        self.sockets = new
        self.core.listen_port = chosen
        log.info("listening on UDP port %d", chosen)

    def bound_port(self) -> int | None:
        """The port the listening sockets are bound to (None before there are any)."""
        return next(iter(self.sockets.values())).getsockname()[1] if self.sockets else None

    def socket_for(self, endpoint: tuple[str, int]) -> socket.socket | None:
        return self.sockets.get(socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET)

    def open_peer_socket(self, family: int, address: tuple[str, int]) -> socket.socket:
        """A socket on the listening port, for one peer's endpoint (peer_sockets.py)."""
        fwmark, gro = self.core.fwmark, self.offloaded
        return _udp_socket(family, address, fwmark, gro, shared=True)

    # -- actions ------------------------------------------------------------------------------

    def carry_out(self, actions: Sequence[Action]) -> None:
        """Do what the core asked: send datagrams, log events, rebind."""
        rebind = False
        for action in actions:
            if isinstance(action, SendDatagram):
                self.send_one(action.data, action.endpoint)
            elif isinstance(action, HandshakeCompleted):
                log.info("handshake with peer %s completed", _short(action.public_key))
            elif isinstance(action, HandshakeFailed):
                peer = self.core.peers.get(action.public_key)
                cause = peer_failure_cause(peer, self.core.public_key) if peer else "removed"
                log.info(
                    "no handshake with peer %s after %d attempts, giving up: %s",
                    _short(action.public_key),
                    action.attempts,
                    cause,
                )
            elif isinstance(action, ListenPortChanged | FwmarkChanged):
                rebind = True  # `wg setconf` sends both: rebind once, after the batch
            elif isinstance(action, MacMoved):
                log.info("%s", _moved(action))
            elif isinstance(action, ModeMismatch) and action.public_key not in self.mismatched:
                self.mismatched.add(action.public_key)
                log.warning("%s", _mismatch(action))
        if rebind:
            self.restart_sockets()
        self.poke_timers()

    def send_one(self, data: bytes | bytearray | memoryview, endpoint: tuple[str, int]) -> None:
        sock = self.socket_for(endpoint)
        if sock is None:
            self.core.note_drop(DropReason.SEND_FAILED)  # no socket of that address family
            return
        try:
            sticky.send(sock, data, endpoint)
        except OSError as exc:
            self.send_failed(exc, endpoint)

    def send_failed(self, exc: OSError, endpoint: tuple[str, int]) -> None:
        """A send the kernel refused: count it under its reason, say why if it is news."""
        too_big = exc.errno == errno.EMSGSIZE
        self.core.note_drop(DropReason.PACKET_TOO_BIG if too_big else DropReason.SEND_FAILED)
        _log_send_error(exc, endpoint)

    def restart_sockets(self) -> None:
        """Apply a new listen port or fwmark.

        The same port (``wg setconf`` always sends one): only the mark is set on the sockets
        there are.  Another port: new sockets are bound first (so a port in use leaves the old
        ones working), and the socket tasks restart on them.
        """
        bound = self.bound_port()
        if self.core.listen_port in (0, bound) and bound is not None:
            self.core.listen_port = bound
            for sock in self.sockets.values():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.core.fwmark)
            self.peer_sockets.set_mark(self.core.fwmark)
            return
        self.bind(self.core.listen_port)
        if self.socket_scope is not None:
            self.socket_scope.cancel()

    # -- timers -------------------------------------------------------------------------------

    def poke_timers(self) -> None:
        """Wake the timer task if the core now wants to be woken earlier than planned."""
        deadline = self.core.next_deadline()
        if deadline is not None and deadline < self.sleeping_until:
            self.timer_wakeup.set()

    # -- UAPI handler -------------------------------------------------------------------------

    def apply(self, request: SetRequest) -> int:
        result = self.core.apply(request, trio.current_time())
        self.peer_sockets.poke()  # peers, endpoints: the per-peer sockets follow at once
        try:
            self.carry_out(self.core.take_actions())
        except VpnError as exc:
            log.warning("%s", exc)
            bound = self.bound_port()
            if bound is not None:  # the old sockets still serve: `wg show` says their port
                self.core.listen_port = bound
            return EADDRINUSE
        return result

    def snapshot(self) -> DeviceSnapshot:
        return self.core.snapshot()

    # -- handshake messages -------------------------------------------------------------------

    def queue_handshake(self, datagram: memoryview, source: tuple[str, int], now: float) -> None:
        """Sort out a datagram that is not a data message: queue it, or drop it at once.

        A handshake message (the right type and size) waits for :func:`_handshakes`, unless
        the queue is full; anything else is malformed, and the core drops it (cheaply) now.
        """
        if is_handshake_message(datagram):
            if self.handshakes.offer(source, datagram, now):
                self.handshake_wakeup.set()
            else:
                self.core.note_drop(DropReason.HANDSHAKE_QUEUE_FULL)
        else:
            self.core.decapsulate(source, datagram, self.scratch, now)

    # -- moving packets -----------------------------------------------------------------------

    def write_to_tun(self, packet: bytes | bytearray | memoryview) -> None:
        """Write one packet (the plain loop); notice the link going down."""
        down_before = self.device.stats.dropped_link_down
        if not self.device.write_nowait(packet):
            self._write_refused(down_before)

    def write_packet(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        """Write one packet gathered from buffers, a virtio-net header first (the engine)."""
        down_before = self.device.stats.dropped_link_down
        if not self.device.writev_nowait(buffers):
            self._write_refused(down_before)

    def _write_refused(self, down_before: int) -> None:
        link_down = self.device.stats.dropped_link_down != down_before
        self.core.note_drop(DropReason.TUN_LINK_DOWN if link_down else DropReason.TUN_WRITE_FAILED)
        if self.link_up and link_down:
            self.link_up = False
            log.info("link %s is down: dropping packets for it", self.device.name)

    def send_train(self, datagrams: memoryview, size: int, endpoint: tuple[str, int]) -> None:
        """Send back-to-back datagrams of ``size`` bytes with one ``sendmsg`` (UDP GSO)."""
        sock = self.socket_for(endpoint)
        if sock is None:
            self.core.note_drop(DropReason.SEND_FAILED)  # no socket of that address family
            return
        end = len(datagrams)
        try:
            # sticky.send answers from the local address the peer wrote to (sticky.py).
            if end <= size:
                sticky.send(sock, datagrams, endpoint)
            elif self.gso:
                gso = (SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))
                sticky.send(sock, datagrams, endpoint, [gso])
            else:
                for offset in range(0, end, size):
                    sticky.send(sock, datagrams[offset : offset + size], endpoint)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT) and self.gso:
                log.info("UDP GSO refused (%s): sending datagrams one by one", exc.strerror)
                self.gso = False
                self.send_train(datagrams, size, endpoint)
            else:
                self.send_failed(exc, endpoint)

    def drain_tun(self, now: float) -> None:
        """Read the TUN device until it is empty (or BATCH reads), through the engine.

        Past BATCH reads it stops only between trains, so that a busy device still gives full
        UDP GSO sends (stopping at exactly 64 sent 44 + 20 datagrams at MTU 1420: 40% more
        ``sendmsg`` calls than full trains, and smaller batches for the receiver).
        """
        engine, frame, read_into = self.engine, self.frame, self.read_into
        fd = self.device.fileno()
        reads = 0
        while reads < BATCH or engine.gathering:
            reads += 1
            # os.readv on the fd, not device.read_nowait_into: two calls less per packet.
            try:
                size = os.readv(fd, read_into)
            except BlockingIOError:
                break
            except OSError:
                # The device's own read turns the error into the right exception
                # (DeviceGone...), or reads a packet after all.
                size = self.device.read_nowait_into(frame)
                if size == 0:
                    break
            if size <= VNET_HDR_LEN:
                continue
            try:
                engine.packets_from_tun(frame[:size], now)
            except OffloadError as exc:
                self.bad_frames += 1
                self.core.note_drop(DropReason.TUN_BAD_FRAME)
                log.debug("dropped a read from %s: %s", self.device.name, exc)
        engine.send_trains()
        actions = self.core.take_actions()
        if actions:
            self.carry_out(actions)
        else:
            self.poke_timers()


def _short(key: PublicKey) -> str:
    """A public key as logs show it: the first 8 characters of its base64."""
    return key.to_base64()[:8] + "…"


def _port(key: PublicKey | None) -> str:
    """A port of the layer-2 switch, for the log: a peer, or the TAP device (None)."""
    return "this TAP device" if key is None else f"peer {_short(key)}"


def _moved(event: MacMoved) -> str:
    """The log line of a MAC move, with the moves not logged before it (a flapping address)."""
    line = f"MAC {event.mac.hex(':')} moved from {_port(event.old)} to {_port(event.new)}"
    if event.unreported:
        line += f" ({event.unreported} more moves not logged since the last such line)"
    return line


def _mismatch(event: ModeMismatch) -> str:
    if event.received == "packet":
        return (
            f"peer {_short(event.public_key)} sends IP packets, but this interface is in "
            "Mode = tap (Ethernet frames, a minivpn extension): the peer must be minivpn with "
            "Mode = tap too; dropping them"
        )
    return (
        f"peer {_short(event.public_key)} sends Ethernet frames (it is minivpn in Mode = tap), "
        "but this interface carries IP packets: give both ends the same Mode; dropping them"
    )


def _udp_socket(
    family: int, address: tuple[Any, ...], fwmark: int, gro: bool, *, shared: bool = False
) -> socket.socket:
    """A UDP socket with the interface's options, bound to *address*.

    ``SO_REUSEPORT`` lets the per-peer sockets (*shared*) bind to the listening port.  The
    listening socket sets it only once bound, so that its own bind still fails on a port
    someone else holds (and port 0 picks a port nobody holds).
    """
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        if fwmark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if not shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if gro:
            with contextlib.suppress(OSError):  # an old kernel: one datagram per receive
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        # Which of our addresses each datagram arrived at, to answer from it (sticky.py).
        sticky.enable_destination_info(sock)
    except OSError:
        sock.close()
        raise
    return sock


def _log_send_error(exc: OSError, endpoint: tuple[str, int]) -> None:
    if isinstance(exc, BlockingIOError):
        return  # the socket buffer is full: UDP may drop, the peer's TCP recovers
    if exc.errno == errno.EMSGSIZE:
        log.warning("a datagram to %s is too big for the path: lower the MTU", endpoint)
    else:
        log.debug("cannot send to %s: %s", endpoint, exc.strerror)


async def run_interface(
    device: TunDevice,
    core: WireGuardCore,
    uapi_listener: socket.socket | UapiSocket | None,
    *,
    socket_path: str | os.PathLike[str] | None = None,
    trace_listener: socket.socket | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one interface until cancelled or until its UAPI socket file is removed.

    Args:
        device: the TUN device; opened with ``vnet_hdr=True``, the data path goes through
            the offload engine, else one packet at a time.
        core: the protocol state (configured from a file, or empty and configured via UAPI).
        uapi_listener: the UAPI socket for ``wg`` (:func:`prepare_socket`'s result, which also
            gives the path to watch), a listening UNIX socket, or None.
        socket_path: the UAPI socket's path, if not given by *uapi_listener*; when the file
            goes, the interface stops.
        trace_listener: the listening trace socket (``minivpn trace``), or None.
        task_status: ``started()`` once the sockets are bound.

    Raises:
        VpnError: the UDP port cannot be bound.
        DeviceGone: the device was deleted.
    """
    file_id, handle = None, -1
    if isinstance(uapi_listener, UapiSocket):
        socket_path, file_id = uapi_listener.path, uapi_listener.file_id
        handle = uapi_listener.handle
        uapi_listener = uapi_listener.listener
    if device.config.mode is Mode.TAP:  # layer 2 (Mode = tap): frames through the switch
        from minivpn.runtime import frames

        batched = offload_mode() is not OffloadMode.OFF
        iface: _Runtime = frames.FrameRuntime(device, core, batched=batched)
    else:
        iface = _Runtime(device, core)
    with contextlib.suppress(TunError):
        core.mtu = device.mtu()
        if get_txqueuelen(device.name) == TUN_DEFAULT_QUEUE:  # nobody chose a length
            set_txqueuelen(device.name, TUN_QUEUE)
    iface.bind(core.listen_port)
    device_to_network: Callable[[_Runtime], Awaitable[None]]
    network_to_device: Callable[[_Runtime, socket.socket], Awaitable[None]]
    if device.config.mode is Mode.TAP and iface.offloaded:
        log.info("data path: Ethernet frames through the frame engine (Mode = tap)")
        device_to_network = frames.batched_device_to_network
        network_to_device = frames.batched_network_to_device
    elif device.config.mode is Mode.TAP:
        log.info("data path: Ethernet frames, one at a time (Mode = tap)")
        device_to_network = frames.device_to_network
        network_to_device = frames.network_to_device
    elif iface.offloaded:
        if offload_mode() is not OffloadMode.TSO:
            log.info("data path: the offload engine")
        elif _enable_tso(device):
            log.info("data path: the offload engine with TSO")
        else:
            log.info("data path: the offload engine (the kernel refused TSO)")
        device_to_network = _offload_device_to_network
        network_to_device = _offload_network_to_device
    else:
        log.info("data path: one packet at a time")
        device_to_network = _plain_device_to_network
        network_to_device = _plain_network_to_device
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(device_to_network, iface)
            nursery.start_soon(_socket_tasks, iface, network_to_device)
            nursery.start_soon(_handshakes, iface)
            nursery.start_soon(_timers, iface)
            nursery.start_soon(_watch_link, iface)
            nursery.start_soon(_report_on_signal, iface)
            nursery.start_soon(run_trace, core, device.name, trace_listener)
            if uapi_listener is not None:
                nursery.start_soon(serve_uapi, uapi_listener, iface)
            if socket_path is not None:
                nursery.start_soon(
                    _stop_when_removed, socket_path, file_id, handle, nursery.cancel_scope
                )
            # Anything the configuration asked for at once (keepalives, initiations).
            iface.carry_out(core.take_actions())
            task_status.started()
    finally:
        for sock in iface.sockets.values():
            sock.close()
        iface.peer_sockets.close_all()


def drop_summary(core: WireGuardCore) -> str:
    """``dropped N (reason n, ...)``: what the core and the runtime dropped, by reason."""
    reasons = {reason.value: n for reason, n in core.drops.items() if n}
    detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
    return f"dropped {sum(reasons.values())}" + (f" ({detail})" if detail else "")


async def _report_on_signal(iface: _Runtime) -> None:
    """SIGUSR1 (``kill -USR1 PID``): log the peers' byte counters and the drops by reason."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            snapshot = iface.core.snapshot()
            for peer in snapshot.peers:
                log.info(
                    "peer %s: rx %d bytes, tx %d bytes",
                    _short(peer.public_key),
                    peer.rx_bytes,
                    peer.tx_bytes,
                )
            log.info("%s: %s", iface.device.name, drop_summary(iface.core))


async def _stop_when_removed(
    path: str | os.PathLike[str],
    file_id: tuple[int, int] | None,
    handle: int,
    scope: trio.CancelScope,
) -> None:
    await watch_socket_path(path, file_id=file_id, handle=handle)
    log.info("the socket %s was removed: stopping", path)
    scope.cancel()


async def _socket_tasks(
    iface: _Runtime,
    network_to_device: Callable[[_Runtime, socket.socket], Awaitable[None]],
) -> None:
    """One receiver per socket; restarted whenever the sockets are rebound."""
    while True:
        with trio.CancelScope() as scope:
            iface.socket_scope = scope
            async with trio.open_nursery() as nursery:
                for sock in iface.sockets.values():
                    nursery.start_soon(network_to_device, iface, sock)
                nursery.start_soon(_follow_endpoints, iface, nursery, network_to_device)
        iface.socket_scope = None


async def _follow_endpoints(
    iface: _Runtime,
    nursery: trio.Nursery,
    network_to_device: Callable[[_Runtime, socket.socket], Awaitable[None]],
) -> None:
    """Keep a connected socket, with a receiver, for each peer endpoint (peer_sockets.py).

    It looks when the configuration changed and every FOLLOW_INTERVAL seconds (a peer that
    roamed); a receiver ends when its socket is closed.  The sockets live as long as this
    task: when the sockets are rebound (another port), they are closed with it, and its
    successor opens them on the new port.
    """
    sockets = iface.peer_sockets
    try:
        while True:
            endpoints = [peer.endpoint for peer in iface.core.peers.values()]
            port, now = iface.core.listen_port, trio.current_time()
            for sock in sockets.sync(endpoints, port, iface.open_peer_socket, now):
                nursery.start_soon(_receive_from_peer, iface, sock, network_to_device)
            with trio.move_on_after(FOLLOW_INTERVAL):
                await sockets.changed.wait()
            sockets.changed = trio.Event()
    finally:
        sockets.close_all()


async def _receive_from_peer(
    iface: _Runtime,
    sock: socket.socket,
    network_to_device: Callable[[_Runtime, socket.socket], Awaitable[None]],
) -> None:
    """The receive loop on one peer's socket, unless it was closed before this task ran."""
    if sock.fileno() != -1:  # once waiting, a close wakes the loop, which then returns
        await network_to_device(iface, sock)


async def _handshakes(iface: _Runtime) -> None:
    """Work through the handshake queue in slices, within its CPU budget, data first.

    A slice ends after HANDSHAKE_SLICE seconds of CPU time (or when the queue is empty); then
    the task checkpoints, and the data tasks, whose sockets and TUN device are readable, run
    before the next slice.  Before each message the core learns whether it is under load; once
    the budget is used up, the task waits until it has refilled
    (:mod:`minivpn.wireguard.handshake_queue`).  The time is CPU time (``time.thread_time``):
    being preempted by other processes is not handshake work.
    """
    core, queue, out = iface.core, iface.handshakes, iface.scratch
    while True:
        if not queue:
            iface.handshake_wakeup = trio.Event()
            await iface.handshake_wakeup.wait()
        resume = queue.resume_at(trio.current_time())
        if resume is not None:
            await trio.sleep_until(resume)
        started = time.thread_time()
        while queue:
            source, message = queue.pop()
            now = trio.current_time()
            core.under_load = queue.under_load(now)
            result = core.decapsulate(source, message, out, now)
            if isinstance(result, WriteToNetwork):
                iface.send_one(out[: result.size], result.endpoint)
            if time.thread_time() - started >= HANDSHAKE_SLICE:
                break
        queue.charge(time.thread_time() - started, trio.current_time())
        iface.carry_out(core.take_actions())  # and the timers learn of new deadlines
        await trio.lowlevel.checkpoint()  # the data tasks go first


async def _timers(iface: _Runtime) -> None:
    """Sleep until the core's next deadline (or a poke), then let it act."""
    core = iface.core
    while True:
        deadline = core.next_deadline()
        iface.sleeping_until = deadline if deadline is not None else math.inf
        with trio.move_on_at(iface.sleeping_until):
            await iface.timer_wakeup.wait()
        iface.timer_wakeup = trio.Event()
        iface.sleeping_until = -math.inf  # awake: pokes are not needed
        iface.carry_out(core.handle_timer(trio.current_time()))


async def _watch_link(iface: _Runtime) -> None:
    """Follow the link's MTU and up/down state (the link may live in another namespace)."""
    # The link is looked up by name, which only means our link while it is in our namespace
    # with the index it had at start: once moved (ip link set NAME netns X), another link may
    # take the name here, so the MTU is then left as it was.
    index = _if_index(iface.device.name)
    while True:
        await trio.sleep(1.0)
        if index is not None and _if_index(iface.device.name) == index:
            with contextlib.suppress(TunError):
                iface.core.mtu = iface.device.mtu()
        if not iface.link_up and _link_is_up(iface.device):
            iface.link_up = True
            log.info("link %s is up", iface.device.name)


def _if_index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _link_is_up(device: TunDevice) -> bool:
    """Probe the link state through the fd, which works from any namespace.

    A TUN write while the link is down fails with EIO.  The probe is the smallest packet that
    gets that far: one byte claiming IPv4 (behind a zero virtio-net header if the device
    has them); on an up link the kernel's IP
    layer drops it as a header error.  It is only sent while the link is believed down.
    """
    probe = ZERO_VNET_HDR + _PROBE_PACKET if device.config.vnet_hdr else _PROBE_PACKET
    try:
        os.write(device.fileno(), probe)
    except OSError as exc:
        return exc.errno != errno.EIO
    return True


# -- the data path, one packet at a time --------------------------------------------------------


async def _plain_device_to_network(iface: _Runtime) -> None:
    """TUN -> UDP: read a packet, encapsulate it, send the datagram; again until empty."""
    device, core = iface.device, iface.core
    packet_buffer = memoryview(bytearray(READ_SIZE))
    out = memoryview(bytearray(MAX_DATAGRAM))
    while True:
        await device.wait_readable()
        for _ in range(BATCH):
            size = device.read_nowait_into(packet_buffer)
            if size == 0:
                break
            result = core.encapsulate(packet_buffer[:size], out, trio.current_time())
            if isinstance(result, WriteToNetwork):
                iface.send_one(out[: result.size], result.endpoint)
        iface.carry_out(core.take_actions())


async def _plain_network_to_device(iface: _Runtime, sock: socket.socket) -> None:
    """UDP -> TUN: receive a datagram, decapsulate it, write the packet (or send a reply)."""
    core = iface.core
    datagram_buffer = memoryview(bytearray(MAX_DATAGRAM))
    out = memoryview(bytearray(MAX_DATAGRAM))
    while True:
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            return  # rebound: the socket task restarts
        for _ in range(BATCH):
            try:
                size, ancillary, _flags, address = sock.recvmsg_into(
                    [datagram_buffer], sticky.ANCILLARY_SPACE
                )
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                continue  # an ICMP error for an earlier send: nothing to do here
            source = sticky.endpoint_from(address, ancillary)
            datagram = datagram_buffer[:size]
            if size == 0 or datagram[0] != _TRANSPORT_DATA:
                iface.queue_handshake(datagram, source, trio.current_time())
                continue
            result = core.decapsulate(source, datagram, out, trio.current_time())
            if isinstance(result, WriteToTunnel):
                iface.write_to_tun(out[: result.size])
        iface.carry_out(core.take_actions())


# -- the data path, through the offload engine --------------------------------------------------


async def _offload_device_to_network(iface: _Runtime) -> None:
    """TUN -> UDP: whenever the TUN is readable, drain it through the engine."""
    device = iface.device
    while True:
        await device.wait_readable()
        iface.drain_tun(trio.current_time())
        # No checkpoint here: wait_readable always goes through the scheduler, even when the
        # fd is ready, so the other tasks get their turn after every batch anyway (an extra
        # checkpoint only added one more pass of trio's loop per wake-up).


async def _offload_network_to_device(iface: _Runtime, sock: socket.socket) -> None:
    """UDP -> TUN: receive GRO trains, decapsulate, write coalesced, answer in the same turn.

    The packets decrypted during one wake-up wait in the engine and are written when the
    socket is empty (or the engine is full, or BATCH receives were made): a TCP run that
    spans several receives then still becomes one super-packet, so the kernel's TCP stack --
    which runs inside our ``writev`` -- takes fewer, larger packets (32 segments a write on
    average instead of 20, in a one-stream iperf3 run).
    """
    core, engine = iface.core, iface.engine
    receive_buffer = lazy_buffer(MAX_DATAGRAM)
    while True:
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            return  # rebound: the socket task restarts
        now = trio.current_time()
        for _ in range(BATCH):
            if not engine.has_room():
                break  # no room for another receive: write, and let the other tasks run
            try:
                size, ancillary, _flags, address = sock.recvmsg_into(
                    [receive_buffer], sticky.ANCILLARY_SPACE
                )
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                continue  # an ICMP error for an earlier send: nothing to do here
            if size == 0:
                continue  # an empty datagram: nothing in it for anyone
            segment = size
            for level, kind, data in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = int.from_bytes(data, sys.byteorder)
            source = sticky.endpoint_from(address, ancillary)
            engine.datagrams_from_network(receive_buffer[:size], segment, source, now)
            actions = core.take_actions()
            if actions:
                iface.carry_out(actions)
        if engine.write_packets():
            # The kernel answers what we write from inside the write itself (a ping's reply,
            # TCP's ACKs), so the answer is usually in the TUN already: sending it now, in
            # this turn, saves one pass through trio's scheduler -- the largest part of the
            # time a lone packet spends in this process (docs/performance.md, "The VPN before
            # data path v2").
            iface.drain_tun(now)
        else:
            iface.poke_timers()  # (no checkpoint: see _offload_device_to_network)


def _enable_tso(device: TunDevice) -> bool:
    """Ask the TUN device for TCP (and, where the kernel has them, UDP) super-packets.

    Returns:
        Whether the kernel agreed; if not, the device hands over packets of at most the MTU.
    """
    tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    for offloads in (tcp | TUN_F_USO4 | TUN_F_USO6, tcp):  # USO: kernel 6.2 and later
        try:
            fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, offloads)
        except OSError:
            continue
        return True
    return False
