"""Key material the WireGuard tests share."""

from __future__ import annotations

__all__ = ["LOW_ORDER_POINTS"]

#: The seven low-order Curve25519 points the kernel's netns.sh configures as peers
#: (WireGuard/wireguard-linux-compat:src/tests/netns.sh): 0, 1, two points of order 8, and the
#: non-canonical encodings p-1, p and p+1.  A handshake with any of them must be refused.
LOW_ORDER_POINTS = (
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=",
    "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=",
    "7P///////////////////////////////////////38=",
    "7f///////////////////////////////////////38=",
    "7v///////////////////////////////////////38=",
)
