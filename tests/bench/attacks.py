"""Attacks and faults against a running daemon (issue 13), measured: docs/reliability.md.

Run it with ``netns/isolate python tests/bench/attacks.py [PROGRAM ...] [--rates R,...]
[--duration S] [--before DIR]``, or as a step of ``nox -s bench``.  PROGRAM is ``minivpn``
(the default) or ``wireguard-go``; ``--before DIR`` also measures the minivpn whose ``src/`` is
in DIR (for instance ``git archive main | tar -x -C DIR``), labelled "minivpn (before)".

**A handshake flood against a live session** (the figures the issue's aims are about).  Four
namespaces on one bridge: the target T (198.51.100.1, inner 10.88.0.1), a wireguard-go peer P
(.2, inner 10.88.0.2) with a live session to T, an attacker X (.3) and a new peer N (.4,
wireguard-go, inner 10.88.0.4), which T knows but which has not shaken hands yet.  X sends T
initiations with a *valid mac1* (it only needs T's public key; the static key inside is its own,
so T cannot know it) at RATE a second for DURATION seconds, from one address and port.  During
the flood P pings T's inner address every 10 ms (``ping -i 0.01``), and, from the second second
on, N pings T's inner address once a second, which makes it initiate a handshake.  Reported: the
ping's loss and average and largest round trip, the seconds N needed to complete its handshake
(its ``latest-handshake`` in ``wg show``), what T sent back to X (cookie replies a second), and
the datagrams the kernel dropped for a full receive buffer in T's namespace (``RcvbufErrors``
of ``/proc/net/snmp``).

**UAPI abuse** (minivpn only, and "before" with ``--before``), on the same T:

* *set never terminated*: ``set=1``, P's public key, then one ``allowed_ip=10.88.0.2/32`` line
  repeated for 44 MB, without the blank line that ends the request; reported: T's resident
  memory before and at the end (VmRSS), and whether another connection's ``wg show`` saw the
  prefix before the end;
* *idle connections*: 1100 connections opened and left idle; reported: how long ``wg show``
  took meanwhile (up to 30 s), T's open file descriptors, and the log lines about accept errors
  during 3 seconds;
* *a set of 300,000 prefixes* (for P) while P pings T every 10 ms; reported: how long the set
  took, and the ping's largest round trip (the data path's longest stall, plus a normal RTT).

This is a benchmark, never a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from minivpn.wireguard.cookie import CookieGenerator  # noqa: E402
from minivpn.wireguard.keys import PrivateKey, PublicKey  # noqa: E402
from minivpn.wireguard.noise import (  # noqa: E402
    PeerHandshakeState,
    StaticIdentity,
    create_initiation,
)
from netns import Namespace, Topology  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

PORT = 51820
SOCKET_DIR = Path("/var/run/wireguard")
T_INNER, P_INNER, N_INNER = "10.88.0.1", "10.88.0.2", "10.88.0.4"
#: Distinct initiations the attacker cycles through.
DISTINCT_INITIATIONS = 1024


def log(line: str) -> None:
    print(f"attacks: {line}", file=sys.stderr, flush=True)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _keypair() -> tuple[PrivateKey, str]:
    key = PrivateKey.generate()
    return key, key.public_key().to_base64()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _rcvbuf_errors(ns: Namespace) -> int:
    lines = [line.split() for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    header, values = [line for line in lines if line[0] == "Udp:"][:2]
    return int(values[header.index("RcvbufErrors")])


class Lab:
    """The four namespaces, T's daemon, and the wireguard-go peers."""

    def __init__(self, topo: Topology, workdir: Path, program: str, pythonpath: str | None):
        self.topo = topo
        self.workdir = workdir
        hub = topo.namespace("hub")
        hub.ip("link", "add", "br0", "type", "bridge")
        hub.ip("link", "set", "br0", "up")
        self.members: list[Namespace] = []
        for i in range(1, 5):
            ns = topo.namespace(f"s{i}")
            _, inside = topo.veth(hub, ns, f"port{i}", "eth0")
            hub.ip("link", "set", f"port{i}", "master", "br0")
            ns.addr4 = f"198.51.100.{i}"
            ns.ip("addr", "add", f"{ns.addr4}/24", "dev", inside)
            self.members.append(ns)
        self.t, self.p, self.x, self.n = self.members
        self.t_key, self.t_pub = _keypair()
        self.p_key, self.p_pub = _keypair()
        self.n_key, self.n_pub = _keypair()
        env = {**os.environ, "LOG_LEVEL": "error"}
        if program == "wireguard-go":
            command = ["wireguard-go", "-f", "at0"]
        else:
            command = [sys.executable, "-m", "minivpn.daemon", "-f", "at0"]
            if pythonpath:
                env["PYTHONPATH"] = pythonpath
        self.t_log = workdir / f"{program.replace(' ', '-')}.log"
        with self.t_log.open("w") as err:
            self.t_proc = self.t.popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
        self._daemon(self.t, "at0", self.t_key, T_INNER, [(self.p_pub, P_INNER, None)])
        self._add_peer(self.t, "at0", self.n_pub, N_INNER, None)
        self._start_wireguard_go(self.p, "atp", self.p_key, P_INNER)
        self._start_wireguard_go(self.n, "atn", self.n_key, N_INNER)
        _wait_for(
            lambda: self.p.run(["ping", "-c1", "-W1", T_INNER], check=False).returncode == 0,
            20,
            "the live session",
        )

    def _start_wireguard_go(self, ns: Namespace, dev: str, key: PrivateKey, inner: str) -> None:
        ns.popen(["wireguard-go", "-f", dev], env={**os.environ, "LOG_LEVEL": "error"})
        self._daemon(ns, dev, key, inner, [(self.t_pub, T_INNER, f"198.51.100.1:{PORT}")])

    def _daemon(
        self,
        ns: Namespace,
        dev: str,
        key: PrivateKey,
        inner: str,
        peers: list[tuple[str, str, str | None]],
    ) -> None:
        _wait_for((SOCKET_DIR / f"{dev}.sock").exists, 20, f"{dev}'s socket")
        keyfile = self.workdir / f"{dev}.key"
        keyfile.write_text(key.to_base64() + "\n")
        keyfile.chmod(0o600)
        ns.run(["wg", "set", dev, "private-key", str(keyfile), "listen-port", str(PORT)])
        for public, allowed, endpoint in peers:
            self._add_peer(ns, dev, public, allowed, endpoint)
        ns.ip("addr", "add", f"{inner}/24", "dev", dev)
        ns.ip("link", "set", dev, "up")

    @staticmethod
    def _add_peer(ns: Namespace, dev: str, public: str, allowed: str, endpoint: str | None) -> None:
        args = ["wg", "set", dev, "peer", public, "allowed-ips", f"{allowed}/32"]
        ns.run([*args, *(["endpoint", endpoint] if endpoint else [])])


# --- the flood ----------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _waiting_seconds(pid: int) -> float:
    """Seconds *pid* was runnable but waited for a CPU (``/proc/PID/schedstat``)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def _forget_newcomer(lab: Lab) -> None:
    """N and T forget each other's session: N's next ping needs a new handshake."""
    lab.t.run(["wg", "set", "at0", "peer", lab.n_pub, "remove"])
    Lab._add_peer(lab.t, "at0", lab.n_pub, N_INNER, None)
    lab.n.run(["wg", "set", "atn", "peer", lab.t_pub, "remove"])
    Lab._add_peer(lab.n, "atn", lab.t_pub, T_INNER, f"198.51.100.1:{PORT}")


def flood(lab: Lab, rate: int, duration: float) -> dict[str, float]:
    """One flood at *rate* initiations a second; the figures of the module documentation."""
    _forget_newcomer(lab)
    drops_before = _rcvbuf_errors(lab.t)
    cpu_before = _cpu_seconds(lab.t_proc.pid)
    waiting_before = _waiting_seconds(lab.t_proc.pid)
    attacker = lab.x.popen(
        [sys.executable, __file__, "--flood", f"{lab.t.addr4}:{PORT}", str(rate), str(duration)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdin=subprocess.PIPE,
    )
    assert attacker.stdin is not None
    attacker.stdin.write(lab.t_pub + "\n")
    attacker.stdin.flush()
    time.sleep(0.5)  # the flood is on
    ping = lab.p.popen(["ping", "-n", "-q", "-i", "0.01", "-w", str(int(duration - 1)), T_INNER])
    start = time.monotonic()
    handshake = float("nan")
    time.sleep(1.0)
    newcomer = lab.n.popen(["ping", "-n", "-q", "-i", "1", "-w", str(int(duration)), T_INNER])
    while time.monotonic() - start < duration - 0.5:
        shown = lab.n.run(["wg", "show", "atn", "latest-handshakes"]).stdout.split()
        if len(shown) == 2 and shown[1] != "0":
            handshake = time.monotonic() - start - 1.0
            break
        time.sleep(0.1)
    ping_out, _ = ping.communicate(timeout=duration + 20)
    attacker_out, _ = attacker.communicate(timeout=duration + 20)
    elapsed = time.monotonic() - start + 0.5
    cpu = (_cpu_seconds(lab.t_proc.pid) - cpu_before) / elapsed
    waiting = (_waiting_seconds(lab.t_proc.pid) - waiting_before) / elapsed
    newcomer.communicate(timeout=duration + 20)
    loss = re.search(r"([0-9.]+)% packet loss", ping_out)
    rtt = re.search(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)/", ping_out)
    cookies_per_second = float(attacker_out.split()[0]) if attacker_out.strip() else float("nan")
    time.sleep(2.0)  # "under load" wears off, the queue empties
    return {
        "loss": float(loss.group(1)) if loss else float("nan"),
        "avg": float(rtt.group(2)) if rtt else float("nan"),
        "max": float(rtt.group(3)) if rtt else float("nan"),
        "handshake": handshake,
        "cookies": cookies_per_second,
        "rcvbuf": float(_rcvbuf_errors(lab.t) - drops_before),
        "cpu": 100 * cpu,
        "waiting": 100 * waiting,
    }


def run_flood(destination: tuple[str, int], rate: int, duration: float) -> None:
    """The attacker (inside namespace X): T's public key on stdin; prints cookie replies/s."""
    target = PublicKey.from_base64(sys.stdin.readline().strip())
    own = StaticIdentity(PrivateKey.generate())
    macs = CookieGenerator(target)
    wall = time.time()
    messages = []
    for i in range(DISTINCT_INITIATIONS):
        state = PeerHandshakeState(target)
        message = create_initiation(own, state, i, wall + i * 0.05).to_bytes()
        messages.append(macs.add_macs(message, 0.0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(destination)
    cookies = 0
    done = threading.Event()

    def count() -> None:
        nonlocal cookies
        sock.settimeout(0.1)
        while not done.is_set():
            with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                if sock.recv(2048)[:1] == b"\x03":
                    cookies += 1

    counter = threading.Thread(target=count)
    counter.start()
    start = time.monotonic()
    sent = 0
    try:
        while (elapsed := time.monotonic() - start) < duration:
            due = int(elapsed * rate)
            while sent < due:
                with contextlib.suppress(ConnectionRefusedError, BlockingIOError):
                    sock.send(messages[sent % DISTINCT_INITIATIONS])
                sent += 1
            time.sleep(0.001)
    finally:
        done.set()
        counter.join()
    print(cookies / duration)


# --- UAPI abuse ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _sampling_rss(pid: int) -> Iterator[list[int]]:
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                samples.append(_rss_kib(pid))
            time.sleep(0.1)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def _daemon_pid(lab: Lab) -> int:
    """T's serving process (the one that answers on the socket: SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(SOCKET_DIR / "at0.sock"))
        credentials = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(credentials[:4], sys.byteorder)


def _wg_show_seconds(lab: Lab, timeout: float = 30.0) -> float:
    start = time.monotonic()
    try:
        lab.t.run(["wg", "show", "at0", "allowed-ips"], timeout=timeout)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.monotonic() - start


def never_terminated_set(lab: Lab, megabytes: int = 44) -> dict[str, float]:
    pid = _daemon_pid(lab)
    before = _rss_kib(pid)
    public_hex = PublicKey.from_base64(lab.p_pub).to_hex()
    line = b"allowed_ip=10.88.0.2/32\n"
    chunk = line * (1 << 16)
    seen_before_end = False
    with _sampling_rss(pid) as samples, socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(SOCKET_DIR / "at0.sock"))
        conn.sendall(f"set=1\npublic_key={public_hex}\nallowed_ip=10.88.0.99/32\n".encode())
        sent = 0
        conn.settimeout(30)
        with contextlib.suppress(OSError):  # the daemon may close it (idle, or a cap)
            while sent < megabytes << 20:
                conn.sendall(chunk)
                sent += len(chunk)
        shown = lab.t.run(["wg", "show", "at0", "allowed-ips"], check=False, timeout=30).stdout
        seen_before_end = "10.88.0.99/32" in shown
        time.sleep(1.0)
        samples.append(_rss_kib(pid))
    return {
        "rss_before": before / 1024,
        "rss_max": max(samples) / 1024,
        "sent_mb": sent / (1 << 20),
        "applied_before_end": float(seen_before_end),
    }


def idle_connections(lab: Lab, count: int = 1100) -> dict[str, float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 200)), hard))
    pid = _daemon_pid(lab)
    log_before = lab.t_log.read_text().count("accept")
    connections = []
    try:
        for _ in range(count):
            conn = socket.socket(socket.AF_UNIX)
            conn.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                conn.connect(str(SOCKET_DIR / "at0.sock"))
            connections.append(conn)
        time.sleep(1.0)
        seconds = _wg_show_seconds(lab)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        log_start = lab.t_log.read_text().count("accept")
        time.sleep(3.0)
        accept_lines = (lab.t_log.read_text().count("accept") - log_start) / 3.0
    finally:
        for conn in connections:
            conn.close()
    del log_before
    return {"wg_show": seconds, "fds": float(fds), "accept_lines": accept_lines}


def big_set(lab: Lab, prefixes: int = 300_000) -> dict[str, float]:
    public_hex = PublicKey.from_base64(lab.p_pub).to_hex()
    lines = [f"set=1\npublic_key={public_hex}\n"]
    lines += [
        f"allowed_ip=10.{128 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32\n" for i in range(prefixes)
    ]
    request = ("".join(lines) + "\n").encode()
    ping = lab.p.popen(["ping", "-n", "-q", "-i", "0.01", "-w", "12", T_INNER])
    time.sleep(1.0)
    start = time.monotonic()
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(SOCKET_DIR / "at0.sock"))
        conn.settimeout(60)
        conn.sendall(request)
        answer = b""
        while not answer.endswith(b"\n\n"):
            data = conn.recv(4096)
            if not data:
                break
            answer += data
    seconds = time.monotonic() - start
    ping_out, _ = ping.communicate(timeout=30)
    rtt = re.search(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)/", ping_out)
    # Leave P with its one prefix again, for what comes next.
    lab.t.run(["wg", "set", "at0", "peer", lab.p_pub, "allowed-ips", f"{P_INNER}/32"], timeout=60)
    return {
        "seconds": seconds,
        "errno": float(answer.decode().strip().rpartition("=")[2] or "nan"),
        "ping_max": float(rtt.group(3)) if rtt else float("nan"),
        "ping_avg": float(rtt.group(2)) if rtt else float("nan"),
    }


# --- the run ------------------------------------------------------------------------------------


def measure(
    programs: list[tuple[str, str, str | None]],
    *,
    rates: list[int],
    duration: float,
    uapi: bool = True,
) -> None:
    """Measure each ``(label, program, pythonpath)`` and print the tables."""
    workdir = Path("/run/bench-attacks")
    workdir.mkdir(mode=0o700, exist_ok=True)
    floods: dict[tuple[str, int], dict[str, float]] = {}
    abuse: dict[str, dict[str, dict[str, float]]] = {}
    for label, program, pythonpath in programs:
        with Topology("at") as topo:
            lab = Lab(topo, workdir, program, pythonpath)
            log(f"{label} up")
            for rate in rates:
                floods[(label, rate)] = result = flood(lab, rate, duration)
                log(f"{label} at {rate}/s: {result}")
            if uapi and program == "minivpn":
                abuse[label] = {}
                for name, step in (
                    ("big_set", big_set),
                    ("never_terminated", never_terminated_set),
                    ("idle", idle_connections),
                ):
                    abuse[label][name] = step(lab)
                    log(f"{label} {name}: {abuse[label][name]}")
    print(f"\nload average {Path('/proc/loadavg').read_text().strip()}")
    print("\n| program | initiations/s | ping loss | ping avg ms | ping max ms |"
          " new peer's handshake s | cookie replies/s to X | kernel rcvbuf drops | T's CPU |"
          " T waited for a CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (label, rate), r in floods.items():
        print(
            f"| {label} | {rate} | {r['loss']:.1f} % | {r['avg']:.1f} | {r['max']:.0f} |"
            f" {r['handshake']:.1f} | {r['cookies']:.0f} | {r['rcvbuf']:.0f} |"
            f" {r['cpu']:.0f} % | {r['waiting']:.0f} % |"
        )
    if abuse:
        print("\n| program | set of 300k prefixes: s, ping max ms | 44 MB never-ended set: RSS"
              " MiB before -> max, applied before the end | 1100 idle connections: wg show s,"
              " fds, accept-error lines/s |")  # fmt: skip
        print("|---|---|---|---|")
        for label, rows in abuse.items():
            b, n, i = rows["big_set"], rows["never_terminated"], rows["idle"]
            print(
                f"| {label} | {b['seconds']:.1f} s, {b['ping_max']:.0f} ms |"
                f" {n['rss_before']:.1f} -> {n['rss_max']:.1f} ({n['sent_mb']:.0f} MB sent),"
                f" {'yes' if n['applied_before_end'] else 'no'} |"
                f" {i['wg_show']:.1f} s, {i['fds']:.0f}, {i['accept_lines']:.1f} |"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("programs", nargs="*", default=["minivpn"], help="minivpn, wireguard-go")
    parser.add_argument("--rates", default="10000,20000", help="initiations/s, e.g. 10000")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--before", metavar="DIR", help="also minivpn from DIR/src")
    parser.add_argument("--no-uapi", action="store_true", help="only the floods")
    parser.add_argument("--flood", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:  # the attacker, started by flood() inside namespace X
        host, port = args.flood[0].rsplit(":", 1)
        run_flood((host, int(port)), int(args.flood[1]), float(args.flood[2]))
        return 0
    if os.environ.get("MINIVPN_ISOLATED") != "1":
        isolate = str(ROOT / "netns/isolate")
        os.execvp(isolate, [isolate, sys.executable, *sys.argv])
    for tool in ("wireguard-go", "wg", "ping"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed")
    programs: list[tuple[str, str, str | None]] = []
    for program in args.programs:
        if program not in ("minivpn", "wireguard-go"):
            parser.error(f"unknown program {program}")
        programs.append((program, program, None))
    if args.before:
        programs.append(("minivpn (before)", "minivpn", str(Path(args.before).resolve() / "src")))
    rates = [int(rate) for rate in args.rates.split(",")]
    measure(programs, rates=rates, duration=args.duration, uapi=not args.no_uapi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
