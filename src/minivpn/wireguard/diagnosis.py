"""Why a handshake fails, in plain words, from what one side can see (sans-IO).

WireGuard answers nothing to a message it does not accept: a peer that does not know our key,
or whose key we got wrong, stays silent, exactly like a peer that is down.  So the side that
gives up can only reason from what did come back -- nothing, responses that did not
authenticate, cookie replies -- and from its own configuration.  :func:`handshake_failure_cause`
turns that into the most likely cause, with what to check; the runtime logs it when it gives up
(after 20 initiations, 90 s or so), the trace shows it, and ``minivpn doctor`` prints it for a
peer that never completed a handshake.

The inputs are plain values (the names of :class:`~minivpn.wireguard.counters.PeerCounters` and
of :class:`~minivpn.wireguard.events.DropReason`), so that the same words come out of the
running core and out of a UAPI snapshot read by another process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from minivpn.wireguard.keys import PublicKey
    from minivpn.wireguard.peer import Peer

__all__ = ["handshake_failure_cause", "peer_failure_cause"]


def handshake_failure_cause(
    *,
    endpoint: str | None,
    drops: Mapping[str, int],
    counters: Mapping[str, int],
    own_public_key: str | None,
) -> str:
    """The likely reason why no handshake with a peer completes, and what to try.

    Args:
        endpoint: where we send initiations (``198.51.100.2:51820``), or None if unknown.
        drops: this peer's drops by reason value (``{"handshake_invalid": 2}``).
        counters: this peer's counters by name (``initiations_sent``...).
        own_public_key: our public key (base64), to name it in the advice; None if we have none.

    Returns:
        One or two sentences.
    """
    if own_public_key is None or drops.get("no_private_key"):
        return "this interface has no private key: give it one (PrivateKey, wg set ... private-key)"
    if drops.get("low_order_key"):
        return (
            "the peer's public key is a low-order point, with which no handshake is possible: "
            "check the key"
        )
    if endpoint is None or drops.get("no_endpoint"):
        return (
            "the peer has no endpoint, so no initiation could be sent: give it one (Endpoint = "
            "in its [Peer] section, or wg set IFNAME peer KEY endpoint HOST:PORT), or let it "
            "contact us first"
        )
    if drops.get("handshake_invalid"):
        return (
            f"responses came back from {endpoint} but did not authenticate: the preshared keys "
            "of the two sides differ (PresharedKey), or the peer's private key is not the one "
            "whose public key we have"
        )
    if counters.get("cookie_replies_received"):
        return (
            f"{endpoint} answered only with cookie replies: the peer is under load and asks us "
            "to prove our address; it should answer once its load drops"
        )
    sent = counters.get("initiations_sent")
    initiations = "" if sent is None else f" to {sent} initiation{'s' if sent != 1 else ''}"
    return (
        f"nothing came back from {endpoint}{initiations}: the "
        "peer is not running or not reachable there (check the address and port, and firewalls "
        "on the way), or it drops us without a word: the public key we have for it is wrong, "
        "or it does not have ours" + (f" ({own_public_key}) as a peer" if own_public_key else "")
    )


def peer_failure_cause(peer: Peer, own_public_key: PublicKey | None) -> str:
    """:func:`handshake_failure_cause` for a peer of a running core."""
    endpoint = None
    if peer.endpoint is not None:
        host, port = peer.endpoint
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    counters = peer.counters
    return handshake_failure_cause(
        endpoint=endpoint,
        drops={reason.value: count for reason, count in counters.drops.items()},
        counters=counters.as_dict(peer.rx_bytes, peer.tx_bytes),
        own_public_key=own_public_key.to_base64() if own_public_key is not None else None,
    )
