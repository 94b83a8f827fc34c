"""Keypairs (the sessions a handshake creates), their three slots per peer, and the index table.

A completed handshake gives two transport keys, one per direction
(:class:`~minivpn.wireguard.noise.SessionKeys`).  A :class:`Keypair` wraps them for the data
path: a ready-made cipher per direction, the counter of the next message to send, and the replay
window of received counters.

**Three slots per peer** (:class:`KeypairSlots`, wireguard-go ``device/keypair.go`` and
``BeginSymmetricSession``/``ReceivedWithKeypair`` in ``device/noise-protocol.go``):

* ``current``: the keypair we send with;
* ``previous``: the one before it, still accepted on receive, so that packets already in flight
  when the keys changed are not lost;
* ``next``: a responder's new keypair that is not confirmed yet.

The *initiator* learns that the responder has the keys when the response arrives, so it makes
the new keypair ``current`` at once (and sends a keepalive, to confirm it to the responder).
The *responder* cannot know that its response arrived, so it parks the keypair in ``next``
and keeps sending with the old ``current``; the first data message that decrypts under
``next`` proves the initiator has it, and only then is ``next`` promoted to ``current``.

**The index table** (:class:`IndexTable`, wireguard-go ``device/indextable.go``).  Every
handshake and every keypair has a random 32-bit *local index*; the peer writes it in the
``receiver`` field of its messages, and we find the handshake or keypair with a dictionary
lookup instead of trying every peer.  Indices are random so that they reveal nothing (for
instance how many sessions a device has had), and unique per device.  When a handshake
completes, its index is handed over to the keypair it produced.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from minivpn.wireguard.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AFTER_TIME,
)
from minivpn.wireguard.crypto import TransportCipher
from minivpn.wireguard.replay import ReplayFilter

if TYPE_CHECKING:
    from collections.abc import Callable

    from minivpn.wireguard.noise import SessionKeys
    from minivpn.wireguard.peer import Peer

__all__ = ["IndexTable", "Keypair", "KeypairSlots"]


class Keypair:
    """One session: a cipher per direction, the send counter and the replay window.

    The deadlines derived from the creation time are computed once, so that the data path
    compares floats instead of doing arithmetic per packet.

    Attributes:
        peer: the peer this session is with.
        sender: cipher for the messages we send.
        receiver: cipher for the messages we receive.
        replay: the counters already received.
        send_counter: the counter (nonce) of the next message we send.
        is_initiator: whether we initiated the handshake that made it.
        created: monotonic time of its creation.
        local_index: the index the peer puts in messages for this session.
        remote_index: the index we put in messages for this session.
        reject_at: from this time on, the keypair is used neither to send nor to receive.
        rekey_at: after this time, sending triggers a new handshake (initiator only; the
            responder's is infinity, so that both ends do not rekey at once).
        rekey_on_receive_at: after this time, receiving triggers a new handshake (initiator only).
    """

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "peer",
        "receiver",
        "reject_at",
        "rekey_at",
        "rekey_on_receive_at",
        "remote_index",
        "replay",
        "send_counter",
        "sender",
    )

    def __init__(self, keys: SessionKeys, peer: Peer, now: float) -> None:
        """Build the keypair of a completed handshake.

        Args:
            keys: what :func:`~minivpn.wireguard.noise.begin_session` derived.
            peer: the peer the handshake was with.
            now: the current monotonic time.
        """
        self.peer = peer
        self.sender = TransportCipher(keys.send_key)
        self.receiver = TransportCipher(keys.receive_key)
        self.replay = ReplayFilter()
        self.send_counter = 0
        self.is_initiator = keys.is_initiator
        self.created = now
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.reject_at = now + REJECT_AFTER_TIME
        self.rekey_at = now + REKEY_AFTER_TIME if keys.is_initiator else math.inf
        self.rekey_on_receive_at = (
            now + REKEY_ON_RECEIVE_AFTER_TIME if keys.is_initiator else math.inf
        )

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return (
            f"Keypair(local_index={self.local_index:#010x}, "
            f"remote_index={self.remote_index:#010x}, {role}, "
            f"created={self.created:.3f}, sent={self.send_counter})"
        )

    def can_send(self, now: float) -> bool:
        """Whether we may still send with this keypair (not too old, counter not exhausted)."""
        return self.send_counter < REJECT_AFTER_MESSAGES and now < self.reject_at

    def expire(self) -> None:
        """Never send with this keypair again (it may still receive until it is too old)."""
        self.send_counter = REJECT_AFTER_MESSAGES


class KeypairSlots:
    """A peer's ``current``, ``previous`` and ``next`` keypairs, and how they rotate.

    The methods return the keypairs that fell out of every slot: the caller retires their
    indices from the :class:`IndexTable`, so that messages for them are refused.

    Attributes:
        current: the keypair we send with, or None.
        previous: the keypair before it, still accepted on receive, or None.
        next: a responder's unconfirmed new keypair, or None.
    """

    __slots__ = ("current", "next", "previous")

    def __init__(self) -> None:
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None

    def __repr__(self) -> str:
        return f"KeypairSlots(current={self.current}, previous={self.previous}, next={self.next})"

    def install(self, keypair: Keypair) -> list[Keypair]:
        """Put the keypair of a just-completed handshake in its slot.

        As initiator: it becomes ``current``.  The old ``current`` becomes ``previous``, unless
        an unconfirmed ``next`` exists, which takes that place instead (the peer may already be
        sending with it).  As responder: it becomes ``next``, and ``previous`` is emptied.

        Returns:
            The keypairs dropped from every slot.
        """
        retired: list[Keypair] = []
        if keypair.is_initiator:
            if self.next is not None:
                if self.current is not None:
                    retired.append(self.current)
                new_previous: Keypair | None = self.next
                self.next = None
            else:
                new_previous = self.current
            if self.previous is not None:
                retired.append(self.previous)
            self.previous = new_previous
            self.current = keypair
        else:
            if self.next is not None:
                retired.append(self.next)
            if self.previous is not None:
                retired.append(self.previous)
            self.next = keypair
            self.previous = None
        return retired

    def confirm_next(self, keypair: Keypair) -> list[Keypair] | None:
        """A data message decrypted under ``keypair``; promote it if it is ``next``.

        Returns:
            None if ``keypair`` is not ``next`` (nothing changed); otherwise the keypairs
            dropped (the old ``previous``): ``current`` became ``previous`` and ``next``
            became ``current``.
        """
        if keypair is not self.next:
            return None
        retired = [self.previous] if self.previous is not None else []
        self.previous = self.current
        self.current = keypair
        self.next = None
        return retired

    def clear(self) -> list[Keypair]:
        """Empty every slot; returns the keypairs that were in them."""
        retired = [kp for kp in (self.current, self.previous, self.next) if kp is not None]
        self.current = self.previous = self.next = None
        return retired


class IndexTable:
    """The device's random 32-bit local indices, mapped to handshakes and keypairs.

    Two dictionaries share one index space: ``handshakes`` (index of a handshake in progress ->
    its peer) and ``keypairs`` (index of a session -> its keypair).  The data path only ever
    looks in ``keypairs``.
    """

    def __init__(self, rng: Callable[[int], bytes]) -> None:
        """Create an empty table.

        Args:
            rng: source of random bytes for new indices.
        """
        self._rng = rng
        self.handshakes: dict[int, Peer] = {}
        self.keypairs: dict[int, Keypair] = {}

    def __len__(self) -> int:
        return len(self.handshakes) + len(self.keypairs)

    def new_handshake_index(self, peer: Peer) -> int:
        """Pick a fresh random index for a handshake with ``peer`` and register it.

        Index 0 is never used: :class:`~minivpn.wireguard.noise.PeerHandshakeState` uses 0
        for "no index".
        """
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if index and index not in self.handshakes and index not in self.keypairs:
                self.handshakes[index] = peer
                return index

    def handshake_to_keypair(self, keypair: Keypair) -> None:
        """The handshake with index ``keypair.local_index`` produced ``keypair``: remap it."""
        self.handshakes.pop(keypair.local_index, None)
        self.keypairs[keypair.local_index] = keypair

    def retire_handshake(self, index: int) -> None:
        """Forget the index of a handshake that was replaced or abandoned (0: nothing)."""
        if index:
            self.handshakes.pop(index, None)

    def retire_keypairs(self, keypairs: list[Keypair]) -> None:
        """Forget the indices of keypairs that left their slots."""
        for keypair in keypairs:
            if self.keypairs.get(keypair.local_index) is keypair:
                del self.keypairs[keypair.local_index]

    def peer_for_index(self, index: int) -> Peer | None:
        """The peer a handshake or keypair index belongs to (for cookie replies)."""
        peer = self.handshakes.get(index)
        if peer is not None:
            return peer
        keypair = self.keypairs.get(index)
        return keypair.peer if keypair is not None else None
