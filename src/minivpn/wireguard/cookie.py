"""mac1, mac2 and cookies: WireGuard's defence against handshake floods (paper, section 5.3).

A handshake costs the responder several Diffie-Hellman operations, so WireGuard makes sure it only
does that work for senders that (1) know its public key and, when it is busy, (2) can receive
packets at the address they claim.  The last 32 bytes of both handshake messages carry two MACs:

``mac1 = MAC(HASH("mac1----" || responder_public_key), message[:-32])``
    Anyone who knows the receiver's public key can compute it, and nobody else can.  Receivers
    check it first, always, and silently drop handshakes without a valid one: a scanner that does
    not know the key learns nothing, not even that WireGuard runs there.

``mac2 = MAC(cookie, message[:-16])``
    Only checked when the receiver is "under load".  The cookie is
    ``MAC(secret, sender_ip || sender_port)``, with a ``secret`` the responder regenerates every
    2 minutes.  A sender without a valid mac2 gets a *cookie reply* (message type 3) instead of a
    handshake: the cookie, encrypted with XChaCha20-Poly1305 under
    ``HASH("cookie--" || responder_public_key)``, with the mac1 of the refused message as
    associated data.  Only the real initiator knows which mac1 it sent, so only it accepts the
    reply; and only a sender that really receives packets at its address gets a cookie.  With
    the cookie it retries, now with a valid mac2, and the responder can rate-limit per address.

The responder side is :class:`CookieChecker` (one per device), the initiator side is
:class:`CookieGenerator` (one per peer).  The encoding of the sender's address in the cookie is
private to the responder; minivpn uses the IP address bytes followed by the big-endian UDP port,
as the Linux kernel does (:func:`cookie_source`).  wireguard-go appends a little-endian port; it
does not matter, since only the responder ever computes its own cookies.

Time is passed in (``now``: a monotonic clock in seconds); randomness can be injected for tests.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import TYPE_CHECKING

from minivpn.wireguard.constants import COOKIE_REFRESH_TIME
from minivpn.wireguard.crypto import (
    MAC_SIZE,
    XNONCE_SIZE,
    Buffer,
    blake2s_hash,
    blake2s_mac,
    xaead_decrypt,
    xaead_encrypt,
)
from minivpn.wireguard.errors import HandshakeError
from minivpn.wireguard.messages import MACS_SIZE, CookieReply

if TYPE_CHECKING:
    from collections.abc import Callable

    from minivpn.wireguard.keys import PublicKey

#: Label hashed with the receiver's public key to make the mac1 key.
LABEL_MAC1 = b"mac1----"
#: Label hashed with the responder's public key to make the cookie encryption key.
LABEL_COOKIE = b"cookie--"
#: Size of the random secret cookies are made from.
COOKIE_SECRET_SIZE = 32

_ZERO_MAC = bytes(MAC_SIZE)


def mac1_key(public_key: PublicKey) -> bytes:
    """The key of mac1 for messages sent to ``public_key``: ``HASH("mac1----" || key)``."""
    return blake2s_hash(LABEL_MAC1, public_key.raw)


def cookie_key(public_key: PublicKey) -> bytes:
    """The key that encrypts cookies from ``public_key``: ``HASH("cookie--" || key)``."""
    return blake2s_hash(LABEL_COOKIE, public_key.raw)


def compute_mac1(key: bytes, message: Buffer) -> bytes:
    """mac1 of a handshake message: the MAC of everything before the two MAC fields."""
    return blake2s_mac(key, memoryview(message)[:-MACS_SIZE])


def compute_mac2(cookie: bytes, message: Buffer) -> bytes:
    """mac2 of a handshake message: the MAC of everything before the mac2 field (mac1 included)."""
    return blake2s_mac(cookie, memoryview(message)[:-MAC_SIZE])


def cookie_source(host: str, port: int) -> bytes:
    """Encode a sender's address for the cookie: IP address bytes, then big-endian UDP port.

    Args:
        host: the sender's IPv4 or IPv6 address as text (an IPv6 scope id is ignored).
        port: the sender's UDP port.

    Raises:
        ValueError: ``host`` is not an IP address or ``port`` is not 0-65535 (a caller's bug:
            addresses come from the socket layer).
    """
    return ipaddress.ip_address(host).packed + port.to_bytes(2, "big")


class CookieChecker:
    """Responder side, one per device: checks mac1/mac2 and answers with cookie replies.

    Typical use on receipt of a handshake message from ``source``::

        if not checker.check_mac1(data):
            drop
        if under_load and not checker.check_mac2(data, source, now):
            send checker.create_reply(data, sender_index_of(data), source, now); drop
        process the handshake
    """

    def __init__(self, public_key: PublicKey) -> None:
        """Prepare to check messages sent to ``public_key`` (our own).

        Args:
            public_key: this device's static public key.  Build a new checker when it changes.
        """
        self._mac1_key = mac1_key(public_key)
        self._cookie_key = cookie_key(public_key)
        self._secret = bytes(COOKIE_SECRET_SIZE)
        self._secret_born: float | None = None

    def __repr__(self) -> str:
        return "CookieChecker(<redacted>)"

    def check_mac1(self, message: Buffer) -> bool:
        """Tell whether ``message`` (a whole handshake message) carries a valid mac1."""
        if len(message) < MACS_SIZE:
            return False
        expected = compute_mac1(self._mac1_key, message)
        mac1 = memoryview(message)[-MACS_SIZE:-MAC_SIZE]
        return hmac.compare_digest(expected, mac1)

    def _secret_is_fresh(self, now: float) -> bool:
        return self._secret_born is not None and now - self._secret_born <= COOKIE_REFRESH_TIME

    def check_mac2(self, message: Buffer, source: bytes, now: float) -> bool:
        """Tell whether ``message`` carries a mac2 made with a current cookie for ``source``.

        Args:
            message: the whole handshake message.
            source: the sender's address, encoded by :func:`cookie_source`.
            now: the current monotonic time in seconds.
        """
        if len(message) < MACS_SIZE or not self._secret_is_fresh(now):
            return False
        cookie = blake2s_mac(self._secret, source)
        expected = compute_mac2(cookie, message)
        return hmac.compare_digest(expected, memoryview(message)[-MAC_SIZE:])

    def create_reply(
        self,
        message: Buffer,
        receiver_index: int,
        source: bytes,
        now: float,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> bytes:
        """Build the cookie reply (message type 3) to a handshake message refused under load.

        Rotates the secret first if it is older than 2 minutes.

        Args:
            message: the refused handshake message (its mac1 becomes the associated data).
            receiver_index: the ``sender`` field of that message.
            source: the sender's address, encoded by :func:`cookie_source`.
            now: the current monotonic time in seconds.
            rng: source of random bytes (secret and nonce).

        Returns:
            The 64-byte cookie reply.
        """
        if not self._secret_is_fresh(now):
            self._secret = rng(COOKIE_SECRET_SIZE)
            self._secret_born = now
        cookie = blake2s_mac(self._secret, source)
        mac1 = memoryview(message)[-MACS_SIZE:-MAC_SIZE]
        nonce = rng(XNONCE_SIZE)
        encrypted = xaead_encrypt(self._cookie_key, nonce, cookie, mac1)
        return CookieReply(receiver_index, nonce, encrypted).to_bytes()


class CookieGenerator:
    """Initiator side, one per peer: fills in mac1/mac2 and accepts the peer's cookie replies."""

    def __init__(self, remote_public_key: PublicKey) -> None:
        """Prepare to send handshake messages to the peer ``remote_public_key``."""
        self._mac1_key = mac1_key(remote_public_key)
        self._cookie_key = cookie_key(remote_public_key)
        self._cookie = _ZERO_MAC
        self._cookie_born: float | None = None
        # The mac1 of the last handshake message we sent: a cookie reply must quote it.
        self._last_mac1: bytes | None = None

    def __repr__(self) -> str:
        return "CookieGenerator(<redacted>)"

    def has_cookie(self, now: float) -> bool:
        """Tell whether a cookie from the peer is recent enough to make mac2 with."""
        return self._cookie_born is not None and now - self._cookie_born <= COOKIE_REFRESH_TIME

    def add_macs(self, message: Buffer, now: float) -> bytes:
        """Return ``message`` with mac1, and mac2 if we hold a fresh cookie, filled in.

        Args:
            message: a whole handshake message (148 or 92 bytes); its MAC fields are overwritten.
            now: the current monotonic time in seconds.

        Raises:
            ValueError: ``message`` is shorter than the two MAC fields (a caller's bug).
        """
        if len(message) < MACS_SIZE:
            raise ValueError(f"{len(message)} bytes is too short to hold mac1 and mac2")
        body = bytes(memoryview(message)[:-MACS_SIZE])
        mac1 = blake2s_mac(self._mac1_key, body)
        self._last_mac1 = mac1
        mac2 = blake2s_mac(self._cookie, body + mac1) if self.has_cookie(now) else _ZERO_MAC
        return body + mac1 + mac2

    def consume_reply_untrusted(self, reply: CookieReply, now: float) -> None:
        """Decrypt and store the cookie in a reply from the peer.

        Following the kernel, a reply is accepted only once per mac1 sent, so a replayed reply
        changes nothing.

        Args:
            reply: the parsed cookie reply (its ``receiver`` index is the caller's to check).
            now: the current monotonic time in seconds.

        Raises:
            HandshakeError: we have sent no handshake message this reply could answer.
            DecryptionError: the reply does not decrypt with our last mac1 as associated data.
        """
        if self._last_mac1 is None:
            raise HandshakeError("unexpected cookie reply: no handshake message awaits one")
        self._cookie = xaead_decrypt(
            self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
        )
        self._cookie_born = now
        self._last_mac1 = None
