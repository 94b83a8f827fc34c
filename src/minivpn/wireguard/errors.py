"""Errors of the WireGuard protocol core.

The sans-IO core never lets a low-level exception (``struct.error``, ``ValueError``,
``cryptography.exceptions.InvalidTag`` ...) escape: every failure becomes one of the classes below.
They split along the line that matters to the caller:

* :class:`InvalidKey`: text a *user* gave us (a config file, ``wg``) is not a key.  The message
  says what is wrong, but never repeats the text, since it may be a private key.
* :class:`InvalidMessage`: bytes from the *network* are malformed or do not authenticate.  The
  right reaction is almost always to drop the datagram silently, as WireGuard does.
* :class:`HandshakeError`: a well-formed handshake message was refused (unknown peer, replay,
  flood, a peer key that is a low-order point...), or a handshake step was asked for in the wrong
  state.  Subclasses name the reasons that callers (and tests) want to tell apart.

``ConfigError`` (for configuration as a whole) is defined next to the configuration model in
:mod:`minivpn.wireguard.config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minivpn.errors import MinivpnError

if TYPE_CHECKING:
    from minivpn.wireguard.keys import PublicKey


class WireGuardError(MinivpnError):
    """Base class of every error raised by :mod:`minivpn.wireguard`."""


class InvalidKey(WireGuardError):
    """A key given as text (base64 or hex) is not 32 bytes in the expected encoding."""


class InvalidMessage(WireGuardError):
    """Bytes received from the network are not a valid WireGuard message."""


class DecryptionError(InvalidMessage):
    """An AEAD ciphertext did not authenticate (wrong key, wrong counter, or tampered bytes)."""


class HandshakeError(WireGuardError):
    """A handshake message was refused, or a handshake step is not possible now."""


class UnknownPeer(HandshakeError):
    """An initiation authenticated a static public key that is not one of our peers.

    Attributes:
        public_key: that key, or None.  Only
            the sender's knowledge of *our* public key is proven at this point, not its
            possession of this key's private half: it is the key the sender claims.
    """

    def __init__(self, message: str, public_key: PublicKey | None = None) -> None:
        super().__init__(message)
        self.public_key = public_key


class ReplayedHandshake(HandshakeError):
    """An initiation's timestamp is not newer than the last one accepted from that peer."""


class HandshakeFlood(HandshakeError):
    """An initiation came less than 1/50 s after the previous one accepted from that peer."""


class LowOrderKey(HandshakeError):
    """A public key is a low-order Curve25519 point: Diffie-Hellman with it yields all zeros.

    WireGuard accepts such keys in its configuration but never completes a handshake with them.
    """
