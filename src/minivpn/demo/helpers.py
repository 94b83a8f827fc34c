"""The small programs ``minivpn demo`` runs inside its namespaces: capture, TCP sink and source.

``python -m minivpn.demo.helpers --capture|--tcp-sink|--tcp-source ...`` (see
:func:`helper_main`).  Internal: the demo starts them inside its namespaces; they are not a
sub-command of ``minivpn``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["helper_main"]

# AF_PACKET (linux/if_ether.h, linux/if_packet.h).
_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4


def helper_main(argv: Sequence[str] | None = None) -> int:
    """``python -m minivpn.demo.helpers --capture|--tcp-sink|--tcp-source ...``: the helpers.

    Internal: the demo starts them inside its namespaces.

    * ``--capture IFNAME COUNT``: print "ready", then one line per packet crossing IFNAME (an
      ``AF_PACKET`` socket, ``SOCK_DGRAM``: no link header, and a TUN device has none) until
      COUNT packets or 20 s, decoded by :func:`minivpn.framing.summary.summarize`.
    * ``--tcp-sink ADDRESS PORT``: accept one TCP connection, read it to the end, print
      "received N bytes in S s".
    * ``--tcp-source ADDRESS PORT SECONDS``: connect and send as fast as possible for SECONDS.
    """
    parser = argparse.ArgumentParser(prog="python -m minivpn.demo.helpers", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--capture", nargs=2, metavar=("IFNAME", "COUNT"))
    group.add_argument("--tcp-sink", nargs=2, metavar=("ADDRESS", "PORT"))
    group.add_argument("--tcp-source", nargs=3, metavar=("ADDRESS", "PORT", "SECONDS"))
    args = parser.parse_args(argv)
    try:
        if args.capture:
            return _capture(args.capture[0], int(args.capture[1]), timeout=20.0)
        if args.tcp_sink:
            return _tcp_sink(args.tcp_sink[0], int(args.tcp_sink[1]), timeout=60.0)
        address, port, seconds = args.tcp_source
        return _tcp_source(address, int(port), float(seconds))
    except OSError as exc:
        print(f"minivpn.demo.helpers: {exc}", file=sys.stderr)
        return 1


def _capture(ifname: str, count: int, *, timeout: float) -> int:
    from minivpn.framing.decode import Link
    from minivpn.framing.summary import summarize

    # Protocol 0 receives nothing until bind() names the device and ETH_P_ALL: so not a single
    # packet from another device gets in between.
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0) as sock:
        sock.bind((ifname, _ETH_P_ALL))  # Python converts the protocol to network order here
        print("ready", flush=True)
        deadline = time.monotonic() + timeout
        buffer = bytearray(65536)
        for _ in range(count):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                size, address = sock.recvfrom_into(buffer)
            except TimeoutError:
                break
            direction = "out" if address[2] == _PACKET_OUTGOING else "in"
            print(f"{direction:<4}{summarize(memoryview(buffer)[:size], Link.IP)}", flush=True)
    return 0


def _tcp_sink(address: str, port: int, *, timeout: float) -> int:
    with socket.create_server((address, port)) as server:
        server.settimeout(timeout)
        connection, _ = server.accept()
    with connection:
        connection.settimeout(timeout)
        buffer = bytearray(256 * 1024)
        total = 0
        started = 0.0
        while size := connection.recv_into(buffer):
            if not total:
                started = time.monotonic()
            total += size
        elapsed = time.monotonic() - started if total else 0.0
    print(f"received {total} bytes in {elapsed:.6f} s", flush=True)
    return 0


def _tcp_source(address: str, port: int, seconds: float) -> int:
    chunk = bytes(128 * 1024)
    with socket.create_connection((address, port), timeout=10.0) as connection:
        deadline = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < deadline:
            connection.sendall(chunk)
            sent += len(chunk)
        connection.shutdown(socket.SHUT_WR)
    print(f"sent {sent} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(helper_main())


if __name__ == "__main__":
    sys.exit(helper_main())
