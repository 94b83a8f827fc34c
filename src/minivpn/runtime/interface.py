"""The life of a WireGuard interface, from creation to teardown: what ``minivpn up`` and
``minivpnd`` share.

An interface is three kernel objects and one process::

    the UAPI socket   /var/run/wireguard/NAME.sock, where ``wg`` configures it
    the TUN device    NAME, with its MTU, addresses and routes (the routes and addresses belong
                      to the device: the kernel removes them when the device goes)
    the UDP sockets   bound by the runtime (:func:`minivpn.runtime.vpn.run_interface`)
    the process       holds all of them; when it exits, they all go

The steps, in order, and why in that order:

1. **Prepare, synchronously, before trio starts** (:func:`open_interface`, :func:`configure_link`).
   The UAPI socket first: if another process serves this interface, the user learns "already
   running" rather than a vaguer "name in use".  Then the TUN device, then (``minivpn up`` only)
   MTU, addresses, link up and routes through netlink, in a short-lived child process so that
   pyroute2 never loads into the long-lived one.  Any failure undoes what was made.
2. **Daemonise** (:func:`daemonize`), unless running in the foreground.  ``fork()`` happens
   before ``trio.run()``, while the process has a single thread: forking a process with threads
   (trio starts some) copies only the calling thread, with whatever locks the others held.  The
   child starts a new session (``setsid``), so the terminal's Ctrl-C and hang-up no longer reach
   it, and points its standard streams at ``/dev/null``.
3. **Serve, under trio** (:func:`serve_until_stopped`): one nursery with the interface's tasks
   (:func:`~minivpn.runtime.vpn.run_interface`) and a signal watcher.  SIGINT/SIGTERM, removing
   the socket file, deleting the device or any task failing ends the nursery as a whole.
4. **Tear down**: close the TUN file (a temporary device vanishes with its last file, and its
   addresses and routes with it), then close the UAPI socket and unlink its file if it is still
   ours.  Nothing is left behind, however the interface stopped.

SIGINT and SIGTERM are blocked from step 1 until trio listens for them (:func:`stop_signals_held`):
a signal that arrives during set-up is acted upon as soon as the interface can stop cleanly,
instead of killing the process half-way.

Also here: the rules of ``wg-quick`` that ``minivpn up`` follows (:func:`locate_config`,
:func:`plan_routes`, :func:`ignored_keys`), endpoint resolution, and taking an interface down
(:func:`take_down`).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import attrs
import trio

from minivpn.errors import MinivpnError
from minivpn.runtime.uapi_server import UapiSocket, prepare_socket, socket_path
from minivpn.tuntap.aio import TunDevice
from minivpn.tuntap.device import get_features, open_device
from minivpn.tuntap.errors import DeviceBusy, DeviceGone, NotATunDevice, TunError
from minivpn.tuntap.ioctl import IFF_VNET_HDR, DeviceConfig, Mode
from minivpn.tuntap.listing import read_tun_flags
from minivpn.wireguard.constants import DEFAULT_MTU

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from minivpn.wireguard.config import Config
    from minivpn.wireguard.core import WireGuardCore
    from minivpn.wireguard.keys import PublicKey

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_MTU",
    "DOWN_TIMEOUT",
    "STOP_SIGNALS",
    "Interface",
    "InterfaceError",
    "NoSuchInterface",
    "NotPrivileged",
    "Readiness",
    "RoutePlan",
    "check_interface_name",
    "configure_link",
    "daemonize",
    "has_cap_net_admin",
    "ignored_keys",
    "interface_name_of",
    "locate_config",
    "open_interface",
    "plan_routes",
    "require_cap_net_admin",
    "resolve_endpoints",
    "resolve_table",
    "serve_until_stopped",
    "stop_signals_held",
    "take_down",
    "user_error_messages",
]

log = logging.getLogger("minivpn.interface")

#: Where a bare interface name's configuration lives, as for wg-quick.
CONFIG_DIR = Path("/etc/wireguard")

#: The interface names wg-quick accepts (``src/wg-quick/linux.bash``): shorter than IFNAMSIZ and
#: made of characters that are safe in file names and shell words.
INTERFACE_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")

#: Seconds ``take_down`` waits for the interface's process to let go of the device.
DOWN_TIMEOUT = 5.0

#: The signals that stop an interface cleanly.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

#: ``struct ucred`` (pid, uid, gid), what ``SO_PEERCRED`` returns.
_UCRED = struct.Struct("3i")

#: ``CAP_NET_ADMIN`` (linux/capability.h): the bit in ``CapEff`` of ``/proc/self/status``.
_CAP_NET_ADMIN = 12

#: Routing table names every iproute2 knows, and the files that may name more.
_BUILTIN_TABLES = {"unspec": 0, "default": 253, "main": 254, "local": 255}
_RT_TABLES_FILES = (Path("/etc/iproute2/rt_tables"), Path("/usr/share/iproute2/rt_tables"))
_RT_TABLES_DIRS = (Path("/etc/iproute2/rt_tables.d"), Path("/usr/share/iproute2/rt_tables.d"))


class InterfaceError(MinivpnError):
    """An interface cannot be brought up or down as asked."""


class NotPrivileged(InterfaceError):
    """The process lacks CAP_NET_ADMIN, which creating and configuring an interface needs."""


class NoSuchInterface(InterfaceError):
    """Neither a socket nor a device exists for the interface being taken down."""


# --- names and files ------------------------------------------------------------------------------


def check_interface_name(name: str) -> str:
    """Return *name* if wg-quick would accept it as an interface name.

    Raises:
        InterfaceError: it is longer than 15 characters, has characters other than
            letters, digits and ``_=+.-``, or is ``.`` or ``..`` (which the kernel refuses).
    """
    if INTERFACE_NAME.fullmatch(name) is None or name in (".", ".."):
        raise InterfaceError(
            f"invalid interface name {name!r}: use 1 to 15 letters, digits or _=+.- "
            "(the configuration file is named after the interface: wg0.conf)"
        )
    return name


def locate_config(argument: str, config_dir: Path = CONFIG_DIR) -> tuple[Path, str]:
    """Find the configuration file and interface name that ``minivpn up ARGUMENT`` means.

    A bare name (no ``/``, not ending in ``.conf``) means ``CONFIG_DIR/NAME.conf``; anything
    else is a path.  Either way the interface is named after the file: ``wg0.conf`` makes
    ``wg0``.  (wg-quick treats ``wg0.conf`` without a ``/`` as a name too and then looks for
    ``/etc/wireguard/wg0.conf.conf``; minivpn takes it as the path it obviously is.)

    Returns:
        ``(path, interface name)``.

    Raises:
        InterfaceError: the file's stem is not a valid interface name, or it does not end in
            ``.conf``.
    """
    if "/" not in argument and not argument.endswith(".conf"):
        return config_dir / f"{check_interface_name(argument)}.conf", argument
    path = Path(argument)
    if path.suffix != ".conf":
        raise InterfaceError(
            f"{argument}: the configuration file must be named after the interface, "
            "followed by .conf (like wg0.conf)"
        )
    return path, check_interface_name(path.stem)


def interface_name_of(argument: str) -> str:
    """The interface that ``minivpn down ARGUMENT`` means: a name, or a config file's stem.

    Raises:
        InterfaceError: not a valid interface name.
    """
    if "/" in argument or argument.endswith(".conf"):
        return check_interface_name(Path(argument).stem)
    return check_interface_name(argument)


# --- what the configuration asks of the host ------------------------------------------------------

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class RoutePlan:
    """The routes ``minivpn up`` adds for a configuration, following wg-quick.

    Attributes:
        table: the routing table (None: the main table).
        routes: destinations to route into the interface, IPv4 first, then the most
            specific first within a family (as wg-quick adds them); empty with ``Table = off``.
    """

    table: int | None
    routes: tuple[IPNetwork, ...]


def resolve_table(text: str) -> int:
    """The number of routing table *text*: a number, or a name from iproute2's ``rt_tables``.

    Raises:
        InterfaceError: an unknown name.
    """
    if text.isdecimal():
        return int(text)
    if text in _BUILTIN_TABLES:
        return _BUILTIN_TABLES[text]
    files = list(_RT_TABLES_FILES)
    for directory in _RT_TABLES_DIRS:
        with contextlib.suppress(OSError):
            files += sorted(directory.glob("*.conf"))
    for path in files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) == 2 and fields[1] == text and fields[0].isdecimal():
                return int(fields[0])
    raise InterfaceError(
        f"unknown routing table {text!r}: use a number, or a name from /etc/iproute2/rt_tables"
    )


def plan_routes(config: Config, filename: str, name: str) -> RoutePlan:
    """Decide which routes to add for the peers' AllowedIPs, as wg-quick does.

    * ``Table = off``: none.
    * ``Table = N`` (a number or name): every AllowedIPs prefix, in table N.
    * ``Table = auto`` or no ``Table``: every prefix in the main table, except those already
      covered by a prefix of the interface's own addresses (the kernel routes those).

    A default route (``0.0.0.0/0`` or ``::/0``) in the main table would also catch the
    tunnel's own UDP packets to the peer.  wg-quick avoids that loop with policy routing: a
    firewall mark on the tunnel's socket, a separate table and two ``ip rule``\\ s, left behind
    if the process is killed.  ``minivpn up`` does not do that; it refuses such a
    configuration and says what to do instead.

    Raises:
        InterfaceError: a ``/0`` prefix with automatic routing, or an unknown table name.
    """
    table_text = config.interface.table
    if table_text == "off":
        return RoutePlan(None, ())
    prefixes = sorted(
        {network for peer in config.peers for network in peer.allowed_ips},
        key=lambda network: (network.version, -network.prefixlen, network.network_address),
    )
    if table_text not in (None, "auto"):
        return RoutePlan(resolve_table(table_text), tuple(prefixes))
    for network in prefixes:
        if network.prefixlen == 0:
            raise InterfaceError(
                f"{filename}: AllowedIPs {network} would route all traffic into {name}, "
                "including the tunnel's own packets; wg-quick prevents that loop with fwmark "
                "policy routing, which minivpn up does not set up. Add 'Table = off' to "
                "[Interface] and route yourself, use 'Table = NUMBER', or list narrower "
                "prefixes (0.0.0.0/1 and 128.0.0.0/1 plus a host route to the endpoint)"
            )
    own = [address.network for address in config.interface.addresses]
    return RoutePlan(None, tuple(network for network in prefixes if not _covered_by(network, own)))


def _covered_by(network: IPNetwork, prefixes: list[IPNetwork]) -> bool:
    """Whether *network* lies inside one of *prefixes* (of the same IP version)."""
    for prefix in prefixes:
        if isinstance(network, ipaddress.IPv4Network) and isinstance(prefix, ipaddress.IPv4Network):
            if network.subnet_of(prefix):
                return True
        elif (
            isinstance(network, ipaddress.IPv6Network)
            and isinstance(prefix, ipaddress.IPv6Network)
            and network.subnet_of(prefix)
        ):
            return True
    return False


def ignored_keys(config: Config) -> list[str]:
    """The wg-quick keys in *config* that ``minivpn up`` reads but does not act upon.

    ``DNS`` would rewrite the host's resolver configuration and the hooks are shell commands;
    minivpn's product code runs no commands, so both are left to the user.  ``SaveConfig``
    would write the running configuration back into the file.
    """
    interface = config.interface
    present = {
        "DNS": bool(interface.dns or interface.dns_search),
        "PreUp": bool(interface.pre_up),
        "PostUp": bool(interface.post_up),
        "PreDown": bool(interface.pre_down),
        "PostDown": bool(interface.post_down),
        "SaveConfig": interface.save_config,
    }
    return [key for key, there in present.items() if there]


def resolve_endpoints(config: Config, filename: str) -> dict[PublicKey, tuple[str, int]]:
    """Look up the peers' endpoints that are host names, as ``wg`` does: the first address.

    Endpoints given as IP addresses are left to the core.

    Returns:
        ``{peer public key: (IP address, port)}`` for the peers with a host name.

    Raises:
        InterfaceError: a name does not resolve.
    """
    resolved: dict[PublicKey, tuple[str, int]] = {}
    for peer in config.peers:
        endpoint = peer.endpoint
        if endpoint is None or endpoint.ip is not None:
            continue
        try:
            results = socket.getaddrinfo(
                endpoint.host, endpoint.port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
            )
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) else "invalid name"
            raise InterfaceError(
                f"{filename}: cannot resolve {endpoint.host!r}, the endpoint of peer "
                f"{peer.public_key.to_base64()}: {reason}"
            ) from None
        for family, _, _, _, address in results:
            if family in (socket.AF_INET, socket.AF_INET6):
                resolved[peer.public_key] = (str(address[0]), endpoint.port)
                break
        else:
            raise InterfaceError(
                f"{filename}: {endpoint.host!r}, the endpoint of peer "
                f"{peer.public_key.to_base64()}, has no IPv4 or IPv6 address"
            )
    return resolved


# --- privileges -----------------------------------------------------------------------------------


def has_cap_net_admin() -> bool:
    """Whether this process may configure the network (CAP_NET_ADMIN in its namespace)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def require_cap_net_admin(action: str) -> None:
    """Refuse early, with a clear message, when *action* cannot work without CAP_NET_ADMIN.

    Raises:
        NotPrivileged: the process lacks it.
    """
    if not has_cap_net_admin():
        raise NotPrivileged(
            f"cannot {action}: it needs root (CAP_NET_ADMIN) to create the device and set its "
            "addresses and routes; run it with sudo"
        )


# --- creating and configuring ---------------------------------------------------------------------


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
    """

    name: str
    uapi: UapiSocket
    device_config: DeviceConfig
    device_flags: int
    _fd: int

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
        self.uapi.close()

    def __enter__(self) -> Interface:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_interface(
    name: str, *, exclusive: bool, socket_dir: str | os.PathLike[str] | None = None
) -> Interface:
    """Create the UAPI socket and the TUN device of interface *name*.

    Args:
        name: the interface name.
        exclusive: fail if a device called *name* exists (``minivpn up``); otherwise attach to
            an existing persistent TUN device, as wireguard-go does (``minivpnd``).
        socket_dir: the socket directory; :func:`~minivpn.runtime.uapi_server.default_socket_dir`
            when None.

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
        fd, actual_name, flags = open_device(name, Mode.TUN, vnet_hdr=vnet_hdr, exclusive=exclusive)
    except DeviceBusy as exc:
        uapi.close()
        if exclusive:
            raise
        raise DeviceBusy(
            f"cannot create {name}: a TUN device of that name exists and another process is "
            "attached to it"
        ) from exc
    except NotATunDevice as exc:
        uapi.close()
        raise NotATunDevice(
            f"cannot create {name}: a network device of that name exists and is not a TUN device"
        ) from exc
    except BaseException:
        uapi.close()
        raise
    config = DeviceConfig(
        name=actual_name, mode=Mode.TUN, pi=False, multi_queue=False, vnet_hdr=vnet_hdr
    )
    return Interface(name, uapi, config, flags, fd)


def configure_link(
    name: str,
    *,
    mtu: int | None,
    endpoints: Sequence[str] = (),
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = (),
    routes: RoutePlan | None = None,
) -> None:
    """Set the MTU, add the addresses, bring the link up and add the routes (in that order).

    Routes come last because the kernel refuses a route through a link that is down.  This
    looks the link up by name, so it must run before the device can be moved to another
    namespace: right after :func:`open_interface`.

    The netlink work runs in a short-lived child process (:func:`run_in_child`): pyroute2
    takes ~12 MiB once imported, which the interface's long-lived process would keep for good.

    Args:
        name: the link.
        mtu: the MTU; None picks it as wg-quick does (:func:`wg_quick_mtu`), from the routes
            to *endpoints*, the peers' endpoint addresses.
        endpoints: see *mtu*.
        addresses: the interface's addresses.
        routes: the routes for the peers' allowed IPs, if any.

    Raises:
        MinivpnError: the kernel refused something (the message says what).
    """

    def configure() -> None:
        from minivpn import netconf  # only ever imported in the child

        netconf.set_mtu(name, mtu if mtu is not None else wg_quick_mtu(endpoints))
        for address in addresses:
            netconf.add_address(name, str(address))
        netconf.set_link_up(name)
        if routes is not None:
            for network in routes.routes:
                netconf.add_route(name, str(network), routes.table)
                log.debug("route %s via %s%s", network, name, _in_table(routes.table))

    run_in_child(configure)


#: What WireGuard adds to a packet over IPv6, the larger case: IPv6 40 + UDP 8 + WireGuard's
#: header 16 and tag 16.  1500 - 80 = 1420, the usual MTU.
WG_QUICK_OVERHEAD = 80


def wg_quick_mtu(endpoints: Sequence[str]) -> int:
    """The MTU wg-quick gives an interface whose configuration sets none.

    The largest MTU on the way to any of the peers' *endpoints* (the route's own, or the MTU
    of the link it leaves by, as ``ip route get`` shows); without endpoints or routes to
    them, that of the default route; without one, 1500 -- minus :data:`WG_QUICK_OVERHEAD`.
    So a path of 1500 bytes gives 1420 and a 1280-byte underlay gives 1200, instead of
    datagrams too big for the path (the most common WireGuard complaint).
    """
    from minivpn import netconf

    largest = max((netconf.path_mtu(address) or 0 for address in endpoints), default=0)
    if largest == 0:
        largest = netconf.default_route_mtu() or 1500
    return largest - WG_QUICK_OVERHEAD


def run_in_child(work: Callable[[], None]) -> None:
    """Run *work* in a forked child process and wait for it; its user error is raised here.

    For one-off work that needs a big module: what the child imports dies with it.  Call it
    before trio starts (a fork must not copy other threads).  A :class:`MinivpnError` in the
    child comes back as one with the same message and exit status; anything else comes back
    as a :class:`MinivpnError` naming it, since its traceback stayed in the child (which
    logged it).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        status = 0
        try:
            os.close(read_end)
            try:
                work()
            except MinivpnError as exc:
                os.write(write_end, f"{exc.exit_code} {exc}".encode())
                status = 1
            except BaseException as exc:  # report it, whatever it is
                log.exception("internal error")
                os.write(write_end, f"1 internal error: {exc!r}".encode())
                status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if report:
        exit_code, _, message = report.partition(" ")
        error = MinivpnError(message)
        error.exit_code = int(exit_code)
        raise error
    if status != 0:
        raise MinivpnError(f"internal error: the child process ended with status {status:#x}")


def _in_table(table: int | None) -> str:
    return "" if table is None else f" in table {table}"


# --- signals --------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM pending inside the block, unless trio is listening for them.

    :func:`serve_until_stopped` unblocks them once its signal receiver is in place, and blocks
    them again before it removes it, so a stop signal either stops the interface cleanly or
    waits.  Signals still pending when the block ends arrived during teardown, when the
    interface was stopping anyway: they are dropped.

    A process started with SIGINT ignored (a background job of a script, ``nohup``) gets
    Python's SIGINT handler for the block.  Setting a signal to "ignored" discards it when it is
    pending, and trio does exactly that, harmlessly it thinks, whenever it checks for the main
    thread (``signal.signal(SIGINT, signal.getsignal(SIGINT))``): a SIGINT held here would be
    lost, while one a moment later, once trio listens, stops the interface.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if sigint_ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass
        if sigint_ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- daemonising ----------------------------------------------------------------------------------


class Readiness:
    """How a daemonised child tells the waiting parent that start-up succeeded or failed.

    The parent of ``minivpn up`` waits on a pipe, so that a failure of the child's start-up
    (an occupied UDP port is only found when the runtime binds) is reported by the command the
    user typed.  Without a pipe (foreground, or ``minivpnd``, whose parent does not wait)
    reporting only logs.  Only the first report counts.

    Args:
        fd: the pipe's write end, or -1 for none.
    """

    def __init__(self, fd: int = -1) -> None:
        self._fd = fd
        self.reported = False

    def ready(self, message: str) -> None:
        """Start-up succeeded; *message* is what the parent prints (e.g. "wg0 is up ...").

        Without a parent waiting, it is logged here instead.
        """
        waiting = self._fd >= 0
        if self._report(b"ready\n" + message.encode()) and not waiting:
            log.info("%s", message)

    def failed(self, message: str) -> None:
        """Start-up failed; the parent prints *message* and exits with status 1."""
        self._report(b"failed\n" + message.encode())

    def _report(self, data: bytes) -> bool:
        if self.reported:
            return False
        self.reported = True
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.write(fd, data)
            except OSError:
                pass  # the parent is gone (killed while waiting): nobody to tell
            finally:
                os.close(fd)
        return True


def daemonize(*, program: str, keep_output: bool, wait_for_readiness: bool) -> Readiness:
    """Fork into the background.  Returns in the child only; the parent exits.

    The parent exits with status 0 at once, or, with *wait_for_readiness*, once the child
    reports (0 after :meth:`Readiness.ready`, 1 after :meth:`Readiness.failed` or if the child
    dies first).  It exits with ``os._exit``: the ``finally`` blocks and context managers on
    its stack would otherwise close the device and unlink the socket that the child now uses.

    The child starts a new session, and its standard input and output go to ``/dev/null``;
    standard error too unless *keep_output* (wireguard-go keeps them when ``LOG_LEVEL`` is set
    and not ``silent``).  It keeps the working directory, as wireguard-go does.

    Args:
        program: the command name the parent uses in its messages.
        keep_output: keep stdout and stderr (for logs).
        wait_for_readiness: the parent waits for the child's report.

    Returns:
        The child's end of the readiness pipe.
    """
    read_fd, write_fd = os.pipe() if wait_for_readiness else (-1, -1)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        _parent_exit(program, pid, read_fd, write_fd)
    if read_fd >= 0:
        os.close(read_fd)
    os.setsid()
    _redirect_stdio(keep_output)
    return Readiness(write_fd)


def _parent_exit(program: str, pid: int, read_fd: int, write_fd: int) -> NoReturn:
    """The parent's side of :func:`daemonize`: wait for the report if asked, then exit."""
    status = 1
    try:
        if read_fd < 0:
            status = 0
        else:
            os.close(write_fd)
            # Ctrl-C may interrupt the wait; the child, in its own session, goes on.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            status = _read_report(program, pid, read_fd)
    except KeyboardInterrupt:
        status = 130
    except BaseException as exc:  # a bug: say something rather than exit silently
        print(f"{program}: internal error while waiting for the daemon: {exc!r}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _read_report(program: str, pid: int, read_fd: int) -> int:
    """Read the child's report to the end; print it; return the exit status."""
    chunks = []
    while chunk := os.read(read_fd, 4096):
        chunks.append(chunk)
    kind, _, message = b"".join(chunks).decode(errors="replace").partition("\n")
    if kind == "ready":
        log.info("%s", message)
        return 0
    if kind == "failed":
        print(f"{program}: {message}", file=sys.stderr)
        return 1
    print(f"{program}: the daemon (PID {pid}) exited during start-up", file=sys.stderr)
    return 1


def _redirect_stdio(keep_output: bool) -> None:
    """Point stdin (and stdout/stderr unless *keep_output*) at /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    targets = (0,) if keep_output else (0, 1, 2)
    for target in targets:
        os.dup2(null, target)
    if null not in targets:
        os.close(null)


# --- running --------------------------------------------------------------------------------------


def serve_until_stopped(
    interface: Interface,
    build_core: Callable[[float], WireGuardCore],
    readiness: Readiness,
) -> None:
    """Run the interface under trio until it stops, then tear it down.

    Call it inside :func:`stop_signals_held`.  It returns normally when the interface stopped
    the way interfaces stop: SIGINT/SIGTERM, the socket file removed, or the device deleted
    (wireguard-go exits with status 0 in all three cases).

    Args:
        interface: from :func:`open_interface`; closed on return, whatever happens.
        build_core: makes the protocol state, given trio's clock (``trio.current_time()``):
            the core's timers run on that clock, so it is built inside ``trio.run``.
        readiness: told once the UDP sockets are bound and traffic can flow.

    Raises:
        MinivpnError: the interface could not start (e.g. its UDP port is in use), possibly
            inside an exception group from the nursery.
    """
    # Listening again makes this process the socket's owner in the kernel's eyes: a client's
    # SO_PEERCRED (and ``ss -xp``) then names the process that serves, not the parent that
    # created the socket and exited after daemonising.
    interface.uapi.listener.listen(socket.SOMAXCONN)
    try:
        trio.run(_serve, interface, build_core, readiness)
    except* DeviceGone:
        log.info("device %s was deleted: stopping", interface.name)
    finally:
        interface.close()


async def _serve(
    interface: Interface, build_core: Callable[[float], WireGuardCore], readiness: Readiness
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
                    await run_interface(device, core, interface.uapi, task_status=task_status)
                    nursery.cancel_scope.cancel()  # the socket file was removed

                nursery.start_soon(stop_on_signal)
                await nursery.start(run)
                readiness.ready(
                    f"{name} is up: UDP port {core.listen_port}, socket {interface.uapi.path}, "
                    f"PID {os.getpid()}"
                )
                trim_heap()
        finally:
            # Back to "pending" before trio's handler goes: see stop_signals_held.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def trim_heap() -> None:
    """Give the C heap's free memory back to the kernel (glibc's ``malloc_trim``).

    Starting an interface imports some forty modules and compiles their classes; what that
    frees stays in the C heap, where glibc returns only the free space at its very top on its
    own.  The process never needs most of it again, so after start-up it is handed back:
    about 0.5-1 MiB of resident memory (docs/performance.md, "Memory of minivpnd").  Where the
    C library is not glibc, nothing happens.
    """
    import ctypes  # already loaded by trio

    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    malloc_trim(0)


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
