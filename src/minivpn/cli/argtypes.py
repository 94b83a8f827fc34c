"""Argument types and options shared by the sub-commands.

An argument type turns text into a value or one clear error.  The ``add_*`` helpers declare the
options that several commands share (``--tap``, ``--pi``, ``--address``), so that each option
has one name, one meaning and one help text everywhere.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from minivpn.errors import MinivpnError
from minivpn.netconf import parse_interface

if TYPE_CHECKING:
    from collections.abc import Callable


def cidr(text: str) -> str:
    """An interface address with its prefix, ``10.9.0.1/24`` or ``fd00::1/64``."""
    try:
        parse_interface(text)
    except MinivpnError as exc:  # NetconfError says what is wrong
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def mtu(text: str) -> int:
    """An MTU the kernel accepts on a TUN/TAP link (68 for IPv4 up to 65535)."""
    if not text.isdigit() or not 68 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the MTU must be a number from 68 to 65535")
    return int(text)


def positive_int(text: str) -> int:
    """A count: 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
    return int(text)


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--tap``/``--tun`` and ``--pi``: the kind of device and whether it has a PI header.

    They set ``args.tap`` and ``args.pi`` (both False by default: TUN, no PI).  ``--tun`` is
    the default, there to be named: an error about the device being the other kind suggests
    ``--tap`` or ``--tun`` (see ``minivpn.cli.main``).
    """
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--tap", action="store_true", help="a TAP device (Ethernet frames), not TUN (IP packets)"
    )
    kind.add_argument(
        "--tun", dest="tap", action="store_false", help="a TUN device (IP packets): the default"
    )
    parser.add_argument(
        "--pi", action="store_true", help="the device has the 4-byte packet-information (PI) header"
    )


def add_address_option(parser: argparse.ArgumentParser, *, check: bool = True) -> None:
    """Add ``--address CIDR`` (repeatable): it sets ``args.address``, a list of strings.

    Args:
        parser: the sub-command's parser.
        check: refuse a malformed address while parsing, as a usage error (exit status 2).
            With False any text is accepted and the command must check it itself, before it
            changes anything (``minivpn tun`` does, reporting it as ``minivpn: invalid
            address ...``, exit status 1).
    """
    parser.add_argument(
        "--address",
        metavar="CIDR",
        action="append",
        default=[],
        type=cidr if check else str,
        help="add this address to the device, e.g. 10.9.0.1/24 or fd00:9::1/64 (repeatable)",
    )


def print_help_handler(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A ``func`` for a command given without its sub-command (``minivpn``, ``minivpn tun``).

    It prints the parser's help, which lists the sub-commands, to stderr, and returns 2 as for
    any other usage error.
    """

    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler
