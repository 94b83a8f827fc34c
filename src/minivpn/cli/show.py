"""``minivpn show``: the state of running WireGuard interfaces, read over UAPI, without ``wg``.

The text output is the one ``wg show`` prints (wireguard-tools ``show.c``), so what people know
from ``wg`` reads the same here::

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

minivpn adds one line of its own, ``drops:``, to the interface and to each peer that dropped
anything: the count, then the counts by reason (``drops: 5 (no_route 3, unknown_peer 2)``).  It
appears only for a minivpn daemon that has dropped something (wireguard-go sends no such
counters), so for everything else the text is ``wg show``'s, byte for byte.

Peers come most recent handshake first, as in ``wg show``.  On a terminal the text has
``wg``'s colours, byte for byte (wireguard-tools ``terminal.h``: names bold, the interface
green, peers yellow, units cyan); not on a pipe or file, nor with ``NO_COLOR`` set (not empty).
``WG_COLOR_MODE=always`` or ``never`` decides as it does for ``wg``, over both.

``minivpn show NAME FIELD`` prints one field, tab-separated, byte for byte as ``wg show NAME
FIELD`` does: ``public-key``, ``listen-port``, ``fwmark``, ``peers``, ``endpoints``,
``allowed-ips``, ``latest-handshakes``, ``transfer``, ``persistent-keepalive`` (peers in the
daemon's order, not sorted, as in ``wg``).  ``minivpn show all FIELD`` prefixes each line with
the interface's name, and ``minivpn show interfaces`` lists the names, as ``wg`` does.

The private key and the preshared keys are never printed: the daemon sends them (the protocol
has no other way), and this command drops them.  So the fields ``private-key``,
``preshared-keys`` and ``dump``, whose ``wg`` output holds them, are refused with a pointer to
``wg show``, which prints them, and to ``--json``, which has everything else.

``--json`` prints, for one interface, an object; without NAME, a list of such objects sorted by
name.  Its shape is stable::

    {
      "name": "wg0",
      "public_key": "<base64>" | null,          # null: no private key set
      "listen_port": 51820,                     # 0: not listening
      "fwmark": 4660 | null,                    # null: off
      "drops": {"no_route": 3},                 # minivpn's drops by reason ({} otherwise)
      "peers": [                                # the order of the text output
        {
          "public_key": "<base64>",
          "has_preshared_key": true,
          "endpoint": "198.51.100.2:51820" | null,
          "allowed_ips": ["10.0.0.2/32", "fd00::2/128"],
          "latest_handshake": 1700000000 | null,  # Unix time in seconds; null: never
          "rx_bytes": 1495,
          "tx_bytes": 2068,
          "persistent_keepalive": 25 | null,      # seconds; null: off
          "drops": {"disallowed_source": 2},      # minivpn's drops for this peer ({} otherwise)
          "counters": {"initiations_sent": 1, ...}  # minivpn's other counters ({} otherwise):
                                                  # initiations_sent, initiations_received,
                                                  # responses_sent, responses_received,
                                                  # cookie_replies_received, keepalives_sent,
                                                  # keepalives_received, rx_data_bytes,
                                                  # tx_data_bytes
        }
      ]
    }

Addresses are written as ``wg`` writes them (the C library's ``inet_ntop``), so the values
equal those of ``wg show NAME dump``.

**A minivpn extension: layer 2.**  An interface in ``Mode = tap`` (docs/l2.md) also shows its
mode, each peer's ``AllowedMACs`` and the learning switch's MAC table, labelled as minivpn's
(``wg show`` prints none of it: it skips the UAPI keys it does not know)::

    interface: l2hub
      ...
      mode: tap (layer 2, a minivpn extension)

    peer: Qz7y...=
      ...
      allowed macs: 02:11:00:00:00:00/24

    mac table (minivpn extension, Mode = tap):
      02:11:00:00:00:b0  peer Qz7y...=  4 s
      02:44:00:00:00:01  this tap device  0 s

and in ``--json``, for such an interface only, three more keys: ``"mode": "tap"``, per peer
``"allowed_macs": ["02:11:00:00:00:00/24"]`` (empty: any source) and
``"mac_table": [{"mac": "02:11:00:00:00:b0", "peer": "<base64>" | null, "age": 4}]`` (``null``:
behind the interface's own TAP device; ``age`` in seconds since a frame from it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from minivpn.wireguard.uapi import DeviceSnapshot, PeerSnapshot

__all__ = [
    "FIELDS",
    "device_json",
    "format_device",
    "format_drops",
    "format_field",
    "register",
    "run",
    "use_color",
]

DESCRIPTION = """\
Show the running WireGuard interfaces of minivpn (or of any userspace WireGuard, such as
wireguard-go), as `wg show` does, by talking to their control sockets in /var/run/wireguard.
Reading an interface needs the socket owner's rights (normally root).
Private and preshared keys are never shown.

  minivpn show [NAME | all | interfaces] [FIELD]

FIELD prints one field as `wg show NAME FIELD` does: public-key, listen-port, fwmark, peers,
endpoints, allowed-ips, latest-handshakes, transfer, persistent-keepalive.  Colours on a
terminal, like wg; NO_COLOR=1 or WG_COLOR_MODE=never turns them off, WG_COLOR_MODE=always on.
"""

#: The fields of ``wg show NAME FIELD`` that hold no secret, in wg(8)'s order.
FIELDS = (
    "public-key",
    "listen-port",
    "fwmark",
    "peers",
    "endpoints",
    "allowed-ips",
    "latest-handshakes",
    "transfer",
    "persistent-keepalive",
)
#: wg's fields that print private or preshared keys: refused, with this advice.
SECRET_FIELDS = {
    "private-key": "the private key",
    "preshared-keys": "the preshared keys",
    "dump": "the private key and the preshared keys (--json has every other value)",
}

#: wg's escape sequences (wireguard-tools src/terminal.h).
_RESET, _BOLD = "\x1b[0m", "\x1b[1m"
_RED, _GREEN, _YELLOW, _CYAN = "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[36m"
#: What wg's filter_ansi() removes when colours are off: ESC [ up to the first letter.
_ESCAPE = re.compile(r"\x1b\[[^A-Za-z]*[A-Za-z]?")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``show`` sub-command."""
    p = subparsers.add_parser(
        "show",
        help="show WireGuard interfaces (like `wg show`), without private keys",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "name",
        metavar="NAME",
        nargs="?",
        help="the interface; 'all' (the default) or 'interfaces' (their names) as in wg",
    )
    p.add_argument(
        "field", metavar="FIELD", nargs="?", type=_field, help="print only this, as wg does"
    )
    p.add_argument("--json", action="store_true", help="print JSON (the shape is documented)")
    p.add_argument(
        "--socket-dir",
        metavar="DIR",
        help="where the sockets are (default: $MINIVPN_SOCKET_DIR, else /var/run/wireguard)",
    )
    p.set_defaults(func=run)


def _field(text: str) -> str:
    if text in SECRET_FIELDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: minivpn show never prints {SECRET_FIELDS[text]}; 'wg show NAME {text}' does"
        )
    if text not in FIELDS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(FIELDS)}")
    return text


def use_color(environ: Mapping[str, str], is_tty: bool) -> bool:
    """Whether to colour: ``WG_COLOR_MODE=always|never`` first, then ``NO_COLOR``, then a tty."""
    mode = environ.get("WG_COLOR_MODE")
    if mode in ("always", "never"):
        return mode == "always"
    if environ.get("NO_COLOR"):
        return False
    return is_tty


def run(args: argparse.Namespace) -> int:
    """Print one interface, or every interface with a socket; return the exit status."""
    from minivpn.runtime.uapi_client import UapiClientError, get_device, list_interfaces

    name: str | None = args.name
    if name == "all":
        name = None
    if name == "interfaces":
        if args.field is not None or args.json:
            raise UapiClientError("'minivpn show interfaces' takes no FIELD and no --json")
        names = list_interfaces(args.socket_dir)
        print(" ".join(names), end="\n" if names else "")
        return 0
    if args.json and args.field is not None:
        raise UapiClientError("--json prints every field; leave out FIELD")
    color = use_color(os.environ, sys.stdout.isatty())

    if name is not None:
        snapshot = get_device(name, args.socket_dir)
        if args.json:
            print(json.dumps(device_json(name, snapshot), indent=2))
        elif args.field is not None:
            print(format_field(snapshot, args.field), end="")
        else:
            print(format_device(name, snapshot, int(time.time()), color=color), end="")
        return 0

    status = 0
    shown: list[tuple[str, DeviceSnapshot]] = []
    for each in list_interfaces(args.socket_dir):
        try:
            shown.append((each, get_device(each, args.socket_dir)))
        except UapiClientError as exc:
            print(f"minivpn: cannot show interface {each}: {exc}", file=sys.stderr)
            status = 1
    if args.json:
        print(json.dumps([device_json(each, snapshot) for each, snapshot in shown], indent=2))
    elif args.field is not None:
        print("".join(format_field(snapshot, args.field, each) for each, snapshot in shown), end="")
    else:
        now = int(time.time())
        text = "\n".join(
            format_device(each, snapshot, now, color=color) for each, snapshot in shown
        )
        print(text, end="")
    return status


# --- text -----------------------------------------------------------------------------------------


def format_device(name: str, snapshot: DeviceSnapshot, now: int, *, color: bool = False) -> str:
    """The ``wg show NAME`` text for *snapshot*, every line ending in a newline.

    Args:
        name: the interface name.
        snapshot: its state, as :func:`~minivpn.runtime.uapi_client.get_device` returns it.
        now: the current Unix time in seconds, for "N seconds ago".
        color: with wg's escape sequences (else without them, as wg removes them).
    """
    # Written with the escape sequences, as show.c's pretty_print() is; terminal.c removes
    # them when colours are off, and so does the last line here.
    lines = [f"{_RESET}{_GREEN}{_BOLD}interface{_RESET}: {_GREEN}{name}{_RESET}"]

    def field(label: str, value: str) -> None:
        lines.append(f"  {_BOLD}{label}{_RESET}: {value}")

    key = snapshot.private_key
    if key is not None and not key.is_zero():
        field("public key", key.public_key().to_base64())
        field("private key", "(hidden)")
    if snapshot.listen_port:
        field("listening port", str(snapshot.listen_port))
    if snapshot.fwmark:
        field("fwmark", f"{snapshot.fwmark:#x}")
    tap = snapshot.mode == "tap"
    if tap:
        field("mode", "tap (layer 2, a minivpn extension)")
        if snapshot.flood_rate is not None:
            field("storm control", _storm_control(snapshot.flood_rate, snapshot.flood_burst))
    if snapshot.drops:
        field("drops", format_drops(snapshot.drops))
    for peer in _sorted_peers(snapshot):
        lines.append("")
        lines.append(
            f"{_YELLOW}{_BOLD}peer{_RESET}: {_YELLOW}{peer.public_key.to_base64()}{_RESET}"
        )
        if peer.preshared_key is not None and not peer.preshared_key.is_zero():
            field("preshared key", "(hidden)")
        if peer.endpoint is not None:
            field("endpoint", wg_endpoint(peer.endpoint))
        allowed = ", ".join(
            address + f"{_CYAN}/{_RESET}" + bits
            for address, _, bits in (
                wg_prefix(prefix).partition("/") for prefix in peer.allowed_ips
            )
        )
        field("allowed ips", allowed or "(none)")
        if peer.last_handshake_time_sec:
            field("latest handshake", _ago(peer.last_handshake_time_sec, now))
        if peer.rx_bytes or peer.tx_bytes:
            received, sent = _size(peer.rx_bytes), _size(peer.tx_bytes)
            field("transfer", f"{received} received, {sent} sent")
        if peer.persistent_keepalive_interval:
            field("persistent keepalive", f"every {_duration(peer.persistent_keepalive_interval)}")
        if tap and peer.allowed_macs:
            field("allowed macs", ", ".join(peer.allowed_macs))
        if peer.drops:
            field("drops", format_drops(peer.drops))
    if tap:
        lines.append("")
        lines.append(f"{_BOLD}mac table{_RESET} (minivpn extension, Mode = tap):")
        for entry in snapshot.mac_table:
            behind = (
                "this tap device"
                if entry.public_key is None
                else "peer " + entry.public_key.to_base64()
            )
            lines.append(f"  {entry.mac}  {behind}  {entry.age} s")
        if not snapshot.mac_table:
            lines.append("  (empty)")
    text = "\n".join(lines) + "\n"
    return text if color else strip_colors(text)


def format_drops(drops: Iterable[tuple[str, int]]) -> str:
    """``5 (no_route 3, unknown_peer 2)``: the total, then each reason, most first."""
    counts = sorted(drops, key=lambda item: (-item[1], item[0]))
    total = sum(count for _, count in counts)
    return f"{total} (" + ", ".join(f"{reason} {count}" for reason, count in counts) + ")"


def strip_colors(text: str) -> str:
    """*text* without escape sequences, as wg prints when colours are off."""
    return _ESCAPE.sub("", text)


def format_field(snapshot: DeviceSnapshot, field: str, name: str | None = None) -> str:
    """``wg show NAME FIELD`` (or, with *name*, ``wg show all FIELD``'s lines for it).

    The lines of show.c's ugly_print(), each ending in a newline: one for an interface field,
    one per peer for a peer field (none for an interface without peers).

    Raises:
        ValueError: *field* is not one of :data:`FIELDS`.
    """
    prefix = f"{name}\t" if name is not None else ""
    key = snapshot.private_key
    if field == "public-key":
        if key is None or key.is_zero():
            return f"{prefix}(none)\n"
        return f"{prefix}{key.public_key().to_base64()}\n"
    if field == "listen-port":
        return f"{prefix}{snapshot.listen_port}\n"
    if field == "fwmark":
        return f"{prefix}{f'{snapshot.fwmark:#x}' if snapshot.fwmark else 'off'}\n"
    if field not in FIELDS:
        raise ValueError(f"not a field: {field!r}")
    lines = []
    for peer in snapshot.peers:  # not sorted: wg sorts peers only for its full text
        line = f"{prefix}{peer.public_key.to_base64()}"
        if field == "endpoints":
            line += "\t" + (wg_endpoint(peer.endpoint) if peer.endpoint is not None else "(none)")
        elif field == "allowed-ips":
            line += "\t" + (" ".join(wg_prefix(p) for p in peer.allowed_ips) or "(none)")
        elif field == "latest-handshakes":
            line += f"\t{peer.last_handshake_time_sec}"
        elif field == "transfer":
            line += f"\t{peer.rx_bytes}\t{peer.tx_bytes}"
        elif field == "persistent-keepalive":
            line += f"\t{peer.persistent_keepalive_interval or 'off'}"
        lines.append(line + "\n")  # "peers": the key alone
    return "".join(lines)


def _storm_control(rate: int, burst: int | None) -> str:
    """The switch's storm control, as the config's FloodRate and FloodBurst set it."""
    if not rate:
        return "off (FloodRate = off)"
    return f"{rate} flooded frames a second per port, in bursts of up to {burst}"


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
            parts.append(f"{count} {_CYAN}{unit}{'' if count == 1 else 's'}{_RESET}")
    if seconds:
        parts.append(f"{seconds} {_CYAN}second{'' if seconds == 1 else 's'}{_RESET}")
    return ", ".join(parts)


def _ago(then: int, now: int) -> str:
    if then == now:
        return "Now"
    if then > now:
        return f"({_RED}System clock wound backward; connection problems may ensue.{_RESET})"
    return f"{_duration(now - then)} ago"


def _size(count: int) -> str:
    """Bytes as ``wg`` writes them: ``512 B``, ``1.50 KiB``, ... up to TiB."""
    if count < 1024:
        return f"{count} {_CYAN}B{_RESET}"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.2f} {_CYAN}{unit}{_RESET}"
    return f"{value / 1024:.2f} {_CYAN}TiB{_RESET}"


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
    shown: dict[str, Any] = {
        "name": name,
        "public_key": public_key,
        "listen_port": snapshot.listen_port,
        "fwmark": snapshot.fwmark or None,
        "drops": dict(snapshot.drops),
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
                "drops": dict(peer.drops),
                "counters": dict(peer.counters),
            }
            for peer in _sorted_peers(snapshot)
        ],
    }
    if snapshot.mode == "tap":  # minivpn's layer-2 extension (docs/l2.md)
        shown["mode"] = "tap"
        if snapshot.flood_rate is not None:  # 0: storm control off
            shown["flood_rate"] = snapshot.flood_rate
            shown["flood_burst"] = snapshot.flood_burst
        for peer_json, peer in zip(shown["peers"], _sorted_peers(snapshot), strict=True):
            peer_json["allowed_macs"] = list(peer.allowed_macs)
        shown["mac_table"] = [
            {
                "mac": entry.mac,
                "peer": entry.public_key.to_base64() if entry.public_key is not None else None,
                "age": entry.age,
            }
            for entry in snapshot.mac_table
        ]
    return shown
