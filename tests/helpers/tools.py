"""The real tools the tests compare minivpn with: tcpdump and tshark reading pcap files.

tcpdump, started as root, changes to its own user (``tcpdump``) once its input is open, and
gives up when it cannot.  Inside a user namespace, which is where the tests run for an ordinary
user (``netns/isolate`` is ``unshare --map-root-user`` then), that cannot work: only root is
mapped, and ``setgroups()`` is denied, so even ``-Z root`` fails ("Couldn't change to 'root'").
Reading a file needs no privilege, so there :func:`tcpdump` runs it in a child user namespace as
``nobody`` (mapped to ourselves, so our files stay ours): not root, tcpdump changes nothing.
As real root it runs as it is, and changes to its user as usual.

Live captures need root in the network namespace, so they cannot take that way out:
:class:`tests.helpers.wg.Capture` uses ``dumpcap`` (Wireshark's capture program, which does not
change user) instead.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["in_user_namespace", "needs_tool", "tcpdump", "tcpdump_lines", "tshark_fields"]

#: /proc/self/uid_map of the initial user namespace: every uid mapped to itself.
_INITIAL_UID_MAP = ["0", "0", "4294967295"]


def needs_tool(name: str) -> pytest.MarkDecorator:
    """Skip the test when the program *name* is not installed."""
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} is not installed")


@functools.cache
def in_user_namespace() -> bool:
    """True inside a user namespace other than the host's (``unshare -U``, rootless isolate)."""
    return Path("/proc/self/uid_map").read_text().split() != _INITIAL_UID_MAP


def tcpdump(*args: str) -> list[str]:
    """The command line of ``tcpdump ARGS`` for reading (and rewriting) pcap files, never live.

    In a user namespace it is prefixed with ``unshare --map-user=65534 --map-group=65534``
    (see the module documentation).
    """
    if in_user_namespace():
        return ["unshare", "--map-user=65534", "--map-group=65534", "--", "tcpdump", *args]
    return ["tcpdump", *args]


def tcpdump_lines(path: Path, *args: str) -> list[str]:
    """Run real ``tcpdump -n -t -S ARGS -r PATH``; return one line per packet.

    ``-t`` drops timestamps, ``-S`` prints absolute TCP sequence numbers.  tcpdump adds hex
    dumps (tab-indented lines) for things it cannot decode; those are dropped.
    """
    result = subprocess.run(
        tcpdump("-n", "-t", "-S", *args, "-r", str(path)),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [line for line in result.stdout.splitlines() if not line.startswith("\t")]


def tshark_fields(path: Path, fields: list[str], *options: str) -> list[list[str]]:
    """Run real tshark and return the requested fields, one list per packet."""
    command = ["tshark", "-n", "-r", str(path), *options, "-T", "fields"]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    return [line.split("\t") for line in result.stdout.splitlines()]
