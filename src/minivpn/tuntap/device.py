"""Creating, attaching to and deleting TUN/TAP devices with ``/dev/net/tun`` ioctls.

``/dev/net/tun`` is a "clone" device: every ``open()`` gives a fresh file that becomes a
network interface's queue once ``TUNSETIFF`` names one (:func:`open_device`):

* if no interface of that name exists, the kernel creates one (this needs CAP_NET_ADMIN);
* if a TUN/TAP device of that name exists, the file attaches to it (this needs CAP_NET_ADMIN,
  or being the device's owner or in its group, set with ``TUNSETOWNER``/``TUNSETGROUP``).

A device lives as long as a file is attached to it, unless ``TUNSETPERSIST 1`` made it
persistent: then it stays after the last close, and ``TUNSETPERSIST 0`` from a later attachment
followed by close deletes it (:func:`create_persistent`, :func:`delete_persistent`).  That is
what ``ip tuntap add/del`` do, and because attaching is allowed to the owner, an unprivileged
owner can delete its own device too.

The kernel reports failures with a bare errno.  ``EINVAL`` in particular means any of "TUN was
asked but this is a TAP device", "multi-queue mismatch" and "that is not a TUN/TAP device at
all"; the functions here ask netlink what the existing link is (:mod:`.listing`) to tell which,
and raise the matching
:class:`~minivpn.tuntap.errors.TunError` subclass with a message saying what to change.

Everything here is synchronous: these are quick system calls made once per device.  The
attached file as a trio object for reading and writing packets is :mod:`minivpn.tuntap.aio`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from minivpn.tuntap.errors import (
    DeviceBusy,
    DeviceGone,
    FlagsMismatch,
    ModeMismatch,
    NoSuchDevice,
    NotATunDevice,
    TunError,
    TunPermissionError,
    TunUnavailable,
)
from minivpn.tuntap.ioctl import (
    IFF_NO_PI,
    IFF_PERSIST,
    IFF_TUN_EXCL,
    IFREQ,
    TUNGETFEATURES,
    TUNGETIFF,
    TUNSETGROUP,
    TUNSETIFF,
    TUNSETOWNER,
    TUNSETPERSIST,
    DeviceConfig,
    Mode,
    encode_name,
    flag_names,
    pack_ifreq,
    unpack_ifreq,
)
from minivpn.tuntap.listing import DeviceInfo, get_device, link_exists, read_tun_flags

__all__ = [
    "TUN_PATH",
    "DeviceConfig",
    "Mode",
    "create_persistent",
    "delete_persistent",
    "get_features",
    "get_iff",
    "open_device",
    "set_group",
    "set_owner",
    "set_persist",
]

#: The clone device.  Character device 10:200; distributions make it mode 0666 because the
#: kernel checks privileges when attaching, not when opening.
TUN_PATH = "/dev/net/tun"

_FEATURES = struct.Struct("I")

#: errno values meaning "the link behind this fd was deleted" (EBADFD is what tun returns).
GONE_ERRNOS = frozenset({errno.EBADFD, errno.ENODEV, errno.EBADF})


def _open_clone_device() -> int:
    """Open /dev/net/tun read-write, close-on-exec; map failures to clear errors."""
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TunUnavailable(
            f"{TUN_PATH} is missing (load the tun module with 'modprobe tun', "
            f"or create the node with 'mknod {TUN_PATH} c 10 200')"
        ) from None
    except PermissionError:
        mode = _file_mode(TUN_PATH)
        raise TunPermissionError(
            f"permission denied opening {TUN_PATH}{mode}: it is normally mode 0666 (the kernel "
            "checks ownership and CAP_NET_ADMIN when attaching, not when opening); ask root to "
            f"'chmod 0666 {TUN_PATH}' (see docs/privileges.md)"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            raise TunUnavailable(
                f"{TUN_PATH} exists but the kernel has no tun driver (load it with 'modprobe tun')"
            ) from None
        raise TunUnavailable(f"cannot open {TUN_PATH}: {exc.strerror}") from None


def _file_mode(path: str) -> str:
    try:
        return f" (mode {os.stat(path).st_mode & 0o7777:04o})"
    except OSError:
        return ""


def open_device(
    name: str | None,
    mode: Mode = Mode.TUN,
    *,
    pi: bool = False,
    multi_queue: bool = False,
    vnet_hdr: bool = False,
    exclusive: bool = False,
) -> tuple[int, str, int]:
    """Create or attach to a TUN/TAP device and return the attached file.

    Args:
        name: interface name; a template with ``%d`` or None lets the kernel pick a free name
            (``tun0``, ``tap1``, ...).
        mode: TUN (IP packets) or TAP (Ethernet frames).
        pi: prefix each packet with the 4-byte packet-information header.
        multi_queue: allow several attachments (one queue each).
        vnet_hdr: prefix each packet with a virtio-net header.
        exclusive: fail instead of attaching when the name exists (for creating).

    Returns:
        ``(fd, name, flags)``: the attached file (blocking, close-on-exec; closing it detaches
        and deletes a non-persistent device), the name the kernel reports, and the device's
        flags as the kernel sees them (IFF_PERSIST included; see :func:`get_iff` for why
        they are not simply TUNGETIFF's).

    Raises:
        InvalidDeviceName: the kernel would refuse the name.
        TunUnavailable: ``/dev/net/tun`` is missing or unusable.
        TunPermissionError: creating or attaching is not allowed to this process.
        DeviceBusy: attached elsewhere, or (with *exclusive*) the name exists.
        FlagsMismatch: TUN/TAP or multi-queue differ from the existing device, or PI/VNET_HDR
            differ from the other queues of a multi-queue device.
        NotATunDevice: the name belongs to another kind of link.
        TunError: another refusal by the kernel.
    """
    config = DeviceConfig(
        name=name or "", mode=mode, pi=pi, multi_queue=multi_queue, vnet_hdr=vnet_hdr
    )
    return _attach(config, exclusive=exclusive, action="create" if exclusive else "attach to")


def _attach(config: DeviceConfig, *, exclusive: bool, action: str) -> tuple[int, str, int]:
    raw_name = encode_name(config.name, allow_template=True) if config.name else b""
    flags = config.ifr_flags | (IFF_TUN_EXCL if exclusive else 0)
    fd = _open_clone_device()
    try:
        fcntl.ioctl(fd, TUNSETIFF, pack_ifreq(raw_name, flags))
        actual_name, reported_flags = get_iff(fd)
        actual_flags = _flags_as_attached(actual_name, reported_flags, config)
    except OSError as exc:
        os.close(fd)
        raise _attach_error(exc, config, action) from exc
    except BaseException:
        os.close(fd)
        raise
    return fd, actual_name, actual_flags


def _flags_as_attached(name: str, reported: int, config: DeviceConfig) -> int:
    """The device's flags after a successful TUNSETIFF, with TUNGETIFF's quirk corrected.

    TUNGETIFF sets bit 0x1000 whenever no BPF filter is attached to the queue, because that
    bit is also IFF_NOFILTER; so it cannot say whether PI is on.  For a single-queue device
    the flags just requested are in force.  A multi-queue device keeps the PI and VNET_HDR
    choice of its first queue, so later queues must ask for the same, and netlink tells what it
    is (the per-queue reads and writes follow the device, not the request).

    Raises:
        FlagsMismatch: a later queue of a multi-queue device asked for other PI/VNET_HDR.
    """
    flags = (reported & ~IFF_NO_PI) | (config.ifr_flags & IFF_NO_PI)
    if not config.multi_queue:
        return flags
    try:
        device_flags = read_tun_flags(name)
    except TunError:
        return flags  # netlink cannot be asked (or the link just vanished): trust the request
    actual = DeviceConfig.from_ifr_flags(name, device_flags)
    if (actual.pi, actual.vnet_hdr) != (config.pi, config.vnet_hdr):
        raise FlagsMismatch(
            f"cannot attach to {name}: the queues of a multi-queue device share one setting, "
            f"and it has PI {_on(actual.pi)} and VNET_HDR {_on(actual.vnet_hdr)} "
            f"(this attachment asked for PI {_on(config.pi)}, VNET_HDR {_on(config.vnet_hdr)})"
        )
    return device_flags


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _attach_error(exc: OSError, config: DeviceConfig, action: str) -> TunError:
    """Turn a failed TUNSETIFF into the error that says what went wrong."""
    name = config.name or f"a new {config.mode.value} device"
    existing = _existing_flags(config.name)
    if exc.errno in (errno.EPERM, errno.EACCES):
        if existing is None:
            return TunPermissionError(
                f"permission denied: creating {name} needs CAP_NET_ADMIN (see docs/privileges.md)"
            )
        return TunPermissionError(
            f"permission denied: {_verb(action)} {name} needs CAP_NET_ADMIN or being its "
            f"owner/group (see docs/privileges.md) ({_ownership(name)})"
        )
    if exc.errno == errno.EBUSY:
        if action == "create":
            return DeviceBusy(
                f"cannot create {name}: a network device with that name already exists"
            )
        return DeviceBusy(
            f"device {name} is busy: another process is attached to it (a single-queue device "
            "takes one attachment at a time; create it with --multi-queue to attach several)"
        )
    if exc.errno == errno.EINVAL:
        if isinstance(existing, Exception):
            return existing
        if existing is not None:
            actual = DeviceConfig.from_ifr_flags(config.name, existing)
            if actual.mode is not config.mode:
                return ModeMismatch(
                    f"cannot {action} {name}: it is a {actual.mode.name} device, "
                    f"but {config.mode.name} was requested",
                    actual.mode,
                )
            if actual.multi_queue != config.multi_queue:
                has = "is" if actual.multi_queue else "is not"
                wants = "multi-queue" if config.multi_queue else "single-queue"
                return FlagsMismatch(
                    f"cannot {action} {name}: it {has} multi-queue, but a {wants} "
                    "attachment was requested"
                )
        return TunError(
            f"cannot {action} {name}: the kernel refused flags "
            f"{'|'.join(flag_names(config.ifr_flags))} (EINVAL)"
        )
    return TunError(f"cannot {action} {name}: {exc.strerror}")


def _verb(action: str) -> str:
    return {"attach to": "attaching to", "delete": "deleting", "create": "creating"}[action]


def _existing_flags(name: str) -> int | TunError | None:
    """tun_flags of *name*; None if absent (or a template); the error if it is not TUN/TAP."""
    if not name or "%" in name:
        return None
    try:
        return read_tun_flags(name)
    except NoSuchDevice:
        return None
    except NotATunDevice:
        return NotATunDevice(f"{name!r} exists and is not a TUN/TAP device")


def _ownership(name: str) -> str:
    """'owner: uid 65534; group: none; this process: uid 1000, gid 1000' for a message."""

    try:
        info = get_device(name)
    except TunError:
        owner = group = "unknown"
    else:
        owner = "none" if info.owner is None else f"uid {info.owner}"
        group = "none" if info.group is None else f"gid {info.group}"
    return f"owner: {owner}; group: {group}; this process: uid {os.geteuid()}, gid {os.getegid()}"


def get_iff(fd: int) -> tuple[str, int]:
    """Ask the kernel for the name and flags of the device *fd* is attached to (TUNGETIFF).

    Unlike the flags given to TUNSETIFF, these include IFF_PERSIST as the kernel sees it.
    One bit cannot be trusted: TUNGETIFF sets 0x1000 whenever no BPF filter is attached,
    because that value is also IFF_NOFILTER, so IFF_NO_PI always looks set.  Netlink's
    ``IFLA_TUN_PI`` has the real PI setting (:func:`~minivpn.tuntap.listing.read_tun_flags`).

    Raises:
        DeviceGone: the link was deleted.
        OSError: *fd* is not attached (EBADFD before TUNSETIFF) or not a tun file.
    """
    try:
        return unpack_ifreq(fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ.size)))
    except OSError as exc:
        if exc.errno == errno.EBADFD:
            raise DeviceGone("the device was deleted (TUNGETIFF: EBADFD)") from None
        raise


def _simple_ioctl(fd: int, request: int, value: int, what: str) -> None:
    """An ioctl taking an integer argument, with errors described as "cannot WHAT"."""
    try:
        fcntl.ioctl(fd, request, value)
    except OSError as exc:
        if exc.errno == errno.EBADFD:
            raise DeviceGone(f"cannot {what}: the device was deleted") from None
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise TunPermissionError(f"cannot {what}: permission denied") from None
        raise TunError(f"cannot {what}: {exc.strerror}") from None


def set_persist(fd: int, on: bool) -> None:
    """Make the attached device persistent (stays after close) or not (TUNSETPERSIST).

    Raises:
        DeviceGone: the link was deleted.
        TunError: the kernel refused.
    """
    _simple_ioctl(fd, TUNSETPERSIST, int(on), f"{'set' if on else 'clear'} persistence")


def set_owner(fd: int, uid: int) -> None:
    """Let user *uid* attach to the device without CAP_NET_ADMIN (TUNSETOWNER).

    Raises:
        TunError: *uid* is not valid here (in a user namespace only mapped uids exist).
    """
    if uid < 0:
        raise TunError(f"cannot make uid {uid} the owner: uids are not negative")
    _simple_ioctl(
        fd, TUNSETOWNER, uid, f"make uid {uid} the owner (is it mapped in this user namespace?)"
    )


def set_group(fd: int, gid: int) -> None:
    """Let members of group *gid* attach to the device without CAP_NET_ADMIN (TUNSETGROUP).

    Raises:
        TunError: *gid* is not valid here (in a user namespace only mapped gids exist).
    """
    if gid < 0:
        raise TunError(f"cannot make gid {gid} the group: gids are not negative")
    _simple_ioctl(
        fd, TUNSETGROUP, gid, f"make gid {gid} the group (is it mapped in this user namespace?)"
    )


def get_features() -> int:
    """The IFF_* flags this kernel's tun driver supports (TUNGETFEATURES).

    Returns:
        A bit set; :func:`~minivpn.tuntap.ioctl.flag_names` names the bits.

    Raises:
        TunUnavailable: ``/dev/net/tun`` is missing or unusable.
    """
    fd = _open_clone_device()
    try:
        (features,) = _FEATURES.unpack(fcntl.ioctl(fd, TUNGETFEATURES, bytes(_FEATURES.size)))
    finally:
        os.close(fd)
    return int(features)


def create_persistent(
    name: str,
    mode: Mode = Mode.TUN,
    *,
    pi: bool = False,
    multi_queue: bool = False,
    owner: int | None = None,
    group: int | None = None,
) -> DeviceInfo:
    """Create a device that stays after this process exits, like ``ip tuntap add``.

    Args:
        name: interface name, or a template such as ``tun%d``.
        mode: TUN or TAP.
        pi: the default for the packet-information header (each attachment chooses again).
        multi_queue: several attachments allowed (fixed for the device's life).
        owner: uid that may attach without CAP_NET_ADMIN.
        group: gid whose members may attach without CAP_NET_ADMIN.

    Returns:
        The new device as :func:`~minivpn.tuntap.listing.get_device` describes it.

    Raises:
        DeviceBusy: a network device with that name exists.
        TunPermissionError: no CAP_NET_ADMIN.
        TunError: invalid owner/group or another refusal; nothing is left behind.
    """
    config = DeviceConfig(name=name, mode=mode, pi=pi, multi_queue=multi_queue)
    fd, actual_name, _ = _attach(config, exclusive=True, action="create")
    try:
        # Until TUNSETPERSIST succeeds, closing the fd deletes the device again, so a failure
        # here leaves nothing behind.
        if owner is not None:
            set_owner(fd, owner)
        if group is not None:
            set_group(fd, group)
        set_persist(fd, True)
    finally:
        os.close(fd)
    return get_device(actual_name)


def delete_persistent(name: str) -> bool:
    """Delete a persistent device, like ``ip tuntap del``: attach, TUNSETPERSIST 0, close.

    Attaching uses the device's own flags (asked from netlink), so it matches whatever created
    it.  The owner may do this without CAP_NET_ADMIN.

    Returns:
        True if the link is gone; False if other queues of a multi-queue device are still
        attached (it vanishes when they close).

    Raises:
        NoSuchDevice: no link of that name.
        NotATunDevice: the link is not a TUN/TAP device (delete it with netlink instead).
        TunError: the device is not persistent (it belongs to whoever has it open).
        DeviceBusy: a process is attached to it.
        TunPermissionError: neither CAP_NET_ADMIN nor the owner/group.
    """
    try:
        flags = read_tun_flags(name)
    except NotATunDevice:
        raise NotATunDevice(
            f"cannot delete {name!r}: it is not a TUN/TAP device (minivpn only deletes those)"
        ) from None
    if not flags & IFF_PERSIST:
        raise TunError(
            f"cannot delete {name}: it is not persistent, so it belongs to the process attached "
            "to it and goes away when that process closes it"
        )
    config = DeviceConfig.from_ifr_flags(name, flags)
    fd, _, _ = _attach(config, exclusive=False, action="delete")
    try:
        set_persist(fd, False)
    finally:
        os.close(fd)
    return not link_exists(name)


#: ``SIOCGIFMTU``/``SIOCSIFMTU`` and ``SIOCGIFTXQLEN``/``SIOCSIFTXQLEN`` (linux/sockios.h): a
#: link's MTU, and the length of its transmit queue (for a TUN device, the ring of packets
#: waiting to be read).  Their ``struct ifreq``: a name, then one ``int``.
_SIOCGIFMTU, _SIOCSIFMTU = 0x8921, 0x8922
_SIOCGIFTXQLEN = 0x8942
_IFREQ_INT = struct.Struct("16si20x")
#: rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h): the message header, the
#: link header, one 32-bit attribute; the request that changes a link, and its flags.
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR_U32 = struct.Struct("=HHI")
_RTM_NEWLINK = 16
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_IFLA_TXQLEN = 13


def _get_link_int(name: str, request: int, what: str) -> int:
    packed = _IFREQ_INT.pack(name.encode("utf-8", "surrogateescape"), 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            _, value = _IFREQ_INT.unpack(fcntl.ioctl(sock, request, packed))
        except OSError as exc:
            raise TunError(f"cannot read {what} of {name}: {exc.strerror}") from None
    return int(value)


def _set_link_int(name: str, request: int, value: int, what: str) -> None:
    packed = _IFREQ_INT.pack(name.encode("utf-8", "surrogateescape"), value)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock, request, packed)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise TunPermissionError(
                    f"cannot set {what} of {name}: permission denied (needs CAP_NET_ADMIN)"
                ) from None
            raise TunError(f"cannot set {what} of {name} to {value}: {exc.strerror}") from None


def get_mtu(name: str) -> int:
    """The MTU of link *name* in this namespace (``SIOCGIFMTU``).

    Raises:
        TunError: there is no such link.
    """
    return _get_link_int(name, _SIOCGIFMTU, "the MTU")


def set_mtu(name: str, mtu: int) -> None:
    """Set the MTU of link *name* with ``SIOCSIFMTU``: the ioctl ``ip link set mtu`` replaced.

    Used where loading a netlink library only for this would cost more than it gives (the
    daemon); :func:`minivpn.netconf.set_mtu` does the same through netlink.

    Raises:
        TunPermissionError: no CAP_NET_ADMIN.
        TunError: no such link, or the kernel refused the value.
    """
    _set_link_int(name, _SIOCSIFMTU, mtu, "the MTU")


def get_txqueuelen(name: str) -> int:
    """The transmit queue length of link *name* (``SIOCGIFTXQLEN``; 500 for a new TUN device).

    Raises:
        TunError: there is no such link.
    """
    return _get_link_int(name, _SIOCGIFTXQLEN, "the transmit queue length")


def set_txqueuelen(name: str, length: int) -> None:
    """Set the transmit queue length of link *name* (``ip link set NAME txqueuelen N``).

    Through rtnetlink (``RTM_NEWLINK`` with ``IFLA_TXQLEN``), one small message built here: the
    ``SIOCSIFTXQLEN`` ioctl is refused to the root of a user namespace, and pyroute2 would cost
    the daemon 12 MiB of memory for this one request.

    Raises:
        TunPermissionError: no CAP_NET_ADMIN.
        TunError: no such link, or the kernel refused the value.
    """
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        raise TunError(f"cannot set the transmit queue length of {name}: no such link") from None
    attribute = _RTATTR_U32.pack(_RTATTR_U32.size, _IFLA_TXQLEN, length)
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) + attribute
    request = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), _RTM_NEWLINK, _NLM_F_REQUEST | _NLM_F_ACK, 1, 0
    )
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(request + body)
        reply = sock.recv(4096)
    # The answer is an NLMSG_ERROR message whose error is 0 for "done", or minus an errno.
    (error,) = struct.unpack_from("=i", reply, _NLMSGHDR.size)
    if error == -errno.EPERM:
        raise TunPermissionError(
            f"cannot set the transmit queue length of {name}: permission denied "
            "(needs CAP_NET_ADMIN)"
        )
    if error:
        reason = os.strerror(-error)
        raise TunError(f"cannot set the transmit queue length of {name} to {length}: {reason}")
