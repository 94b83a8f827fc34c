"""Background WireGuard daemons in test namespaces: found through their sockets, stopped by PID.

``minivpnd IFNAME`` and ``minivpn up CONFIG`` behave like wireguard-go without ``-f``: the
command returns once the device and the UAPI socket exist, and leaves behind a daemon that is
not a child of the test (it was forked by the command, which has exited).  The tests find that
process through its socket: the kernel reports the PID of the process listening on a UNIX
socket to whoever connects (``SO_PEERCRED``).  :class:`Daemons` remembers every PID it found and
stops them all, by PID, at the end of the test.

Two fixtures give a test that cleanup, also when the test fails:

* ``daemons``: a :class:`Daemons`, stopped after the test;
* ``topo``: a :class:`netns.Topology` whose daemons are stopped *before* its namespaces are
  deleted (a daemon must not outlive the namespace its device and sockets are in).

A test module uses them by importing them (pytest finds fixtures among a module's names; the
functions are named ``fixture_*`` so that the test arguments ``daemons`` and ``topo`` do not
shadow them)::

    from tests.helpers.daemons import fixture_daemons, fixture_topo  # noqa: F401 (fixtures)

Run inside ``netns/isolate``: ``/var/run/wireguard`` then lives in its private ``/run``, shared
by every namespace of the test run, so interface names must be unique (:func:`interface_name`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.helpers.procs import wait_until
from tests.helpers.wg import SOCKET_DIR

from netns import Topology

if TYPE_CHECKING:
    from collections.abc import Iterator

    from netns import Namespace

__all__ = [
    "Daemons",
    "fixture_daemons",
    "fixture_topo",
    "interface_name",
    "link",
    "process_alive",
    "socket_owner",
    "wg",
]

_serials = itertools.count()


def interface_name(prefix: str, tag: str) -> str:
    """An interface name no other test of this run uses: PREFIX, TAG, then numbers.

    Keep ``prefix + tag`` to five characters or less: with the numbers appended the name must
    fit the kernel's 15 characters.
    """
    return f"{prefix}{tag}{os.getpid() % 1000}{next(_serials)}"


# --- finding and stopping the daemons -------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def socket_owner(path: Path) -> int | None:
    """The PID of the process listening on UNIX socket *path* (``SO_PEERCRED``), or None."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        try:
            client.connect(str(path))
        except OSError:
            return None
        credentials = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    pid, _, _ = struct.unpack("3i", credentials)  # struct ucred: pid, uid, gid
    return int(pid)


class Daemons:
    """The daemons a test started: found through their sockets, stopped by PID at the end."""

    def __init__(self) -> None:
        #: Every PID :meth:`find` returned, in order.
        self.pids: list[int] = []

    def find(self, name: str, timeout: float = 10.0) -> int:
        """The PID of the live process serving *name*'s socket (it is remembered for cleanup).

        Right after the command returns, the socket may still name the parent that created
        it (and exited); the daemon claims it a moment later.

        Raises:
            AssertionError: no live process serves the socket within *timeout* seconds.
        """
        path = SOCKET_DIR / f"{name}.sock"

        def live_owner() -> int | None:
            pid = socket_owner(path)
            return pid if pid is not None and process_alive(pid) else None

        pid = wait_until(live_owner, timeout=timeout, what=f"a live process serving {path}")
        assert pid is not None  # for mypy: wait_until returns only a true value
        self.pids.append(pid)
        return pid

    def wait_gone(self, pid: int, timeout: float = 10.0) -> None:
        """Wait until *pid* has exited.

        Raises:
            AssertionError: it still runs after *timeout* seconds.
        """
        wait_until(lambda: not process_alive(pid), timeout=timeout, what=f"PID {pid} to exit")

    def stop_all(self) -> None:
        """SIGTERM every daemon still running; SIGKILL those still running 5 seconds later.

        Stopping again does no harm: a PID that has exited is skipped.
        """
        for pid in self.pids:
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for pid in self.pids:
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(name="daemons")
def fixture_daemons() -> Iterator[Daemons]:
    """The daemons the test finds (:meth:`Daemons.find`), stopped after it, pass or fail."""
    found = Daemons()
    try:
        yield found
    finally:
        found.stop_all()


@pytest.fixture(name="topo")
def fixture_topo(daemons: Daemons) -> Iterator[Topology]:
    """A topology whose daemons are stopped before its namespaces are deleted."""
    with Topology() as topology:
        try:
            yield topology
        finally:
            daemons.stop_all()


# --- looking at an interface ----------------------------------------------------------------------


def link(ns: Namespace, name: str) -> dict[str, object] | None:
    """``ip -j link show NAME`` in *ns*, or None if there is no such link."""
    result = ns.ip("-j", "link", "show", name, check=False)
    if result.returncode != 0:
        return None
    found: list[dict[str, object]] = json.loads(result.stdout)
    return found[0]


def wg(ns: Namespace, *args: str) -> str:
    """What ``wg ARGS`` prints when run in *ns*.

    Raises:
        subprocess.CalledProcessError: wg failed.
    """
    return ns.run(["wg", *args], timeout=30).stdout
