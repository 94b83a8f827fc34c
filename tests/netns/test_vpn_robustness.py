"""Hostile and broken datagrams against a working minivpn session, with traffic flowing.

Three namespaces on one bridge: minivpnd (the target, 198.51.100.1), its wireguard-go peer
(.2) and an attacker (.3).  wireguard-go initiates the session, and ``dumpcap`` records what it
sends to minivpn: a real handshake initiation and real data messages.  While iperf3 pushes TCP
through the tunnel, the attacker sends minivpn's UDP port

* random datagrams, built to land in each of the protocol's rejection classes (not a message
  type, handshake messages of the wrong length, random mac1, unknown receiver index);
* the captured initiation truncated, bit-flipped in each of its fields, and replayed;
* the captured data messages replayed, bit-flipped and truncated;

and the peer itself sends packets whose inner source address it is not allowed to use.

Each class must be dropped and counted under its reason (minivpnd's SIGUSR1 report, read
before and after), and the session must not notice: the same handshake (no new one), the same
endpoint (nothing the attacker sent may move it), iperf3 without a stalled interval, and pings
still answered.  The reason for each class follows from the protocol (WireGuard whitepaper §5.4
and wireguard-go's receive path), not from minivpn's code: a handshake message is checked for
its exact length, then mac1 (which covers everything before it); a data message is looked up by
receiver index, then authenticated, then checked against the replay window, then its inner
source against the peer's allowed IPs.
"""

from __future__ import annotations

import random
import shutil
from typing import TYPE_CHECKING

import pytest
from tests.helpers.procs import ping, wait_for_ping, wait_until
from tests.helpers.wg import (
    Capture,
    Datagram,
    Lab,
    endpoint,
    inject,
    iperf_result,
    link_pair,
    open_lab,
    settle,
    star,
    start_iperf3,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("wg", "wireguard-go", "iperf3", "dumpcap")),
    reason="needs wg, wireguard-go, iperf3 and dumpcap",
)

PORT_A, PORT_B = 51820, 51821
A4, B4 = "10.77.0.1", "10.77.0.2"
#: An address on the peer's link that is not in its allowed IPs on minivpn.
NOT_ALLOWED = "10.77.0.99"
INITIATION, RESPONSE, COOKIE_REPLY = 1, 2, 3
SEED = 20240525


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path, "rb") as lab:
        yield lab


def message(kind: int, body: bytes) -> bytes:
    """A message of *kind*: the type byte, three zero bytes, then *body*."""
    return bytes([kind, 0, 0, 0]) + body


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    """*data* with one bit flipped."""
    changed = bytearray(data)
    changed[offset] ^= 1 << bit
    return bytes(changed)


def random_datagrams(rng: random.Random) -> dict[str, list[bytes]]:
    """Random datagrams, grouped by the reason the protocol gives for dropping them."""
    noise = rng.randbytes
    not_a_type = [
        bytes([rng.choice([0, *range(5, 256)])]) + noise(rng.randrange(0, 300)) for _ in range(10)
    ]
    wrong_length = [
        message(INITIATION, noise(rng.choice([rng.randrange(0, 144), rng.randrange(145, 300)])))
        for _ in range(4)
    ] + [message(4, noise(rng.randrange(0, 28))) for _ in range(3)]
    # The type is a little-endian u32: a known first byte with non-zero "reserved" bytes is not
    # a known type.
    reserved = [bytes([4, 0, rng.randrange(1, 256), 0]) + noise(60) for _ in range(3)]
    bad_mac1 = [message(INITIATION, noise(144)) for _ in range(8)] + [
        message(RESPONSE, noise(88)) for _ in range(4)
    ]
    unknown_index = [message(COOKIE_REPLY, noise(60)) for _ in range(4)] + [
        message(4, noise(rng.randrange(28, 300))) for _ in range(8)
    ]
    return {
        "malformed": not_a_type + wrong_length + reserved,
        "invalid_mac1": bad_mac1,
        "unknown_index": unknown_index,
    }


def test_hostile_datagrams_are_dropped_counted_and_harmless(lab: Lab, tmp_path: Path) -> None:
    """Every class of bad datagram is dropped under its reason while the session goes on."""
    mine_ns, peer_ns, attacker = star(lab.topology, 3)
    mine = lab.minivpnd(mine_ns, "A")
    theirs = lab.wireguard_go(peer_ns, "B")
    capture = Capture(
        peer_ns,
        peer_ns.veth,
        f"udp and src port {PORT_B} and dst host {mine_ns.addr4} and dst port {PORT_A}",
        tmp_path,
        "peer-to-minivpn",
    )
    # minivpn is not told where its peer is: wireguard-go initiates, and we see the initiation.
    link_pair(
        mine,
        theirs,
        x_endpoint=None,
        y_endpoint=endpoint(mine_ns.addr4, PORT_A),
        x_port=PORT_A,
        y_port=PORT_B,
    )
    theirs.ip("addr", "add", f"{NOT_ALLOWED}/32", "dev", theirs.name)
    wait_for_ping(peer_ns, A4)
    assert ping(peer_ns, A4, count=8, interval=0.02).returncode == 0

    def captured() -> tuple[list[Datagram], list[Datagram]] | None:
        seen = capture.datagrams()
        initiations = [d for d in seen if d.payload[:1] == b"\x01" and len(d.payload) == 148]
        data = [d for d in seen if d.payload[:1] == b"\x04" and len(d.payload) > 32]
        return (initiations, data) if initiations and len(data) >= 8 else None

    found = wait_until(captured, timeout=10, what="the peer's messages on the wire")
    assert found is not None
    initiations, data = found
    capture.stop()
    initiation = initiations[0].payload
    data_messages = [d.payload for d in data[:8]]

    rng = random.Random(SEED)
    expected: dict[str, list[bytes]] = random_datagrams(rng)
    # The initiation, cut short: handshake messages have one exact length.
    expected["malformed"] += [initiation[:147], initiation[:116], initiation[:4]]
    # One bit flipped in the type and in the reserved bytes: no longer a known message.
    expected["malformed"] += [flip(initiation, 0, 1), flip(initiation, 2)]
    # One bit flipped in sender index, ephemeral key, static key, timestamp and mac1: mac1
    # covers all of them.
    expected["invalid_mac1"] += [flip(initiation, offset) for offset in (5, 20, 60, 100, 120)]
    # Flipped in mac2 (not checked when not under load), or sent again unchanged: a valid
    # initiation whose timestamp is not newer than the last one accepted: a replay.
    expected["replayed_initiation"] = [flip(initiation, 140), initiation]
    # Data messages sent again: authentic, but their counters were seen.
    expected["replayed_counter"] = list(data_messages)
    # Data messages with a flipped bit in the counter, the ciphertext or the tag, or one byte
    # short: they do not authenticate.
    expected["decryption_failed"] = [
        flip(data_messages[0], 9),
        flip(data_messages[1], 16),
        flip(data_messages[2], 30, 7),
        flip(data_messages[3], len(data_messages[3]) - 1),
        data_messages[4][:-1],
    ]
    # A flipped receiver index names no session.
    expected["unknown_index"].append(flip(data_messages[5], 4, 3))

    handshake_before = mine.peer(theirs.public_key).latest_handshake
    endpoint_before = mine.peer(theirs.public_key).endpoint
    before = mine.report()

    # Traffic flows from minivpn's side to the peer during all of this.
    client = start_iperf3(peer_ns, mine_ns, B4, seconds=3)
    everything = [datagram for datagrams in expected.values() for datagram in datagrams]
    rng.shuffle(everything)
    inject(attacker, (mine_ns.addr4, PORT_A), everything, pace=0.002)
    # The peer itself sends from an address it is not allowed to use.
    spoofed_from = peer_ns.run(
        ["ping", "-n", "-c", "3", "-i", "0.05", "-W", "1", "-I", NOT_ALLOWED, A4], check=False
    )
    assert spoofed_from.returncode != 0, spoofed_from.stdout

    assert client.poll() is None, "iperf3 ended before the attack did: make it run longer"
    run = iperf_result(client)
    assert run.total_bytes > 0
    assert not run.stalls(), f"stalled: bytes per half second {run.interval_bytes}"

    wanted = {reason: len(datagrams) for reason, datagrams in expected.items()}
    wanted["disallowed_source"] = 3

    def counted() -> dict[str, int]:
        delta = mine.report().delta(before)
        return {reason: delta.get(reason, 0) for reason in wanted}

    settle(counted, wanted, timeout=10)
    # The session did not notice.
    peer = mine.peer(theirs.public_key)
    assert peer.latest_handshake == handshake_before, "no new handshake may have happened"
    assert peer.endpoint == endpoint_before, "nothing the attacker sent may move the endpoint"
    assert ping(mine_ns, B4, count=3, interval=0.05, wait=2).returncode == 0
    assert mine.running()
