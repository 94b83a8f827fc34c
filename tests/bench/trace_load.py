"""What ``minivpn trace`` costs a tunnel under iperf3 load (a benchmark, never a pass/fail test).

Two minivpnd ends in two namespaces (the set-up of ``run.py``), iperf3 TCP from A to B, and
in each round, in rotating order, the same tunnel

* ``detached``: nobody traces (the data path pays one attribute check per call);
* ``attached``: ``minivpn trace`` on A, reading and formatting every line it gets (the
  human lines, to ``/dev/null``);
* ``slow-reader``: a client on A's trace socket that sends its request and never reads;

and, with ``--main-src DIR`` (a checkout of ``main``'s ``src``), a second tunnel run by that
code, ``main-detached``: the per-packet cost of the tracing hooks when nobody traces, before
against after, in the same run.  For each: Mbit/s at the iperf3 receiver and CPU seconds per
gigabit of one daemon end (user + system, both ends averaged; steadier than throughput on a
shared machine), medians of the rounds, the load average as each round started, and for
``attached`` the events the trace client printed and the ``lost`` ones it was told of.

Run: ``nox -s bench`` (part of it), or ``python tests/bench/trace_load.py [--rounds N]
[--duration S] [--main-src DIR]`` (root; it re-runs itself inside ``netns/isolate``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402
    Setup,
    _minivpnd,
    _ping_ok,
    _setup_userspace_wireguard,
    _wait_for,
    cpu_seconds,
    iperf,
    load_average,
)

from netns import Namespace, Topology  # noqa: E402

MODES = ("detached", "attached", "slow-reader")


def _attach(
    ns: Namespace, dev: str, mode: str
) -> tuple[subprocess.Popen[str] | None, subprocess.Popen[str] | None]:
    """Start what *mode* attaches to *dev*'s trace: (``minivpn trace``, a slow reader)."""
    if mode == "attached":
        cmd = [sys.executable, "-m", "minivpn", "trace", dev]
        return ns.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), None
    if mode == "slow-reader":
        # Connects, asks for everything, then never reads (until stopped).
        script = (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "s.connect(sys.argv[1])\n"
            's.sendall(b\'{"peer": null, "drops_only": false}\\n\')\n'
            "print('attached', flush=True)\n"
            "time.sleep(3600)\n"
        )
        path = f"/var/run/wireguard/{dev}.trace"
        proc = ns.popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "attached\n"
        return None, proc
    return None, None


def _detach(
    proc: subprocess.Popen[str] | None, client: subprocess.Popen[str] | None
) -> tuple[int, int]:
    """Stop the trace; (events printed, events lost) for a trace process, else (0, 0)."""
    if isinstance(client, subprocess.Popen):
        client.kill()
        client.wait(timeout=10)
    if proc is None:
        return 0, 0
    proc.send_signal(2)  # SIGINT: minivpn trace prints its totals, "N events, M lost"
    _, err = proc.communicate(timeout=20)
    totals = [line for line in err.splitlines() if line.endswith(" lost")]
    assert totals, err
    shown, lost = totals[-1].removeprefix("minivpn: ").split(", ")
    return int(shown.split()[0]), int(lost.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--main-src", metavar="DIR", help="main's src, for main-detached")
    args = parser.parse_args()
    if os.environ.get("MINIVPN_ISOLATED") != "1":
        isolate = str(ROOT / "netns/isolate")
        os.execvp(isolate, [isolate, sys.executable, *sys.argv])
    setups = {"branch": Setup("branch", 2, _setup_userspace_wireguard(_minivpnd, "mv"))}
    if args.main_src:
        env = {"PYTHONPATH": str(Path(args.main_src).resolve())}
        setups["main"] = Setup("main", 3, _setup_userspace_wireguard(_minivpnd, "mm", env))
    runs = [("branch", mode) for mode in MODES]
    if args.main_src:
        runs.insert(0, ("main", "detached"))
    mbit: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    cpu: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    traced: list[tuple[int, int]] = []
    loads: list[float] = []
    with Topology("bt") as topo:
        ends = {}
        for name, setup in setups.items():
            a, b = topo.pair()
            dst, pids = setup.up(topo, a, b, setup.net)
            _wait_for(lambda a=a, dst=dst: _ping_ok(a, dst), timeout=20)
            ends[name] = (a, b, dst, pids, f"mv{setup.net}a" if name == "branch" else "")
        for r in range(args.rounds):
            loads.append(load_average())
            order = runs[r % len(runs) :] + runs[: r % len(runs)]
            for code, mode in order:
                a, b, dst, pids, dev = ends[code]
                proc, client = _attach(a, dev, mode)
                time.sleep(0.5)
                before = cpu_seconds(pids)
                rate = iperf(a, b, dst, args.duration, 1, [])
                spent = cpu_seconds(pids) - before
                printed = _detach(proc, client)
                if mode == "attached":
                    traced.append(printed)
                mbit[(code, mode)].append(rate)
                cpu[(code, mode)].append(spent / len(pids) / (rate * args.duration / 1000))
                print(f"bench: round {r + 1} {code} {mode}: {rate:.0f} Mbit/s", file=sys.stderr)
    print(f"\n{args.rounds} rounds x {args.duration} s, iperf3 TCP -P 1, medians (min..max)\n")
    print("| tunnel | trace | Mbit/s | vs detached | CPU s/Gbit per end |")
    print("|---|---|---|---|---|")
    reference = statistics.median(mbit[("branch", "detached")])
    for run in runs:
        med = statistics.median(mbit[run])
        span = f"{min(mbit[run]):.0f}..{max(mbit[run]):.0f}"
        print(
            f"| {run[0]} | {run[1]} | {med:.0f} ({span}) | {med / reference:.2f} | "
            f"{statistics.median(cpu[run]):.3f} |"
        )
    print(
        "\nattached: events printed / lost per run: "
        + ", ".join(f"{shown} / {lost}" for shown, lost in traced)
    )
    print("1-minute load average as each round started: " + ", ".join(f"{x:.2f}" for x in loads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
