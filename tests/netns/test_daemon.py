"""``minivpnd``: the wireguard-go contract, checked with real devices, namespaces and ``wg``.

The daemon is started the way ``wg-quick`` and wireguard-go's ``tests/netns.sh`` start
wireguard-go: ``minivpnd IFNAME`` returns once the device and the UAPI socket exist, and a
background process (not a child of the test: it was forked by the command, which exited) runs
the interface.  The tests find that process through the socket (``SO_PEERCRED``) and every test
stops the processes it found by PID, before the namespaces go (the ``daemons`` and ``topo``
fixtures of :mod:`tests.helpers.daemons`).

Run inside ``netns/isolate`` (private network namespace and private ``/run``, where
``/var/run/wireguard`` lives), as ``tests/conftest.py`` arranges.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.helpers.daemons import (  # the fixtures are imported for pytest to find them
    fixture_daemons,  # noqa: F401
    fixture_topo,  # noqa: F401
    interface_name,
    link,
    socket_owner,
    wg,
)
from tests.helpers.procs import assert_clean_failure, ping, start, wait_for_ping, wait_until
from tests.helpers.runas import run_call_as, tun_openable_by_everyone
from tests.helpers.wg import MINIVPND, SOCKET_DIR, genkey

if TYPE_CHECKING:
    from tests.helpers.daemons import Daemons

    from netns import Namespace, Topology

pytestmark = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools)")

#: This module, as tests.helpers.runas imports it in the child process.
HERE = "tests.netns.test_daemon"


def fresh_name(tag: str = "d") -> str:
    """An interface name no other test uses (the socket directory is shared)."""
    return interface_name("mvd", tag)


# --- small helpers --------------------------------------------------------------------------------


def minivpnd(
    ns: Namespace, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``minivpnd ARGS`` in *ns* and wait for the command (not the daemon) to return."""
    full_env = {**os.environ, **(env or {})}
    return ns.run([*MINIVPND, *args], check=False, timeout=30, env=full_env)


def start_minivpnd(ns: Namespace, name: str, daemons: Daemons) -> int:
    """``minivpnd NAME`` in *ns*, which must succeed.

    Returns:
        The PID of the daemon it left running (remembered by *daemons*, to be stopped).
    """
    result = minivpnd(ns, name)
    assert result.returncode == 0, result.stderr
    return daemons.find(name)


def set_config(ns: Namespace, name: str, config: str, tmp_path: Path) -> None:
    """``wg setconf NAME FILE`` with *config* (keys go through a file, never the command line)."""
    path = tmp_path / f"{name}.wg"
    path.write_text(config)
    path.chmod(0o600)
    ns.run(["wg", "setconf", name, str(path)], timeout=30)


@dataclass(frozen=True)
class MovedPair:
    """Two peered minivpnd interfaces, as :func:`moved_pair` leaves them.

    Attributes:
        ns0: where both daemons run and their UDP sockets are (they talk over its loopback).
        ns1, ns2: where the devices ``one`` and ``two`` were moved (up, with their addresses).
        one, two: the interface names.
        public1, public2: their public keys.
    """

    ns0: Namespace
    ns1: Namespace
    ns2: Namespace
    one: str
    two: str
    public1: str
    public2: str


def moved_pair(
    topo: Topology,
    daemons: Daemons,
    tmp_path: Path,
    *,
    tags: tuple[str, str],
    subnet: str,
    ports: tuple[int, int],
) -> MovedPair:
    """wireguard-go's tests/netns.sh setup: two daemons in ns0, their devices moved away.

    Both daemons are started in a new namespace ns0; device ``one`` is moved to a new ns1 and
    device ``two`` to a new ns2.  Through the sockets (still in ns0) each gets a new key, its
    listen port from *ports*, and the other as its peer at ``127.0.0.1:PORT``.  Then ``one``
    gets ``SUBNET.1/24``, ``two`` gets ``SUBNET.2/24``, and both are brought up.

    Args:
        topo, daemons: the test's fixtures.
        tmp_path: where the ``wg setconf`` files go.
        tags: the tags of the two interface names (see :func:`fresh_name`).
        subnet: the first three bytes of an IPv4 /24, like ``10.92.0``.
        ports: the listen ports of ``one`` and ``two``.
    """
    ns0, ns1, ns2 = topo.namespace("z"), topo.namespace("o"), topo.namespace("t")
    one, two = fresh_name(tags[0]), fresh_name(tags[1])
    for name, ns in ((one, ns1), (two, ns2)):
        start_minivpnd(ns0, name, daemons)
        ns0.ip("link", "set", name, "netns", ns.name)
    keys1, keys2 = genkey(), genkey()
    set_config(
        ns0,
        one,
        f"[Interface]\nPrivateKey = {keys1.private}\nListenPort = {ports[0]}\n\n"
        f"[Peer]\nPublicKey = {keys2.public}\nAllowedIPs = {subnet}.2/32\n"
        f"Endpoint = 127.0.0.1:{ports[1]}\n",
        tmp_path,
    )
    set_config(
        ns0,
        two,
        f"[Interface]\nPrivateKey = {keys2.private}\nListenPort = {ports[1]}\n\n"
        f"[Peer]\nPublicKey = {keys1.public}\nAllowedIPs = {subnet}.1/32\n"
        f"Endpoint = 127.0.0.1:{ports[0]}\n",
        tmp_path,
    )
    for name, ns, address in ((one, ns1, f"{subnet}.1/24"), (two, ns2, f"{subnet}.2/24")):
        ns.ip("address", "add", address, "dev", name)
        ns.ip("link", "set", name, "up")
    return MovedPair(ns0, ns1, ns2, one, two, keys1.public, keys2.public)


# --- the contract ---------------------------------------------------------------------------------


def test_returns_once_device_and_socket_exist(topo: Topology, daemons: Daemons) -> None:
    ns = topo.namespace()
    name = fresh_name()
    made_the_directory = not SOCKET_DIR.exists()
    result = minivpnd(ns, name)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # Right after the command returned, both exist (no waiting here: that is the contract).
    found = link(ns, name)
    assert found is not None, f"no device {name} right after minivpnd returned"
    path = SOCKET_DIR / f"{name}.sock"
    mode = path.lstat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    if made_the_directory:  # wireguard-go, run earlier in the session, makes it 0755
        assert stat.S_IMODE(SOCKET_DIR.stat().st_mode) == 0o700
    assert found["mtu"] == 1420
    assert "tun" in ns.ip("-d", "link", "show", name).stdout
    pid = daemons.find(name)
    # A daemon: not the process the test started, in a session of its own, stdio on /dev/null.
    assert os.getsid(pid) == pid
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/2") == "/dev/null"
    # Starts empty: no key, a random port, no peers.
    dump = wg(ns, "show", name, "dump").splitlines()
    assert len(dump) == 1
    private, public, port, fwmark = dump[0].split("\t")
    assert (private, public, fwmark) == ("(none)", "(none)", "off")
    assert 0 < int(port) < 65536


def test_configured_through_wg(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("w")
    start_minivpnd(ns, name, daemons)
    keys, peer_public = genkey(), genkey().public
    set_config(
        ns,
        name,
        f"[Interface]\nPrivateKey = {keys.private}\nListenPort = 51990\n\n"
        f"[Peer]\nPublicKey = {peer_public}\nAllowedIPs = 10.91.0.2/32, fd00:91::/64\n"
        "Endpoint = 127.0.0.1:51991\nPersistentKeepalive = 25\n",
        tmp_path,
    )
    assert wg(ns, "show", name, "public-key").strip() == keys.public
    assert wg(ns, "show", name, "listen-port").strip() == "51990"
    assert wg(ns, "show", name, "allowed-ips").split() == [
        peer_public,
        "10.91.0.2/32",
        "fd00:91::/64",
    ]
    assert wg(ns, "show", name, "endpoints").split() == [peer_public, "127.0.0.1:51991"]
    # The daemon really listens where wg said.
    listening = ns.run(["ss", "-Hlun"]).stdout
    assert "0.0.0.0:51990" in listening
    assert "[::]:51990" in listening
    # And `wg set` changes it again.
    ns.run(["wg", "set", name, "listen-port", "51992", "peer", peer_public, "remove"])
    assert wg(ns, "show", name, "listen-port").strip() == "51992"
    assert wg(ns, "show", name, "peers").strip() == ""


def test_keeps_working_after_the_device_moves_to_another_namespace(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    """wireguard-go's tests/netns.sh setup: daemons in ns0 (UDP over its loopback), the two
    TUN devices moved into ns1 and ns2, configured through the sockets, then pinged."""
    pair = moved_pair(
        topo, daemons, tmp_path, tags=("a", "b"), subnet="10.92.0", ports=(52001, 52002)
    )
    ns0, ns1, ns2 = pair.ns0, pair.ns1, pair.ns2
    for name in (pair.one, pair.two):
        assert link(ns0, name) is None
    wait_for_ping(ns1, "10.92.0.2", timeout=20)
    wait_for_ping(ns2, "10.92.0.1", timeout=20)
    handshakes = wg(ns0, "show", pair.one, "latest-handshakes").split()
    assert handshakes[0] == pair.public2
    assert int(handshakes[1]) > 0
    transfer = wg(ns0, "show", pair.two, "transfer").split()
    assert int(transfer[1]) > 0
    assert int(transfer[2]) > 0


def test_follows_link_down_and_up_after_a_move(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    """Down, the link drops the peer's packets; up again, traffic flows again."""
    pair = moved_pair(
        topo, daemons, tmp_path, tags=("c", "e"), subnet="10.93.0", ports=(52011, 52012)
    )
    ns1, ns2, two = pair.ns1, pair.ns2, pair.two
    wait_for_ping(ns1, "10.93.0.2", timeout=20)
    ns2.ip("link", "set", two, "down")
    assert ping(ns1, "10.93.0.2", count=3).returncode != 0
    ns2.ip("link", "set", two, "up")
    wait_for_ping(ns1, "10.93.0.2", timeout=20)


def test_exits_when_the_device_is_deleted(topo: Topology, daemons: Daemons) -> None:
    ns0, ns1 = topo.namespace("z"), topo.namespace("o")
    name = fresh_name("x")
    pid = start_minivpnd(ns0, name, daemons)
    ns0.ip("link", "set", name, "netns", ns1.name)  # deleted in another namespace, even
    ns1.ip("link", "del", name)
    daemons.wait_gone(pid)
    assert not (SOCKET_DIR / f"{name}.sock").exists()


def test_exits_when_the_socket_file_is_removed(topo: Topology, daemons: Daemons) -> None:
    ns = topo.namespace()
    name = fresh_name("r")
    pid = start_minivpnd(ns, name, daemons)
    (SOCKET_DIR / f"{name}.sock").unlink()
    daemons.wait_gone(pid)
    assert link(ns, name) is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_exits_on_signal_and_cleans_up(
    topo: Topology, daemons: Daemons, signum: signal.Signals
) -> None:
    ns = topo.namespace()
    name = fresh_name("s")
    pid = start_minivpnd(ns, name, daemons)
    os.kill(pid, signum)
    daemons.wait_gone(pid)
    assert link(ns, name) is None
    assert not (SOCKET_DIR / f"{name}.sock").exists()


def test_a_sigint_during_start_up_counts_when_started_ignoring_sigint(
    topo: Topology, daemons: Daemons
) -> None:
    """A script's background job starts with SIGINT ignored.  minivpnd, like wireguard-go,
    stops on SIGINT all the same, even on one that arrives while it starts (stop_signals_held)."""
    ns = topo.namespace()
    name = fresh_name("i")
    ignoring = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *MINIVPND, name]
    result = ns.run(ignoring, check=False, timeout=30, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    pid = daemons.find(name)  # the daemon has just taken over the socket: it is starting trio
    os.kill(pid, signal.SIGINT)
    daemons.wait_gone(pid)
    assert link(ns, name) is None


@pytest.mark.parametrize("how", ["-f", "--foreground", "WG_PROCESS_FOREGROUND=1"])
def test_foreground(topo: Topology, tmp_path: Path, how: str) -> None:
    ns = topo.namespace()
    name = fresh_name("f")
    if how.startswith("-"):
        command = ["env", "LOG_LEVEL=verbose", *MINIVPND, how, name]
    else:
        command = ["env", "LOG_LEVEL=verbose", how, *MINIVPND, name]
    process = start(ns, command, tmp_path, "daemon")
    process.wait_for(rf"minivpnd \({name}\): {name} is up")
    # `env` and `ip netns exec` exec the command: the PID is the daemon's, in the foreground.
    assert socket_owner(SOCKET_DIR / f"{name}.sock") == process.pid
    assert link(ns, name) is not None
    assert process.stop(signal.SIGTERM) == 0
    assert link(ns, name) is None
    assert not (SOCKET_DIR / f"{name}.sock").exists()
    assert "Traceback" not in process.stderr()


def test_log_level_keeps_the_daemons_output(topo: Topology, daemons: Daemons) -> None:
    """With LOG_LEVEL set (and not silent) the daemon keeps stderr, as wireguard-go does."""
    ns = topo.namespace()
    name = fresh_name("l")
    log_path = Path(tempfile.mkdtemp()) / "log"
    with log_path.open("w") as log_file:
        result = subprocess.run(
            [*ns.prefix(), *MINIVPND, name],
            stdout=log_file,
            stderr=log_file,
            env={**os.environ, "LOG_LEVEL": "verbose"},
            timeout=30,
            check=False,
        )
    assert result.returncode == 0
    pid = daemons.find(name)
    wait_until(
        lambda: f"{name} is up" in log_path.read_text(), timeout=10, what="the daemon's log line"
    )
    os.kill(pid, signal.SIGTERM)
    daemons.wait_gone(pid)
    assert "SIGTERM" in log_path.read_text()


# --- refusals -------------------------------------------------------------------------------------


def test_already_running(topo: Topology, daemons: Daemons) -> None:
    ns0, ns1 = topo.namespace("z"), topo.namespace("o")
    name = fresh_name("u")
    pid = start_minivpnd(ns0, name, daemons)
    # Moved away, the name is free in ns0 again; the socket is not.
    ns0.ip("link", "set", name, "netns", ns1.name)
    second = minivpnd(ns0, name)
    line = assert_clean_failure(second)
    assert "already running" in line
    assert link(ns0, name) is None, "the refused daemon left a device behind"
    assert socket_owner(SOCKET_DIR / f"{name}.sock") == pid, "the first daemon lost its socket"


def test_name_taken_by_another_kind_of_link(topo: Topology) -> None:
    ns = topo.namespace()
    name = fresh_name("k")
    ns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    line = assert_clean_failure(minivpnd(ns, name))
    assert line == (
        f"minivpnd ({name}): cannot create {name}: a network device of that name exists "
        "and is not a TUN device"
    )
    assert not (SOCKET_DIR / f"{name}.sock").exists()
    assert "veth" in ns.ip("-d", "link", "show", name).stdout


def test_tun_device_attached_elsewhere(topo: Topology, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("t")
    holder = start(ns, [sys.executable, "-m", "minivpn", "tun", "attach", name], tmp_path, "hold")
    holder.wait_for("attached", stream="stdout")
    line = assert_clean_failure(minivpnd(ns, name))
    assert "another process is attached to it" in line
    assert not (SOCKET_DIR / f"{name}.sock").exists()
    assert holder.running()


def test_stale_socket_is_replaced(topo: Topology, daemons: Daemons) -> None:
    ns = topo.namespace()
    name = fresh_name("o")
    path = SOCKET_DIR / f"{name}.sock"
    SOCKET_DIR.mkdir(mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening, then closed: what a killed daemon leaves
    old_inode = path.lstat().st_ino
    start_minivpnd(ns, name, daemons)
    assert path.lstat().st_ino != old_inode
    assert wg(ns, "show", name, "listen-port").strip().isdigit()


def test_invalid_name() -> None:
    result = subprocess.run(
        [*MINIVPND, "no/slash"], capture_output=True, text=True, timeout=30, check=False
    )
    assert_clean_failure(result)
    assert "no/slash" in result.stderr


@pytest.mark.realroot
def test_unprivileged_user_gets_a_clear_message(tmp_path: Path) -> None:
    name = fresh_name("p")
    # The default socket directory belongs to root: that is the first refusal.
    denied = run_call_as(f"{HERE}:run_minivpnd", ["-f", name], uid=65534, gid=65534)
    assert_clean_failure(denied)
    assert "permission denied" in denied.stderr
    assert "root" in denied.stderr
    # With a socket directory of its own, the device is what it may not create.
    own_dir = Path(tempfile.mkdtemp())
    own_dir.chmod(0o755)
    os.chown(own_dir, 65534, 65534)
    env_dir = own_dir / "sockets"
    with tun_openable_by_everyone():
        denied = run_call_as(
            f"{HERE}:run_minivpnd_in", [str(env_dir), "-f", name], uid=65534, gid=65534
        )
    assert_clean_failure(denied)
    assert "needs CAP_NET_ADMIN" in denied.stderr
    assert not (env_dir / f"{name}.sock").exists()
    shutil.rmtree(own_dir)


# --- wg-quick -------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("wg-quick") is None, reason="needs wg-quick")
def test_wg_quick_runs_minivpnd(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    """``WG_QUICK_USERSPACE_IMPLEMENTATION=minivpnd wg-quick up`` and ``down``.

    wg-quick falls back to the userspace program only when the kernel has no WireGuard
    module; the test is skipped where it has one.
    """
    if Path("/sys/module/wireguard").exists():
        pytest.skip("the kernel has WireGuard: wg-quick would not use minivpnd")
    ns = topo.namespace()
    name = fresh_name("q")
    launcher = tmp_path / "minivpnd"
    launcher.write_text(f'#!/bin/sh\nexec {" ".join(MINIVPND)} "$@"\n')
    launcher.chmod(0o755)
    private, peer_public = genkey().private, genkey().public
    config = tmp_path / f"{name}.conf"
    config.write_text(
        f"[Interface]\nPrivateKey = {private}\nListenPort = 52021\n"
        "Address = 10.94.0.1/24, fd00:94::1/64\nMTU = 1400\n\n"
        f"[Peer]\nPublicKey = {peer_public}\nAllowedIPs = 10.94.0.2/32, 10.95.0.0/16\n"
        "Endpoint = 127.0.0.1:52022\n"
    )
    config.chmod(0o600)
    env = {**os.environ, "WG_QUICK_USERSPACE_IMPLEMENTATION": str(launcher)}
    up = ns.run(["wg-quick", "up", str(config)], env=env, check=False, timeout=60)
    assert up.returncode == 0, up.stderr
    assert "Falling back to slow userspace implementation" in up.stderr
    pid = daemons.find(name)
    assert "minivpn.daemon" in Path(f"/proc/{pid}/cmdline").read_text()
    found = link(ns, name)
    assert found is not None
    assert found["mtu"] == 1400
    assert "10.94.0.1/24" in ns.ip("-4", "address", "show", name).stdout
    assert "10.95.0.0/16" in ns.ip("-4", "route", "show", "dev", name).stdout
    assert wg(ns, "show", name, "listen-port").strip() == "52021"
    assert wg(ns, "show", name, "allowed-ips").split() == [
        peer_public,
        "10.94.0.2/32",
        "10.95.0.0/16",
    ]
    down = ns.run(["wg-quick", "down", str(config)], env=env, check=False, timeout=60)
    assert down.returncode == 0, down.stderr
    daemons.wait_gone(pid)
    assert link(ns, name) is None
    assert not (SOCKET_DIR / f"{name}.sock").exists()
    assert "10.95.0.0/16" not in ns.ip("-4", "route", "show").stdout


# --- run in a child process by tests.helpers.runas, after it dropped privileges ---------------


def run_minivpnd(*args: str) -> int:
    from minivpn.daemon import main

    return main(list(args))


def run_minivpnd_in(socket_dir: str, *args: str) -> int:
    os.environ["MINIVPN_SOCKET_DIR"] = socket_dir
    return run_minivpnd(*args)
