"""``minivpn demo``: watch a WireGuard VPN between two private network namespaces work.

::

    minivpn demo [--seconds S] [--no-iperf3] [--trace]
    minivpn demo --tap

Builds two network namespaces joined by a veth pair, brings up a minivpn peer with fresh keys in
each, pings through the tunnel, shows the decrypted ICMP packets as the receiving side sees
them, the handshake and the byte counters, runs a short throughput test and removes everything.
With ``--trace`` it also shows ``minivpn trace`` of A during the ping: the handshake as
messages, then each packet's way through the tunnel.
It needs root; an ordinary user runs it as ``unshare -Urnm minivpn demo``.  The work is done by
:mod:`minivpn.demo` (:func:`minivpn.demo.steps.run_demo`); docs/demo.md explains it step by
step.  ``--tap`` runs the layer-2 demo instead (:mod:`minivpn.demo.tap`, docs/l2.md): two
sites, each a namespace with a bridge and a host, joined by minivpn in ``Mode = tap``.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["cmd_demo", "register"]


def _seconds(text: str) -> float:
    """A throughput test length from 0 (skip it) to 60 seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError("must be from 0 (skip the test) to 60 seconds")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the ``minivpn`` parser."""
    p = subparsers.add_parser(
        "demo",
        help="watch a WireGuard VPN between two private namespaces work (root, or unshare -Urnm)",
        description="Build two network namespaces, bring up a minivpn WireGuard peer with fresh "
        "keys in each, ping through the tunnel, show the packets, the handshake and the "
        "counters, measure the throughput, and remove everything. Needs root; as an ordinary "
        "user run: unshare -Urnm minivpn demo",
    )
    p.add_argument(
        "--seconds",
        type=_seconds,
        default=3.0,
        metavar="S",
        help="length of the throughput test in seconds (default 3; 0 skips it)",
    )
    p.add_argument(
        "--no-iperf3",
        dest="use_iperf3",
        action="store_false",
        help="measure the throughput with a small Python TCP test even if iperf3 is installed",
    )
    which = p.add_mutually_exclusive_group()  # --trace shows the layer-3 demo's ping
    which.add_argument(
        "--tap",
        action="store_true",
        help="layer 2: two sites with a bridge and a host each, joined by minivpn in Mode = tap; "
        "a host pings the other site's host in the same subnet (docs/l2.md)",
    )
    which.add_argument(
        "--trace",
        action="store_true",
        help="also show what minivpn trace saw A do with each packet of the ping, handshake first",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """``minivpn demo``: see the module documentation."""
    from minivpn.demo.errors import NeedsRoot
    from minivpn.demo.steps import DemoOptions, run_demo

    try:
        if args.tap:
            from minivpn.demo.tap import run_tap_demo

            return run_tap_demo(DemoOptions())
        options = DemoOptions(seconds=args.seconds, use_iperf3=args.use_iperf3, trace=args.trace)
        return run_demo(options)
    except NeedsRoot as exc:
        # The message names the command to type; the usual "minivpn: " prefix would repeat it.
        print(exc, file=sys.stderr)
        return exc.exit_code
