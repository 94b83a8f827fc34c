"""Finding TUN/TAP devices: netlink tells which links are TUN/TAP and how they were made.

The kernel describes every link in answer to ``RTM_GETLINK``: name, index, flags (IFF_UP),
operational state, MTU, link-layer address, and in ``IFLA_LINKINFO`` the kind of link.  The tun
driver's links have kind ``"tun"`` (TAP devices too), and their ``IFLA_INFO_DATA`` holds the
``IFLA_TUN_*`` attributes (``linux/if_link.h``, filled in by ``tun_fill_info``)::

    IFLA_TUN_TYPE         1 = TUN (IFF_TUN), 2 = TAP (IFF_TAP)
    IFLA_TUN_PI           1 = packets carry the 4-byte packet-information header
    IFLA_TUN_VNET_HDR     1 = packets carry a virtio-net header
    IFLA_TUN_PERSIST      1 = the device outlives the closing of its last fd
    IFLA_TUN_MULTI_QUEUE  1 = several fds may attach
    IFLA_TUN_NUM_QUEUES   attached queues (multi-queue devices only)
    IFLA_TUN_OWNER        uid allowed to attach without CAP_NET_ADMIN (absent: nobody)
    IFLA_TUN_GROUP        gid allowed to attach without CAP_NET_ADMIN (absent: none)

PI and VNET_HDR are those of the most recent attach: each attachment chooses them again (see
docs/tuntap.md).  ``ip -details link show`` prints the same attributes.

Why netlink and not sysfs (``/sys/class/net/NAME/tun_flags``, ``owner``, ``group``): a netlink
socket always belongs to the network namespace of the process that opened it, while sysfs shows
the namespace of whoever *mounted* it.  Under ``unshare -n`` or ``unshare -Urn`` (which cannot
re-mount sysfs), ``/sys/class/net`` still lists the parent namespace's links, so a device just
created there would be "missing", and another namespace's devices listed.

pyroute2 is imported inside the functions that ask, for the reason given in
:mod:`minivpn.netconf`: a process that never lists devices (the daemon serving an interface)
never loads it.  IP addresses come from a second dump, ``RTM_GETADDR``
(:func:`minivpn.netconf.addresses_by_index`); a listing without them is still useful, so a
failure there leaves them empty.

This finds every TUN/TAP device in the current network namespace, including those made by other
tools (``ip tuntap add``, ``openvpn --mktun``, wireguard-go).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any

import attrs

from minivpn.tuntap.errors import NoSuchDevice, NotATunDevice, TunError
from minivpn.tuntap.ioctl import (
    IFF_MULTI_QUEUE,
    IFF_NO_PI,
    IFF_PERSIST,
    IFF_TAP,
    IFF_TUN,
    IFF_VNET_HDR,
    Mode,
    encode_name,
)

__all__ = ["DeviceInfo", "get_device", "link_exists", "list_devices", "read_tun_flags"]

log = logging.getLogger(__name__)

#: IFF_UP in the link flags (``linux/if.h``).
_IFF_UP = 0x1
#: IFLA_TUN_TYPE values: the IFF_TUN and IFF_TAP bits themselves.
_TUN_TYPES = {IFF_TUN: Mode.TUN, IFF_TAP: Mode.TAP}


@attrs.frozen
class DeviceInfo:
    """Everything ``minivpn tun list`` shows about one TUN/TAP device.

    Attributes:
        name: interface name.
        mode: TUN or TAP.
        pi: packets carry the 4-byte packet-information header (as last attached).
        multi_queue: several fds may attach.
        vnet_hdr: packets carry a virtio-net header (as last attached).
        persist: the device outlives the closing of its last fd.
        owner: uid allowed to attach without CAP_NET_ADMIN, or None.
        group: gid allowed to attach without CAP_NET_ADMIN, or None.
        mtu: the link MTU in bytes.
        up: administratively up (IFF_UP).
        operstate: RFC 2863 state as the kernel reports it ("up", "down", "unknown", ...).  A
            TUN/TAP link that is up has carrier only while some fd is attached: "down" then
            means up but nobody attached.
        ifindex: interface index.
        addresses: IP addresses as CIDR strings ("10.9.0.1/24"), IPv4 first.
        mac: the MAC address (TAP), or None (TUN has none).
        tun_flags: the IFF_* flags these attributes stand for (IFF_TUN or IFF_TAP, IFF_NO_PI,
            IFF_VNET_HDR, IFF_MULTI_QUEUE, IFF_PERSIST), as ``TUNSETIFF`` takes them.
        num_queues: attached queues of a multi-queue device; None for a single-queue one.
    """

    name: str
    mode: Mode
    pi: bool
    multi_queue: bool
    vnet_hdr: bool
    persist: bool
    owner: int | None
    group: int | None
    mtu: int
    up: bool
    operstate: str
    ifindex: int
    addresses: tuple[str, ...]
    mac: str | None
    tun_flags: int
    num_queues: int | None = None

    @property
    def state(self) -> str:
        """A one-word state for humans: "up", "down" or "no-carrier" (up, nobody attached)."""
        if not self.up:
            return "down"
        # TUN/TAP report "unknown" while up and attached (they have no real carrier detection).
        if self.operstate in ("up", "unknown"):
            return "up"
        return "no-carrier" if self.operstate == "down" else self.operstate

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; the keys are documented in docs/tuntap.md and are stable."""
        return {
            "name": self.name,
            "mode": self.mode.value,
            "pi": self.pi,
            "multi_queue": self.multi_queue,
            "vnet_hdr": self.vnet_hdr,
            "persist": self.persist,
            "owner": self.owner,
            "group": self.group,
            "mtu": self.mtu,
            "up": self.up,
            "operstate": self.operstate,
            "state": self.state,
            "ifindex": self.ifindex,
            "addresses": list(self.addresses),
            "mac": self.mac,
            "tun_flags": self.tun_flags,
            "num_queues": self.num_queues,
        }


def link_exists(name: str) -> bool:
    """Whether this network namespace has a link called *name* (any kind).

    ``SIOCGIFINDEX`` on a socket, which, like netlink, belongs to the caller's namespace; and
    it needs no netlink library.
    """
    try:
        socket.if_nametoindex(name)
    except (OSError, ValueError):
        return False
    return True


def read_tun_flags(name: str) -> int:
    """Return the IFF_* flags of the TUN/TAP device *name* (see :attr:`DeviceInfo.tun_flags`).

    Raises:
        InvalidDeviceName: *name* is not a valid interface name.
        NoSuchDevice: there is no interface called *name*.
        NotATunDevice: *name* exists but is not a TUN/TAP device.
        TunError: netlink could not be asked.
    """
    return _device(name, {}).tun_flags


def get_device(name: str) -> DeviceInfo:
    """Describe the TUN/TAP device *name*, addresses included.

    Raises:
        InvalidDeviceName: *name* is not a valid interface name.
        NoSuchDevice: there is no interface called *name*.
        NotATunDevice: *name* exists but is not a TUN/TAP device.
        TunError: netlink could not be asked.
    """
    info = _device(name, {})
    addresses = _addresses_or_nothing()
    return attrs.evolve(info, addresses=tuple(addresses.get(info.ifindex, ())))


def list_devices() -> list[DeviceInfo]:
    """Describe every TUN/TAP device in this network namespace, sorted by name.

    One ``RTM_GETLINK`` dump: the links that are not TUN/TAP are left out.

    Raises:
        TunError: netlink could not be asked.
    """
    links = _get_links(None)
    addresses = _addresses_or_nothing()
    devices = [info for info in (_from_link(link, addresses) for link in links) if info is not None]
    return sorted(devices, key=lambda info: info.name)


def _device(name: str, addresses: dict[int, list[str]]) -> DeviceInfo:
    encode_name(name)  # a name the kernel would refuse gets the precise error, not ENODEV
    (link,) = _get_links(name)
    info = _from_link(link, addresses)
    if info is None:
        raise NotATunDevice(f"{name!r} is not a TUN/TAP device")
    return info


def _get_links(name: str | None) -> list[Any]:
    """``RTM_GETLINK`` for *name*, or a dump of every link when None."""
    from pyroute2 import IPRoute  # imported here: see the module docstring
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            return list(ipr.get_links() if name is None else ipr.link("get", ifname=name))
    except NetlinkError as exc:
        if name is not None and exc.code == errno.ENODEV:
            raise NoSuchDevice(f"no network device named {name!r}") from None
        raise TunError(f"cannot read the network devices: {os.strerror(exc.code)}") from None
    except OSError as exc:  # the netlink socket itself could not be opened
        raise TunError(f"cannot read the network devices: {exc.strerror or exc}") from None


def _from_link(link: Any, addresses: dict[int, list[str]]) -> DeviceInfo | None:
    """The DeviceInfo of one RTM_NEWLINK message, or None if it is not a TUN/TAP link."""
    linkinfo = link.get("IFLA_LINKINFO")
    if linkinfo is None or linkinfo.get("IFLA_INFO_KIND") != "tun":
        return None
    data = linkinfo.get("IFLA_INFO_DATA")
    if data is None:  # a kernel older than 4.15 says "tun" and no more
        return None
    mode = _TUN_TYPES.get(int(data.get("IFLA_TUN_TYPE") or 0))
    if mode is None:
        return None

    def flag(attribute: str) -> bool:
        return bool(data.get(attribute))

    pi, vnet_hdr = flag("IFLA_TUN_PI"), flag("IFLA_TUN_VNET_HDR")
    multi_queue, persist = flag("IFLA_TUN_MULTI_QUEUE"), flag("IFLA_TUN_PERSIST")
    tun_flags = (
        (IFF_TUN if mode is Mode.TUN else IFF_TAP)
        | (0 if pi else IFF_NO_PI)
        | (IFF_VNET_HDR if vnet_hdr else 0)
        | (IFF_MULTI_QUEUE if multi_queue else 0)
        | (IFF_PERSIST if persist else 0)
    )
    ifindex = int(link["index"])
    owner, group = data.get("IFLA_TUN_OWNER"), data.get("IFLA_TUN_GROUP")
    # A TUN device has no link-layer address (no IFLA_ADDRESS).
    mac = link.get("IFLA_ADDRESS") if mode is Mode.TAP else None
    num_queues = data.get("IFLA_TUN_NUM_QUEUES") if multi_queue else None
    return DeviceInfo(
        name=str(link.get("IFLA_IFNAME")),
        mode=mode,
        pi=pi,
        multi_queue=multi_queue,
        vnet_hdr=vnet_hdr,
        persist=persist,
        owner=None if owner is None else int(owner),
        group=None if group is None else int(group),
        mtu=int(link.get("IFLA_MTU")),
        up=bool(link["flags"] & _IFF_UP),
        operstate=str(link.get("IFLA_OPERSTATE", "unknown")).lower(),
        ifindex=ifindex,
        addresses=tuple(addresses.get(ifindex, ())),
        mac=str(mac) if mac is not None else None,
        tun_flags=tun_flags,
        num_queues=None if num_queues is None else int(num_queues),
    )


def _addresses_or_nothing() -> dict[int, list[str]]:
    """All IP addresses by interface index, or {} when netlink cannot be asked."""
    from minivpn import netconf  # pyroute2 is a heavy import; only listing needs it here

    try:
        return netconf.addresses_by_index()
    except (netconf.NetconfError, OSError) as exc:
        log.debug("addresses left out of the listing: %s", exc)
        return {}
