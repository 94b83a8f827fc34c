"""Layer-2 benchmark: a spoke flooding random source MACs at a hub, and unicast beside it.

Run it with ``nox -s bench`` (after the throughput table) or directly as ``netns/isolate python
tests/bench/l2_flood.py [--rate 100000] [--seconds 5]``.  Never a pass/fail test.

Method: a hub and three spokes, each ``minivpn up`` in ``Mode = tap`` in a namespace of its own
(veth pairs hub<->spoke, 198.51.100.0/24 /30s; the TAP devices 10.98.0.1-4/24).  Spoke 1
writes Ethernet frames with a random source MAC each, to an unknown unicast destination, into
its TAP device through a packet socket: RATE frames/s, paced, for SECONDS (bounded: at most
RATE * SECONDS frames).  Every one reaches the hub's switch, which must learn a new address per
frame (the table is capped at 4096 entries) and flood the frame on (to the other spokes and
its TAP device).  Meanwhile spoke 2 pings spoke 3 through the hub every 10 ms.  Printed: the
frames offered and sent, the hub's RSS and MAC table size before, during and after, the pings'
loss and round trips during the flood against a quiet baseline, the drop counters of spoke 1
and the hub (SIGUSR1: ``flood_limited`` is storm control), what spoke 1's TAP device dropped
because minivpn did not read it in time, the datagrams the kernel dropped at each of the hub's
UDP sockets on the port (the listening one, and one connected to each spoke:
runtime/peer_sockets.py), and the load average.

``--no-storm-control flooder`` runs spoke 1 with ``FloodRate = off`` (its switch floods all it
gets, as a peer that is not minivpn, or a modified one, would): then the hub's storm control is
what protects the other spokes; ``--no-storm-control all`` runs every node without it (the
switch as it was before storm control, for comparison in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netns import Namespace, Topology  # noqa: E402

PORT = 51820

#: The flooder: RATE frames/s for SECONDS, each from a random locally administered source MAC.
FLOOD = """
import os, socket, sys, time
ifname, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
dst, tail = bytes.fromhex("02ee00000001"), bytes.fromhex("88b5") + bytes(46)
sent = offered = 0
start = time.monotonic()
batch = max(1, rate // 1000)
while (now := time.monotonic()) - start < seconds:
    due = int((now - start) * rate)
    while offered < due:
        offered += 1
        src = bytearray(os.urandom(6)); src[0] = (src[0] & 0xFC) | 0x02
        try:
            s.send(dst + src + tail)
            sent += 1
        except OSError:
            pass
    time.sleep(0.0005)
print(offered, sent)
"""


def keypair() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    public = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    ).stdout
    return private.strip(), public.strip()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def table_size(ns: Namespace, name: str) -> int:
    shown = ns.run([sys.executable, "-m", "minivpn", "show", name, "--json"]).stdout
    return len(json.loads(shown)["mac_table"])


def drops(pid: int, log: Path) -> str:
    """The drop counters minivpn logs on SIGUSR1."""
    before = log.read_text().count("dropped ")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while log.read_text().count("dropped ") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    found = re.findall(r"dropped \d+.*", log.read_text())
    return found[-1] if found else "?"


def socket_drops(ns: Namespace, port: int) -> str:
    """Datagrams the kernel dropped per UDP socket on *port* (``/proc/net/udp``, full queues).

    The listening socket is ``listening``; a socket connected to a peer (runtime/peer_sockets.py)
    is named by the peer's address.
    """
    found = []
    for line in ns.run(["cat", "/proc/net/udp"]).stdout.splitlines()[1:]:
        fields = line.split()
        local, remote, drops = fields[1], fields[2], fields[-1]
        if int(local.split(":")[1], 16) != port:
            continue
        address, _ = remote.split(":")
        host = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
        found.append(f"{'listening' if host == '0.0.0.0' else host} {drops}")
    return ", ".join(sorted(found))


def ping_stats(ns: Namespace, address: str, seconds: float) -> str:
    count = int(seconds / 0.01)
    result = ns.run(
        ["ping", "-n", "-q", "-c", str(count), "-i", "0.01", "-W", "1", address],
        check=False,
        timeout=seconds * 3 + 20,
    )
    loss = re.search(r"([\d.]+)% packet loss", result.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/([\d.]+)/", result.stdout)
    return (
        f"{loss.group(1) if loss else '?'}% lost, rtt avg {rtt.group(1) if rtt else '?'} ms, "
        f"max {rtt.group(2) if rtt else '?'} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=int, default=100_000, help="frames/s (default 100000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="flood length (default 5)")
    parser.add_argument(
        "--no-storm-control",
        choices=("none", "flooder", "all"),
        default="none",
        help="nodes without storm control: none (default), spoke 1, all",
    )
    args = parser.parse_args()
    if not 0 < args.seconds <= 30 or not 0 < args.rate <= 1_000_000:
        parser.error("--seconds must be in (0, 30] and --rate in (0, 1000000]")
    if os.environ.get("MINIVPN_ISOLATED") != "1":
        isolate = str(ROOT / "netns/isolate")
        os.execvp(isolate, [isolate, sys.executable, *sys.argv])
    with Topology("mvf") as topo:
        hub = topo.namespace("h")
        spokes = [topo.namespace("s") for _ in range(3)]
        keys = {"hub": keypair(), **{f"s{n}": keypair() for n in range(3)}}
        hub_text = f"[Interface]\nMode = tap\nPrivateKey = {keys['hub'][0]}\nListenPort = {PORT}\n"
        hub_text += "Address = 10.98.0.1/24\n"
        configs = {}
        for n, spoke in enumerate(spokes):
            hub_end, spoke_end = topo.veth(hub, spoke)
            hub.ip("addr", "add", f"198.51.100.{4 * n + 1}/30", "dev", hub_end)
            spoke.ip("addr", "add", f"198.51.100.{4 * n + 2}/30", "dev", spoke_end)
            hub_text += f"\n[Peer]\nPublicKey = {keys[f's{n}'][1]}\n"
            hub_text += f"Endpoint = 198.51.100.{4 * n + 2}:{PORT}\n"
            configs[f"mvfs{n}"] = (
                spoke,
                f"[Interface]\nMode = tap\nPrivateKey = {keys[f's{n}'][0]}\n"
                f"ListenPort = {PORT}\nAddress = 10.98.0.{n + 2}/24\n\n"
                f"[Peer]\nPublicKey = {keys['hub'][1]}\n"
                f"Endpoint = 198.51.100.{4 * n + 1}:{PORT}\nPersistentKeepalive = 25\n",
            )
        configs["mvfhub"] = (hub, hub_text)
        pids = {}
        logs = {}
        for name, (ns, text) in configs.items():
            unlimited = args.no_storm_control == "all" or (
                args.no_storm_control == "flooder" and name == "mvfs0"
            )
            off = "Mode = tap\nFloodRate = off\n"  # storm control off, as a config can say
            path = Path(f"/run/{name}.conf")
            path.write_text(text.replace("Mode = tap\n", off) if unlimited else text)
            path.chmod(0o600)
            logs[name] = Path(f"/run/{name}.log")
            with logs[name].open("w") as log:
                proc = ns.popen(
                    [sys.executable, "-m", "minivpn", "up", str(path), "--foreground"], stderr=log
                )
            pids[name] = proc.pid
        deadline = time.monotonic() + 20
        for address in ("10.98.0.2", "10.98.0.3", "10.98.0.4"):
            while hub.run(["ping", "-c", "1", "-W", "1", address], check=False).returncode:
                if time.monotonic() > deadline:
                    print("l2_flood: the tunnels did not come up", file=sys.stderr)
                    return 1
        spokes[1].run(["ping", "-c", "3", "-i", "0.2", "10.98.0.4"], check=False)
        hub_pid = pids["mvfhub"]
        print(f"l2_flood: load average {Path('/proc/loadavg').read_text().split()[0]} at start")
        before = (rss_kib(hub_pid), table_size(hub, "mvfhub"))
        quiet = ping_stats(spokes[1], "10.98.0.4", 2.0)
        flood = spokes[0].popen(
            [sys.executable, "-c", FLOOD, "mvfs0", str(args.rate), str(args.seconds)],
            stdout=subprocess.PIPE,
        )
        time.sleep(0.5)
        during_ping = ping_stats(spokes[1], "10.98.0.4", max(1.0, args.seconds - 2.0))
        during = (rss_kib(hub_pid), table_size(hub, "mvfhub"))
        out, _ = flood.communicate(timeout=args.seconds + 30)
        offered, sent = (int(x) for x in out.split())
        time.sleep(1.0)
        after = (rss_kib(hub_pid), table_size(hub, "mvfhub"))
        tap_dropped = spokes[0].run(["cat", "/sys/class/net/mvfs0/statistics/tx_dropped"]).stdout
        spoke_drops = drops(pids["mvfs0"], logs["mvfs0"])
        hub_drops = drops(hub_pid, logs["mvfhub"])
        kernel_drops = socket_drops(hub, PORT)
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"\nrandom-source-MAC flood: {args.rate} frames/s offered for {args.seconds:g} s "
              f"(storm control off: {args.no_storm_control})")  # fmt: skip
        print("| | value |\n|---|---|")
        print(f"| frames offered / written to spoke 1's TAP | {offered} / {sent} |")
        print(f"| hub RSS before / during / after (MiB) | {before[0] / 1024:.1f} / "
              f"{during[0] / 1024:.1f} / {after[0] / 1024:.1f} |")  # fmt: skip
        print(f"| hub MAC table before / during / after | {before[1]} / {during[1]} / {after[1]} |")
        unread = tap_dropped.strip()
        print(f"| spoke 1's TAP device: frames minivpn did not read in time | {unread} |")
        print(f"| spoke 1 {spoke_drops} |")
        print(f"| hub {hub_drops} |")
        print(f"| hub's UDP sockets: datagrams the kernel dropped (queue full) | {kernel_drops} |")
        print(f"| ping spoke 2 -> spoke 3, quiet (2 s) | {quiet} |")
        print(f"| ping spoke 2 -> spoke 3, during the flood | {during_ping} |")
        print(f"| 1-minute load average at the end | {load} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
