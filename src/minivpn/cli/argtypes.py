"""Argument types shared by the sub-commands: each turns text into a value or one clear error."""

from __future__ import annotations

import argparse

from minivpn.errors import MinivpnError
from minivpn.netconf import parse_interface


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
