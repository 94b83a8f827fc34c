"""Throughput and latency benchmark: minivpn against the raw veth and two wireguard-go builds.

Run it with ``nox -s bench`` (root; it re-runs itself inside ``netns/isolate``) or directly as
``netns/isolate python tests/bench/run.py [--rounds N] [--duration S] [--profile minivpn]
[PROGRAM ...]``.

Method (the same as ``shared/bench/peers.sh``, so the figures compare): for every program two
fresh namespaces joined by a veth pair (198.51.100.1/24 <-> .2/24), one tunnel end in each, inner
addresses 10.99.N.1/24 and 10.99.N.2/24, tunnel MTU 1420.  All tunnels stay up; then ROUNDS rounds,
the program order rotated each round, each one ``iperf3 -c <inner B> -t DURATION -J`` (client in A,
server in B, TCP, one stream; optionally ``-P 4``) recording the receiver's Mbit/s, followed by
``ping -c 20 -i 0.05`` A->B through the tunnel; a second ping runs alongside every iperf3 run
(latency under load, lost probes counted).  Each round starts once the 1-minute load average is
under 1.0 (at most two minutes of waiting; the table is marked noisy otherwise), and the averages
are printed under the table.  The table gives each program's median and its ratio to the median
of upstream wireguard-go 0.0.20250522 (``../shared/bench/bin``, or ``MINIVPN_WG_GO_2025``;
skipped with a note if absent) and of Debian's 0.0.20220316, from the same run.  This is a
benchmark, never a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netns import Namespace, Topology  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

MTU = 1420
PORT = 51820


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for the tunnel to come up")


def _link_exists(ns: Namespace, name: str) -> bool:
    return ns.ip("link", "show", name, check=False).returncode == 0


def _ping_ok(ns: Namespace, addr: str) -> bool:
    return ns.run(["ping", "-c", "1", "-W", "1", addr], check=False).returncode == 0


def minivpn_cmd() -> list[str]:
    return [sys.executable, "-m", "minivpn"]


class Setup:
    """How to bring one program up between two namespaces.

    ``up`` returns the inner address of B and the PIDs of the tunnel processes (for RSS).
    """

    def __init__(
        self,
        name: str,
        net: int,
        up: Callable[[Topology, Namespace, Namespace, int], tuple[str, list[int]]],
    ):
        self.name, self.net, self.up = name, net, up


def setup_veth(topo: Topology, a: Namespace, b: Namespace, net: int) -> tuple[str, list[int]]:
    return b.addr4, []


def _keypair() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    pub = subprocess.run(
        ["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True
    ).stdout
    return priv.strip(), pub.strip()


def _setup_userspace_wireguard(
    daemon: Callable[[str], list[str]], tag: str, env: dict[str, str] | None = None
) -> Callable[[Topology, Namespace, Namespace, int], tuple[str, list[int]]]:
    """Any program with wireguard-go's contract (``PROG -f IFNAME`` + UAPI), set up with wg."""

    def setup(topo: Topology, a: Namespace, b: Namespace, net: int) -> tuple[str, list[int]]:
        keys = {"a": _keypair(), "b": _keypair()}
        pids = []
        for side, ns, other, peer_addr in (("a", a, "b", b.addr4), ("b", b, "a", a.addr4)):
            dev = f"{tag}{net}{side}"
            variables = {**os.environ, "LOG_LEVEL": "error", **(env or {})}
            proc = ns.popen(daemon(dev), env=variables)
            pids.append(proc.pid)
            _wait_for(lambda dev=dev: Path(f"/var/run/wireguard/{dev}.sock").exists())
            keyfile = Path(f"/run/bench-{dev}.key")
            keyfile.write_text(keys[side][0] + "\n")
            keyfile.chmod(0o600)
            other_inner = f"10.99.{net}.{2 if side == 'a' else 1}/32"
            ns.run(
                [
                    "wg",
                    "set",
                    dev,
                    "private-key",
                    str(keyfile),
                    "listen-port",
                    str(PORT),
                    "peer",
                    keys[other][1],
                    "allowed-ips",
                    other_inner,
                    "endpoint",
                    f"{peer_addr}:{PORT}",
                ]
            )
            ns.ip("addr", "add", f"10.99.{net}.{1 if side == 'a' else 2}/24", "dev", dev)
            ns.ip("link", "set", dev, "mtu", str(MTU), "up")
        return f"10.99.{net}.2", pids

    return setup


def _setup_minivpn_tunnel(
    transport: str, *extra: str
) -> Callable[[Topology, Namespace, Namespace, int], tuple[str, list[int]]]:
    def setup(topo: Topology, a: Namespace, b: Namespace, net: int) -> tuple[str, list[int]]:
        common = [f"--{transport}", "--mtu", str(MTU), *extra]
        pb = b.popen(
            [
                *minivpn_cmd(),
                "tunnel",
                f"mvt{net}b",
                "--listen",
                f":{PORT}",
                "--address",
                f"10.99.{net}.2/24",
                *common,
            ]
        )
        pa = a.popen(
            [
                *minivpn_cmd(),
                "tunnel",
                f"mvt{net}a",
                "--connect",
                f"{b.addr4}:{PORT}",
                "--address",
                f"10.99.{net}.1/24",
                *common,
            ]
        )
        return f"10.99.{net}.2", [pa.pid, pb.pid]

    return setup


def _setup_minivpn_tap(
    env: dict[str, str] | None = None,
) -> Callable[[Topology, Namespace, Namespace, int], tuple[str, list[int]]]:
    """``minivpn up`` with ``Mode = tap`` (layer 2) at both ends, the TAP devices' default MTU."""

    def setup(topo: Topology, a: Namespace, b: Namespace, net: int) -> tuple[str, list[int]]:
        keys = {"a": _keypair(), "b": _keypair()}
        pids = []
        for side, ns, other, peer_addr in (("a", a, "b", b.addr4), ("b", b, "a", a.addr4)):
            config = Path(f"/run/ml{net}{side}.conf")
            config.write_text(
                "[Interface]\nMode = tap\n"
                f"PrivateKey = {keys[side][0]}\nListenPort = {PORT}\n"
                f"Address = 10.99.{net}.{1 if side == 'a' else 2}/24\n\n"
                f"[Peer]\nPublicKey = {keys[other][1]}\nEndpoint = {peer_addr}:{PORT}\n"
            )
            config.chmod(0o600)
            command = [*minivpn_cmd(), "up", str(config), "--foreground"]
            proc = ns.popen(command, env={**os.environ, **(env or {})})
            pids.append(proc.pid)
            _wait_for(lambda config=config: Path(f"/var/run/wireguard/{config.stem}.sock").exists())
        return f"10.99.{net}.2", pids

    return setup


#: Upstream wireguard-go 0.0.20250522 (TUN GSO/GRO offloads), the reference of the ratios;
#: MINIVPN_WG_GO_2025 names another path.
WG_GO_2025 = Path(
    os.environ.get("MINIVPN_WG_GO_2025", ROOT.parent / "shared/bench/bin/wireguard-go-0.0.20250522")
)


def _minivpnd(dev: str) -> list[str]:
    return [sys.executable, "-m", "minivpn.daemon", "-f", dev]


SETUPS = {
    "veth": Setup("veth", 0, setup_veth),
    "wireguard-go-2025": Setup(
        "wireguard-go-2025",
        6,
        _setup_userspace_wireguard(lambda dev: [str(WG_GO_2025), "-f", dev], "wn"),
    ),
    "wireguard-go": Setup(
        "wireguard-go", 1, _setup_userspace_wireguard(lambda dev: ["wireguard-go", "-f", dev], "wg")
    ),
    # minivpnd as it starts by default (MINIVPN_OFFLOAD unset: the offload engine, no TSO).
    "minivpn": Setup("minivpn", 2, _setup_userspace_wireguard(_minivpnd, "mv")),
    "minivpn-tso": Setup(
        "minivpn-tso", 7, _setup_userspace_wireguard(_minivpnd, "mt", {"MINIVPN_OFFLOAD": "tso"})
    ),
    "minivpn-off": Setup(
        "minivpn-off", 8, _setup_userspace_wireguard(_minivpnd, "mo", {"MINIVPN_OFFLOAD": "off"})
    ),
    # Layer 2 (Mode = tap): minivpn up with a TAP device at both ends.
    "minivpn-l2": Setup("minivpn-l2", 9, _setup_minivpn_tap()),
    "minivpn-l2-off": Setup("minivpn-l2-off", 11, _setup_minivpn_tap({"MINIVPN_OFFLOAD": "off"})),
    "minivpn-tunnel-udp": Setup("minivpn-tunnel-udp", 3, _setup_minivpn_tunnel("udp")),
    "minivpn-tunnel-tap": Setup("minivpn-tunnel-tap", 10, _setup_minivpn_tunnel("udp", "--tap")),
    "minivpn-tunnel-tcp": Setup("minivpn-tunnel-tcp", 4, _setup_minivpn_tunnel("tcp")),
    "minivpn-tunnel-udp-offload": Setup(
        "minivpn-tunnel-udp-offload", 5, _setup_minivpn_tunnel("udp", "--offload")
    ),
}
#: The reference of the ratio column, and the second one.
REFERENCE, SECOND_REFERENCE = "wireguard-go-2025", "wireguard-go"
#: A round starts once the 1-minute load average is under this (or after QUIET_WAIT seconds;
#: the table is then marked noisy).
QUIET_LOAD = 1.0
QUIET_WAIT = 120.0


def load_average() -> float:
    """The 1-minute load average (``/proc/loadavg``)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet() -> float:
    """Wait (at most QUIET_WAIT s) for the load average to fall under QUIET_LOAD; return it.

    Our own iperf3 runs keep both cores busy, so right after a round the average is 2-3 and
    takes about a minute to decay: waiting measures the machine, not the previous round.
    """
    deadline = time.monotonic() + QUIET_WAIT
    while (load := load_average()) >= QUIET_LOAD and time.monotonic() < deadline:
        time.sleep(2.0)
    return load


def rss_kib(pids: list[int]) -> int:
    """Resident memory of the processes (and their children), in KiB."""
    total = 0
    for pid in pids:
        for task in (pid, *_children(pid)):
            try:
                for line in Path(f"/proc/{task}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far (``/proc/PID/stat``), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids] + [g for k in kids for g in _children(int(k))]


def iperf(
    a: Namespace, b: Namespace, dst: str, duration: int, streams: int, loaded_rtts: list[float]
) -> float:
    """Mbit/s of an iperf3 TCP run; a ping runs alongside and its RTTs go to *loaded_rtts*.

    The ping (every 50 ms, from the second second on) measures the latency a tunnel adds under
    load: mostly the queues in front of its slowest step.  A lost probe counts as 1 s.
    """
    server = b.popen(["iperf3", "-s", "-1", "-B", dst])
    try:
        _wait_for(lambda: _port_open(b, 5201), timeout=10)
        client = a.popen(["iperf3", "-c", dst, "-t", str(duration), "-P", str(streams), "-J"])
        time.sleep(1.0)
        probes = max(1, int((duration - 1.5) / 0.05))
        pinged = a.run(["ping", "-n", "-c", str(probes), "-i", "0.05", "-W", "1", dst], check=False)
        stdout, _ = client.communicate(timeout=duration + 30)
        rtts = [float(t) for t in re.findall(r"time=([\d.]+) ms", pinged.stdout)]
        loaded_rtts.extend(rtts + [1000.0] * (probes - len(rtts)))
        data = json.loads(stdout)
        if "error" in data:
            raise RuntimeError(data["error"])
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.terminate()
            server.wait(timeout=5)


def _port_open(ns: Namespace, port: int) -> bool:
    out = ns.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


def ping_rtt(a: Namespace, dst: str) -> float:
    out = a.run(["ping", "-c", "20", "-i", "0.05", "-q", dst], check=False).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(m.group(1)) if m else float("nan")


def profile(name: str, a: Namespace, b: Namespace, dst: str, pids: list[int]) -> None:
    """py-spy both tunnel ends of *name* during one iperf3 run; print their top frames."""
    if not shutil.which("py-spy"):
        print("bench: py-spy is not installed: no profile", file=sys.stderr)
        return
    spies = []
    for side, pid in zip("AB", pids, strict=False):
        out = Path(f"/run/bench-spy-{side}.txt")
        command = ["py-spy", "record", "-r", "200", "-d", "5", "-f", "raw", "-n", "-o", str(out)]
        spies.append((side, out, subprocess.Popen([*command, "-p", str(pid)], **QUIET)))
    mbit = iperf(a, b, dst, 6, 1, [])
    print(f"\npy-spy on both ends of {name} (one stream, {mbit:.0f} Mbit/s while profiled):")
    for side, out, spy in spies:
        spy.wait(timeout=60)
        leaf: dict[str, int] = {}
        total = 0
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frame = stack.rsplit(";", 1)[-1]
            leaf[frame] = leaf.get(frame, 0) + int(count)
            total += int(count)
        print(f"\n| side {side}: leaf frame | share |\n|---|---|")
        for frame, count in sorted(leaf.items(), key=lambda item: -item[1])[:12]:
            print(f"| `{frame}` | {100 * count / max(total, 1):.1f}% |")


QUIET: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("programs", nargs="*", default=list(SETUPS), help=", ".join(SETUPS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument(
        "--streams", default="1", help="comma-separated iperf3 stream counts, e.g. 1,4"
    )
    parser.add_argument(
        "--handshake-rates",
        default="200,1000,4000",
        help="offered initiations/s for the handshake table (handshakes.py); 'none': skip it",
    )
    parser.add_argument(
        "--profile", metavar="PROGRAM", help="afterwards, py-spy both ends of PROGRAM (minivpn)"
    )
    args = parser.parse_args()
    if os.environ.get("MINIVPN_ISOLATED") != "1":
        isolate = str(ROOT / "netns/isolate")
        os.execvp(isolate, [isolate, sys.executable, *sys.argv])
    for tool in ("iperf3", "ping", "ss", "wireguard-go", "wg"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed")
    unknown = set(args.programs) - set(SETUPS)
    if unknown:
        parser.error(f"unknown programs: {', '.join(sorted(unknown))}")
    programs = [p for p in SETUPS if p in args.programs]
    for reference in (SECOND_REFERENCE, REFERENCE):
        if reference not in programs:
            programs.insert(0, reference)
    if not WG_GO_2025.is_file():
        print(f"bench: no {WG_GO_2025} (MINIVPN_WG_GO_2025): skipping it", file=sys.stderr)
        programs.remove(REFERENCE)
    stream_counts = [int(n) for n in args.streams.split(",")]
    results: dict[tuple[str, int], list[float]] = {
        (p, n): [] for p in programs for n in stream_counts
    }
    rtts: dict[str, list[float]] = {p: [] for p in programs}
    loaded: dict[str, list[float]] = {p: [] for p in programs}
    rss: dict[str, int] = {}
    cpu: dict[tuple[str, int], list[float]] = {(p, n): [] for p in programs for n in stream_counts}
    loads: list[float] = []
    with Topology("bn") as topo:
        ends = {}
        for name in programs:
            setup = SETUPS[name]
            a, b = topo.pair()
            dst, pids = setup.up(topo, a, b, setup.net)
            _wait_for(lambda a=a, dst=dst: _ping_ok(a, dst), timeout=20)
            ends[name] = (a, b, dst, pids)
            print(f"bench: {name} up", file=sys.stderr)
        for r in range(args.rounds):
            loads.append(wait_for_quiet())
            print(f"bench: round {r + 1}, load average {loads[-1]:.2f}", file=sys.stderr)
            order = programs[r % len(programs) :] + programs[: r % len(programs)]
            for name in order:
                a, b, dst, pids = ends[name]
                for streams in stream_counts:
                    cpu_before = cpu_seconds(pids)
                    mbit = iperf(a, b, dst, args.duration, streams, loaded[name])
                    if pids:
                        gigabits = mbit * args.duration / 1000
                        cost = (cpu_seconds(pids) - cpu_before) / len(pids) / gigabits
                        cpu[(name, streams)].append(cost)
                    results[(name, streams)].append(mbit)
                    print(
                        f"bench: round {r + 1} {name} -P {streams}: {mbit:.0f} Mbit/s",
                        file=sys.stderr,
                    )
                rtt = ping_rtt(a, dst)
                rtts[name].append(rtt)
                print(f"bench: round {r + 1} {name}: ping {rtt:.3f} ms", file=sys.stderr)
        for name in programs:
            pids = ends[name][3]
            rss[name] = rss_kib(pids) // max(len(pids), 1)
        print_table(args, programs, stream_counts, results, rtts, loaded, rss, loads)
        print_cpu(programs, stream_counts, cpu)
        if args.profile in ends:
            wait_for_quiet()
            a, b, dst, pids = ends[args.profile]
            profile(args.profile, a, b, dst, pids)
    if "minivpn" in programs and args.handshake_rates != "none":
        import handshakes  # tests/bench/handshakes.py, next to this file

        daemons = [d for d in ("wireguard-go-2025", "wireguard-go", "minivpn") if d in programs]
        rates = [int(rate) for rate in args.handshake_rates.split(",")]
        handshakes.print_table(
            handshakes.measure(daemons, rates=rates, duration=args.duration), daemons
        )
    return 0


def print_table(
    args: argparse.Namespace,
    programs: list[str],
    stream_counts: list[int],
    results: dict[tuple[str, int], list[float]],
    rtts: dict[str, list[float]],
    loaded: dict[str, list[float]],
    rss: dict[str, int],
    loads: list[float],
) -> None:
    """The results as a Markdown table, ratios against both wireguard-go builds."""
    references = [ref for ref in (REFERENCE, SECOND_REFERENCE) if ref in programs]
    noisy = any(load >= QUIET_LOAD for load in loads)
    print(
        f"\n{args.rounds} rounds x {args.duration} s, tunnel MTU {MTU}, Mbit/s at the iperf3 "
        "receiver (median, with min..max); ratio = median / the median of "
        + " and of ".join(references)
        + " in the same run"
        + ("\n\n**NOISY**: a round started with the load average at 1.0 or more" if noisy else "")
        + "\n"
    )
    header = "| program |"
    for streams in stream_counts:
        header += f" TCP -P {streams} |" + "".join(f" vs {ref} |" for ref in references)
    print(header + " ping avg ms | ping under load: median, p99 ms | RSS per end (MiB) |")
    print("|---|" + ("---|" * (1 + len(references))) * len(stream_counts) + "---|---|---|")
    for name in programs:
        row = f"| {name} |"
        for streams in stream_counts:
            vals = results[(name, streams)]
            med = statistics.median(vals)
            row += f" {med:.0f} ({min(vals):.0f}..{max(vals):.0f}) |"
            for ref in references:
                row += f" {med / statistics.median(results[(ref, streams)]):.2f} |"
        memory = f"{rss[name] / 1024:.1f}" if rss[name] else "-"
        under = sorted(loaded[name])
        p99 = under[min(len(under) - 1, int(len(under) * 0.99))] if under else math.nan
        lost = sum(1 for rtt in under if rtt >= 1000.0)
        under_load = f"{statistics.median(under) if under else math.nan:.2f}, {p99:.2f}"
        if lost:
            under_load += f" ({lost} of {len(under)} lost)"
        print(row + f" {statistics.median(rtts[name]):.3f} | {under_load} | {memory} |")
    print("\n1-minute load average as each round started: " + ", ".join(f"{x:.2f}" for x in loads))


def print_cpu(
    programs: list[str], stream_counts: list[int], cpu: dict[tuple[str, int], list[float]]
) -> None:
    """CPU seconds one tunnel end spends per gigabit carried (user + system, median of rounds).

    Far less noisy than throughput on a shared machine: another process that takes the CPU
    lowers the throughput, but not the CPU time each gigabit costs.
    """
    print("\n| program |" + "".join(f" CPU s/Gbit per end, -P {n} |" for n in stream_counts))
    print("|---|" + "---|" * len(stream_counts))
    for name in programs:
        cells = [cpu[(name, n)] for n in stream_counts]
        if all(cells):
            print(f"| {name} |" + "".join(f" {statistics.median(c):.3f} |" for c in cells))


if __name__ == "__main__":
    sys.exit(main())
