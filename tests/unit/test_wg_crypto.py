"""Tests for minivpn.wireguard.crypto and minivpn.wireguard.tai64n, against published vectors."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivpn.wireguard.crypto import (
    TransportCipher,
    aead_decrypt,
    aead_encrypt,
    blake2s_hash,
    blake2s_mac,
    dh,
    hmac_blake2s,
    kdf1,
    kdf2,
    kdf3,
    nonce,
    xaead_decrypt,
    xaead_encrypt,
)
from minivpn.wireguard.errors import DecryptionError, InvalidMessage, LowOrderKey
from minivpn.wireguard.keys import PrivateKey, PublicKey
from minivpn.wireguard.tai64n import (
    WHITENER_MASK,
    ZERO_TIMESTAMP,
    is_after,
    tai64n,
    tai64n_from_ns,
    to_unix,
)

# --- BLAKE2s, HMAC, KDF ----------------------------------------------------------------------


def test_hash_is_blake2s_256() -> None:
    # RFC 7693, appendix B.
    assert blake2s_hash(b"abc").hex() == (
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )
    assert blake2s_hash(b"a", b"", b"bc") == blake2s_hash(b"abc")


def test_hmac_is_rfc2104_over_blake2s() -> None:
    # Spelled out from RFC 2104 with BLAKE2s's 64-byte block, independently of the hmac module.
    key, message = b"k" * 40, b"the message"
    padded = key.ljust(64, b"\0")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in padded) + message).digest()
    outer = hashlib.blake2s(bytes(b ^ 0x5C for b in padded) + inner).digest()
    assert hmac_blake2s(key, message) == outer


def test_mac_is_keyed_blake2s_with_a_16_byte_digest() -> None:
    mac = blake2s_mac(b"key", b"data")
    assert len(mac) == 16
    # The digest size is a BLAKE2 parameter: a truncated 32-byte MAC would be a different value.
    assert mac != hashlib.blake2s(b"data", key=b"key").digest()[:16]


# wireguard-go device/kdf_test.go: (key, input, t0, t1, t2), all hex.
KDF_VECTORS = [
    (
        "746573742d6b6579",
        "746573742d696e707574",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        "776972656775617264",
        "776972656775617264",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
]


@pytest.mark.parametrize(("key", "data", "t0", "t1", "t2"), KDF_VECTORS)
def test_kdf_vectors_from_wireguard_go(key: str, data: str, t0: str, t1: str, t2: str) -> None:
    k, x = bytes.fromhex(key), bytes.fromhex(data)
    assert [t.hex() for t in kdf3(k, x)] == [t0, t1, t2]
    assert [t.hex() for t in kdf2(k, x)] == [t0, t1]
    assert kdf1(k, x).hex() == t0


# --- ChaCha20-Poly1305 ---------------------------------------------------------------------------

# RFC 8439, appendix A.5.  Its nonce, 00000000 0102030405060708, has WireGuard's shape: four zero
# bytes and a little-endian 64-bit counter, here 0x0807060504030201.
RFC8439_KEY = bytes.fromhex("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
RFC8439_COUNTER = 0x0807060504030201
RFC8439_AAD = bytes.fromhex("f33388860000000000004e91")
RFC8439_PLAINTEXT = bytes.fromhex(
    "496e7465726e65742d4472616674732061726520647261667420646f63756d65"
    "6e74732076616c696420666f722061206d6178696d756d206f6620736978206d"
    "6f6e74687320616e64206d617920626520757064617465642c207265706c6163"
    "65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65"
    "6e747320617420616e792074696d652e20497420697320696e617070726f7072"
    "6961746520746f2075736520496e7465726e65742d4472616674732061732072"
    "65666572656e6365206d6174657269616c206f7220746f206369746520746865"
    "6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67"
    "726573732e2fe2809d"
)
RFC8439_SEALED = bytes.fromhex(
    "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2"
    "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf"
    "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
    "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4"
    "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
    "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
    "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10"
    "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29"
    "a6ad5cb4022b02709b"
    "eead9d67890cbb22392336fea1851f38"  # the tag
)


def test_nonce_layout() -> None:
    assert nonce(RFC8439_COUNTER) == bytes.fromhex("000000000102030405060708")
    assert nonce(0) == bytes(12)
    assert nonce(2**64 - 1) == bytes(4) + b"\xff" * 8


def test_aead_matches_rfc8439() -> None:
    sealed = aead_encrypt(RFC8439_KEY, RFC8439_COUNTER, RFC8439_PLAINTEXT, RFC8439_AAD)
    assert sealed == RFC8439_SEALED
    assert aead_decrypt(RFC8439_KEY, RFC8439_COUNTER, sealed, RFC8439_AAD) == RFC8439_PLAINTEXT


@pytest.mark.parametrize("change", ["counter", "aad", "ciphertext", "tag", "truncate"])
def test_aead_refuses_anything_changed(change: str) -> None:
    counter, aad, sealed = RFC8439_COUNTER, RFC8439_AAD, bytearray(RFC8439_SEALED)
    if change == "counter":
        counter += 1
    elif change == "aad":
        aad = aad[:-1] + b"\x00"
    elif change == "ciphertext":
        sealed[0] ^= 1
    elif change == "tag":
        sealed[-1] ^= 0x80
    else:
        sealed = sealed[:10]
    with pytest.raises(DecryptionError):
        aead_decrypt(RFC8439_KEY, counter, bytes(sealed), aad)


def test_transport_cipher_round_trip_and_in_place_variants() -> None:
    key = bytes(range(32))
    sender, receiver = TransportCipher(key), TransportCipher(key)
    packet = bytes(range(256)) * 5
    sealed = sender.seal(7, packet)
    assert len(sealed) == len(packet) + 16
    assert sealed == aead_encrypt(key, 7, packet, b"")  # transport data has no associated data
    assert receiver.open(7, sealed) == packet

    datagram = bytearray(16 + len(sealed))
    view = memoryview(datagram)
    assert sender.seal_into(7, packet, view[16:]) == len(sealed)
    assert bytes(view[16:]) == sealed
    plaintext = bytearray(len(packet))
    assert receiver.open_into(7, view[16:], plaintext) == len(packet)
    assert plaintext == packet


def test_transport_cipher_keepalive() -> None:
    cipher = TransportCipher(bytes(32))
    assert cipher.open(0, cipher.seal(0, b"")) == b""


@pytest.mark.parametrize("size", [0, 1, 15])
def test_transport_cipher_refuses_short_ciphertexts(size: int) -> None:
    cipher = TransportCipher(bytes(32))
    with pytest.raises(DecryptionError):
        cipher.open(0, bytes(size))
    with pytest.raises(DecryptionError):
        cipher.open_into(0, bytes(size), bytearray(0))


def test_transport_cipher_refuses_wrong_counter_or_key() -> None:
    sealed = TransportCipher(bytes(32)).seal(1, b"payload")
    with pytest.raises(DecryptionError):
        TransportCipher(bytes(32)).open(2, sealed)
    with pytest.raises(DecryptionError):
        TransportCipher(b"\x01" * 32).open(1, sealed)
    assert issubclass(DecryptionError, InvalidMessage)


def test_transport_cipher_repr_is_redacted() -> None:
    assert "redacted" in repr(TransportCipher(bytes(range(32))))


# --- XChaCha20-Poly1305 --------------------------------------------------------------------------


def test_xaead_matches_draft_irtf_cfrg_xchacha() -> None:
    # draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    key = bytes(range(0x80, 0xA0))
    nonce24 = bytes(range(0x40, 0x58))
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
        b"future, sunscreen would be it."
    )
    expected = bytes.fromhex(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49"
    )
    assert xaead_encrypt(key, nonce24, plaintext, aad) == expected
    assert xaead_decrypt(key, nonce24, expected, aad) == plaintext
    with pytest.raises(DecryptionError):
        xaead_decrypt(key, nonce24, expected, aad + b"x")
    with pytest.raises(DecryptionError):
        xaead_decrypt(key, nonce24, expected[:-1] + b"\x00", aad)


# --- X25519 --------------------------------------------------------------------------------------


def test_dh_matches_rfc7748() -> None:
    # RFC 7748, section 6.1.
    alice = PrivateKey.from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = PrivateKey.from_hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert alice.public_key().to_hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert bob.public_key().to_hex() == (
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert dh(alice, bob.public_key()).hex() == shared
    assert dh(bob, alice.public_key()).hex() == shared


def test_dh_with_a_low_order_point_raises() -> None:
    with pytest.raises(LowOrderKey):
        dh(PrivateKey.generate(), PublicKey(bytes(32)))


# --- TAI64N --------------------------------------------------------------------------------------

NS = 1_000_000_000


def test_tai64n_of_the_epoch() -> None:
    # TAI64 labels 1970-01-01 00:00:00 UTC as 2**62 + 10 (TAI was 10 s ahead of UTC then).
    assert tai64n(0.0) == bytes.fromhex("400000000000000a00000000")
    assert tai64n_from_ns(0) == tai64n(0.0)


def test_tai64n_layout() -> None:
    label = tai64n_from_ns(1_700_000_000 * NS + 0x3B9AC9FF)  # nanoseconds 999999999
    assert len(label) == 12
    assert int.from_bytes(label[:8], "big") == 0x400000000000000A + 1_700_000_000
    assert int.from_bytes(label[8:], "big") == 0x3B9AC9FF & ~0xFFFFFF
    assert tai64n(1.5)[8:] == (500_000_000 & ~0xFFFFFF).to_bytes(4, "big")


# wireguard-go tai64n/tai64n_test.go TestMonotonic: whitening keeps timestamps 10 ms apart equal,
# while 20 ms apart they are ordered.
@pytest.mark.parametrize(
    ("delta_ns", "after"),
    [(10, False), (10_000, False), (1_000_000, False), (10_000_000, False), (20_000_000, True)],
)
def test_tai64n_whitening_resolution(delta_ns: int, after: bool) -> None:
    start = 123_456_789
    assert is_after(tai64n_from_ns(start + delta_ns), tai64n_from_ns(start)) is after


@given(st.integers(min_value=0, max_value=2**40 * NS))
def test_tai64n_low_24_bits_of_nanoseconds_are_cleared(unix_ns: int) -> None:
    nanoseconds = int.from_bytes(tai64n_from_ns(unix_ns)[8:], "big")
    assert nanoseconds & WHITENER_MASK == 0
    assert nanoseconds < NS


@given(
    st.integers(min_value=0, max_value=2**40 * NS),
    st.integers(min_value=0, max_value=10 * NS),
)
def test_tai64n_byte_order_is_time_order(earlier: int, delta: int) -> None:
    first, second = tai64n_from_ns(earlier), tai64n_from_ns(earlier + delta)
    assert not is_after(first, second)  # never goes backwards
    if delta > WHITENER_MASK:  # more than the whitened resolution: strictly later
        assert is_after(second, first)
    assert is_after(first, ZERO_TIMESTAMP)


@given(st.floats(min_value=0, max_value=2**34, allow_nan=False))
def test_tai64n_from_float_round_trips_to_the_resolution(unix_time: float) -> None:
    label = tai64n(unix_time)
    assert int.from_bytes(label[8:], "big") < NS
    # Whitening and flooring only ever move the label back in time, by less than 17 ms.
    assert unix_time - 0.02 <= to_unix(label) <= unix_time + 1e-6
