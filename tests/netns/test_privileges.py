"""Least privilege: ``minivpnd`` and ``minivpn up`` keep only CAP_NET_ADMIN once set up.

Each test reads the running daemon's ``/proc/PID/status`` (``CapEff``, ``CapPrm``, ``CapBnd``,
``NoNewPrivs``, ``Uid``) and then makes it do what a running interface is asked to do after
the drop: ``wg set`` (peers, listen-port, fwmark), link down and up, roaming (the peer's
endpoint changes), and teardown (the device deleted, the socket file removed).

The ``--user`` tests need a second uid (65534, ``nobody``): inside ``unshare --map-root-user``
(how an ordinary user runs the suite) only one uid is mapped, so they are skipped there.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.helpers.daemons import (  # the fixtures are imported for pytest to find them
    fixture_daemons,  # noqa: F401
    fixture_topo,  # noqa: F401
    interface_name,
    link,
    wg,
)
from tests.helpers.procs import MINIVPN, assert_clean_failure, ping, wait_for_ping, wait_until
from tests.helpers.wg import MINIVPND, SOCKET_DIR, genkey

from minivpn.runtime.privileges import _mapped

if TYPE_CHECKING:
    from tests.helpers.daemons import Daemons

    from netns import Namespace, Topology

pytestmark = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools)")

CAP_NET_BIND_SERVICE = 1 << 10
CAP_NET_ADMIN = 1 << 12
NOBODY = 65534

needs_second_uid = pytest.mark.skipif(
    not (_mapped("uid", NOBODY) and _mapped("gid", NOBODY)),
    reason="uid/gid 65534 is not mapped in this user namespace (unshare --map-root-user maps "
    "one uid): switching user cannot be tried here",
)


def fresh_name(tag: str) -> str:
    return interface_name("mvp", tag)


def status(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict of its fields."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def assert_dropped(pid: int, *, caps: int, uid: int) -> None:
    """Only *caps* held (and bounded), none inheritable or ambient, no_new_privs, uid *uid*.

    minivpnd returns once the socket and device exist; the drop follows once the UDP sockets
    are bound, a moment later: wait for it.
    """
    wait_until(lambda: status(pid)["NoNewPrivs"] == "1", timeout=10, what="the drop")
    found = status(pid)
    assert int(found["CapEff"], 16) == caps, found["CapEff"]
    assert int(found["CapPrm"], 16) == caps, found["CapPrm"]
    assert int(found["CapBnd"], 16) == caps, found["CapBnd"]
    assert int(found["CapInh"], 16) == 0
    assert int(found["CapAmb"], 16) == 0
    assert found["NoNewPrivs"] == "1"
    assert found["Uid"].split() == [str(uid)] * 4
    assert found["Gid"].split() == [str(uid)] * 4


def start_minivpnd(ns: Namespace, name: str, daemons: Daemons, *args: str) -> int:
    result = ns.run([*MINIVPND, *args, name], check=False, timeout=30, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    return daemons.find(name)


def set_config(ns: Namespace, name: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.wg"
    path.write_text(text)
    path.chmod(0o600)
    ns.run(["wg", "setconf", name, str(path)], timeout=30)


def udp_marks(ns: Namespace, port: int) -> list[str]:
    """The ``fwmark:`` of each UDP socket bound to *port* in *ns* (``ss -e``), '' if none."""
    lines = ns.run(["ss", "-Huane", f"sport = :{port}"]).stdout.splitlines()
    assert lines, f"nothing bound to UDP port {port}"
    return [next((f for f in line.split() if f.startswith("fwmark:")), "") for line in lines]


def exercise_pair(
    topo: Topology, daemons: Daemons, tmp_path: Path, *, tag: str, subnet: str, args: list[str]
) -> tuple[int, int]:
    """Two daemons (started with *args*) in ns0, devices moved to ns1/ns2; every operation.

    Returns:
        The two PIDs, still running.
    """
    ns0, ns1, ns2 = topo.namespace("z"), topo.namespace("o"), topo.namespace("t")
    one, two = fresh_name(tag + "1"), fresh_name(tag + "2")
    pids = []
    for name, ns in ((one, ns1), (two, ns2)):
        pids.append(start_minivpnd(ns0, name, daemons, *args))
        ns0.ip("link", "set", name, "netns", ns.name)
    keys1, keys2 = genkey(), genkey()
    # wg set after the drop: keys, ports and peers.
    set_config(
        ns0,
        one,
        f"[Interface]\nPrivateKey = {keys1.private}\nListenPort = 52101\n\n"
        f"[Peer]\nPublicKey = {keys2.public}\nAllowedIPs = {subnet}.2/32\n"
        "Endpoint = 127.0.0.1:52102\n",
        tmp_path,
    )
    set_config(
        ns0,
        two,
        f"[Interface]\nPrivateKey = {keys2.private}\nListenPort = 52102\n\n"
        f"[Peer]\nPublicKey = {keys1.public}\nAllowedIPs = {subnet}.1/32\n"
        "Endpoint = 127.0.0.1:52101\n",
        tmp_path,
    )
    for name, ns, address in ((one, ns1, f"{subnet}.1/24"), (two, ns2, f"{subnet}.2/24")):
        ns.ip("address", "add", address, "dev", name)
        ns.ip("link", "set", name, "up")
    wait_for_ping(ns1, f"{subnet}.2", timeout=20)
    # fwmark needs CAP_NET_ADMIN (SO_MARK): the sockets really carry it.
    ns0.run(["wg", "set", one, "fwmark", "0x42"])
    assert wg(ns0, "show", one, "fwmark").strip() == "0x42"
    # Every socket of the port: IPv4 and IPv6, and the one connected to the peer (the port
    # was bound after the drop, by the same user: runtime/peer_sockets.py, "Limits").
    marks = udp_marks(ns0, 52101)
    assert marks == ["fwmark:0x42"] * 3, marks
    # Roaming: two moves to another port; one learns it from two's authenticated packets.
    ns0.run(["wg", "set", two, "listen-port", "52103"])
    wait_for_ping(ns2, f"{subnet}.1", timeout=20)
    wait_until(
        lambda: wg(ns0, "show", one, "endpoints").split()[1] == "127.0.0.1:52103",
        timeout=10,
        what="one to learn two's new endpoint",
    )
    # Link down and up.
    ns2.ip("link", "set", two, "down")
    assert ping(ns1, f"{subnet}.2", count=2).returncode != 0
    ns2.ip("link", "set", two, "up")
    wait_for_ping(ns1, f"{subnet}.2", timeout=20)
    # A peer removed and added again.
    ns0.run(["wg", "set", one, "peer", keys2.public, "remove"])
    assert wg(ns0, "show", one, "peers").strip() == ""
    ns0.run(
        ["wg", "set", one, "peer", keys2.public, "allowed-ips", f"{subnet}.2/32",
         "endpoint", "127.0.0.1:52103"]
    )  # fmt: skip
    wait_for_ping(ns1, f"{subnet}.2", timeout=20)
    # Teardown: SIGTERM to one (its device is deleted, its socket removed), and two is told
    # to stop by removing its socket file, as wg-quick does.
    os.kill(pids[0], signal.SIGTERM)
    daemons.wait_gone(pids[0])
    assert link(ns1, one) is None
    wait_until(
        lambda: not (SOCKET_DIR / f"{one}.sock").exists(), timeout=5, what="the socket to go"
    )
    (SOCKET_DIR / f"{two}.sock").unlink()
    daemons.wait_gone(pids[1])
    assert link(ns2, two) is None
    return pids[0], pids[1]


def test_minivpnd_keeps_only_cap_net_admin(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    ns0 = topo.namespace("s")
    name = fresh_name("s")
    pid = start_minivpnd(ns0, name, daemons)
    assert_dropped(pid, caps=CAP_NET_ADMIN, uid=os.getuid())
    os.kill(pid, signal.SIGTERM)
    daemons.wait_gone(pid)


def test_everything_works_after_the_drop(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    exercise_pair(topo, daemons, tmp_path, tag="a", subnet="10.94.0", args=[])


@needs_second_uid
def test_user_switch_keeps_cap_net_admin(topo: Topology, daemons: Daemons, tmp_path: Path) -> None:
    ns = topo.namespace("u")
    name = fresh_name("u")
    pid = start_minivpnd(ns, name, daemons, "--user", str(NOBODY), "--group", str(NOBODY))
    assert_dropped(pid, caps=CAP_NET_ADMIN, uid=NOBODY)
    # The sockets stay root's: wg (root) configures the daemon, nobody else may.
    assert (SOCKET_DIR / f"{name}.sock").stat().st_uid == os.getuid()
    assert (SOCKET_DIR / f"{name}.trace").stat().st_uid == os.getuid()
    ns.run(["wg", "set", name, "listen-port", "52110", "fwmark", "0x7"])
    assert udp_marks(ns, 52110) == ["fwmark:0x7", "fwmark:0x7"]
    os.kill(pid, signal.SIGTERM)
    daemons.wait_gone(pid)
    assert link(ns, name) is None
    # The janitor (uid 0, no capability) removes the files the daemon may no longer remove:
    # the UAPI socket and the trace socket beside it.
    for suffix in (".sock", ".trace"):
        wait_until(
            lambda suffix=suffix: not (SOCKET_DIR / f"{name}{suffix}").exists(),
            timeout=5,
            what=f"the {suffix} socket to go",
        )


@needs_second_uid
def test_everything_works_after_a_user_switch(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    exercise_pair(topo, daemons, tmp_path, tag="b", subnet="10.95.0", args=["--user", "nobody"])


def test_minivpn_up_keeps_bind_service_for_a_privileged_port(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    ns = topo.namespace("q")
    name = fresh_name("q")
    config = tmp_path / f"{name}.conf"
    config.write_text(
        f"[Interface]\nPrivateKey = {genkey().private}\nListenPort = 500\n"
        "Address = 10.96.0.1/24\n\n"
        f"[Peer]\nPublicKey = {genkey().public}\nAllowedIPs = 10.96.0.2/32\n"
    )
    config.chmod(0o600)
    up = ns.run([*MINIVPN, "up", str(config)], check=False, timeout=60)
    assert up.returncode == 0, up.stderr
    pid = daemons.find(name)
    assert_dropped(pid, caps=CAP_NET_ADMIN | CAP_NET_BIND_SERVICE, uid=os.getuid())
    down = ns.run([*MINIVPN, "down", name], check=False, timeout=60)
    assert down.returncode == 0, down.stderr
    daemons.wait_gone(pid)
    assert link(ns, name) is None
    assert not (SOCKET_DIR / f"{name}.sock").exists()


def test_unknown_or_unmapped_user_fails_before_anything_is_made(topo: Topology) -> None:
    ns = topo.namespace("n")
    name = fresh_name("n")
    result = ns.run(
        [*MINIVPND, "--user", "no-such-user-here", name], check=False, timeout=30,
        env=dict(os.environ),
    )  # fmt: skip
    assert_clean_failure(result)
    assert "--user no-such-user-here: no such user" in result.stderr
    assert link(ns, name) is None
    assert not (SOCKET_DIR / f"{name}.sock").exists()
    if not _mapped("uid", NOBODY):
        result = ns.run(
            [*MINIVPND, "--user", str(NOBODY), name], check=False, timeout=30,
            env=dict(os.environ),
        )  # fmt: skip
        assert_clean_failure(result)
        assert "is not mapped in this user namespace" in result.stderr


def connected_sockets(ns: Namespace, port: int) -> list[str]:
    """The remote ends of the UDP sockets on *port* that are connected (``ss``: ESTAB)."""
    lines = ns.run(["ss", "-Huan", f"sport = :{port}"]).stdout.splitlines()
    return [line.split()[4] for line in lines if line.split()[0] == "ESTAB"]


def up_with_a_peer(
    ns: Namespace, daemons: Daemons, tmp_path: Path, name: str, port: int, *args: str
) -> int:
    """``minivpn up ARGS`` on *port* with one peer at 127.0.0.1:51999; its PID."""
    config = tmp_path / f"{name}.conf"
    config.write_text(
        f"[Interface]\nPrivateKey = {genkey().private}\nListenPort = {port}\n"
        "Address = 10.97.0.1/24\n\n"
        f"[Peer]\nPublicKey = {genkey().public}\nAllowedIPs = 10.97.0.2/32\n"
        "Endpoint = 127.0.0.1:51999\n"
    )
    config.chmod(0o600)
    up = ns.run([*MINIVPN, "up", *args, str(config)], check=False, timeout=60)
    assert up.returncode == 0, up.stderr
    return daemons.find(name)


def test_per_peer_sockets_on_a_privileged_port_after_the_drop(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    """A per-peer socket binds the listening port: below 1024 that needs the
    CAP_NET_BIND_SERVICE kept for the port, also for a socket opened after the drop."""
    ns = topo.namespace("r")
    name = fresh_name("r")
    pid = up_with_a_peer(ns, daemons, tmp_path, name, 501)
    assert_dropped(pid, caps=CAP_NET_ADMIN | CAP_NET_BIND_SERVICE, uid=os.getuid())
    wait_until(
        lambda: connected_sockets(ns, 501) == ["127.0.0.1:51999"], timeout=10, what="the socket"
    )
    peer = wg(ns, "show", name, "peers").strip()
    ns.run(["wg", "set", name, "peer", peer, "endpoint", "127.0.0.1:51998"])
    wait_until(
        lambda: connected_sockets(ns, 501) == ["127.0.0.1:51998"],
        timeout=10,
        what="the socket to follow the endpoint",
    )
    ns.run([*MINIVPN, "down", name], timeout=60)
    daemons.wait_gone(pid)


@needs_second_uid
def test_after_a_user_switch_peers_share_a_port_bound_before_it(
    topo: Topology, daemons: Daemons, tmp_path: Path
) -> None:
    """The port of the configuration is bound by root, before ``--user``: the kernel lets
    only root's sockets join it, so the peers share the listening socket (peer_sockets.py,
    "Limits") and the interface goes on serving."""
    ns = topo.namespace("w")
    name = fresh_name("w")
    pid = up_with_a_peer(ns, daemons, tmp_path, name, 52120, "--user", "nobody")
    assert_dropped(pid, caps=CAP_NET_ADMIN, uid=NOBODY)
    peer = wg(ns, "show", name, "peers").strip()
    ns.run(["wg", "set", name, "peer", peer, "endpoint", "127.0.0.1:51998"])
    assert wg(ns, "show", name, "endpoints").split() == [peer, "127.0.0.1:51998"]
    # (A socket opened before the switch, to the old endpoint, is closed; none is opened.)
    wait_until(lambda: connected_sockets(ns, 52120) == [], timeout=10, what="no socket")
    # Another port is bound by nobody: then the peer gets its socket.
    ns.run(["wg", "set", name, "listen-port", "52121"])
    wait_until(
        lambda: connected_sockets(ns, 52121) == ["127.0.0.1:51998"], timeout=10, what="the socket"
    )
    ns.run([*MINIVPN, "down", name], timeout=60)
    daemons.wait_gone(pid)
