"""``nox -s soak``: minivpn <-> wireguard-go for 10 minutes under traffic, rekeys and a restart.

::

    netns/isolate python tests/bench/soak.py [--minutes M] [--rate MBIT] [--rekey S]

Two namespaces joined by a veth pair (198.51.100.1 and .2): A runs ``minivpnd`` (the
initiator, told B's endpoint), B runs wireguard-go (Debian's, told A's endpoint too).  For the
whole run:

* ``iperf3`` A -> B through the tunnel, TCP paced at ``--rate`` Mbit/s (default 50: a soak is
  about staying up and flat, not throughput, and the machine is shared), reporting every second;
* ``ping -i 0.2`` both ways through the tunnel (B's pings are also what makes B initiate at once
  after its restart);
* **a rekey forced every ``--rekey`` seconds (default 60)**: minivpnd is started through a
  small launcher that sets ``REKEY_AFTER_TIME`` (120 s in the protocol) to that value in
  ``minivpn.wireguard.keypair`` before it runs, a *test build* of the timers; everything else is
  the product.  The handshakes are counted from ``wg show latest-handshakes``;
* **B restarts halfway**: wireguard-go is stopped (SIGTERM) and started again with the same
  key, port and peer, so it has forgotten every session;
* A's resident memory (``VmRSS``) is sampled every 10 seconds.

It fails (exit status 1) when A's memory grows by more than 5 MB (the largest sample after the
first minute, against the sample at one minute: start-up and the first allocations are not
growth), or when traffic stalls for more than 5 seconds (the longest run of iperf3 intervals
that moved nothing, or the longest gap between two ping replies in either direction).  It
prints the figures that docs/reliability.md records.  A benchmark, never part of the tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netns import Namespace, Topology  # noqa: E402

SOCKET_DIR = Path("/var/run/wireguard")
A_OUTER, B_OUTER = "198.51.100.1", "198.51.100.2"
A_INNER, B_INNER = "10.66.0.1", "10.66.0.2"
PORT = 51820
#: The launcher of the test build: minivpnd with a shorter REKEY_AFTER_TIME.
LAUNCHER = (
    "import sys, minivpn.wireguard.keypair as keypair; "
    "keypair.REKEY_AFTER_TIME = float(sys.argv.pop(1)); "
    "from minivpn.daemon import main; sys.exit(main())"
)


def log(line: str) -> None:
    print(f"soak: {line}", file=sys.stderr, flush=True)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def genkey() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    public = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    ).stdout
    return private.strip(), public.strip()


class Soak:
    def __init__(self, topo: Topology, workdir: Path, rekey: float) -> None:
        self.workdir = workdir
        self.a, self.b = topo.namespace("a"), topo.namespace("b")
        topo.veth(self.a, self.b, "eth0", "eth0")
        self.a.ip("addr", "add", f"{A_OUTER}/24", "dev", "eth0")
        self.b.ip("addr", "add", f"{B_OUTER}/24", "dev", "eth0")
        self.a_key, self.a_pub = genkey()
        self.b_key, self.b_pub = genkey()
        env = {**os.environ, "LOG_LEVEL": "error"}
        self.a_log = (workdir / "minivpnd.log").open("w")
        self.a_proc = self.a.popen(
            [sys.executable, "-c", LAUNCHER, str(rekey), "-f", "sk0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.a_log,
        )
        self.configure(self.a, "sk0", self.a_key, A_INNER, self.b_pub, B_INNER, B_OUTER)
        self.b_proc = self.start_b()

    def start_b(self) -> subprocess.Popen[str]:
        proc = self.b.popen(["wireguard-go", "-f", "sk1"], env={**os.environ, "LOG_LEVEL": "error"})
        self.configure(self.b, "sk1", self.b_key, B_INNER, self.a_pub, A_INNER, A_OUTER)
        return proc

    def configure(
        self,
        ns: Namespace,
        dev: str,
        key: str,
        inner: str,
        peer: str,
        peer_inner: str,
        peer_outer: str,
    ) -> None:
        wait_for((SOCKET_DIR / f"{dev}.sock").exists, 20, f"{dev}'s socket")
        key_file = self.workdir / f"{dev}.key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        ns.run(["wg", "set", dev, "private-key", str(key_file), "listen-port", str(PORT),
                "peer", peer, "allowed-ips", f"{peer_inner}/32",
                "endpoint", f"{peer_outer}:{PORT}"])  # fmt: skip
        ns.ip("addr", "add", f"{inner}/24", "dev", dev)
        ns.ip("link", "set", dev, "up")

    def handshake_time(self) -> int:
        out = self.a.run(["wg", "show", "sk0", "latest-handshakes"]).stdout.split()
        return int(out[1]) if len(out) == 2 else 0

    def restart_b(self) -> float:
        """Stop wireguard-go, start it again, configured as before; return the seconds it took."""
        start = time.monotonic()
        self.b_proc.send_signal(signal.SIGTERM)
        self.b_proc.wait(timeout=20)
        wait_for(lambda: not (SOCKET_DIR / "sk1.sock").exists(), 10, "B's socket to go")
        self.b_proc = self.start_b()
        return time.monotonic() - start


def ping_gaps(out: str) -> tuple[float, int, int]:
    """(the longest time between two replies in s, replies, sent) of ``ping -D`` output."""
    stamps = [float(m) for m in re.findall(r"^\[([0-9.]+)\] \d+ bytes from", out, re.MULTILINE)]
    sent = re.search(r"(\d+) packets transmitted", out)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return max(gaps, default=float("inf")), len(stamps), int(sent.group(1)) if sent else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=50, help="iperf3 pace, Mbit/s")
    parser.add_argument("--rekey", type=float, default=60.0, help="REKEY_AFTER_TIME, s")
    parser.add_argument(
        "--out", type=Path, default=Path("/tmp/minivpn-soak"), help="raw outputs go here"
    )
    args = parser.parse_args()
    if os.environ.get("MINIVPN_ISOLATED") != "1":
        isolate = str(ROOT / "netns/isolate")
        os.execvp(isolate, [isolate, sys.executable, *sys.argv])
    for tool in ("wireguard-go", "wg", "iperf3", "ping"):
        if not shutil.which(tool):
            sys.exit(f"soak: {tool} is not installed")
    seconds = int(args.minutes * 60)
    workdir = Path("/run/soak")
    workdir.mkdir(mode=0o700, exist_ok=True)
    with Topology("sk") as topo:
        soak = Soak(topo, workdir, args.rekey)
        wait_for(
            lambda: soak.a.run(["ping", "-c1", "-W1", B_INNER], check=False).returncode == 0,
            30,
            "the tunnel",
        )
        log(f"up; {args.minutes:g} min, iperf3 at {args.rate} Mbit/s, rekey every {args.rekey:g} s")
        soak.b.popen(["iperf3", "-s", "-1", "-B", B_INNER])
        time.sleep(0.5)
        iperf = soak.a.popen(
            ["iperf3", "-c", B_INNER, "-t", str(seconds), "-i", "1", "-b", f"{args.rate}M", "-J",
             "--connect-timeout", "5000"]
        )  # fmt: skip
        # Into files: a pipe nobody reads for minutes fills up (64 KiB) and stops ping.
        ping_files = [(workdir / f"ping-{ab}.txt").open("w+") for ab in ("a-b", "b-a")]
        pings = [
            ns.popen(["ping", "-D", "-n", "-i", "0.2", "-w", str(seconds), target], stdout=file)
            for ns, target, file in zip(
                (soak.a, soak.b), (B_INNER, A_INNER), ping_files, strict=True
            )
        ]
        start = time.monotonic()
        samples: list[tuple[int, int]] = []
        handshakes: set[int] = set()
        restarted = False
        restart_seconds = restart_at = 0.0
        while (elapsed := time.monotonic() - start) < seconds:
            samples.append((round(elapsed), rss_kib(soak.a_proc.pid)))
            handshakes.add(soak.handshake_time())
            if not restarted and elapsed >= seconds / 2:
                restart_at = time.time()
                restart_seconds = soak.restart_b()
                restarted = True
                log(f"restarted wireguard-go at {elapsed:.0f} s ({restart_seconds:.2f} s)")
            log(f"{elapsed:4.0f} s: RSS {samples[-1][1] / 1024:.1f} MiB, "
                f"{len(handshakes - {0})} handshakes seen")  # fmt: skip
            time.sleep(max(0.0, 10 - (time.monotonic() - start - elapsed)))
        out, err = iperf.communicate(timeout=60)
        for ping in pings:
            ping.wait(timeout=60)
        ping_outs = [(workdir / f"ping-{ab}.txt").read_text() for ab in ("a-b", "b-a")]
        handshakes.add(soak.handshake_time())
        a_alive = soak.a_proc.poll() is None
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "iperf3.json").write_text(out)
        for label, text in zip(("ping-a-b", "ping-b-a"), ping_outs, strict=True):
            (args.out / f"{label}.txt").write_text(text)
        (args.out / "minivpnd.log").write_text((workdir / "minivpnd.log").read_text())
        (args.out / "events.json").write_text(
            json.dumps({"start": time.time() - (time.monotonic() - start),
                        "restart": restart_at, "rss": samples}) + "\n"
        )  # fmt: skip
    data = json.loads(out)
    if "error" in data:
        log(f"iperf3 failed: {data['error']}")
        return 1
    moved = [int(i["sum"]["bytes"]) for i in data["intervals"]]
    longest_zero = run = 0
    stalls = []
    for second, value in enumerate(moved):
        run = run + 1 if value == 0 else 0
        if run == 1:
            stalls.append([second, 0])
        if run:
            stalls[-1][1] = run
        longest_zero = max(longest_zero, run)
    gaps = [ping_gaps(text) for text in ping_outs]
    baseline = next(kib for at, kib in samples if at >= 60)
    peak = max(kib for at, kib in samples if at >= 60)
    growth_mb = (peak - baseline) * 1024 / 1e6
    stall = max(float(longest_zero), *(gap for gap, _, _ in gaps))
    received = data["end"]["sum_received"]
    print(f"\nload average {Path('/proc/loadavg').read_text().strip()}")
    print(f"minutes {args.minutes:g}, iperf3 pace {args.rate} Mbit/s, rekey every {args.rekey:g} s")
    print(
        f"iperf3: {received['bytes'] / 1e9:.2f} GB, {received['bits_per_second'] / 1e6:.1f} Mbit/s,"
        f" retransmits {data['end']['sum_sent'].get('retransmits', 'n/a')},"
        f" longest run of empty 1 s intervals {longest_zero}"
    )
    print("iperf3 stalls (second of the run: empty seconds): " + (
        ", ".join(f"{at}: {length}" for at, length in stalls) or "none"
    ))  # fmt: skip
    for label, (gap, replies, sent) in zip(("A->B", "B->A"), gaps, strict=True):
        print(f"ping {label}: {replies}/{sent} replies, longest gap between replies {gap:.2f} s")
    print(f"handshakes seen by A: {len(handshakes - {0})} distinct (latest-handshake values)")
    print(f"wireguard-go restart at half time: {restart_seconds:.2f} s; raw outputs in {args.out}")
    print("A's RSS every 10 s (MiB): " + " ".join(f"{kib / 1024:.1f}" for _, kib in samples))
    print(f"RSS growth after the first minute: {growth_mb:.2f} MB (limit 5)")
    print(f"longest stall: {stall:.2f} s (limit 5)")
    ok = a_alive and growth_mb <= 5 and stall <= 5
    print("PASS" if ok else "FAIL" + ("" if a_alive else " (minivpnd died)"))
    del err
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
