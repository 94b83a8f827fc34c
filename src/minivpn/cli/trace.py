"""``minivpn trace``: watch what a running interface does with each packet, until Ctrl-C.

::

    minivpn trace IFNAME [--json] [--peer KEY] [--drops-only] [-c COUNT]

It connects to the interface's trace socket (``/var/run/wireguard/IFNAME.trace``, next to the
UAPI socket; :mod:`minivpn.runtime.trace_server`), whether ``minivpn up`` or ``minivpnd`` runs
the interface, and prints one line per event as the core makes them: a packet read from the
TUN device, the peer and the allowed-IPs prefix that chose it, the keypair and endpoint it went
to; a datagram received, decrypted, checked against the replay window, its inner source
checked, written; each handshake message; each timer; each drop, with its reason
(:mod:`minivpn.trace_lines` writes the lines, docs/trace.md explains them).  ``--json`` prints
the events as the socket sends them, one JSON object per line.

Tracing costs the interface nothing until someone attaches, and a bounded share of its CPU
while someone is attached: a reader that cannot keep up loses events (a ``LOST`` line says how
many), the tunnel does not slow down for it.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import TYPE_CHECKING, Any

from minivpn.errors import MinivpnError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["TraceError", "register", "run"]

#: Seconds to wait for the interface's first answer (its hello).
_HELLO_TIMEOUT = 10.0


class TraceError(MinivpnError):
    """The trace cannot be read: no such interface, no trace socket, no permission."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``trace`` sub-command."""
    p = subparsers.add_parser(
        "trace",
        help="watch what a running interface does with each packet (until Ctrl-C)",
        description="Attach to a running WireGuard interface of minivpn (minivpn up or "
        "minivpnd) and print one line per event: packets read and written, the peer and "
        "allowed IPs chosen, keypairs and endpoints, handshake messages, timers, and every "
        "drop with its reason. docs/trace.md explains the lines.",
    )
    p.add_argument("name", metavar="IFNAME", help="the interface")
    p.add_argument("--json", action="store_true", help="one JSON object per event, for tools")
    p.add_argument("--peer", metavar="KEY", type=_public_key, help="only this peer's events")
    p.add_argument("--drops-only", action="store_true", help="only the drops")
    p.add_argument(
        "-c", "--count", type=_count, metavar="COUNT", help="exit after this many events"
    )
    p.add_argument(
        "--socket-dir",
        metavar="DIR",
        help="where the sockets are (default: $MINIVPN_SOCKET_DIR, else /var/run/wireguard)",
    )
    p.set_defaults(func=run)


def _public_key(text: str) -> str:
    from minivpn.wireguard.errors import InvalidKey
    from minivpn.wireguard.keys import PublicKey

    try:
        return PublicKey.from_base64(text).to_base64()
    except InvalidKey as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """Print the interface's events until Ctrl-C, COUNT events, or the interface stops."""
    from minivpn.trace_lines import format_event, short_key

    connection = _connect(args.name, args.socket_dir)
    request = {"peer": args.peer, "drops_only": args.drops_only}
    shown = lost = 0
    try:
        with connection, connection.makefile("rb") as lines:
            connection.sendall(json.dumps(request).encode() + b"\n")
            connection.settimeout(_HELLO_TIMEOUT)
            hello = _read(lines, args.name)
            if hello is None:
                raise TraceError(f"{args.name} closed the trace socket without a word")
            connection.settimeout(None)
            key = hello.get("public_key")
            print(
                f"minivpn: tracing {args.name} (public key {short_key(key)}), Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            while args.count is None or shown < args.count:
                event = _read(lines, args.name)
                if event is None:
                    raise TraceError(f"the trace of {args.name} ended: the interface stopped")
                if event.get("event") == "lost":
                    lost += int(event.get("count", 0))
                else:
                    shown += 1
                text = json.dumps(event) if args.json else format_event(event)
                print(text, flush=True)
    except KeyboardInterrupt:
        pass
    except TimeoutError:
        raise TraceError(f"{args.name} did not answer on its trace socket") from None
    print(f"minivpn: {shown} events, {lost} lost", file=sys.stderr)
    return 0


def _connect(name: str, directory: str | None) -> socket.socket:
    """A connection to *name*'s trace socket, or one clear error."""
    from minivpn.runtime.trace_server import trace_socket_path
    from minivpn.runtime.uapi_server import socket_path

    uapi = socket_path(name, directory)
    path = trace_socket_path(uapi)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        connection.connect(str(path))
    except FileNotFoundError:
        connection.close()
        raise _missing(name, uapi, path) from None
    except PermissionError:
        connection.close()
        raise TraceError(
            f"cannot read the trace of {name}: permission denied ({path} is its owner's only, "
            "like the UAPI socket: run as root)"
        ) from None
    except ConnectionRefusedError:
        connection.close()
        raise TraceError(f"nothing serves {path}: {name} is not running") from None
    except OSError as exc:
        connection.close()
        raise TraceError(f"cannot connect to {path}: {exc.strerror}") from None
    return connection


def _missing(name: str, uapi: Path, path: Path) -> TraceError:
    if uapi.exists():
        return TraceError(
            f"{name} has no trace socket ({path}): it is not run by minivpn (minivpn up or "
            "minivpnd); wireguard-go has no trace"
        )
    return TraceError(f"no interface {name}: {uapi} does not exist")


def _read(lines: Any, name: str) -> dict[str, Any] | None:
    """The next object from the socket, or None at its end."""
    line = lines.readline()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        raise TraceError(f"{name} sent something that is not a trace event") from None
    if not isinstance(event, dict):
        raise TraceError(f"{name} sent something that is not a trace event")
    if event.get("event") == "error":
        raise TraceError(f"{name} refused the trace: {event.get('message')}")
    return event
