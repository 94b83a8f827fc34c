"""The latency floor: what forwarding a lone packet costs before any cryptography.

Two raw forwarders -- TUN -> UDP and UDP -> TUN, no encryption, no protocol -- written twice:
as a plain ``epoll`` loop, and as two trio tasks waiting with ``trio.lowlevel.wait_readable``
(the shape of minivpn's data path).  Each runs between two namespaces like the tunnels of
``run.py``, next to both wireguard-go builds and minivpn (the offload engine, and one packet at a
time), and ``ping -i 0.05`` measures the round trip.
The difference between the two forwarders is the price of trio's scheduler per wake-up; see
docs/performance.md ("Latency").  A benchmark, never a pass/fail test.

    netns/isolate python tests/bench/floor.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(Path(__file__).parent)]

PORT = 51820


def forward(mode: str, name: str, peer: str) -> None:
    """Forward between TUN *name* and UDP port PORT, to *peer*, until killed."""
    from minivpn.tuntap.device import open_device

    fd, _, _ = open_device(name)
    os.set_blocking(fd, False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", PORT))  # inside a namespace of the benchmark's own
    sock.setblocking(False)
    buffer = bytearray(65535)
    view = memoryview(buffer)
    destination = (peer, PORT)

    def tun_to_udp() -> None:
        while True:
            try:
                n = os.readv(fd, [buffer])
            except BlockingIOError:
                return
            sock.sendto(view[:n], destination)

    def udp_to_tun() -> None:
        while True:
            try:
                n = sock.recv_into(buffer)
            except BlockingIOError:
                return
            os.write(fd, view[:n])

    if mode == "epoll":
        poller = select.epoll()
        poller.register(fd, select.EPOLLIN)
        poller.register(sock.fileno(), select.EPOLLIN)
        while True:
            for ready, _ in poller.poll():
                (tun_to_udp if ready == fd else udp_to_tun)()
    else:
        import trio

        async def pump(waitable: int | socket.socket, drain: Callable[[], None]) -> None:
            while True:
                await trio.lowlevel.wait_readable(waitable)
                drain()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, fd, tun_to_udp)
                nursery.start_soon(pump, sock, udp_to_tun)

        trio.run(main)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forward", nargs=3, metavar=("MODE", "DEV", "PEER"), help="internal")
    args = parser.parse_args()
    if args.forward:
        forward(*args.forward)
        return 0
    if os.environ.get("MINIVPN_ISOLATED") != "1":
        isolate = str(ROOT / "netns/isolate")
        os.execvp(isolate, [isolate, sys.executable, *sys.argv])
    import run  # tests/bench/run.py

    from netns import Namespace, Topology

    def forwarder(
        mode: str,
    ) -> Callable[[Topology, Namespace, Namespace, int], tuple[str, list[int]]]:
        def up(topo: Topology, a: Namespace, b: Namespace, net: int) -> tuple[str, list[int]]:
            pids = []
            for side, ns, other in (("a", a, b), ("b", b, a)):
                dev = f"fl{net}{side}"
                proc = ns.popen([sys.executable, __file__, "--forward", mode, dev, other.addr4])
                pids.append(proc.pid)
                run._wait_for(lambda ns=ns, dev=dev: run._link_exists(ns, dev))
                ns.ip("addr", "add", f"10.99.{net}.{1 if side == 'a' else 2}/24", "dev", dev)
                ns.ip("link", "set", dev, "mtu", str(run.MTU), "up")
            return f"10.99.{net}.2", pids

        return up

    programs = {
        name: run.SETUPS[name].up
        for name in ("wireguard-go-2025", "wireguard-go", "minivpn", "minivpn-off")
        if name != "wireguard-go-2025" or run.WG_GO_2025.is_file()
    }
    programs["forwarder, epoll loop"] = forwarder("epoll")
    programs["forwarder, trio tasks"] = forwarder("trio")
    rtts: dict[str, list[float]] = {name: [] for name in programs}
    with Topology("fl") as topo:
        ends = {}
        for net, (name, up) in enumerate(programs.items(), start=1):
            a, b = topo.pair()
            dst, _ = up(topo, a, b, net)
            run._wait_for(lambda a=a, dst=dst: run._ping_ok(a, dst), timeout=20)
            ends[name] = (a, dst)
        for r in range(args.rounds):
            order = list(ends)[r % len(ends) :] + list(ends)[: r % len(ends)]
            for name in order:
                a, dst = ends[name]
                out = a.run(["ping", "-c", "20", "-i", "0.05", "-q", dst], check=False).stdout
                m = re.search(r"= [\d.]+/([\d.]+)/", out)
                rtts[name].append(float(m.group(1)) if m else float("nan"))
    print(
        f"\n{args.rounds} rounds of ping -c 20 -i 0.05 through each"
        " (average RTT: median of the rounds, min..max)\n"
    )
    print("| program | ping avg ms |")
    print("|---|---|")
    for name, values in rtts.items():
        print(
            f"| {name} | {statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f}) |"
        )
    floor = statistics.median(rtts["forwarder, trio tasks"])
    for name in ("minivpn", "minivpn-off"):
        above = statistics.median(rtts[name]) - floor
        print(f"\n{name}: {above:+.3f} ms against the trio forwarder (the aim: at most +0.100)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
