"""One WireGuard interface on trio: a thin shell around the sans-IO ``WireGuardCore``.

The runtime decides *when* things happen and moves bytes; the core decides *what* happens
(which peer, which key, whether to handshake).  The task tree of one interface::

    run_interface
    └── nursery
        ├── device_to_network     TUN fd readable -> drain: read, core.encrypt_packet_into,
        │                         gather same-size datagrams -> one sendmsg (UDP GSO)
        ├── sockets (restartable, for `wg set listen-port`)
        │   ├── network_to_device[IPv4]   socket readable -> drain: recvmsg (UDP GRO: many
        │   └── network_to_device[IPv6]   datagrams at once) -> core.decrypt_batch_into ->
        │                                 coalesce TCP segments -> writev to the TUN (vnet GRO)
        │                                 -> drain the TUN like device_to_network (answers)
        ├── timers                sleep until core.next_deadline() -> core.handle_timer(now)
        ├── serve_uapi            `wg` talks to /var/run/wireguard/NAME.sock
        ├── watch_socket_path     the socket file removed -> the interface stops
        └── watch_link            link up/down, MTU

Any task failing cancels the whole nursery, so an interface is never left half alive.

Fast paths (measured; see docs/performance.md):

* The TUN device is opened with ``IFF_VNET_HDR`` but without offloads, so the kernel hands over
  plain MTU-sized packets behind a zero header; what it gains is on the way *in*: decrypted
  TCP segments of one flow are merged (:func:`minivpn.framing.offload.coalesce`) and written as
  one super-packet, which the kernel's TCP stack takes in one pass.
* Outgoing datagrams of one batch that go to the same peer and have the same size are sent with
  one ``sendmsg`` and ``UDP_SEGMENT``: the kernel cuts them apart (UDP GSO).
* ``UDP_GRO`` lets one ``recvmsg`` return a batch of datagrams from one sender, and the core
  decrypts its data messages in one call (per-peer bookkeeping once per batch, not per packet).
* Every fd is drained until ``BlockingIOError`` (or a batch limit, then the task yields) before
  the task waits again, and the buffers are allocated once.  The packets decrypted in one
  wake-up are coalesced and written together, so TCP runs can span several receives.
* A lone packet is never held back: a run is sent as soon as a read finds the TUN empty, and
  packets are written as soon as the socket is empty.
* What the kernel answers to a packet we write (a ping reply, TCP's ACKs) is already in the TUN
  when the write returns: the receive task sends it in the same turn (:class:`_Outbound` is
  shared), one pass through trio's scheduler less per answer.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import mmap
import os
import signal
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING, Any

import trio

from minivpn.framing.offload import VNET_HDR_LEN, coalesce
from minivpn.runtime import sticky
from minivpn.runtime.uapi_server import UapiSocket, serve_uapi, watch_socket_path
from minivpn.tuntap.errors import TunError
from minivpn.wireguard.events import (
    Action,
    FwmarkChanged,
    HandshakeCompleted,
    HandshakeFailed,
    ListenPortChanged,
    SendDatagram,
)
from minivpn.wireguard.uapi import EADDRINUSE

if TYPE_CHECKING:
    from collections.abc import Sequence

    from minivpn.tuntap.aio import TunDevice
    from minivpn.wireguard.core import WireGuardCore
    from minivpn.wireguard.keys import PublicKey
    from minivpn.wireguard.uapi import DeviceSnapshot, SetRequest

__all__ = ["VpnError", "run_interface"]

log = logging.getLogger("minivpn.vpn")

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: send one buffer as several datagrams of this size
UDP_GRO = 104  # linux/udp.h: receive a train of datagrams as one buffer
#: Packets read from the TUN before the task yields to the others.
BATCH = 64
#: Largest UDP payload (and the most a GRO receive returns at once).
MAX_DATAGRAM = 65535
#: Most bytes and datagrams one UDP GSO send may carry (the kernel's limits: the whole must fit
#: one IP packet, and at most UDP_MAX_SEGMENTS = 64 segments).
GSO_MAX_BYTES = 65000
GSO_MAX_SEGMENTS = 64
SOCKET_BUFFER = 8 << 20
#: Room for the decrypted packets of one wake-up of a socket task (about 180 full-size
#: packets, 1-2 ms of work); when it is full they are written and the task yields.
PLAIN_ROOM = 4 * MAX_DATAGRAM
#: The type byte of a transport data message.
_DATA_MESSAGE = 4
#: Seconds of CPU time that handshake messages may take in each one-second window before the
#: device counts as "under load" for the rest of the window (see _Interface.handle_handshake).
HANDSHAKE_TIME_BUDGET = 0.25
_GSO_SIZE = struct.Struct("=H")
_PROBE_PACKET = bytes(VNET_HDR_LEN) + b"\x40"  # see _link_is_up


class VpnError(TunError):
    """The interface cannot start or go on (port in use, device trouble)."""


class _Interface:
    """The runtime state of one interface: device, sockets, core, and the batching buffers."""

    def __init__(self, device: TunDevice, core: WireGuardCore) -> None:
        self.device = device
        self.core = core
        self.sockets: dict[int, socket.socket] = {}
        self.gso = True  # cleared if the kernel refuses UDP_SEGMENT
        self.link_up = True
        self.timer_wakeup = trio.Event()
        self.sleeping_until = math.inf
        self.handshake_window_start = -math.inf
        self.handshake_seconds = 0.0  # CPU time spent on handshake messages in the window
        self.socket_scope: trio.CancelScope | None = None
        self.outbound = _Outbound(self)

    # -- sockets ------------------------------------------------------------------------------

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
                v4 = _udp_socket(socket.AF_INET, ("0.0.0.0", port), self.core.fwmark)  # noqa: S104
                new[socket.AF_INET] = v4
                chosen = v4.getsockname()[1]
                try:
                    new[socket.AF_INET6] = _udp_socket(
                        socket.AF_INET6, ("::", chosen, 0, 0), self.core.fwmark
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

    def socket_for(self, endpoint: tuple[str, int]) -> socket.socket | None:
        return self.sockets.get(socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET)

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
                log.info(
                    "no handshake with peer %s after %d attempts",
                    _short(action.public_key),
                    action.attempts,
                )
            elif isinstance(action, ListenPortChanged | FwmarkChanged):
                rebind = True  # `wg setconf` sends both: rebind once, after the batch
        if rebind:
            self.restart_sockets()
        self.poke_timers()

    def send_one(self, data: bytes | bytearray | memoryview, endpoint: tuple[str, int]) -> None:
        sock = self.socket_for(endpoint)
        if sock is None:
            return
        try:
            sticky.send(sock, data, endpoint)
        except OSError as exc:
            _log_send_error(exc, endpoint)

    def restart_sockets(self) -> None:
        """Apply a new listen port or fwmark.

        The same port (``wg setconf`` always sends one): only the mark is set on the sockets
        there are.  Another port: new sockets are bound first (so a port in use leaves the old
        ones working), and the socket tasks restart on them.
        """
        bound = next(iter(self.sockets.values())).getsockname()[1] if self.sockets else None
        if self.core.listen_port in (0, bound) and bound is not None:
            self.core.listen_port = bound
            for sock in self.sockets.values():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.core.fwmark)
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
        try:
            self.carry_out(self.core.take_actions())
        except VpnError as exc:
            log.warning("%s", exc)
            return EADDRINUSE
        return result

    def snapshot(self) -> DeviceSnapshot:
        return self.core.snapshot()

    # -- load ---------------------------------------------------------------------------------

    def handle_handshake(
        self, datagram: memoryview, source: tuple[str, int], out: memoryview
    ) -> int:
        """Process a handshake initiation or response, within the handshakes' time budget.

        A handshake message costs Diffie-Hellman operations (about 0.3 ms of CPU here), and
        data packets wait meanwhile: one thread does everything.  So handshake messages get
        at most HANDSHAKE_TIME_BUDGET seconds of CPU time per one-second window; once that is
        spent, the core is "under load" until the window ends: an initiation then needs a
        valid mac2, or it gets a cookie reply, which costs no Diffie-Hellman.

        wireguard-go says "under load" while 128 handshake messages queue up for its worker
        goroutines (and for one second after).  A single thread has no such queue; and the
        count of handshake messages per second this runtime used before (128 a second, 4% of
        the budget) answered 0 of 1000 initiations a second, against 600-900 now
        (``tests/bench/handshakes.py``, docs/performance.md).

        Returns:
            What :meth:`WireGuardCore.decrypt_datagram_into_untrusted` returns (0: no packet).
        """
        now = trio.current_time()
        if now - self.handshake_window_start >= 1.0:
            self.handshake_window_start = now
            self.handshake_seconds = 0.0
        self.core.under_load = self.handshake_seconds >= HANDSHAKE_TIME_BUDGET
        # CPU time, not wall-clock time: being preempted by other processes is not our cost.
        started = time.thread_time()
        size = self.core.decrypt_datagram_into_untrusted(datagram, source, out, now)
        self.handshake_seconds += time.thread_time() - started
        return size


def _short(key: PublicKey) -> str:
    """A public key as logs show it: the first 8 characters of its base64."""
    return key.to_base64()[:8] + "…"


def _udp_socket(family: int, address: tuple[Any, ...], fwmark: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        if fwmark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
        sock.bind(address)
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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one interface until cancelled or until its UAPI socket file is removed.

    Args:
        device: the TUN device, opened with ``vnet_hdr=True``.
        core: the protocol state (configured from a file, or empty and configured via UAPI).
        uapi_listener: the UAPI socket for ``wg`` (:func:`prepare_socket`'s result, which also
            gives the path to watch), a listening UNIX socket, or None.
        socket_path: the UAPI socket's path, if not given by *uapi_listener*; when the file
            goes, the interface stops.
        task_status: ``started()`` once the sockets are bound.

    Raises:
        VpnError: the UDP port cannot be bound.
        DeviceGone: the device was deleted.
    """
    file_id = None
    if isinstance(uapi_listener, UapiSocket):
        socket_path, file_id = uapi_listener.path, uapi_listener.file_id
        uapi_listener = uapi_listener.listener
    iface = _Interface(device, core)
    with contextlib.suppress(TunError):
        core.mtu = device.mtu()
    iface.bind(core.listen_port)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_device_to_network, iface)
            nursery.start_soon(_socket_tasks, iface)
            nursery.start_soon(_timers, iface)
            nursery.start_soon(_watch_link, iface)
            nursery.start_soon(_report_on_signal, iface)
            if uapi_listener is not None:
                nursery.start_soon(serve_uapi, uapi_listener, iface)
            if socket_path is not None:
                nursery.start_soon(_stop_when_removed, socket_path, file_id, nursery.cancel_scope)
            # Anything the configuration asked for at once (keepalives, initiations).
            iface.carry_out(core.take_actions())
            task_status.started()
    finally:
        for sock in iface.sockets.values():
            sock.close()


def drop_summary(core: WireGuardCore, device: TunDevice) -> str:
    """``dropped N (reason n, ...)``: what the core and the device dropped, by reason."""
    reasons = {reason.value: n for reason, n in core.drops.items() if n}
    for field in ("dropped_link_down", "dropped_invalid", "dropped_would_block"):
        count = getattr(device.stats, field)
        if count:
            reasons["device_" + field.removeprefix("dropped_")] = count
    detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
    return f"dropped {sum(reasons.values())}" + (f" ({detail})" if detail else "")


async def _report_on_signal(iface: _Interface) -> None:
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
            log.info("%s: %s", iface.device.name, drop_summary(iface.core, iface.device))


async def _stop_when_removed(
    path: str | os.PathLike[str], file_id: tuple[int, int] | None, scope: trio.CancelScope
) -> None:
    await watch_socket_path(path, file_id=file_id)
    log.info("the socket %s was removed: stopping", path)
    scope.cancel()


async def _socket_tasks(iface: _Interface) -> None:
    """One receiver per socket; restarted whenever the sockets are rebound."""
    while True:
        with trio.CancelScope() as scope:
            iface.socket_scope = scope
            async with trio.open_nursery() as nursery:
                for sock in iface.sockets.values():
                    nursery.start_soon(_network_to_device, iface, sock)
        iface.socket_scope = None


async def _timers(iface: _Interface) -> None:
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


async def _watch_link(iface: _Interface) -> None:
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
    gets that far: a virtio header and one byte claiming IPv4; on an up link the kernel's IP
    layer drops it as a header error.  It is only sent while the link is believed down.
    """
    try:
        os.write(device.fileno(), _PROBE_PACKET)
    except OSError as exc:
        return exc.errno != errno.EIO
    return True


# -- the data path ------------------------------------------------------------------------------


async def _device_to_network(iface: _Interface) -> None:
    """TUN -> UDP: whenever the TUN is readable, drain it (:class:`_Outbound`)."""
    device, outbound = iface.device, iface.outbound
    while True:
        await device.wait_readable()
        outbound.drain(trio.current_time())
        # No checkpoint here: wait_readable always goes through the scheduler, even when the
        # fd is ready, so the other tasks get their turn after every batch anyway (an extra
        # checkpoint only added one more pass of trio's loop per wake-up).


class _Outbound:
    """The way out of one interface: read packets from the TUN, encrypt, send.

    Its buffers are allocated once.  :meth:`drain` is synchronous, so the two tasks that call
    it (``device_to_network``, and ``network_to_device`` right after its writes) can never be
    inside it at the same time.
    """

    def __init__(self, iface: _Interface) -> None:
        self.iface = iface
        self.packet_buffer = memoryview(_lazy_buffer(VNET_HDR_LEN + MAX_DATAGRAM))
        self.read_into = [self.packet_buffer]  # readv's argument, built once
        self.packet_body = self.packet_buffer[VNET_HDR_LEN:]  # the packet behind its header
        self.out_view = memoryview(_lazy_buffer(GSO_MAX_BYTES + MAX_DATAGRAM))

    def drain(self, now: float) -> None:
        """Read the TUN until it is empty (or BATCH packets); send same-size runs per peer."""
        iface = self.iface
        device, core = iface.device, iface.core
        encrypt = core.encrypt_packet_into
        readv, fd, read_into = os.readv, device.fileno(), self.read_into
        packet_body, out_view = self.packet_body, self.out_view
        # The run being gathered: datagrams of size `segment` for `endpoint`, in out[:end].
        end = 0
        segment = 0
        count = 0
        endpoint: tuple[str, int] | None = None
        packets_read = 0
        # Past BATCH packets, stop only between runs, so that a busy TUN still gives full
        # UDP GSO sends (stopping at exactly 64 sent 44 + 20 datagrams at MTU 1420: 40% more
        # sendmsg calls than full runs, and smaller batches for the receiver to take).
        while packets_read < BATCH or count:
            packets_read += 1
            # os.readv on the fd, not device.read_nowait_into: two calls less per packet.
            try:
                n = readv(fd, read_into)
            except BlockingIOError:
                break
            except OSError:
                # The device's own read turns the error into the right exception
                # (DeviceGone...), or reads a packet after all.
                n = device.read_nowait_into(self.packet_buffer)
                if n == 0:
                    break
            if n <= VNET_HDR_LEN:
                continue
            result = encrypt(packet_body, n - VNET_HDR_LEN, out_view[end:], now)
            if result is None:
                continue  # staged (handshake first) or dropped: the core counted it
            size, target = result
            if count and (target != endpoint or size > segment):
                # Cannot join the run: send the run, and move this datagram to the front.
                _send_run(iface, out_view, end=end, segment=segment, count=count, endpoint=endpoint)
                out_view[:size] = bytes(out_view[end : end + size])
                end, count = 0, 0
            if count == 0:
                segment, endpoint = size, target
            end += size
            count += 1
            if size < segment or end + segment > GSO_MAX_BYTES or count == GSO_MAX_SEGMENTS:
                _send_run(iface, out_view, end=end, segment=segment, count=count, endpoint=endpoint)
                end, count = 0, 0
        if count:
            _send_run(iface, out_view, end=end, segment=segment, count=count, endpoint=endpoint)
        actions = core.take_actions()
        if actions:
            iface.carry_out(actions)
        else:
            iface.poke_timers()


def _lazy_buffer(size: int) -> mmap.mmap:
    """A zeroed buffer that costs memory only as far as it is written: an anonymous mapping.

    ``bytearray(size)`` writes every byte to zero it, so all of it is resident at once.  The
    buffers here are sized for the largest batch (about 1 MiB in all), which an idle
    interface, or one socket of the two, may never see.
    """
    return mmap.mmap(-1, size)


def _send_run(
    iface: _Interface,
    view: memoryview,
    *,
    end: int,
    segment: int,
    count: int,
    endpoint: tuple[str, int] | None,
) -> None:
    """Send ``view[:end]``: *count* datagrams of *segment* bytes (the last may be shorter)."""
    assert endpoint is not None
    sock = iface.socket_for(endpoint)
    if sock is None:
        return
    try:
        # sticky.send answers from the local address the peer wrote to (sticky.py).
        if count == 1:
            sticky.send(sock, view[:end], endpoint)
        elif iface.gso:
            gso = (SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(segment))
            sticky.send(sock, view[:end], endpoint, [gso])
        else:
            for offset in range(0, end, segment):
                sticky.send(sock, view[offset : min(offset + segment, end)], endpoint)
    except OSError as exc:
        if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT) and iface.gso and count > 1:
            log.info("UDP GSO refused (%s): sending datagrams one by one", exc.strerror)
            iface.gso = False
            _send_run(iface, view, end=end, segment=segment, count=count, endpoint=endpoint)
        else:
            _log_send_error(exc, endpoint)


async def _network_to_device(iface: _Interface, sock: socket.socket) -> None:
    """UDP -> TUN: receive (GRO batches of) datagrams, decrypt, coalesce, write.

    The packets decrypted during one wake-up wait in ``plain`` and are written when the socket
    is empty (or ``plain`` is full, or BATCH receives were made): a TCP run that spans several
    receives then still becomes one super-packet, so the kernel's TCP stack -- which runs
    inside our ``writev`` -- takes fewer, larger packets (32 segments a write on average
    instead of 20, in a one-stream iperf3 run).
    """
    device, core = iface.device, iface.core
    decrypt_batch = core.decrypt_batch_into_untrusted
    decrypt_one = core.decrypt_datagram_into_untrusted
    recvmsg = sock.recvmsg_into
    fd = device.fileno()
    view = memoryview(_lazy_buffer(MAX_DATAGRAM))
    plain_view = memoryview(_lazy_buffer(PLAIN_ROOM))
    while True:
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            return  # rebound: the socket task restarts
        now = trio.current_time()
        packets: list[memoryview] = []
        used = 0  # bytes of plain holding packets
        for _ in range(BATCH):
            if used + MAX_DATAGRAM > PLAIN_ROOM:
                break  # no room for another receive: write, and let the other tasks run
            try:
                n, ancdata, _flags, address = recvmsg([view], sticky.ANCILLARY_SPACE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                continue  # an ICMP error for an earlier send: nothing to do here
            if n == 0:
                continue  # an empty datagram: nothing in it for anyone
            segment = n
            for level, kind, data in ancdata:
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = int.from_bytes(data, sys.byteorder)
            source = sticky.endpoint_from(address, ancdata)
            offset = 0
            while offset < n:
                if view[offset] == _DATA_MESSAGE:
                    # The fast path takes the data messages, up to anything else.
                    consumed, written = decrypt_batch(
                        view[offset:n], segment, source, plain_view[used:], now, packets=packets
                    )
                    offset += consumed
                    used += written
                    if offset >= n:
                        break
                # A handshake message (or junk): one datagram through the general path.
                stop = min(offset + segment, n)
                if view[offset] in (1, 2):  # initiation or response: Diffie-Hellman work
                    size = iface.handle_handshake(view[offset:stop], source, plain_view[used:])
                else:
                    size = decrypt_one(view[offset:stop], source, plain_view[used:], now)
                if size:
                    packets.append(plain_view[used : used + size])
                    used += size
                offset = stop
            actions = core.take_actions()
            if actions:
                iface.carry_out(actions)
        if packets:
            _write_packets(iface, fd, packets)
            # The kernel answers what we write from inside the write itself (a ping's reply,
            # TCP's ACKs), so the answer is usually in the TUN already: sending it now, in
            # this turn, saves one pass through trio's scheduler -- the largest part of the
            # time a lone packet spends in this process (docs/performance.md, "Latency").
            iface.outbound.drain(now)
        else:
            iface.poke_timers()  # (no checkpoint: see _device_to_network)


def _write_packets(iface: _Interface, fd: int, packets: list[memoryview]) -> None:
    """Write decrypted packets to the TUN, TCP runs merged into super-packets."""
    device = iface.device
    for buffers in coalesce(packets):
        down_before = device.stats.dropped_link_down
        refused = not device.writev_nowait(buffers)
        if refused and device.stats.dropped_link_down != down_before and iface.link_up:
            iface.link_up = False
            log.info("link %s is down: dropping packets for it", device.name)
