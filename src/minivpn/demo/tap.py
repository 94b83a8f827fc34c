"""``minivpn demo --tap``: two LANs bridged into one over minivpn's layer-2 mode (docs/l2.md).

Two "sites", each a network namespace with a Linux bridge, and behind each bridge a host in a
namespace of its own, on a veth.  The sites are joined by a veth pair (their "internet") and by
minivpn in ``Mode = tap``, whose TAP device is put into each site's bridge.  Both hosts are in
one subnet, 10.99.0.0/24, as if on one switch:

1. four namespaces: site A and site B (joined by a veth pair), host A and host B (each on a
   veth to its site);
2. a fresh key pair per site;
3. ``python -m minivpn up CONF --foreground`` in each site, ``Mode = tap``, no address;
4. in each site, a bridge with two ports: the TAP device and the veth to the host (netlink);
5. host A pings host B: ARP crosses the tunnel, then the echo requests;
6. host A's neighbour table (what ``ip neigh`` prints) holds host B's own MAC address: the
   two LANs are one broadcast domain;
7. site A's MAC table, read over its UAPI socket (what ``minivpn show`` lists);
8. teardown, as for the layer-3 demo (:mod:`minivpn.demo.steps`), also on failure and Ctrl-C.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from minivpn import netconf
from minivpn.demo.errors import DemoError
from minivpn.demo.namespaces import (
    VethEnd,
    build_network,
    create_namespace,
    inside,
)
from minivpn.demo.processes import Runner, Teardown
from minivpn.demo.steps import (
    LISTEN_PORT,
    OUTER_A,
    OUTER_B,
    DemoOptions,
    _ping,
    _snapshot,
    _wait_until_up,
    run_torn_down,
)
from minivpn.documentation import doc_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from minivpn.demo.steps import _Peer

__all__ = ["HOST_A", "HOST_B", "run_tap_demo"]

#: The two hosts, in one subnet: one LAN, split over two sites.
HOST_A = "10.99.0.11/24"
HOST_B = "10.99.0.12/24"


def run_tap_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Build the two sites, bridge them over minivpn, ping across, and remove everything.

    Raises:
        NeedsRoot: no CAP_NET_ADMIN/CAP_SYS_ADMIN.
        DemoError: a step failed (everything made so far is torn down by then).
    """
    stream = sys.stdout if out is None else out

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    run_torn_down(_run_steps, options, say)
    try:
        l2 = doc_path("l2.md")
    except FileNotFoundError:
        l2 = Path("docs/l2.md")
    say(f"\nHow it works, and when layer 2 is the right choice: read {l2}.")
    return 0


def _run_steps(
    options: DemoOptions, say: Callable[[str], None], teardown: Teardown, mount_target: str | None
) -> None:
    from minivpn.demo.steps import _Peer, prepare
    from minivpn.wireguard.keys import PrivateKey

    tag, workdir = prepare(teardown, mount_target)

    a, b = (
        _Peer(
            label=label,
            namespace=f"minivpn-demo-{tag}-site{label.lower()}",
            veth=f"mvveth{tag}{label.lower()}",
            interface=f"mvtap{tag}{label.lower()}",
            outer=ipaddress.IPv4Interface(outer),
            inner=ipaddress.IPv4Interface(host),  # the host behind this site
            private_key=PrivateKey.generate(),
        )
        for label, outer, host in (("A", OUTER_A, HOST_A), ("B", OUTER_B, HOST_B))
    )
    say("minivpn demo --tap: two LANs bridged into one over minivpn in Mode = tap (layer 2).")

    say("\n1. Four network namespaces: two sites joined by a veth pair, a host behind each")
    sites = {peer.label: create_namespace(peer.namespace, teardown) for peer in (a, b)}
    hosts = {peer.label: create_namespace(peer.namespace + "-host", teardown) for peer in (a, b)}
    build_network(*(VethEnd(sites[peer.label], peer.veth, peer.outer) for peer in (a, b)))
    for peer in (a, b):
        site_end, host_end = f"mvlan{tag}{peer.label.lower()}", "eth0"
        try:
            with inside(sites[peer.label]):
                netconf.add_veth(site_end, host_end, peer_namespace=hosts[peer.label])
                netconf.set_link_up(site_end)
            with inside(hosts[peer.label]):
                netconf.set_link_up("lo")
                netconf.set_mtu(host_end, 1404)  # the TAP device's: a bridge is one MTU
                netconf.add_address(host_end, str(peer.inner))
                netconf.set_link_up(host_end)
        except netconf.NetconfError as exc:
            raise DemoError(str(exc)) from None
        say(
            f"   site {peer.label}: namespace {peer.namespace:<30} {peer.veth} {peer.outer}\n"
            f"   host {peer.label}: namespace {peer.namespace + '-host':<30} eth0 {peer.inner}"
        )

    say("\n2. A fresh key pair for each site (only the public halves are shown)")
    for peer in (a, b):
        say(f"   site {peer.label}: public key {peer.public_key.to_base64()}")

    say("\n3. Both sites up: `minivpn up CONF --foreground`, Mode = tap, no address of its own")
    env = {**os.environ, "MINIVPN_SOCKET_DIR": str(workdir)}
    runner = Runner(workdir, env, teardown)
    for peer, other in ((a, b), (b, a)):
        config = _write_tap_config(workdir, peer, other)
        process = runner.start(
            sites[peer.label],
            f"up-{peer.label.lower()}",
            [sys.executable, "-m", "minivpn", "up", str(config), "--foreground"],
        )
        _wait_until_up(peer, workdir, process, runner.log_of(process))
        say(f"   site {peer.label}: TAP device {peer.interface}, PID {process.pid}")

    say("\n4. In each site a bridge, br0, with two ports: the TAP device and the veth to the host")
    for peer in (a, b):
        try:
            with inside(sites[peer.label]):
                netconf.add_bridge("br0")
                netconf.set_master(peer.interface, "br0")
                netconf.set_master(f"mvlan{tag}{peer.label.lower()}", "br0")
                netconf.set_link_up("br0")
        except netconf.NetconfError as exc:
            raise DemoError(str(exc)) from None
        say(f"   site {peer.label}: br0 = {peer.interface} + mvlan{tag}{peer.label.lower()}")

    ping = ["ping", "-n", "-c", str(options.pings), "-i", "0.2", "-W", "2", str(b.inner.ip)]
    say(f"\n5. Host A pings host B, in the same subnet, across the tunnel: {' '.join(ping)}")
    received = _ping(runner, hosts["A"], ping, options.pings, say)
    if received == 0:
        raise DemoError(
            f"no echo reply came back from host B ({b.inner.ip}); "
            f"the sites' logs:\n{runner.tail('up-a')}\n{runner.tail('up-b')}"
        )

    say("\n6. Host A's neighbour table (`ip neigh`): host B's own MAC address, learned by ARP")
    try:
        with inside(hosts["B"]):
            mac_b = netconf.link_mac("eth0")
        with inside(hosts["A"]):
            neighbour = netconf.neighbour_mac(str(b.inner.ip))
    except netconf.NetconfError as exc:
        raise DemoError(str(exc)) from None
    say(f"   {b.inner.ip} lladdr {neighbour}    (host B's eth0 is {mac_b})")
    if neighbour != mac_b:
        raise DemoError(f"host A knows {b.inner.ip} as {neighbour}, not host B's {mac_b}")

    say("\n7. Site A's MAC table, from its UAPI socket (what `minivpn show` lists)")
    for entry in _snapshot(a, workdir).mac_table:
        where = "this TAP device" if entry.public_key is None else "site B (the peer)"
        mark = "   <- host B" if entry.mac == mac_b else ""
        say(f"   {entry.mac} behind {where}, seen {entry.age} s ago{mark}")


def _write_tap_config(workdir: Path, peer: _Peer, other: _Peer) -> Path:
    """*peer*'s configuration, ``NAME.conf`` (mode 0600): Mode = tap, no Address."""
    from minivpn.wireguard.config import (
        Config,
        Endpoint,
        InterfaceConfig,
        PeerConfig,
        format_config,
    )

    config = Config(
        interface=InterfaceConfig(
            private_key=peer.private_key, listen_port=LISTEN_PORT, mode="tap"
        ),
        peers=(
            PeerConfig(
                public_key=other.public_key,
                endpoint=Endpoint(str(other.outer.ip), LISTEN_PORT),
            ),
        ),
    )
    path = workdir / f"{peer.interface}.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as file:
        file.write(format_config(config))
    return path
