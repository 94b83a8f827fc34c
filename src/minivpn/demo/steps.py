"""``minivpn demo``, step by step: what the reader sees, from two namespaces to the teardown.

:func:`run_demo` checks what the demo needs, then runs the steps, printing each:

1. two network namespaces joined by a veth pair, configured through netlink
   (:mod:`minivpn.demo.namespaces`, :mod:`minivpn.netconf`);
2. a fresh key pair per peer (only the public keys are printed; the private keys exist only in
   the two configuration files, mode 0600 in a private directory that is deleted at the end);
3. ``python -m minivpn up CONF --foreground`` in each namespace
   (:class:`~minivpn.demo.processes.Runner`);
4. ``ping`` from A to B's inner address, through the tunnel; with ``--trace``, what
   ``minivpn trace`` saw A do with each packet meanwhile, the handshake first;
5. a small helper in B (:mod:`minivpn.demo.helpers`) reads B's WireGuard device with an
   ``AF_PACKET`` socket and prints the decrypted packets it sees, decoded by
   :func:`minivpn.framing.summary.summarize`;
6. the handshake time and the byte counters, read from A's and B's UAPI sockets
   (:func:`minivpn.runtime.uapi_client.get_device`, what ``wg show`` prints);
7. a short throughput test from A to B (``iperf3``, or a small Python TCP test without it);
8. teardown (:class:`~minivpn.demo.processes.Teardown`): every process stopped by PID, both
   namespaces deleted (their links go with them), the private directory removed.  This also
   happens on failure and on Ctrl-C.

The UAPI sockets and configuration files go to a private temporary directory
(``MINIVPN_SOCKET_DIR``), so the demo never touches ``/var/run/wireguard``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import attrs

from minivpn.demo.errors import DemoError, NeedsRoot
from minivpn.demo.namespaces import (
    VethEnd,
    build_network,
    create_namespace,
    has_capabilities,
    mount_tmpfs,
    netns_dir_mount_target,
    umount,
)
from minivpn.demo.processes import DEMO_STOP_SIGNALS, Runner, Teardown, stop, tail, wait_for_output
from minivpn.documentation import doc_path

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from minivpn.wireguard.keys import PrivateKey, PublicKey
    from minivpn.wireguard.uapi import DeviceSnapshot

__all__ = [
    "INNER_A",
    "INNER_B",
    "LISTEN_PORT",
    "OUTER_A",
    "OUTER_B",
    "DemoOptions",
    "run_demo",
]

#: The addresses on the veth pair (documentation range, only inside the demo's namespaces).
OUTER_A = "198.51.100.1/24"
OUTER_B = "198.51.100.2/24"
#: The addresses on the WireGuard devices: the tunnel's inside.
INNER_A = "10.99.0.1/24"
INNER_B = "10.99.0.2/24"
#: Both peers listen on the standard WireGuard port: each namespace has its own ports.
LISTEN_PORT = 51820
#: The TCP port of the throughput test (iperf3's default).
THROUGHPUT_PORT = 5201

#: The command line of the demo's helpers (:func:`minivpn.demo.helpers.helper_main`).
_HELPER = (sys.executable, "-m", "minivpn.demo.helpers")
#: Seconds a peer may take to come up (answer on its UAPI socket).
START_TIMEOUT = 15.0
# TCP state LISTEN as /proc/net/tcp writes it (include/net/tcp_states.h).
_TCP_LISTEN = "0A"


@attrs.frozen
class DemoOptions:
    """What ``minivpn demo`` was asked to do.

    Attributes:
        pings: echo requests sent from A to B.
        seconds: length of the throughput test; 0 skips it.
        use_iperf3: measure with iperf3 when it is installed (else a small Python TCP test).
        trace: run ``minivpn trace`` on A during the ping and show what it printed.
    """

    pings: int = 3
    seconds: float = 3.0
    use_iperf3: bool = True
    trace: bool = False


@attrs.frozen
class _Peer:
    """One side of the demo: its namespace, links, addresses and key."""

    label: str
    namespace: str
    veth: str
    interface: str
    outer: ipaddress.IPv4Interface
    inner: ipaddress.IPv4Interface
    private_key: PrivateKey  # its repr() is redacted; it is only ever written to the config

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()


def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Build the two namespaces, run the VPN, show what happens, and remove everything.

    Args:
        options: what to do.
        out: where the narrative goes (standard output by default).

    Returns:
        0 when every step worked.

    Raises:
        NeedsRoot: no CAP_NET_ADMIN/CAP_SYS_ADMIN (an ordinary user outside ``unshare -Urnm``).
        DemoError: a step failed; the message says which and why.  Everything made so far has
            been torn down by then.
    """
    stream = sys.stdout if out is None else out

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    run_torn_down(_run_steps, options, say)
    try:
        vpn, demo = doc_path("vpn.md"), doc_path("demo.md")
    except FileNotFoundError:  # an installation without its docs: name them as in the source
        vpn, demo = Path("docs/vpn.md"), Path("docs/demo.md")
    say(f"\nHow it works: read {vpn} (and {demo} for this demo, step by step).")
    return 0


def run_torn_down(
    steps: Callable[[DemoOptions, Callable[[str], None], Teardown, str | None], None],
    options: DemoOptions,
    say: Callable[[str], None],
) -> None:
    """Run a demo's *steps*, then tear down everything they made, whatever happened.

    The steps get the options, a ``say`` that raises a pending interrupt, the teardown to
    register what they make, and the mount target of ``_check_prerequisites``.  SIGINT, SIGTERM
    and SIGHUP interrupt them (``_stop_signals_interrupt``).

    Raises:
        NeedsRoot: no CAP_NET_ADMIN/CAP_SYS_ADMIN.
        DemoError: a step failed (everything made so far is torn down by then).
        KeyboardInterrupt: a stop signal (after "Interrupted." and the teardown).
    """
    mount_target = _check_prerequisites()
    teardown = Teardown()
    with _stop_signals_interrupt() as signalled:

        def say_between_steps(text: str = "") -> None:
            # A signal's KeyboardInterrupt can be lost: if it is raised while Python runs an
            # at-fork callback (pyroute2 and subprocess fork), Python prints it and goes on.
            # The flag stays set, so the next line the steps print raises it again.
            if signalled():
                raise KeyboardInterrupt
            say(text)

        try:
            steps(options, say_between_steps, teardown, mount_target)
            if signalled():
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            say("\nInterrupted.")
            raise
        finally:
            teardown.run(say)


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[Callable[[], bool]]:
    """Inside the block, SIGINT, SIGTERM and SIGHUP stop the demo with a full teardown.

    The first of them raises KeyboardInterrupt; later ones are ignored, so that pressing Ctrl-C
    again cannot break off the teardown that the first one started.  The block gets a function
    that tells whether one has arrived (its KeyboardInterrupt may have been swallowed).

    Only in this process.  pyroute2 forks to create a namespace, and a fork of the demo that has
    not called exec runs the demo's Python code: if a signal raised KeyboardInterrupt there,
    the fork would run the demo's teardown too, deleting the namespaces under the real demo's
    feet.  A fork dies of the signal instead, as it would without a handler.
    """
    owner = os.getpid()
    interrupted = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    previous = {}
    for signum in DEMO_STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. nohup: leave it ignored
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield lambda: interrupted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def prepare(teardown: Teardown, mount_target: str | None) -> tuple[str, Path]:
    """A demo's tag (in the names of all it makes) and work directory; the tmpfs on
    *mount_target*, if the prerequisites asked for one.

    Each is registered with *teardown* before it exists, as everything the steps make is.
    """
    tag = secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix=f"minivpn-demo-{tag}-"))  # mode 0700
    teardown.add(f"removed {workdir}", lambda: shutil.rmtree(workdir, ignore_errors=True))
    if mount_target is not None:
        mount_tmpfs(mount_target)
        teardown.add(f"unmounted the tmpfs on {mount_target}", lambda: umount(mount_target))
    return tag, workdir


def _run_steps(
    options: DemoOptions,
    say: Callable[[str], None],
    teardown: Teardown,
    mount_target: str | None,
) -> None:
    """Steps 1 to 7; everything they make is registered with *teardown* before it exists."""
    from minivpn.wireguard.keys import PrivateKey

    tag, workdir = prepare(teardown, mount_target)

    a, b = (
        _Peer(
            label=label,
            namespace=f"minivpn-demo-{tag}-{label.lower()}",
            veth=f"mvveth{tag}{label.lower()}",
            interface=f"mvwg{tag}{label.lower()}",
            outer=ipaddress.IPv4Interface(outer),
            inner=ipaddress.IPv4Interface(inner),
            private_key=PrivateKey.generate(),
        )
        for label, outer, inner in (("A", OUTER_A, INNER_A), ("B", OUTER_B, INNER_B))
    )
    say("minivpn demo: a WireGuard VPN between two network namespaces, built here and removed.")

    say("\n1. Two network namespaces, joined by a veth pair (netlink, through pyroute2)")
    namespaces = {peer.label: create_namespace(peer.namespace, teardown) for peer in (a, b)}
    end_a, end_b = (VethEnd(namespaces[peer.label], peer.veth, peer.outer) for peer in (a, b))
    build_network(end_a, end_b)
    for peer in (a, b):
        say(f"   {peer.label}: namespace {peer.namespace:<24} {peer.veth} {peer.outer}")

    say("\n2. A fresh key pair for each peer (only the public halves are shown)")
    for peer in (a, b):
        say(f"   {peer.label}: public key {peer.public_key.to_base64()}")

    say("\n3. Both peers up: `minivpn up CONF --foreground` inside each namespace")
    env = {**os.environ, "MINIVPN_SOCKET_DIR": str(workdir)}
    runner = Runner(workdir, env, teardown)
    for peer, other in ((a, b), (b, a)):
        config = _write_config(workdir, peer, other)
        process = runner.start(
            namespaces[peer.label],
            f"up-{peer.label.lower()}",
            [sys.executable, "-m", "minivpn", "up", str(config), "--foreground"],
        )
        snapshot = _wait_until_up(peer, workdir, process, runner.log_of(process))
        say(
            f"   {peer.label}: {peer.interface} {peer.inner}, UDP port {snapshot.listen_port}, "
            f"PID {process.pid}, peer {other.label} at {other.outer.ip}:{LISTEN_PORT}"
        )

    capture = runner.start(
        namespaces["B"],
        "capture",
        [*_HELPER, "--capture", b.interface, str(2 * options.pings)],
    )
    wait_for_output(runner, capture, "ready", what="the packet capture in B")

    trace = None
    if options.trace:  # attached before the first packet, so that it sees the handshake
        trace_command = ["trace", a.interface, "--peer", b.public_key.to_base64()]
        trace = runner.start(
            namespaces["A"], "trace-a", [sys.executable, "-m", "minivpn", *trace_command]
        )
        wait_for_output(runner, trace, "Ctrl-C to stop", what="minivpn trace in A")

    ping = ["ping", "-n", "-c", str(options.pings), "-i", "0.2", "-W", "2", str(b.inner.ip)]
    say(f"\n4. Ping from A to B through the tunnel: {' '.join(ping)}")
    received = _ping(runner, namespaces["A"], ping, options.pings, say)
    if trace is not None:
        say(f"\n   What A did with each packet: minivpn {' '.join(trace_command)}")
        for line in _collect_trace(runner, trace):
            say(f"   {line}")
    if received == 0:
        raise DemoError(
            f"no echo reply came back through the tunnel from {b.inner.ip}; "
            f"the peers' logs:\n{runner.tail('up-a')}\n{runner.tail('up-b')}"
        )

    say(f"\n5. The ICMP seen inside B: decrypted packets crossing {b.interface} (AF_PACKET socket)")
    for line in _collect_capture(runner, capture):
        say(f"   {line}")

    say("\n6. The tunnel, as each peer's UAPI socket reports it (what `wg show` prints)")
    for peer, other in ((a, b), (b, a)):
        say(f"   {peer.label}: {_describe_peer(_snapshot(peer, workdir), other)}")

    if options.seconds <= 0:
        say("\n7. Throughput: skipped (--seconds 0)")
    elif options.use_iperf3 and shutil.which("iperf3"):
        say(f"\n7. Throughput from A to B through the tunnel: iperf3 -t {options.seconds:g}")
        rate = _iperf3(runner, namespaces, b, options.seconds)
        say(f"   {_mbits(rate)} (received by B)")
    else:
        why = "iperf3 is not installed" if options.use_iperf3 else "--no-iperf3"
        say(
            f"\n7. Throughput from A to B through the tunnel: a {options.seconds:g} s Python "
            f"TCP test ({why})"
        )
        rate = _python_throughput(runner, namespaces, b, options.seconds)
        say(f"   {_mbits(rate)} (received by B)")


def _check_prerequisites() -> str | None:
    """Refuse early, before making anything, when the demo cannot work here.

    Returns:
        Where a tmpfs must be mounted so that namespaces can be created (see
        :func:`~minivpn.demo.namespaces.netns_dir_mount_target`), or None.

    Raises:
        NeedsRoot: no CAP_NET_ADMIN or CAP_SYS_ADMIN.
        DemoError: ``ping`` is missing, ``/dev/net/tun`` cannot be opened, or namespaces
            cannot be created here.
    """
    if not has_capabilities():
        raise NeedsRoot
    if shutil.which("ping") is None:
        raise DemoError("minivpn demo needs ping (Debian: apt install iputils-ping)")
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        mode = ""
        with contextlib.suppress(OSError):
            mode = f" (mode {os.stat('/dev/net/tun').st_mode & 0o777:04o})"
        raise DemoError(
            f"cannot open /dev/net/tun{mode}: the demo needs it to create the WireGuard devices; "
            "its usual mode is 0666 (root can run: chmod 0666 /dev/net/tun)"
        )
    return netns_dir_mount_target()


# --- the peers ------------------------------------------------------------------------------------


def _write_config(workdir: Path, peer: _Peer, other: _Peer) -> Path:
    """Write *peer*'s configuration, ``NAME.conf`` (mode 0600): the interface is named after it."""
    from minivpn.wireguard.config import (
        Config,
        Endpoint,
        InterfaceConfig,
        PeerConfig,
        format_config,
    )

    config = Config(
        interface=InterfaceConfig(
            private_key=peer.private_key, listen_port=LISTEN_PORT, addresses=(peer.inner,)
        ),
        peers=(
            PeerConfig(
                public_key=other.public_key,
                allowed_ips=(ipaddress.IPv4Network(f"{other.inner.ip}/32"),),
                endpoint=Endpoint(str(other.outer.ip), LISTEN_PORT),
            ),
        ),
    )
    path = workdir / f"{peer.interface}.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as file:
        file.write(format_config(config))
    return path


def _snapshot(peer: _Peer, workdir: Path) -> DeviceSnapshot:
    from minivpn.runtime.uapi_client import get_device

    return get_device(peer.interface, workdir, timeout=5.0)


def _wait_until_up(
    peer: _Peer, workdir: Path, process: subprocess.Popen[bytes], log: Path
) -> DeviceSnapshot:
    """Wait until *peer*'s interface answers on its UAPI socket with a bound port.

    Raises:
        DemoError: the process exited, or it did not answer within START_TIMEOUT.
    """
    from minivpn.runtime.uapi_client import UapiClientError

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise DemoError(
                f"`minivpn up` for peer {peer.label} exited with status {process.returncode}:\n"
                f"{tail(log)}"
            )
        with contextlib.suppress(UapiClientError):
            snapshot = _snapshot(peer, workdir)
            if snapshot.listen_port:
                return snapshot
        if time.monotonic() > deadline:
            raise DemoError(
                f"peer {peer.label} did not come up within {START_TIMEOUT:g} s:\n{tail(log)}"
            )
        time.sleep(0.05)


def _describe_peer(snapshot: DeviceSnapshot, other: _Peer) -> str:
    """One ``wg show``-like line about *other*, as seen in *snapshot*."""
    for remote in snapshot.peers:
        if remote.public_key == other.public_key:
            break
    else:
        return f"peer {other.label} is missing from the configuration"
    if remote.last_handshake_time_sec:
        age = time.time() - remote.last_handshake_time_sec - remote.last_handshake_time_nsec / 1e9
        handshake = f"handshake done {max(age, 0.0):.1f} s ago"
    else:
        handshake = "no handshake yet"
    return (
        f"peer {other.label} at {remote.endpoint or '(no endpoint)'}, {handshake}, "
        f"transfer {_bytes(remote.rx_bytes)} received, {_bytes(remote.tx_bytes)} sent"
    )


def _bytes(count: int) -> str:
    """A byte count the way ``wg show`` writes it: 123 B, 1.21 KiB, 3.40 MiB..."""
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    units = ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.2f} {units[0]}"


def _mbits(bits_per_second: float) -> str:
    mbits = bits_per_second / 1e6
    return f"{mbits:.0f} Mbit/s" if mbits >= 10 else f"{mbits:.2f} Mbit/s"


# --- traffic --------------------------------------------------------------------------------------


def _ping(
    runner: Runner, namespace: int, command: list[str], count: int, say: Callable[[str], None]
) -> int:
    """Run ping in *namespace*, show its replies and summary, return how many replies came.

    Raises:
        DemoError: ping did not finish in time or failed for another reason than lost replies.
    """
    result = runner.run(namespace, command, timeout=10.0 + count)
    lines = result.stdout.splitlines()
    shown = [line for line in lines if " bytes from " in line or "packets transmitted" in line]
    shown += [line for line in lines if line.startswith(("rtt ", "round-trip"))]
    for line in shown:
        say(f"   {line}")
    match = re.search(r"(\d+) (?:packets )?received", result.stdout)
    if match is None:
        raise DemoError(f"ping failed (status {result.returncode}): {result.stderr.strip()}")
    return int(match.group(1))


def _collect_trace(runner: Runner, trace: subprocess.Popen[bytes]) -> list[str]:
    """The lines ``minivpn trace`` printed, once the last events have reached it.

    The interface hands events to the trace every 50 ms; a second later, Ctrl-C (SIGINT)
    ends the trace, which prints its count of events on standard error: that line, and the
    one it began with, are not events and are left out.
    """
    time.sleep(1.0)
    with contextlib.suppress(ProcessLookupError):
        trace.send_signal(signal.SIGINT)
    try:
        trace.wait(timeout=3.0)
    except subprocess.TimeoutExpired:
        stop(trace)
    lines = runner.output(trace).splitlines()
    events = [line for line in lines if line.strip() and not line.startswith("minivpn: ")]
    return events or ["(no events: the trace saw nothing)"]


def _collect_capture(runner: Runner, capture: subprocess.Popen[bytes]) -> list[str]:
    """The decoded lines the capture helper printed (after its "ready" line).

    It stops by itself after the expected number of packets; if fewer came, it is stopped.

    Raises:
        DemoError: the helper failed.
    """
    try:
        capture.wait(timeout=3.0)
    except subprocess.TimeoutExpired:
        stop(capture)
    lines = runner.output(capture).splitlines()
    if capture.returncode not in (0, -signal.SIGTERM):
        raise DemoError(
            f"the packet capture in B failed (status {capture.returncode}):\n"
            + "\n".join(lines[-5:])
        )
    packets = [line for line in lines[1:] if line.strip()]
    return packets or ["(nothing was seen)"]


def _wait_for_listener(runner: Runner, process: subprocess.Popen[bytes], port: int) -> None:
    """Wait until *process*'s namespace has a TCP socket listening on *port*.

    ``/proc/PID/net/tcp`` lists the TCP sockets of the network namespace *process* is in, so
    this works from outside the namespace and needs nothing from the server's output.

    Raises:
        DemoError: the process exited, or nothing listened within 10 s.
    """
    wanted = f":{port:04X}"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(
                f"the throughput server in B exited with status {process.returncode}:\n"
                f"{runner.output(process)[-500:]}"
            )
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{process.pid}/net/{table}").read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[1].endswith(wanted) and fields[3] == _TCP_LISTEN:
                        return
        time.sleep(0.05)
    raise DemoError("the throughput server in B did not start listening within 10 s")


def _iperf3(runner: Runner, namespaces: dict[str, int], b: _Peer, seconds: float) -> float:
    """iperf3 from A to B's inner address; the bits per second B received.

    Raises:
        DemoError: iperf3 failed.
    """
    address = str(b.inner.ip)
    server = runner.start(
        namespaces["B"],
        "iperf3-server",
        ["iperf3", "-s", "-1", "-B", address, "-p", str(THROUGHPUT_PORT)],
    )
    _wait_for_listener(runner, server, THROUGHPUT_PORT)
    client = ["iperf3", "-c", address, "-p", str(THROUGHPUT_PORT), "-t", f"{seconds:g}", "-J"]
    result = runner.run(namespaces["A"], client, timeout=seconds + 30.0)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = {}
    error = report.get("error") if isinstance(report, dict) else None
    try:
        rate = float(report["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError):
        detail = error or result.stderr.strip() or result.stdout.strip()[-300:]
        raise DemoError(f"iperf3 failed (status {result.returncode}): {detail}") from None
    return rate


def _python_throughput(
    runner: Runner, namespaces: dict[str, int], b: _Peer, seconds: float
) -> float:
    """The small TCP test of the demo's helpers, from A to B; the bits per second B received.

    Raises:
        DemoError: a helper failed.
    """
    address = str(b.inner.ip)
    sink = runner.start(
        namespaces["B"], "tcp-sink", [*_HELPER, "--tcp-sink", address, str(THROUGHPUT_PORT)]
    )
    _wait_for_listener(runner, sink, THROUGHPUT_PORT)
    source = [*_HELPER, "--tcp-source", address, str(THROUGHPUT_PORT), f"{seconds:g}"]
    result = runner.run(namespaces["A"], source, timeout=seconds + 30.0)
    if result.returncode != 0:
        raise DemoError(f"the TCP test's sender failed: {result.stderr.strip()[-300:]}")
    try:
        sink.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        raise DemoError("the TCP test's receiver did not finish") from None
    match = re.search(r"received (\d+) bytes in ([0-9.]+) s", runner.output(sink))
    if sink.returncode != 0 or match is None or float(match.group(2)) <= 0:
        raise DemoError(f"the TCP test's receiver failed: {runner.output(sink)[-300:]}")
    return int(match.group(1)) * 8 / float(match.group(2))
