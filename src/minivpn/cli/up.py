"""``minivpn up`` and ``minivpn down``: a WireGuard interface from a configuration file.

::

    minivpn up CONFIG|NAME [--foreground] [--log-file FILE] [--user USER [--group GROUP]]
    minivpn down NAME|CONFIG

``up`` does what ``wg-quick up`` does with a userspace implementation, in one process:

1. read the file (``NAME`` alone means ``/etc/wireguard/NAME.conf``; the interface is named
   after the file, ``wg0.conf`` makes ``wg0``); errors name the file and line;
2. resolve the peers' endpoint host names;
3. create the UAPI socket and the TUN device, set the MTU (``MTU``; without it, as wg-quick
   does: the largest MTU on the way to the peers' endpoints minus 80, which is 1420 on a
   1500-byte network), add the addresses (``Address``), bring the link up and add a route for
   each peer's ``AllowedIPs`` (honouring ``Table``);
4. go to the background (unless ``--foreground``) and run the interface; the command returns
   once the UDP sockets are bound, or fails with the reason (e.g. the port is in use), leaving
   nothing behind;
5. once the UDP sockets are bound, drop every capability but CAP_NET_ADMIN (and
   CAP_NET_BIND_SERVICE for a privileged ``ListenPort``), set no_new_privs and, with
   ``--user``, become that user (:mod:`minivpn.runtime.privileges`, docs/privileges.md).

In the background the interface logs (at the level ``-v``/``-q`` chose, :mod:`minivpn.logs`)
to ``--log-file FILE``; without it, to the journal when its standard error is the journal
(systemd says so in ``JOURNAL_STREAM``), else to ``/var/log/minivpn/NAME.log``
(``$MINIVPN_LOG_DIR/NAME.log``).  The file is opened before anything is made, so a log that
cannot be written is an error of the command; the command says where the log goes when the
interface is up.  In the foreground it logs to standard error.

Decisions that differ from wg-quick, on purpose:

* ``DNS``, ``PreUp``, ``PostUp``, ``PreDown``, ``PostDown`` and ``SaveConfig`` are read but
  not acted upon, with one warning naming them: minivpn does not run shell commands or rewrite
  the resolver configuration.  Run those steps yourself around ``up`` and ``down``.
* A ``/0`` in AllowedIPs with automatic routing is refused: wg-quick sets up fwmark policy
  routing for it, which ``up`` does not (see :func:`~minivpn.runtime.wgquick.plan_routes`).
  ``Table = off`` or ``Table = NUMBER`` allow it.

And one minivpn extension: ``Mode = tap`` (docs/l2.md) makes the device a TAP device that
carries Ethernet frames, switched between the peers by MAC address
(:class:`~minivpn.wireguard.ethernet.EthernetCore`); its MTU defaults to wg-quick's rule minus
16, so that a whole frame fits one datagram, and ``Address`` may be left out (to put the device
into a bridge).  Both ends must be minivpn in ``Mode = tap``.

``down`` removes the socket file: the interface's process notices and stops, and with its TUN
device go the addresses and routes.  A device still there after 5 seconds is deleted through
netlink.  SIGINT/SIGTERM to the process (Ctrl-C with ``--foreground``) do the same.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from minivpn.errors import MinivpnError
from minivpn.logs import configure_logging
from minivpn.outputfile import OutputFileError, open_output
from minivpn.runtime.interface import (
    DOWN_TIMEOUT,
    open_interface,
    serve_until_stopped,
    take_down,
    user_error_messages,
)
from minivpn.runtime.privileges import resolve_user
from minivpn.runtime.process import (
    Readiness,
    daemonize,
    require_cap_net_admin,
    stop_signals_held,
)
from minivpn.runtime.wgquick import (
    apply_link_settings,
    ignored_keys,
    interface_name_of,
    locate_config,
    plan_routes,
    resolve_endpoints,
)
from minivpn.tuntap.ioctl import Mode
from minivpn.wireguard.config import load_config

if TYPE_CHECKING:
    import argparse

    from minivpn.wireguard.core import WireGuardCore

log = logging.getLogger(__name__)

#: Where a background interface logs by default: DIR/NAME.log.
LOG_DIR = Path("/var/log/minivpn")
#: The environment variable that moves it.
LOG_DIR_ENV = "MINIVPN_LOG_DIR"


class LogFileError(MinivpnError):
    """The log of a background interface cannot be written where it should go."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``up`` and ``down`` to the ``minivpn`` parser."""
    up = subparsers.add_parser(
        "up",
        help="bring a WireGuard interface up from a config file (like wg-quick up)",
        description="Bring a WireGuard interface up from a configuration file, as wg-quick "
        "does: TUN device, MTU, addresses, routes for AllowedIPs, and the UAPI socket for wg. "
        "DNS and the Pre/Post Up/Down hooks are ignored (with a warning).",
    )
    up.add_argument(
        "config",
        metavar="CONFIG|NAME",
        help="a file such as ./wg0.conf (the interface is named after it), "
        "or NAME for /etc/wireguard/NAME.conf",
    )
    up.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="stay in the foreground, logging to stderr, until Ctrl-C or SIGTERM",
    )
    up.add_argument(
        "--log-file",
        metavar="FILE",
        help="in the background, log to FILE (default: the journal when stderr is the "
        f"journal, else {LOG_DIR}/NAME.log)",
    )
    up.add_argument(
        "--user",
        metavar="USER",
        help="once set up, run as USER (name or uid), keeping only CAP_NET_ADMIN",
    )
    up.add_argument(
        "--group", metavar="GROUP", help="with --user: run as GROUP (default: USER's group)"
    )
    up.set_defaults(func=cmd_up)

    down = subparsers.add_parser(
        "down",
        help="take a WireGuard interface down (like wg-quick down)",
        description="Stop a running interface: its process exits and its device, addresses, "
        "routes and socket go with it.",
    )
    down.add_argument("name", metavar="NAME|CONFIG", help="the interface, or its config file")
    down.set_defaults(func=cmd_down)


def cmd_up(args: argparse.Namespace) -> int:
    """``minivpn up``: see the module documentation."""
    path, name = locate_config(args.config)
    filename = str(path)
    config = load_config(path)
    for warning in config.warnings:
        log.warning("%s", warning)
    ignored = ignored_keys(config)
    if ignored:
        log.warning(
            "%s: ignoring %s: minivpn does not change the DNS configuration, run commands or "
            "save the configuration; do those steps yourself",
            filename,
            ", ".join(ignored),
        )
    routes = plan_routes(config, filename, name)
    require_cap_net_admin(f"bring {name} up")
    drop = resolve_user(args.user, args.group)
    log_fd, where = (None, "") if args.foreground else _open_log(args.log_file, name)
    endpoints = resolve_endpoints(config, filename)
    endpoint_addresses = [
        str(peer.endpoint.ip) if peer.endpoint.ip is not None else endpoints[peer.public_key][0]
        for peer in config.peers
        if peer.endpoint is not None
    ]

    tap = config.interface.mode == "tap"
    if tap:
        from minivpn.wireguard.ethernet import TAP_OVERHEAD

    # wg-quick's MTU, minus the Ethernet header and minivpn's frame header for a TAP device.
    overhead = TAP_OVERHEAD if tap else 0

    def build_core(now: float) -> WireGuardCore:
        from minivpn.wireguard.core import WireGuardCore

        # The MTU is the device's: run_interface reads it from the link as it starts.
        if tap:
            from minivpn.wireguard.ethernet import EthernetCore

            return EthernetCore.from_config(config, now=now, endpoints=endpoints)
        return WireGuardCore.from_config(config, now=now, endpoints=endpoints)

    with stop_signals_held():
        interface = open_interface(name, exclusive=True, mode=Mode.TAP if tap else Mode.TUN)
        try:
            apply_link_settings(
                name,
                mtu=config.interface.mtu,  # None: derived as wg-quick does
                endpoints=endpoint_addresses,
                addresses=config.interface.addresses,
                routes=routes,
                overhead=overhead,
            )
        except BaseException:
            interface.close()  # the device goes, and with it what was configured so far
            raise
        if args.foreground:
            serve_until_stopped(interface, build_core, Readiness(), drop)
            return 0
        readiness = daemonize(
            program="minivpn", keep_output=log_fd is None, wait_for_readiness=True
        )
        # From here on this is the daemon: the parent reports what it is told and exits.
        if log_fd is not None:  # standard output and error become the log file
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)
        configure_logging(args.verbosity, prefix=f"minivpn ({name})", timestamps=log_fd is not None)
        readiness = _ReadinessSayingWhere(readiness, where)
        try:
            serve_until_stopped(interface, build_core, readiness, drop)
        except BaseException as exc:
            messages = user_error_messages(exc)
            if messages is None:
                log.exception("%s stopped on an internal error", name)
                readiness.failed(f"{name}: internal error: {exc!r}")
            else:
                readiness.failed("; ".join(messages))
            return 1
    return 0


def _open_log(log_file: str | None, name: str) -> tuple[int | None, str]:
    """Open the log of a background interface: ``(fd, where)``, fd None for the journal.

    Raises:
        LogFileError: the file cannot be opened for writing.
    """
    if log_file is None and _stderr_is_the_journal():
        return None, "the journal"
    if log_file is not None:
        path = Path(log_file)
    else:
        directory = Path(os.environ.get(LOG_DIR_ENV) or LOG_DIR)
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise LogFileError(
                f"cannot create {directory} for the log: {exc.strerror} (use --log-file FILE, "
                "or --foreground)"
            ) from None
        path = directory / f"{name}.log"
    # Appended to, mode 0600, never through a symbolic link (minivpn.outputfile).
    try:
        with open_output(path, "log", append=True) as log_file_object:
            fd = os.dup(log_file_object.fileno())
    except OutputFileError as exc:
        raise LogFileError(f"{exc} (use --log-file FILE, or --foreground)") from None
    return fd, str(path)


def _stderr_is_the_journal() -> bool:
    """Whether standard error is a stream to systemd's journal (``JOURNAL_STREAM=DEV:INODE``)."""
    device, colon, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not colon:
        return False
    try:
        info = os.fstat(sys.stderr.fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class _ReadinessSayingWhere(Readiness):
    """The daemon's readiness, whose "up" message also says where its log goes."""

    def __init__(self, inner: Readiness, where: str) -> None:
        super().__init__()
        self._inner = inner
        self._where = where

    def ready(self, message: str) -> None:
        self._inner.ready(f"{message}; log: {self._where}")

    def failed(self, message: str) -> None:
        self._inner.failed(message)


def cmd_down(args: argparse.Namespace) -> int:
    """``minivpn down``: see the module documentation."""
    name = interface_name_of(args.name)
    log.info("%s", take_down(name, timeout=DOWN_TIMEOUT))
    return 0
