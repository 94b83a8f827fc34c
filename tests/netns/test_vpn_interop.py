"""minivpn against wireguard-go (and against itself), as two real daemons in two namespaces.

Each test starts ``python -m minivpn.daemon -f NAME`` in one namespace and ``wireguard-go -f
NAME`` in another (joined by veth, or by a bridge for three), configures both with ``wg set``
only, and checks what a user would check, with independent witnesses:

* ``ping`` and ``iperf3`` through the tunnel, over IPv4 and IPv6 inside and outside;
* ``wg show`` on *both* sides: who learnt which endpoint, handshake times, byte counters;
* ``dumpcap`` on the veth for what is on the wire (persistent keepalives);
* minivpnd's SIGUSR1 report, for what it dropped and why.

Who initiates a handshake is decided by who is *told* the other's endpoint: the side without
one cannot initiate, and learns the endpoint from the initiation.

Inner addresses: 10.77.0.0/24 and fd00:77::/64 (10.78.0.0/24 and fd00:78::/64 for the three
minivpn peers); outer: 198.51.100.0/24 and fd00:5100:100::/64.
"""

from __future__ import annotations

import re
import shutil
import time
from typing import TYPE_CHECKING

import pytest
from tests.helpers.procs import ping, wait_for_ping, wait_until
from tests.helpers.wg import (
    Capture,
    Daemon,
    Datagram,
    Iperf,
    Lab,
    endpoint,
    genpsk,
    iperf3,
    link_pair,
    open_lab,
    star,
    wait_for_datagrams,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from netns import Namespace

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("wg", "wireguard-go", "iperf3", "dumpcap")),
    reason="needs wg, wireguard-go, iperf3 and dumpcap",
)

A4, A6 = "10.77.0.1", "fd00:77::1"
B4, B6 = "10.77.0.2", "fd00:77::2"
PORT_A, PORT_B = 51820, 51821
#: A keepalive (or any data message) with an empty payload: header 16 + tag 16.
KEEPALIVE_SIZE = 32
#: One 84-byte ping packet (IPv4, 56 data bytes) padded to 96, plus header and tag.
PING_MESSAGE_SIZE = 16 + 96 + 16
#: Handshake initiation and response sizes.
INITIATION_SIZE, RESPONSE_SIZE = 148, 92
#: Drop reasons that mean "a peer's authentic traffic was lost": never expected in clean runs.
CRYPTO_DROPS = (
    "decryption_failed",
    "replayed_counter",
    "invalid_inner_packet",
    "disallowed_source",
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path, "io") as lab:
        yield lab


def outer(ns: Namespace, family: int) -> str:
    return ns.addr4 if family == 4 else ns.addr6


def mixed_pair(
    lab: Lab, *, minivpn_knows: bool = True, wireguard_go_knows: bool = True, family: int = 4
) -> tuple[Namespace, Namespace, Daemon, Daemon]:
    """minivpnd in A, wireguard-go in B, peers of each other (no preshared key).

    ``*_knows``: whether that side is told the other's endpoint (and so may initiate).
    """
    a, b = lab.topology.pair()
    mine = lab.minivpnd(a, "A")
    theirs = lab.wireguard_go(b, "B")
    link_pair(
        mine,
        theirs,
        x_endpoint=endpoint(outer(b, family), PORT_B) if minivpn_knows else None,
        y_endpoint=endpoint(outer(a, family), PORT_A) if wireguard_go_knows else None,
        x_port=PORT_A,
        y_port=PORT_B,
    )
    return a, b, mine, theirs


def assert_pings(ns: Namespace, address: str, count: int = 3) -> None:
    result = ping(ns, address, count=count, interval=0.05, wait=2)
    assert result.returncode == 0, f"ping {address} from {ns.name}:\n{result.stdout}{result.stderr}"
    assert f"{count} received" in result.stdout, result.stdout


def assert_no_stall(run: Iperf) -> None:
    """The iperf3 run moved data, and never went a whole second without (see Iperf.stalls)."""
    assert run.interval_bytes, run.result
    assert not run.stalls(), f"stalled: bytes per half second {run.interval_bytes}"
    assert run.total_bytes > 0


# --- handshakes and pings -----------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6], ids=["outer-ipv4", "outer-ipv6"])
@pytest.mark.parametrize("initiator", ["minivpn", "wireguard-go"])
def test_handshake_then_ping_both_ways(lab: Lab, initiator: str, family: int) -> None:
    """Either side initiates, over IPv4 or IPv6 outside; then both ping over IPv4 and IPv6."""
    a, b, mine, theirs = mixed_pair(
        lab,
        minivpn_knows=initiator == "minivpn",
        wireguard_go_knows=initiator == "wireguard-go",
        family=family,
    )
    first, responder = (a, theirs) if initiator == "minivpn" else (b, mine)
    started = int(time.time())
    # Only the initiator knows where the other is, so the first packet makes it shake hands.
    wait_for_ping(first, B4 if first is a else A4)
    # The responder learnt the initiator's endpoint (family and port) from the initiation.
    learnt = responder.peer((mine if responder is theirs else theirs).public_key).endpoint
    initiator_ns, initiator_port = (a, PORT_A) if initiator == "minivpn" else (b, PORT_B)
    assert learnt == endpoint(outer(initiator_ns, family), initiator_port)

    for ns, v4, v6 in ((a, B4, B6), (b, A4, A6)):
        assert_pings(ns, v4)
        assert_pings(ns, v6)

    finished = time.time()
    for side, other in ((mine, theirs), (theirs, mine)):
        peer = side.peer(other.public_key)
        assert started <= peer.latest_handshake <= finished + 1, (side, peer)
        assert peer.rx_bytes > 0
        assert peer.tx_bytes > 0


def test_preshared_key(lab: Lab) -> None:
    """Different preshared keys: no handshake (minivpn counts the bad response); same: works."""
    a, b = lab.topology.pair()
    mine = lab.minivpnd(a, "A")
    theirs = lab.wireguard_go(b, "B")
    ours, wrong = genpsk(), genpsk()
    link_pair(
        mine,
        theirs,
        x_endpoint=endpoint(b.addr4, PORT_B),
        y_endpoint=None,
        x_port=PORT_A,
        y_port=PORT_B,
        x_psk=ours,
        y_psk=wrong,
    )
    assert mine.show("preshared-keys") == f"{theirs.public_key}\t{ours}"
    before = mine.report()
    assert ping(a, B4, wait=1).returncode != 0
    # wireguard-go answered the initiation, but its response does not authenticate with our key.
    wait_until(
        lambda: mine.report().delta(before).get("handshake_invalid", 0) >= 1,
        timeout=10,
        what="minivpn to count the response made with another preshared key",
    )
    assert mine.peer(theirs.public_key).latest_handshake == 0
    assert theirs.peer(mine.public_key).latest_handshake == 0

    theirs.set("peer", mine.public_key, "preshared-key", theirs.key_file(ours))
    # minivpn retries the initiation (every 5 s) until it gets an answer it can use.
    wait_for_ping(a, B4, timeout=20)
    assert_pings(b, A6)
    assert mine.peer(theirs.public_key).latest_handshake > 0


# --- bulk traffic ---------------------------------------------------------------------------------


def test_iperf3_both_directions_without_stalls(lab: Lab) -> None:
    """TCP through the tunnel both ways: every interval moves data, nothing authentic dropped."""
    a, b, mine, theirs = mixed_pair(lab)
    wait_for_ping(a, B4)
    before = mine.report()
    upload = iperf3(b, a, B4, port=5201)
    assert_no_stall(upload)
    download = iperf3(b, a, B4, port=5202, extra=["-R"])
    assert_no_stall(download)
    ipv6 = iperf3(a, b, A6, port=5203)
    assert_no_stall(ipv6)
    dropped = mine.report().delta(before)
    assert not {reason: n for reason, n in dropped.items() if reason in CRYPTO_DROPS}, dropped
    # Both sides saw the bulk in their counters (wg show), within what was measured by iperf3.
    sent = mine.peer(theirs.public_key).tx_bytes
    received = theirs.peer(mine.public_key).rx_bytes
    assert sent >= upload.total_bytes
    assert received >= upload.total_bytes


# --- keepalives -----------------------------------------------------------------------------------


def test_persistent_keepalive_seen_on_the_wire(lab: Lab, tmp_path: Path) -> None:
    """``persistent-keepalive 1`` on minivpn: 32-byte data messages leave every second, and
    wireguard-go accepts them (its receive counter grows by 32 each)."""
    a, b, mine, theirs = mixed_pair(lab)
    wait_for_ping(a, B4)
    capture = Capture(
        b, b.veth, f"udp and src host {a.addr4} and src port {PORT_A}", tmp_path, "keepalive"
    )
    received_before = theirs.peer(mine.public_key).rx_bytes
    mine.set("peer", theirs.public_key, "persistent-keepalive", "1")
    assert mine.peer(theirs.public_key).persistent_keepalive == 1

    def is_keepalive(datagram: Datagram) -> bool:
        payload = datagram.payload
        return len(payload) == KEEPALIVE_SIZE and payload[:4] == b"\x04\x00\x00\x00"

    # No traffic flows now; a passive keepalive would come once, after 10 s.  Three in a row
    # within 8 s can only be persistent ones.
    keepalives = wait_for_datagrams(
        capture, is_keepalive, 3, timeout=8, what="three keepalives from minivpn on the wire"
    )
    capture.stop()
    counters = [int.from_bytes(k.payload[8:16], "little") for k in keepalives]
    assert counters == sorted(set(counters)), f"keepalive counters must increase: {counters}"
    wait_until(
        lambda: (
            theirs.peer(mine.public_key).rx_bytes - received_before
            >= KEEPALIVE_SIZE * len(keepalives)
        ),
        timeout=5,
        what="wireguard-go to count the keepalives it accepted",
    )


# --- restarts -------------------------------------------------------------------------------------


def _restart(
    lab: Lab, old: Daemon, peer: Daemon, *, port: int, inner: tuple[str, str], peer_port: int
) -> Daemon:
    """Stop *old*, start the same program again with the same name, keys and settings.

    Args:
        inner: the restarted side's own inner IPv4 and IPv6 addresses.
        peer_port: the listen port of *peer*, which stays up.
    """
    old.stop()
    assert old.keys is not None
    fresh = lab.start(old.kind, old.ns, old.name)
    fresh.set_private_key(old.keys, listen_port=port)
    peer_inner = (A4, A6) if inner == (B4, B6) else (B4, B6)
    fresh.add_peer(
        peer.public_key,
        allowed_ips=[f"{peer_inner[0]}/32", f"{peer_inner[1]}/128"],
        endpoint=endpoint(peer.ns.addr4, peer_port),
    )
    fresh.add_addresses(f"{inner[0]}/24", f"{inner[1]}/64")
    return fresh


def _replies_after(text: str, seq: int) -> int:
    return sum(1 for m in re.finditer(r"icmp_seq=(\d+)", text) if int(m.group(1)) > seq)


@pytest.mark.parametrize("restarted", ["wireguard-go", "minivpn"])
def test_peer_restarted_mid_traffic(lab: Lab, restarted: str, tmp_path: Path) -> None:
    """One side restarts while the other pings it; the restarted side has traffic of its own,
    so it shakes hands at once, and the running side's pings get answers again."""
    a, b, mine, theirs = mixed_pair(lab)
    wait_for_ping(a, B4)
    if restarted == "wireguard-go":
        old, steady, steady_ns, restarted_ns = theirs, mine, a, b
        target, own = B4, (B4, B6)
    else:
        old, steady, steady_ns, restarted_ns = mine, theirs, b, a
        target, own = A4, (A4, A6)
    log = tmp_path / "steady-ping.out"
    with log.open("w") as out:
        steady_ns.popen(["ping", "-n", "-i", "0.1", "-w", "60", target], stdout=out)
    wait_until(lambda: _replies_after(log.read_text(), 0) >= 3, timeout=10, what="steady pings")
    handshake_before = steady.peer(old.public_key).latest_handshake

    port, peer_port = (PORT_B, PORT_A) if restarted == "wireguard-go" else (PORT_A, PORT_B)
    fresh = _restart(lab, old, steady, port=port, inner=own, peer_port=peer_port)
    last_seq = max(int(s) for s in re.findall(r"icmp_seq=(\d+)", log.read_text()))
    wait_for_ping(restarted_ns, A4 if restarted_ns is b else B4)
    wait_until(
        lambda: _replies_after(log.read_text(), last_seq) >= 3,
        timeout=15,
        what=f"the pings from the running side to answer again:\n{log.read_text()[-500:]}",
    )
    assert steady.peer(fresh.public_key).latest_handshake >= handshake_before


def test_traffic_resumes_after_silent_peer_restart(lab: Lab) -> None:
    """wireguard-go restarts and sends nothing: minivpn's pings go unanswered until its own
    timer (no reply for 10 + 5 s) makes it shake hands again."""
    a, _, mine, theirs = mixed_pair(lab)
    wait_for_ping(a, B4)
    handshake_before = mine.peer(theirs.public_key).latest_handshake
    fresh = _restart(lab, theirs, mine, port=PORT_B, inner=(B4, B6), peer_port=PORT_A)
    # The old session is gone on the other side: minivpn's packets can no longer be read there.
    assert ping(a, B4, wait=1).returncode != 0
    wait_for_ping(a, B4, timeout=30)
    assert fresh.peer(mine.public_key).latest_handshake > 0
    assert mine.peer(fresh.public_key).latest_handshake >= handshake_before


# --- roaming --------------------------------------------------------------------------------------


def move_address(ns: Namespace, new: str) -> None:
    """Replace the IPv4 address of *ns*'s veth (the old one goes first: a secondary address in
    the same subnet would go with it)."""
    ns.ip("addr", "del", f"{ns.addr4}/24", "dev", ns.veth)
    ns.ip("addr", "add", f"{new}/24", "dev", ns.veth)


def test_endpoint_roaming(lab: Lab) -> None:
    """Each side's outer address (and port, and family) changes; the other follows it."""
    a, b, mine, theirs = mixed_pair(lab)
    wait_for_ping(a, B4)

    # wireguard-go's host moves to a new IPv4 address: minivpn learns it from the next packet.
    # (wireguard-go keeps sending from the address it last used until its endpoint is set
    # again, which is what netns.sh does too.)
    move_address(b, "198.51.100.12")
    theirs.set("peer", mine.public_key, "endpoint", endpoint(a.addr4, PORT_A))
    wait_for_ping(b, A4)
    assert mine.peer(theirs.public_key).endpoint == f"198.51.100.12:{PORT_B}"

    # ... and to a new port.
    theirs.set("listen-port", "51899")
    wait_for_ping(b, A6)
    assert mine.peer(theirs.public_key).endpoint == "198.51.100.12:51899"

    # minivpn's host moves: wireguard-go learns the new source of minivpn's packets.
    move_address(a, "198.51.100.11")
    mine.set("peer", theirs.public_key, "endpoint", "198.51.100.12:51899")
    wait_for_ping(a, B4)
    assert theirs.peer(mine.public_key).endpoint == f"198.51.100.11:{PORT_A}"

    # wireguard-go switches to IPv6 outside: minivpn follows across families.
    theirs.set("peer", mine.public_key, "endpoint", endpoint(a.addr6, PORT_A))
    wait_for_ping(b, A4)
    assert mine.peer(theirs.public_key).endpoint == endpoint(b.addr6, 51899)
    assert_pings(a, B6)


# --- wg show and wg set on minivpn ----------------------------------------------------------------


def test_wg_show_reports_handshake_time_and_counters(lab: Lab) -> None:
    """``wg show`` on minivpn: no handshake and zero counters at first; after 10 pings, the
    handshake time and counters that 10 ping messages each way account for."""
    a, _, mine, theirs = mixed_pair(lab)
    peer = mine.peer(theirs.public_key)
    assert (peer.latest_handshake, peer.rx_bytes, peer.tx_bytes) == (0, 0, 0)
    assert mine.show("latest-handshakes") == f"{theirs.public_key}\t0"

    started = int(time.time())
    assert_pings(a, B4, count=10)
    finished = time.time()
    peer = mine.peer(theirs.public_key)
    assert started <= peer.latest_handshake <= finished + 1
    # wireguard-go records the same handshake (to the second).
    assert abs(theirs.peer(mine.public_key).latest_handshake - peer.latest_handshake) <= 1
    # 10 requests out, 10 replies in, 128 bytes each; on top at most the handshake messages
    # and a few keepalives (implementations differ in whether handshakes count).
    slack = INITIATION_SIZE + RESPONSE_SIZE + 4 * KEEPALIVE_SIZE
    assert 10 * PING_MESSAGE_SIZE <= peer.tx_bytes <= 10 * PING_MESSAGE_SIZE + slack, peer
    assert 10 * PING_MESSAGE_SIZE <= peer.rx_bytes <= 10 * PING_MESSAGE_SIZE + slack, peer
    seen_by_them = theirs.peer(mine.public_key)
    assert abs(seen_by_them.rx_bytes - peer.tx_bytes) <= slack
    assert abs(seen_by_them.tx_bytes - peer.rx_bytes) <= slack
    transfer = mine.show("transfer").split("\t")
    assert transfer == [theirs.public_key, str(peer.rx_bytes), str(peer.tx_bytes)]


def test_wg_set_adds_a_second_peer(lab: Lab) -> None:
    """A working minivpn interface gets a second wireguard-go peer with ``wg set``; both work."""
    one, two, three = star(lab.topology, 3)
    mine = lab.minivpnd(one, "A")
    first = lab.wireguard_go(two, "B")
    second = lab.wireguard_go(three, "C")
    link_pair(
        mine,
        first,
        x_endpoint=endpoint(two.addr4, PORT_B),
        y_endpoint=endpoint(one.addr4, PORT_A),
        x_port=PORT_A,
        y_port=PORT_B,
    )
    wait_for_ping(one, B4)

    second.set_private_key(listen_port=51822)
    second.add_peer(
        mine.public_key, allowed_ips=["10.77.0.1/32", "fd00:77::1/128"],
        endpoint=endpoint(one.addr6, PORT_A),
    )  # fmt: skip
    second.add_addresses("10.77.0.3/24", "fd00:77::3/64")
    mine.set(
        "peer", second.public_key, "allowed-ips", "10.77.0.3/32,fd00:77::3/128",
        "endpoint", endpoint(three.addr6, 51822),
    )  # fmt: skip
    assert set(mine.show("peers").split()) == {first.public_key, second.public_key}
    wait_for_ping(one, "10.77.0.3")
    assert_pings(one, "fd00:77::3")
    assert_pings(three, A4)
    assert_pings(one, B4)
    assert_pings(two, A6)
    assert mine.peer(second.public_key).latest_handshake > 0


# --- minivpn to minivpn ---------------------------------------------------------------------------


def test_three_minivpn_peers_with_overlapping_allowed_ips(lab: Lab) -> None:
    """A mesh of three minivpn daemons; A routes 10.78.0.0/24 to B except 10.78.0.3/32 to C.

    Moving the /32 to B (``wg set`` on A) moves both directions at once: A's packets for .3
    go to B, and packets from C with source .3 are dropped (and counted) as not allowed.
    Moving it back restores C.
    """
    one, two, three = star(lab.topology, 3)
    a, b, c = (lab.minivpnd(ns, tag) for ns, tag in ((one, "A"), (two, "B"), (three, "C")))
    ports = {a: 51820, b: 51821, c: 51822}
    for daemon in (a, b, c):
        daemon.set_private_key(listen_port=ports[daemon])
    outer4 = {a: one.addr4, b: two.addr4, c: three.addr4}
    inner = {a: "1", b: "2", c: "3"}

    def peer(x: Daemon, y: Daemon, *allowed: str) -> None:
        x.add_peer(y.public_key, allowed_ips=allowed, endpoint=endpoint(outer4[y], ports[y]))

    peer(a, b, "10.78.0.0/24", "fd00:78::/64")
    peer(a, c, "10.78.0.3/32", "fd00:78::3/128")
    for x in (b, c):
        peer(x, a, "10.78.0.1/32", "fd00:78::1/128")
    peer(b, c, "10.78.0.3/32", "fd00:78::3/128")
    peer(c, b, "10.78.0.2/32", "fd00:78::2/128")
    for daemon in (a, b, c):
        daemon.add_addresses(f"10.78.0.{inner[daemon]}/24", f"fd00:78::{inner[daemon]}/64")

    wait_for_ping(one, "10.78.0.2")
    wait_for_ping(one, "10.78.0.3")
    wait_for_ping(two, "fd00:78::3")
    assert_pings(three, "fd00:78::1")

    def allowed(x: Daemon) -> dict[str, set[str]]:
        return {
            key: set(ips)
            for key, ips in ((p.public_key, p.allowed_ips) for p in x.dump().peers.values())
        }

    # Move 10.78.0.3/32 (and fd00:78::3/128) from C to B.
    a.set("peer", b.public_key, "allowed-ips",
          "10.78.0.0/24,fd00:78::/64,10.78.0.3/32,fd00:78::3/128")  # fmt: skip
    assert allowed(a) == {
        b.public_key: {"10.78.0.0/24", "fd00:78::/64", "10.78.0.3/32", "fd00:78::3/128"},
        c.public_key: set(),
    }
    before = a.report()
    to_b_before = a.peer(b.public_key).tx_bytes
    to_c_before = a.peer(c.public_key).tx_bytes
    result = ping(three, "10.78.0.1", count=3, interval=0.05, wait=1)
    assert result.returncode != 0, "C's address now belongs to B on A: C must not get through"
    wait_until(
        lambda: a.report().delta(before).get("disallowed_source", 0) >= 3,
        timeout=10,
        what="A to count C's packets as coming from a source C is not allowed",
    )
    assert ping(one, "10.78.0.3", count=2, interval=0.05, wait=1).returncode != 0
    assert a.peer(b.public_key).tx_bytes > to_b_before, "A's packets for .3 must go to B"
    assert a.peer(c.public_key).tx_bytes == to_c_before, "... and no longer to C"

    # Move it back.
    a.set("peer", c.public_key, "allowed-ips", "10.78.0.3/32,fd00:78::3/128")
    assert allowed(a)[b.public_key] == {"10.78.0.0/24", "fd00:78::/64"}
    wait_for_ping(three, "10.78.0.1")
    assert_pings(one, "fd00:78::3")

    # Remove C: the broader prefix of B covers .3 again.
    a.set("peer", c.public_key, "remove")
    assert allowed(a) == {b.public_key: {"10.78.0.0/24", "fd00:78::/64"}}
    assert_pings(one, "10.78.0.2")
