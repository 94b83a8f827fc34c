"""Entry point of the ``minivpn`` command.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
:class:`argparse.Namespace` and returning an exit status.  This module only dispatches and maps
errors to exit codes: a :class:`~minivpn.errors.MinivpnError` becomes one line on stderr, and
a reader that stops reading (``minivpn tun list | head -1``) ends the command quietly
(:mod:`minivpn.cli.closed_pipe`).  ``minivpn`` alone prints the list of commands.

``-v`` and ``-q`` are accepted anywhere, before or after the sub-command and its arguments
(``minivpn up -v wg0.conf``, ``minivpn -v up wg0.conf``); they add up, and :mod:`minivpn.logs`
says what each level shows.  The handler finds the result in ``args.verbosity``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from minivpn import __version__
from minivpn.cli import argtypes
from minivpn.cli.closed_pipe import discard_closed_output, run_quietly_on_closed_pipe
from minivpn.errors import MinivpnError
from minivpn.logs import configure_logging
from minivpn.tuntap.errors import ModeMismatch

#: Sub-command modules, in the order ``minivpn --help`` lists them, and the commands each adds.
COMMAND_MODULES = {
    "tun": ("tun",),
    "dump": ("dump",),
    "tunnel": ("tunnel",),
    "keys": ("genkey", "pubkey", "genpsk"),
    "show": ("show",),
    "up": ("up", "down"),
    "trace": ("trace",),
    "doctor": ("doctor",),
    "demo": ("demo",),
}

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Tally:
    """The count of ``-v`` minus the count of ``-q``, wherever they stood."""

    def __init__(self) -> None:
        self.value = 0


class _Verbosity(argparse.Action):
    """``-v`` or ``-q``, counted in a :class:`_Tally` shared by every (sub-)parser.

    argparse parses a sub-command into a namespace of its own and then copies every value over
    the main one, so a count kept in the namespace would lose the ``-v`` given before the
    sub-command.  The tally lives outside the namespaces instead.
    """

    def __init__(
        self, option_strings: list[str], dest: str, *, tally: _Tally, step: int, help: str
    ) -> None:
        super().__init__(
            option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, help=help
        )
        self.tally = tally
        self.step = step

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        self.tally.value += self.step


def _add_verbosity(parser: argparse.ArgumentParser, tally: _Tally, done: set[int]) -> None:
    """Give *parser* and each of its sub-command parsers ``-v`` and ``-q``."""
    if id(parser) in done:
        return
    done.add(id(parser))
    parser.add_argument(
        "-v",
        "--verbose",
        action=_Verbosity,
        tally=tally,
        step=1,
        help="more log output: -v handshakes and misconfiguration, -vv every packet, "
        "-vvv the libraries' debugging too",
    )
    parser.add_argument(
        "-q", "--quiet", action=_Verbosity, tally=tally, step=-1, help="only warnings and errors"
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbosity(child, tally, done)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Build the ``minivpn`` argument parser: the full one, or one command's if *argv* names it.

    A command line that names a command imports only that command's module: ``minivpn up``
    becomes the process of a running interface, which need not keep the other commands'
    parsers and imports resident (about 0.3 MiB; docs/performance.md, "Memory of a running
    interface").
    The verbosity the command line asks for is counted in ``parser.verbosity.value`` as it is
    parsed (``_main`` puts it in ``args.verbosity``).
    """
    # The first word that is not an option is the command (the main parser's options take no
    # values); anything else, a typo included, gets the full parser and its list of commands.
    command = next((word for word in argv if not word.startswith("-")), None)
    modules = [name for name, commands in COMMAND_MODULES.items() if command in commands]
    parser = _Parser(
        prog="minivpn",
        description="A small, readable userspace VPN for Linux: TUN/TAP, tunnels, WireGuard.",
    )
    parser.add_argument("--version", action="version", version=f"minivpn {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, title="commands"
    )
    parser.set_defaults(func=argtypes.print_help_handler(parser))
    for name in modules or COMMAND_MODULES:
        module = importlib.import_module(f"minivpn.cli.{name}")
        module.register(sub)
    tally = _Tally()
    _add_verbosity(parser, tally, set())
    parser.verbosity = tally  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    return run_quietly_on_closed_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.verbosity = parser.verbosity.value  # type: ignore[attr-defined]
    configure_logging(args.verbosity)
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
