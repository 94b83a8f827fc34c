"""``minivpn up`` and ``minivpn down`` with real devices, routes, namespaces and ``wg``.

Each test writes a configuration file, runs ``minivpn up`` inside a namespace made by
:class:`netns.Topology`, and looks at the result the way a user would: ``ip`` for the device,
its MTU, addresses and routes, ``wg`` for the WireGuard side, ``ls`` for the socket.  After
``minivpn down`` (or a failure) nothing may be left: no device, no route, no socket, no process.

``minivpn up`` forks a daemon that is not a child of the test; it is found through its UAPI
socket (the kernel tells a client the listening process's PID, ``SO_PEERCRED``) and stopped by
PID at the end of every test, before the namespaces are deleted (the ``daemons`` and ``topo``
fixtures of :mod:`tests.helpers.daemons`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.helpers.daemons import (  # the fixtures are imported for pytest to find them
    fixture_daemons,  # noqa: F401
    fixture_topo,  # noqa: F401
    interface_name,
    link,
    process_alive,
    socket_owner,
    wg,
)
from tests.helpers.procs import (
    MINIVPN,
    assert_clean_failure,
    start,
    wait_for_ping,
)
from tests.helpers.wg import SOCKET_DIR, genkey

if TYPE_CHECKING:
    import subprocess

    from tests.helpers.daemons import Daemons

    from netns import Namespace, Topology

pytestmark = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools)")


def fresh_name(tag: str = "u") -> str:
    """An interface name no other test uses (the socket directory is shared)."""
    return interface_name("mvu", tag)


# --- helpers --------------------------------------------------------------------------------------


def minivpn(ns: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``minivpn ARGS`` in *ns*; wait for the command (not for a daemon it forks)."""
    return ns.run([*MINIVPN, *args], check=False, timeout=60)


def bring_up(
    ns: Namespace, config: Path, name: str, daemons: Daemons
) -> tuple[subprocess.CompletedProcess[str], int]:
    """``minivpn up CONFIG`` in *ns*, which must succeed and leave interface *name* running.

    Returns:
        The finished command, and the PID of the daemon serving *name* (remembered by
        *daemons*, to be stopped).
    """
    up = minivpn(ns, "up", str(config))
    assert up.returncode == 0, up.stderr
    return up, daemons.find(name)


def take_down(ns: Namespace, argument: str) -> None:
    """``minivpn down ARGUMENT`` in *ns*, which must succeed."""
    result = minivpn(ns, "down", argument)
    assert result.returncode == 0, result.stderr


def write_config(directory: Path, name: str, text: str, mode: int = 0o600) -> Path:
    """Write *text* to ``DIRECTORY/NAME.conf`` with *mode*; return the path."""
    path = directory / f"{name}.conf"
    path.write_text(text)
    path.chmod(mode)
    return path


@dataclass(frozen=True)
class BasicConfig:
    """A file written by :func:`write_basic_config`, and the public keys in it.

    Attributes:
        path: the file.
        public: the interface's public key.
        peer_public: its peer's.
    """

    path: Path
    public: str
    peer_public: str


def write_basic_config(
    directory: Path,
    name: str,
    *,
    port: int,
    extra_interface: str = "",
    allowed_ips: str = "10.61.0.2/32, 10.62.0.0/16, fd00:62::/48",
    endpoint: str | None = "127.0.0.1:9",
    mode: int = 0o600,
) -> BasicConfig:
    """Write ``DIRECTORY/NAME.conf``: an interface with one peer, each with a new key.

    Args:
        directory, name: where the file goes (``minivpn up`` names the interface after it).
        port: the interface's ListenPort; its addresses are 10.61.0.1/24 and fd00:61::1/64.
        extra_interface: more lines for the ``[Interface]`` section, each ending in ``\\n``.
        allowed_ips, endpoint: the peer's AllowedIPs and Endpoint (None: no Endpoint line).
        mode: the file's permissions.
    """
    keys, peer = genkey(), genkey()
    text = (
        "[Interface]\n"
        f"PrivateKey = {keys.private}\n"
        f"ListenPort = {port}\n"
        "Address = 10.61.0.1/24, fd00:61::1/64\n"
        f"{extra_interface}"
        "\n[Peer]\n"
        f"PublicKey = {peer.public}\n"
        f"AllowedIPs = {allowed_ips}\n"
        + (f"Endpoint = {endpoint}\n" if endpoint is not None else "")
    )
    return BasicConfig(write_config(directory, name, text, mode), keys.public, peer.public)


def addresses(ns: Namespace, name: str) -> set[str]:
    """The global addresses of link *name* in *ns*, as ``ADDRESS/PREFIXLEN``."""
    found: list[dict[str, object]] = json.loads(ns.ip("-j", "address", "show", name).stdout)
    infos = found[0]["addr_info"]
    assert isinstance(infos, list)
    return {f"{info['local']}/{info['prefixlen']}" for info in infos if info["scope"] == "global"}


def routes(ns: Namespace, *selector: str) -> set[str]:
    """Destinations of the IPv4 and IPv6 routes matching ``ip route show SELECTOR``."""
    found: set[str] = set()
    for family in ("-4", "-6"):
        # A table with no routes of a family "does not exist" for that family: an error.
        result = ns.ip("-j", family, "route", "show", *selector, check=False)
        if result.returncode != 0:
            assert "does not exist" in result.stderr, result.stderr
            continue
        entries: list[dict[str, object]] = json.loads(result.stdout or "[]")
        found |= {str(entry["dst"]) for entry in entries}
    return found


def assert_nothing_left(ns: Namespace, name: str) -> None:
    """No device *name* in *ns*, no socket, and no route to the tests' inner addresses."""
    assert link(ns, name) is None, f"device {name} is still there"
    assert not (SOCKET_DIR / f"{name}.sock").exists(), "the socket file is still there"
    leftovers = {
        route
        for route in routes(ns, "table", "all")
        if route.startswith(("10.6", "10.7", "fd00:6", "fd00:7"))
    }
    assert not leftovers, f"routes left behind: {leftovers}"


# --- up and down ----------------------------------------------------------------------------------


def test_up_sets_everything_and_down_removes_it(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    ns = topo.namespace()
    name = fresh_name()
    written = write_basic_config(tmp_path, name, port=52101, extra_interface="MTU = 1380\n")
    up, pid = bring_up(ns, written.path, name, daemons)
    assert f"{name} is up: UDP port 52101" in up.stderr
    assert "Traceback" not in up.stderr
    assert os.getsid(pid) == pid  # a daemon, in a session of its own

    found = link(ns, name)
    assert found is not None
    assert found["mtu"] == 1380
    flags = found["flags"]
    assert isinstance(flags, list)
    assert "UP" in flags
    assert addresses(ns, name) == {"10.61.0.1/24", "fd00:61::1/64"}
    # 10.61.0.2/32 lies inside the interface's own 10.61.0.0/24: the kernel routes it already.
    assert routes(ns, "dev", name, "proto", "static") == {"10.62.0.0/16", "fd00:62::/48"}
    mode = (SOCKET_DIR / f"{name}.sock").lstat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600

    assert wg(ns, "show", name, "public-key").strip() == written.public
    assert wg(ns, "show", name, "listen-port").strip() == "52101"
    assert wg(ns, "show", name, "allowed-ips").split() == [
        written.peer_public,
        "10.61.0.2/32",
        "10.62.0.0/16",
        "fd00:62::/48",
    ]
    assert wg(ns, "show", name, "endpoints").split() == [written.peer_public, "127.0.0.1:9"]

    down = minivpn(ns, "down", name)
    assert down.returncode == 0, down.stderr
    assert down.stderr == f"minivpn: {name} is down\n"
    assert not process_alive(pid)
    assert_nothing_left(ns, name)
    # Once more: there is nothing to take down.
    again = minivpn(ns, "down", name)
    assert assert_clean_failure(again).startswith(f"minivpn: no interface {name}")


def test_mtu_without_a_setting_follows_the_path_to_the_endpoint(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    """As wg-quick: the MTU towards the peer's endpoint minus 80 (1400 -> 1320)."""
    a, b = topo.pair()
    a.ip("link", "set", a.veth, "mtu", "1400")
    name = fresh_name("m")
    written = write_basic_config(tmp_path, name, port=52131, endpoint=f"{b.addr4}:52132")
    bring_up(a, written.path, name, daemons)
    found = link(a, name)
    assert found is not None
    assert found["mtu"] == 1320
    take_down(a, name)


def test_mtu_without_endpoints_follows_the_default_route(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    """No endpoint to look at: the default route's MTU minus 80; here the route sets one."""
    a, _ = topo.pair()
    a.ip("route", "add", "default", "via", "198.51.100.2", "dev", a.veth, "mtu", "1380")
    name = fresh_name("d")
    written = write_basic_config(tmp_path, name, port=52133, endpoint=None)
    bring_up(a, written.path, name, daemons)
    found = link(a, name)
    assert found is not None
    assert found["mtu"] == 1300
    take_down(a, name)


def test_two_interfaces_talk(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    """Two ``minivpn up`` interfaces in two namespaces joined by veth: ping through the tunnel."""
    a, b = topo.pair()
    name_a, name_b = fresh_name("a"), fresh_name("b")
    keys_a, keys_b = genkey(), genkey()
    config_a = write_config(
        tmp_path,
        name_a,
        f"[Interface]\nPrivateKey = {keys_a.private}\nListenPort = 52111\n"
        "Address = 10.63.0.1/24, fd00:63::1/64\n\n"
        f"[Peer]\nPublicKey = {keys_b.public}\n"
        "AllowedIPs = 10.63.0.2/32, fd00:63::2/128, 10.64.0.0/24\n"
        f"Endpoint = {b.addr4}:52112\n",
    )
    config_b = write_config(
        tmp_path,
        name_b,
        f"[Interface]\nPrivateKey = {keys_b.private}\nListenPort = 52112\n"
        "Address = 10.63.0.2/24, fd00:63::2/64, 10.64.0.1/24\n\n"
        f"[Peer]\nPublicKey = {keys_a.public}\nAllowedIPs = 10.63.0.1/32, fd00:63::1/128\n"
        f"Endpoint = [{a.addr6}]:52111\n",
    )
    for ns, config, name in ((a, config_a, name_a), (b, config_b, name_b)):
        bring_up(ns, config, name, daemons)
    wait_for_ping(a, "10.63.0.2", timeout=20)
    wait_for_ping(b, "fd00:63::1", timeout=20)
    wait_for_ping(a, "10.64.0.1", timeout=20)  # through the route for AllowedIPs 10.64.0.0/24
    handshake = wg(a, "show", name_a, "latest-handshakes").split()
    assert handshake[0] == keys_b.public
    assert int(handshake[1]) > 0
    for ns, name in ((a, name_a), (b, name_b)):
        take_down(ns, name)
        assert_nothing_left(ns, name)


def test_down_accepts_the_config_file(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("c")
    config = write_basic_config(tmp_path, name, port=52121).path
    _, pid = bring_up(ns, config, name, daemons)
    take_down(ns, str(config))
    assert not process_alive(pid)
    assert_nothing_left(ns, name)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_foreground_stops_cleanly_on_signal(
    topo: Topology, tmp_path: Path, signum: signal.Signals
) -> None:
    ns = topo.namespace()
    name = fresh_name("f")
    config = write_basic_config(tmp_path, name, port=52131).path
    process = start(ns, [*MINIVPN, "up", "--foreground", str(config)], tmp_path, "up")
    process.wait_for(f"{name} is up")
    assert socket_owner(SOCKET_DIR / f"{name}.sock") == process.pid
    assert routes(ns, "dev", name, "proto", "static") == {"10.62.0.0/16", "fd00:62::/48"}
    assert process.stop(signum) == 0
    assert_nothing_left(ns, name)
    assert "Traceback" not in process.stderr()


def test_table_off_adds_no_routes(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("o")
    config = write_basic_config(
        tmp_path, name, port=52141, extra_interface="Table = off\n", allowed_ips="0.0.0.0/0, ::/0"
    ).path
    bring_up(ns, config, name, daemons)
    assert routes(ns, "table", "all", "dev", name, "proto", "static") == set()
    assert wg(ns, "show", name, "allowed-ips").split()[1:] == ["0.0.0.0/0", "::/0"]
    take_down(ns, name)
    assert_nothing_left(ns, name)


def test_table_number_puts_routes_there(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("n")
    config = write_basic_config(
        tmp_path,
        name,
        port=52151,
        extra_interface="Table = 1234\n",
        allowed_ips="10.71.0.0/16, 0.0.0.0/0",
    ).path
    bring_up(ns, config, name, daemons)
    assert routes(ns, "table", "1234") == {"10.71.0.0/16", "default"}
    assert routes(ns, "dev", name, "proto", "static") == set()  # nothing in the main table
    take_down(ns, name)
    assert_nothing_left(ns, name)
    assert ns.ip("route", "show", "table", "1234").stdout == ""


def test_host_name_endpoint_is_resolved(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("h")
    config = write_basic_config(tmp_path, name, port=52161, endpoint="localhost:52162").path
    bring_up(ns, config, name, daemons)
    endpoint = wg(ns, "show", name, "endpoints").split()[1]
    assert endpoint in ("127.0.0.1:52162", "[::1]:52162")
    take_down(ns, name)


def test_ignored_keys_are_named_and_not_acted_upon(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    ns = topo.namespace()
    name = fresh_name("i")
    marker = tmp_path / "hook-ran"
    config = write_basic_config(
        tmp_path,
        name,
        port=52171,
        extra_interface=f"DNS = 10.61.0.53, example.test\nPostUp = touch {marker}\n"
        f"PreUp = touch {marker}\n",
        mode=0o644,
    ).path
    resolv = Path("/etc/resolv.conf")
    resolv_before = resolv.read_bytes() if resolv.exists() else None
    up, _ = bring_up(ns, config, name, daemons)
    lines = up.stderr.splitlines()
    assert lines[0] == (
        f"minivpn: {config}: holds a secret key but is accessible by group or others "
        f"(mode 0644); run: chmod 600 {config}"
    )
    assert lines[1].startswith(f"minivpn: {config}: ignoring DNS, PreUp, PostUp: ")
    assert not marker.exists(), "a hook command was run"
    assert (resolv.read_bytes() if resolv.exists() else None) == resolv_before
    take_down(ns, name)


# --- refusals: a clear message, and nothing left behind -------------------------------------------


def test_config_error_names_file_and_line(topo: Topology, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("e")
    private = genkey().private
    config = write_config(
        tmp_path,
        name,
        f"[Interface]\nPrivateKey = {private}\nListenPort = 52181\n\n[Peer]\nPublicKy = x\n",
    )
    line = assert_clean_failure(minivpn(ns, "up", str(config)))
    assert line.startswith(f"minivpn: {config}:6: ")
    assert "PublicKy" in line
    assert_nothing_left(ns, name)


def test_missing_file(topo: Topology, tmp_path: Path) -> None:
    ns = topo.namespace()
    line = assert_clean_failure(minivpn(ns, "up", str(tmp_path / "wgnone.conf")))
    assert line.startswith(f"minivpn: {tmp_path / 'wgnone.conf'}: cannot read the file")
    assert link(ns, "wgnone") is None


def test_default_route_without_policy_routing_is_refused(topo: Topology, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("z")
    config = write_basic_config(tmp_path, name, port=52191, allowed_ips="0.0.0.0/0").path
    line = assert_clean_failure(minivpn(ns, "up", str(config)))
    assert "0.0.0.0/0" in line
    assert "Table = off" in line
    assert_nothing_left(ns, name)


def test_device_name_in_use(topo: Topology, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("d")
    ns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    config = write_basic_config(tmp_path, name, port=52201).path
    line = assert_clean_failure(minivpn(ns, "up", str(config)))
    assert line == f"minivpn: cannot create {name}: a network device with that name already exists"
    assert not (SOCKET_DIR / f"{name}.sock").exists()
    assert "veth" in ns.ip("-d", "link", "show", name).stdout  # untouched
    assert addresses(ns, name) == set()


def test_port_in_use(topo: Topology, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("p")
    config = write_basic_config(tmp_path, name, port=52211).path
    holder = start(
        ns,
        [
            sys.executable,
            "-c",
            "import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 52211))\n"
            "print('bound', flush=True)\n"
            "time.sleep(120)\n",
        ],
        tmp_path,
        "holder",
    )
    holder.wait_for("bound", stream="stdout")
    line = assert_clean_failure(minivpn(ns, "up", str(config)))
    assert line == "minivpn: cannot listen on UDP port 52211: it is already in use"
    assert_nothing_left(ns, name)
    # The same in the foreground.
    line = assert_clean_failure(minivpn(ns, "up", "--foreground", str(config)), lines=None)
    assert line == "minivpn: cannot listen on UDP port 52211: it is already in use"
    assert_nothing_left(ns, name)


def test_already_running(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("r")
    config = write_basic_config(tmp_path, name, port=52221).path
    _, pid = bring_up(ns, config, name, daemons)
    line = assert_clean_failure(minivpn(ns, "up", str(config)))
    assert line == (
        f"minivpn: interface {name} is already running "
        f"(socket {SOCKET_DIR / (name + '.sock')} in use)"
    )
    assert process_alive(pid)
    assert socket_owner(SOCKET_DIR / f"{name}.sock") == pid
    take_down(ns, name)


def test_stale_socket_is_replaced(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("s")
    path = SOCKET_DIR / f"{name}.sock"
    SOCKET_DIR.mkdir(mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # what a killed daemon leaves: a socket file nobody listens on
    old_inode = path.lstat().st_ino
    config = write_basic_config(tmp_path, name, port=52231).path
    bring_up(ns, config, name, daemons)
    assert path.lstat().st_ino != old_inode
    assert wg(ns, "show", name, "listen-port").strip() == "52231"
    take_down(ns, name)
    assert_nothing_left(ns, name)


def test_unresolvable_endpoint(topo: Topology, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("x")
    written = write_basic_config(tmp_path, name, port=52241, endpoint="nosuchhost.invalid:1")
    config = written.path
    line = assert_clean_failure(minivpn(ns, "up", str(config)))
    assert line.startswith(f"minivpn: {config}: cannot resolve 'nosuchhost.invalid'")
    assert written.peer_public in line
    assert_nothing_left(ns, name)


# --- down without a process -----------------------------------------------------------------------


def test_down_deletes_a_device_nobody_serves(topo: Topology, tmp_path: Path) -> None:
    ns = topo.namespace()
    name = fresh_name("g")
    ns.ip("tuntap", "add", "dev", name, "mode", "tun")
    SOCKET_DIR.mkdir(mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(SOCKET_DIR / f"{name}.sock"))
    down = minivpn(ns, "down", name)
    assert down.returncode == 0, down.stderr
    assert "no process served it" in down.stderr
    assert_nothing_left(ns, name)


def test_down_never_deletes_other_kinds_of_links(topo: Topology) -> None:
    ns = topo.namespace()
    name = fresh_name("v")
    ns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    line = assert_clean_failure(minivpn(ns, "down", name))
    assert (
        line
        == f"minivpn: {name} is not a TUN device, so it is not a minivpn interface; not deleting it"
    )
    assert link(ns, name) is not None


def test_down_waits_for_a_device_in_another_namespace(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    """The socket is the handle: down works even when the device was moved away."""
    ns0, ns1 = topo.namespace("z"), topo.namespace("o")
    name = fresh_name("m")
    config = write_basic_config(tmp_path, name, port=52251).path
    _, pid = bring_up(ns0, config, name, daemons)
    ns0.ip("link", "set", name, "netns", ns1.name)
    down = minivpn(ns0, "down", name)
    assert (down.returncode, down.stderr) == (0, f"minivpn: {name} is down\n")
    assert not process_alive(pid)  # down waited for it
    assert link(ns1, name) is None
    assert not (SOCKET_DIR / f"{name}.sock").exists()
