"""The in-memory network of cores (tests/helpers/wgnet.py) checks itself."""

from __future__ import annotations

from tests.helpers.wgnet import WALL_START, a_to_b, pair

from minivpn.wireguard.events import HandshakeCompleted


def test_harness_clock_moves_only_when_told() -> None:
    net, a, _ = pair()
    start = net.now
    net.send(a, a_to_b())
    assert net.now == start
    net.advance(2.5)
    assert net.now == start + 2.5
    assert net.wall == WALL_START + 2.5


def test_harness_established_pair_has_one_completed_handshake_each() -> None:
    net, a, b = pair()
    net.send(a, a_to_b())
    completed_a = a.events_of(HandshakeCompleted)
    completed_b = b.events_of(HandshakeCompleted)
    assert completed_a == [HandshakeCompleted(b.public_key, initiator=True)]
    assert completed_b == [HandshakeCompleted(a.public_key, initiator=False)]
