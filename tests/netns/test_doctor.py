"""``minivpn doctor``: each diagnosis, made by breaking a working namespace setup that way.

minivpnd A and B in two namespaces joined by veth (198.51.100.1 and .2), configured with ``wg``.
A working pair first: doctor finds nothing and exits 0.  Then each break, on a fresh pair:

* no handshake ever: B does not know A (A's initiations go unanswered);
* handshakes but no data back: B's allowed IPs for A leave out A's address, so B drops what A
  sends after the handshake (and doctor on B says why);
* a route that points elsewhere: one of B's allowed-IPs prefixes on A is routed out of the
  veth, not into A's interface;
* overlapping allowed IPs: a second peer of A's holds a prefix inside B's;
* MTU above the path's: the veth's MTU is lowered under A's MTU plus WireGuard's 60 bytes.

doctor runs in the namespace of the interface, as ``ip netns exec NS minivpn doctor NAME``.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest
from tests.helpers.procs import MINIVPN, ping, wait_for_ping, wait_until
from tests.helpers.wg import Daemon, Lab, endpoint, genkey, link_pair, open_lab

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator
    from pathlib import Path

    from netns import Namespace

pytestmark = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg")

A4, B4 = "10.77.0.1", "10.77.0.2"
PORT_A, PORT_B = 51820, 51821


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path, "dr") as lab:
        yield lab


def pair(lab: Lab) -> tuple[Namespace, Namespace, Daemon, Daemon]:
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
    return a, b, x, y


def doctor(ns: Namespace, name: str) -> subprocess.CompletedProcess[str]:
    result = ns.run([*MINIVPN, "doctor", name], check=False, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_line(text: str) -> str:
    """The report with its wrapped lines joined (doctor wraps at 96 columns)."""
    return " ".join(text.split())


def test_a_working_pair_is_fine(lab: Lab) -> None:
    a, _, x, _ = pair(lab)
    wait_for_ping(a, B4)
    result = doctor(a, x.name)
    assert result.stdout == f"{x.name}: nothing looks wrong (1 peer checked)\n"
    assert result.returncode == 0


def test_no_handshake_ever(lab: Lab) -> None:
    a, b, x, y = pair(lab)
    y.set("peer", x.public_key, "remove")  # B no longer knows A: it drops A's initiations
    ping(a, B4)
    wait_until(lambda: x.peer(y.public_key).tx_bytes >= 148, timeout=10, what="an initiation")
    result = doctor(a, x.name)
    assert result.returncode == 1
    report = one_line(result.stdout)
    assert f"peer {y.public_key[:8]}…: no handshake has ever completed" in report
    assert f"nothing came back from {b.addr4}:{PORT_B} to 1 initiation" in report
    assert f"or it does not have ours ({x.public_key}) as a peer" in report


def test_handshakes_but_no_data_back(lab: Lab) -> None:
    a, b, x, y = pair(lab)
    y.set("peer", x.public_key, "allowed-ips", "10.77.0.50/32")  # not A's address
    for _ in range(3):
        ping(a, B4)
    wait_until(lambda: x.peer(y.public_key).latest_handshake > 0, timeout=10, what="a handshake")
    result = doctor(a, x.name)
    assert result.returncode == 1
    report = one_line(result.stdout)
    assert "handshakes complete and we sent it" in report
    assert "but no data came back" in report
    # B says why: what A sends comes from an address that is not A's to use there.
    other = one_line(doctor(b, y.name).stdout)
    assert "packets from it were dropped: their source address is not in its allowed IPs" in other


def test_a_route_that_points_elsewhere(lab: Lab) -> None:
    a, _, x, y = pair(lab)
    x.set("peer", y.public_key, "allowed-ips", f"{B4}/32,10.77.5.0/24")
    a.ip("route", "add", "10.77.5.0/24", "via", "198.51.100.2")  # out of the veth
    wait_for_ping(a, B4)
    result = doctor(a, x.name)
    assert result.returncode == 1
    report = one_line(result.stdout)
    assert (
        f"traffic for its allowed IPs 10.77.5.0/24 (e.g. 10.77.5.1) goes out of {a.veth}, "
        f"not into {x.name}"
    ) in report
    assert f"ip route add 10.77.5.0/24 dev {x.name}" in report


def test_overlapping_allowed_ips(lab: Lab) -> None:
    a, _, x, y = pair(lab)
    x.set("peer", y.public_key, "allowed-ips", f"{B4}/32,10.77.8.0/24")
    other = genkey()
    x.add_peer(other.public, allowed_ips=["10.77.8.128/25"], endpoint="198.51.100.3:51820")
    a.ip("route", "add", "10.77.8.0/24", "dev", x.name)
    wait_for_ping(a, B4)
    result = doctor(a, x.name)
    report = one_line(result.stdout)
    assert (
        f"peer {other.public[:8]}…: its allowed IPs 10.77.8.128/25 lie inside 10.77.8.0/24, "
        f"which belongs to peer {y.public_key[:8]}…"
    ) in report


def test_mtu_above_the_path(lab: Lab) -> None:
    a, _, x, _ = pair(lab)
    x.ip("link", "set", x.name, "mtu", "1420")
    a.ip("link", "set", a.veth, "mtu", "1400")
    wait_for_ping(a, B4)
    result = doctor(a, x.name)
    assert result.returncode == 1
    report = one_line(result.stdout)
    assert (
        "its MTU 1420 plus 60 bytes of WireGuard over IPv4 is 1480, more than the MTU 1400 "
        f"of {a.veth} on the way to 198.51.100.2"
    ) in report
    assert f"ip link set {x.name} mtu 1340" in report
