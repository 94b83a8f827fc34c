"""Regressions found by running wireguard-go's ``tests/netns.sh`` against ``minivpnd``.

The script (run by hand, see the report of issue 5; it is not part of the project) passed every
step up to "reply to sender routing": wg2 writes to the second of two addresses of wg1's host
and expects wg1's answer to come from that address, so that ``wg show wg2 endpoints`` keeps
it.  minivpnd answered from whatever address the kernel picked, and wg2 roamed to that one.
The fix is :mod:`minivpn.runtime.sticky`: remember the local address each authenticated
datagram arrived at, send from it, and let it go when it is removed ("saddr routing is sticky
but not too sticky").

Two layers are checked, both with real sockets in namespaces made here:

* the socket mechanics of :mod:`minivpn.runtime.sticky`, against the kernel: what
  ``IP_PKTINFO``/``IPV6_RECVPKTINFO`` report, that a send leaves from the remembered address
  (one of the two addresses is never the kernel's own choice, so a send that ignored the
  source would be caught), that a removed address is forgotten, and that it works together
  with UDP GSO;
* two ``minivpnd`` peers, the way netns.sh drives them (``wg set``, ``ping``, ``wg show``).

Run inside ``netns/isolate``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import struct
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from tests.helpers.procs import ping, wait_until

from minivpn.runtime import sticky
from netns import Topology

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from minivpn.wireguard.events import Endpoint
    from netns import Namespace

MINIVPND = (sys.executable, "-m", "minivpn.daemon")

#: netns.sh's second topology, on the veth between the two namespaces: the host of wg1 has two
#: addresses of each family, the host of wg2 one.
HOST1 = {4: ("10.0.0.1", "10.0.0.2"), 6: ("fd00:aa::1", "fd00:aa::2")}
HOST2 = {4: "10.0.0.3", 6: "fd00:aa::3"}
PREFIX = {4: 24, 6: 96}
#: Addresses inside the tunnel.
TUNNEL1 = ("10.241.0.1", "fd00:241::1")
TUNNEL2 = ("10.241.0.2", "fd00:241::2")
PORT1, PORT2 = 10000, 20000

_CLONE_NEWNET = 0x40000000  # linux/sched.h
_UDP_SEGMENT = 103  # linux/udp.h
_SOL_UDP = 17


# --- namespaces -----------------------------------------------------------------------------------


@pytest.fixture
def hosts() -> Iterator[tuple[Namespace, Namespace]]:
    """Two namespaces joined by veth: host 1 with two addresses per family, host 2 with one."""
    with Topology("st") as topo:
        host1, host2 = topo.namespace("h"), topo.namespace("p")
        veth1, veth2 = topo.veth(host1, host2)
        host1.veth, host2.veth = veth1, veth2
        host1.run(["sysctl", "-qw", f"net.ipv6.conf.{veth1}.accept_dad=0"])
        host2.run(["sysctl", "-qw", f"net.ipv6.conf.{veth2}.accept_dad=0"])
        # As netns.sh does: removing the first IPv4 address keeps the second.
        host1.run(["sysctl", "-qw", f"net.ipv4.conf.{veth1}.promote_secondaries=1"])
        for family in (4, 6):
            nodad = ["nodad"] if family == 6 else []
            for address in HOST1[family]:
                host1.ip("addr", "add", f"{address}/{PREFIX[family]}", "dev", veth1, *nodad)
            host2.ip("addr", "add", f"{HOST2[family]}/{PREFIX[family]}", "dev", veth2, *nodad)
        yield host1, host2


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@contextlib.contextmanager
def inside(ns: Namespace) -> Iterator[None]:
    """Sockets created in the block belong to *ns* (and stay there after it).

    The calling thread enters the namespace (``setns``) and comes back at the end.
    """
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns.name}") as there:
        _setns(there.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def udp(family: int, address: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.bind((address, port))
    return sock


def peer_and_server(
    hosts: tuple[Namespace, Namespace], family: int, *, pktinfo: bool = True
) -> tuple[socket.socket, socket.socket]:
    """A wildcard-bound server on host 1 (as minivpn binds) and a peer socket on host 2."""
    host1, host2 = hosts
    with inside(host1):
        server = udp(family, "0.0.0.0" if family == 4 else "::")
        if pktinfo:
            sticky.enable_destination_info(server)
    with inside(host2):
        peer = udp(family, HOST2[family])
    return peer, server


def learn(peer: socket.socket, server: socket.socket, local: str) -> Endpoint:
    """The peer writes to *local*; the endpoint the server's receive makes of it."""
    peer.sendto(b"hello", (local, server.getsockname()[1]))
    data, ancillary, _, address = server.recvmsg(100, sticky.ANCILLARY_SPACE)
    assert data == b"hello"
    return sticky.endpoint_from(address, ancillary)


# --- the socket mechanics -------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_an_endpoint_remembers_the_address_it_wrote_to(
    hosts: tuple[Namespace, Namespace], family: int
) -> None:
    peer, server = peer_and_server(hosts, family)
    with peer, server:
        plain = (HOST2[family], peer.getsockname()[1])
        for local in HOST1[family]:
            endpoint = learn(peer, server, local)
            assert isinstance(endpoint, sticky.StickyEndpoint)
            assert endpoint.local_address == local
            # To everything else it is the plain (host, port) pair the core stores.
            assert endpoint == plain
            assert hash(endpoint) == hash(plain)
            assert tuple(endpoint) == plain


@pytest.mark.parametrize("family", [4, 6])
def test_without_the_option_an_endpoint_is_plain(
    hosts: tuple[Namespace, Namespace], family: int
) -> None:
    peer, server = peer_and_server(hosts, family, pktinfo=False)
    with peer, server:
        endpoint = learn(peer, server, HOST1[family][1])
        assert type(endpoint) is tuple
        assert endpoint == (HOST2[family], peer.getsockname()[1])


@pytest.mark.parametrize("family", [4, 6])
def test_a_truncated_pktinfo_is_not_taken_for_an_address(
    hosts: tuple[Namespace, Namespace], family: int
) -> None:
    """Too little room for the ancillary data: the kernel cuts the pktinfo short (MSG_CTRUNC)."""
    peer, server = peer_and_server(hosts, family)
    with peer, server:
        peer.sendto(b"hello", (HOST1[family][1], server.getsockname()[1]))
        _, ancillary, flags, address = server.recvmsg(100, socket.CMSG_SPACE(4))
        assert flags & socket.MSG_CTRUNC
        endpoint = sticky.endpoint_from(address, ancillary)
        assert type(endpoint) is tuple
        assert endpoint == (HOST2[family], peer.getsockname()[1])


@pytest.mark.parametrize("family", [4, 6])
def test_a_reply_leaves_from_the_address_the_peer_wrote_to(
    hosts: tuple[Namespace, Namespace], family: int
) -> None:
    peer, server = peer_and_server(hosts, family)
    with peer, server:
        for local in HOST1[family]:
            endpoint = learn(peer, server, local)
            sticky.send(server, b"reply", endpoint)
            data, source = peer.recvfrom(100)
            assert (data, source[0]) == (b"reply", local)
            assert isinstance(endpoint, sticky.StickyEndpoint)
            assert endpoint.local_address == local


@pytest.mark.parametrize("family", [4, 6])
def test_a_removed_address_is_not_sticky(hosts: tuple[Namespace, Namespace], family: int) -> None:
    host1, _ = hosts
    first, second = HOST1[family]
    peer, server = peer_and_server(hosts, family)
    with peer, server:
        endpoint = learn(peer, server, first)
        host1.ip("addr", "del", f"{first}/{PREFIX[family]}", "dev", host1.veth)
        # Sending from the removed address fails (ENETUNREACH for IPv4, EINVAL for IPv6):
        # the address is forgotten and the datagram leaves from the one that is left.
        sticky.send(server, b"reply", endpoint)
        data, source = peer.recvfrom(100)
        assert (data, source[0]) == (b"reply", second)
        assert isinstance(endpoint, sticky.StickyEndpoint)
        assert endpoint.source is None
        sticky.send(server, b"again", endpoint)
        assert peer.recvfrom(100) == (b"again", source)


@pytest.mark.parametrize("family", [4, 6])
def test_sticky_source_with_udp_gso(hosts: tuple[Namespace, Namespace], family: int) -> None:
    """Both ancillary messages in one send: three datagrams, all from the remembered address."""
    peer, server = peer_and_server(hosts, family)
    with peer, server:
        for local in HOST1[family]:
            endpoint = learn(peer, server, local)
            segments = [bytes([n]) * 100 for n in range(3)]
            gso = (_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", 100))
            sticky.send(server, b"".join(segments), endpoint, [gso])
            received = [peer.recvfrom(200) for _ in segments]
            assert [data for data, _ in received] == segments
            assert {source[0] for _, source in received} == {local}


# --- two minivpnd peers, as netns.sh drives them ---------------------------------------------

_names = iter(range(10_000))


def start_minivpnd(ns: Namespace, tag: str, log_dir: Path) -> str:
    """``minivpnd -f NAME`` in *ns* (the topology stops it by PID); returns the name."""
    name = f"mvs{tag}{os.getpid() % 1000}{next(_names)}"
    with (log_dir / f"{name}.log").open("w") as log:
        ns.popen([*MINIVPND, "-f", name], stdout=log, stderr=subprocess.STDOUT)

    def answers() -> bool:
        return ns.run(["wg", "show", name], check=False).returncode == 0

    wait_until(answers, timeout=20, what=f"minivpnd {name} to answer on its socket")
    return name


def wg(ns: Namespace, *args: str, input: str | None = None) -> str:
    return ns.run(["wg", *args], input=input, timeout=30).stdout.strip()


def configure(
    ns: Namespace,
    name: str,
    *,
    key_file: Path,
    port: int,
    own_tunnel: tuple[str, str],
    peer_public: str,
    peer_tunnel: tuple[str, str],
) -> None:
    """Key, port, one peer for the other's tunnel addresses; addresses and link up (netns.sh's
    ``configure_peers``)."""
    allowed = f"{peer_tunnel[0]}/32,{peer_tunnel[1]}/128"
    wg(ns, "set", name, "private-key", str(key_file), "listen-port", str(port),
       "peer", peer_public, "allowed-ips", allowed)  # fmt: skip
    ns.ip("addr", "add", f"{own_tunnel[0]}/24", "dev", name)
    ns.ip("addr", "add", f"{own_tunnel[1]}/64", "dev", name, "nodad")
    ns.ip("link", "set", name, "up")


def endpoint_text(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools)")
@pytest.mark.parametrize("family", [4, 6])
def test_minivpnd_replies_from_the_address_the_peer_used_and_lets_it_go(
    hosts: tuple[Namespace, Namespace], family: int, tmp_path: Path
) -> None:
    host1, host2 = hosts
    keys = {}
    for tag in ("1", "2"):
        private = wg(host1, "genkey")
        path = tmp_path / f"key{tag}"
        path.write_text(private + "\n")
        path.chmod(0o600)
        keys[tag] = (path, wg(host1, "pubkey", input=private + "\n"))
    wg1 = start_minivpnd(host1, "a", tmp_path)
    wg2 = start_minivpnd(host2, "b", tmp_path)
    configure(host1, wg1, key_file=keys["1"][0], port=PORT1, own_tunnel=TUNNEL1,
              peer_public=keys["2"][1], peer_tunnel=TUNNEL2)  # fmt: skip
    configure(host2, wg2, key_file=keys["2"][0], port=PORT2, own_tunnel=TUNNEL2,
              peer_public=keys["1"][1], peer_tunnel=TUNNEL1)  # fmt: skip
    pub1 = keys["1"][1]

    # Reply to sender: whichever address of host 1 wg2 writes to, wg1 answers from it, and
    # wg2's endpoint stays there.  (One of the two is not the kernel's own choice.)
    for local in HOST1[family]:
        wg(host2, "set", wg2, "peer", pub1, "endpoint", endpoint_text(local, PORT1))
        assert ping(host2, TUNNEL1[0], wait=2).returncode == 0
        assert wg(host2, "show", wg2, "endpoints") == f"{pub1}\t{endpoint_text(local, PORT1)}"

    # Not too sticky: the address wg1 answers from goes away; wg1's traffic leaves from the
    # other one, and wg2 roams there.
    last, other = HOST1[family][1], HOST1[family][0]
    host1.ip("addr", "del", f"{last}/{PREFIX[family]}", "dev", host1.veth)
    assert ping(host1, TUNNEL2[0], wait=2).returncode == 0
    assert wg(host2, "show", wg2, "endpoints") == f"{pub1}\t{endpoint_text(other, PORT1)}"
