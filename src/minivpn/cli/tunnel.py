"""``minivpn tunnel``: a plain (unencrypted) UDP or TCP tunnel between two hosts."""

from __future__ import annotations

import argparse
import ipaddress
import logging

import trio

from minivpn.cli import argtypes
from minivpn.cli.signals import stop_on_signals
from minivpn.stats import Counters
from minivpn.tuntap.ioctl import Mode
from minivpn.wireguard.keys import looks_like_key, redacted

log = logging.getLogger("minivpn.tunnel")

DESCRIPTION = """\
Carry the packets of a TUN device (or the frames of a TAP device) to a peer over UDP or TCP,
and the peer's back.  One side listens, the other connects.

THIS TUNNEL IS NOT ENCRYPTED OR AUTHENTICATED: anyone on the path can read and inject packets.
It is the smallest complete tunnel to read and learn from.  For a VPN, use `minivpn up`
(WireGuard).

Both ends must use the same transport: UDP (the default) or TCP (--tcp on both).

examples:
  host B:  minivpn tunnel tun0 --listen 5000 --address 10.9.0.2/24
  host A:  minivpn tunnel tun0 --connect B:5000 --address 10.9.0.1/24
  (ping 10.9.0.2 from A; kill -USR1 PID prints the counters)
"""


def parse_hostport(text: str, *, listen: bool) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[IPV6]:PORT`` or (to listen) ``:PORT`` or ``PORT``.

    To listen, an empty host (``:5000``, or just ``5000``) means every address.

    Raises:
        argparse.ArgumentTypeError: with a message naming the problem.
    """
    if looks_like_key(text):
        # A key pasted into the wrong field: never resolved, never repeated (docs/reliability.md).
        raise argparse.ArgumentTypeError(
            f"{redacted(text)}: that looks like a key, not HOST:PORT; it was not resolved"
        )
    host, sep, port_text = text.rpartition(":")
    if not sep and listen:
        host, port_text = "", text  # a bare port
    elif not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT (or [IPV6]:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write an IPv6 address in brackets: [ADDR]:PORT"
        )
    if not host and not listen:
        raise argparse.ArgumentTypeError(f"{text!r}: a host to connect to is needed")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tunnel`` sub-command."""
    p = subparsers.add_parser(
        "tunnel",
        help="a plain (unencrypted) UDP/TCP tunnel for a TUN or TAP device",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "device", metavar="DEV", help="device name (made, and removed on exit, if absent)"
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--listen",
        metavar="[ADDR:]PORT",
        type=lambda t: parse_hostport(t, listen=True),
        help="wait for the peer on this port, on every address or only on ADDR "
        "(5000, :5000, 198.51.100.2:5000, [fd00::2]:5000)",
    )
    where.add_argument(
        "--connect",
        metavar="HOST:PORT",
        type=lambda t: parse_hostport(t, listen=False),
        help="the peer's address and port",
    )
    transport = p.add_mutually_exclusive_group()
    transport.add_argument(
        "--udp",
        dest="transport",
        action="store_const",
        const="udp",
        help="one packet per datagram (the default)",
    )
    transport.add_argument(
        "--tcp",
        dest="transport",
        action="store_const",
        const="tcp",
        help="packets framed by a 2-byte length on a TCP connection",
    )
    p.set_defaults(transport="udp")
    argtypes.add_device_options(p)
    argtypes.add_address_option(p)
    p.add_argument("--mtu", type=argtypes.mtu, help="set the device MTU")
    p.add_argument(
        "--offload",
        action="store_true",
        help="carry TCP super-packets (TSO) with a virtio-net header instead of MTU-sized packets;"
        " much faster, both ends must use it (see docs/tunnel.md)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the tunnel until Ctrl-C or SIGTERM, then print the counters."""
    from minivpn.runtime.tunnel import TunnelConfig, run_tunnel

    config = TunnelConfig(
        device=args.device,
        transport=args.transport,
        listen=args.listen,
        connect=args.connect,
        mode=Mode.TAP if args.tap else Mode.TUN,
        pi=args.pi,
        addresses=tuple(args.address),
        mtu=args.mtu,
        offload=args.offload,
    )
    counters = Counters()
    started = False

    async def main() -> None:
        nonlocal started
        async with trio.open_nursery() as nursery:
            # Signals are caught before anything is set up, so SIGTERM always ends it cleanly.
            await nursery.start(stop_on_signals, nursery.cancel_scope, _log_detaching)

            async def tunnel_then_stop(*, task_status: trio.TaskStatus[object]) -> None:
                await run_tunnel(config, counters=counters, task_status=task_status)
                nursery.cancel_scope.cancel()

            await nursery.start(tunnel_then_stop)
            started = True

    try:
        trio.run(main)
    finally:
        if started:  # a tunnel that never ran has nothing to count
            log.info("%s", counters.summary())
    return 0


def _log_detaching(signal_name: str) -> None:
    log.info("%s: detaching", signal_name)
