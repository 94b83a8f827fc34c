"""The ``minivpn`` command itself: what a command without its sub-command prints.

Device-free: ``python -m minivpn`` in a child process, as a user types it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from minivpn.cli.main import build_parser


def minivpn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "minivpn", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sub_commands(parser: argparse.ArgumentParser) -> list[str]:
    """The sub-command names *parser* knows, from argparse's own table."""
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_bare_minivpn_lists_every_command() -> None:
    result = minivpn()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: minivpn ")
    names = sub_commands(build_parser())
    assert {"tun", "dump", "tunnel", "show", "up", "down", "demo", "genkey"} <= set(names)
    listed = result.stderr.split("commands:", 1)[1]
    for name in names:
        assert f"\n    {name} " in listed, (name, result.stderr)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "actions"),
    [(["tun"], ["add", "del", "list", "show", "attach"])],
)
def test_a_command_without_its_action_lists_the_actions(
    command: list[str], actions: list[str]
) -> None:
    result = minivpn(*command)
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: minivpn {' '.join(command)} ")
    listed = result.stderr.split("actions:", 1)[1]
    for action in actions:
        assert f"\n    {action} " in listed, (action, result.stderr)


def test_help_still_goes_to_stdout_with_status_0() -> None:
    result = minivpn("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: minivpn ")
    assert result.stderr == ""
