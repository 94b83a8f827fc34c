"""``minivpnd``: minivpn as a drop-in userspace WireGuard daemon, on wireguard-go's contract.

::

    minivpnd [-f|--foreground] [--user USER [--group GROUP]] IFNAME

The contract (wireguard-go's ``main.go``), which ``wg``, ``wg-quick`` and wireguard-go's own
``tests/netns.sh`` rely on:

* It creates the TUN device IFNAME (MTU 1420) and the UAPI socket
  ``/var/run/wireguard/IFNAME.sock``, and **returns once both exist**: the process the caller
  started exits 0 and a daemon goes on in the background.  With ``-f``/``--foreground`` or
  ``WG_PROCESS_FOREGROUND=1`` it stays in the foreground instead.
* It is configured **only through the UAPI** (``wg set``, ``wg setconf``): it starts with no
  key, no port (a random one is bound) and no peers.  Addresses, MTU changes, link up and
  routes are someone else's business (``ip``, ``wg-quick``).
* It keeps working when the device is **moved to another network namespace** (``ip link set
  IFNAME netns X``): the TUN file and the UDP sockets stay where they are, and nothing here
  looks the link up by name after start.
* It **exits**, with status 0, on SIGTERM/SIGINT, when the device is deleted (``ip link del``)
  and when the socket file is removed; on the way out it removes the socket file (if it is
  still its own) and the device (if it is not persistent).

So ``WG_QUICK_USERSPACE_IMPLEMENTATION=minivpnd wg-quick up wg0`` runs minivpn under wg-quick.

Once the device, the UAPI socket and the UDP sockets exist, it drops every capability but
CAP_NET_ADMIN (and CAP_NET_BIND_SERVICE while its port is a privileged one) and sets
no_new_privs; with ``--user USER [--group GROUP]`` it also becomes that user
(:mod:`minivpn.runtime.privileges`, docs/privileges.md).  wireguard-go keeps them all.

Environment:

* ``WG_PROCESS_FOREGROUND=1``: same as ``--foreground``.
* ``LOG_LEVEL=verbose|error|silent`` (default ``error``): ``verbose`` logs everything, ``error``
  only problems (errors and warnings), ``silent`` nothing.  ``verbose`` includes every
  handshake message and the drops that mean a misconfiguration, as ``minivpn up -v`` does;
  ``debug`` (minivpn's own) adds every trace event, per packet too, as ``-vv`` does.  A daemon
  keeps stdout and stderr only when ``LOG_LEVEL`` is set and not ``silent``; otherwise they go
  to ``/dev/null``, as with wireguard-go.
* ``MINIVPN_SOCKET_DIR``: put the socket somewhere else (``wg`` will not find it there).

Differences from wireguard-go: wrong arguments exit with status 2 and a usage line (wireguard-go
prints its usage and exits 0), and the daemon is a ``fork()`` of the starting process, not a
re-executed copy of it (Python has no threads yet at that point, so forking is safe).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from minivpn import __version__
from minivpn.cli.closed_pipe import run_quietly_on_closed_pipe
from minivpn.errors import MinivpnError
from minivpn.logs import events_level
from minivpn.runtime.interface import (
    Interface,
    open_interface,
    serve_until_stopped,
    user_error_messages,
)
from minivpn.runtime.privileges import resolve_user
from minivpn.runtime.process import Readiness, daemonize, stop_signals_held
from minivpn.tuntap.device import get_mtu, set_mtu
from minivpn.tuntap.errors import TunPermissionError
from minivpn.tuntap.ioctl import encode_name
from minivpn.wireguard.constants import DEFAULT_MTU

if TYPE_CHECKING:
    from collections.abc import Sequence

    from minivpn.wireguard.core import WireGuardCore

__all__ = ["FOREGROUND_ENV", "LOG_LEVEL_ENV", "log_level", "main"]

log = logging.getLogger("minivpn.daemon")

#: wireguard-go's switch for "do not daemonise".
FOREGROUND_ENV = "WG_PROCESS_FOREGROUND"
#: wireguard-go's log level variable.
LOG_LEVEL_ENV = "LOG_LEVEL"

#: A level above every real one: nothing is logged.
_SILENT = logging.CRITICAL + 10


def log_level(value: str | None) -> int:
    """The logging level for a ``LOG_LEVEL`` value, as wireguard-go reads it.

    ``verbose`` (or ``debug``) logs everything; ``silent`` nothing; anything else, and no
    value, means ``error``.  Python tells warnings from errors where wireguard-go does not;
    both are problems, so ``error`` shows both.
    """
    if value in ("verbose", "debug"):
        return logging.DEBUG
    if value == "silent":
        return _SILENT
    return logging.WARNING


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minivpnd",
        description="Userspace WireGuard daemon (wireguard-go compatible): creates the TUN "
        "device IFNAME and the UAPI socket, then runs in the background, configured with wg.",
        epilog="Environment: WG_PROCESS_FOREGROUND=1 (same as -f), "
        "LOG_LEVEL=verbose|error|silent, MINIVPN_SOCKET_DIR (socket directory).",
    )
    parser.add_argument("--version", action="version", version=f"minivpnd {__version__}")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument(
        "--user",
        metavar="USER",
        help="once set up, run as USER (name or uid), keeping only CAP_NET_ADMIN",
    )
    parser.add_argument(
        "--group", metavar="GROUP", help="with --user: run as GROUP (default: USER's group)"
    )
    parser.add_argument("ifname", metavar="IFNAME", help="the interface to create")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``minivpnd`` and return the exit status (in the process the caller started).

    ``minivpnd --help | head -1`` ends quietly, as every ``minivpn`` command does
    (:mod:`minivpn.cli.closed_pipe`).
    """
    return run_quietly_on_closed_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _build_parser().parse_args(argv)
    name: str = args.ifname
    level_text = os.environ.get(LOG_LEVEL_ENV)
    level = log_level(level_text)
    try:
        encode_name(name)
    except MinivpnError as exc:
        if level <= logging.ERROR:
            print(f"minivpnd: {exc}", file=sys.stderr)
        return 1
    _configure_logging(name, level, level_text)
    foreground = args.foreground or os.environ.get(FOREGROUND_ENV) == "1"
    try:
        drop = resolve_user(args.user, args.group)
        with stop_signals_held():
            interface, mtu = _open(name)
            if foreground:
                readiness = Readiness()
            else:
                readiness = daemonize(
                    program="minivpnd",
                    keep_output=bool(level_text) and level != _SILENT,
                    wait_for_readiness=False,
                )

            def build_core(now: float) -> WireGuardCore:
                from minivpn.wireguard.core import WireGuardCore

                del now  # an empty core has no timers to start
                return WireGuardCore(mtu=mtu)

            serve_until_stopped(interface, build_core, readiness, drop)
    except BaseException as exc:
        messages = user_error_messages(exc)
        if messages is None:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            log.exception("internal error")
            return 1
        for message in messages:
            log.error("%s", message)
        return 1
    log.info("shut down")
    return 0


def _configure_logging(name: str, level: int, level_text: str | None) -> None:
    """Log to stderr, each line prefixed like wireguard-go's: ``minivpnd (wg0): ...``.

    *level* applies to minivpn's own loggers; the libraries it uses (pyroute2) only ever
    show warnings, since their debugging output means nothing to a user.  The trace's events
    (``minivpn.events``) are logged at ``verbose`` (handshakes, misconfiguration) and
    ``debug`` (every event).
    """
    logging.basicConfig(
        level=max(level, logging.WARNING),
        format=f"minivpnd ({name}): %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("minivpn").setLevel(level)
    verbosity = {"verbose": 1, "debug": 2}.get(level_text or "", 0)
    logging.getLogger("minivpn.events").setLevel(
        events_level(verbosity) if level < _SILENT else level
    )


def _open(name: str) -> tuple[Interface, int]:
    """Create the socket and the device, and give the device wireguard-go's MTU (1420).

    This is the last time the link is looked up by name: from now on it may be moved to
    another namespace.

    Returns:
        The interface and its device's MTU.

    Raises:
        MinivpnError: the socket or the device cannot be made.
    """
    interface = open_interface(name, exclusive=False)
    try:
        # The MTU is set with an ioctl rather than netlink: pyroute2 would stay loaded in the
        # daemon for nothing (~12 MiB of its resident memory).
        try:
            set_mtu(name, DEFAULT_MTU)
            mtu = DEFAULT_MTU
        except TunPermissionError as exc:
            # Attaching to a persistent device one owns needs no privilege; setting its MTU
            # does.  Use the device as it is.
            mtu = get_mtu(name)
            log.warning("%s; keeping MTU %d", exc, mtu)
    except BaseException:
        interface.close()
        raise
    log.debug("created device %s (MTU %d) and socket %s", name, mtu, interface.uapi.path)
    return interface, mtu


if __name__ == "__main__":
    sys.exit(main())
