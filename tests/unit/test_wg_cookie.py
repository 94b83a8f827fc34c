"""Tests for minivpn.wireguard.cookie: mac1, mac2, cookie replies and secret rotation."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivpn.wireguard.constants import COOKIE_REFRESH_TIME
from minivpn.wireguard.cookie import (
    CookieChecker,
    CookieGenerator,
    cookie_source,
)
from minivpn.wireguard.errors import DecryptionError, HandshakeError
from minivpn.wireguard.keys import PrivateKey, PublicKey
from minivpn.wireguard.messages import (
    CookieReply,
    HandshakeInitiation,
    parse_message_untrusted,
)
from minivpn.wireguard.noise import PeerHandshakeState, StaticIdentity, create_initiation

NOW = 500.0
SOURCE = cookie_source("192.0.2.7", 51820)


def responder_key(seed: int = 1) -> PublicKey:
    return PrivateKey.generate(random.Random(seed).randbytes).public_key()


def an_initiation(responder: PublicKey, seed: int = 2) -> bytes:
    """A real initiation (with zero MACs) addressed to ``responder``."""
    rng = random.Random(seed)
    identity = StaticIdentity(PrivateKey.generate(rng.randbytes))
    message = create_initiation(identity, PeerHandshakeState(responder), 7, 1.7e9, rng.randbytes)
    return message.to_bytes()


def sender_of(message: bytes) -> int:
    parsed = parse_message_untrusted(message)
    assert isinstance(parsed, HandshakeInitiation)
    return parsed.sender


def get_cookie(
    checker: CookieChecker, generator: CookieGenerator, message: bytes, now: float = NOW
) -> None:
    """The exchange under load: refused message -> cookie reply -> generator stores the cookie."""
    sent = generator.add_macs(message, now)
    assert checker.check_mac1(sent)
    assert not checker.check_mac2(sent, SOURCE, now)
    reply = parse_message_untrusted(checker.create_reply(sent, sender_of(sent), SOURCE, now))
    assert isinstance(reply, CookieReply)
    assert reply.receiver == sender_of(sent)
    generator.consume_reply_untrusted(reply, now)


# --- mac1 ----------------------------------------------------------------------------------------


# Message shapes from wireguard-go's cookie_test.go: a MAC only needs 32 bytes to live in.
@given(st.binary(min_size=32, max_size=200))
def test_mac1_round_trip_on_any_message(message: bytes) -> None:
    key = responder_key()
    sent = CookieGenerator(key).add_macs(message, NOW)
    assert len(sent) == len(message)
    assert sent[:-32] == message[:-32]
    checker = CookieChecker(key)
    assert checker.check_mac1(sent)
    assert not checker.check_mac2(sent, SOURCE, NOW)  # no cookie was ever handed out
    assert sent[-16:] == bytes(16)  # no cookie, so no mac2


def test_mac1_is_bound_to_the_receiver_key() -> None:
    message = an_initiation(responder_key(1))
    sent = CookieGenerator(responder_key(1)).add_macs(message, NOW)
    assert not CookieChecker(responder_key(3)).check_mac1(sent)


def test_mac1_covers_everything_before_it() -> None:
    key = responder_key()
    sent = CookieGenerator(key).add_macs(an_initiation(key), NOW)
    checker = CookieChecker(key)
    for index in range(132):
        changed = bytearray(sent)
        changed[index] ^= 0x01
        assert not checker.check_mac1(bytes(changed)), index


def test_too_short_messages_fail_the_checks() -> None:
    checker = CookieChecker(responder_key())
    assert not checker.check_mac1(bytes(31))
    assert not checker.check_mac2(bytes(31), SOURCE, NOW)


# --- cookies and mac2 ----------------------------------------------------------------------------


def test_cookie_reply_round_trip_enables_mac2() -> None:
    key = responder_key()
    checker, generator = CookieChecker(key), CookieGenerator(key)
    message = an_initiation(key)
    get_cookie(checker, generator, message)
    assert generator.has_cookie(NOW + 1)
    retry = generator.add_macs(message, NOW + 1)
    assert retry[-16:] != bytes(16)
    assert checker.check_mac1(retry)
    assert checker.check_mac2(retry, SOURCE, NOW + 1)


def test_mac2_covers_mac1_and_itself() -> None:
    key = responder_key()
    checker, generator = CookieChecker(key), CookieGenerator(key)
    message = an_initiation(key)
    get_cookie(checker, generator, message)
    retry = generator.add_macs(message, NOW + 1)
    for index in range(148):
        changed = bytearray(retry)
        changed[index] ^= 0x80
        assert not checker.check_mac2(bytes(changed), SOURCE, NOW + 1), index


@pytest.mark.parametrize(
    ("host", "port"),
    [("192.0.2.7", 51821), ("192.0.2.8", 51820), ("fd00::7", 51820), ("203.0.113.7", 51820)],
)
def test_cookie_is_bound_to_the_source_address_and_port(host: str, port: int) -> None:
    key = responder_key()
    checker, generator = CookieChecker(key), CookieGenerator(key)
    message = an_initiation(key)
    get_cookie(checker, generator, message)
    retry = generator.add_macs(message, NOW + 1)
    assert checker.check_mac2(retry, SOURCE, NOW + 1)
    assert not checker.check_mac2(retry, cookie_source(host, port), NOW + 1)


def test_secret_rotation_invalidates_old_cookies() -> None:
    key = responder_key()
    checker, generator = CookieChecker(key), CookieGenerator(key)
    message = an_initiation(key)
    get_cookie(checker, generator, message, now=NOW)
    retry = generator.add_macs(message, NOW + 100)
    assert checker.check_mac2(retry, SOURCE, NOW + 100)
    # Past 120 s the secret has expired: nothing passes until a new one is made...
    assert not checker.check_mac2(retry, SOURCE, NOW + COOKIE_REFRESH_TIME + 1)
    # ...and the new secret (made for the next cookie reply) does not honour the old cookie.
    checker.create_reply(retry, 7, SOURCE, NOW + COOKIE_REFRESH_TIME + 1)
    assert not checker.check_mac2(retry, SOURCE, NOW + COOKIE_REFRESH_TIME + 2)


def test_secret_is_kept_while_fresh() -> None:
    key = responder_key()
    checker, generator = CookieChecker(key), CookieGenerator(key)
    message = an_initiation(key)
    get_cookie(checker, generator, message, now=NOW)
    retry = generator.add_macs(message, NOW + 60)
    checker.create_reply(retry, 7, SOURCE, NOW + 60)  # another reply must not rotate the secret
    assert checker.check_mac2(retry, SOURCE, NOW + 61)


def test_generator_stops_using_an_old_cookie() -> None:
    key = responder_key()
    checker, generator = CookieChecker(key), CookieGenerator(key)
    message = an_initiation(key)
    get_cookie(checker, generator, message, now=NOW)
    assert generator.has_cookie(NOW + COOKIE_REFRESH_TIME)
    late = NOW + COOKIE_REFRESH_TIME + 1
    assert not generator.has_cookie(late)
    assert generator.add_macs(message, late)[-16:] == bytes(16)


# --- cookie replies that must be refused ---------------------------------------------------------


def test_reply_without_a_message_sent_is_refused() -> None:
    key = responder_key()
    checker = CookieChecker(key)
    message = CookieGenerator(key).add_macs(an_initiation(key), NOW)
    reply = parse_message_untrusted(checker.create_reply(message, 7, SOURCE, NOW))
    assert isinstance(reply, CookieReply)
    with pytest.raises(HandshakeError, match="unexpected cookie reply"):
        CookieGenerator(key).consume_reply_untrusted(reply, NOW)


def test_reply_to_an_older_message_is_refused() -> None:
    key = responder_key()
    checker, generator = CookieChecker(key), CookieGenerator(key)
    first = generator.add_macs(an_initiation(key, seed=2), NOW)
    reply = parse_message_untrusted(checker.create_reply(first, 7, SOURCE, NOW))
    assert isinstance(reply, CookieReply)
    generator.add_macs(an_initiation(key, seed=3), NOW)  # a newer message: a new mac1
    with pytest.raises(DecryptionError):
        generator.consume_reply_untrusted(reply, NOW)
    assert not generator.has_cookie(NOW)


def test_reply_is_accepted_once() -> None:
    key = responder_key()
    checker, generator = CookieChecker(key), CookieGenerator(key)
    sent = generator.add_macs(an_initiation(key), NOW)
    reply = parse_message_untrusted(checker.create_reply(sent, 7, SOURCE, NOW))
    assert isinstance(reply, CookieReply)
    generator.consume_reply_untrusted(reply, NOW)
    with pytest.raises(HandshakeError):
        generator.consume_reply_untrusted(reply, NOW + 1)


def test_reply_from_another_responder_or_tampered_is_refused() -> None:
    key, other = responder_key(1), responder_key(3)
    generator = CookieGenerator(key)
    sent = generator.add_macs(an_initiation(key), NOW)
    forged = parse_message_untrusted(CookieChecker(other).create_reply(sent, 7, SOURCE, NOW))
    assert isinstance(forged, CookieReply)
    with pytest.raises(DecryptionError):
        generator.consume_reply_untrusted(forged, NOW)
    genuine = CookieChecker(key).create_reply(sent, 7, SOURCE, NOW)
    for index in range(8, 64):  # nonce and encrypted cookie
        changed = bytearray(genuine)
        changed[index] ^= 0x01
        reply = parse_message_untrusted(bytes(changed))
        assert isinstance(reply, CookieReply)
        with pytest.raises(DecryptionError):
            generator.consume_reply_untrusted(reply, NOW)
    assert not generator.has_cookie(NOW)


def test_replies_use_fresh_random_nonces() -> None:
    key = responder_key()
    checker = CookieChecker(key)
    sent = CookieGenerator(key).add_macs(an_initiation(key), NOW)
    one = checker.create_reply(sent, 7, SOURCE, NOW)
    two = checker.create_reply(sent, 7, SOURCE, NOW)
    assert one[8:32] != two[8:32]
    fixed = random.Random(9).randbytes
    assert len(checker.create_reply(sent, 7, SOURCE, NOW, fixed)) == 64


# --- source encoding ---------------------------------------------------------------------------


def test_cookie_source_is_ip_bytes_then_big_endian_port() -> None:
    assert cookie_source("192.0.2.1", 51820) == bytes([192, 0, 2, 1, 0xCA, 0x6C])
    encoded = cookie_source("fd00::1", 1)
    assert encoded == bytes.fromhex("fd00" + "00" * 13 + "01") + b"\x00\x01"
    assert cookie_source("fe80::1%eth0", 1) == cookie_source("fe80::1", 1)


def test_repr_hides_secrets() -> None:
    assert "redacted" in repr(CookieChecker(responder_key()))
    assert "redacted" in repr(CookieGenerator(responder_key()))


def test_add_macs_needs_room_for_the_macs() -> None:
    with pytest.raises(ValueError, match="too short"):
        CookieGenerator(responder_key()).add_macs(bytes(31), NOW)
