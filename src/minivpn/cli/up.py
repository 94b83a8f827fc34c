"""``minivpn up`` and ``minivpn down``: a WireGuard interface from a configuration file.

::

    minivpn up CONFIG|NAME [--foreground]
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
   nothing behind.

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
from typing import TYPE_CHECKING

from minivpn.runtime.interface import (
    DOWN_TIMEOUT,
    open_interface,
    serve_until_stopped,
    take_down,
    user_error_messages,
)
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
            serve_until_stopped(interface, build_core, Readiness())
            return 0
        readiness = daemonize(program="minivpn", keep_output=False, wait_for_readiness=True)
        # From here on this is the daemon: the parent reports what it is told and exits.
        try:
            serve_until_stopped(interface, build_core, readiness)
        except BaseException as exc:
            messages = user_error_messages(exc)
            if messages is None:
                log.exception("%s stopped on an internal error", name)
                readiness.failed(f"{name}: internal error: {exc!r}")
            else:
                readiness.failed("; ".join(messages))
            return 1
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """``minivpn down``: see the module documentation."""
    name = interface_name_of(args.name)
    log.info("%s", take_down(name, timeout=DOWN_TIMEOUT))
    return 0
