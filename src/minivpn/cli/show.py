"""``minivpn show``: the state of running WireGuard interfaces, read over UAPI, without ``wg``.

The text output is the one ``wg show`` prints (wireguard-tools ``show.c``, without colours), so
what people know from ``wg`` reads the same here::

    interface: wg0
      public key: 6b2k...=
      private key: (hidden)
      listening port: 51820

    peer: Qz7y...=
      preshared key: (hidden)
      endpoint: 198.51.100.2:51820
      allowed ips: 10.0.0.2/32, fd00::2/128
      latest handshake: 1 minute, 5 seconds ago
      transfer: 1.46 KiB received, 2.02 KiB sent
      persistent keepalive: every 25 seconds

Peers come most recent handshake first, as in ``wg show``.  The private key and the preshared
keys are never printed: the daemon sends them (the protocol has no other way), and this command
drops them.

``--json`` prints, for one interface, an object; without NAME, a list of such objects sorted by
name.  Its shape is stable::

    {
      "name": "wg0",
      "public_key": "<base64>" | null,          # null: no private key set
      "listen_port": 51820,                     # 0: not listening
      "fwmark": 4660 | null,                    # null: off
      "peers": [                                # the order of the text output
        {
          "public_key": "<base64>",
          "has_preshared_key": true,
          "endpoint": "198.51.100.2:51820" | null,
          "allowed_ips": ["10.0.0.2/32", "fd00::2/128"],
          "latest_handshake": 1700000000 | null,  # Unix time in seconds; null: never
          "rx_bytes": 1495,
          "tx_bytes": 2068,
          "persistent_keepalive": 25 | null       # seconds; null: off
        }
      ]
    }

Addresses are written as ``wg`` writes them (the C library's ``inet_ntop``), so the values
equal those of ``wg show NAME dump``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minivpn.wireguard.uapi import DeviceSnapshot, PeerSnapshot

__all__ = ["device_json", "format_device", "register", "run"]

DESCRIPTION = """\
Show the running WireGuard interfaces of minivpn (or of any userspace WireGuard, such as
wireguard-go), as `wg show` does, by talking to their control sockets in /var/run/wireguard.
Reading an interface needs the socket owner's rights (normally root).
Private and preshared keys are never shown.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``show`` sub-command."""
    p = subparsers.add_parser(
        "show",
        help="show WireGuard interfaces (like `wg show`), without private keys",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="the interface (default: all of them)")
    p.add_argument("--json", action="store_true", help="print JSON (the shape is documented)")
    p.add_argument(
        "--socket-dir",
        metavar="DIR",
        help="where the sockets are (default: $MINIVPN_SOCKET_DIR, else /var/run/wireguard)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one interface, or every interface with a socket; return the exit status."""
    from minivpn.runtime.uapi_client import UapiClientError, get_device, list_interfaces

    if args.name is not None:
        snapshot = get_device(args.name, args.socket_dir)
        if args.json:
            print(json.dumps(device_json(args.name, snapshot), indent=2))
        else:
            print(format_device(args.name, snapshot, int(time.time())), end="")
        return 0

    status = 0
    shown: list[tuple[str, DeviceSnapshot]] = []
    for name in list_interfaces(args.socket_dir):
        try:
            shown.append((name, get_device(name, args.socket_dir)))
        except UapiClientError as exc:
            print(f"minivpn: cannot show interface {name}: {exc}", file=sys.stderr)
            status = 1
    if args.json:
        print(json.dumps([device_json(name, snapshot) for name, snapshot in shown], indent=2))
    else:
        now = int(time.time())
        print("\n".join(format_device(name, snapshot, now) for name, snapshot in shown), end="")
    return status


# --- text -----------------------------------------------------------------------------------------


def format_device(name: str, snapshot: DeviceSnapshot, now: int) -> str:
    """The ``wg show NAME`` text for *snapshot*, every line ending in a newline.

    Args:
        name: the interface name.
        snapshot: its state, as :func:`~minivpn.runtime.uapi_client.get_device` returns it.
        now: the current Unix time in seconds, for "N seconds ago".
    """
    lines = [f"interface: {name}"]
    key = snapshot.private_key
    if key is not None and not key.is_zero():
        lines.append(f"  public key: {key.public_key().to_base64()}")
        lines.append("  private key: (hidden)")
    if snapshot.listen_port:
        lines.append(f"  listening port: {snapshot.listen_port}")
    if snapshot.fwmark:
        lines.append(f"  fwmark: {snapshot.fwmark:#x}")
    for peer in _sorted_peers(snapshot):
        lines.append("")
        lines.append(f"peer: {peer.public_key.to_base64()}")
        if peer.preshared_key is not None and not peer.preshared_key.is_zero():
            lines.append("  preshared key: (hidden)")
        if peer.endpoint is not None:
            lines.append(f"  endpoint: {wg_endpoint(peer.endpoint)}")
        allowed = ", ".join(wg_prefix(prefix) for prefix in peer.allowed_ips)
        lines.append(f"  allowed ips: {allowed or '(none)'}")
        if peer.last_handshake_time_sec:
            lines.append(f"  latest handshake: {_ago(peer.last_handshake_time_sec, now)}")
        if peer.rx_bytes or peer.tx_bytes:
            received, sent = _size(peer.rx_bytes), _size(peer.tx_bytes)
            lines.append(f"  transfer: {received} received, {sent} sent")
        if peer.persistent_keepalive_interval:
            interval = _duration(peer.persistent_keepalive_interval)
            lines.append(f"  persistent keepalive: every {interval}")
    return "\n".join(lines) + "\n"


def _sorted_peers(snapshot: DeviceSnapshot) -> list[PeerSnapshot]:
    """Most recent handshake first; peers that never shook hands last, in the daemon's order."""

    def newest_first(peer: PeerSnapshot) -> tuple[bool, int, int]:
        never = not (peer.last_handshake_time_sec or peer.last_handshake_time_nsec)
        return never, -peer.last_handshake_time_sec, -peer.last_handshake_time_nsec

    return sorted(snapshot.peers, key=newest_first)  # sorted() is stable


def _duration(seconds: int) -> str:
    """``wg``'s way of writing a duration: ``1 year, 2 days, 1 minute, 5 seconds``."""
    parts = []
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    if seconds:
        parts.append(f"{seconds} second{'' if seconds == 1 else 's'}")
    return ", ".join(parts)


def _ago(then: int, now: int) -> str:
    if then == now:
        return "Now"
    if then > now:
        return "(System clock wound backward; connection problems may ensue.)"
    return f"{_duration(now - then)} ago"


def _size(count: int) -> str:
    """Bytes as ``wg`` writes them: ``512 B``, ``1.50 KiB``, ... up to TiB."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.2f} {unit}"
    return f"{value / 1024:.2f} TiB"


# --- addresses as wg writes them ------------------------------------------------------------------


def _c_address(text: str) -> str | None:
    """An IP address rewritten by the C library's ``inet_ntop``, as ``wg`` prints addresses.

    The daemon writes addresses Go's way, which differs in corner cases (``::1.2.3.4`` is
    ``::102:304`` in Go); ``socket.inet_ntop`` *is* the C library's function.  None if *text*
    is not an address.
    """
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        return None


def wg_prefix(prefix: str) -> str:
    """An allowed-IP prefix as ``wg`` prints it (``10.0.0.0/24``, ``fd00::/64``)."""
    address, slash, bits = prefix.partition("/")
    rewritten = _c_address(address)
    return f"{rewritten}{slash}{bits}" if rewritten is not None else prefix


def wg_endpoint(endpoint: str) -> str:
    """An endpoint as ``wg`` prints it: ``198.51.100.2:51820``, ``[fd00::2]:51820``."""
    host, colon, port = endpoint.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    address, percent, zone = host.partition("%")
    rewritten = _c_address(address)
    if not colon or rewritten is None:
        return endpoint
    host = f"{rewritten}{percent}{zone}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- JSON -----------------------------------------------------------------------------------------


def device_json(name: str, snapshot: DeviceSnapshot) -> dict[str, Any]:
    """The documented JSON object for one interface (no private or preshared key in it)."""
    key = snapshot.private_key
    public_key = key.public_key().to_base64() if key is not None and not key.is_zero() else None
    return {
        "name": name,
        "public_key": public_key,
        "listen_port": snapshot.listen_port,
        "fwmark": snapshot.fwmark or None,
        "peers": [
            {
                "public_key": peer.public_key.to_base64(),
                "has_preshared_key": peer.preshared_key is not None
                and not peer.preshared_key.is_zero(),
                "endpoint": wg_endpoint(peer.endpoint) if peer.endpoint is not None else None,
                "allowed_ips": [wg_prefix(prefix) for prefix in peer.allowed_ips],
                "latest_handshake": peer.last_handshake_time_sec or None,
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "persistent_keepalive": peer.persistent_keepalive_interval or None,
            }
            for peer in _sorted_peers(snapshot)
        ],
    }
