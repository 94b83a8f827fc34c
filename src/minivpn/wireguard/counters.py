"""What the core counts for each peer besides bytes: drops by reason, handshakes, keepalives.

``wg show`` has two counters per peer, the bytes sent and received.  They cannot tell a peer
that answers handshakes but never data from one that carries traffic both ways, nor say why
packets go nowhere.  :class:`PeerCounters` adds what ``minivpn show`` and ``minivpn doctor``
need for that, and nothing on the way of a data message: every counter here moves on a drop, a
handshake message or a keepalive, which are rare next to data.

The bytes of data are then what the byte counters hold minus the handshake messages and
keepalives (:meth:`PeerCounters.data_bytes`): an initiation is 148 bytes, a response 92, a
keepalive 32, in both directions, so that arithmetic is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minivpn.wireguard.messages import INITIATION_SIZE, RESPONSE_SIZE

if TYPE_CHECKING:
    from minivpn.wireguard.events import DropReason

__all__ = ["KEEPALIVE_SIZE", "PeerCounters"]

#: A keepalive: a data message with nothing inside (16 bytes of header, 16 of tag).
KEEPALIVE_SIZE = 32


class PeerCounters:
    """Counters of one peer, for ``show``, ``doctor`` and the reasons a handshake failed.

    Attributes:
        drops: datagrams and packets of this peer dropped, by reason (only reasons seen).
        initiations_sent: handshake initiations sent to the peer (retries included).
        initiations_received: initiations from the peer that authenticated.
        responses_sent: responses we sent to its initiations.
        responses_received: responses from the peer that completed a handshake.
        cookie_replies_received: cookie replies from the peer (it is under load).
        keepalives_sent, keepalives_received: empty data messages.
    """

    __slots__ = (
        "cookie_replies_received",
        "drops",
        "initiations_received",
        "initiations_sent",
        "keepalives_received",
        "keepalives_sent",
        "responses_received",
        "responses_sent",
    )

    def __init__(self) -> None:
        self.drops: dict[DropReason, int] = {}
        self.initiations_sent = 0
        self.initiations_received = 0
        self.responses_sent = 0
        self.responses_received = 0
        self.cookie_replies_received = 0
        self.keepalives_sent = 0
        self.keepalives_received = 0

    def count_drop(self, reason: DropReason) -> None:
        """One more drop for *reason*."""
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def data_bytes(self, rx_bytes: int, tx_bytes: int) -> tuple[int, int]:
        """The bytes of data messages received and sent, given the peer's byte counters.

        Returns:
            ``(received, sent)``: the byte counters without handshake messages and keepalives
            (wireguard-go's counting: 32 bytes of header and tag per data message, included).
        """
        received = (
            rx_bytes
            - self.initiations_received * INITIATION_SIZE
            - self.responses_received * RESPONSE_SIZE
            - self.keepalives_received * KEEPALIVE_SIZE
        )
        sent = (
            tx_bytes
            - self.initiations_sent * INITIATION_SIZE
            - self.responses_sent * RESPONSE_SIZE
            - self.keepalives_sent * KEEPALIVE_SIZE
        )
        return max(received, 0), max(sent, 0)

    def as_dict(self, rx_bytes: int, tx_bytes: int) -> dict[str, int]:
        """Every counter but the drops, by name, with the data bytes (for UAPI and JSON)."""
        received, sent = self.data_bytes(rx_bytes, tx_bytes)
        return {
            "initiations_sent": self.initiations_sent,
            "initiations_received": self.initiations_received,
            "responses_sent": self.responses_sent,
            "responses_received": self.responses_received,
            "cookie_replies_received": self.cookie_replies_received,
            "keepalives_sent": self.keepalives_sent,
            "keepalives_received": self.keepalives_received,
            "rx_data_bytes": received,
            "tx_data_bytes": sent,
        }
