"""What a running interface keeps imported: nothing that only start-up or other commands need.

Every module a long-lived ``minivpn up`` or ``minivpnd`` process imports stays resident for as
long as the interface is up (docs/performance.md, "Memory of a running interface", has what
each costs).
These tests do, in a fresh interpreter, what such a process does before and while it serves an
interface: build the command line of ``minivpn up`` (or import ``minivpnd``), import the
runtime, parse a config and compute a Diffie-Hellman secret as a handshake does; then they look
at ``sys.modules``.  Device-free: nothing is brought up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import pytest

from minivpn.cli.main import COMMAND_MODULES, build_parser

#: What a running interface must not keep: pyroute2 (~12 MiB; netlink work runs in a
#: short-lived child), the config parser's spelling suggestions, the trace socket's JSON,
#: cryptography's OpenSSL backend (loaded by its X25519; minivpn's X25519 is libsodium's) and
#: the other commands of the ``minivpn`` command line.
NOT_RESIDENT = (
    "pyroute2",
    "difflib",
    "json",
    "cryptography.hazmat.backends",
    "cryptography.hazmat.primitives.asymmetric",
    *(f"minivpn.cli.{name}" for name in COMMAND_MODULES if name != "up"),
)

_INTERFACE_PROCESS = """
import sys

{entry}

import minivpn.runtime.frames
import minivpn.runtime.interface
import minivpn.runtime.vpn
from minivpn.wireguard.config import parse_config
from minivpn.wireguard.keys import PrivateKey

ours, theirs = PrivateKey.generate(), PrivateKey.generate()
parse_config(
    "[Interface]\\nMode = tap\\nPrivateKey = " + ours.to_base64() + "\\nListenPort = 51820\\n"
    "Address = 10.99.9.1/24\\n\\n[Peer]\\nPublicKey = " + theirs.public_key().to_base64() + "\\n"
    "Endpoint = 198.51.100.2:51820\\n"
)
assert ours.exchange(theirs.public_key()) == theirs.exchange(ours.public_key())
print("\\n".join(sorted(sys.modules)))
"""

_ENTRIES = {
    # `minivpn up CONF`: the command line, then the interface in the same process.
    "minivpn up": "from minivpn.cli.main import build_parser\n"
    "build_parser(['-v', 'up', 'wg0.conf']).parse_args(['-v', 'up', 'wg0.conf'])",
    # `minivpnd IFNAME`: wireguard-go's contract, configured over UAPI.
    "minivpnd": "import minivpn.daemon",
}


def imported_by(entry: str) -> set[str]:
    """The modules a fresh interpreter holds after doing what an interface's process does."""
    program = _INTERFACE_PROCESS.format(entry=_ENTRIES[entry])
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.parametrize("entry", sorted(_ENTRIES))
def test_a_running_interface_does_not_keep_what_only_start_up_needs(entry: str) -> None:
    modules = imported_by(entry)
    # The run really happened: the runtime and the crypto a handshake uses are there.
    assert {"trio", "minivpn.runtime.vpn", "minivpn.wireguard.config", "nacl.bindings"} <= modules
    resident = sorted(
        module
        for module in modules
        for unwanted in NOT_RESIDENT
        if module == unwanted or module.startswith(unwanted + ".")
    )
    assert resident == []


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_the_command_table_says_which_module_adds_which_command() -> None:
    # build_parser imports only the module of the command it is given, found in
    # COMMAND_MODULES: a command missing there, or listed under the wrong module, would
    # leave `minivpn COMMAND` with the full parser (or none of its own).
    listed = [command for commands in COMMAND_MODULES.values() for command in commands]
    assert _commands(build_parser()) == listed
    for commands in COMMAND_MODULES.values():
        for command in commands:
            assert _commands(build_parser(["-q", command, "--help"])) == list(commands)
