"""Everything the core knows about one peer.

A :class:`Peer` is a record: its identity and configuration (public key, preshared key,
endpoint, persistent keepalive), the state of the handshake in progress, its keypairs, its
timers, the packets waiting for a session, and the counters ``wg show`` reports.  The protocol
logic that reads and changes it lives in :mod:`minivpn.wireguard.core`; nothing here sends or
receives anything.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

from minivpn.wireguard.constants import MAX_STAGED_PACKETS
from minivpn.wireguard.cookie import CookieGenerator
from minivpn.wireguard.counters import PeerCounters
from minivpn.wireguard.keypair import KeypairSlots
from minivpn.wireguard.noise import PeerHandshakeState
from minivpn.wireguard.timers import PeerTimers

if TYPE_CHECKING:
    import random

    from minivpn.wireguard.events import Endpoint
    from minivpn.wireguard.keys import PresharedKey, PublicKey
    from minivpn.wireguard.timers import TimerQueue

__all__ = ["Peer"]


class Peer:
    """One peer of the device (wireguard-go ``device/peer.go``).

    Attributes:
        public_key: the peer's static public key, its identity.
        handshake: the Noise handshake state (also holds the preshared key and the replay and
            flood guards for initiations from this peer).
        cookies: mac1/mac2 for the handshake messages we send to the peer, and its cookie.
        keypairs: the ``current``, ``previous`` and ``next`` sessions.
        timers: the peer's timers.
        endpoint: where to send to; follows the source of the last authenticated datagram
            (roaming).  None until configured or until the peer contacts us.
        persistent_keepalive_interval: seconds between keepalives sent whatever the traffic
            (0: off).
        staged: packets waiting for a usable session (at most ``MAX_STAGED_PACKETS``; an empty
            one stands for a keepalive).
        is_low_order: the public key is a low-order point: the peer is kept in the
            configuration, but no handshake with it is ever possible.
        last_sent_handshake: monotonic time we last sent an initiation or a response.
        last_handshake_wall: wall-clock time (seconds) of the last completed handshake, or None.
        tx_bytes: bytes of WireGuard messages sent to the peer.
        rx_bytes: bytes received from the peer (handshakes, and data as wireguard-go counts
            it: plaintext length + 32).
        counters: drops by reason, handshake messages and keepalives (for ``show`` and
            ``doctor``; :mod:`minivpn.wireguard.counters`).
    """

    def __init__(
        self,
        public_key: PublicKey,
        preshared_key: PresharedKey,
        queue: TimerQueue,
        jitter: random.Random,
    ) -> None:
        """Create a peer with no endpoint, no allowed IPs, no session.

        Args:
            public_key: the peer's static public key.
            preshared_key: the preshared key (all zeros: none).
            queue: the device's timer queue.
            jitter: random source for timer jitter.
        """
        self.public_key = public_key
        self.handshake = PeerHandshakeState(public_key, preshared_key)
        self.cookies = CookieGenerator(public_key)
        self.keypairs = KeypairSlots()
        self.timers = PeerTimers(self, queue, jitter)
        self.endpoint: Endpoint | None = None
        self.persistent_keepalive_interval = 0
        self.staged: collections.deque[bytes] = collections.deque()
        self.is_low_order = public_key.is_low_order()
        # "Long ago": the first initiation is never held back by REKEY_TIMEOUT.
        self.last_sent_handshake = -math.inf
        self.last_handshake_wall: float | None = None
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.counters = PeerCounters()

    def __repr__(self) -> str:
        return f"Peer({self.public_key.to_base64()}, endpoint={self.endpoint})"

    @property
    def preshared_key(self) -> PresharedKey:
        """The preshared key (all zeros when none); assign to change it."""
        return self.handshake.preshared_key

    @preshared_key.setter
    def preshared_key(self, value: PresharedKey) -> None:
        self.handshake.preshared_key = value

    @property
    def staged_full(self) -> bool:
        """Whether staging one more packet pushes out the oldest."""
        return len(self.staged) >= MAX_STAGED_PACKETS
