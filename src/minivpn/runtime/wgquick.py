"""wg-quick's rules, which ``minivpn up`` follows: config location, routes, tables, MTU, endpoints.

``minivpn up CONF`` does what ``wg-quick up CONF`` does with a userspace implementation, and
takes its rules from wg-quick (``src/wg-quick/linux.bash`` in wireguard-tools):

* where the configuration is and what the interface is called (:func:`locate_config`,
  :func:`interface_name_of`, :func:`check_interface_name`): ``wg0`` means
  ``/etc/wireguard/wg0.conf``, ``./wg0.conf`` makes ``wg0``;
* which routes the peers' AllowedIPs need, in which table (:func:`plan_routes`,
  :func:`resolve_table`), and the keys it reads but does not act upon (:func:`ignored_keys`);
* the peers' endpoint host names, resolved once (:func:`resolve_endpoints`);
* the MTU when the file sets none (:func:`wg_quick_mtu`), and the link set up with it, the
  addresses and the routes (:func:`apply_link_settings`), through netlink, in a short-lived
  child process (:func:`~minivpn.runtime.process.run_in_child`) so that pyroute2 never loads into
  the interface's long-lived process.

``minivpnd`` follows none of this (it is configured with ``wg`` alone) and never imports this
module.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from minivpn.runtime.interface import InterfaceError
from minivpn.runtime.process import run_in_child
from minivpn.wireguard.keys import redacted

if TYPE_CHECKING:
    from collections.abc import Sequence

    from minivpn.wireguard.config import Config
    from minivpn.wireguard.keys import PublicKey

__all__ = [
    "CONFIG_DIR",
    "WG_QUICK_OVERHEAD",
    "RoutePlan",
    "apply_link_settings",
    "check_interface_name",
    "ignored_keys",
    "interface_name_of",
    "locate_config",
    "plan_routes",
    "resolve_endpoints",
    "resolve_table",
    "wg_quick_mtu",
]

log = logging.getLogger("minivpn.wgquick")

#: Where a bare interface name's configuration lives, as for wg-quick.
CONFIG_DIR = Path("/etc/wireguard")


#: The interface names wg-quick accepts (``src/wg-quick/linux.bash``): shorter than IFNAMSIZ and
#: made of characters that are safe in file names and shell words.
INTERFACE_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")


#: Routing table names every iproute2 knows, and the files that may name more.
_BUILTIN_TABLES = {"unspec": 0, "default": 253, "main": 254, "local": 255}


_RT_TABLES_FILES = (Path("/etc/iproute2/rt_tables"), Path("/usr/share/iproute2/rt_tables"))


_RT_TABLES_DIRS = (Path("/etc/iproute2/rt_tables.d"), Path("/usr/share/iproute2/rt_tables.d"))


# --- names and files ------------------------------------------------------------------------------


def check_interface_name(name: str) -> str:
    """Return *name* if wg-quick would accept it as an interface name.

    Raises:
        InterfaceError: it is longer than 15 characters, has characters other than
            letters, digits and ``_=+.-``, or is ``.`` or ``..`` (which the kernel refuses).
    """
    if INTERFACE_NAME.fullmatch(name) is None or name in (".", ".."):
        raise InterfaceError(
            f"invalid interface name {name!r}: use 1 to 15 letters, digits or _=+.- "
            "(the configuration file is named after the interface: wg0.conf)"
        )
    return name


def locate_config(argument: str, config_dir: Path = CONFIG_DIR) -> tuple[Path, str]:
    """Find the configuration file and interface name that ``minivpn up ARGUMENT`` means.

    A bare name (no ``/``, not ending in ``.conf``) means ``CONFIG_DIR/NAME.conf``; anything
    else is a path.  Either way the interface is named after the file: ``wg0.conf`` makes
    ``wg0``.  (wg-quick treats ``wg0.conf`` without a ``/`` as a name too and then looks for
    ``/etc/wireguard/wg0.conf.conf``; minivpn takes it as the path it obviously is.)

    Returns:
        ``(path, interface name)``.

    Raises:
        InterfaceError: the file's stem is not a valid interface name, or it does not end in
            ``.conf``.
    """
    if "/" not in argument and not argument.endswith(".conf"):
        return config_dir / f"{check_interface_name(argument)}.conf", argument
    path = Path(argument)
    if path.suffix != ".conf":
        raise InterfaceError(
            f"{argument}: the configuration file must be named after the interface, "
            "followed by .conf (like wg0.conf)"
        )
    return path, check_interface_name(path.stem)


def interface_name_of(argument: str) -> str:
    """The interface that ``minivpn down ARGUMENT`` means: a name, or a config file's stem.

    Raises:
        InterfaceError: not a valid interface name.
    """
    if "/" in argument or argument.endswith(".conf"):
        return check_interface_name(Path(argument).stem)
    return check_interface_name(argument)


# --- what the configuration asks of the host ------------------------------------------------------

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class RoutePlan:
    """The routes ``minivpn up`` adds for a configuration, following wg-quick.

    Attributes:
        table: the routing table (None: the main table).
        routes: destinations to route into the interface, IPv4 first, then the most
            specific first within a family (as wg-quick adds them); empty with ``Table = off``.
    """

    table: int | None
    routes: tuple[IPNetwork, ...]


def resolve_table(text: str) -> int:
    """The number of routing table *text*: a number, or a name from iproute2's ``rt_tables``.

    Raises:
        InterfaceError: an unknown name.
    """
    if text.isdecimal():
        return int(text)
    if text in _BUILTIN_TABLES:
        return _BUILTIN_TABLES[text]
    files = list(_RT_TABLES_FILES)
    for directory in _RT_TABLES_DIRS:
        with contextlib.suppress(OSError):
            files += sorted(directory.glob("*.conf"))
    for path in files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) == 2 and fields[1] == text and fields[0].isdecimal():
                return int(fields[0])
    raise InterfaceError(
        f"unknown routing table {text!r}: use a number, or a name from /etc/iproute2/rt_tables"
    )


def plan_routes(config: Config, filename: str, name: str) -> RoutePlan:
    """Decide which routes to add for the peers' AllowedIPs, as wg-quick does.

    * ``Table = off``: none.
    * ``Table = N`` (a number or name): every AllowedIPs prefix, in table N.
    * ``Table = auto`` or no ``Table``: every prefix in the main table, except those already
      covered by a prefix of the interface's own addresses (the kernel routes those).

    A default route (``0.0.0.0/0`` or ``::/0``) in the main table would also catch the
    tunnel's own UDP packets to the peer.  wg-quick avoids that loop with policy routing: a
    firewall mark on the tunnel's socket, a separate table and two ``ip rule``\\ s, left behind
    if the process is killed.  ``minivpn up`` does not do that; it refuses such a
    configuration and says what to do instead.

    Raises:
        InterfaceError: a ``/0`` prefix with automatic routing, or an unknown table name.
    """
    table_text = config.interface.table
    if table_text == "off":
        return RoutePlan(None, ())
    prefixes = sorted(
        {network for peer in config.peers for network in peer.allowed_ips},
        key=lambda network: (network.version, -network.prefixlen, network.network_address),
    )
    if table_text not in (None, "auto"):
        return RoutePlan(resolve_table(table_text), tuple(prefixes))
    for network in prefixes:
        if network.prefixlen == 0:
            raise InterfaceError(
                f"{filename}: AllowedIPs {network} would route all traffic into {name}, "
                "including the tunnel's own packets; wg-quick prevents that loop with fwmark "
                "policy routing, which minivpn up does not set up. Add 'Table = off' to "
                "[Interface] and route yourself, use 'Table = NUMBER', or list narrower "
                "prefixes (0.0.0.0/1 and 128.0.0.0/1 plus a host route to the endpoint)"
            )
    own = [address.network for address in config.interface.addresses]
    return RoutePlan(None, tuple(network for network in prefixes if not _covered_by(network, own)))


def _covered_by(network: IPNetwork, prefixes: list[IPNetwork]) -> bool:
    """Whether *network* lies inside one of *prefixes* (of the same IP version)."""
    for prefix in prefixes:
        if isinstance(network, ipaddress.IPv4Network) and isinstance(prefix, ipaddress.IPv4Network):
            if network.subnet_of(prefix):
                return True
        elif (
            isinstance(network, ipaddress.IPv6Network)
            and isinstance(prefix, ipaddress.IPv6Network)
            and network.subnet_of(prefix)
        ):
            return True
    return False


def ignored_keys(config: Config) -> list[str]:
    """The wg-quick keys in *config* that ``minivpn up`` reads but does not act upon.

    ``DNS`` would rewrite the host's resolver configuration and the hooks are shell commands;
    minivpn's product code runs no commands, so both are left to the user.  ``SaveConfig``
    would write the running configuration back into the file.
    """
    interface = config.interface
    present = {
        "DNS": bool(interface.dns or interface.dns_search),
        "PreUp": bool(interface.pre_up),
        "PostUp": bool(interface.post_up),
        "PreDown": bool(interface.pre_down),
        "PostDown": bool(interface.post_down),
        "SaveConfig": interface.save_config,
    }
    return [key for key, there in present.items() if there]


def resolve_endpoints(config: Config, filename: str) -> dict[PublicKey, tuple[str, int]]:
    """Look up the peers' endpoints that are host names, as ``wg`` does: the first address.

    Endpoints given as IP addresses are left to the core.

    Returns:
        ``{peer public key: (IP address, port)}`` for the peers with a host name.

    Raises:
        InterfaceError: a name does not resolve.
    """
    resolved: dict[PublicKey, tuple[str, int]] = {}
    for peer in config.peers:
        endpoint = peer.endpoint
        if endpoint is None or endpoint.ip is not None:
            continue
        try:
            results = socket.getaddrinfo(
                endpoint.host, endpoint.port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
            )
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) else "invalid name"
            raise InterfaceError(
                f"{filename}: cannot resolve {redacted(endpoint.host)}, the endpoint of peer "
                f"{peer.public_key.to_base64()}: {reason}"
            ) from None
        for family, _, _, _, address in results:
            if family in (socket.AF_INET, socket.AF_INET6):
                resolved[peer.public_key] = (str(address[0]), endpoint.port)
                break
        else:
            raise InterfaceError(
                f"{filename}: {redacted(endpoint.host)}, the endpoint of peer "
                f"{peer.public_key.to_base64()}, has no IPv4 or IPv6 address"
            )
    return resolved


# --- the link: MTU, addresses, routes -------------------------------------------------------------


def apply_link_settings(
    name: str,
    *,
    mtu: int | None,
    endpoints: Sequence[str] = (),
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = (),
    routes: RoutePlan | None = None,
    overhead: int = 0,
) -> None:
    """Set the MTU, add the addresses, bring the link up and add the routes (in that order).

    Routes come last because the kernel refuses a route through a link that is down.  This
    looks the link up by name, so it must run before the device can be moved to another
    namespace: right after :func:`~minivpn.runtime.interface.open_interface`.

    The netlink work runs in a short-lived child process
    (:func:`~minivpn.runtime.process.run_in_child`): pyroute2
    takes ~12 MiB once imported, which the interface's long-lived process would keep for good.

    Args:
        name: the link.
        mtu: the MTU; None picks it as wg-quick does (:func:`wg_quick_mtu`), from the routes
            to *endpoints*, the peers' endpoint addresses.
        endpoints: see *mtu*.
        addresses: the interface's addresses.
        routes: the routes for the peers' allowed IPs, if any.
        overhead: bytes to take off the MTU wg-quick would choose, beyond its 80: 16 for a TAP
            device (``Mode = tap``: the Ethernet header and minivpn's frame header,
            :data:`~minivpn.wireguard.ethernet.TAP_OVERHEAD`), so that a whole frame fits one
            datagram.

    Raises:
        MinivpnError: the kernel refused something (the message says what).
    """

    def configure() -> None:
        from minivpn import netconf  # only ever imported in the child

        netconf.set_mtu(name, mtu if mtu is not None else wg_quick_mtu(endpoints) - overhead)
        for address in addresses:
            netconf.add_address(name, str(address))
        netconf.set_link_up(name)
        if routes is not None:
            for network in routes.routes:
                netconf.add_route(name, str(network), routes.table)
                log.debug("route %s via %s%s", network, name, _in_table(routes.table))

    run_in_child(configure)


#: What WireGuard adds to a packet over IPv6, the larger case: IPv6 40 + UDP 8 + WireGuard's
#: header 16 and tag 16.  1500 - 80 = 1420, the usual MTU.
WG_QUICK_OVERHEAD = 80


def wg_quick_mtu(endpoints: Sequence[str]) -> int:
    """The MTU wg-quick gives an interface whose configuration sets none.

    The largest MTU on the way to any of the peers' *endpoints* (the route's own, or the MTU
    of the link it leaves by, as ``ip route get`` shows); without endpoints or routes to
    them, that of the default route; without one, 1500 -- minus :data:`WG_QUICK_OVERHEAD`.
    So a path of 1500 bytes gives 1420 and a 1280-byte underlay gives 1200, instead of
    datagrams too big for the path (the most common WireGuard complaint).
    """
    from minivpn import netconf

    largest = max((netconf.path_mtu(address) or 0 for address in endpoints), default=0)
    if largest == 0:
        largest = netconf.default_route_mtu() or 1500
    return largest - WG_QUICK_OVERHEAD


def _in_table(table: int | None) -> str:
    return "" if table is None else f" in table {table}"
