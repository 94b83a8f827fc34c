"""``minivpn trace``, drop counters and logs against real daemons in namespaces.

Two namespaces joined by veth (198.51.100.1 and .2): minivpnd A in the first, minivpnd B (its
peer) in the second, configured with ``wg`` as a user would.  Each reason a packet can be
dropped for that an outsider can provoke is provoked from outside, and both the trace line
(``minivpn trace A --json``, and the human line for the same event) and the counter
(``minivpn show A --json``, per peer where one is known) must say so:

* wrong key: a third daemon C, with A as its peer, whose key A does not know
  (``unknown_peer``); and C again with a wrong public key for A (``invalid_mac1``);
* allowed IPs, on either side: A sends to an address no peer of A's covers (``no_route``), and
  B sends from an address A does not allow for B (``disallowed_source``);
* a replayed data message, captured on the wire (``replayed_counter``);
* garbage (``malformed``) and a data message with an unknown receiver index
  (``unknown_index``);
* a peer with no endpoint (``no_endpoint``).

Then ``minivpn trace`` itself: against ``minivpn up`` as well as ``minivpnd``; ``--peer``,
``--drops-only`` and ``-c``; a reader that does not read loses events, is told how many, and
the tunnel carries on (and a reader that hangs up mid-stream does not stop the interface).
Logs: ``-v`` logs each handshake message and retry; a background ``minivpn up`` says where its
log goes and writes it there; pyroute2's debugging only at ``-vvv``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.helpers.daemons import (  # the fixtures are imported for pytest to find them
    fixture_daemons,  # noqa: F401
    fixture_topo,  # noqa: F401
    interface_name,
)
from tests.helpers.procs import MINIVPN, Process, ping, start, wait_for_ping, wait_until
from tests.helpers.wg import (
    SOCKET_DIR,
    Capture,
    Daemon,
    Lab,
    endpoint,
    genkey,
    inject,
    iperf_result,
    link_pair,
    open_lab,
    start_iperf3,
    wait_for_datagrams,
)

from minivpn.trace_lines import format_event

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.helpers.daemons import Daemons

    from netns import Namespace, Topology

pytestmark = [
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("wg", "dumpcap", "iperf3")),
        reason="needs wg, dumpcap and iperf3",
    ),
    # `minivpn trace` is stopped with SIGINT: not ignored, even under `nox &` in a script.
    pytest.mark.usefixtures("sigint_not_ignored"),
]

A4, B4 = "10.77.0.1", "10.77.0.2"
PORT_A, PORT_B, PORT_C = 51820, 51821, 51822


# --- helpers --------------------------------------------------------------------------------------


class Trace:
    """A running ``minivpn trace NAME --json ARGS`` and the events it printed so far."""

    def __init__(self, ns: Namespace, name: str, log_dir: Path, *args: str) -> None:
        tag = f"trace-{name}-{time.monotonic_ns()}"
        self.process = start(ns, [*MINIVPN, "trace", name, "--json", *args], log_dir, tag)
        self.process.wait_for(r"^minivpn: tracing ", timeout=15)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.process.stdout().splitlines() if line]

    def wait_for(self, what: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first event *match* accepts, once it comes (bounded)."""

        def found() -> dict[str, Any] | None:
            return next((event for event in self.events() if match(event)), None)

        return wait_until(found, timeout=15, what=f"{what} in the trace\n{self.describe()}")

    def describe(self) -> str:
        return self.process.describe()

    def stop(self) -> str:
        """Ctrl-C; the summary line it printed."""
        if self.process.running():
            self.process.stop(signal.SIGINT)
        return self.process.stderr().strip().splitlines()[-1]


def shown(ns: Namespace, name: str) -> dict[str, Any]:
    """``minivpn show NAME --json``."""
    result = ns.run([*MINIVPN, "show", name, "--json"], check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def device_drops(ns: Namespace, name: str) -> dict[str, int]:
    return shown(ns, name)["drops"]  # type: ignore[no-any-return]


def peer_drops(ns: Namespace, name: str, key: str) -> dict[str, int]:
    [peer] = [p for p in shown(ns, name)["peers"] if p["public_key"] == key]
    return peer["drops"]  # type: ignore[no-any-return]


def drop_event(trace: Trace, reason: str) -> dict[str, Any]:
    return trace.wait_for(f"a drop for {reason}", lambda e: e.get("reason") == reason)


def human(event: dict[str, Any]) -> str:
    """The human line of an event, without its time."""
    return format_event(event).split(" ", 1)[1]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path, "tr") as lab:
        yield lab


def connected(lab: Lab) -> tuple[Namespace, Namespace, Daemon, Daemon]:
    """A and B, peers of each other, B told A's endpoint, with a session."""
    a, b = lab.topology.pair()
    x, y = lab.minivpnd(a, "A"), lab.minivpnd(b, "B")
    link_pair(
        x,
        y,
        x_endpoint=endpoint(b.addr4, PORT_B),
        y_endpoint=endpoint(a.addr4, PORT_A),
        x_port=PORT_A,
        y_port=PORT_B,
    )
    wait_for_ping(a, B4)
    return a, b, x, y


# --- each reason, from outside --------------------------------------------------------------------


def test_each_reason_from_outside_is_traced_and_counted(lab: Lab, tmp_path: Path) -> None:
    a, b, x, y = connected(lab)
    trace = Trace(a, x.name, tmp_path)

    # Allowed IPs, sending side: nobody's allowed IPs hold 10.77.0.77.
    ping(a, "10.77.0.77")
    dropped = drop_event(trace, "no_route")
    assert human(dropped) == (
        "DROP      no_route: no peer's allowed ips contain its destination: IP 10.77.0.1 > "
        f"10.77.0.77: ICMP echo request, id {int(dropped['head'][48:52], 16)}, seq 1, length 64"
    )
    assert device_drops(a, x.name)["no_route"] >= 1

    # Allowed IPs, receiving side: B sends from an address that A does not allow for B.
    b.ip("addr", "add", "10.77.0.99/24", "dev", y.name)
    b.run(["ping", "-c", "1", "-W", "1", "-I", "10.77.0.99", A4], check=False)
    dropped = drop_event(trace, "disallowed_source")
    assert dropped["peer"] == y.public_key
    assert human(dropped).startswith(
        f"DROP      disallowed_source: data from {b.addr4}:{PORT_B}, receiver 0x"
    )
    assert "IP 10.77.0.99 > 10.77.0.1: ICMP echo request" in human(dropped)
    assert peer_drops(a, x.name, y.public_key)["disallowed_source"] == 1
    # The steps it passed before: decrypted and replay-checked, with its counter.
    steps = [e["event"] for e in trace.events() if e.get("counter") == dropped["counter"]]
    assert steps[-3:] == ["decrypted", "replay_checked", "drop"]

    # A replay: a data message from B to A, captured on the wire, sent again.
    capture = Capture(b, b.veth, f"udp and dst port {PORT_A}", tmp_path, "replay")
    wait_for_ping(b, A4)
    [message] = wait_for_datagrams(
        capture,
        lambda d: d.payload[:1] == b"\x04" and len(d.payload) > 32,
        1,
        timeout=10,
        what="a data message from B to A",
    )[:1]
    capture.stop()
    data = [message.payload]
    inject(b, (a.addr4, PORT_A), [data[0]])
    dropped = drop_event(trace, "replayed_counter")
    assert dropped["peer"] == y.public_key
    assert dropped["counter"] == int.from_bytes(data[0][8:16], "little")
    assert "its counter was seen before" in human(dropped)
    assert peer_drops(a, x.name, y.public_key)["replayed_counter"] == 1

    # Garbage, and a data message for a receiver index nobody has.
    inject(b, (a.addr4, PORT_A), [b"\x09garbage, not wireguard", b"\x04\0\0\0" + bytes(44)])
    dropped = drop_event(trace, "malformed")
    assert human(dropped).startswith(f"DROP      malformed: unknown from {b.addr4}:")
    dropped = drop_event(trace, "unknown_index")
    assert human(dropped).startswith(f"DROP      unknown_index: data from {b.addr4}:")
    assert "receiver 0x00000000, counter 0" in human(dropped)
    drops = device_drops(a, x.name)
    assert (drops["malformed"], drops["unknown_index"]) == (1, 1)

    # A peer without an endpoint: a packet for it can start no handshake.
    lonely = genkey()
    x.add_peer(lonely.public, allowed_ips=["10.77.9.0/24"])
    a.ip("route", "add", "10.77.9.0/24", "dev", x.name)
    ping(a, "10.77.9.1")
    dropped = drop_event(trace, "no_endpoint")
    assert dropped["peer"] == lonely.public
    not_sent = trace.wait_for("the initiation not sent", lambda e: e.get("endpoint", 1) is None)
    assert human(not_sent) == (
        f"hs-out    initiation for peer {lonely.public[:8]}… not sent: it has no endpoint"
    )
    assert peer_drops(a, x.name, lonely.public)["no_endpoint"] >= 1

    # Wrong keys: C knows A, but A does not know C; then C has a wrong key for A.
    z = lab.minivpnd(b, "C")
    z.set_private_key(listen_port=PORT_C)
    z.add_peer(x.public_key, allowed_ips=["10.78.0.1/32"], endpoint=endpoint(a.addr4, PORT_A))
    z.add_addresses("10.78.0.2/24")
    ping(b, "10.78.0.1")
    dropped = drop_event(trace, "unknown_peer")
    assert human(dropped) == (
        f"DROP      unknown_peer: initiation from {b.addr4}:{PORT_C}: the public key it "
        f"claims, {z.public_key}, is no peer of ours"
    )
    z.set("peer", x.public_key, "remove")
    z.add_peer(genkey().public, allowed_ips=["10.78.0.1/32"], endpoint=endpoint(a.addr4, PORT_A))
    ping(b, "10.78.0.1")
    dropped = drop_event(trace, "invalid_mac1")
    assert "its mac1 is not made for our public key" in human(dropped)
    drops = device_drops(a, x.name)
    assert drops["unknown_peer"] >= 1
    assert drops["invalid_mac1"] >= 1

    # wg show stays wg show: no line of minivpn's, whatever the counters hold.
    text = x.wg("show", x.name).stdout
    assert "drop" not in text
    assert "minivpn" not in text
    assert trace.stop().startswith("minivpn: ")


# --- the trace itself -----------------------------------------------------------------------------


def test_peer_drops_only_and_count(lab: Lab, tmp_path: Path) -> None:
    a, _, x, y = connected(lab)
    for_b = Trace(a, x.name, tmp_path, "--peer", y.public_key)
    drops = Trace(a, x.name, tmp_path, "--drops-only")
    three = start(a, [*MINIVPN, "trace", x.name, "-c", "3"], tmp_path, "three")
    three.wait_for(r"^minivpn: tracing ", timeout=15)
    ping(a, B4)
    ping(a, "10.77.0.77")  # no route: a drop of no peer
    drops.wait_for("the no_route drop", lambda e: e.get("reason") == "no_route")
    for_b.wait_for("the echo reply written", lambda e: e["event"] == "tun_write")
    assert three.wait(timeout=15) == 0
    lines = three.stdout().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].split()[1:3] == ["tun-read", "IP"]  # the human lines, by default
    assert three.stderr().strip().endswith("minivpn: 3 events, 0 lost")
    for_b.stop()
    drops.stop()
    assert {e["peer"] for e in for_b.events()} == {y.public_key}
    assert {e["event"] for e in drops.events()} == {"drop"}


def test_a_slow_reader_loses_events_counted_and_the_tunnel_carries_on(
    lab: Lab, tmp_path: Path
) -> None:
    a, b, x, _ = connected(lab)
    path = SOCKET_DIR / f"{x.name}.trace"
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(str(path))
    slow.sendall(b'{"peer": null, "drops_only": false}\n')
    rude = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rude.connect(str(path))
    rude.sendall(b"{}\n")
    with slow:
        # Neither reads while TCP goes through the tunnel for two seconds.
        result = iperf_result(start_iperf3(b, a, B4, seconds=2))
        assert result.total_bytes > 0
        rude.close()  # hangs up with events waiting: the interface must not mind
        slow.settimeout(10)
        received = b""
        while b'"lost"' not in received:
            chunk = slow.recv(1 << 16)
            assert chunk, "the trace ended without a word of what was lost"
            received += chunk
    events = [json.loads(line) for line in received.split(b"\n")[:-1]]  # whole lines
    assert events[0]["event"] == "hello"
    lost = [event for event in events if event["event"] == "lost"]
    assert lost[0]["count"] > 0
    wait_for_ping(a, B4)  # still carrying
    assert x.running()


@pytest.mark.parametrize(
    ("request_line", "message"),
    [
        (b"[" * 3000 + b"\n", "the request is not JSON"),  # nested deeper than Python recurses
        (b'{"drops_only": 1}\n', "drops_only must be true or false"),
    ],
)
def test_a_bad_request_gets_an_error_and_the_interface_carries_on(
    lab: Lab, request_line: bytes, message: str
) -> None:
    a, _, x, _ = connected(lab)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(SOCKET_DIR / f"{x.name}.trace"))
        client.sendall(request_line)
        client.settimeout(10)
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    assert json.loads(answer) == {"event": "error", "message": message}
    wait_for_ping(a, B4)  # still carrying
    assert x.running()


def test_trace_of_minivpn_up_and_its_log(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    """``minivpn up -v`` in the background: where its log goes, what it holds, and a trace."""
    a, b = topo.pair()
    name_a, name_b = interface_name("mvt", "a"), interface_name("mvt", "b")
    keys_a, keys_b = genkey(), genkey()
    configs = {}
    for name, keys, other, address, peer_address, port, peer_port, host in (
        (name_a, keys_a, keys_b, "10.65.0.1", "10.65.0.2", 52211, 52212, b.addr4),
        (name_b, keys_b, keys_a, "10.65.0.2", "10.65.0.1", 52212, 52211, a.addr4),
    ):
        configs[name] = tmp_path / f"{name}.conf"
        configs[name].write_text(
            f"[Interface]\nPrivateKey = {keys.private}\nListenPort = {port}\n"
            f"Address = {address}/24\n\n[Peer]\nPublicKey = {other.public}\n"
            f"AllowedIPs = {peer_address}/32\nEndpoint = {host}:{peer_port}\n"
        )
        configs[name].chmod(0o600)
    log_file = tmp_path / "a.log"
    up_a = a.run(
        [*MINIVPN, "up", str(configs[name_a]), "-v", "--log-file", str(log_file)],
        check=False,
        timeout=60,
    )
    assert up_a.returncode == 0, up_a.stderr
    daemons.find(name_a)
    assert f"log: {log_file}" in up_a.stdout + up_a.stderr
    up_b = b.run([*MINIVPN, "-v", "up", str(configs[name_b])], check=False, timeout=60)
    assert up_b.returncode == 0, up_b.stderr
    daemons.find(name_b)
    # Without --log-file: MINIVPN_LOG_DIR (the tests' own; /var/log/minivpn otherwise).
    said = re.search(r"log: (\S+)", up_b.stdout + up_b.stderr)
    assert said, up_b
    default_log = said.group(1)
    assert default_log == f"{os.environ['MINIVPN_LOG_DIR']}/{name_b}.log"
    trace = Trace(a, name_a, tmp_path)
    wait_for_ping(a, "10.65.0.2", timeout=20)
    trace.wait_for("the echo reply", lambda e: e["event"] == "tun_write")
    trace.stop()
    kinds = [e["event"] for e in trace.events()]
    assert "tun_read" in kinds
    assert "route" in kinds

    def logged(path: str, text: str) -> bool:
        with open(path) as log:
            return text in log.read()

    # -v: each handshake message, from either side; the session.
    wait_until(lambda: logged(str(log_file), "hs-out    initiation to "), timeout=10, what="log")
    wait_until(
        lambda: logged(default_log, "hs-in     initiation from "),
        timeout=10,
        what=f"the initiation in {default_log}:\n{Path(default_log).read_text()}",
    )
    assert logged(str(log_file), "handshake with peer ")
    for ns, name in ((a, name_a), (b, name_b)):
        down = ns.run([*MINIVPN, "down", name], check=False, timeout=60)
        assert down.returncode == 0, down.stderr


def test_v_logs_handshake_retries_and_vvv_the_libraries(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    a, _ = topo.pair()
    name = interface_name("mvt", "r")
    keys, peer = genkey(), genkey()
    config = tmp_path / f"{name}.conf"
    # Nobody listens at that endpoint: initiations go unanswered and are retried every 5 s.
    config.write_text(
        f"[Interface]\nPrivateKey = {keys.private}\nListenPort = 52221\nAddress = 10.66.0.1/24\n"
        f"\n[Peer]\nPublicKey = {peer.public}\nAllowedIPs = 10.66.0.2/32\n"
        "Endpoint = 198.51.100.2:9\n"
    )
    config.chmod(0o600)
    verbose = start(a, [*MINIVPN, "up", "--foreground", str(config), "-v"], tmp_path, "v")
    try:
        verbose.wait_for(r"is up", timeout=30)
        ping(a, "10.66.0.2")
        verbose.wait_for(
            r"hs-out    initiation to 198\.51\.100\.2:9 .*: no session yet", timeout=10
        )
        verbose.wait_for(r"retry 1 of 19, no response for 5 s", timeout=15)
        assert "netlink" not in verbose.stderr().lower()
    finally:
        verbose.stop(signal.SIGTERM)
    assert "Traceback" not in verbose.stderr()
    debug = start(a, [*MINIVPN, "-vvv", "up", "--foreground", str(config)], tmp_path, "vvv")
    try:
        debug.wait_for(r"is up", timeout=30)
    finally:
        debug.stop(signal.SIGTERM)
    quieter = start(a, [*MINIVPN, "-vv", "up", "--foreground", str(config)], tmp_path, "vv")
    try:
        quieter.wait_for(r"is up", timeout=30)
    finally:
        quieter.stop(signal.SIGTERM)
    library_lines = _library_lines(debug)
    assert library_lines, debug.describe()
    assert not _library_lines(quieter), quieter.describe()


def _library_lines(process: Process) -> list[str]:
    """Lines of pyroute2's debugging output (minivpn's own lines are words, not dumps)."""
    return [line for line in process.stderr().splitlines() if "nlmsg" in line or "NL" in line]


def test_trace_of_an_interface_that_is_not_there(topo: Topology) -> None:
    a, _ = topo.pair()
    result = a.run([*MINIVPN, "trace", "nosuchwg0"], check=False, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"minivpn: no interface nosuchwg0: {SOCKET_DIR}/nosuchwg0.sock does not exist"
    ]


def test_trace_of_wireguard_go_says_it_has_none(lab: Lab) -> None:
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    a, _ = lab.topology.pair()
    go = lab.wireguard_go(a, "G")
    result = a.run([*MINIVPN, "trace", go.name], check=False, timeout=60)
    assert result.returncode != 0
    assert "wireguard-go has no trace" in result.stderr
    assert "Traceback" not in result.stderr


# --- wg reads a minivpnd with counters as it reads any daemon -------------------------------------


def _uapi_get(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        client.sendall(b"get=1\n\n")
        response = b""
        while not response.endswith(b"\n\n"):
            chunk = client.recv(1 << 16)
            assert chunk, response
            response += chunk
    return response


def _serve_once_per_client(path: Path, response: bytes) -> threading.Thread:
    """A UAPI socket at *path* that answers every ``get`` with *response* (a thread)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    listener.settimeout(0.2)  # to see soon that the file is gone

    def serve() -> None:
        with listener:
            while path.exists():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                with connection:
                    request = b""
                    while not request.endswith(b"\n\n"):
                        chunk = connection.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    if request.endswith(b"\n\n"):  # (wg first connects only to see it is there)
                        connection.sendall(response)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _relative_times(text: str) -> str:
    """*text* with ``wg show``'s "latest handshake: N seconds ago" made one value.

    ``wg`` works out "N seconds ago" from its own clock when it prints, so two ``wg show`` run a
    moment apart may straddle a second; ``wg show dump`` has the handshake's time itself, and
    is compared exactly.
    """
    return re.sub(r"latest handshake: [^\n]* ago", "latest handshake: (some time) ago", text)


def test_wg_prints_the_same_with_and_without_minivpn_counters(lab: Lab) -> None:
    """A minivpnd whose ``get`` carries ``minivpn_drop``/``minivpn_counter`` lines, read by the
    real ``wg``, against the same answer without those lines, served from a socket of the
    test's own: ``wg show``, ``wg show dump`` and ``wg showconf`` print the same bytes."""
    a, b, x, y = connected(lab)
    ping(a, "10.77.0.77")  # a drop, so that there is a device counter too
    b.ip("addr", "add", "10.77.0.99/24", "dev", y.name)
    b.run(["ping", "-c", "1", "-W", "1", "-I", "10.77.0.99", A4], check=False)  # a peer's drop
    wait_until(lambda: b"disallowed_source" in _uapi_get(SOCKET_DIR / f"{x.name}.sock"),
               timeout=10, what="the drop counted")  # fmt: skip
    for _ in range(20):  # until no byte counter moves between the reads
        response = _uapi_get(SOCKET_DIR / f"{x.name}.sock")
        lines = response.decode().split("\n")
        assert any(line.startswith("minivpn_drop=no_route:") for line in lines)
        assert any(line.startswith("minivpn_drop=disallowed_source:") for line in lines)
        assert any(line.startswith("minivpn_counter=initiations_sent:") for line in lines)
        plain = "\n".join(line for line in lines if not line.startswith("minivpn_")).encode()
        twin = lab.name("W")
        twin_path = SOCKET_DIR / f"{twin}.sock"
        thread = _serve_once_per_client(twin_path, plain)
        try:
            outputs = {}
            for name in (x.name, twin):
                outputs[name] = [
                    _relative_times(x.wg("show", name, *what).stdout.replace(name, "NAME"))
                    for what in ((), ("dump",), ("allowed-ips",), ("transfer",))
                ] + [x.wg("showconf", name).stdout]
        finally:
            twin_path.unlink()
            thread.join(timeout=5)
        if _uapi_get(SOCKET_DIR / f"{x.name}.sock") == response:
            break
    else:
        pytest.fail("the counters kept moving")
    assert outputs[x.name] == outputs[twin]
    assert "drop" not in "".join(outputs[x.name])
