"""Tests for minivpn.wireguard.keys: encodings, clamping, low-order points, and `wg` interop."""

from __future__ import annotations

import base64
import contextlib
import random
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers.keys import LOW_ORDER_POINTS

from minivpn.wireguard.errors import InvalidKey, LowOrderKey, WireGuardError
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey

needs_wg = pytest.mark.skipif(
    shutil.which("wg") is None, reason="wg (wireguard-tools) not installed"
)

key_bytes = st.binary(min_size=32, max_size=32)


def wg(*args: str, stdin: str = "") -> str:
    result = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def is_clamped(raw: bytes) -> bool:
    return raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40 == 0x40


# --- interop with wireguard-tools -------------------------------------------------------------


@needs_wg
def test_public_key_matches_wg_pubkey() -> None:
    rng = random.Random(25519)
    for _ in range(8):
        private = PrivateKey.generate(rng.randbytes)
        assert private.public_key().to_base64() == wg("pubkey", stdin=private.to_base64() + "\n")


@needs_wg
def test_unclamped_key_gives_the_same_public_key_as_wg() -> None:
    # wg pubkey clamps internally; so must our X25519.  All bits set is as unclamped as it gets.
    text = base64.b64encode(b"\xff" * 32).decode()
    assert PrivateKey.from_base64(text).public_key().to_base64() == wg("pubkey", stdin=text)


@needs_wg
def test_wg_genkey_output_parses_and_round_trips() -> None:
    for _ in range(3):
        text = wg("genkey")
        private = PrivateKey.from_base64(text)
        assert private.to_base64() == text  # wg genkey already clamps: nothing changes
        assert private.public_key() == PublicKey.from_base64(wg("pubkey", stdin=text))


@needs_wg
def test_wg_genpsk_output_parses_and_round_trips() -> None:
    text = wg("genpsk")
    assert PresharedKey.from_base64(text).to_base64() == text


# --- clamping -----------------------------------------------------------------------------------


def test_clamping_as_seen_through_uapi() -> None:
    # The kernel's netns.sh sets a private key starting with '/' and expects '+' back: the low
    # three bits of the first byte are cleared.
    text = "/" + "A" * 42 + "="
    assert PrivateKey.from_base64(text).to_base64().startswith("+")


@given(key_bytes)
def test_private_keys_are_clamped_unless_zero(raw: bytes) -> None:
    key = PrivateKey(raw)
    if raw == bytes(32):
        assert key.raw == raw
        assert key.is_zero()
    else:
        assert is_clamped(key.raw)
        assert not key.is_zero()
        # Clamping only touches those bits.
        assert key.raw[1:31] == raw[1:31]
        assert key.raw[0] | 7 == raw[0] | 7


def test_zero_private_key_stays_unclamped_through_hex() -> None:
    key = PrivateKey.from_hex("00" * 32)
    assert key.is_zero()
    assert key.to_hex() == "00" * 32


def test_generated_keys_are_clamped_and_distinct() -> None:
    keys = {PrivateKey.generate() for _ in range(4)}
    assert len(keys) == 4
    assert all(is_clamped(key.raw) for key in keys)


# --- encodings ----------------------------------------------------------------------------------


@given(key_bytes)
def test_public_key_round_trips(raw: bytes) -> None:
    key = PublicKey(raw)
    assert PublicKey.from_base64(key.to_base64()) == key
    assert PublicKey.from_hex(key.to_hex()) == key
    assert len(key.to_base64()) == 44
    assert key.to_base64() == base64.b64encode(raw).decode()
    assert key.to_hex() == raw.hex()


@given(key_bytes)
def test_preshared_key_round_trips(raw: bytes) -> None:
    key = PresharedKey(raw)
    assert PresharedKey.from_base64(key.to_base64()) == key
    assert PresharedKey.from_hex(key.to_hex()) == key
    assert key.raw == raw


@given(key_bytes)
def test_private_key_round_trips_after_clamping(raw: bytes) -> None:
    key = PrivateKey(raw)
    assert PrivateKey.from_base64(key.to_base64()) == key
    assert PrivateKey.from_hex(key.to_hex()) == key


def test_hex_accepts_uppercase_and_surrounding_whitespace() -> None:
    raw = bytes(range(32))
    assert PublicKey.from_hex(raw.hex().upper() + "\n").raw == raw
    assert PublicKey.from_base64(" " + base64.b64encode(raw).decode() + "\n").raw == raw


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "A" * 43 + "=" + "A",  # too long
        "A" * 42 + "==",  # 31 bytes
        base64.b64encode(bytes(33)).decode(),  # 33 bytes
        "A" * 43 + "!",  # not base64
        "A" * 44,  # 33 bytes, no padding
        "A" * 42 + "B=",  # 32 bytes, but stray bits in the last character: not canonical
        "00" * 32,  # hex is not base64
    ],
)
def test_bad_base64_is_refused_with_invalid_key(text: str) -> None:
    for parse in (PublicKey.from_base64, PrivateKey.from_base64, PresharedKey.from_base64):
        with pytest.raises(InvalidKey, match="32 bytes of base64"):
            parse(text)


@pytest.mark.parametrize(
    "text",
    ["", "00" * 31, "00" * 33, "0g" + "00" * 31, "00 " * 32, "+" + "0" * 63, "0x" + "00" * 31],
)
def test_bad_hex_is_refused_with_invalid_key(text: str) -> None:
    for parse in (PublicKey.from_hex, PrivateKey.from_hex, PresharedKey.from_hex):
        with pytest.raises(InvalidKey, match="64 hexadecimal digits"):
            parse(text)


def test_error_messages_never_repeat_the_key_text() -> None:
    secret = base64.b64encode(bytes(range(31))).decode()  # 31 bytes: invalid
    with pytest.raises(InvalidKey) as caught:
        PrivateKey.from_base64(secret)
    assert secret not in str(caught.value)
    with pytest.raises(InvalidKey) as caught:
        PrivateKey.from_hex("ab" * 31)
    assert "ab" * 31 not in str(caught.value)


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_raw_constructors_check_the_length(size: int) -> None:
    for make in (PublicKey, PrivateKey, PresharedKey):
        with pytest.raises(InvalidKey):
            make(bytes(size))


@given(st.text(max_size=100))
def test_arbitrary_text_only_raises_invalid_key(text: str) -> None:
    for parse in (
        PublicKey.from_base64,
        PublicKey.from_hex,
        PrivateKey.from_base64,
        PrivateKey.from_hex,
        PresharedKey.from_base64,
        PresharedKey.from_hex,
    ):
        with contextlib.suppress(InvalidKey):
            parse(text)


def test_invalid_key_is_a_minivpn_error() -> None:
    from minivpn.errors import MinivpnError

    assert issubclass(InvalidKey, WireGuardError)
    assert issubclass(InvalidKey, MinivpnError)


# --- secrecy, equality, hashing ------------------------------------------------------------------


def test_repr_of_secrets_does_not_reveal_them() -> None:
    private = PrivateKey.generate()
    psk = PresharedKey.generate()
    for secret, text in ((private, repr(private)), (psk, repr(psk))):
        assert secret.to_base64() not in text
        assert secret.to_hex() not in text
        assert "redacted" in text
    # The private key's repr names it by its public key, which is not a secret.
    assert private.public_key().to_base64() in repr(private)
    assert "none" in repr(PresharedKey.zero())


def test_keys_compare_by_value_and_hash() -> None:
    raw = PrivateKey.generate().raw
    assert PrivateKey(raw) == PrivateKey(raw)
    assert hash(PrivateKey(raw)) == hash(PrivateKey(raw))
    assert PrivateKey(raw) != PrivateKey.generate()
    assert PresharedKey(raw) == PresharedKey(raw)
    assert PresharedKey(raw) != PresharedKey.zero()
    assert PresharedKey.zero().is_zero()
    # Different kinds of key never compare equal, even with the same bytes.
    assert PresharedKey(raw) != PrivateKey(raw)
    assert PublicKey(raw) != PresharedKey(raw)
    table = {PublicKey(raw): "peer"}
    assert table[PublicKey(bytes(raw))] == "peer"


# --- low-order points ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", LOW_ORDER_POINTS)
def test_low_order_points_are_accepted_but_recognised(text: str) -> None:
    key = PublicKey.from_base64(text)  # configuration accepts them
    assert key.is_low_order()
    with pytest.raises(LowOrderKey):
        PrivateKey.generate().exchange(key)


def test_ordinary_public_keys_are_not_low_order() -> None:
    for _ in range(8):
        assert not PrivateKey.generate().public_key().is_low_order()


def test_exchange_is_symmetric() -> None:
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    assert alice.exchange(bob.public_key()) == bob.exchange(alice.public_key())
