"""Finding TUN/TAP devices: sysfs tells which links are TUN/TAP and how they were made.

Every network interface has a directory ``/sys/class/net/NAME``.  The tun driver adds three
files to the directories of its own devices, which is how to tell them apart from other links:

* ``tun_flags``: the IFF_* flags in hex, e.g. ``0x1801`` = TUN | PERSIST | NO_PI (the flags of
  the most recent attach: PI and VNET_HDR are chosen by whoever attaches, see docs/tuntap.md);
* ``owner`` and ``group``: the uid and gid allowed to attach without CAP_NET_ADMIN, ``-1`` for
  none.

The generic files give the rest: ``mtu``, ``flags`` (IFF_UP is bit 0), ``operstate``,
``ifindex`` and ``address`` (empty for TUN, which has no link-layer address).  IP addresses are
not in sysfs; they come from netlink (:func:`minivpn.netconf.addresses_by_index`), and a listing
without them is still useful, so a netlink failure leaves them empty.

This finds every TUN/TAP device in the current network namespace, including those made by other
tools (``ip tuntap add``, ``openvpn --mktun``, wireguard-go), as long as ``/sys`` belongs to this
namespace (a new namespace needs sysfs re-mounted, as ``netns/isolate`` and ``ip netns exec`` do).
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs

from minivpn.tuntap.errors import NoSuchDevice, NotATunDevice
from minivpn.tuntap.ioctl import IFF_PERSIST, DeviceConfig, Mode, encode_name

__all__ = ["SYSFS_NET", "DeviceInfo", "get_device", "list_devices", "read_tun_flags"]

log = logging.getLogger(__name__)

#: Where the kernel lists network interfaces.
SYSFS_NET = Path("/sys/class/net")

#: IFF_UP in the generic interface flags (``/sys/class/net/NAME/flags``), from ``linux/if.h``.
_IFF_UP = 0x1


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
        tun_flags: the raw IFF_* flags from sysfs.
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
        }


def read_tun_flags(name: str, *, sysfs_net: Path = SYSFS_NET) -> int:
    """Return the ``tun_flags`` of the TUN/TAP device *name*.

    Raises:
        InvalidDeviceName: *name* is not a valid interface name.
        NoSuchDevice: there is no interface called *name*.
        NotATunDevice: *name* exists but is not a TUN/TAP device.
    """
    encode_name(name)  # refuse "../x" and friends before building a path from the name
    link_dir = sysfs_net / name
    try:
        return int((link_dir / "tun_flags").read_text().strip(), 16)
    except FileNotFoundError:
        if link_dir.exists():
            raise NotATunDevice(f"{name!r} is not a TUN/TAP device") from None
        raise NoSuchDevice(f"no network device named {name!r}") from None


def get_device(name: str, *, sysfs_net: Path = SYSFS_NET) -> DeviceInfo:
    """Describe the TUN/TAP device *name*.

    Raises:
        InvalidDeviceName: *name* is not a valid interface name.
        NoSuchDevice: there is no interface called *name*.
        NotATunDevice: *name* exists but is not a TUN/TAP device.
    """
    read_tun_flags(name, sysfs_net=sysfs_net)  # the clear errors for absent / not TUN
    try:
        return _read_device(sysfs_net / name, _addresses_or_nothing())
    except FileNotFoundError:  # deleted between the two reads
        raise NoSuchDevice(f"no network device named {name!r}") from None


def list_devices(*, sysfs_net: Path = SYSFS_NET) -> list[DeviceInfo]:
    """Describe every TUN/TAP device in this network namespace, sorted by name.

    A device is TUN/TAP exactly when its sysfs directory has a ``tun_flags`` file.  Devices
    that vanish while being read are left out.
    """
    addresses = _addresses_or_nothing()
    devices = []
    for link_dir in sorted(sysfs_net.iterdir()):
        if not (link_dir / "tun_flags").exists():
            continue
        try:
            devices.append(_read_device(link_dir, addresses))
        except FileNotFoundError:
            continue
    return devices


def _read_device(link_dir: Path, addresses: dict[int, list[str]]) -> DeviceInfo:
    """Read one device's sysfs directory (FileNotFoundError if it vanishes meanwhile)."""

    def read(attribute: str) -> str:
        return (link_dir / attribute).read_text().strip()

    tun_flags = int(read("tun_flags"), 16)
    config = DeviceConfig.from_ifr_flags(link_dir.name, tun_flags)
    owner, group = int(read("owner")), int(read("group"))
    ifindex = int(read("ifindex"))
    # TUN has no link-layer address: its ``address`` file is empty.
    mac = (read("address") or None) if config.mode is Mode.TAP else None
    return DeviceInfo(
        name=link_dir.name,
        mode=config.mode,
        pi=config.pi,
        multi_queue=config.multi_queue,
        vnet_hdr=config.vnet_hdr,
        persist=bool(tun_flags & IFF_PERSIST),
        owner=None if owner == -1 else owner,
        group=None if group == -1 else group,
        mtu=int(read("mtu")),
        up=bool(int(read("flags"), 16) & _IFF_UP),
        operstate=read("operstate"),
        ifindex=ifindex,
        addresses=tuple(addresses.get(ifindex, ())),
        mac=mac,
        tun_flags=tun_flags,
    )


def _addresses_or_nothing() -> dict[int, list[str]]:
    """All IP addresses by interface index, or {} when netlink cannot be asked."""
    from minivpn import netconf  # pyroute2 is a heavy import; only listing needs it here

    try:
        return netconf.addresses_by_index()
    except (netconf.NetconfError, OSError) as exc:
        log.debug("addresses left out of the listing: %s", exc)
        return {}
