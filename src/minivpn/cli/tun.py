"""``minivpn tun``: create, delete, list, show and attach to TUN/TAP devices.

::

    minivpn tun add NAME [--tap] [--pi] [--multi-queue] [--user USER] [--group GROUP]
                         [--address CIDR]... [--mtu MTU] [--up]
    minivpn tun del NAME
    minivpn tun list [--json]
    minivpn tun show NAME [--json]
    minivpn tun attach NAME [--tap] [--pi] [--multi-queue] [--address CIDR]... [--mtu MTU]
                            [--up] [--seconds S]

``add`` makes a persistent device (it stays until ``del``), optionally owned by an unprivileged
user, who can then attach to it without any privilege; ``--address``/``--mtu``/``--up``
configure it in the same privileged step (see docs/privileges.md).  ``attach`` holds the
device open (so it has carrier) until Ctrl-C, SIGTERM or ``--seconds``; it is also the quickest
way to check that the current user may attach.  The JSON of ``list`` and ``show`` is described
in docs/tuntap.md.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import logging
import os
import pwd
import signal
from typing import TYPE_CHECKING

from minivpn import netconf
from minivpn.cli import argtypes
from minivpn.errors import MinivpnError
from minivpn.runtime.process import STOP_SIGNALS
from minivpn.tuntap import device, listing
from minivpn.tuntap.ioctl import IFF_PERSIST, Mode, flag_names

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)


class UnknownUserError(MinivpnError):
    """``--user``/``--group`` names nobody in the user or group database."""


# --- argument parsing -----------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tun`` and its actions to the ``minivpn`` parser."""
    parser = subparsers.add_parser(
        "tun",
        help="create, delete, list and attach to TUN/TAP devices",
        description="Create, delete, list and attach to TUN/TAP devices.",
    )
    actions = parser.add_subparsers(dest="tun_action", metavar="ACTION", title="actions")
    parser.set_defaults(func=argtypes.print_help_handler(parser))

    add = actions.add_parser(
        "add",
        help="create a persistent device",
        description="Create a persistent TUN/TAP device (it stays until 'minivpn tun del'). "
        "With --user/--group an unprivileged user or group may attach to it later.",
    )
    add.add_argument("name", metavar="NAME", help="interface name (or a template like tun%%d)")
    _add_flag_options(add)
    add.add_argument("--user", help="user (name or uid) allowed to attach without privileges")
    add.add_argument("--group", help="group (name or gid) allowed to attach without privileges")
    _add_config_options(add)
    add.set_defaults(func=_cmd_add)

    delete = actions.add_parser(
        "del",
        help="delete a persistent device",
        description="Delete a persistent TUN/TAP device (its owner may do this too).",
    )
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(func=_cmd_del)

    list_ = actions.add_parser(
        "list",
        help="list TUN/TAP devices",
        description="List every TUN/TAP device in this network namespace, whoever made it.",
    )
    list_.add_argument("--json", action="store_true", help="print a JSON array")
    list_.set_defaults(func=_cmd_list)

    show = actions.add_parser(
        "show", help="describe one device", description="Describe one device."
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.set_defaults(func=_cmd_show)

    attach = actions.add_parser(
        "attach",
        help="attach to a device and hold it open",
        description="Attach to a device (creating a temporary one if it does not exist) and "
        "hold it open until Ctrl-C, SIGTERM or --seconds.  Configuration the kernel refuses "
        "for lack of CAP_NET_ADMIN is skipped with a warning.",
    )
    attach.add_argument("name", metavar="NAME")
    _add_flag_options(attach)
    _add_config_options(attach)
    attach.add_argument(
        "--seconds",
        type=_non_negative_float,
        default=None,
        help="detach after this many seconds (0: attach and detach at once, a permission check)",
    )
    attach.set_defaults(func=_cmd_attach)


def _add_flag_options(parser: argparse.ArgumentParser) -> None:
    argtypes.add_device_options(parser)
    parser.add_argument("--multi-queue", action="store_true", help="allow several attachments")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    # Not checked while parsing: _check_config refuses a bad address as a MinivpnError.
    argtypes.add_address_option(parser, check=False)
    parser.add_argument("--mtu", type=argtypes.mtu, help="set the MTU")
    parser.add_argument("--up", action="store_true", help="bring the link up")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


# --- users and groups -----------------------------------------------------------------------------


def resolve_user(text: str) -> int:
    """A uid from a user name or number.

    Raises:
        UnknownUserError: no such user name.
    """
    if text.isdecimal():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise UnknownUserError(f"unknown user {text!r}") from None


def resolve_group(text: str) -> int:
    """A gid from a group name or number.

    Raises:
        UnknownUserError: no such group name.
    """
    if text.isdecimal():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise UnknownUserError(f"unknown group {text!r}") from None


def user_name(uid: int | None) -> str | None:
    """The name of *uid*, or None when it has none."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def group_name(gid: int | None) -> str | None:
    """The name of *gid*, or None when it has none."""
    if gid is None:
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _who(number: int | None, name: str | None) -> str:
    """'nobody' / '1234' / '-' for a table cell."""
    if number is None:
        return "-"
    return name or str(number)


# --- actions --------------------------------------------------------------------------------------


def _mode(args: argparse.Namespace) -> Mode:
    return Mode.TAP if args.tap else Mode.TUN


def _check_config(args: argparse.Namespace) -> None:
    """Refuse bad --address values before anything is created."""
    for cidr in args.address:
        netconf.parse_interface(cidr)


def _cmd_add(args: argparse.Namespace) -> int:
    owner = resolve_user(args.user) if args.user is not None else None
    group = resolve_group(args.group) if args.group is not None else None
    _check_config(args)
    info = device.create_persistent(
        args.name,
        _mode(args),
        pi=args.pi,
        multi_queue=args.multi_queue,
        owner=owner,
        group=group,
    )
    if args.address or args.mtu is not None or args.up:
        try:
            netconf.configure_link(
                info.name, addresses=args.address, mtu=args.mtu, up=True if args.up else None
            )
        except MinivpnError:
            # All or nothing: a half-configured device would surprise whoever uses it next.
            device.delete_persistent(info.name)
            raise
    print(f"created {info.mode.value} device {info.name}")
    if owner is None and group is None:
        log.info(
            "note: %s has no owner or group, so any user who can open %s may attach to it; "
            "use --user or --group to restrict it",
            info.name,
            device.TUN_PATH,
        )
    return 0


def _cmd_del(args: argparse.Namespace) -> int:
    gone = device.delete_persistent(args.name)
    if gone:
        print(f"deleted {args.name}")
    else:
        print(
            f"{args.name} is no longer persistent; it vanishes when the processes attached "
            "to it close it"
        )
    return 0


def _json(info: listing.DeviceInfo) -> dict[str, object]:
    data = info.to_json()
    data["owner_name"] = user_name(info.owner)
    data["group_name"] = group_name(info.group)
    return data


_COLUMNS = ("NAME", "MODE", "PI", "MQ", "PERSIST", "OWNER", "GROUP", "MTU", "STATE", "ADDRESSES")


def _row(info: listing.DeviceInfo) -> tuple[str, ...]:
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    return (
        info.name,
        info.mode.value,
        yes(info.pi),
        yes(info.multi_queue),
        yes(info.persist),
        _who(info.owner, user_name(info.owner)),
        _who(info.group, group_name(info.group)),
        str(info.mtu),
        info.state,
        ",".join(info.addresses) or "-",
    )


def _cmd_list(args: argparse.Namespace) -> int:
    devices = listing.list_devices()
    if args.json:
        print(json.dumps([_json(info) for info in devices], indent=2))
        return 0
    rows = [_COLUMNS, *(_row(info) for info in devices)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    info = listing.get_device(args.name)
    if args.json:
        print(json.dumps(_json(info), indent=2))
        return 0
    owner = _who(info.owner, user_name(info.owner))
    group = _who(info.group, group_name(info.group))
    fields = [
        ("name", info.name),
        ("mode", info.mode.value),
        ("pi", "yes" if info.pi else "no"),
        ("multi-queue", "yes" if info.multi_queue else "no"),
        ("vnet-hdr", "yes" if info.vnet_hdr else "no"),
        ("persistent", "yes" if info.persist else "no"),
        (
            "owner",
            owner if info.owner is None or owner == str(info.owner) else f"{owner} ({info.owner})",
        ),
        (
            "group",
            group if info.group is None or group == str(info.group) else f"{group} ({info.group})",
        ),
        ("mtu", str(info.mtu)),
        (
            "state",
            f"{info.state} (admin {'up' if info.up else 'down'}, operstate {info.operstate})",
        ),
        *([("queues", f"{info.num_queues} attached")] if info.num_queues is not None else []),
        ("ifindex", str(info.ifindex)),
        ("mac", info.mac or "-"),
        ("addresses", ", ".join(info.addresses) or "-"),
        ("tun_flags", f"0x{info.tun_flags:04x} ({'|'.join(flag_names(info.tun_flags))})"),
    ]
    for key, value in fields:
        print(f"{key + ':':<13}{value}")
    return 0


def _cmd_attach(args: argparse.Namespace) -> int:
    _check_config(args)
    # SIGINT/SIGTERM are blocked from before the "attached" line until the wait, so a signal
    # sent as soon as that line appears is not lost (it stays pending for sigwait).
    with _signals_blocked(STOP_SIGNALS):
        fd, name, flags = device.open_device(
            args.name, _mode(args), pi=args.pi, multi_queue=args.multi_queue
        )
        try:
            if args.address or args.mtu is not None or args.up:
                netconf.configure_link(
                    name,
                    addresses=args.address,
                    mtu=args.mtu,
                    up=True if args.up else None,
                    unprivileged_ok=True,
                )
            kind = "persistent" if flags & IFF_PERSIST else "temporary"
            print(f"attached to {name} ({_mode(args).value}, {kind})", flush=True)
            if args.seconds is None:
                signal.sigwait(STOP_SIGNALS)
            elif args.seconds > 0:
                signal.sigtimedwait(STOP_SIGNALS, args.seconds)
        finally:
            os.close(fd)
    print(f"detached from {name}")
    return 0


@contextlib.contextmanager
def _signals_blocked(signals: Iterable[signal.Signals]) -> Iterator[None]:
    """Hold *signals* pending (instead of acting on them) inside the block."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
