"""``minivpn doctor``'s reasoning: from an interface's state to what is wrong, in plain words.

:func:`gather` reads what the kernel says about the interface (its link, the route it takes
to each peer's allowed IPs, the path MTU towards each endpoint), through netlink;
:func:`diagnose` then compares that with the interface's own state, as its UAPI socket
reports it (with minivpn's counters when the daemon is minivpn), and returns the findings,
each with what to try.  The checks, in the order they are printed:

* the interface: no private key, no peers, the link down or missing here;
* each peer: its ``Mode`` not ours (``mode_mismatch``: IP packets to a tap interface, frames
  to a tun one); no handshake ever (the likely cause, :mod:`minivpn.wireguard.diagnosis`);
  handshakes but no data back; packets from it dropped for a source outside its allowed IPs;
  in ``Mode = tap``, frames from it dropped for a source MAC outside its ``AllowedMACs``;
* routes: an allowed-IPs prefix whose traffic the kernel sends out of another link;
* allowed IPs: a peer's prefix inside another peer's;
* MTU: the interface's MTU plus WireGuard's 60 (IPv4) or 80 (IPv6) bytes above the MTU of
  the path to an endpoint;
* the interface's drops that tell of someone else's mistake: handshakes made for another
  public key, initiations from keys that are no peers, packets with no route, datagrams too big.

``tests/netns/test_doctor.py`` breaks a namespace setup each of these ways and checks that the
finding appears.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING

import attrs

from minivpn.wireguard.diagnosis import handshake_failure_cause

if TYPE_CHECKING:
    from minivpn.netconf import LinkState
    from minivpn.wireguard.uapi import DeviceSnapshot, PeerSnapshot

__all__ = ["Facts", "Finding", "diagnose", "gather"]

#: Bytes WireGuard adds to a packet: outer IP header (20 or 40), UDP (8), its own 32.
OVERHEAD = {4: 60, 6: 80}
#: A handshake older than this means the session is gone (REJECT_AFTER_TIME), unless renewed.
SESSION_LIFETIME = 180


@attrs.frozen
class Finding:
    """One thing that is wrong.

    Attributes:
        subject: what it is about: the interface, or ``peer KEY``.
        problem: what is wrong, in plain words.
        advice: what to try.
    """

    subject: str
    problem: str
    advice: str


@attrs.frozen
class Facts:
    """What the kernel says about the interface (:func:`gather`).

    Attributes:
        link: the interface's link, or None if there is none in this network namespace.
        addresses: its own addresses (``10.0.0.1/24``).
        routes: for each allowed-IPs prefix checked, ``(address probed, link the route to it
            leaves by)``; the link is None when there is no route.
        paths: for each endpoint host, ``(link towards it, its MTU)``, either None if unknown.
    """

    link: LinkState | None
    addresses: tuple[str, ...] = ()
    routes: dict[str, tuple[str, str | None]] = attrs.field(factory=dict)
    paths: dict[str, tuple[str | None, int | None]] = attrs.field(factory=dict)


def _short(key: str) -> str:
    return f"{key[:8]}…"


def _host(endpoint: str) -> str:
    host = endpoint.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def _probe_address(prefix: str, own: set[str]) -> str | None:
    """An address inside *prefix* that is not one of ours, to ask the kernel's route for."""
    network = ipaddress.ip_network(prefix, strict=False)
    if network.prefixlen == 0:
        return None  # a default route through the tunnel needs policy routing: not judged here
    if network.num_addresses == 1:
        address = str(network.network_address)
        return None if address in own else address
    for offset in (1, 2, 3):
        if offset < network.num_addresses:
            address = str(network.network_address + offset)
            if address not in own:
                return address
    return None


def gather(name: str, snapshot: DeviceSnapshot) -> Facts:
    """Ask the kernel, through netlink, what :func:`diagnose` needs to know.

    Raises:
        NetconfError: netlink failed (not for a missing link or route: those are facts).
    """
    from minivpn.netconf import NetconfError, addresses, link_state, path_mtu, route_link

    try:
        link = link_state(name)
    except NetconfError:
        return Facts(link=None)
    own_cidrs = tuple(addresses(name))
    own = {cidr.partition("/")[0] for cidr in own_cidrs}
    routes: dict[str, tuple[str, str | None]] = {}
    paths: dict[str, tuple[str | None, int | None]] = {}
    for peer in snapshot.peers:
        for prefix in peer.allowed_ips:
            probe = _probe_address(prefix, own)
            if probe is not None:
                routes[prefix] = (probe, route_link(probe))
        if peer.endpoint is not None:
            host = _host(peer.endpoint).partition("%")[0]
            if host not in paths:
                paths[host] = (route_link(host), path_mtu(host))
    return Facts(link=link, addresses=own_cidrs, routes=routes, paths=paths)


def diagnose(
    name: str, snapshot: DeviceSnapshot, facts: Facts, now: float | None = None
) -> list[Finding]:
    """Everything that looks wrong with interface *name*, most basic first."""
    now = time.time() if now is None else now
    findings: list[Finding] = []
    key = snapshot.private_key
    own_key = key.public_key().to_base64() if key is not None and not key.is_zero() else None
    if own_key is None:
        findings.append(
            Finding(
                name,
                "it has no private key, so it can neither send nor answer a handshake",
                f"give it one: PrivateKey = in its [Interface], or wg set {name} private-key FILE",
            )
        )
    if not snapshot.peers:
        findings.append(
            Finding(name, "it has no peers", f"add one: a [Peer] section, or wg set {name} peer")
        )
    if facts.link is None:
        findings.append(
            Finding(
                name,
                "there is no link of that name in this network namespace",
                "run doctor in the namespace the link is in (ip netns exec NS minivpn doctor "
                f"{name}); the routes and MTU could not be checked",
            )
        )
    elif not facts.link.up:
        findings.append(
            Finding(name, "its link is down: nothing is routed into it", f"ip link set {name} up")
        )
    for peer in snapshot.peers:
        findings += _peer_findings(name, peer, own_key, now, snapshot.mode)
    findings += _route_findings(name, snapshot, facts)
    findings += _overlap_findings(snapshot)
    findings += _mtu_findings(name, snapshot, facts)
    findings += _device_drop_findings(name, snapshot, own_key)
    return findings


def _peer_findings(
    name: str, peer: PeerSnapshot, own_key: str | None, now: float, mode: str
) -> list[Finding]:
    subject = f"peer {_short(peer.public_key.to_base64())}"
    counters, drops = dict(peer.counters), dict(peer.drops)
    found: list[Finding] = []
    if drops.get("mode_mismatch"):  # first: it explains whatever else looks wrong with it
        found.append(_mode_mismatch(subject, drops["mode_mismatch"], mode))
    if not peer.last_handshake_time_sec:
        if counters and not counters.get("initiations_sent") and peer.endpoint is not None:
            found.append(
                Finding(
                    subject,
                    "no handshake yet, and none was tried: nothing was sent to it",
                    "send it something (ping an address in its allowed IPs); a handshake starts "
                    "with the first packet",
                )
            )
        else:
            cause = handshake_failure_cause(
                endpoint=peer.endpoint, drops=drops, counters=counters, own_public_key=own_key
            )
            found.append(
                Finding(
                    subject,
                    "no handshake has ever completed",
                    cause + f" (minivpn trace {name} --peer KEY shows every attempt)",
                )
            )
    elif counters:
        received, sent = counters.get("rx_data_bytes", 0), counters.get("tx_data_bytes", 0)
        if sent and not received:
            found.append(
                Finding(
                    subject,
                    f"handshakes complete and we sent it {sent} bytes of data, but no data came "
                    "back (only keepalives, if anything)",
                    "on the peer's side, check that its AllowedIPs for us hold our addresses "
                    "(else it drops what we send: disallowed_source in its minivpn show), and "
                    "that it routes its replies into its tunnel",
                )
            )
        age = now - peer.last_handshake_time_sec
        if age > SESSION_LIFETIME and sent:
            found.append(
                Finding(
                    subject,
                    f"the last handshake was {age:.0f} s ago, so the session has expired",
                    "nothing renewed it: see whether the peer still answers "
                    f"(minivpn trace {name} --peer KEY)",
                )
            )
    if drops.get("disallowed_source"):
        count = drops["disallowed_source"]
        found.append(
            Finding(
                subject,
                f"{count} packets from it were dropped: their source address is not in its "
                "allowed IPs here",
                "add the addresses it sends from to its AllowedIPs (or fix its address); "
                f"minivpn trace {name} --drops-only shows them",
            )
        )
    if drops.get("disallowed_mac"):
        count = drops["disallowed_mac"]
        found.append(
            Finding(
                subject,
                f"{count} frames from it were dropped: their source MAC address is not in its "
                "AllowedMACs here",
                "add the MAC addresses of the hosts behind it (or a prefix, such as their OUI: "
                "52:54:00:00:00:00/24) to its AllowedMACs in this interface's config; a host "
                "that moved away from the LAN behind it, or a forged address, is dropped on "
                f"purpose; minivpn trace {name} --drops-only shows them",
            )
        )
    return found


def _mode_mismatch(subject: str, count: int, mode: str) -> Finding:
    """Its messages carry what the other ``Mode`` carries: the two ends' modes differ."""
    if mode == "tap":
        return Finding(
            subject,
            f"{count} messages from it were dropped: they carry IP packets, but this interface "
            "is in Mode = tap (Ethernet frames, a minivpn extension): its Mode is not ours",
            "give both ends the same Mode: Mode = tap in its [Interface] too (it must be "
            "minivpn), or no Mode here (layer 3, with AllowedIPs for it)",
        )
    return Finding(
        subject,
        f"{count} messages from it were dropped: they carry Ethernet frames (it is minivpn in "
        "Mode = tap), but this interface carries IP packets: its Mode is not ours",
        "give both ends the same Mode: remove Mode = tap from its [Interface], or put "
        "Mode = tap in ours (layer 2, a minivpn extension: see docs/l2.md)",
    )


def _route_findings(name: str, snapshot: DeviceSnapshot, facts: Facts) -> list[Finding]:
    found: list[Finding] = []
    if facts.link is None:
        return found
    for peer in snapshot.peers:
        subject = f"peer {_short(peer.public_key.to_base64())}"
        for prefix in peer.allowed_ips:
            probe, link = facts.routes.get(prefix, (None, name))
            if probe is None or link == name:
                continue
            where = f"out of {link}" if link is not None else "nowhere (no route)"
            found.append(
                Finding(
                    subject,
                    f"traffic for its allowed IPs {prefix} (e.g. {probe}) goes {where}, not "
                    f"into {name}",
                    f"a route into {name} is missing, or a more specific route points "
                    f"elsewhere: ip route get {probe}; ip route add {prefix} dev {name}",
                )
            )
    return found


def _overlap_findings(snapshot: DeviceSnapshot) -> list[Finding]:
    owned = [
        (ipaddress.ip_network(prefix, strict=False), peer.public_key.to_base64())
        for peer in snapshot.peers
        for prefix in peer.allowed_ips
    ]
    found: list[Finding] = []
    for inner, inner_key in owned:
        for outer, outer_key in owned:
            if inner_key == outer_key or inner.version != outer.version or inner == outer:
                continue
            if inner.subnet_of(outer):  # type: ignore[arg-type]
                found.append(
                    Finding(
                        f"peer {_short(inner_key)}",
                        f"its allowed IPs {inner} lie inside {outer}, which belongs to peer "
                        f"{_short(outer_key)}: packets to {inner} go to it, the rest of "
                        f"{outer} to the other",
                        "if that is not what you meant, narrow one of them; WireGuard routes "
                        "by the longest prefix, and answers from an address of the wrong peer "
                        "are dropped",
                    )
                )
    return found


def _mtu_findings(name: str, snapshot: DeviceSnapshot, facts: Facts) -> list[Finding]:
    found: list[Finding] = []
    if facts.link is None:
        return found
    mtu = facts.link.mtu
    for host, (link, path) in facts.paths.items():
        if path is None:
            continue
        version = ipaddress.ip_address(host).version
        overhead = OVERHEAD[version]
        if mtu + overhead > path:
            via = f" of {link}" if link else ""
            found.append(
                Finding(
                    name,
                    f"its MTU {mtu} plus {overhead} bytes of WireGuard over IPv{version} is "
                    f"{mtu + overhead}, more than the MTU {path}{via} on the way to {host}: "
                    "full-size packets cannot get through",
                    f"lower it: MTU = {path - overhead} in [Interface], or ip link set {name} "
                    f"mtu {path - overhead}",
                )
            )
    drops = dict(snapshot.drops)
    if drops.get("packet_too_big") and not found:
        found.append(
            Finding(
                name,
                f"{drops['packet_too_big']} datagrams were too big for the path (EMSGSIZE)",
                f"lower the MTU of {name} (the path to a peer is narrower than it)",
            )
        )
    return found


def _device_drop_findings(
    name: str, snapshot: DeviceSnapshot, own_key: str | None
) -> list[Finding]:
    drops = dict(snapshot.drops)
    found: list[Finding] = []
    trace = f"minivpn trace {name} --drops-only shows where they come from"
    if drops.get("invalid_mac1"):
        found.append(
            Finding(
                name,
                f"{drops['invalid_mac1']} handshake messages were made for another public key "
                "than ours: someone has a wrong public key for us",
                f"give the peers our public key, {own_key}; {trace}",
            )
        )
    if drops.get("unknown_peer"):
        found.append(
            Finding(
                name,
                f"{drops['unknown_peer']} initiations came from public keys that are no peers "
                "here: a peer has our key, but we lack its own (or have a wrong one)",
                f"check the PublicKey of each [Peer]; {trace}, with the keys",
            )
        )
    if drops.get("no_route"):
        found.append(
            Finding(
                name,
                f"{drops['no_route']} packets routed into {name} had a destination in no "
                "peer's allowed IPs",
                f"add that destination to a peer's AllowedIPs, or route it elsewhere; {trace}",
            )
        )
    return found
