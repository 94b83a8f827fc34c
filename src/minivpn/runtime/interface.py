"""The life of a WireGuard interface, from creation to teardown (``minivpn up``, ``minivpnd``).

An interface is three kernel objects and one process::

    the UAPI socket   /var/run/wireguard/NAME.sock, where ``wg`` configures it (and
                      NAME.trace beside it, where ``minivpn trace`` reads events)
    the TUN device    NAME, with its MTU, addresses and routes (the routes and addresses belong
                      to the device: the kernel removes them when the device goes)
    the UDP sockets   bound by the runtime (:func:`minivpn.runtime.vpn.run_interface`)
    the process       holds all of them; when it exits, they all go

The steps, in order, and why in that order:

1. **Prepare, synchronously, before trio starts** (:func:`open_interface`).  The UAPI socket
   first: if another process serves this interface, the user learns "already running" rather
   than a vaguer "name in use"; the trace socket beside it (``NAME.trace``,
   :mod:`minivpn.runtime.trace_server`).  Then the TUN device; then (``minivpn up`` only) MTU,
   addresses, link up and routes, as wg-quick sets them
   (:func:`~minivpn.runtime.wgquick.apply_link_settings`).  Any failure undoes what was made.
2. **Daemonise** (:func:`~minivpn.runtime.process.daemonize`), unless running in the
   foreground: ``fork()`` happens before ``trio.run()``, while the process has a single thread.
3. **Serve, under trio** (:func:`serve_until_stopped`): one nursery with the interface's tasks
   (:func:`~minivpn.runtime.vpn.run_interface`) and a signal watcher.  SIGINT/SIGTERM, removing
   the socket file, deleting the device or any task failing ends the nursery as a whole.
4. **Tear down**: close the TUN file (a temporary device vanishes with its last file, and its
   addresses and routes with it), then close the UAPI socket and unlink its file if it is still
   ours.  Nothing is left behind, however the interface stopped.

SIGINT and SIGTERM are held pending from step 1 until trio listens for them
(:func:`~minivpn.runtime.process.stop_signals_held`): a signal that arrives during set-up is
acted upon as soon as the interface can stop cleanly, instead of killing the process half-way.

Also here: taking an interface down from another process (:func:`take_down`, for ``minivpn
down``).  The process around the interface (signals, daemonising, capabilities) is in
:mod:`minivpn.runtime.process`; wg-quick's rules (configuration files, routes, MTU) are in
:mod:`minivpn.runtime.wgquick`, which ``minivpnd`` never loads.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from minivpn.errors import MinivpnError
from minivpn.runtime.privileges import (
    PrivilegeDrop,
    capabilities_to_keep,
    drop_privileges,
    start_janitor,
)
from minivpn.runtime.process import STOP_SIGNALS, NotPrivileged, trim_heap
from minivpn.runtime.trace_server import TraceSocket, prepare_trace_socket
from minivpn.runtime.uapi_server import UapiSocket, prepare_socket, socket_path
from minivpn.tuntap.aio import TunDevice
from minivpn.tuntap.device import get_features, open_device
from minivpn.tuntap.errors import DeviceBusy, DeviceGone, NotATunDevice, TunError
from minivpn.tuntap.ioctl import IFF_VNET_HDR, DeviceConfig, Mode
from minivpn.tuntap.listing import read_tun_flags

if TYPE_CHECKING:
    from collections.abc import Callable

    from minivpn.runtime.process import Readiness
    from minivpn.wireguard.core import WireGuardCore

__all__ = [
    "DOWN_TIMEOUT",
    "Interface",
    "InterfaceError",
    "open_interface",
    "serve_until_stopped",
    "take_down",
    "user_error_messages",
]

log = logging.getLogger("minivpn.interface")

#: Seconds ``take_down`` waits for the interface's process to let go of the device.
DOWN_TIMEOUT = 5.0


#: ``struct ucred`` (pid, uid, gid), what ``SO_PEERCRED`` returns.
_UCRED = struct.Struct("3i")


class InterfaceError(MinivpnError):
    """An interface cannot be brought up or down as asked."""


# --- creating -------------------------------------------------------------------------------------


@attrs.define
class Interface:
    """An interface's UAPI socket and TUN device, made before trio starts.

    The TUN device is kept as a bare file descriptor until trio runs: a
    :class:`~minivpn.tuntap.aio.TunDevice` closes through trio (so that tasks waiting on it
    wake up), which is impossible outside ``trio.run``.  :meth:`take_device` hands the file
    over; :meth:`close` closes whatever was not handed over, and the socket.

    Attributes:
        name: the interface name.
        uapi: the listening UAPI socket and its file.
        device_config: what the device was attached as (TUN, no PI, virtio-net header).
        device_flags: the flags the kernel reported when attaching.
        trace: the trace socket beside the UAPI socket (``minivpn trace``), or None.
    """

    name: str
    uapi: UapiSocket
    device_config: DeviceConfig
    device_flags: int
    _fd: int
    trace: TraceSocket | None = None

    def take_device(self) -> TunDevice:
        """The TUN device as a trio object; it now owns (and will close) the file.

        Raises:
            InterfaceError: taken already, or closed.
        """
        if self._fd < 0:
            raise InterfaceError(f"the device of {self.name} was already taken or closed")
        fd, self._fd = self._fd, -1
        return TunDevice(fd, self.device_config, self.device_flags)

    def close(self) -> None:
        """Close the device file if still held here (deleting the device), then the socket.

        Idempotent.  The socket file is unlinked only if it is still the one bound here.
        """
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        if self.trace is not None:
            self.trace.close()
        self.uapi.close()

    def __enter__(self) -> Interface:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_interface(
    name: str,
    *,
    exclusive: bool,
    socket_dir: str | os.PathLike[str] | None = None,
    mode: Mode = Mode.TUN,
) -> Interface:
    """Create the UAPI socket and the TUN device of interface *name*.

    Args:
        name: the interface name.
        exclusive: fail if a device called *name* exists (``minivpn up``); otherwise attach to
            an existing persistent TUN device, as wireguard-go does (``minivpnd``).
        socket_dir: the socket directory; :func:`~minivpn.runtime.uapi_server.default_socket_dir`
            when None.
        mode: ``Mode.TAP`` for an interface in ``Mode = tap`` (layer 2): a TAP device (with a
            virtio-net header unless offloads are off, for merged writes: frame_engine.py).

    Returns:
        Both, ready; nothing is left behind on failure.

    Raises:
        UapiServerError: the interface already runs (its socket answers), or the socket cannot
            be made.
        TunError: the device cannot be created or attached (its subclasses say why).
    """
    # The offload engine reads and writes behind a virtio-net header; the plain loop without
    # (and it is what runs where the kernel has no such header).
    from minivpn.runtime.vpn import OffloadMode, offload_mode

    vnet_hdr = offload_mode() is not OffloadMode.OFF and bool(get_features() & IFF_VNET_HDR)
    uapi = prepare_socket(name, socket_dir)
    try:
        trace = prepare_trace_socket(uapi.path)
    except BaseException:
        uapi.close()
        raise
    try:
        fd, actual_name, flags = open_device(name, mode, vnet_hdr=vnet_hdr, exclusive=exclusive)
    except DeviceBusy as exc:
        trace.close()
        uapi.close()
        if exclusive:
            raise
        raise DeviceBusy(
            f"cannot create {name}: a TUN device of that name exists and another process is "
            "attached to it"
        ) from exc
    except NotATunDevice as exc:
        trace.close()
        uapi.close()
        raise NotATunDevice(
            f"cannot create {name}: a network device of that name exists and is not a TUN device"
        ) from exc
    except BaseException:
        trace.close()
        uapi.close()
        raise
    config = DeviceConfig(
        name=actual_name, mode=mode, pi=False, multi_queue=False, vnet_hdr=vnet_hdr
    )
    return Interface(name, uapi, config, flags, fd, trace)


# --- running --------------------------------------------------------------------------------------


def serve_until_stopped(
    interface: Interface,
    build_core: Callable[[float], WireGuardCore],
    readiness: Readiness,
    drop: PrivilegeDrop | None = None,
) -> None:
    """Run the interface under trio until it stops, then tear it down.

    Call it inside :func:`~minivpn.runtime.process.stop_signals_held`.  It returns normally
    when the interface stopped the way interfaces stop: SIGINT/SIGTERM, the socket file
    removed, or the device deleted (wireguard-go exits with status 0 in all three cases).

    Args:
        interface: from :func:`open_interface`; closed on return, whatever happens.
        build_core: makes the protocol state, given trio's clock (``trio.current_time()``):
            the core's timers run on that clock, so it is built inside ``trio.run``.
        readiness: told once the UDP sockets are bound and traffic can flow.
        drop: if given, privileges are dropped as it says once the UDP sockets are bound,
            before *readiness* is told (:mod:`minivpn.runtime.privileges`).

    Raises:
        MinivpnError: the interface could not start (e.g. its UDP port is in use), possibly
            inside an exception group from the nursery.
    """
    # Listening again makes this process the socket's owner in the kernel's eyes: a client's
    # SO_PEERCRED (and ``ss -xp``) then names the process that serves, not the parent that
    # created the socket and exited after daemonising.
    interface.uapi.listener.listen(socket.SOMAXCONN)
    if drop is not None and drop.switches_user:
        # The new user cannot remove the socket files: a janitor will (runtime/privileges.py).
        files = [(interface.uapi.path, interface.uapi.file_id)]
        if interface.trace is not None:
            files.append((interface.trace.path, interface.trace.file_id))
        start_janitor(files)
    try:
        trio.run(_serve, interface, build_core, readiness, drop)
    except* DeviceGone:
        log.info("device %s was deleted: stopping", interface.name)
    finally:
        interface.close()


async def _serve(
    interface: Interface,
    build_core: Callable[[float], WireGuardCore],
    readiness: Readiness,
    drop: PrivilegeDrop | None,
) -> None:
    # Imported here: minivpn.runtime.vpn pulls in the whole data path, which the
    # configuration checks of `minivpn up` and `minivpn down` do not need.
    from minivpn.runtime.vpn import run_interface

    name = interface.name
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            async with interface.take_device() as device, trio.open_nursery() as nursery:
                core = build_core(trio.current_time())

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("%s: stopping %s", signal.Signals(signum).name, name)
                        nursery.cancel_scope.cancel()
                        return

                async def run(*, task_status: trio.TaskStatus[None]) -> None:
                    trace = interface.trace.listener if interface.trace is not None else None
                    await run_interface(
                        device, core, interface.uapi, trace_listener=trace, task_status=task_status
                    )
                    nursery.cancel_scope.cancel()  # the socket file was removed

                nursery.start_soon(stop_on_signal)
                await nursery.start(run)
                if drop is not None:
                    drop_privileges(drop, capabilities_to_keep(core.listen_port))
                readiness.ready(
                    f"{name} is up: UDP port {core.listen_port}, socket {interface.uapi.path}, "
                    f"PID {os.getpid()}"
                )
                trim_heap()
        finally:
            # Back to "pending" before trio's handler goes: see process.stop_signals_held.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def user_error_messages(exc: BaseException) -> list[str] | None:
    """The messages of the MinivpnErrors that make up *exc*; None if anything else is in it.

    trio's nurseries wrap errors in exception groups; a user error is still one line.
    """
    if isinstance(exc, MinivpnError):
        return [str(exc)]
    if isinstance(exc, BaseExceptionGroup):
        messages: list[str] = []
        for inner in exc.exceptions:
            found = user_error_messages(inner)
            if found is None:
                return None
            messages += found
        return list(dict.fromkeys(messages)) or None
    return None


# --- taking down ----------------------------------------------------------------------------------


def take_down(
    name: str,
    *,
    socket_dir: str | os.PathLike[str] | None = None,
    timeout: float = DOWN_TIMEOUT,
) -> str:
    """Take interface *name* down: remove its socket, wait for its process, delete the device.

    Removing the socket file is the documented way to stop a userspace WireGuard process: it
    notices, stops, and closing its TUN file removes the device with its addresses and routes.
    This waits (at most *timeout* seconds) for the device to vanish and the process to exit,
    then deletes the device through netlink if it is still there (a process that hangs, or a
    device left without one), which also stops a process that is still attached.

    Only a TUN device is ever deleted: ``minivpn down eth0`` must not take a host's network
    away.

    Returns:
        What was done, for the user.

    Raises:
        NoSuchInterface: no socket file and no device of that name.
        InterfaceError: the device is not a TUN device, or cannot be deleted.
    """
    # The client's error, imported here: minivpnd, which loads this module, never needs it.
    from minivpn.runtime.uapi_client import NoSuchInterface

    path = socket_path(name, socket_dir)
    if path.exists() and not path.is_socket():
        raise InterfaceError(f"{path} is not a socket; not touching it")
    had_socket = path.is_socket()
    # Look at everything before changing anything: once the socket file is gone, the process
    # may delete the device at any moment.
    server = _serving_process(path) if had_socket else None
    link_here = _link_exists(name)
    tun_here = link_here and _is_tun(name)
    if not had_socket and not link_here:
        raise NoSuchInterface(f"no interface {name}: neither {path} nor a device {name} exists")
    if link_here and not tun_here and not had_socket:
        raise InterfaceError(
            f"{name} is not a TUN device, so it is not a minivpn interface; not deleting it"
        )
    if had_socket:
        path.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    if server is not None and _wait_for(
        lambda: not _process_alive(server) and not (tun_here and _link_exists(name)), deadline
    ):
        return f"{name} is down"
    if tun_here and _link_exists(name):
        _delete_link(name)
        if server is not None:
            return f"{name} is down (its process did not let go of the device within {timeout:g} s)"
        return f"{name} is down (deleted the device; no process served it)"
    if server is not None:
        return f"{name} is stopping (PID {server} has not exited yet)"
    return f"removed the stale socket {path}; {name} was not running"


def _serving_process(path: Path) -> int | None:
    """The PID of the process that accepts connections on UNIX socket *path*, or None.

    The kernel tells a client who listens on the other end (``SO_PEERCRED``); the interface's
    process makes sure that is itself, not the parent that created the socket before
    daemonising (see :func:`serve_until_stopped`).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(os.fsencode(path))
            credentials = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError:
            return None
    pid, _, _ = _UCRED.unpack(credentials)
    return int(pid) if pid > 0 else None


def _process_alive(pid: int) -> bool:
    """Whether *pid* still runs; one that exited but was not yet reaped (a zombie) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_for(condition: Callable[[], bool], deadline: float) -> bool:
    """Poll *condition* until it holds (True) or the monotonic *deadline* passes (False)."""
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _is_tun(name: str) -> bool:
    try:
        read_tun_flags(name)
    except TunError:
        return False
    return True


def _delete_link(name: str) -> None:
    """Delete link *name* through netlink, like ``ip link del NAME``.

    Raises:
        InterfaceError: the kernel refused.
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("del", index=found[0])
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return  # gone meanwhile
        if exc.code in (errno.EPERM, errno.EACCES):
            raise NotPrivileged(f"cannot delete {name}: it needs root (CAP_NET_ADMIN)") from None
        raise InterfaceError(f"cannot delete {name}: {os.strerror(exc.code)}") from None
