"""Real WireGuard daemons in test namespaces: minivpnd and wireguard-go, driven by ``wg``.

The interop and robustness tests run the real programs a user runs, as a user runs them:

* ``python -m minivpn.daemon -f NAME`` (minivpnd) or ``wireguard-go -f NAME`` started inside a
  namespace of a :class:`netns.Topology`, each creating its TUN device there and its UAPI
  socket in ``/var/run/wireguard`` (which every namespace of the test shares: the mount
  namespace of ``netns/isolate`` is one for all, so interface names must be unique);
* configured only with ``wg set`` / ``wg setconf``, keys made by ``wg genkey``;
* watched with ``wg show NAME dump``, ``ping``, ``iperf3``, ``dumpcap`` captures and, for
  minivpnd, the report it logs on SIGUSR1 (per-peer counters and drops by reason).

Everything here waits with a bound and fails with the daemon's own output when the bound
passes.  A :class:`Lab` stops every daemon it started and, for minivpnd, insists that it
exited with status 0 and printed no traceback: a crash anywhere in a test fails that test.

Example::

    with open_lab(tmp_path) as lab:
        a, b = lab.topology.pair()
        mine = lab.minivpnd(a, "A")
        theirs = lab.wireguard_go(b, "B")
        link_pair(mine, theirs, ...)
        wait_for_ping(a, "10.77.0.2")
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from tests.helpers.procs import Process, start, wait_until

from netns import Namespace, Topology

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

__all__ = [
    "MINIVPND",
    "SOCKET_DIR",
    "WG_GO_2025",
    "Capture",
    "Daemon",
    "Datagram",
    "InterfaceDump",
    "Iperf",
    "KeyPair",
    "Lab",
    "PeerDump",
    "Report",
    "endpoint",
    "genkey",
    "genpsk",
    "inject",
    "iperf3",
    "iperf_result",
    "link_pair",
    "open_lab",
    "parse_dump",
    "read_pcap",
    "settle",
    "star",
    "start_iperf3",
    "udp_receive",
    "wait_for_datagrams",
    "wait_for_server",
]

#: Where ``wg`` looks for userspace interfaces (shared by every namespace of one test run).
SOCKET_DIR = Path("/var/run/wireguard")
#: The minivpn daemon, run by the test's own interpreter.
MINIVPND = (sys.executable, "-m", "minivpn.daemon")
#: Seconds a daemon may take to create its socket and device.
START_TIMEOUT = 20.0

#: Upstream wireguard-go 0.0.20250522, with TUN GSO/GRO offloads (shared/bench/bin, beside the
#: repository, or MINIVPN_WG_GO_2025): tests against it are skipped where it is absent.
WG_GO_2025 = Path(
    os.environ.get(
        "MINIVPN_WG_GO_2025",
        Path(__file__).resolve().parents[3] / "shared/bench/bin/wireguard-go-0.0.20250522",
    )
)

Kind = Literal["minivpn", "wireguard-go", "wireguard-go-2025"]
T = TypeVar("T")

_names = itertools.count(1)


def _run(cmd: Sequence[str], *, input: str | None = None) -> str:
    result = subprocess.run(
        list(cmd), input=input, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, f"{' '.join(cmd)} failed: {result.stderr}"
    return result.stdout.strip()


# --- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A key pair as ``wg`` writes it: base64 text."""

    private: str
    public: str


def genkey() -> KeyPair:
    """A new key pair from ``wg genkey`` and ``wg pubkey``."""
    private = _run(["wg", "genkey"])
    return KeyPair(private, _run(["wg", "pubkey"], input=private + "\n"))


def genpsk() -> str:
    """A new preshared key from ``wg genpsk``."""
    return _run(["wg", "genpsk"])


def endpoint(address: str, port: int) -> str:
    """``address:port`` as ``wg`` writes it (IPv6 in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --- wg show dump ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerDump:
    """One peer line of ``wg show NAME dump``."""

    public_key: str
    preshared_key: str | None
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None


@dataclass(frozen=True)
class InterfaceDump:
    """``wg show NAME dump``: the interface line and its peers, by public key."""

    private_key: str | None
    public_key: str | None
    listen_port: int
    fwmark: int | None
    peers: dict[str, PeerDump]


def _none(value: str) -> str | None:
    return None if value in ("(none)", "off") else value


def parse_dump(text: str) -> InterfaceDump:
    """Parse the output of ``wg show NAME dump`` (tab-separated, one line per object)."""
    lines = [line.split("\t") for line in text.splitlines() if line]
    assert lines, "empty dump"
    private, public, port, fwmark = lines[0]
    peers = {}
    for fields in lines[1:]:
        assert len(fields) == 8, fields
        key, psk, peer_endpoint, allowed, handshake, rx, tx, keepalive = fields
        peers[key] = PeerDump(
            public_key=key,
            preshared_key=_none(psk),
            endpoint=_none(peer_endpoint),
            allowed_ips=() if allowed == "(none)" else tuple(allowed.split(",")),
            latest_handshake=int(handshake),
            rx_bytes=int(rx),
            tx_bytes=int(tx),
            persistent_keepalive=None if keepalive == "off" else int(keepalive),
        )
    fwmark_value = _none(fwmark)
    return InterfaceDump(
        private_key=_none(private),
        public_key=_none(public),
        listen_port=int(port),
        fwmark=None if fwmark_value is None else int(fwmark_value, 0),
        peers=peers,
    )


# --- the SIGUSR1 report of minivpnd ---------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """What minivpnd logged on one SIGUSR1.

    Attributes:
        dropped: the total it reported.
        drops: count by reason (``decryption_failed``, ``invalid_mac1``...); reasons it did
            not mention are absent (zero).
        peers: ``{first 8 characters of the public key: (rx bytes, tx bytes)}``.
    """

    dropped: int
    drops: dict[str, int]
    peers: dict[str, tuple[int, int]]

    def delta(self, earlier: Report) -> dict[str, int]:
        """Drops by reason since *earlier* (only the reasons that changed)."""
        reasons = set(self.drops) | set(earlier.drops)
        changes = {r: self.drops.get(r, 0) - earlier.drops.get(r, 0) for r in reasons}
        return {r: n for r, n in changes.items() if n}


# --- daemons --------------------------------------------------------------------------------------


class Daemon:
    """One running WireGuard daemon (minivpnd or wireguard-go) and its interface.

    Args:
        kind: which program.
        name: the interface (and socket) name.
        ns: the namespace it was started in (where its UDP sockets live).
        process: the running process.
        key_dir: where key files for ``wg set`` are written.
    """

    def __init__(
        self, kind: Kind, name: str, ns: Namespace, process: Process, key_dir: Path
    ) -> None:
        self.kind = kind
        self.name = name
        self.ns = ns
        #: The namespace the TUN link is in now (see :meth:`move_link`).
        self.link_ns = ns
        self.process = process
        self.key_dir = key_dir
        self.keys: KeyPair | None = None
        self.stopped = False
        self._reports = 0

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name} in {self.ns.name}>"

    @property
    def public_key(self) -> str:
        """The public key set with :meth:`set_private_key`."""
        assert self.keys is not None, f"{self.name} has no key yet"
        return self.keys.public

    # -- wg ---------------------------------------------------------------------------------------

    def wg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``wg ARGS`` (in the daemon's namespace; the socket directory is shared)."""
        result = self.ns.run(["wg", *args], check=False, timeout=60)
        if check:
            assert result.returncode == 0, (
                f"wg {' '.join(args)} failed ({result.returncode}): {result.stderr}\n"
                f"{self.process.describe()}"
            )
        return result

    def set(self, *args: str) -> None:
        """``wg set NAME ARGS``; fails the test if wg fails."""
        self.wg("set", self.name, *args)

    def key_file(self, text: str) -> str:
        """Write *text* (a key) to a private file and return its path, for ``wg set``."""
        path = self.key_dir / f"key{next(_names)}"
        path.write_text(text + "\n")
        path.chmod(0o600)
        return str(path)

    def set_private_key(
        self, keys: KeyPair | None = None, *, listen_port: int | None = None
    ) -> KeyPair:
        """Give the interface a private key (a new one by default) and maybe a listen port."""
        self.keys = keys or genkey()
        args = ["private-key", self.key_file(self.keys.private)]
        if listen_port is not None:
            args += ["listen-port", str(listen_port)]
        self.set(*args)
        return self.keys

    def add_peer(
        self,
        public_key: str,
        *,
        allowed_ips: Iterable[str] = (),
        endpoint: str | None = None,
        psk: str | None = None,
        keepalive: int | None = None,
    ) -> None:
        """``wg set NAME peer KEY ...`` with the settings given."""
        args = ["peer", public_key]
        allowed = ",".join(allowed_ips)
        if allowed:
            args += ["allowed-ips", allowed]
        if endpoint is not None:
            args += ["endpoint", endpoint]
        if psk is not None:
            args += ["preshared-key", self.key_file(psk)]
        if keepalive is not None:
            args += ["persistent-keepalive", str(keepalive)]
        self.set(*args)

    def dump(self) -> InterfaceDump:
        """``wg show NAME dump``, parsed."""
        return parse_dump(self.wg("show", self.name, "dump").stdout)

    def peer(self, public_key: str) -> PeerDump:
        """One peer of :meth:`dump`."""
        peers = self.dump().peers
        assert public_key in peers, f"{public_key} is not a peer of {self.name}: {list(peers)}"
        return peers[public_key]

    def show(self, what: str) -> str:
        """``wg show NAME WHAT`` (``endpoints``, ``allowed-ips``...), stripped."""
        return self.wg("show", self.name, what).stdout.strip()

    @property
    def listen_port(self) -> int:
        """The UDP port the daemon listens on, as ``wg show`` reports it."""
        return self.dump().listen_port

    # -- the link ---------------------------------------------------------------------------------

    def ip(self, *args: str) -> None:
        """``ip ARGS`` in the namespace the link is in."""
        self.link_ns.ip(*args)

    def add_addresses(self, *cidrs: str, mtu: int | None = None) -> None:
        """Add addresses to the link, optionally set its MTU, and bring it up."""
        for cidr in cidrs:
            extra = ["nodad"] if ":" in cidr else []
            self.ip("addr", "add", cidr, "dev", self.name, *extra)
        if mtu is not None:
            self.ip("link", "set", self.name, "mtu", str(mtu))
        self.ip("link", "set", self.name, "up")

    def move_link(self, ns: Namespace) -> None:
        """Move the TUN link to *ns*; the daemon and its sockets stay where they are."""
        self.link_ns.ip("link", "set", self.name, "netns", ns.name)
        self.link_ns = ns

    def link_stats(self) -> tuple[int, int]:
        """``(rx bytes, tx bytes)`` of the link, from ``ip -s -j link show``."""
        text = self.link_ns.ip("-s", "-j", "link", "show", self.name).stdout
        stats = json.loads(text)[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    # -- minivpnd's report ------------------------------------------------------------------------

    def report(self, timeout: float = 10.0) -> Report:
        """Send SIGUSR1 and parse what minivpnd logs: peer counters and drops by reason.

        Needs the daemon to log at level ``verbose`` (:meth:`Lab.minivpnd` does that).
        """
        assert self.kind == "minivpn", "only minivpnd reports on SIGUSR1"
        pattern = rf"^minivpnd \({re.escape(self.name)}\): {re.escape(self.name)}: dropped \d+"
        self._reports += 1
        wanted = self._reports
        self.process.send_signal(signal.SIGUSR1)
        wait_until(
            lambda: self.process.count(pattern) >= wanted,
            timeout=timeout,
            what=f"the SIGUSR1 report of {self.name}\n{self.process.describe()}",
        )
        lines = self.process.stderr().splitlines()
        drop_lines = [i for i, line in enumerate(lines) if re.match(pattern, line)]
        last = drop_lines[wanted - 1]
        match = re.search(r"dropped (\d+)(?: \((.*)\))?$", lines[last])
        assert match, lines[last]
        drops = {}
        for item in filter(None, (match.group(2) or "").split(", ")):
            reason, count = item.rsplit(" ", 1)
            drops[reason] = int(count)
        peers = {}
        first = drop_lines[wanted - 2] + 1 if wanted >= 2 else 0
        for line in lines[first:last]:
            peer = re.search(r": peer (\S{8})\S*: rx (\d+) bytes, tx (\d+) bytes$", line)
            if peer:
                peers[peer.group(1)] = (int(peer.group(2)), int(peer.group(3)))
        return Report(int(match.group(1)), drops, peers)

    # -- stopping ---------------------------------------------------------------------------------

    def running(self) -> bool:
        """Whether the process is still running."""
        return self.process.running()

    def stop(self) -> None:
        """SIGTERM, wait; for minivpnd, fail the test unless it exited cleanly (status 0).

        A stopped interface's socket and device are gone (both programs remove them).  Stopping
        again does nothing.
        """
        if self.stopped:
            return
        self.stopped = True
        if not self.process.running():
            status = self.process.popen.returncode
        else:
            status = self.process.stop(signal.SIGTERM, timeout=15)
        self.check_clean(status)
        wait_until(
            lambda: not (SOCKET_DIR / f"{self.name}.sock").exists(),
            timeout=5,
            what=f"{self.name}'s socket to be removed",
        )

    def check_clean(self, status: int | None) -> None:
        """Fail unless minivpnd's exit *status* is 0 and it logged no traceback."""
        if self.kind != "minivpn":
            return
        err = self.process.stderr()
        assert "Traceback" not in err, f"{self.name} logged a traceback:\n{self.process.describe()}"
        assert "internal error" not in err, self.process.describe()
        assert status == 0, f"{self.name} exited with {status}:\n{self.process.describe()}"


class Lab:
    """A topology plus the daemons started in it, all stopped at the end.

    Args:
        topology: the namespaces (owned by the caller).
        log_dir: where daemon output and key files go (a test's ``tmp_path``).
    """

    def __init__(self, topology: Topology, log_dir: Path) -> None:
        self.topology = topology
        self.log_dir = log_dir
        self.daemons: list[Daemon] = []

    def name(self, tag: str) -> str:
        """A unique interface name (at most 15 characters) containing *tag*."""
        name = f"wg{tag}{next(_names)}"
        assert len(name) <= 15, name
        return name

    def minivpnd(
        self,
        ns: Namespace,
        tag: str,
        *,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Daemon:
        """Start ``python -m minivpn.daemon -f NAME`` in *ns* (logging verbosely)."""
        return self.start("minivpn", ns, name or self.name(tag), env=env)

    def wireguard_go(self, ns: Namespace, tag: str, *, name: str | None = None) -> Daemon:
        """Start ``wireguard-go -f NAME`` in *ns*."""
        return self.start("wireguard-go", ns, name or self.name(tag))

    def start(
        self, kind: Kind, ns: Namespace, name: str, *, env: dict[str, str] | None = None
    ) -> Daemon:
        """Start a daemon of *kind* and wait until its socket and its device exist.

        Args:
            kind: which program.
            ns: where.
            name: the interface name.
            env: variables to add to its environment (``MINIVPN_OFFLOAD``...).
        """
        if kind == "minivpn":
            cmd = [*MINIVPND, "-f", name]
            env = {**os.environ, "LOG_LEVEL": "verbose", **(env or {})}
        else:
            program = str(WG_GO_2025) if kind == "wireguard-go-2025" else "wireguard-go"
            cmd = [program, "-f", name]
            env = {**os.environ, "LOG_LEVEL": "error", **(env or {})}
        env.pop("WG_PROCESS_FOREGROUND", None)
        log_name = f"{name}-{len(self.daemons)}"
        stdout_path = self.log_dir / f"{log_name}.out"
        stderr_path = self.log_dir / f"{log_name}.err"
        with stdout_path.open("w") as out, stderr_path.open("w") as err:
            popen = ns.popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        process = Process(popen, f"{kind} {name}", stdout_path, stderr_path)
        key_dir = self.log_dir / "keys"
        key_dir.mkdir(mode=0o700, exist_ok=True)
        daemon = Daemon(kind, name, ns, process, key_dir)
        self.daemons.append(daemon)
        socket = SOCKET_DIR / f"{name}.sock"

        def ready() -> bool:
            assert process.running(), f"{kind} exited during start-up:\n{process.describe()}"
            if not socket.is_socket():
                return False
            return ns.ip("link", "show", name, check=False).returncode == 0

        wait_until(ready, timeout=START_TIMEOUT, what=f"{kind} {name} to start")
        return daemon

    def close(self) -> None:
        """Stop every daemon; raise the first problem found (after stopping them all)."""
        problems: list[AssertionError] = []
        for daemon in self.daemons:
            try:
                daemon.stop()
            except AssertionError as exc:
                problems.append(exc)
        self.daemons.clear()
        if problems:
            raise problems[0]


@contextlib.contextmanager
def open_lab(log_dir: Path, prefix: str = "wg") -> Iterator[Lab]:
    """A fresh :class:`Lab` in a fresh :class:`Topology`; everything is stopped on exit.

    The daemons are checked (clean exit) only when the test body succeeded: a failing test
    reports its own failure, not a consequence of it.
    """
    with Topology(prefix) as topology:
        lab = Lab(topology, log_dir)
        ok = False
        try:
            yield lab
            ok = True
        finally:
            if ok:
                lab.close()
            else:
                with contextlib.suppress(AssertionError):
                    lab.close()


def link_pair(
    x: Daemon,
    y: Daemon,
    *,
    x_endpoint: str | None,
    y_endpoint: str | None,
    x_inner: Sequence[str] = ("10.77.0.1/24", "fd00:77::1/64"),
    y_inner: Sequence[str] = ("10.77.0.2/24", "fd00:77::2/64"),
    x_port: int = 51820,
    y_port: int = 51821,
    psk: str | None = None,
    x_psk: str | None = None,
    y_psk: str | None = None,
) -> None:
    """Make *x* and *y* peers of each other, each with a new key and its inner addresses.

    Args:
        x, y: the two daemons.
        x_endpoint, y_endpoint: the endpoint each one is *told* for the other (None: it has to
            learn it from the other's first packet, so it cannot initiate).
        x_inner, y_inner: the addresses of each link (each host address is the other's
            allowed IP).
        x_port, y_port: listen ports.
        psk: a preshared key for both; ``x_psk``/``y_psk`` override it per side.
    """
    x.set_private_key(listen_port=x_port)
    y.set_private_key(listen_port=y_port)
    x_hosts = [_host_prefix(cidr) for cidr in x_inner]
    y_hosts = [_host_prefix(cidr) for cidr in y_inner]
    x.add_peer(y.public_key, allowed_ips=y_hosts, endpoint=x_endpoint, psk=x_psk or psk)
    y.add_peer(x.public_key, allowed_ips=x_hosts, endpoint=y_endpoint, psk=y_psk or psk)
    x.add_addresses(*x_inner)
    y.add_addresses(*y_inner)


def _host_prefix(cidr: str) -> str:
    address = cidr.split("/", maxsplit=1)[0]
    return f"{address}/{128 if ':' in address else 32}"


# --- topologies -----------------------------------------------------------------------------------


def star(topology: Topology, count: int) -> list[Namespace]:
    """*count* namespaces on one Ethernet segment (a bridge in a hub namespace).

    Namespace *i* (from 1) gets 198.51.100.i/24 and fd00:5100:100::i/64 on its link
    (``ns.veth``), also set as ``ns.addr4``/``ns.addr6``.
    """
    hub = topology.namespace("hub")
    hub.ip("link", "add", "br0", "type", "bridge")
    hub.ip("link", "set", "br0", "up")
    members = []
    for i in range(1, count + 1):
        ns = topology.namespace(f"s{i}")
        _, inside = topology.veth(hub, ns, f"port{i}", "eth0")
        hub.ip("link", "set", f"port{i}", "master", "br0")
        ns.run(["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"])
        ns.addr4, ns.addr6, ns.veth = f"198.51.100.{i}", f"fd00:5100:100::{i}", inside
        ns.ip("addr", "add", f"{ns.addr4}/24", "dev", inside)
        ns.ip("addr", "add", f"{ns.addr6}/64", "dev", inside, "nodad")
        members.append(ns)
    return members


# --- traffic --------------------------------------------------------------------------------------


def settle(read: Callable[[], T], expected: T, *, timeout: float) -> None:
    """Poll *read* until it returns *expected*; then, or after *timeout*, assert equality.

    Unlike :func:`~tests.helpers.procs.wait_until`, a failure shows the last value read.
    """
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value == expected


def wait_for_server(ns: Namespace, port: int, *, proto: str = "t", timeout: float = 10.0) -> None:
    """Wait until something listens on *port* in *ns* (``ss -Hln``; ``proto`` t or u)."""

    def listening() -> bool:
        listed = ns.run(["ss", f"-H{proto}ln", f"sport = :{port}"], check=False).stdout
        return bool(listed.strip())

    wait_until(
        listening,
        timeout=timeout,
        what=f"a listener on port {port} in {ns.name}",
    )


@dataclass
class Iperf:
    """The result of one iperf3 client run (``-J``).

    Attributes:
        result: the whole JSON document.
        interval_bytes: bytes moved in each reporting interval (``-i 0.5``) that lasted at
            least a quarter of a second (iperf3 may end with a sliver of an interval).
    """

    result: dict[str, object]
    interval_bytes: list[int] = field(default_factory=list)

    def stalls(self) -> list[int]:
        """Indices of the intervals that begin a stall: a second (two intervals) without data.

        One empty half second can be the scheduler of a busy machine; a whole second without a
        byte through a working tunnel is a stall.
        """
        moved = self.interval_bytes
        return [i for i in range(len(moved) - 1) if moved[i] == 0 and moved[i + 1] == 0]

    @property
    def total_bytes(self) -> int:
        """Bytes the receiver got (TCP) or the sender sent (UDP)."""
        end = self.result["end"]
        assert isinstance(end, dict)
        summary = end.get("sum_received") or end.get("sum")
        assert isinstance(summary, dict)
        return int(summary["bytes"])


def iperf3(
    server: Namespace,
    client: Namespace,
    address: str,
    *,
    seconds: int = 2,
    port: int = 5201,
    extra: Sequence[str] = (),
) -> Iperf:
    """Run an iperf3 server in *server* (one test) and a client in *client* against *address*.

    Returns:
        The client's parsed JSON, with the bytes of each 0.5-second interval.
    """
    return iperf_result(start_iperf3(server, client, address, seconds=seconds, port=port,
                                     extra=extra), timeout=seconds + 30)  # fmt: skip


def start_iperf3(
    server: Namespace,
    client: Namespace,
    address: str,
    *,
    seconds: int = 2,
    port: int = 5201,
    extra: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """Like :func:`iperf3`, but return the running client (see :func:`iperf_result`)."""
    server.popen(["iperf3", "-s", "-1", "-p", str(port), "-B", address])
    wait_for_server(server, port)
    cmd = [
        "iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-i", "0.5", "-J",
        "--connect-timeout", "5000", *extra,
    ]  # fmt: skip
    return client.popen(cmd)


def iperf_result(proc: subprocess.Popen[str], timeout: float = 40.0) -> Iperf:
    """Wait for a background iperf3 client and parse its result."""
    out, err = proc.communicate(timeout=timeout)
    return _parse_iperf(proc.returncode, out, err)


def _parse_iperf(status: int, out: str, err: str) -> Iperf:
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"iperf3 printed no JSON (status {status}): {out}{err}") from None
    assert status == 0, f"iperf3 failed (status {status}): {data.get('error')} {err}"
    assert "error" not in data, f"iperf3 failed: {data['error']}"
    intervals = [int(i["sum"]["bytes"]) for i in data["intervals"] if i["sum"]["seconds"] >= 0.25]
    return Iperf(data, intervals)


def inject(
    ns: Namespace,
    target: tuple[str, int],
    datagrams: Sequence[bytes],
    *,
    source_port: int = 0,
    pace: float = 0.0,
) -> None:
    """Send *datagrams* to *target* over UDP from namespace *ns* (a small Python helper)."""
    script = (
        "import socket, sys, time\n"
        "host, port, sport, pace = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), "
        "float(sys.argv[4])\n"
        "family = socket.AF_INET6 if ':' in host else socket.AF_INET\n"
        "s = socket.socket(family, socket.SOCK_DGRAM)\n"
        "s.bind(('::' if family == socket.AF_INET6 else '0.0.0.0', sport))\n"
        "for line in sys.stdin.read().split():\n"
        "    s.sendto(bytes.fromhex(line), (host, port))\n"
        "    time.sleep(pace)\n"
    )
    payload = "\n".join(d.hex() for d in datagrams)
    result = ns.run(
        [sys.executable, "-c", script, target[0], str(target[1]), str(source_port), str(pace)],
        input=payload,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def udp_receive(ns: Namespace, port: int, log_dir: Path, name: str) -> Process:
    """Start a UDP listener on *port* in *ns* that prints each datagram's hex on a line."""
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
        "s.bind(('::', int(sys.argv[1])))\n"
        "print('listening', flush=True)\n"
        "while True:\n"
        "    data, _ = s.recvfrom(65535)\n"
        "    print(data.hex(), flush=True)\n"
    )
    process = start(ns, [sys.executable, "-u", "-c", script, str(port)], log_dir, name)
    process.wait_for("^listening$", stream="stdout")
    return process


# --- packet captures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    """A UDP datagram read from a capture."""

    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


def read_pcap(path: Path) -> list[Datagram]:
    """The UDP datagrams of a pcap file of Ethernet frames (what ``dumpcap -P -w`` writes).

    A record still being written (cut short) ends the list.  Only IPv4 and IPv6 without
    extension headers are decoded; anything else is skipped.
    """
    import ipaddress

    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    assert linktype == 1, f"expected an Ethernet capture, got link type {linktype}"
    datagrams = []
    offset = 24
    while offset + 16 <= len(data):
        caplen = struct.unpack_from(endian + "I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + caplen]
        if len(frame) < caplen:
            break
        offset += 16 + caplen
        ethertype = int.from_bytes(frame[12:14], "big")
        ip = frame[14:]
        if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == 17:
            header = (ip[0] & 0x0F) * 4
            src, dst = ipaddress.ip_address(ip[12:16]), ipaddress.ip_address(ip[16:20])
            udp = ip[header : int.from_bytes(ip[2:4], "big")]
        elif ethertype == 0x86DD and len(ip) >= 40 and ip[6] == 17:
            src, dst = ipaddress.ip_address(ip[8:24]), ipaddress.ip_address(ip[24:40])
            udp = ip[40 : 40 + int.from_bytes(ip[4:6], "big")]
        else:
            continue
        if len(udp) < 8:
            continue
        sport, dport, length = struct.unpack_from("!HHH", udp)
        datagrams.append(Datagram((str(src), sport), (str(dst), dport), bytes(udp[8:length])))
    return datagrams


class Capture:
    """``dumpcap -w`` on one link of a namespace, read back as UDP datagrams.

    dumpcap (Wireshark's capture program), not tcpdump: tcpdump started as root changes to its
    own user, which a user namespace cannot do (``tests/helpers/tools.py``), and capturing
    needs root in the namespace.  dumpcap writes what it caught at least every half second.

    Args:
        ns: the namespace.
        link: the link to capture on.
        bpf: a capture filter (``udp port 51820``).
        log_dir: where the capture file goes.
        name: a label for the files.
    """

    def __init__(self, ns: Namespace, link: str, bpf: str, log_dir: Path, name: str) -> None:
        self.path = log_dir / f"{name}.pcap"
        # -P: pcap, not pcapng; -q: no packet counts on stderr.
        self.process = start(
            ns,
            ["dumpcap", "-q", "-P", "-i", link, "-s", "2048", "-f", bpf, "-w", str(self.path)],
            log_dir,
            name,
        )
        # "File: PATH" comes once the link is open and the file made ("Capturing on" before).
        self.process.wait_for("^File: ", timeout=15)

    def datagrams(self) -> list[Datagram]:
        """Everything captured so far."""
        return read_pcap(self.path) if self.path.exists() else []

    def stop(self) -> list[Datagram]:
        """Stop dumpcap and return everything it captured."""
        if self.process.running():
            self.process.stop(signal.SIGINT)
        return self.datagrams()


def wait_for_datagrams(
    capture: Capture,
    predicate: Callable[[Datagram], bool],
    count: int,
    *,
    timeout: float,
    what: str,
) -> list[Datagram]:
    """Wait until *capture* holds at least *count* datagrams matching *predicate*."""

    def matching() -> list[Datagram]:
        found = [d for d in capture.datagrams() if predicate(d)]
        return found if len(found) >= count else []

    return wait_until(matching, timeout=timeout, what=what, interval=0.1)
