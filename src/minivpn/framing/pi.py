"""The TUN packet-information (PI) header.

A TUN device opened without ``IFF_NO_PI`` puts four bytes in front of every packet it hands to
user space, and expects them in front of every packet user space writes
(``struct tun_pi`` in ``linux/if_tun.h``)::

    offset 0  u16 flags   host byte order (!); TUN_PKT_STRIP when the kernel had to cut
                          the packet because the read buffer was too small
    offset 2  u16 proto   network byte order; the EtherType of the packet,
                          0x0800 for IPv4, 0x86DD for IPv6

The flags field is in *host* byte order because the kernel copies the C struct as it is; the
proto field is big-endian because it holds an EtherType, which is always on the wire in network
order.  On the way in (user space to kernel) the kernel ignores the flags and uses ``proto`` to
pick the protocol handler, so a writer must fill it in: :func:`ethertype_for_ip_packet` derives
it from the packet itself.

These functions run once per packet, so they stay small: one precompiled
:class:`struct.Struct`, no intermediate objects beyond the result.
"""

from __future__ import annotations

import struct

import attrs

from .errors import MalformedPacket
from .protocols import ETHERTYPE_IPV4, ETHERTYPE_IPV6

#: Set by the kernel in ``flags`` when the packet did not fit the read buffer and was cut.
TUN_PKT_STRIP = 0x0001
#: Length of the PI header in bytes.
PI_LENGTH = 4

# "=" is host byte order with standard sizes and no padding: exactly what the kernel copies.
# struct cannot mix byte orders in one format, so the big-endian proto is packed as its high
# and low bytes ("BB"), which is big-endian by construction.
_PI = struct.Struct("=HBB")


@attrs.frozen
class PacketInfo:
    """A decoded PI header.

    Attributes:
        flags: ``TUN_PKT_STRIP`` or 0.
        proto: the EtherType of the packet that follows (0x0800 IPv4, 0x86DD IPv6).
    """

    flags: int
    proto: int


# Nearly every header is one of these four.  Building a frozen attrs instance costs more than
# the rest of the parse, and equal immutable values can be shared, so they are made only once.
_COMMON_INFOS = {
    (flags << 16) | proto: PacketInfo(flags, proto)
    for flags in (0, TUN_PKT_STRIP)
    for proto in (ETHERTYPE_IPV4, ETHERTYPE_IPV6)
}


def parse_pi_untrusted(buf: bytes | bytearray | memoryview) -> tuple[PacketInfo, memoryview]:
    """Split a packet read from a TUN device (with PI) into its header and the packet.

    Args:
        buf: the bytes of one read from the device.

    Returns:
        ``(info, packet)``; ``packet`` is a view into ``buf`` (no copy) starting after the header.

    Raises:
        MalformedPacket: ``buf`` is shorter than the 4-byte header.
    """
    if len(buf) < PI_LENGTH:
        raise MalformedPacket(f"{len(buf)} bytes is shorter than the 4-byte TUN PI header")
    flags, proto_high, proto_low = _PI.unpack_from(buf)
    proto = (proto_high << 8) | proto_low
    info = _COMMON_INFOS.get((flags << 16) | proto)
    if info is None:
        info = PacketInfo(flags, proto)
    return info, memoryview(buf)[PI_LENGTH:]


def build_pi(proto: int, flags: int = 0) -> bytes:
    """Build the PI header to put in front of a packet written to a TUN device.

    Args:
        proto: the packet's EtherType, e.g. from :func:`ethertype_for_ip_packet`.
        flags: normally 0; the kernel ignores the flags of written packets.

    Returns:
        The 4 header bytes.

    Raises:
        ValueError: ``proto`` or ``flags`` does not fit in 16 bits.
    """
    if not (0 <= proto <= 0xFFFF and 0 <= flags <= 0xFFFF):
        raise ValueError(f"PI proto {proto:#x} and flags {flags:#x} must fit in 16 bits")
    return _PI.pack(flags, proto >> 8, proto & 0xFF)


def ethertype_for_ip_packet(packet: bytes | bytearray | memoryview) -> int:
    """Return the EtherType of a raw IP packet, from the version in its first nibble.

    Args:
        packet: an IPv4 or IPv6 packet.

    Returns:
        ``0x0800`` for IPv4, ``0x86DD`` for IPv6.

    Raises:
        MalformedPacket: the packet is empty or its version is neither 4 nor 6.
    """
    if not packet:
        raise MalformedPacket("an empty packet has no IP version")
    version = packet[0] >> 4
    if version == 4:
        return ETHERTYPE_IPV4
    if version == 6:
        return ETHERTYPE_IPV6
    raise MalformedPacket(f"IP version {version} is neither 4 nor 6")
