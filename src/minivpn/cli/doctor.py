"""``minivpn doctor``: what is wrong with a running interface, and what to try.

::

    minivpn doctor IFNAME

It reads the interface over its UAPI socket (any userspace WireGuard; minivpn's counters make
the answers sharper) and asks the kernel, through netlink, about the link, the routes to each
peer's allowed IPs and the MTU of the path to each endpoint.  :mod:`minivpn.doctor` holds the
reasoning.  The exit status is 0 when nothing looks wrong, 1 when something does.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from minivpn.doctor import Finding

__all__ = ["format_findings", "register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``doctor`` sub-command."""
    p = subparsers.add_parser(
        "doctor",
        help="say what is wrong with a running WireGuard interface, and what to try",
        description="Look at a running WireGuard interface (its peers, handshakes, counters, "
        "routes, allowed IPs and MTU) and say, in plain words, what is wrong and what to try. "
        "Exit status 1 when something is.",
    )
    p.add_argument("name", metavar="IFNAME", help="the interface")
    p.add_argument(
        "--socket-dir",
        metavar="DIR",
        help="where the sockets are (default: $MINIVPN_SOCKET_DIR, else /var/run/wireguard)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the findings; 0 if there are none."""
    from minivpn.doctor import diagnose, gather
    from minivpn.runtime.uapi_client import get_device

    snapshot = get_device(args.name, args.socket_dir)
    findings = diagnose(args.name, snapshot, gather(args.name, snapshot))
    print(format_findings(args.name, len(snapshot.peers), findings), end="")
    return 1 if findings else 0


def format_findings(name: str, peers: int, findings: list[Finding]) -> str:
    """The report: one paragraph per finding, or a line saying that all looks well."""
    if not findings:
        return f"{name}: nothing looks wrong ({peers} peer{'s' if peers != 1 else ''} checked)\n"
    count = len(findings)
    lines = [f"{name}: {count} problem{'s' if count != 1 else ''} found", ""]
    for finding in findings:
        lines += textwrap.wrap(
            f"{finding.subject}: {finding.problem}",
            width=96,
            subsequent_indent="    ",
        )
        lines += textwrap.wrap(
            f"try: {finding.advice}", width=96, initial_indent="  ", subsequent_indent="    "
        )
        lines.append("")
    return "\n".join(lines)
