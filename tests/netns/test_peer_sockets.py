"""Per-peer receive queues (src/minivpn/runtime/peer_sockets.py), seen from the kernel.

A hub with two spokes, one reached over IPv4, one over IPv6, on one Ethernet segment
(``star``).  ``ss`` lists the hub's UDP sockets: besides the two listening ones, one socket
connected to each spoke's endpoint, on the listening port.  They follow ``wg set endpoint``,
roaming, a new listen port and the firewall mark, and close when their peer is removed.

That a peer's datagrams really wait in its own socket's queue is shown with the hub stopped
(SIGSTOP): a spoke's pings pile up in the receive queue of the socket connected to that spoke,
and nowhere else.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import TYPE_CHECKING

import pytest
from tests.helpers.procs import ping, wait_for_ping, wait_until
from tests.helpers.wg import Lab, open_lab, star

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from netns import Namespace

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("wg", "ss")), reason="needs wg and ss"
)

HUB_PORT, SPOKE_PORT = 51830, 51831


class Star:
    """The hub (198.51.100.1) and its spokes: 2 over IPv4, 3 over IPv6."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.hub_ns, self.v4_ns, self.v6_ns = star(lab.topology, 3)
        self.hub = lab.minivpnd(self.hub_ns, "h")
        self.v4 = lab.minivpnd(self.v4_ns, "a")
        self.v6 = lab.minivpnd(self.v6_ns, "b")
        self.hub.set_private_key(listen_port=HUB_PORT)
        inner = {self.hub: "10.83.0.1", self.v4: "10.83.0.2", self.v6: "10.83.0.3"}
        for spoke, hub_address in ((self.v4, "198.51.100.1"), (self.v6, "[fd00:5100:100::1]")):
            spoke.set_private_key(listen_port=SPOKE_PORT)
            spoke.add_peer(
                self.hub.public_key,
                allowed_ips=["10.83.0.0/24"],
                endpoint=f"{hub_address}:{HUB_PORT}",
            )
        self.hub.add_peer(
            self.v4.public_key, allowed_ips=["10.83.0.2/32"], endpoint=f"198.51.100.2:{SPOKE_PORT}"
        )
        self.hub.add_peer(
            self.v6.public_key,
            allowed_ips=["10.83.0.3/32"],
            endpoint=f"[fd00:5100:100::3]:{SPOKE_PORT}",
        )
        for daemon, address in inner.items():
            daemon.add_addresses(f"{address}/24")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Star]:
    with open_lab(tmp_path, "ps") as lab:
        yield Star(lab)


def udp_sockets(ns: Namespace, port: int) -> list[list[str]]:
    """``ss -Huane`` for the UDP sockets on local *port*: state, recv-q, send-q, local, peer..."""
    out = ns.run(["ss", "-Huane", f"sport = :{port}"]).stdout
    return [line.split() for line in out.splitlines()]


def connected(ns: Namespace, port: int) -> dict[str, list[str]]:
    """The connected sockets on *port*, by the remote endpoint ss shows (``host:port``)."""
    return {fields[4]: fields for fields in udp_sockets(ns, port) if fields[0] == "ESTAB"}


def settle_connected(ns: Namespace, port: int, expected: set[str]) -> None:
    wait_until(
        lambda: set(connected(ns, port)) == expected,
        timeout=10,
        what=f"connected sockets on port {port} to be {expected} (now {set(connected(ns, port))})",
    )


def both_spokes() -> set[str]:
    return {f"198.51.100.2:{SPOKE_PORT}", f"[fd00:5100:100::3]:{SPOKE_PORT}"}


def test_a_connected_socket_per_peer_receives_its_peers_datagrams(net: Star) -> None:
    wait_for_ping(net.v4_ns, "10.83.0.1", timeout=20)
    wait_for_ping(net.v6_ns, "10.83.0.1", timeout=20)
    settle_connected(net.hub_ns, HUB_PORT, both_spokes())
    # Unconnected: the two listening sockets (IPv4, IPv6), all the same port.
    listening = [f for f in udp_sockets(net.hub_ns, HUB_PORT) if f[0] == "UNCONN"]
    assert sorted(f[3] for f in listening) == [f"0.0.0.0:{HUB_PORT}", f"[::]:{HUB_PORT}"]
    local = {remote: fields[3] for remote, fields in connected(net.hub_ns, HUB_PORT).items()}
    assert local == {
        f"198.51.100.2:{SPOKE_PORT}": f"198.51.100.1:{HUB_PORT}",
        f"[fd00:5100:100::3]:{SPOKE_PORT}": f"[fd00:5100:100::1]:{HUB_PORT}",
    }
    # The hub stopped: each spoke's datagrams wait in the queue of the socket connected to it.
    pid = net.hub.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        ping(net.v6_ns, "10.83.0.1", count=3)
        queues = {f[4]: int(f[1]) for f in udp_sockets(net.hub_ns, HUB_PORT)}
    finally:
        os.kill(pid, signal.SIGCONT)
    assert queues[f"[fd00:5100:100::3]:{SPOKE_PORT}"] > 0, queues
    assert queues[f"198.51.100.2:{SPOKE_PORT}"] == 0, queues
    assert queues["0.0.0.0:*"] == queues["[::]:*"] == 0, queues
    # Served once the hub runs again.
    wait_for_ping(net.v6_ns, "10.83.0.1", timeout=20)


def test_the_sockets_follow_endpoints_ports_marks_and_peers(net: Star) -> None:
    hub, hub_ns = net.hub, net.hub_ns
    wait_for_ping(net.v4_ns, "10.83.0.1", timeout=20)
    wait_for_ping(net.v6_ns, "10.83.0.1", timeout=20)
    settle_connected(hub_ns, HUB_PORT, both_spokes())

    # Roaming: the IPv4 spoke moves to another port; the hub learns it from its datagrams.
    net.v4.set("listen-port", "51832")
    wait_for_ping(net.v4_ns, "10.83.0.1", timeout=20)
    moved = {"198.51.100.2:51832", f"[fd00:5100:100::3]:{SPOKE_PORT}"}
    settle_connected(hub_ns, HUB_PORT, moved)

    # wg set endpoint: back to the old port (where nothing listens now: only the socket moves).
    hub.set("peer", net.v4.public_key, "endpoint", f"198.51.100.2:{SPOKE_PORT}")
    settle_connected(hub_ns, HUB_PORT, both_spokes())
    net.v4.set("listen-port", str(SPOKE_PORT))
    wait_for_ping(net.v4_ns, "10.83.0.1", timeout=20)

    # A firewall mark lands on every socket of the port, connected ones included.
    hub.set("fwmark", "0x5")
    marks = [
        next((f for f in s if f.startswith("fwmark:")), "") for s in udp_sockets(hub_ns, HUB_PORT)
    ]
    assert marks == ["fwmark:0x5"] * 4, marks

    # Another listen port: the connected sockets move with it (and keep the mark).
    hub.set("listen-port", "51833")
    settle_connected(hub_ns, 51833, both_spokes())
    assert udp_sockets(hub_ns, HUB_PORT) == []
    marks = [
        next((f for f in s if f.startswith("fwmark:")), "") for s in udp_sockets(hub_ns, 51833)
    ]
    assert marks == ["fwmark:0x5"] * 4, marks
    net.v6.set("peer", hub.public_key, "endpoint", "[fd00:5100:100::1]:51833")
    wait_for_ping(net.v6_ns, "10.83.0.1", timeout=20)

    # A peer removed: its socket closes; the other peer's stays.
    hub.set("peer", net.v6.public_key, "remove")
    settle_connected(hub_ns, 51833, {f"198.51.100.2:{SPOKE_PORT}"})


def test_a_peer_without_an_endpoint_gets_its_socket_when_it_writes(net: Star) -> None:
    """The hub learns the spoke's endpoint from its first handshake (at the listening
    socket); then the spoke's datagrams have a socket of their own."""
    hub = net.hub
    hub.set("peer", net.v4.public_key, "remove")
    hub.add_peer(net.v4.public_key, allowed_ips=["10.83.0.2/32"])
    settle_connected(net.hub_ns, HUB_PORT, {f"[fd00:5100:100::3]:{SPOKE_PORT}"})
    wait_for_ping(net.v4_ns, "10.83.0.1", timeout=20)
    settle_connected(net.hub_ns, HUB_PORT, both_spokes())


def test_another_interface_still_cannot_take_the_port(net: Star) -> None:
    """``SO_REUSEPORT`` is set on the listening socket only once it is bound: another
    interface asking for the port (without it at its bind) is refused, as before."""
    wait_for_ping(net.v4_ns, "10.83.0.1", timeout=20)
    settle_connected(net.hub_ns, HUB_PORT, both_spokes())
    other = net.lab.minivpnd(net.hub_ns, "o")
    other.set_private_key()
    own_port = other.wg("show", other.name, "listen-port").stdout
    refused = other.wg("set", other.name, "listen-port", str(HUB_PORT), check=False)
    assert refused.returncode != 0, refused.stdout
    # It goes on with the port it had, and says so (not the port it was refused).
    assert other.wg("show", other.name, "listen-port").stdout == own_port
    # Only the hub's sockets on the port: its two listening ones and one per spoke.
    assert len(udp_sockets(net.hub_ns, HUB_PORT)) == 4
    wait_for_ping(net.v4_ns, "10.83.0.1", timeout=20)
