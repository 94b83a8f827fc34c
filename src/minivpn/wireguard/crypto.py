"""The cryptographic primitives of WireGuard, named as in the paper (section 5.4).

WireGuard fixes its algorithms; there is no negotiation.  With the paper's names:

==================  ===========================================================================
``HASH(x)``         BLAKE2s with a 32-byte digest: :func:`blake2s_hash`
``MAC(key, x)``     keyed BLAKE2s with a 16-byte digest: :func:`blake2s_mac`
``HMAC(key, x)``    HMAC over BLAKE2s (32 bytes): :func:`hmac_blake2s`
``KDFn(key, x)``    HKDF with HMAC-BLAKE2s, returning n 32-byte keys: :func:`kdf1`, :func:`kdf2`,
                    :func:`kdf3`
``AEAD(k, n, p, a)``  ChaCha20-Poly1305 with a 96-bit nonce of 32 zero bits followed by the
                    64-bit little-endian counter ``n``: :func:`aead_encrypt`,
                    :func:`aead_decrypt`, and for data packets :class:`TransportCipher`
``XAEAD(k, n, p, a)``  XChaCha20-Poly1305 with a random 192-bit nonce (cookie replies only):
                    :func:`xaead_encrypt`, :func:`xaead_decrypt`
``DH(priv, pub)``   X25519: :func:`dh`
==================  ===========================================================================

``cryptography`` (OpenSSL) provides ChaCha20-Poly1305, :mod:`hashlib` provides BLAKE2s.
``cryptography`` has no XChaCha20-Poly1305, so that one comes from libsodium through PyNaCl, and
so does X25519 (:mod:`minivpn.wireguard.keys` says why).

Data packets are the hot path: a transport key seals and opens millions of packets, so
:class:`TransportCipher` builds the ChaCha20-Poly1305 context once per key and offers ``*_into``
variants that write into a caller's buffer instead of allocating.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import TYPE_CHECKING

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from minivpn.wireguard.errors import DecryptionError

if TYPE_CHECKING:
    from minivpn.wireguard.keys import PrivateKey, PublicKey

#: Size of the Poly1305 authentication tag every AEAD ciphertext carries.
TAG_SIZE = 16
#: Size of a BLAKE2s-256 digest, a chaining key, an AEAD key.
HASH_SIZE = 32
#: Size of a MAC (mac1, mac2, a cookie).
MAC_SIZE = 16
#: Size of an XChaCha20-Poly1305 nonce.
XNONCE_SIZE = 24

#: Anything the AEAD functions accept as input.
Buffer = bytes | bytearray | memoryview

# 96-bit ChaCha20-Poly1305 nonce: 4 zero bytes, then the 64-bit counter, little-endian.
_NONCE = struct.Struct("<4xQ")


def blake2s_hash(*parts: Buffer) -> bytes:
    """``HASH(parts[0] || parts[1] || ...)``: BLAKE2s with a 32-byte digest."""
    digest = hashlib.blake2s()
    for part in parts:
        digest.update(part)
    return digest.digest()


def blake2s_mac(key: Buffer, data: Buffer) -> bytes:
    """``MAC(key, data)``: keyed BLAKE2s with a 16-byte digest (mac1, mac2, cookies)."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac_blake2s(key: Buffer, data: Buffer) -> bytes:
    """``HMAC(key, data)``: RFC 2104 HMAC over BLAKE2s-256."""
    return hmac.digest(key, data, hashlib.blake2s)


def _kdf(chaining_key: bytes, input_key_material: Buffer, count: int) -> list[bytes]:
    """HKDF (RFC 5869) with HMAC-BLAKE2s, the paper's ``KDFn``.

    ``t0 = HMAC(key, input)``, then ``t_i = HMAC(t0, t_{i-1} || i)`` for i = 1..count, with
    ``t_0`` for that purpose being empty.
    """
    pseudo_random_key = hmac_blake2s(chaining_key, input_key_material)
    outputs: list[bytes] = []
    previous = b""
    for index in range(1, count + 1):
        previous = hmac_blake2s(pseudo_random_key, previous + bytes((index,)))
        outputs.append(previous)
    return outputs


def kdf1(key: bytes, input_key_material: Buffer) -> bytes:
    """``KDF1(key, input)``: one 32-byte output."""
    return _kdf(key, input_key_material, 1)[0]


def kdf2(key: bytes, input_key_material: Buffer) -> tuple[bytes, bytes]:
    """``KDF2(key, input)``: two 32-byte outputs (the first equals ``KDF1``'s)."""
    first, second = _kdf(key, input_key_material, 2)
    return first, second


def kdf3(key: bytes, input_key_material: Buffer) -> tuple[bytes, bytes, bytes]:
    """``KDF3(key, input)``: three 32-byte outputs (the first two equal ``KDF2``'s)."""
    first, second, third = _kdf(key, input_key_material, 3)
    return first, second, third


def nonce(counter: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce for ``counter``: 4 zero bytes + u64 little-endian."""
    return _NONCE.pack(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: Buffer, associated_data: Buffer) -> bytes:
    """``AEAD(key, counter, plaintext, associated_data)``: ciphertext followed by a 16-byte tag.

    Builds a cipher context for one use; the handshake uses it this way (counter 0), data
    packets use :class:`TransportCipher`.
    """
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, associated_data)


def aead_decrypt(key: bytes, counter: int, ciphertext: Buffer, associated_data: Buffer) -> bytes:
    """Open an :func:`aead_encrypt` ciphertext.

    Raises:
        DecryptionError: the tag does not verify (or the ciphertext is shorter than a tag).
    """
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, associated_data)
    except InvalidTag:
        raise DecryptionError("AEAD ciphertext did not authenticate") from None


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: Buffer, associated_data: Buffer) -> bytes:
    """``XAEAD(key, nonce, plaintext, associated_data)``: XChaCha20-Poly1305 (libsodium)."""
    return bytes(
        nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            bytes(plaintext), bytes(associated_data), nonce24, key
        )
    )


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: Buffer, associated_data: Buffer) -> bytes:
    """Open an :func:`xaead_encrypt` ciphertext.

    Raises:
        DecryptionError: the tag does not verify.
    """
    try:
        return bytes(
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(ciphertext), bytes(associated_data), nonce24, key
            )
        )
    except nacl.exceptions.CryptoError:
        raise DecryptionError("XAEAD ciphertext did not authenticate") from None


def dh(private_key: PrivateKey, public_key: PublicKey) -> bytes:
    """``DH(private, public)``: the X25519 shared secret.

    Raises:
        LowOrderKey: ``public_key`` is a low-order point, so the secret would be all zeros.
    """
    return private_key.exchange(public_key)


class TransportCipher:
    """One direction of a session: ChaCha20-Poly1305 under one key, with counter nonces.

    Transport data messages carry no associated data; the nonce is the message counter.  The
    cipher context is built once; each call only packs the 12-byte nonce.  ``*_into`` methods
    write into a caller-supplied buffer (for example a slice of a preallocated datagram), so the
    send and receive loops need not allocate per packet.

    Never seal two messages with the same counter: the caller (the keypair) owns the counter.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        """Build the cipher context.

        Args:
            key: the 32-byte transport key from the handshake.
        """
        self._aead = ChaCha20Poly1305(key)

    def __repr__(self) -> str:
        return "TransportCipher(<redacted>)"

    def seal(self, counter: int, plaintext: Buffer) -> bytes:
        """Encrypt and authenticate ``plaintext``; returns ``len(plaintext) + 16`` bytes."""
        return self._aead.encrypt(_NONCE.pack(counter), plaintext, None)

    def seal_into(self, counter: int, plaintext: Buffer, out: bytearray | memoryview) -> int:
        """Like :meth:`seal`, writing into ``out``, which must be exactly ``len(plaintext) + 16``.

        Returns:
            The number of bytes written.
        """
        return self._aead.encrypt_into(_NONCE.pack(counter), plaintext, None, out)

    def open(self, counter: int, ciphertext: Buffer) -> bytes:
        """Verify and decrypt ``ciphertext`` sealed under ``counter``.

        Raises:
            DecryptionError: the tag does not verify (or there is no room for a tag).
        """
        try:
            return self._aead.decrypt(_NONCE.pack(counter), ciphertext, None)
        except InvalidTag:
            raise DecryptionError("transport packet did not authenticate") from None

    def open_into(self, counter: int, ciphertext: Buffer, out: bytearray | memoryview) -> int:
        """Like :meth:`open`, writing into ``out``, which must be exactly ``len(ciphertext) - 16``.

        Returns:
            The number of plaintext bytes written.

        Raises:
            DecryptionError: the tag does not verify, or ``ciphertext`` is shorter than a tag.
        """
        if len(ciphertext) < TAG_SIZE:
            raise DecryptionError("transport packet is shorter than an authentication tag")
        try:
            return self._aead.decrypt_into(_NONCE.pack(counter), ciphertext, None, out)
        except InvalidTag:
            raise DecryptionError("transport packet did not authenticate") from None
