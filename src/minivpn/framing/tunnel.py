"""What the plain tunnel accepts from the network, and whom it sends to (sans-IO).

The plain tunnel (``minivpn tunnel``) carries one packet per UDP datagram, or length-prefixed
frames over TCP (:mod:`.stream`).  It has no authentication, so it can only do two cheap
things to keep junk out of the device:

* :func:`check_payload` looks at the first bytes: a TUN packet must be at least an IPv4 or
  IPv6 header long and start like one, a TAP frame must be at least an Ethernet header long.
  Anything else is dropped and counted, never written to the device.
* :class:`PeerFollower` decides, on the listening side of a UDP tunnel, which address is the
  peer: the first sender of a valid datagram.  The peer may move (a new address after a
  DHCP renewal or a NAT rebinding): the follower switches to a new sender once the current
  peer has been silent for ``roam_after`` seconds.  While the current peer is talking, other
  senders are "foreign" and dropped.

This is a heuristic, not security: anyone who can send a well-formed packet while the peer is
quiet takes over the tunnel.  That is what the WireGuard mode (``minivpn up``) is for.

Offload frames (``--offload``) carry a 10-byte virtio-net header in front of the packet (behind
the PI header, if any), as the kernel reads and writes them with ``IFF_VNET_HDR``; see
:func:`check_payload`.
"""

from __future__ import annotations

import enum
import struct

import attrs

__all__ = [
    "VNET_HDR_LEN",
    "PayloadKind",
    "PeerFollower",
    "PeerVerdict",
    "check_payload",
]

#: Size of ``struct virtio_net_hdr`` (flags, gso_type, hdr_len, gso_size, csum_start,
#: csum_offset), the header in front of every packet on a TUN opened with ``IFF_VNET_HDR``.
VNET_HDR_LEN = 10

#: Valid ``virtio_net_hdr.flags`` bits: NEEDS_CSUM (1), DATA_VALID (2), RSC_INFO (4).
_VNET_FLAGS = 0x07
#: Valid ``gso_type`` values: NONE, TCPV4, UDP (UFO), TCPV6, UDP_L4 (USO), each maybe | ECN.
_VNET_GSO_TYPES = frozenset({0, 1, 3, 4, 5}) | frozenset({t | 0x80 for t in (1, 3, 4, 5)})

_PI_PROTO = struct.Struct("!H")  # the protocol (EtherType) at offset 2 of the PI header
_PI_LENGTH = 4
_IPV4_HEADER, _IPV6_HEADER = 20, 40
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERNET_HEADER = 14


class PayloadKind(enum.Enum):
    """What a tunnel datagram must contain to be written to the device."""

    IP = "ip"  # TUN without PI: a bare IPv4/IPv6 packet
    IP_PI = "ip+pi"  # TUN with the 4-byte packet-information header
    ETHERNET = "ethernet"  # TAP without PI
    ETHERNET_PI = "ethernet+pi"  # TAP with PI


def check_payload(
    data: bytes | bytearray | memoryview, length: int, kind: PayloadKind, *, vnet: bool = False
) -> str | None:
    """Say why ``data[:length]`` must not be written to the device, or None if it may be.

    Only the headers in front are looked at: an IP packet must be at least an IPv4 (20 bytes)
    or IPv6 (40 bytes) header long with the matching version, an Ethernet frame at least an
    Ethernet header (14 bytes) long.  The kernel checks the rest when the packet is written,
    and refuses (``EINVAL``) what it cannot use.

    The layout is the device's, in the kernel's order (``tun_get_user`` in
    drivers/net/tun.c): the PI header if any, then the virtio-net header if any, then the
    packet or frame.

    Args:
        data: a buffer holding the datagram (only the first *length* bytes count).
        length: the datagram's size.
        kind: what the device expects.
        vnet: a virtio-net header precedes the packet (``--offload``).

    Returns:
        A drop reason (``"malformed"``, ``"offload-mismatch"``) or None.
    """
    pi = kind in (PayloadKind.IP_PI, PayloadKind.ETHERNET_PI)
    start = _PI_LENGTH if pi else 0  # where the virtio header, or else the packet, starts
    if length < start + 1:
        return "malformed"
    if vnet:
        if length < start + VNET_HDR_LEN + 1:
            return "malformed"
        if data[start] & ~_VNET_FLAGS or data[start + 1] not in _VNET_GSO_TYPES:
            # A bare IP packet starts with 0x45 or 0x6X, never a valid virtio header.
            return "offload-mismatch"
        start += VNET_HDR_LEN
    if kind is PayloadKind.ETHERNET or kind is PayloadKind.ETHERNET_PI:
        return None if length >= start + _ETHERNET_HEADER else "malformed"
    version = data[start] >> 4
    if version not in (4, 6):
        # A virtio header starts with 0..7: the peer probably uses --offload and we do not.
        return "offload-mismatch" if not vnet and data[start] <= _VNET_FLAGS else "malformed"
    if length < start + (_IPV4_HEADER if version == 4 else _IPV6_HEADER):
        return "malformed"
    if pi:
        (proto,) = _PI_PROTO.unpack_from(data, 2)
        if proto != (_ETHERTYPE_IPV4 if version == 4 else _ETHERTYPE_IPV6):
            return "malformed"
    return None


class PeerVerdict(enum.Enum):
    """What :meth:`PeerFollower.observe` decided about a datagram's sender."""

    PEER = "peer"  # from the current peer
    NEW_PEER = "new-peer"  # the first peer: learnt
    MOVED = "moved"  # the peer changed address
    FOREIGN = "foreign"  # someone else while the peer is active: drop


@attrs.define
class PeerFollower:
    """The listening side's idea of who the peer is.

    Args:
        roam_after: seconds of silence from the current peer after which a datagram from a new
            address is taken as the peer having moved.
    """

    roam_after: float = 2.0
    address: tuple[object, ...] | None = None
    last_seen: float = float("-inf")

    def observe(self, address: tuple[object, ...], now: float) -> PeerVerdict:
        """Account for a valid datagram from *address* at time *now*.

        Call this only for datagrams that passed :func:`check_payload`, so garbage never
        moves the peer.
        """
        if address == self.address:
            self.last_seen = now
            return PeerVerdict.PEER
        if self.address is None:
            verdict = PeerVerdict.NEW_PEER
        elif now - self.last_seen >= self.roam_after:
            verdict = PeerVerdict.MOVED
        else:
            return PeerVerdict.FOREIGN
        self.address = address
        self.last_seen = now
        return verdict
