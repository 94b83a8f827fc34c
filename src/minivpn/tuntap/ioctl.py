"""The kernel's TUN/TAP interface: ioctl numbers, interface flags and ``struct ifreq``.

Everything here is a plain value or a pure function; nothing opens a file.  The numbers come
from ``include/uapi/linux/if_tun.h`` (installed as ``/usr/include/linux/if_tun.h``).

How the ioctls are used (the code doing it is in :mod:`minivpn.tuntap.device`):

1. ``open("/dev/net/tun")`` gives a file that is not yet a network device.
2. ``ioctl(fd, TUNSETIFF, &ifr)`` with ``ifr.ifr_name`` and ``ifr.ifr_flags`` (:func:`pack_ifreq`)
   creates the interface, or attaches to an existing one of that name.  From then on, each
   ``read()`` returns one packet the kernel routed to the interface and each ``write()`` hands
   one packet to the kernel as if it had arrived on the interface.
3. Other ioctls on the same fd act on that interface: ``TUNSETPERSIST`` keeps it after the fd is
   closed, ``TUNSETOWNER``/``TUNSETGROUP`` let an unprivileged user attach later, and
   ``TUNGETIFF`` reports the name and flags as the kernel sees them (including ``IFF_PERSIST``).

The ioctl numbers are the usual ``_IOW``/``_IOR`` encoding (direction << 30 | size << 16 |
type << 8 | number) with type ``'T'`` and size 4; they are the values for x86, arm and most other
architectures (ppc, mips and sparc encode directions differently and are not supported).
"""

from __future__ import annotations

import enum
import struct

import attrs

from minivpn.tuntap.errors import InvalidDeviceName, TunError

__all__ = [
    "IFF_MULTI_QUEUE",
    "IFF_NO_PI",
    "IFF_PERSIST",
    "IFF_TAP",
    "IFF_TUN",
    "IFF_TUN_EXCL",
    "IFF_VNET_HDR",
    "IFNAMSIZ",
    "IFREQ",
    "TUNGETFEATURES",
    "TUNGETIFF",
    "TUNSETGROUP",
    "TUNSETIFF",
    "TUNSETOFFLOAD",
    "TUNSETOWNER",
    "TUNSETPERSIST",
    "TUNSETVNETHDRSZ",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_TSO_ECN",
    "DeviceConfig",
    "Mode",
    "encode_name",
    "flag_names",
    "pack_ifreq",
    "unpack_ifreq",
]

# --- ioctl request numbers (if_tun.h) -------------------------------------------------------------

#: ``_IOW('T', 202, int)``: create or attach; argument is a ``struct ifreq`` (name + flags).
TUNSETIFF = 0x400454CA
#: ``_IOW('T', 203, int)``: argument 1 keeps the device after close, 0 lets it go.
TUNSETPERSIST = 0x400454CB
#: ``_IOW('T', 204, int)``: argument is the uid allowed to attach without CAP_NET_ADMIN.
TUNSETOWNER = 0x400454CC
#: ``_IOW('T', 206, int)``: argument is the gid allowed to attach without CAP_NET_ADMIN.
TUNSETGROUP = 0x400454CE
#: ``_IOR('T', 207, unsigned int)``: the kernel writes the IFF_* flags it supports.
TUNGETFEATURES = 0x800454CF
#: ``_IOW('T', 208, unsigned int)``: offloads (TUN_F_CSUM, TUN_F_TSO4, ...); needs IFF_VNET_HDR.
TUNSETOFFLOAD = 0x400454D0
#: ``_IOR('T', 210, unsigned int)``: the kernel writes back a ``struct ifreq`` (name + flags).
TUNGETIFF = 0x800454D2
#: ``_IOW('T', 216, int)``: size of the virtio-net header that precedes each packet.
TUNSETVNETHDRSZ = 0x400454D8

# --- interface flags (ifr_flags) ------------------------------------------------------------------

#: Layer 3: each read/write is one IP packet.
IFF_TUN = 0x0001
#: Layer 2: each read/write is one Ethernet frame.
IFF_TAP = 0x0002
#: Several fds attach to one device; each is a queue the kernel spreads flows over.
IFF_MULTI_QUEUE = 0x0100
#: Reported (never requested): the device survives the closing of its last fd.
IFF_PERSIST = 0x0800
#: No 4-byte packet-information header in front of each packet (see minivpn.framing.pi).
IFF_NO_PI = 0x1000
#: Each packet is preceded by a virtio-net header (checksum/segmentation offload).
IFF_VNET_HDR = 0x4000
#: Fail with EBUSY instead of attaching when a device of that name exists (create only).
IFF_TUN_EXCL = 0x8000

# --- offload bits for TUNSETOFFLOAD (meaningful with IFF_VNET_HDR) --------------------------------

#: The program accepts packets whose checksum is still to be filled in.
TUN_F_CSUM = 0x01
#: The program accepts IPv4 TCP packets larger than the MTU (it segments them).
TUN_F_TSO4 = 0x02
#: The program accepts IPv6 TCP packets larger than the MTU.
TUN_F_TSO6 = 0x04
#: ... with the ECN bits set.
TUN_F_TSO_ECN = 0x08

#: The bits that say what kind of device it is (``TUN_TYPE_MASK``).
_TYPE_MASK = 0x000F

#: Names for the flag bits, for humans (``flag_names``); order is the bit order.
_FLAG_NAMES = {
    IFF_TUN: "TUN",
    IFF_TAP: "TAP",
    0x0010: "NAPI",
    0x0020: "NAPI_FRAGS",
    0x0040: "NO_CARRIER",
    IFF_MULTI_QUEUE: "MULTI_QUEUE",
    0x0200: "ATTACH_QUEUE",
    0x0400: "DETACH_QUEUE",
    IFF_PERSIST: "PERSIST",
    IFF_NO_PI: "NO_PI",
    0x2000: "ONE_QUEUE",
    IFF_VNET_HDR: "VNET_HDR",
    IFF_TUN_EXCL: "TUN_EXCL",
}

# --- struct ifreq ---------------------------------------------------------------------------------

#: Size of ``ifr_name`` including the terminating NUL: names have at most 15 bytes.
IFNAMSIZ = 16

#: ``struct ifreq`` as the TUN ioctls use it: ``char ifr_name[16]``, then a union whose first
#: member is ``short ifr_flags``, padded to the full 40 bytes of the 64-bit struct.  Packing
#: all 40 bytes matters: the kernel copies ``sizeof(struct ifreq)`` in and out, so a shorter
#: buffer would only work by accident of how ``fcntl.ioctl`` copies its argument.
IFREQ = struct.Struct("16sH22x")

#: Bytes the kernel's ``dev_valid_name`` refuses anywhere in a name: ``/`` (sysfs paths), ``:``
#: (old alias syntax) and what the kernel's ``isspace`` calls space.  Its ctype table counts
#: 0xA0 (Latin-1 no-break space) as space, so UTF-8 names containing that byte are refused too.
_FORBIDDEN_NAME_BYTES = frozenset(b"/: \t\n\v\f\r\x00\xa0")


def encode_name(name: str, *, allow_template: bool = False) -> bytes:
    """Check an interface name against the kernel's rules and return it as ``ifr_name`` bytes.

    The rules are those of the kernel's ``dev_valid_name``: 1 to 15 bytes (``IFNAMSIZ`` is 16
    including the NUL), not ``.`` or ``..``, no ``/``, ``:`` or whitespace.  A name containing
    ``%d`` is a template: the kernel replaces it with the first free number (``tun%d`` gives
    ``tun0``, ``tun1``, ...).

    Args:
        name: the interface name.
        allow_template: accept one ``%d`` (when creating a device); otherwise ``%`` is refused.

    Returns:
        The name encoded as UTF-8 (undecodable bytes read from the kernel round-trip through
        ``surrogateescape``).

    Raises:
        InvalidDeviceName: the kernel would refuse the name; the message says why.
    """
    try:
        raw = name.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        raise InvalidDeviceName(
            f"invalid interface name {name!r}: it is not encodable as bytes"
        ) from None
    if not raw:
        raise InvalidDeviceName("invalid interface name '': a name must not be empty")
    if len(raw) >= IFNAMSIZ:
        raise InvalidDeviceName(
            f"invalid interface name {name!r}: it has {len(raw)} bytes, the kernel allows at most "
            f"{IFNAMSIZ - 1} (IFNAMSIZ is {IFNAMSIZ} including the terminating NUL)"
        )
    if raw in (b".", b".."):
        raise InvalidDeviceName(f"invalid interface name {name!r}: '.' and '..' are reserved")
    bad = sorted(set(raw) & _FORBIDDEN_NAME_BYTES)
    if bad:
        shown = ", ".join(repr(chr(b)) for b in bad)
        raise InvalidDeviceName(
            f"invalid interface name {name!r}: it must not contain '/', ':' or whitespace "
            f"(found {shown})"
        )
    if b"%" in raw:
        if not allow_template:
            raise InvalidDeviceName(
                f"invalid interface name {name!r}: '%' only appears in a template like 'tun%d', "
                "which is for creating a device; name an existing device exactly"
            )
        if raw.count(b"%") != 1 or b"%d" not in raw:
            raise InvalidDeviceName(
                f"invalid interface name {name!r}: a template has exactly one '%d' (like 'tun%d')"
            )
    return raw


def pack_ifreq(name: bytes, flags: int) -> bytes:
    """Build the 40-byte ``struct ifreq`` for TUNSETIFF.

    Args:
        name: the interface name from :func:`encode_name`, or ``b""`` to let the kernel choose
            (``tun%d`` or ``tap%d``).
        flags: IFF_* flags (an unsigned 16-bit value).

    Returns:
        40 bytes: the name NUL-padded to 16 bytes, the flags in host byte order, zeros.
    """
    return IFREQ.pack(name, flags)


def unpack_ifreq(ifreq: bytes) -> tuple[str, int]:
    """Read the name and flags from a ``struct ifreq`` the kernel filled in (TUNGETIFF).

    Args:
        ifreq: the 40 bytes written back by the kernel.

    Returns:
        ``(name, flags)``; the name stops at the first NUL.
    """
    raw_name, flags = IFREQ.unpack(ifreq)
    name = raw_name.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")
    return name, flags


def flag_names(flags: int) -> list[str]:
    """Name the IFF_* bits set in *flags*, lowest bit first; unknown bits as hex.

    >>> flag_names(0x1801)
    ['TUN', 'PERSIST', 'NO_PI']
    """
    names = []
    bit = 1
    while bit <= flags:
        if flags & bit:
            names.append(_FLAG_NAMES.get(bit, f"0x{bit:x}"))
        bit <<= 1
    return names


class Mode(enum.Enum):
    """The two kinds of device ``/dev/net/tun`` makes."""

    #: Layer 3: IP packets (IPv4 or IPv6), no link-layer header, no MAC address.
    TUN = "tun"
    #: Layer 2: Ethernet frames, with a MAC address; can join a bridge.
    TAP = "tap"

    @property
    def flag(self) -> int:
        """The IFF_TUN or IFF_TAP bit."""
        return IFF_TUN if self is Mode.TUN else IFF_TAP

    @classmethod
    def from_flags(cls, flags: int) -> Mode:
        """The mode encoded in the type bits of *flags*.

        Raises:
            TunError: the type bits are neither TUN nor TAP.
        """
        kind = flags & _TYPE_MASK
        if kind == IFF_TUN:
            return cls.TUN
        if kind == IFF_TAP:
            return cls.TAP
        raise TunError(f"unknown TUN/TAP device type in flags 0x{flags:04x}")


@attrs.frozen
class DeviceConfig:
    """What is asked of ``/dev/net/tun`` when attaching: a name and the flag choices.

    Attributes:
        name: the interface name ("" lets the kernel choose).
        mode: TUN (IP packets) or TAP (Ethernet frames).
        pi: each packet carries the 4-byte packet-information header (flags, EtherType).
        multi_queue: several fds may attach, one queue each.
        vnet_hdr: each packet carries a virtio-net header (for offloads; off by default).
    """

    name: str
    mode: Mode
    pi: bool
    multi_queue: bool
    vnet_hdr: bool = False

    @property
    def ifr_flags(self) -> int:
        """The ``ifr_flags`` value for TUNSETIFF."""
        flags = self.mode.flag
        if not self.pi:
            flags |= IFF_NO_PI
        if self.multi_queue:
            flags |= IFF_MULTI_QUEUE
        if self.vnet_hdr:
            flags |= IFF_VNET_HDR
        return flags

    @classmethod
    def from_ifr_flags(cls, name: str, flags: int) -> DeviceConfig:
        """Decode flags as TUNGETIFF reports them (or :func:`~.listing.read_tun_flags` does).

        IFF_PERSIST is not part of the config (it is state, not a choice made when attaching);
        test it with ``flags & IFF_PERSIST``.

        Raises:
            TunError: the type bits are neither TUN nor TAP.
        """
        return cls(
            name=name,
            mode=Mode.from_flags(flags),
            pi=not flags & IFF_NO_PI,
            multi_queue=bool(flags & IFF_MULTI_QUEUE),
            vnet_hdr=bool(flags & IFF_VNET_HDR),
        )
