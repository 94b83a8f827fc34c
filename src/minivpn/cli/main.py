"""Entry point of the ``minivpn`` command.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
:class:`argparse.Namespace` and returning an exit status.  This module only dispatches and maps
errors to exit codes: a :class:`~minivpn.errors.MinivpnError` becomes one line on stderr, and
a reader that stops reading (``minivpn tun list | head -1``) ends the command quietly
(:mod:`minivpn.cli.closed_pipe`).  ``minivpn`` alone prints the list of commands.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from minivpn import __version__
from minivpn.cli import argtypes
from minivpn.cli.closed_pipe import discard_closed_output, run_quietly_on_closed_pipe
from minivpn.errors import MinivpnError
from minivpn.tuntap.errors import ModeMismatch

#: Sub-command modules, in the order ``minivpn --help`` lists them.
COMMAND_MODULES = ("tun", "dump", "tunnel", "keys", "show", "up", "demo")

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``minivpn`` argument parser."""
    parser = _Parser(
        prog="minivpn",
        description="A small, readable userspace VPN for Linux: TUN/TAP, tunnels, WireGuard.",
    )
    parser.add_argument("--version", action="version", version=f"minivpn {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, title="commands"
    )
    parser.set_defaults(func=argtypes.print_help_handler(parser))
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"minivpn.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    return run_quietly_on_closed_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO,
        format="minivpn: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.func
    try:
        return handler(args)
    except MinivpnError as exc:
        _report(_with_hint(exc, args))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # trio nurseries wrap errors in groups; a user error is still one line.
        user_errors = _user_errors(group)
        if user_errors is None:
            raise
        for message in dict.fromkeys(_with_hint(exc, args) for exc in user_errors):
            _report(message)
        return user_errors[0].exit_code


def _report(message: str) -> None:
    """Print ``minivpn: MESSAGE`` on stderr, unless its reader has gone (then say nothing)."""
    try:
        print(f"minivpn: {message}", file=sys.stderr, flush=True)
    except BrokenPipeError:
        discard_closed_output()


def _with_hint(exc: MinivpnError, args: argparse.Namespace) -> str:
    """The error's message, with the option to use when the device is the other kind."""
    if isinstance(exc, ModeMismatch) and hasattr(args, "tap"):
        wanted = exc.device_mode.value
        instead = " instead of --tap" if args.tap else ""
        return f"{exc} (use --{wanted}{instead})"
    return str(exc)


def _user_errors(group: BaseExceptionGroup[BaseException]) -> list[MinivpnError] | None:
    """The MinivpnErrors in *group*, or None if it holds anything else (a bug: show it)."""
    found: list[MinivpnError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _user_errors(exc)
            if inner is None:
                return None
            found += inner
        elif isinstance(exc, MinivpnError):
            found.append(exc)
        else:
            return None
    return found or None


if __name__ == "__main__":
    sys.exit(main())
