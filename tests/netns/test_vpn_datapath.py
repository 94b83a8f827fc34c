"""The data path end to end: the bytes that arrive are the bytes that were sent.

minivpn moves packets one at a time or through the offload engine (``MINIVPN_OFFLOAD``:
``off``, ``batch``, ``tso``; docs/offload.md): UDP GSO trains on the way out, UDP GRO batches on
the way in, TCP segments merged into super-packets before they are written to the TUN device,
and with ``tso`` TCP super-packets read from it and cut in Python.  iperf3 says how fast, not
whether the bytes are right; here several TCP connections at once (so runs of different flows
interleave) carry pseudo-random bytes through the tunnel, and the receiver checks a SHA-256 of
everything against the sender's: in each mode, against minivpn, Debian's wireguard-go and
upstream wireguard-go 0.0.20250522 (which has TUN offloads of its own), both directions, IPv4
and IPv6 inside and outside, MTU 1280 and 1420.  And one datagram no data path expects: an
empty one.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest
from tests.helpers.procs import ping, wait_for_ping
from tests.helpers.wg import WG_GO_2025, Lab, endpoint, link_pair, open_lab, wait_for_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from netns import Namespace

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("wg", "wireguard-go")),
    reason="needs wg and wireguard-go",
)

PORT_X, PORT_Y = 51820, 51821
X4, Y4 = "10.77.0.1", "10.77.0.2"
STREAMS = 4
MEGABYTES = 24  # per stream: enough for full-size GSO batches and long coalesced runs

#: The receiver: accept STREAMS connections, read each to the end, print one digest per
#: connection (in the order the first byte named: each sender starts with its number).
RECEIVER = """
import hashlib, socket, sys, threading
host, port, streams = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
server = socket.create_server((host, port), family=family, backlog=streams)
digests = {}
def take(conn):
    digest, number = hashlib.sha256(), None
    with conn:
        while data := conn.recv(1 << 20):
            if number is None:
                number, data = data[0], data[1:]
            digest.update(data)
    digests[number] = digest.hexdigest()
threads = []
for _ in range(streams):
    conn, _ = server.accept()
    threads.append(threading.Thread(target=take, args=(conn,)))
    threads[-1].start()
for thread in threads:
    thread.join()
print(" ".join(digests[n] for n in range(streams)))
"""

#: The senders: STREAMS connections at once, each sending MEGABYTES of bytes from its own
#: seed; prints the digests of what each sent.
SENDER = """
import hashlib, random, socket, sys, threading
host, port, streams, megabytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
digests = [None] * streams
def send(number):
    rng, digest = random.Random(number), hashlib.sha256()
    with socket.create_connection((host, port)) as conn:
        conn.sendall(bytes([number]))
        for _ in range(megabytes):
            # odd sizes, so that segments are not all aligned the same way
            chunk = rng.randbytes(1 << 20) + rng.randbytes(rng.randrange(1, 3000))
            digest.update(chunk)
            conn.sendall(chunk)
    digests[number] = digest.hexdigest()
threads = [threading.Thread(target=send, args=(n,)) for n in range(streams)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(" ".join(digests))
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path, "dp") as lab:
        yield lab


def transfer(
    sender: Namespace, receiver: Namespace, address: str, megabytes: int = MEGABYTES
) -> tuple[str, str]:
    """Run the transfer to *address* (in *receiver*); return (sent digests, received digests)."""
    python = shutil.which("python3") or "python3"
    server = receiver.popen([python, "-c", RECEIVER, address, "5201", str(STREAMS)])
    wait_for_server(receiver, 5201)
    sent = sender.run(
        [python, "-c", SENDER, address, "5201", str(STREAMS), str(megabytes)], timeout=120
    )
    received, errors = server.communicate(timeout=60)
    assert server.returncode == 0, errors
    return sent.stdout.strip(), received.strip()


@pytest.mark.parametrize("peer_kind", ["minivpn", "wireguard-go"])
def test_many_tcp_streams_arrive_intact_both_ways(lab: Lab, peer_kind: str) -> None:
    x_ns, y_ns = lab.topology.pair()
    mine = lab.minivpnd(x_ns, "X")
    theirs = lab.start(peer_kind, y_ns, lab.name("Y"))  # type: ignore[arg-type]
    link_pair(
        mine,
        theirs,
        x_endpoint=endpoint(y_ns.addr4, PORT_Y),
        y_endpoint=None,
        x_port=PORT_X,
        y_port=PORT_Y,
    )
    wait_for_ping(x_ns, Y4)
    for sender, receiver, address in ((x_ns, y_ns, Y4), (y_ns, x_ns, X4)):
        sent, received = transfer(sender, receiver, address)
        assert len(sent.split()) == STREAMS
        assert received == sent
    assert mine.running()


def test_an_empty_datagram_does_not_stop_the_interface(lab: Lab) -> None:
    x_ns, y_ns = lab.topology.pair()
    mine = lab.minivpnd(x_ns, "X")
    theirs = lab.wireguard_go(y_ns, "Y")
    link_pair(
        mine,
        theirs,
        x_endpoint=None,
        y_endpoint=endpoint(x_ns.addr4, PORT_X),
        x_port=PORT_X,
        y_port=PORT_Y,
    )
    wait_for_ping(y_ns, X4)
    sent = y_ns.run(
        [
            shutil.which("python3") or "python3",
            "-c",
            "import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(3):\n"
            "    s.sendto(b'', (sys.argv[1], int(sys.argv[2])))\n",
            x_ns.addr4,
            str(PORT_X),
        ]
    )
    assert sent.returncode == 0
    assert ping(y_ns, X4, count=5, interval=0.05).returncode == 0
    assert mine.running()


#: (minivpn's offload mode, the peer, inner and outer IP version, tunnel MTU): each mode against
#: each peer, and every inner/outer/MTU value with each mode and each peer.
MATRIX = [
    ("off", "minivpn", 4, 4, 1420),
    ("off", "wireguard-go", 6, 6, 1280),
    ("off", "wireguard-go-2025", 4, 6, 1280),
    ("batch", "minivpn", 6, 4, 1280),
    ("batch", "wireguard-go", 4, 6, 1420),
    ("batch", "wireguard-go-2025", 6, 4, 1420),
    ("tso", "minivpn", 4, 6, 1280),
    ("tso", "wireguard-go", 6, 4, 1420),
    ("tso", "wireguard-go-2025", 6, 6, 1420),
]


@pytest.mark.parametrize(
    ("mode", "peer_kind", "inner", "outer", "mtu"),
    MATRIX,
    ids=[f"{m}-{p}-inner{i}-outer{o}-mtu{u}" for m, p, i, o, u in MATRIX],
)
def test_streams_arrive_intact_in_every_offload_mode(
    lab: Lab, mode: str, peer_kind: str, inner: int, outer: int, mtu: int
) -> None:
    if peer_kind == "wireguard-go-2025" and not WG_GO_2025.is_file():
        pytest.skip(f"no wireguard-go 0.0.20250522 at {WG_GO_2025} (set MINIVPN_WG_GO_2025)")
    x_ns, y_ns = lab.topology.pair()
    offload = {"MINIVPN_OFFLOAD": mode}
    mine = lab.minivpnd(x_ns, "X", env=offload)
    if peer_kind == "minivpn":
        theirs = lab.minivpnd(y_ns, "Y", env=offload)
    else:
        theirs = lab.start(peer_kind, y_ns, lab.name("Y"))  # type: ignore[arg-type]
    y_outer = y_ns.addr4 if outer == 4 else y_ns.addr6
    link_pair(
        mine,
        theirs,
        x_endpoint=endpoint(y_outer, PORT_Y),
        y_endpoint=None,
        x_port=PORT_X,
        y_port=PORT_Y,
    )
    for daemon in (mine, theirs):
        daemon.ip("link", "set", daemon.name, "mtu", str(mtu))
    x_inner, y_inner = (X4, Y4) if inner == 4 else ("fd00:77::1", "fd00:77::2")
    wait_for_ping(x_ns, y_inner)
    for sender, receiver, address in ((x_ns, y_ns, y_inner), (y_ns, x_ns, x_inner)):
        sent, received = transfer(sender, receiver, address, megabytes=6)
        assert len(sent.split()) == STREAMS
        assert received == sent
    assert mine.running()
    log = mine.process.stderr_path.read_text()
    expected = {"off": "one packet at a time", "batch": "offload engine", "tso": "with TSO"}
    assert expected[mode] in log
