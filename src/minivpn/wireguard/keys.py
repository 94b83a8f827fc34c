"""WireGuard keys: Curve25519 private and public keys, and the optional preshared key.

Every WireGuard key is 32 bytes.  People and ``wg(8)`` write them in standard base64 (44
characters ending in one ``=``: ``wg genkey``, ``wg pubkey``, config files); the userspace
configuration protocol (UAPI) writes them in lowercase hex (64 characters).  Both encodings are
accepted and produced here, strictly: a key that does not decode to exactly 32 bytes, or whose
base64 is not the canonical encoding, raises :class:`~minivpn.wireguard.errors.InvalidKey`.

Three details follow wireguard-go exactly, because ``wg`` users can see them:

* **Clamping.**  An X25519 private key is a scalar whose three low bits are cleared and whose top
  bit is 0 and next bit 1 (``k[0] &= 248; k[31] = (k[31] & 127) | 64``).  X25519 clamps
  internally anyway, so this never changes the public key, but wireguard-go stores the clamped
  form and ``wg show`` echoes it.  :class:`PrivateKey` therefore clamps whatever it is built from.
* **All zeros means "no key".**  An all-zero private key (``private_key=000...`` over UAPI) is
  wireguard-go's way of saying "unset"; it is kept unclamped so that it reads back as zeros.
  Likewise an all-zero :class:`PresharedKey` means "no preshared key" (the handshake then mixes in
  32 zero bytes, which is exactly what the protocol specifies).
* **Low-order public keys.**  Seven encodings of Curve25519 points have an order dividing 8: a
  Diffie-Hellman exchange with them yields 32 zero bytes whatever our private key is.  WireGuard
  accepts such keys in its configuration but never sends anything to such a peer
  (:meth:`PublicKey.is_low_order`, :meth:`PrivateKey.exchange`).

Secret keys never show their value in ``repr()`` and compare in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from typing import TYPE_CHECKING, ClassVar, Self

import attrs
import nacl.bindings
import nacl.exceptions

from minivpn.wireguard.errors import InvalidKey, LowOrderKey

if TYPE_CHECKING:
    from collections.abc import Callable

#: Size in bytes of every WireGuard key.
KEY_SIZE = 32

_ZERO_KEY = bytes(KEY_SIZE)
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
#: A run that may be a key (base64 or hex): never repeated in a message, never resolved.
_KEY_LIKE = re.compile(r"[A-Za-z0-9+/]{40,}")


def looks_like_key(text: str) -> bool:
    """Whether *text* holds a run of 40 or more base64 or hex characters, as a key does."""
    return _KEY_LIKE.search(text) is not None


def redacted(text: str) -> str:
    """*text* quoted for an error message, unless it might hold a key (then only its length).

    For every value from a user or a peer that ends up in a message: a key pasted into the
    wrong field (an ``Endpoint``, say) must not reach a log or a terminal.
    """
    if looks_like_key(text):
        return f"<{len(text)} characters, not shown: they look like a key>"
    return repr(text)


# --- text encodings shared by the three key types -------------------------------------------------


def _check_key_bytes(value: bytes, what: str) -> bytes:
    """Return ``value`` as :class:`bytes` if it is exactly 32 bytes long, else raise InvalidKey."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidKey(f"{what} must be 32 bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) != KEY_SIZE:
        raise InvalidKey(f"{what} must be 32 bytes, got {len(value)}")
    return value


def _decode_base64(text: str, what: str) -> bytes:
    """Decode the canonical base64 of a 32-byte key, as ``wg`` writes it.

    The error message never contains ``text`` itself: it may be a private key.
    """
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(
            f"{what} must be 32 bytes of base64 (44 characters ending in '='), "
            f"got {len(text)} characters that are not valid base64"
        ) from None
    # b64decode accepts a few non-canonical spellings (stray bits in the last character); wg does
    # not, so neither do we: the text must be exactly what encoding the bytes gives back.
    if len(raw) != KEY_SIZE or base64.b64encode(raw).decode("ascii") != text:
        raise InvalidKey(
            f"{what} must be 32 bytes of base64 (44 characters ending in '='), "
            f"got {len(text)} characters decoding to {len(raw)} bytes"
        )
    return raw


def _decode_hex(text: str, what: str) -> bytes:
    """Decode the 64 hex digits of a 32-byte key, as UAPI writes it."""
    text = text.strip()
    if _HEX_KEY.fullmatch(text) is None:
        raise InvalidKey(f"{what} must be 64 hexadecimal digits, got {len(text)} characters")
    return bytes.fromhex(text)


def _clamp(raw: bytes) -> bytes:
    """Clamp an X25519 scalar the way wireguard-go does; all zeros ("no key") stays all zeros."""
    if raw == _ZERO_KEY:
        return raw
    clamped = bytearray(raw)
    clamped[0] &= 248
    clamped[31] = (clamped[31] & 127) | 64
    return bytes(clamped)


def _clamped_private_bytes(value: bytes) -> bytes:
    return _clamp(_check_key_bytes(value, "private key"))


def _public_bytes(value: bytes) -> bytes:
    return _check_key_bytes(value, "public key")


def _preshared_bytes(value: bytes) -> bytes:
    return _check_key_bytes(value, "preshared key")


def _x25519(scalar: bytes, point: bytes) -> bytes:
    """X25519 (libsodium, through PyNaCl): the shared secret of a scalar and a public key.

    libsodium, not ``cryptography``: the first X25519 call through ``cryptography`` loads its
    OpenSSL backend's Python modules, about 1 MiB resident in every running interface
    (docs/performance.md, "Memory of a running interface"), and libsodium is loaded anyway for
    XChaCha20-Poly1305.  libsodium clamps the scalar and ignores the point's top bit, as
    RFC 7748 says.

    Raises:
        ValueError: the result would be all zeros (``point`` is a low-order point).
    """
    try:
        return nacl.bindings.crypto_scalarmult(scalar, point)
    except nacl.exceptions.RuntimeError:  # libsodium refuses an all-zero shared secret
        raise ValueError("low-order point") from None


# A fixed scalar for the low-order test; any clamped scalar gives the same verdict.
_LOW_ORDER_PROBE = _clamp(bytes(range(1, 33)))


# --- public keys ----------------------------------------------------------------------------------


@attrs.frozen(repr=False)
class PublicKey:
    """A Curve25519 public key: a peer's identity.

    Public keys are not secret: they compare and hash as plain bytes, print in base64, and serve
    as dictionary keys for the peer table.

    Attributes:
        raw: the 32 key bytes.
    """

    raw: bytes = attrs.field(converter=_public_bytes)

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        """Parse a public key written as ``wg pubkey`` prints it.

        Raises:
            InvalidKey: ``text`` is not the canonical base64 of 32 bytes.
        """
        return cls(_decode_base64(text, "public key"))

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        """Parse a public key written as 64 hex digits (UAPI).

        Raises:
            InvalidKey: ``text`` is not 64 hexadecimal digits.
        """
        return cls(_decode_hex(text, "public key"))

    def to_base64(self) -> str:
        """Return the key as ``wg`` prints it (44 characters)."""
        return base64.b64encode(self.raw).decode("ascii")

    def to_hex(self) -> str:
        """Return the key as UAPI writes it (64 lowercase hex digits)."""
        return self.raw.hex()

    def is_low_order(self) -> bool:
        """Tell whether this is a low-order point, with which every DH result is all zeros.

        Every clamped scalar is a multiple of 8, so the result is the same for any private key;
        we try one fixed scalar.
        """
        try:
            _x25519(_LOW_ORDER_PROBE, self.raw)
        except ValueError:
            return True
        return False

    def __repr__(self) -> str:
        return f"PublicKey({self.to_base64()})"


# --- what the two secret keys share ---------------------------------------------------------------


class _SecretKey:
    """The part that :class:`PrivateKey` and :class:`PresharedKey` have in common.

    Both are 32 secret bytes that ``wg`` generates, prints and parses in the same ways, where all
    zeros means "no key", and which must compare in constant time.  Writing that once here keeps
    each subclass down to what really differs: how its bytes are checked (a private key is
    clamped), its ``repr()``, and, for a private key, the public key and Diffie-Hellman.

    A subclass is an attrs class with a ``raw`` field, and sets ``_KIND`` to the words that
    name it in error messages ("private key", "preshared key").
    """

    # No attributes of its own, so that the slotted attrs subclasses still have no __dict__.
    __slots__ = ()

    _KIND: ClassVar[str]
    raw: bytes

    if TYPE_CHECKING:
        # attrs writes each subclass's __init__; this line only tells mypy that cls(raw) works.
        def __init__(self, raw: bytes) -> None: ...

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> Self:
        """Create a new random key, like ``wg genkey`` (private) or ``wg genpsk`` (preshared).

        Args:
            rng: source of random bytes; tests may pass a deterministic one.
        """
        return cls(rng(KEY_SIZE))

    @classmethod
    def from_base64(cls, text: str) -> Self:
        """Parse a key written as ``wg genkey``/``wg genpsk`` prints it; a private key is clamped.

        Raises:
            InvalidKey: ``text`` is not the canonical base64 of 32 bytes.
        """
        return cls(_decode_base64(text, cls._KIND))

    @classmethod
    def from_hex(cls, text: str) -> Self:
        """Parse a key written as 64 hex digits (UAPI); a private key is clamped.

        Raises:
            InvalidKey: ``text`` is not 64 hexadecimal digits.
        """
        return cls(_decode_hex(text, cls._KIND))

    def to_base64(self) -> str:
        """Return the key in base64, as ``wg showconf`` prints it.  It is a secret."""
        return base64.b64encode(self.raw).decode("ascii")

    def to_hex(self) -> str:
        """Return the key as UAPI writes it (64 lowercase hex digits).  It is a secret."""
        return self.raw.hex()

    def is_zero(self) -> bool:
        """Tell whether this is the all-zero key that means "no private key"/"no preshared key"."""
        return hmac.compare_digest(self.raw, _ZERO_KEY)

    def __eq__(self, other: object) -> bool:
        # Only keys of the same kind compare: a private key never equals a preshared key, even
        # with the same bytes.  compare_digest takes as long wherever the bytes differ.
        if not isinstance(other, type(self)):
            return NotImplemented
        return hmac.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash((type(self), self.raw))


# --- private keys ---------------------------------------------------------------------------------


@attrs.frozen(eq=False, repr=False)
class PrivateKey(_SecretKey):
    """A Curve25519 private key, clamped on construction (except all zeros, meaning "unset").

    :meth:`generate` makes one like ``wg genkey``; :meth:`from_base64` and :meth:`from_hex`
    parse one and clamp it.  ``repr()`` shows the matching public key, never the private one.
    Equality is constant-time.

    Attributes:
        raw: the 32 (clamped) key bytes.  Treat them as a secret.
    """

    _KIND: ClassVar[str] = "private key"

    raw: bytes = attrs.field(converter=_clamped_private_bytes)
    _public: PublicKey = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        public = nacl.bindings.crypto_scalarmult_base(self.raw)
        object.__setattr__(self, "_public", PublicKey(public))

    def public_key(self) -> PublicKey:
        """Return the matching public key, as ``wg pubkey`` computes it."""
        return self._public

    def exchange(self, peer: PublicKey) -> bytes:
        """X25519 Diffie-Hellman: the 32-byte shared secret of this key and ``peer``.

        Raises:
            LowOrderKey: ``peer`` is a low-order point (the result would be all zeros).
        """
        try:
            return _x25519(self.raw, peer.raw)
        except ValueError:
            raise LowOrderKey(f"{peer} is a low-order point; it can never be used") from None

    def __repr__(self) -> str:
        if self.is_zero():
            return "PrivateKey(<zero: no key>)"
        return f"PrivateKey(<redacted>, public={self._public.to_base64()})"


# --- preshared keys -------------------------------------------------------------------------------


@attrs.frozen(eq=False, repr=False)
class PresharedKey(_SecretKey):
    """An optional symmetric key mixed into the handshake (post-quantum "insurance").

    All zeros means "none"; that is also the value the protocol mixes in when there is none.
    :meth:`generate` makes one like ``wg genpsk``; :meth:`from_base64` and :meth:`from_hex`
    parse one.  ``repr()`` never shows the key.  Equality is constant-time.

    Attributes:
        raw: the 32 key bytes.  Treat them as a secret.
    """

    _KIND: ClassVar[str] = "preshared key"

    raw: bytes = attrs.field(converter=_preshared_bytes)

    @classmethod
    def zero(cls) -> PresharedKey:
        """The all-zero key, meaning "no preshared key"."""
        return cls(_ZERO_KEY)

    def __repr__(self) -> str:
        return "PresharedKey(<zero: none>)" if self.is_zero() else "PresharedKey(<redacted>)"
