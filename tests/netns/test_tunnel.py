"""``minivpn tunnel`` between two namespaces: real processes, real ``ping`` and ``iperf3``.

Every test builds two network namespaces joined by veth (:meth:`netns.Topology.pair`: A is
198.51.100.1 / fd00:5100:100::1, B is .2 / ::2) and runs ``python -m minivpn tunnel`` in each:
B listens, A connects.  Inside the tunnel A is 10.9.0.1 / fd00:9::1 and B 10.9.0.2 / fd00:9::2.

The tunnel's claims are checked by independent witnesses: ``ping`` and ``iperf3`` across the
tunnel, ``ip -details link`` for what the devices are, and the counters the process prints on
SIGUSR1 and at exit.  Bad input (garbage datagrams, foreign senders, broken TCP frames, bad
command lines) comes from small scripts and sockets of the test's own.

Waits are polls with bounded timeouts (until a ping gets through, until a line is printed),
never fixed sleeps, and iperf3 runs for two seconds: the module must stay fast.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
from tests.helpers.docs import REPO_ROOT, parse_markdown
from tests.helpers.procs import (
    MINIVPN,
    Process,
    assert_clean_failure,
    ping,
    run_all,
    start,
    start_minivpn,
    wait_for_ping,
    wait_until,
)

from netns import Namespace, Topology

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

PORT = 5000
DEVICE = "mvt0"
INNER_A4, INNER_A6 = "10.9.0.1", "fd00:9::1"
INNER_B4, INNER_B6 = "10.9.0.2", "fd00:9::2"
#: Seconds a tunnel may take to start, or to stop after a signal.
START, STOP = 20.0, 15.0
#: The roam delay of the UDP listener (TunnelConfig.roam_after's default).
ROAM = 2.0

#: Drops of packets sent before the peer is known (UDP) or connected (TCP).
STARTUP_DROPS = {"no-peer-yet", "no-connection"}

COUNTERS = re.compile(
    r"^minivpn: tx (\d+) packets / (\d+) bytes, rx (\d+) packets / (\d+) bytes, dropped (\d+)"
    r"(?: \((.*)\))?$",
    re.MULTILINE,
)


@attrs.frozen
class Counts:
    """One counters line (``tx N packets / B bytes, rx ..., dropped D (reason n, ...)``)."""

    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    drops: dict[str, int]


def last_counts(process: Process) -> Counts:
    """The last counters line the process printed."""
    matches = list(COUNTERS.finditer(process.stderr()))
    assert matches, process.describe()
    m = matches[-1]
    drops = {}
    for item in (m[6] or "").split(", "):
        if item:
            reason, _, n = item.rpartition(" ")
            drops[reason] = int(n)
    return Counts(int(m[1]), int(m[2]), int(m[3]), int(m[4]), drops)


def report(process: Process) -> Counts:
    """SIGUSR1 the process and return the counters it prints in answer."""
    before = len(COUNTERS.findall(process.stderr()))
    process.send_signal(signal.SIGUSR1)
    try:
        wait_until(
            lambda: len(COUNTERS.findall(process.stderr())) > before,
            timeout=STOP,
            what="counters in answer to SIGUSR1",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {process.describe()}") from None
    assert process.running(), process.describe()
    return last_counts(process)


# -- starting tunnels --------------------------------------------------------------------------


@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology("tnl") as topology:
        yield topology


def start_tunnel(
    ns: Namespace,
    where: Sequence[str],
    log_dir: Path,
    name: str,
    *,
    inner: tuple[str, str],
    transport: str = "udp",
    flags: Sequence[str] = (),
    device: str = DEVICE,
) -> Process:
    """Start ``minivpn tunnel DEVICE WHERE --TRANSPORT FLAGS --address ...``; wait until up."""
    args = [
        "tunnel",
        device,
        *where,
        f"--{transport}",
        *flags,
        "--address",
        f"{inner[0]}/24",
        "--address",
        f"{inner[1]}/64",
    ]
    tunnel = start_minivpn(ns, args, log_dir, name)
    tunnel.wait_for(rf"^minivpn: device {device} \(.*\) up; ", timeout=START)
    return tunnel


@attrs.frozen
class Pair:
    """Two namespaces and the tunnel ends in them: ``server`` listens in B, ``client`` in A."""

    a: Namespace
    b: Namespace
    server: Process
    client: Process


def start_pair(
    topo: Topology,
    log_dir: Path,
    *,
    transport: str = "udp",
    flags: Sequence[str] = (),
    outer6: bool = False,
    listen: str = "",
) -> Pair:
    """A and B joined by veth, B listening on ``LISTEN:5000``, A connecting to B."""
    a, b = topo.pair()
    server = start_server(b, log_dir, "server", transport=transport, flags=flags, listen=listen)
    client = start_client(a, b, log_dir, "client", transport=transport, flags=flags, outer6=outer6)
    return Pair(a, b, server, client)


def start_server(
    b: Namespace,
    log_dir: Path,
    name: str,
    *,
    transport: str = "udp",
    flags: Sequence[str] = (),
    listen: str = "",
) -> Process:
    where = ["--listen", f"{listen}:{PORT}"]
    return start_tunnel(
        b, where, log_dir, name, inner=(INNER_B4, INNER_B6), transport=transport, flags=flags
    )


def start_client(
    a: Namespace,
    b: Namespace,
    log_dir: Path,
    name: str,
    *,
    transport: str = "udp",
    flags: Sequence[str] = (),
    outer6: bool = False,
) -> Process:
    where = ["--connect", f"[{b.addr6}]:{PORT}" if outer6 else f"{b.addr4}:{PORT}"]
    return start_tunnel(
        a, where, log_dir, name, inner=(INNER_A4, INNER_A6), transport=transport, flags=flags
    )


# -- witnesses ---------------------------------------------------------------------------------


def link_exists(ns: Namespace, name: str) -> bool:
    return ns.ip("link", "show", "dev", name, check=False).returncode == 0


def link_details(ns: Namespace, name: str) -> dict[str, object]:
    """``ip -details -json link show NAME``: the kernel's account of the link."""
    (link,) = json.loads(ns.ip("-details", "-json", "link", "show", "dev", name).stdout)
    details: dict[str, object] = link
    return details


def tun_info(ns: Namespace, name: str) -> dict[str, object]:
    linkinfo = link_details(ns, name)["linkinfo"]
    assert isinstance(linkinfo, dict)
    info: dict[str, object] = linkinfo["info_data"]
    return info


def ping_both_ways(pair: Pair, count: int = 3) -> None:
    """Ping across the tunnel from A and from B, IPv4 and IPv6, all at once; no loss allowed."""
    pings = [
        (ns, address, ns.popen(["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", address]))
        for ns, address in (
            (pair.a, INNER_B4),
            (pair.a, INNER_B6),
            (pair.b, INNER_A4),
            (pair.b, INNER_A6),
        )
    ]
    for ns, address, proc in pings:
        try:
            stdout, _ = proc.communicate(timeout=count * 0.2 + 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, f"ping {address} from {ns.name}:\n{stdout}\n{describe(pair)}"
        assert f" {count} received," in stdout, f"{stdout}\n{describe(pair)}"


def describe(pair: Pair) -> str:
    return f"{pair.server.describe()}\n{pair.client.describe()}"


def iperf3(client_ns: Namespace, server_ns: Namespace, address: str, log_dir: Path) -> int:
    """Run a 2-second iperf3 TCP test to *address*; return the bytes the receiver got."""
    server = start(server_ns, ["iperf3", "-s", "-1", "--forceflush"], log_dir, "iperf3-server")
    server.wait_for("Server listening", stream="stdout", timeout=START)
    result = client_ns.run(
        ["iperf3", "-c", address, "-t", "2", "-J", "--connect-timeout", "5000"],
        check=False,
        timeout=40,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    received = int(json.loads(result.stdout)["end"]["sum_received"]["bytes"])
    assert received > 0
    server.wait(timeout=STOP)
    return received


# -- traffic for each transport and device kind ------------------------------------------------


@attrs.frozen
class Case:
    transport: str
    tap: bool = False
    pi: bool = False
    outer6: bool = False
    listen: str = ""  # listening address ("" = every address)
    mtu: int | None = None
    iperf_inner6: bool = False

    @property
    def flags(self) -> list[str]:
        return [
            *(["--tap"] if self.tap else []),
            *(["--pi"] if self.pi else []),
            *(["--mtu", str(self.mtu)] if self.mtu else []),
        ]


CASES = {
    "udp-tun": Case("udp", mtu=1400),
    "udp-tap-outer6": Case("udp", tap=True, outer6=True, listen="[fd00:5100:100::2]"),
    "udp-tun-pi-outer6": Case("udp", pi=True, outer6=True, iperf_inner6=True),
    "tcp-tun-outer6": Case("tcp", outer6=True, iperf_inner6=True),
    "tcp-tap-pi": Case(
        "tcp", tap=True, pi=True, listen="198.51.100.2", mtu=1400, iperf_inner6=True
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_ping_and_iperf3_across_the_tunnel(topo: Topology, tmp_path: Path, case: Case) -> None:
    pair = start_pair(
        topo,
        tmp_path,
        transport=case.transport,
        flags=case.flags,
        outer6=case.outer6,
        listen=case.listen,
    )
    for ns in (pair.a, pair.b):
        info = tun_info(ns, DEVICE)
        assert info["type"] == ("tap" if case.tap else "tun")
        assert info["pi"] is case.pi
        assert info["persist"] is False
        if case.mtu:
            assert link_details(ns, DEVICE)["mtu"] == case.mtu

    # The UDP listener learns its peer from the first datagram: A speaks first.
    wait_for_ping(pair.a, INNER_B4, timeout=START)
    ping_both_ways(pair)
    server_address = INNER_B6 if case.iperf_inner6 else INNER_B4
    received = iperf3(pair.a, pair.b, server_address, tmp_path)

    server, client = report(pair.server), report(pair.client)
    # Everything iperf3 delivered to B went through B's tunnel end, headers and all.
    assert server.rx_bytes > received
    assert client.tx_bytes > received
    assert server.tx_packets > 0
    assert client.rx_packets > 0
    # The outer packets used the address family asked for: B names A's outer address.
    outer_a = r"\[fd00:5100:100::1\]" if case.outer6 else r"198\.51\.100\.1"
    heard = "peer is" if case.transport == "udp" else "connected to"
    pair.server.wait_for(rf"^minivpn: {heard} {outer_a}:\d+$")
    assert "Traceback" not in pair.server.stderr() + pair.client.stderr()


# -- bad input on the UDP port -------------------------------------------------------------------

SEND_DATAGRAMS = """
import json, socket, sys
port = int(sys.argv[1])
for host, count, payloads in json.loads(sys.argv[2]):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:  # each batch: a new source port
        for _ in range(count):
            for payload in payloads:
                sock.sendto(bytes.fromhex(payload), (host, port))
"""


def send_datagrams(ns: Namespace, batches: Sequence[tuple[str, int, Sequence[bytes]]]) -> None:
    """For each ``(host, count, payloads)``: send the payloads *count* times to HOST:PORT.

    Each batch comes from a socket of its own, so from a source port nobody has used yet.
    """
    spec = [(host, count, [p.hex() for p in payloads]) for host, count, payloads in batches]
    ns.run([sys.executable, "-c", SEND_DATAGRAMS, str(PORT), json.dumps(spec)], timeout=30)


#: Datagrams no TUN device can take: empty, first nibble neither 4 nor 6, or shorter than the
#: IPv4 or IPv6 header they start like.
GARBAGE = [
    b"",
    b"\xff" * 40,
    b"\x15hello",
    b"\x80" + bytes(60),
    b"\x9a",
    b"\x45" + bytes(18),
    b"\x60" + bytes(38),
]
#: What an --offload peer sends to a peer without it: a virtio-net header first.
VNET_LOOKING = [bytes(10) + b"\x45" + bytes(19)]
#: A datagram that looks like an IPv4 packet: it passes the shape check.
IPV4_LOOKING = b"\x45" + bytes(19)


def test_garbage_and_foreign_senders_do_not_stop_udp_traffic(
    topo: Topology, tmp_path: Path
) -> None:
    pair = start_pair(topo, tmp_path)
    wait_for_ping(pair.a, INNER_B4, timeout=START)
    pair.server.wait_for(r"^minivpn: peer is 198\.51\.100\.1:\d+$")

    # Garbage, from other source ports and from the peer's own address family and the other.
    send_datagrams(
        pair.a,
        [(pair.b.addr4, 10, GARBAGE), (pair.b.addr6, 10, GARBAGE), (pair.b.addr4, 3, VNET_LOOKING)],
    )

    # Well-formed datagrams from a third party while the peer is active: a ping runs all along.
    before = report(pair.server).rx_packets
    pinger = pair.a.popen(["ping", "-n", "-c", "600", "-i", "0.1", "-W", "2", INNER_B4])
    wait_until(
        lambda: report(pair.server).rx_packets >= before + 3,
        timeout=START,
        what="the background ping to reach B",
    )
    send_datagrams(pair.a, [(pair.b.addr4, 7, [IPV4_LOOKING]), (pair.b.addr6, 4, [IPV4_LOOKING])])
    pinger.send_signal(signal.SIGINT)  # ping stops and sums up
    stdout, _ = pinger.communicate(timeout=STOP)
    assert pinger.returncode == 0, stdout

    counts = report(pair.server)
    assert counts.drops.get("malformed") == 2 * 10 * len(GARBAGE), counts
    assert counts.drops.get("offload-mismatch") == 3, counts
    assert counts.drops.get("foreign-source") == 11, counts
    # The peer never moved, and traffic still flows both ways.
    assert pair.server.count("moved to") == 0, pair.server.describe()
    ping_both_ways(pair)
    assert pair.client.running()
    assert pair.server.running()


def test_udp_listener_follows_a_peer_that_comes_back_from_another_port(
    topo: Topology, tmp_path: Path
) -> None:
    pair = start_pair(topo, tmp_path)
    wait_for_ping(pair.a, INNER_B4, timeout=START)
    first_port = pair.server.wait_for(r"^minivpn: peer is 198\.51\.100\.1:(\d+)$")[1]

    assert pair.client.stop(signal.SIGTERM, timeout=STOP) == 0, pair.client.describe()
    client = start_client(pair.a, pair.b, tmp_path, "client-again")
    # The listener takes the new source port once the old one has been silent ROAM seconds.
    wait_for_ping(pair.a, INNER_B4, timeout=START + ROAM)
    second_port = pair.server.wait_for(r"^minivpn: peer moved to 198\.51\.100\.1:(\d+)$")[1]
    assert second_port != first_port
    ping_both_ways(attrs.evolve(pair, client=client))


# -- TCP ----------------------------------------------------------------------------------------


def test_tcp_reconnects_when_either_end_restarts(topo: Topology, tmp_path: Path) -> None:
    pair = start_pair(topo, tmp_path, transport="tcp")
    wait_for_ping(pair.a, INNER_B4, timeout=START)

    # The listener restarts: the connecting side reconnects (with backoff) by itself.
    assert pair.server.stop(signal.SIGTERM, timeout=STOP) == 0, pair.server.describe()
    server = start_server(pair.b, tmp_path, "server-again", transport="tcp")
    wait_for_ping(pair.a, INNER_B4, timeout=START)
    ping_both_ways(attrs.evolve(pair, server=server))
    assert pair.client.count(r"^minivpn: connected to ") == 2, pair.client.describe()

    # The connecting side restarts: the listener takes the new connection.
    assert pair.client.stop(signal.SIGTERM, timeout=STOP) == 0, pair.client.describe()
    client = start_client(pair.a, pair.b, tmp_path, "client-again", transport="tcp")
    wait_for_ping(pair.a, INNER_B4, timeout=START)
    ping_both_ways(Pair(pair.a, pair.b, server, client))
    assert server.count(r"^minivpn: connected to ") == 2, server.describe()


RAW_TCP_CLIENT = """
import socket, sys
host, port, data = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
wait = float(sys.argv[4])
with socket.create_connection((host, port), timeout=10) as sock:
    sock.sendall(data)
    sock.settimeout(wait)
    try:
        while sock.recv(65536):
            pass  # the tunnel may send us packets from its device: it takes us for the peer
        print("closed")
    except ConnectionResetError:
        print("closed")
    except TimeoutError:
        print("open")
"""


def raw_tcp(ns: Namespace, host: str, data: bytes, wait: float) -> str:
    """Connect to HOST:PORT, send *data*, and say whether the other end closed within *wait*."""
    result = ns.run(
        [sys.executable, "-c", RAW_TCP_CLIENT, host, str(PORT), data.hex(), str(wait)],
        timeout=wait + 30,
    )
    return result.stdout.strip()


def test_bad_tcp_frames_close_that_connection_only(topo: Topology, tmp_path: Path) -> None:
    pair = start_pair(topo, tmp_path, transport="tcp")
    wait_for_ping(pair.a, INNER_B4, timeout=START)
    # With the real peer gone, nobody else connects while the raw clients talk to B.
    assert pair.client.stop(signal.SIGINT, timeout=STOP) == 0, pair.client.describe()

    # A well-framed packet of garbage ("h" is 0x68, like IPv6, but 5 bytes are no IPv6 header)
    # is dropped; the connection stays.
    assert raw_tcp(pair.a, pair.b.addr4, b"\x00\x05hello", wait=1.0) == "open"
    # A frame of length 0 is no packet at all: the stream cannot be trusted any more.
    assert raw_tcp(pair.a, pair.b.addr4, b"\x00\x00" + IPV4_LOOKING, wait=STOP) == "closed"
    # The largest length a frame can have, then the connection ends mid-frame.
    assert raw_tcp(pair.a, pair.b.addr6, b"\xff\xff" + bytes(100), wait=0.5) == "open"

    counts = report(pair.server)
    assert counts.drops.get("malformed") == 1, counts
    assert counts.drops.get("bad-frame") == 1, counts
    pair.server.wait_for(r"closing the connection: stream frame of length 0")

    # A good peer is served afterwards.
    client = start_client(pair.a, pair.b, tmp_path, "client-again", transport="tcp")
    wait_for_ping(pair.a, INNER_B4, timeout=START)
    ping_both_ways(attrs.evolve(pair, client=client))


def test_a_second_tcp_client_is_refused_while_the_peer_is_active(
    topo: Topology, tmp_path: Path
) -> None:
    pair = start_pair(topo, tmp_path, transport="tcp")
    wait_for_ping(pair.a, INNER_B4, timeout=START)
    # The peer has just carried pings, so its connection counts as active: an intruder (or a
    # second client) is closed at once instead of throwing the peer out.
    assert raw_tcp(pair.a, pair.b.addr4, b"\x00\x05hello", wait=STOP) == "closed"
    pair.server.wait_for(r"refusing a connection from .*: the peer's connection is active")
    assert report(pair.server).drops.get("foreign-connection") == 1
    ping_both_ways(pair)
    assert pair.server.count(r"^minivpn: connected to ") == 1, pair.server.describe()


TCP_FLOOD = """
import socket, struct, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# Valid frames: UDP datagrams from 10.9.0.1 to 10.9.0.2 port 9, 1400 bytes each.
packet = bytearray(1400)
struct.pack_into("!BBHHHBBH4s4sHHHH", packet, 0, 0x45, 0, 1400, 0, 0, 64, 17, 0,
                 bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2]), 40000, 9, 1380, 0)
burst = (struct.pack("!H", len(packet)) + packet) * 1000
with socket.create_connection((host, port), timeout=10) as sock:
    deadline = time.monotonic() + seconds
    print("flooding", flush=True)
    try:
        while time.monotonic() < deadline:
            sock.sendall(burst)
    except OSError:
        print("closed by the tunnel", flush=True)
"""


def test_a_flood_from_the_peer_does_not_freeze_the_tcp_tunnel(
    topo: Topology, tmp_path: Path
) -> None:
    """While frames pour in faster than B writes them, B still answers signals.

    The connection always has data, so a receiving loop that never yields would hold up every
    other task (the other direction, SIGUSR1, SIGTERM) until the flood stops.
    """
    a, b = topo.pair()
    server = start_server(b, tmp_path, "server", transport="tcp")
    flood = start(a, [sys.executable, "-c", TCP_FLOOD, b.addr4, str(PORT), "40"], tmp_path, "flood")
    flood.wait_for("^flooding$", stream="stdout", timeout=START)
    wait_until(lambda: report(server).rx_packets > 10_000, timeout=START, what="the flood")
    assert flood.running(), flood.describe()  # the counters came while the flood went on
    assert server.stop(signal.SIGTERM, timeout=STOP) == 0, server.describe()
    assert flood.running() or "closed by the tunnel" in flood.stdout(), flood.describe()


# -- signals and devices -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_signal", "server_signal"),
    [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)],
    ids=["client-INT-server-TERM", "client-TERM-server-INT"],
)
def test_signals_report_counters_and_leave_persistent_devices(
    topo: Topology,
    tmp_path: Path,
    client_signal: signal.Signals,
    server_signal: signal.Signals,
) -> None:
    a, b = topo.pair()
    b.run(["ip", "tuntap", "add", "dev", "keep0", "mode", "tun"])
    where = ["--listen", f":{PORT}"]
    server = start_tunnel(b, where, tmp_path, "server", inner=(INNER_B4, INNER_B6), device="keep0")
    client = start_client(a, b, tmp_path, "client")
    pair = Pair(a, b, server, client)
    wait_for_ping(a, INNER_B4, timeout=START)

    # SIGUSR1: counters, and the tunnel goes on.
    counts = report(client)
    assert counts.tx_packets > 0, counts
    assert counts.rx_packets > 0, counts
    ping_both_ways(pair, count=2)
    assert report(client).tx_packets > counts.tx_packets

    assert client.stop(client_signal, timeout=STOP) == 0, client.describe()
    assert server.stop(server_signal, timeout=STOP) == 0, server.describe()
    for process in (client, server):
        stderr = process.stderr()
        assert "Traceback" not in stderr
        # The last word is the counters.
        assert COUNTERS.fullmatch(stderr.strip().splitlines()[-1]), stderr
        assert last_counts(process).tx_packets > 0
    assert not link_exists(a, DEVICE)  # made by the tunnel: gone with it
    assert link_exists(b, "keep0")  # persistent: left as it was
    assert tun_info(b, "keep0")["persist"] is True


@pytest.mark.parametrize(
    ("transport", "side"),
    [("udp", "listen"), ("tcp", "connect")],
    ids=["udp-listen", "tcp-connect"],
)
def test_deleting_the_device_ends_the_tunnel_with_a_clear_message(
    topo: Topology, tmp_path: Path, transport: str, side: str
) -> None:
    ns, b = topo.pair()  # nobody listens in B: the connecting side waits, or retries
    where = ["--listen", f":{PORT}"] if side == "listen" else ["--connect", f"{b.addr4}:{PORT}"]
    tunnel = start_tunnel(
        ns, where, tmp_path, "tunnel", inner=(INNER_A4, INNER_A6), transport=transport
    )
    ns.ip("link", "del", "dev", DEVICE)
    status = tunnel.wait(timeout=STOP)
    stderr = tunnel.stderr()
    assert status not in (0, None), tunnel.describe()
    assert status > 0, tunnel.describe()  # exited, not killed by a signal
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"minivpn: device {DEVICE} was deleted while attached"
    ), stderr


def test_a_tap_device_without_tap_suggests_it(topo: Topology) -> None:
    ns = topo.namespace()
    ns.run(["ip", "tuntap", "add", "dev", DEVICE, "mode", "tap"])
    result = ns.run([*MINIVPN, "tunnel", DEVICE, "--listen", str(PORT)], check=False, timeout=60)
    line = assert_clean_failure(result, lines=None)
    assert line == (
        f"minivpn: cannot attach to {DEVICE}: it is a TAP device, but TUN was requested (use --tap)"
    ), result.stderr


# -- the README's example, as written ------------------------------------------------------------


def readme_tunnel_commands() -> list[list[str]]:
    """The ``minivpn tunnel`` commands of README.md (``hostb# ...``, then ``hosta# ...``)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = [
        shlex.split(match[1], comments=True)
        for match in re.finditer(r"^host[ab]# (minivpn tunnel [^&\n]*)", readme, re.MULTILINE)
    ]
    assert len(commands) == 2, commands
    return commands


def test_the_counters_line_in_docs_tunnel_md_is_the_format_printed() -> None:
    """docs/tunnel.md shows a counters line: the format test_signals_report_counters... wants."""
    (block,) = [
        block
        for block in parse_markdown(REPO_ROOT / "docs" / "tunnel.md")
        if "test_the_counters_line" in (block.directive("checked by") or "")
    ]
    (line,) = block.text.splitlines()
    assert COUNTERS.fullmatch(line), line


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_the_readme_example_works_as_written(
    topo: Topology, tmp_path: Path, transport: str
) -> None:
    """B and A exactly as README.md shows them (``hostb`` is B's address), then with --tcp."""
    listen, connect = readme_tunnel_commands()
    a, b = topo.pair()
    extra = ["--tcp"] if transport == "tcp" else []
    server = start_minivpn(b, [*listen[1:], *extra], tmp_path, "b")
    server.wait_for(rf"^minivpn: device tun0 \(tun\) up; listening on \*:5000 \({transport}\)$")
    connect = [
        b.addr4 + arg[len("hostb") :] if arg.startswith("hostb:") else arg for arg in connect
    ]
    client = start_minivpn(a, [*connect[1:], *extra], tmp_path, "a")
    client.wait_for(
        rf"^minivpn: device tun0 \(tun\) up; connecting to {re.escape(b.addr4)}:5000 "
        rf"\({transport}\)$"
    )
    wait_for_ping(a, "10.9.0.2")
    result = ping(a, "10.9.0.2", count=2)
    assert result.returncode == 0, f"{result.stdout}\n{server.describe()}\n{client.describe()}"


def test_tcp_against_a_udp_listener_says_what_is_wrong(topo: Topology, tmp_path: Path) -> None:
    """The mistake the README used to make: B on UDP (the default), A with --tcp."""
    a, b = topo.pair()
    server = start_server(b, tmp_path, "server")
    assert re.search(r"up; listening on \*:5000 \(udp\)$", server.stderr(), re.MULTILINE)
    client = start_client(a, b, tmp_path, "client", transport="tcp")
    assert re.search(r"up; connecting to \S+:5000 \(tcp\)$", client.stderr(), re.MULTILINE)
    client.wait_for(
        r"cannot connect to \S+:5000: Connection refused \(is the peer listening with --tcp\?\);"
        r" retrying$"
    )


# -- bad command lines ---------------------------------------------------------------------------


#: Usage errors and the message each must give (argparse's, or our checks').
BAD_ARGUMENTS = [
    (["--listen", ":99999"], "port must be a number from 1 to 65535"),
    (["--listen", ":0"], "port must be a number from 1 to 65535"),
    (["--listen", "99999"], "port must be a number from 1 to 65535"),
    (["--listen", "http"], "port must be a number from 1 to 65535"),
    (["--connect", "198.51.100.2:http"], "port must be a number"),
    (["--connect", ":5000"], "a host to connect to is needed"),
    (["--connect", "198.51.100.2"], "expected HOST:PORT"),
    (["--connect", "fd00::2:5000"], "in brackets"),
    (["--connect", "[fd00::zz]:5000"], "not an IPv6 address"),
    (
        ["--connect", "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=:5000"],
        "looks like a key, not HOST:PORT",
    ),
    ([], "one of the arguments --listen --connect is required"),
    (["--listen", ":5000", "--connect", "198.51.100.2:5000"], "not allowed with"),
    (["--listen", ":5000", "--udp", "--tcp"], "not allowed with"),
    (["--listen", ":5000", "--mtu", "20"], "MTU must be a number from 68 to 65535"),
    (["--listen", ":5000", "--address", "10.9.0.1"], "invalid address"),
]


def test_bad_arguments_are_one_line(topo: Topology) -> None:
    ns = topo.namespace()
    commands = [[*MINIVPN, "tunnel", DEVICE, *args] for args, _ in BAD_ARGUMENTS]
    for (args, message), result in zip(BAD_ARGUMENTS, run_all(ns, commands), strict=True):
        line = assert_clean_failure(result)
        assert result.returncode == 2, (args, result)
        assert message in line, (args, line)
        assert "yAnz5TF" not in result.stderr, result.stderr  # a key is never repeated
    assert not link_exists(ns, DEVICE)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_port_in_use_is_one_clear_line(topo: Topology, tmp_path: Path, transport: str) -> None:
    ns = topo.namespace()
    where = ["--listen", f":{PORT}"]
    first = start_tunnel(
        ns, where, tmp_path, "first", inner=(INNER_A4, INNER_A6), transport=transport
    )
    result = ns.run([*MINIVPN, "tunnel", "mvt1", *where, f"--{transport}"], check=False, timeout=30)
    line = assert_clean_failure(result, lines=None)
    assert result.returncode == 1
    assert line == f"minivpn: cannot listen on *:{PORT}: the port is already in use", result.stderr
    assert result.stderr.count("already in use") == 1, result.stderr
    # The port is taken before anything else is done: no device was made or configured.
    assert " up; " not in result.stderr, result.stderr
    assert not link_exists(ns, "mvt1")
    assert first.running(), first.describe()


def test_an_unreachable_udp_peer_is_one_clear_line(topo: Topology) -> None:
    ns = topo.namespace()  # no routes at all
    result = ns.run([*MINIVPN, "tunnel", DEVICE, "--connect", "192.0.2.1:5000"], check=False)
    line = assert_clean_failure(result, lines=None)
    assert line == "minivpn: cannot reach 192.0.2.1:5000: Network is unreachable", result.stderr
    assert not link_exists(ns, DEVICE)


def test_an_unknown_host_is_one_clear_line(topo: Topology) -> None:
    ns = topo.namespace()
    result = ns.run(
        [*MINIVPN, "tunnel", DEVICE, "--connect", "no-such-host.invalid:5000"],
        check=False,
        timeout=60,
    )
    line = assert_clean_failure(result, lines=None)
    assert "no-such-host.invalid" in line, result.stderr
    assert not link_exists(ns, DEVICE)


# -- offload -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "flags"),
    [("udp", ["--offload"]), ("tcp", ["--offload", "--pi"])],
    ids=["udp", "tcp-pi"],
)
def test_offload_carries_ping_and_iperf3(
    topo: Topology, tmp_path: Path, transport: str, flags: list[str]
) -> None:
    pair = start_pair(topo, tmp_path, transport=transport, flags=flags)
    for ns in (pair.a, pair.b):
        info = tun_info(ns, DEVICE)
        assert info["vnet_hdr"] is True
        assert info["pi"] is ("--pi" in flags)
    wait_for_ping(pair.a, INNER_B4, timeout=START)
    ping_both_ways(pair)
    received = iperf3(pair.a, pair.b, INNER_B4, tmp_path)
    server, client = report(pair.server), report(pair.client)
    assert server.rx_bytes > received
    # TCP super-packets crossed whole: on average far bigger than the 1500-byte MTU.
    assert client.tx_bytes > 1500 * client.tx_packets, client
    # Nothing dropped but what was sent before the two ends found each other.
    assert set(server.drops) <= STARTUP_DROPS, server
    assert set(client.drops) <= STARTUP_DROPS, client


def test_offload_on_one_end_only_is_named_as_the_problem(topo: Topology, tmp_path: Path) -> None:
    a, b = topo.pair()
    server = start_server(b, tmp_path, "server")
    start_client(a, b, tmp_path, "client", flags=["--offload"])
    assert ping(a, INNER_B4, count=3, wait=1).returncode != 0
    assert report(server).drops.get("offload-mismatch", 0) >= 3
    server.wait_for("one end uses --offload and the other does not")
