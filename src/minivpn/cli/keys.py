"""``minivpn genkey``, ``minivpn pubkey``, ``minivpn genpsk``: WireGuard keys, as ``wg`` makes them.

The usual recipe works the same with either tool::

    umask 077
    minivpn genkey > private.key
    minivpn pubkey < private.key > public.key
    minivpn genpsk > preshared.key

Keys are 32 bytes written in base64 (44 characters).  ``genkey`` prints a random, clamped
Curve25519 private key; ``pubkey`` reads a private key on standard input and prints the public
key that goes into the peers' configuration; ``genpsk`` prints 32 random bytes for the optional
preshared key.  The output of each is interchangeable with that of ``wg genkey``, ``wg pubkey``
and ``wg genpsk``.

Like ``wg genkey``, ``genkey`` and ``genpsk`` warn when their output goes to a regular file that
others may read, which is what happens under the common umask 022.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from typing import TYPE_CHECKING

from minivpn.errors import MinivpnError

if TYPE_CHECKING:
    import argparse

__all__ = ["KeyInputError", "register"]

#: What ``wg genkey`` writes to stderr when stdout is a world-accessible file.
WORLD_ACCESSIBLE_WARNING = (
    "Warning: writing to world accessible file.\n"
    "Consider setting the umask to 077 and trying again.\n"
)

#: More than any key and its line ending; longer input is not a key.
_MAX_INPUT = 1024


class KeyInputError(MinivpnError):
    """The input is not a key."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``genkey``, ``pubkey`` and ``genpsk`` sub-commands."""
    p = subparsers.add_parser(
        "genkey",
        help="print a new private key (base64), like `wg genkey`",
        description="Print a new random WireGuard private key in base64. "
        "Run `umask 077` first when you redirect it to a file.",
    )
    p.set_defaults(func=genkey)
    p = subparsers.add_parser(
        "pubkey",
        help="read a private key on stdin, print its public key, like `wg pubkey`",
        description="Read a WireGuard private key (base64) on standard input and print the "
        "matching public key.",
    )
    p.set_defaults(func=pubkey)
    p = subparsers.add_parser(
        "genpsk",
        help="print a new preshared key (base64), like `wg genpsk`",
        description="Print a new random WireGuard preshared key in base64.",
    )
    p.set_defaults(func=genpsk)


def genkey(args: argparse.Namespace) -> int:
    """Print a new private key."""
    from minivpn.wireguard.keys import PrivateKey  # here: cryptography loads only when needed

    _warn_if_world_accessible()
    print(PrivateKey.generate().to_base64())
    return 0


def genpsk(args: argparse.Namespace) -> int:
    """Print a new preshared key."""
    from minivpn.wireguard.keys import PresharedKey

    _warn_if_world_accessible()
    print(PresharedKey.generate().to_base64())
    return 0


def pubkey(args: argparse.Namespace) -> int:
    """Read a private key on stdin and print its public key.

    Raises:
        KeyInputError: stdin does not hold one base64 private key (the input is not echoed).
    """
    from minivpn.wireguard.errors import InvalidKey
    from minivpn.wireguard.keys import PrivateKey

    data = sys.stdin.buffer.read(_MAX_INPUT + 1)
    try:
        if len(data) > _MAX_INPUT:
            raise InvalidKey("too long")
        key = PrivateKey.from_base64(data.decode("ascii"))
    except (InvalidKey, UnicodeDecodeError):
        raise KeyInputError("invalid private key on stdin") from None
    print(key.public_key().to_base64())
    return 0


def _warn_if_world_accessible() -> None:
    """Warn, as ``wg genkey`` does, if stdout is a regular file that others may access."""
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):
        return  # no file descriptor (stdout replaced, e.g. in tests): nothing to check
    if stat.S_ISREG(mode) and mode & stat.S_IRWXO:
        sys.stderr.write(WORLD_ACCESSIBLE_WARNING)
