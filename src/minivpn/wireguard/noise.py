"""The WireGuard handshake: Noise IKpsk2 over Curve25519, ChaCha20-Poly1305 and BLAKE2s.

Two messages establish a session (paper, section 5.4):

1. the **initiator** sends its ephemeral public key, its static public key encrypted, and an
   encrypted TAI64N timestamp (:func:`create_initiation`, :func:`consume_initiation_untrusted`);
2. the **responder** answers with its own ephemeral public key and an empty authenticated
   ciphertext that proves it derived the same keys (:func:`create_response`,
   :func:`consume_response_untrusted`).

Both sides then split the final chaining key into two transport keys (:func:`begin_session`).

Along the way each side keeps two running values:

* the **chaining key** ``C``, into which every Diffie-Hellman result and the preshared key are
  mixed with a KDF ("mix key");
* the **hash** ``H``, a transcript of everything sent, into which every public value and every
  ciphertext is hashed ("mix hash"), and which each AEAD authenticates as associated data.

The code below keeps each step next to the line of the paper it implements, in the shape of the
Noise specification's ``SymmetricState`` (``mix_hash``, ``mix_key``, ``encrypt_and_hash``...).

The functions are pure apart from the explicit state they are given: per peer a
:class:`PeerHandshakeState`, per device a :class:`StaticIdentity`.  There is no global clock:
wall-clock time (for the timestamp) and monotonic time (for the flood limit) are arguments, and
randomness (ephemeral keys) can be injected.  Index allocation, the mac1/mac2 fields
(:mod:`minivpn.wireguard.cookie`), keypair rotation and timers belong to the caller.

A consuming function either commits its result to the peer's state or raises a
:class:`~minivpn.wireguard.errors.HandshakeError` and changes nothing.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable

import attrs

from minivpn.wireguard.constants import HANDSHAKE_INITIATION_RATE
from minivpn.wireguard.crypto import (
    aead_decrypt,
    aead_encrypt,
    blake2s_hash,
    dh,
    kdf1,
    kdf2,
    kdf3,
)
from minivpn.wireguard.errors import (
    DecryptionError,
    HandshakeError,
    HandshakeFlood,
    InvalidKey,
    LowOrderKey,
    ReplayedHandshake,
    UnknownPeer,
)
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from minivpn.wireguard.messages import HandshakeInitiation, HandshakeResponse
from minivpn.wireguard.tai64n import ZERO_TIMESTAMP, is_after, tai64n

#: The Noise protocol name; its hash is the initial chaining key.
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
#: WireGuard's prologue, mixed into the initial hash.
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
#: ``C_i = HASH(CONSTRUCTION)``
INITIAL_CHAINING_KEY = blake2s_hash(CONSTRUCTION)
#: ``H_i = HASH(C_i || IDENTIFIER)``
INITIAL_HASH = blake2s_hash(INITIAL_CHAINING_KEY, IDENTIFIER)

Rng = Callable[[int], bytes]


@attrs.frozen(repr=False)
class StaticIdentity:
    """This device's long-term key pair.

    The mac1 and cookie keys derived from the public key live in
    :class:`~minivpn.wireguard.cookie.CookieChecker`, which is built from :attr:`public_key`.

    Attributes:
        private_key: our static private key (never the all-zero "no key").
        public_key: the matching public key, computed once.
    """

    private_key: PrivateKey
    public_key: PublicKey = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.private_key.is_zero():
            raise InvalidKey("the all-zero private key means 'no key' and cannot be an identity")
        object.__setattr__(self, "public_key", self.private_key.public_key())

    def __repr__(self) -> str:
        return f"StaticIdentity(public_key={self.public_key.to_base64()})"


class HandshakeStage(enum.Enum):
    """Where a peer's handshake stands (wireguard-go's ``handshakeState``)."""

    ZEROED = enum.auto()
    INITIATION_CREATED = enum.auto()  # we sent an initiation, waiting for the response
    INITIATION_CONSUMED = enum.auto()  # we accepted an initiation, about to respond
    RESPONSE_CREATED = enum.auto()  # we responded: keys can be derived (as responder)
    RESPONSE_CONSUMED = enum.auto()  # we accepted a response: keys can be derived (as initiator)


@attrs.define(eq=False, repr=False)
class PeerHandshakeState:
    """Everything the handshake remembers about one peer.

    Built with the peer's public key and preshared key; the rest is handshake bookkeeping that the
    functions of this module update.  The caller may read ``stage``, ``local_index`` and
    ``remote_index``, and may assign ``preshared_key`` when the configuration changes.  It
    compares and hashes by identity: one object per peer.

    Attributes:
        remote_static: the peer's static public key.
        preshared_key: the preshared key for this peer (all zeros when none).
        stage: where the handshake in progress stands.
        chaining_key: Noise ``C`` of the handshake in progress.
        transcript_hash: Noise ``H`` of the handshake in progress.
        local_ephemeral: our ephemeral key of the handshake in progress.
        remote_ephemeral: the peer's ephemeral key of the handshake in progress.
        local_index: the index we put in our handshake message (peers address us with it).
        remote_index: the index the peer put in its handshake message.
        last_timestamp: the newest initiation timestamp accepted from this peer (replay guard).
        last_initiation_consumed_at: monotonic time we last accepted an initiation (flood guard).
    """

    remote_static: PublicKey
    preshared_key: PresharedKey = attrs.field(factory=PresharedKey.zero)
    stage: HandshakeStage = HandshakeStage.ZEROED
    chaining_key: bytes = b""
    transcript_hash: bytes = b""
    local_ephemeral: PrivateKey | None = None
    remote_ephemeral: PublicKey | None = None
    local_index: int = 0
    remote_index: int = 0
    last_timestamp: bytes = ZERO_TIMESTAMP
    last_initiation_consumed_at: float | None = None
    # DH(S_local, S_remote) never changes for a given pair of keys, so it is computed once per
    # local identity (wireguard-go's precomputedStaticStatic); None there means "low order".
    _static_static_cache: tuple[PublicKey, bytes | None] | None = attrs.field(
        default=None, init=False
    )

    def static_static(self, identity: StaticIdentity) -> bytes:
        """``DH(S_local, S_remote)``, computed once per local identity.

        Raises:
            LowOrderKey: the peer's public key is a low-order point; no handshake is possible.
        """
        cache = self._static_static_cache
        if cache is None or cache[0] != identity.public_key:
            try:
                secret: bytes | None = identity.private_key.exchange(self.remote_static)
            except LowOrderKey:
                secret = None
            cache = self._static_static_cache = (identity.public_key, secret)
        if cache[1] is None:
            raise LowOrderKey(f"peer {self.remote_static} is a low-order point: never usable")
        return cache[1]

    def clear(self) -> None:
        """Forget the handshake in progress (but not the replay and flood guards)."""
        self.stage = HandshakeStage.ZEROED
        self.chaining_key = b""
        self.transcript_hash = b""
        self.local_ephemeral = None
        self.remote_ephemeral = None
        self.local_index = 0

    def __repr__(self) -> str:
        return (
            f"PeerHandshakeState(remote_static={self.remote_static}, stage={self.stage.name}, "
            f"local_index={self.local_index}, remote_index={self.remote_index})"
        )


@attrs.frozen(repr=False)
class SessionKeys:
    """The result of a completed handshake: one key per direction and the two indices.

    Attributes:
        send_key: key for the data we send (build a ``TransportCipher`` from it).
        receive_key: key for the data we receive.
        local_index: the index peers put in the ``receiver`` field of packets for this session.
        remote_index: the index we put in the ``receiver`` field of our packets.
        is_initiator: whether we sent the initiation of this handshake.
    """

    send_key: bytes
    receive_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return (
            f"SessionKeys(<redacted>, local_index={self.local_index}, "
            f"remote_index={self.remote_index}, {role})"
        )


@attrs.define
class _SymmetricState:
    """Noise's chaining key ``C`` and hash ``H``, with the operations that evolve them."""

    chaining_key: bytes
    hash: bytes

    @classmethod
    def initial(cls) -> _SymmetricState:
        return cls(INITIAL_CHAINING_KEY, INITIAL_HASH)

    def mix_hash(self, data: bytes) -> None:
        """``H = HASH(H || data)``"""
        self.hash = blake2s_hash(self.hash, data)

    def mix_key(self, input_key_material: bytes) -> None:
        """``C = KDF1(C, input)``"""
        self.chaining_key = kdf1(self.chaining_key, input_key_material)

    def mix_key_and_get_key(self, input_key_material: bytes) -> bytes:
        """``(C, k) = KDF2(C, input)``; returns ``k``."""
        self.chaining_key, key = kdf2(self.chaining_key, input_key_material)
        return key

    def mix_preshared_key(self, preshared_key: bytes) -> bytes:
        """``(C, tau, k) = KDF3(C, Q)``; ``H = HASH(H || tau)``; returns ``k``."""
        self.chaining_key, tau, key = kdf3(self.chaining_key, preshared_key)
        self.mix_hash(tau)
        return key

    def encrypt_and_hash(self, key: bytes, plaintext: bytes) -> bytes:
        """``c = AEAD(k, 0, plaintext, H)``; ``H = HASH(H || c)``; returns ``c``."""
        ciphertext = aead_encrypt(key, 0, plaintext, self.hash)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, key: bytes, ciphertext: bytes, what: str) -> bytes:
        """Inverse of :meth:`encrypt_and_hash`.

        Raises:
            HandshakeError: the ciphertext does not authenticate.
        """
        try:
            plaintext = aead_decrypt(key, 0, ciphertext, self.hash)
        except DecryptionError:
            raise HandshakeError(f"{what} did not authenticate") from None
        self.mix_hash(ciphertext)
        return plaintext


# --- message 1: initiator -> responder -----------------------------------------------------------


def create_initiation(
    identity: StaticIdentity,
    peer: PeerHandshakeState,
    sender_index: int,
    now_wall: float,
    rng: Rng = os.urandom,
) -> HandshakeInitiation:
    """Start a handshake with ``peer``: build message 1 and remember its state.

    The returned message has zero mac1/mac2; fill them with
    :meth:`~minivpn.wireguard.cookie.CookieGenerator.add_macs` on ``message.to_bytes()``.
    Any handshake in progress with this peer is replaced; if ``peer.local_index`` was set, the
    caller should retire that index from its index table.

    Args:
        identity: our static key pair.
        peer: the peer's handshake state; left in stage ``INITIATION_CREATED``.
        sender_index: a fresh random local index that identifies this handshake.
        now_wall: the wall-clock time (``time.time()``) to put in the timestamp.
        rng: source of random bytes for the ephemeral key.

    Raises:
        LowOrderKey: the peer's public key is a low-order point.
    """
    static_static = peer.static_static(identity)
    noise = _SymmetricState.initial()
    # H = HASH(H || S_r^pub)
    noise.mix_hash(peer.remote_static.raw)
    # E_i = DH-GENERATE();  C = KDF1(C, E_i^pub);  msg.ephemeral = E_i^pub;  H = HASH(H || E_i^pub)
    ephemeral = PrivateKey.generate(rng)
    ephemeral_public = ephemeral.public_key().raw
    noise.mix_key(ephemeral_public)
    noise.mix_hash(ephemeral_public)
    # (C, k) = KDF2(C, DH(E_i, S_r^pub))
    key = noise.mix_key_and_get_key(dh(ephemeral, peer.remote_static))
    # msg.static = AEAD(k, 0, S_i^pub, H);  H = HASH(H || msg.static)
    encrypted_static = noise.encrypt_and_hash(key, identity.public_key.raw)
    # (C, k) = KDF2(C, DH(S_i, S_r^pub))
    key = noise.mix_key_and_get_key(static_static)
    # msg.timestamp = AEAD(k, 0, TAI64N(), H);  H = HASH(H || msg.timestamp)
    encrypted_timestamp = noise.encrypt_and_hash(key, tai64n(now_wall))

    peer.stage = HandshakeStage.INITIATION_CREATED
    peer.chaining_key = noise.chaining_key
    peer.transcript_hash = noise.hash
    peer.local_ephemeral = ephemeral
    peer.remote_ephemeral = None
    peer.local_index = sender_index
    return HandshakeInitiation(
        sender=sender_index,
        ephemeral=ephemeral_public,
        encrypted_static=encrypted_static,
        encrypted_timestamp=encrypted_timestamp,
    )


def consume_initiation_untrusted(
    identity: StaticIdentity,
    message: HandshakeInitiation,
    lookup_peer: Callable[[PublicKey], PeerHandshakeState | None],
    now: float,
) -> PeerHandshakeState:
    """Accept message 1 from an unknown sender: find out who it is, and check it is fresh.

    Call it only after mac1 (and under load mac2) checked out.  On success the peer's state is in
    stage ``INITIATION_CONSUMED``, ready for :func:`create_response`.

    Args:
        identity: our static key pair.
        message: the parsed initiation.
        lookup_peer: maps the static public key the message authenticates to that peer's
            handshake state, or None if it is not a (running) peer of ours.
        now: the current monotonic time in seconds (for the flood limit).

    Returns:
        The handshake state of the peer that sent the initiation.

    Raises:
        HandshakeError: the message does not authenticate.
        UnknownPeer: it authenticates a public key that is not our peer's.
        LowOrderKey: that peer's key (or the ephemeral key) is a low-order point.
        ReplayedHandshake: its timestamp is not newer than the last accepted from that peer.
        HandshakeFlood: the last initiation accepted from that peer is less than 1/50 s old.
    """
    noise = _SymmetricState.initial()
    # H = HASH(H || S_r^pub): we are the responder, S_r is our own key
    noise.mix_hash(identity.public_key.raw)
    # C = KDF1(C, E_i^pub);  H = HASH(H || E_i^pub)
    noise.mix_key(message.ephemeral)
    noise.mix_hash(message.ephemeral)
    remote_ephemeral = PublicKey(message.ephemeral)
    # (C, k) = KDF2(C, DH(S_r, E_i^pub)), the same secret as the initiator's DH(E_i, S_r^pub)
    key = noise.mix_key_and_get_key(dh(identity.private_key, remote_ephemeral))
    # S_i^pub = AEAD-DECRYPT(k, 0, msg.static, H);  H = HASH(H || msg.static)
    remote_static = PublicKey(noise.decrypt_and_hash(key, message.encrypted_static, "static key"))

    peer = lookup_peer(remote_static)
    if peer is None:
        raise UnknownPeer(f"initiation from {remote_static}, which is not a peer", remote_static)
    # (C, k) = KDF2(C, DH(S_r, S_i^pub))
    key = noise.mix_key_and_get_key(peer.static_static(identity))
    # timestamp = AEAD-DECRYPT(k, 0, msg.timestamp, H);  H = HASH(H || msg.timestamp)
    timestamp = noise.decrypt_and_hash(key, message.encrypted_timestamp, "timestamp")

    # Only a newer timestamp proves this is not a replay of an old initiation.
    if not is_after(timestamp, peer.last_timestamp):
        raise ReplayedHandshake(f"initiation from {remote_static} replays an old timestamp")
    last = peer.last_initiation_consumed_at
    if last is not None and now - last <= HANDSHAKE_INITIATION_RATE:
        raise HandshakeFlood(f"initiations from {remote_static} come faster than 50 per second")

    peer.stage = HandshakeStage.INITIATION_CONSUMED
    peer.chaining_key = noise.chaining_key
    peer.transcript_hash = noise.hash
    peer.local_ephemeral = None
    peer.remote_ephemeral = remote_ephemeral
    peer.remote_index = message.sender
    peer.last_timestamp = timestamp
    if last is None or now > last:
        peer.last_initiation_consumed_at = now
    return peer


# --- message 2: responder -> initiator -----------------------------------------------------------


def create_response(
    peer: PeerHandshakeState,
    sender_index: int,
    rng: Rng = os.urandom,
) -> HandshakeResponse:
    """Answer the initiation just consumed from ``peer`` with message 2.

    The returned message has zero mac1/mac2; fill them with
    :meth:`~minivpn.wireguard.cookie.CookieGenerator.add_macs`.  Afterwards call
    :func:`begin_session`.  If ``peer.local_index`` was set (our own initiation in flight), the
    caller should retire that index from its index table.

    Args:
        peer: a handshake state in stage ``INITIATION_CONSUMED``; left in ``RESPONSE_CREATED``.
        sender_index: a fresh random local index that identifies this handshake.
        rng: source of random bytes for the ephemeral key.

    Raises:
        HandshakeError: no initiation from this peer was consumed.
    """
    if peer.stage is not HandshakeStage.INITIATION_CONSUMED or peer.remote_ephemeral is None:
        raise HandshakeError(f"cannot respond to {peer.remote_static}: no initiation consumed")
    noise = _SymmetricState(peer.chaining_key, peer.transcript_hash)
    # E_r = DH-GENERATE();  C = KDF1(C, E_r^pub);  msg.ephemeral = E_r^pub;  H = HASH(H || E_r^pub)
    ephemeral = PrivateKey.generate(rng)
    ephemeral_public = ephemeral.public_key().raw
    noise.mix_key(ephemeral_public)
    noise.mix_hash(ephemeral_public)
    # C = KDF1(C, DH(E_r, E_i^pub))
    noise.mix_key(dh(ephemeral, peer.remote_ephemeral))
    # C = KDF1(C, DH(E_r, S_i^pub))
    noise.mix_key(dh(ephemeral, peer.remote_static))
    # (C, tau, k) = KDF3(C, Q);  H = HASH(H || tau)
    key = noise.mix_preshared_key(peer.preshared_key.raw)
    # msg.empty = AEAD(k, 0, "", H);  H = HASH(H || msg.empty)
    encrypted_nothing = noise.encrypt_and_hash(key, b"")

    peer.stage = HandshakeStage.RESPONSE_CREATED
    peer.chaining_key = noise.chaining_key
    peer.transcript_hash = noise.hash
    peer.local_ephemeral = ephemeral
    peer.local_index = sender_index
    return HandshakeResponse(
        sender=sender_index,
        receiver=peer.remote_index,
        ephemeral=ephemeral_public,
        encrypted_nothing=encrypted_nothing,
    )


def consume_response_untrusted(
    identity: StaticIdentity,
    peer: PeerHandshakeState,
    message: HandshakeResponse,
) -> None:
    """Accept message 2, the answer to the initiation we sent to ``peer``.

    The caller finds ``peer`` by looking ``message.receiver`` up in its index table; call it only
    after mac1 (and under load mac2) checked out.  On success the peer's state is in stage
    ``RESPONSE_CONSUMED``: call :func:`begin_session`.

    Args:
        identity: our static key pair.
        peer: the handshake state of the peer we sent an initiation to.
        message: the parsed response.

    Raises:
        HandshakeError: we are not waiting for this response (wrong stage or receiver index), or
            it does not authenticate (for instance because the preshared keys differ).
        LowOrderKey: its ephemeral key is a low-order point.
    """
    if (
        peer.stage is not HandshakeStage.INITIATION_CREATED
        or peer.local_ephemeral is None
        or message.receiver != peer.local_index
    ):
        raise HandshakeError(f"unexpected response from {peer.remote_static}")
    noise = _SymmetricState(peer.chaining_key, peer.transcript_hash)
    # C = KDF1(C, E_r^pub);  H = HASH(H || E_r^pub)
    noise.mix_key(message.ephemeral)
    noise.mix_hash(message.ephemeral)
    remote_ephemeral = PublicKey(message.ephemeral)
    # C = KDF1(C, DH(E_i, E_r^pub))
    noise.mix_key(dh(peer.local_ephemeral, remote_ephemeral))
    # C = KDF1(C, DH(S_i, E_r^pub))
    noise.mix_key(dh(identity.private_key, remote_ephemeral))
    # (C, tau, k) = KDF3(C, Q);  H = HASH(H || tau)
    key = noise.mix_preshared_key(peer.preshared_key.raw)
    # "" = AEAD-DECRYPT(k, 0, msg.empty, H);  H = HASH(H || msg.empty)
    noise.decrypt_and_hash(key, message.encrypted_nothing, "response")

    peer.stage = HandshakeStage.RESPONSE_CONSUMED
    peer.chaining_key = noise.chaining_key
    peer.transcript_hash = noise.hash
    peer.remote_ephemeral = remote_ephemeral
    peer.remote_index = message.sender


# --- end of the handshake ------------------------------------------------------------------------


def begin_session(peer: PeerHandshakeState) -> SessionKeys:
    """Derive the transport keys of a completed handshake, and forget the handshake.

    ``(T_send, T_recv) = KDF2(C, "")`` for the initiator; the responder gets the same two keys the
    other way round, so each side's send key is the other's receive key.

    Args:
        peer: a handshake state in stage ``RESPONSE_CONSUMED`` (we initiated) or
            ``RESPONSE_CREATED`` (we responded); left ``ZEROED``.

    Raises:
        HandshakeError: the handshake is not complete.
    """
    complete = (HandshakeStage.RESPONSE_CONSUMED, HandshakeStage.RESPONSE_CREATED)
    if peer.stage not in complete:
        raise HandshakeError(
            f"cannot derive keys with {peer.remote_static}: handshake is {peer.stage.name}"
        )
    is_initiator = peer.stage is HandshakeStage.RESPONSE_CONSUMED
    # (T_send, T_recv) = KDF2(C, "") as initiator; (T_recv, T_send) as responder
    first, second = kdf2(peer.chaining_key, b"")
    send_key, receive_key = (first, second) if is_initiator else (second, first)
    keys = SessionKeys(send_key, receive_key, peer.local_index, peer.remote_index, is_initiator)
    peer.clear()
    return keys
