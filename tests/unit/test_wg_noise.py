"""Tests for minivpn.wireguard.noise: the Noise IKpsk2 handshake between two real identities.

Both sides run the real code; nothing is mocked.  Tampering tests recompute mac1 after changing a
byte, so that the Noise checks themselves (AEAD, DH, indices) are what must refuse the message.
(A real interop run against wireguard-go lives with the netns tests.)
"""

from __future__ import annotations

import random

import attrs
import pytest
from tests.helpers.keys import LOW_ORDER_POINTS

from minivpn.wireguard.cookie import CookieChecker, CookieGenerator
from minivpn.wireguard.crypto import TransportCipher
from minivpn.wireguard.errors import (
    HandshakeError,
    HandshakeFlood,
    InvalidMessage,
    LowOrderKey,
    ReplayedHandshake,
    UnknownPeer,
)
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from minivpn.wireguard.messages import (
    HandshakeInitiation,
    HandshakeResponse,
    parse_message_untrusted,
)
from minivpn.wireguard.noise import (
    INITIAL_CHAINING_KEY,
    INITIAL_HASH,
    HandshakeStage,
    PeerHandshakeState,
    SessionKeys,
    StaticIdentity,
    begin_session,
    consume_initiation_untrusted,
    consume_response_untrusted,
    create_initiation,
    create_response,
)

WALL = 1_700_000_000.0  # wall-clock time for timestamps
NOW = 1000.0  # monotonic time


@attrs.define
class Side:
    """One end of a handshake: its identity, its view of the other end, its MAC helpers."""

    identity: StaticIdentity
    peer: PeerHandshakeState = attrs.field(init=False)
    generator: CookieGenerator = attrs.field(init=False)
    checker: CookieChecker = attrs.field(init=False)

    def know(self, other: Side, psk: PresharedKey) -> None:
        self.peer = PeerHandshakeState(other.identity.public_key, psk)
        self.generator = CookieGenerator(other.identity.public_key)
        self.checker = CookieChecker(self.identity.public_key)

    def lookup(self, key: PublicKey) -> PeerHandshakeState | None:
        return self.peer if key == self.peer.remote_static else None


def make_pair(
    psk_a: PresharedKey | None = None, psk_b: PresharedKey | None = None, seed: int = 1
) -> tuple[Side, Side]:
    rng = random.Random(seed)
    shared = PresharedKey.generate(rng.randbytes)
    a = Side(StaticIdentity(PrivateKey.generate(rng.randbytes)))
    b = Side(StaticIdentity(PrivateKey.generate(rng.randbytes)))
    a.know(b, psk_a if psk_a is not None else shared)
    b.know(a, psk_b if psk_b is not None else shared)
    return a, b


def initiation_bytes(a: Side, index: int = 0x1111, wall: float = WALL) -> bytes:
    message = create_initiation(a.identity, a.peer, index, wall)
    return a.generator.add_macs(message.to_bytes(), NOW)


def receive_initiation(b: Side, data: bytes, now: float = NOW) -> PeerHandshakeState:
    """What a device does with a datagram: check mac1, parse, consume."""
    assert b.checker.check_mac1(data)
    message = parse_message_untrusted(data)
    assert isinstance(message, HandshakeInitiation)
    return consume_initiation_untrusted(b.identity, message, b.lookup, now)


def receive_response(a: Side, data: bytes) -> None:
    assert a.checker.check_mac1(data)
    message = parse_message_untrusted(data)
    assert isinstance(message, HandshakeResponse)
    consume_response_untrusted(a.identity, a.peer, message)


def response_bytes(b: Side, index: int = 0x2222) -> bytes:
    return b.generator.add_macs(create_response(b.peer, index).to_bytes(), NOW)


def full_handshake(
    a: Side, b: Side, wall: float = WALL, now: float = NOW
) -> tuple[SessionKeys, SessionKeys]:
    assert receive_initiation(b, initiation_bytes(a, wall=wall), now=now) is b.peer
    receive_response(a, response_bytes(b))
    return begin_session(a.peer), begin_session(b.peer)


def snapshot(state: PeerHandshakeState) -> tuple[object, ...]:
    return (
        state.stage,
        state.chaining_key,
        state.transcript_hash,
        state.local_ephemeral,
        state.remote_ephemeral,
        state.local_index,
        state.remote_index,
        state.last_timestamp,
        state.last_initiation_consumed_at,
    )


def flipped(data: bytes, index: int, mask: int = 0xFF) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


# --- the happy path ------------------------------------------------------------------------------


def test_initial_constants_match_boringtun() -> None:
    # HASH(CONSTRUCTION) and HASH(C || IDENTIFIER) as published in cloudflare/boringtun's
    # boringtun/src/noise/handshake.rs (INITIAL_CHAIN_KEY, INITIAL_CHAIN_HASH).
    assert list(INITIAL_CHAINING_KEY) == [
        96, 226, 109, 174, 243, 39, 239, 192, 46, 195, 53, 226, 160, 37, 210, 208,
        22, 235, 66, 6, 248, 114, 119, 245, 45, 56, 209, 152, 139, 120, 205, 54,
    ]  # fmt: skip
    assert list(INITIAL_HASH) == [
        34, 17, 179, 97, 8, 26, 197, 102, 105, 18, 67, 219, 69, 138, 213, 50,
        45, 156, 108, 102, 34, 147, 232, 183, 14, 225, 156, 101, 186, 7, 158, 243,
    ]  # fmt: skip


def test_handshake_derives_matching_transport_keys() -> None:
    a, b = make_pair()
    keys_a, keys_b = full_handshake(a, b)
    assert keys_a.is_initiator
    assert not keys_b.is_initiator
    assert keys_a.send_key == keys_b.receive_key
    assert keys_a.receive_key == keys_b.send_key
    assert keys_a.send_key != keys_a.receive_key
    assert (keys_a.local_index, keys_a.remote_index) == (0x1111, 0x2222)
    assert (keys_b.local_index, keys_b.remote_index) == (0x2222, 0x1111)
    # The handshake is forgotten, the replay guard is not.
    assert a.peer.stage is b.peer.stage is HandshakeStage.ZEROED
    assert b.peer.last_timestamp != bytes(12)
    assert "redacted" in repr(keys_a)
    assert keys_a.send_key.hex() not in repr(keys_a)


def test_transport_keys_carry_packets_both_ways() -> None:
    a, b = make_pair()
    keys_a, keys_b = full_handshake(a, b)
    sealed = TransportCipher(keys_a.send_key).seal(0, b"ping from a")
    assert TransportCipher(keys_b.receive_key).open(0, sealed) == b"ping from a"
    sealed = TransportCipher(keys_b.send_key).seal(0, b"pong from b")
    assert TransportCipher(keys_a.receive_key).open(0, sealed) == b"pong from b"


def test_handshake_without_preshared_key() -> None:
    a, b = make_pair(PresharedKey.zero(), PresharedKey.zero())
    keys_a, keys_b = full_handshake(a, b)
    assert keys_a.send_key == keys_b.receive_key


def test_each_handshake_gives_fresh_keys() -> None:
    a, b = make_pair()
    first, _ = full_handshake(a, b)
    second, _ = full_handshake(a, b, wall=WALL + 1, now=NOW + 1)
    assert first.send_key != second.send_key


def test_randomness_is_injectable() -> None:
    a, _ = make_pair()
    one = create_initiation(a.identity, a.peer, 1, WALL, random.Random(7).randbytes)
    two = create_initiation(a.identity, a.peer, 1, WALL, random.Random(7).randbytes)
    three = create_initiation(a.identity, a.peer, 1, WALL, random.Random(8).randbytes)
    assert one == two
    assert one.ephemeral != three.ephemeral


# --- refusals ------------------------------------------------------------------------------------


def test_preshared_key_mismatch_fails_at_the_response() -> None:
    rng = random.Random(3)
    a, b = make_pair(PresharedKey.generate(rng.randbytes), PresharedKey.generate(rng.randbytes))
    receive_initiation(b, initiation_bytes(a))  # message 1 does not involve the PSK
    before = snapshot(a.peer)
    with pytest.raises(HandshakeError, match="did not authenticate"):
        receive_response(a, response_bytes(b))
    assert snapshot(a.peer) == before


def test_preshared_key_on_one_side_only_fails() -> None:
    a, b = make_pair(PresharedKey.generate(random.Random(4).randbytes), PresharedKey.zero())
    receive_initiation(b, initiation_bytes(a))
    with pytest.raises(HandshakeError):
        receive_response(a, response_bytes(b))


def test_every_byte_of_an_initiation_is_covered_by_mac1() -> None:
    a, b = make_pair()
    data = initiation_bytes(a)
    for index in range(132):  # everything before mac2, and mac1 itself
        assert not b.checker.check_mac1(flipped(data, index)), index
    for index in range(132, 148):  # mac2 is not covered by mac1 (see the cookie tests)
        assert b.checker.check_mac1(flipped(data, index)), index


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_initiation_tampered_under_a_valid_mac1_is_refused(mask: int) -> None:
    a, b = make_pair()
    data = initiation_bytes(a)
    before = snapshot(b.peer)
    for index in range(116):  # type, sender, ephemeral, encrypted static, encrypted timestamp
        if 4 <= index < 8:
            continue  # the sender index is not authenticated; see the next test
        tampered = a.generator.add_macs(flipped(data, index, mask), NOW)  # mac1 made valid
        assert b.checker.check_mac1(tampered)
        if index < 4:
            with pytest.raises(InvalidMessage):  # type and reserved bytes
                parse_message_untrusted(tampered)
            continue
        with pytest.raises(HandshakeError):
            receive_initiation(b, tampered)
        assert snapshot(b.peer) == before, index
    # The genuine message still goes through: the refusals were about the changed bytes.
    assert receive_initiation(b, data) is b.peer


def test_initiation_sender_index_is_only_routing_information() -> None:
    # Noise does not authenticate the sender index (only mac1 covers it, and anyone knowing the
    # responder's public key can compute mac1).  A changed index is accepted and merely names a
    # different return address, which the initiator would not recognise.
    a, b = make_pair()
    data = a.generator.add_macs(flipped(initiation_bytes(a, index=0x1111), 4, 0x01), NOW)
    assert receive_initiation(b, data).remote_index == 0x1110


def test_every_byte_of_a_response_is_covered_by_mac1() -> None:
    a, b = make_pair()
    receive_initiation(b, initiation_bytes(a))
    data = response_bytes(b)
    for index in range(76):
        assert not a.checker.check_mac1(flipped(data, index)), index


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_response_tampered_under_a_valid_mac1_is_refused(mask: int) -> None:
    a, b = make_pair()
    receive_initiation(b, initiation_bytes(a))
    data = response_bytes(b)
    before = snapshot(a.peer)
    for index in range(60):  # type, sender, receiver, ephemeral, encrypted nothing
        if 4 <= index < 8:
            continue  # the sender index is not authenticated either
        tampered = b.generator.add_macs(flipped(data, index, mask), NOW)
        assert a.checker.check_mac1(tampered)
        if index < 4:
            with pytest.raises(InvalidMessage):
                parse_message_untrusted(tampered)
            continue
        with pytest.raises(HandshakeError):
            receive_response(a, tampered)
        assert snapshot(a.peer) == before, index
    receive_response(a, data)
    assert a.peer.stage is HandshakeStage.RESPONSE_CONSUMED


def test_replayed_initiation_is_refused() -> None:
    a, b = make_pair()
    data = initiation_bytes(a, wall=WALL)
    receive_initiation(b, data, now=NOW)
    with pytest.raises(ReplayedHandshake):
        receive_initiation(b, data, now=NOW + 60)  # long after: not a flood, still a replay


def test_initiation_with_an_older_or_equal_timestamp_is_refused() -> None:
    a, b = make_pair()
    receive_initiation(b, initiation_bytes(a, wall=WALL), now=NOW)
    before = snapshot(b.peer)
    # Fresh ephemeral keys, but the timestamp is not newer: within one whitened 16.7 ms step,
    # or earlier.
    for wall in (WALL, WALL + 0.001, WALL - 10):
        with pytest.raises(ReplayedHandshake):
            receive_initiation(b, initiation_bytes(a, wall=wall), now=NOW + 60)
        assert snapshot(b.peer) == before
    receive_initiation(b, initiation_bytes(a, wall=WALL + 1), now=NOW + 60)


def test_initiation_flood_is_refused_then_accepted() -> None:
    a, b = make_pair()
    receive_initiation(b, initiation_bytes(a, wall=WALL), now=NOW)
    before = snapshot(b.peer)
    data = initiation_bytes(a, wall=WALL + 1)  # a genuinely newer initiation...
    with pytest.raises(HandshakeFlood):
        receive_initiation(b, data, now=NOW + 0.010)  # ...but only 10 ms later
    assert snapshot(b.peer) == before  # the refused one did not use up its timestamp
    receive_initiation(b, data, now=NOW + 0.025)
    assert b.peer.last_initiation_consumed_at == NOW + 0.025


def test_initiation_from_an_unknown_key_is_refused() -> None:
    _a, b = make_pair()
    stranger = Side(StaticIdentity(PrivateKey.generate()))
    stranger.know(b, PresharedKey.zero())
    with pytest.raises(UnknownPeer):
        receive_initiation(b, initiation_bytes(stranger))
    assert b.peer.stage is HandshakeStage.ZEROED


def test_initiation_for_another_responder_is_refused() -> None:
    a, _b = make_pair()
    c = Side(StaticIdentity(PrivateKey.generate()))
    c.know(a, PresharedKey.zero())
    message = create_initiation(a.identity, a.peer, 1, WALL)  # made for b's public key
    with pytest.raises(HandshakeError):
        consume_initiation_untrusted(c.identity, message, c.lookup, NOW)


@pytest.mark.parametrize("text", LOW_ORDER_POINTS)
def test_low_order_peer_never_gets_an_initiation(text: str) -> None:
    identity = StaticIdentity(PrivateKey.generate())
    peer = PeerHandshakeState(PublicKey.from_base64(text))
    for _ in range(2):  # the verdict is cached, and stays the same
        with pytest.raises(LowOrderKey):
            create_initiation(identity, peer, 1, WALL)
    assert peer.stage is HandshakeStage.ZEROED


def test_response_is_accepted_once() -> None:
    a, b = make_pair()
    receive_initiation(b, initiation_bytes(a))
    data = response_bytes(b)
    receive_response(a, data)
    with pytest.raises(HandshakeError, match="unexpected"):
        receive_response(a, data)
    begin_session(a.peer)
    with pytest.raises(HandshakeError, match="unexpected"):
        receive_response(a, data)


def test_response_without_an_initiation_is_refused() -> None:
    a, _b = make_pair()
    other_a, other_b = make_pair(seed=2)
    receive_initiation(other_b, initiation_bytes(other_a))
    message = parse_message_untrusted(response_bytes(other_b))
    assert isinstance(message, HandshakeResponse)
    with pytest.raises(HandshakeError, match="unexpected"):
        consume_response_untrusted(a.identity, a.peer, message)


def test_steps_out_of_order_are_refused() -> None:
    a, b = make_pair()
    with pytest.raises(HandshakeError, match="no initiation consumed"):
        create_response(b.peer, 1)
    with pytest.raises(HandshakeError, match="ZEROED"):
        begin_session(b.peer)
    create_initiation(a.identity, a.peer, 1, WALL)
    with pytest.raises(HandshakeError, match="INITIATION_CREATED"):
        begin_session(a.peer)
    with pytest.raises(HandshakeError, match="no initiation consumed"):
        create_response(a.peer, 2)


def test_new_initiation_replaces_the_one_in_flight() -> None:
    a, b = make_pair()
    stale = initiation_bytes(a, index=1, wall=WALL)
    fresh = initiation_bytes(a, index=2, wall=WALL + 1)
    assert a.peer.local_index == 2
    receive_initiation(b, stale, now=NOW)
    response_to_stale = response_bytes(b)
    with pytest.raises(HandshakeError):  # answers an initiation a no longer waits for
        receive_response(a, response_to_stale)
    receive_initiation(b, fresh, now=NOW + 1)
    receive_response(a, response_bytes(b))
    assert begin_session(a.peer).send_key == begin_session(b.peer).receive_key


def test_changing_our_private_key_recomputes_the_static_secret() -> None:
    a, b = make_pair()
    full_handshake(a, b)
    # a gets a new key; b is reconfigured with it; a keeps its peer state for b.
    a.identity = StaticIdentity(PrivateKey.generate())
    a.checker = CookieChecker(a.identity.public_key)
    b.know(a, b.peer.preshared_key)
    keys_a, keys_b = full_handshake(a, b, wall=WALL + 1, now=NOW + 1)
    assert keys_a.send_key == keys_b.receive_key


def test_identity_refuses_the_zero_key_and_hides_the_private_one() -> None:
    from minivpn.wireguard.errors import InvalidKey

    with pytest.raises(InvalidKey):
        StaticIdentity(PrivateKey(bytes(32)))
    identity = StaticIdentity(PrivateKey.generate())
    assert identity.private_key.to_base64() not in repr(identity)
    a, _ = make_pair()
    create_initiation(a.identity, a.peer, 1, WALL)
    assert a.peer.chaining_key.hex() not in repr(a.peer)
