"""``minivpn dump``: show, decoded, what crosses a TUN/TAP device."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import trio

from minivpn.cli import argtypes
from minivpn.cli.signals import stop_on_signals
from minivpn.tuntap.ioctl import Mode

if TYPE_CHECKING:
    from minivpn.framing.filter import PacketFilter

DESCRIPTION = """\
Attach to a TUN/TAP device and print one line per packet, like tcpdump -n (-e on TAP).
With no NAME a temporary device is made (its name is printed) and removed on exit; an existing
persistent device (minivpn tun add) is attached and left as it was.  With --answer-pings the
replies minivpn sends are printed and written too, after the packet they answer.

examples (as root):
  minivpn dump --address 10.9.0.1/24 --answer-pings --write ping.pcap &
  ping -c 3 10.9.0.2          # replies come from minivpn
  tcpdump -n -r ping.pcap

  minivpn dump --address 10.9.0.1/24 --answer-pings -c 1 --filter icmp &
  ping -c 1 10.9.0.2          # the echo request and its reply, then minivpn exits

--filter takes a small part of tcpdump's filter language, with tcpdump's meaning: ip, ip6,
arp, rarp, icmp (IPv4 only), icmp6, tcp, udp, sctp; [ip|ip6|arp|rarp] [src|dst] host ADDR;
[tcp|udp|sctp] [src|dst] port N; icmp[icmptype] == icmp-echo, icmp6[icmp6type] != 133, ...;
not (!), and (&&), or (||), parentheses (and/or have equal precedence, left to right).
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
    p.add_argument(
        "-c",
        "--count",
        type=argtypes.positive_int,
        help="exit after this many packets from the device (that pass --filter)",
    )
    p.add_argument(
        "--filter",
        metavar="EXPR",
        type=_packet_filter,
        help="show, count and write only the packets matching this tcpdump-style expression, "
        "e.g. 'icmp' or 'icmp6[icmp6type] == icmp6-echo' (see below)",
    )
    p.add_argument(
        "-w", "--write", metavar="FILE.pcap", help="also write the packets to a pcap file"
    )
    p.add_argument(
        "--answer-pings",
        action="store_true",
        help="answer ICMP/ICMPv6 echo requests (and ARP/neighbour solicitations on TAP); "
        "the replies are shown and written too",
    )
    p.set_defaults(func=run)


def _packet_filter(text: str) -> PacketFilter:
    from minivpn.framing.filter import FilterError, compile_filter

    try:
        return compile_filter(text)
    except FilterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        packet_filter=args.filter,
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
    print(f"minivpn: {result.summary(config)}", file=sys.stderr)
    return 0
