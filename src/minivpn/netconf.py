"""Links, addresses and routes, configured through netlink (pyroute2's ``IPRoute``).

Attaching to a TUN device (:mod:`minivpn.tuntap`) gives a file descriptor; making the link
useful takes three more steps, which are what ``ip link set up``, ``ip addr add`` and
``ip route add`` do:

1. bring the link up (:func:`set_link_up`), optionally with another MTU (:func:`set_mtu`);
2. give it an address (:func:`add_address`): the kernel then adds the connected route, e.g.
   10.9.0.0/24 for 10.9.0.1/24, so packets to 10.9.0.2 are routed into the device;
3. add routes for other networks behind the tunnel (:func:`add_route`).

(:func:`add_veth` makes a veth pair, the virtual cable ``minivpn demo`` joins its two
namespaces with.)

minivpn never runs ``ip``; it sends the same netlink messages (RTM_NEWLINK, RTM_NEWADDR,
RTM_NEWROUTE) through pyroute2.  Each function opens a netlink socket, does one thing and
closes it.  They are synchronous on purpose: this is the control plane, called a handful of times
when a tunnel starts, so blocking the trio thread for a millisecond is harmless and a plain
function is easier to read and test than an async one.  Never call them per packet.

All of these need CAP_NET_ADMIN in the namespace owning the link, except reading
(:func:`addresses`, :func:`link_state`, :func:`link_index`).  An unprivileged owner of a TUN
device can attach to it but not configure it; :func:`configure_link` with
``unprivileged_ok=True`` turns that refusal into a warning (see docs/privileges.md).

pyroute2 is imported inside the functions that talk netlink, not at the top: it takes about
12 MiB of resident memory, which every process that imports this module only to parse an
address (every ``minivpn`` command builds its argument parser with :func:`parse_interface`)
would otherwise carry for its whole life.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import attrs

from minivpn.errors import MinivpnError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "LinkState",
    "NetconfError",
    "NetconfPermissionError",
    "add_address",
    "add_bridge",
    "add_route",
    "add_veth",
    "addresses",
    "addresses_by_index",
    "configure_link",
    "del_address",
    "del_route",
    "link_index",
    "link_mac",
    "link_state",
    "neighbour_mac",
    "parse_interface",
    "parse_network",
    "set_gso_max_size",
    "set_link_up",
    "set_master",
    "set_mtu",
]

log = logging.getLogger(__name__)

#: ``IFA_F_NODAD`` (linux/if_addr.h): skip IPv6 duplicate address detection, so the address
#: is usable at once instead of "tentative" for a second or two.  A point-to-point tunnel has
#: nobody to collide with.
IFA_F_NODAD = 0x02
#: ``IFF_UP`` in the link flags (linux/if.h).
_IFF_UP = 0x1
#: The main routing table (what ``ip route`` shows without ``table``).
_RT_TABLE_MAIN = 254

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetconfError(MinivpnError):
    """A link, address or route could not be read or changed."""


class NetconfPermissionError(NetconfError):
    """The kernel refused a change: it needs CAP_NET_ADMIN."""


@attrs.frozen
class LinkState:
    """A link as netlink reports it.

    Attributes:
        name: interface name.
        index: interface index.
        up: administratively up (IFF_UP).
        operstate: "UP", "DOWN", "UNKNOWN", ... (as ``ip link`` prints it).
        mtu: MTU in bytes.
    """

    name: str
    index: int
    up: bool
    operstate: str
    mtu: int


def parse_interface(cidr: str) -> IPInterface:
    """Parse an interface address like ``10.9.0.1/24`` or ``fd00:9::1/64``.

    Raises:
        NetconfError: not ADDR/PREFIX.
    """
    if "/" not in cidr:
        raise NetconfError(f"invalid address {cidr!r}: expected ADDR/PREFIX, e.g. 10.9.0.1/24")
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError:
        raise NetconfError(
            f"invalid address {cidr!r}: expected ADDR/PREFIX, e.g. 10.9.0.1/24"
        ) from None


def parse_network(cidr: str) -> IPNetwork:
    """Parse a route destination like ``10.10.0.0/16``; a bare address means a host route.

    Raises:
        NetconfError: not a network, or host bits set (``10.10.0.1/16``).
    """
    try:
        return ipaddress.ip_network(cidr)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise NetconfError(
            f"invalid route {cidr!r}: expected NETWORK/PREFIX, e.g. 10.10.0.0/16"
        ) from None
    raise NetconfError(f"invalid route {cidr!r}: host bits are set (did you mean {loose}?)")


@contextlib.contextmanager
def _netlink(action: str) -> Iterator[Any]:
    """An open ``IPRoute``; netlink errors become NetconfError("cannot ACTION: reason")."""
    from pyroute2 import IPRoute  # imported here: see the module docstring
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise _error(action, exc.code) from exc
    except OSError as exc:  # the netlink socket itself could not be opened
        raise _error(action, exc.errno or 0) from exc


def _error(action: str, code: int) -> NetconfError:
    if code in (errno.EPERM, errno.EACCES):
        return NetconfPermissionError(
            f"cannot {action}: permission denied (it needs CAP_NET_ADMIN; see docs/privileges.md)"
        )
    if code == errno.ENODEV:
        return NetconfError(f"cannot {action}: no such network device")
    name = errno.errorcode.get(code, "unknown error")
    return NetconfError(f"cannot {action}: {os.strerror(code)} ({name})")


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetconfError(f"no network device named {name!r}")
    return int(found[0])


def link_index(name: str) -> int:
    """The interface index of *name*.

    Raises:
        NetconfError: no such link.
    """
    with _netlink(f"look up {name}") as ipr:
        return _index(ipr, name)


def link_state(name: str) -> LinkState:
    """Read the up flag, operational state and MTU of *name*.

    Raises:
        NetconfError: no such link.
    """
    with _netlink(f"read the state of {name}") as ipr:
        index = _index(ipr, name)
        (link,) = ipr.get_links(index)
        return LinkState(
            name=name,
            index=index,
            up=bool(link["flags"] & _IFF_UP),
            operstate=str(link.get("IFLA_OPERSTATE")),
            mtu=int(link.get("IFLA_MTU")),
        )


def path_mtu(destination: str) -> int | None:
    """The MTU on the way to *destination*, as ``ip route get DESTINATION`` shows it.

    The route's own ``mtu`` when it sets one, else the MTU of the link the route leaves by.

    Returns:
        None when there is no route to it (the network is unreachable).

    Raises:
        NetconfError: the lookup failed for another reason.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    with _netlink(f"look up the route to {destination}") as ipr:
        try:
            routes = ipr.route("get", dst=destination)
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                return None
            raise
        return _route_mtu(ipr, routes[0]) if routes else None


def route_link(destination: str) -> str | None:
    """The link a packet to *destination* leaves by, as ``ip route get DESTINATION`` shows it.

    Returns:
        Its name, or None when no route leaves by a link (unreachable, a blackhole).

    Raises:
        NetconfError: the lookup failed for another reason.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    with _netlink(f"look up the route to {destination}") as ipr:
        try:
            routes = ipr.route("get", dst=destination)
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                return None
            raise
        index = routes[0].get_attr("RTA_OIF") if routes else None
        if index is None:
            return None
        (link,) = ipr.get_links(index)
        return str(link.get("IFLA_IFNAME"))


def default_route_mtu() -> int | None:
    """The MTU of the IPv4 default route (``ip route show default``, then its link); or None."""
    with _netlink("look up the default route") as ipr:
        routes = ipr.get_default_routes(family=socket.AF_INET)
        return _route_mtu(ipr, routes[0]) if routes else None


def _route_mtu(ipr: Any, route: Any) -> int | None:
    metrics = route.get_attr("RTA_METRICS")
    if metrics is not None and metrics.get_attr("RTAX_MTU"):
        return int(metrics.get_attr("RTAX_MTU"))
    index = route.get_attr("RTA_OIF")
    if index is None:
        return None  # a blackhole or unreachable route
    (link,) = ipr.get_links(index)
    return int(link.get("IFLA_MTU"))


def set_link_up(name: str, up: bool = True) -> None:
    """Bring *name* up (or down, with ``up=False``), like ``ip link set NAME up``.

    Raises:
        NetconfPermissionError: no CAP_NET_ADMIN.
        NetconfError: no such link.
    """
    word = "up" if up else "down"
    with _netlink(f"set {name} {word}") as ipr:
        ipr.link("set", index=_index(ipr, name), state=word)


def set_mtu(name: str, mtu: int) -> None:
    """Set the MTU of *name*, like ``ip link set NAME mtu MTU``.

    Raises:
        NetconfPermissionError: no CAP_NET_ADMIN.
        NetconfError: no such link, or the kernel refused the value (TUN allows 68..65535;
            IPv6 needs at least 1280).
    """
    from pyroute2.netlink.exceptions import NetlinkError

    with _netlink(f"set the MTU of {name} to {mtu}") as ipr:
        try:
            ipr.link("set", index=_index(ipr, name), mtu=mtu)
        except NetlinkError as exc:
            if exc.code != errno.EINVAL:
                raise
            raise NetconfError(
                f"cannot set the MTU of {name} to {mtu}: the kernel refused the value "
                "(TUN/TAP links accept 68 to 65535)"
            ) from None


def add_veth(name: str, peer: str, *, peer_namespace: int | None = None) -> None:
    """Create a veth pair, *name* and its other end *peer*, like ``ip link add NAME type veth
    peer name PEER [netns NS]``.

    A veth pair is a virtual cable: what is sent into one end comes out of the other.  With
    *peer_namespace* (an open network namespace file: ``/run/netns/NAME``, or
    ``/proc/PID/ns/net``) the other end is made straight in that namespace and never appears in
    this one.  Both ends start down, without addresses.

    Raises:
        NetconfPermissionError: no CAP_NET_ADMIN.
        NetconfError: a link of either name exists, or the kernel refused.
    """
    peer_spec: dict[str, object] = {"ifname": peer}
    if peer_namespace is not None:
        peer_spec["net_ns_fd"] = peer_namespace
    with _netlink(f"create the veth pair {name}, {peer}") as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=peer_spec)


def set_gso_max_size(name: str, size: int) -> None:
    """Set the largest segmentation-offload packet the stack builds for *name* (IFLA_GSO_MAX_SIZE).

    With offloads on a TUN device (IFF_VNET_HDR + TUNSETOFFLOAD), the kernel hands over TCP
    "super-packets" up to this size for the program to segment, or keep whole.

    Raises:
        NetconfPermissionError: no CAP_NET_ADMIN.
        NetconfError: no such link, or the kernel refused the value.
    """
    with _netlink(f"set the GSO maximum size of {name} to {size}") as ipr:
        ipr.link("set", index=_index(ipr, name), gso_max_size=size)


def _format(address: str, prefixlen: int) -> str:
    return f"{ipaddress.ip_address(address)}/{prefixlen}"


def _dump_addresses(ipr: Any, **match: int) -> dict[int, list[str]]:
    """CIDR strings by interface index, IPv4 before IPv6, kernel order within a family."""
    found: dict[int, list[tuple[int, str]]] = {}
    for msg in ipr.get_addr(**match):
        # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
        # links configured with "peer".  Without a peer both are the same.
        address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        if address is None:
            continue
        family = int(msg["family"])
        found.setdefault(int(msg["index"]), []).append(
            (0 if family == socket.AF_INET else 1, _format(address, int(msg["prefixlen"])))
        )
    return {
        index: [text for _, text in sorted(items, key=lambda item: item[0])]
        for index, items in found.items()
    }


def addresses(name: str) -> list[str]:
    """The IP addresses of *name* as CIDR strings ("10.9.0.1/24", "fe80::.../64").

    Raises:
        NetconfError: no such link.
    """
    return _addresses_of(name)


def _addresses_of(name: str) -> list[str]:
    # configure_link() has a parameter called "addresses", hence this second name.
    with _netlink(f"read the addresses of {name}") as ipr:
        index = _index(ipr, name)
        return _dump_addresses(ipr, index=index).get(index, [])


def addresses_by_index() -> dict[int, list[str]]:
    """The IP addresses of every link, by interface index (one netlink dump)."""
    with _netlink("read addresses") as ipr:
        return _dump_addresses(ipr)


def add_address(name: str, cidr: str) -> None:
    """Add an address like ``10.9.0.1/24`` or ``fd00:9::1/64`` to *name*.

    IPv6 addresses are added with IFA_F_NODAD, so they are usable at once.  An address that
    is already there is not an error.

    Raises:
        NetconfError: *cidr* is not ADDR/PREFIX, or no such link.
        NetconfPermissionError: no CAP_NET_ADMIN.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    interface = parse_interface(cidr)
    extra = {"flags": IFA_F_NODAD} if interface.version == 6 else {}
    with _netlink(f"add address {interface} to {name}") as ipr:
        try:
            ipr.addr(
                "add",
                index=_index(ipr, name),
                address=str(interface.ip),
                prefixlen=interface.network.prefixlen,
                **extra,
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


def del_address(name: str, cidr: str, *, missing_ok: bool = False) -> None:
    """Remove an address from *name*.

    Raises:
        NetconfError: bad *cidr*, no such link, or (unless *missing_ok*) no such address.
        NetconfPermissionError: no CAP_NET_ADMIN.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    interface = parse_interface(cidr)
    with _netlink(f"remove address {interface} from {name}") as ipr:
        try:
            ipr.addr(
                "del",
                index=_index(ipr, name),
                address=str(interface.ip),
                prefixlen=interface.network.prefixlen,
            )
        except NetlinkError as exc:
            if not (missing_ok and exc.code == errno.EADDRNOTAVAIL):
                raise


def _route_spec(network: IPNetwork, index: int, table: int | None) -> dict[str, object]:
    spec: dict[str, object] = {
        "dst": str(network.network_address),
        "dst_len": network.prefixlen,
        "oif": index,
        "family": socket.AF_INET if network.version == 4 else socket.AF_INET6,
    }
    if table is not None:
        spec["table"] = table
    return spec


def _has_route(ipr: Any, network: IPNetwork, index: int, table: int | None) -> bool:
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    for route in ipr.get_routes(family=family, table=table or _RT_TABLE_MAIN):
        dst = route.get("RTA_DST")
        if (
            route["dst_len"] == network.prefixlen
            and (dst is None or ipaddress.ip_address(dst) == network.network_address)
            and route.get("RTA_OIF") == index
        ):
            return True
    return False


def add_route(name: str, cidr: str, table: int | None = None) -> None:
    """Route *cidr* (e.g. ``10.10.0.0/16``) into *name*, like ``ip route add CIDR dev NAME``.

    The same route through the same link already being there is not an error; a route to the
    same destination through another link is.

    Args:
        name: the link.
        cidr: destination network.
        table: routing table number; None for the main table.

    Raises:
        NetconfError: bad *cidr*, no such link, or a conflicting route exists.
        NetconfPermissionError: no CAP_NET_ADMIN.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    network = parse_network(cidr)
    where = f" in table {table}" if table is not None else ""
    with _netlink(f"add route {network} via {name}{where}") as ipr:
        index = _index(ipr, name)
        try:
            ipr.route("add", **_route_spec(network, index, table))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            if not _has_route(ipr, network, index, table):
                raise NetconfError(
                    f"cannot add route {network} via {name}{where}: a route to {network} "
                    "through another device already exists"
                ) from None


def del_route(name: str, cidr: str, table: int | None = None, *, missing_ok: bool = False) -> None:
    """Remove the route to *cidr* through *name*.

    Raises:
        NetconfError: bad *cidr*, no such link, or (unless *missing_ok*) no such route.
        NetconfPermissionError: no CAP_NET_ADMIN.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    network = parse_network(cidr)
    where = f" in table {table}" if table is not None else ""
    with _netlink(f"delete route {network} via {name}{where}") as ipr:
        try:
            ipr.route("del", **_route_spec(network, _index(ipr, name), table))
        except NetlinkError as exc:
            if not (missing_ok and exc.code == errno.ESRCH):
                raise


def configure_link(
    name: str,
    *,
    addresses: Iterable[str] = (),
    mtu: int | None = None,
    up: bool | None = None,
    routes: Iterable[str] = (),
    unprivileged_ok: bool = False,
) -> bool:
    """Make *name* look as asked, changing only what differs.

    Reading needs no privilege, so a link that root already configured (``minivpn tun add
    t0 --user alice --address ... --up``) passes without a single change, and its unprivileged
    owner can run the same command that configures it.

    Args:
        name: the link.
        addresses: CIDR strings that must be present (others are left alone).
        mtu: the MTU, or None to leave it.
        up: True/False to bring the link up/down, None to leave it.
        routes: destination networks to route into the link (main table).
        unprivileged_ok: when a change is refused for lack of CAP_NET_ADMIN, log a warning and
            return False instead of raising (an owner attaching without privileges).

    Returns:
        True if the link is configured as asked, False if the kernel refused and
        *unprivileged_ok* allowed going on without it.

    Raises:
        NetconfError: bad arguments or no such link.
        NetconfPermissionError: a change needed CAP_NET_ADMIN and *unprivileged_ok* is False.
    """
    wanted = [parse_interface(text) for text in addresses]
    wanted_routes = [parse_network(text) for text in routes]
    try:
        present = {parse_interface(text) for text in _addresses_of(name)}
        for interface in wanted:
            if interface not in present:
                add_address(name, str(interface))
        state = link_state(name)
        if mtu is not None and state.mtu != mtu:
            set_mtu(name, mtu)
        if up is not None and state.up != up:
            set_link_up(name, up)
        for network in wanted_routes:
            with _netlink(f"read routes of {name}") as ipr:
                present_route = _has_route(ipr, network, state.index, None)
            if not present_route:
                add_route(name, str(network))
    except NetconfPermissionError as exc:
        if not unprivileged_ok:
            raise
        log.warning(
            "%s; going on attach-only, without configuring %s (root can configure it once: "
            "'minivpn tun add %s ... --address CIDR --up', see docs/privileges.md)",
            exc,
            name,
            name,
        )
        return False
    return True


# --- layer 2: bridges and neighbours (minivpn demo --tap) ---------------------------------------


def add_bridge(name: str) -> None:
    """Create a Linux bridge *name* (down), like ``ip link add NAME type bridge``.

    Raises:
        NetconfPermissionError: no CAP_NET_ADMIN.
        NetconfError: a link of that name exists, or the kernel refused.
    """
    with _netlink(f"create the bridge {name}") as ipr:
        ipr.link("add", ifname=name, kind="bridge")


def set_master(name: str, master: str) -> None:
    """Make *name* a port of the bridge *master*, like ``ip link set NAME master MASTER``.

    Raises:
        NetconfPermissionError: no CAP_NET_ADMIN.
        NetconfError: no such link, or the kernel refused.
    """
    with _netlink(f"put {name} into the bridge {master}") as ipr:
        ipr.link("set", index=_index(ipr, name), master=_index(ipr, master))


def link_mac(name: str) -> str:
    """The MAC address of *name*, ``02:00:5e:10:00:01``, as ``ip link`` shows it.

    Raises:
        NetconfError: no such link.
    """
    with _netlink(f"read the MAC address of {name}") as ipr:
        (link,) = ipr.get_links(_index(ipr, name))
        return str(link.get_attr("IFLA_ADDRESS"))


def neighbour_mac(address: str) -> str | None:
    """The MAC address the neighbour table (ARP, IPv6 ND) holds for *address*, or None:
    what ``ip neigh show ADDRESS`` prints after ``lladdr``."""
    with _netlink(f"read the neighbour table for {address}") as ipr:
        for entry in ipr.get_neighbours(dst=address):
            mac = entry.get_attr("NDA_LLADDR")
            if mac:
                return str(mac)
    return None
