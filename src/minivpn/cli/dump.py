"""``minivpn dump``: show, decoded, what crosses a TUN/TAP device."""

from __future__ import annotations

import argparse
import os
import sys

import trio

from minivpn.cli import argtypes
from minivpn.cli.signals import stop_on_signals
from minivpn.tuntap.ioctl import Mode

DESCRIPTION = """\
Attach to a TUN/TAP device and print one line per packet, like tcpdump -n (-e on TAP).
With no NAME a temporary device is made (its name is printed) and removed on exit; an existing
persistent device (minivpn tun add) is attached and left as it was.

example (as root):
  minivpn dump --address 10.9.0.1/24 --answer-pings --write ping.pcap &
  ping -c 3 10.9.0.2          # replies come from minivpn
  tcpdump -n -r ping.pcap
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dump`` sub-command."""
    p = subparsers.add_parser(
        "dump",
        help="show, decoded, the packets crossing a TUN/TAP device",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="device (default: a new temporary one)")
    argtypes.add_device_options(p)
    argtypes.add_address_option(p)
    p.add_argument("-c", "--count", type=argtypes.positive_int, help="exit after this many packets")
    p.add_argument(
        "-w", "--write", metavar="FILE.pcap", help="also write the packets to a pcap file"
    )
    p.add_argument(
        "--answer-pings",
        action="store_true",
        help="answer ICMP/ICMPv6 echo requests (and ARP/neighbour solicitations on TAP)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dump until --count packets, Ctrl-C or SIGTERM; then say how many were seen."""
    from minivpn.runtime.dump import DumpConfig, DumpResult, run_dump

    config = DumpConfig(
        device=args.name,
        mode=Mode.TAP if args.tap else Mode.TUN,
        pi=args.pi,
        addresses=tuple(args.address),
        count=args.count,
        write=args.write,
        answer_pings=args.answer_pings,
    )
    result = DumpResult()

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            def emit(line: str) -> None:
                try:
                    print(line, flush=True)
                except BrokenPipeError:
                    # Whoever read our output is gone (``minivpn dump | head``): stop, as
                    # tcpdump does.  Point stdout at /dev/null so that flushing it at exit
                    # cannot fail a second time.
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                    os.close(devnull)
                    nursery.cancel_scope.cancel()

            # Signals are caught before anything is set up, so SIGTERM always ends it cleanly.
            await nursery.start(stop_on_signals, nursery.cancel_scope)

            async def dump_then_stop(*, task_status: trio.TaskStatus[str]) -> None:
                await run_dump(config, emit, result=result, task_status=task_status)
                nursery.cancel_scope.cancel()  # --count reached

            name = await nursery.start(dump_then_stop)
            print(f"minivpn: listening on {name}", file=sys.stderr, flush=True)

    trio.run(main)
    replies = f", {result.replies} replies sent" if args.answer_pings else ""
    print(f"minivpn: {result.packets} packets captured{replies}", file=sys.stderr)
    return 0
