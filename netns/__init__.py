"""Network-namespace topologies for tests, demos and benchmarks, always torn down.

A :class:`Topology` makes named network namespaces (``ip netns add``), veth pairs between them
and addresses on them, starts processes inside them, and on exit (normal or not) stops every
process it started, by PID, and deletes every namespace it made, which deletes every link inside.

It works as root and, for an ordinary user, inside ``netns/isolate`` (``unshare -Urnm`` with a
private ``/run``).  It shells out to ``ip`` on purpose: this is test and demo plumbing, not
product code, and ``ip`` commands are what a reader would type to build the same thing by hand.

Example::

    with Topology() as topo:
        a, b = topo.pair()              # two namespaces joined by veth, 198.51.100.1/.2
        b.popen(["iperf3", "-s", "-1"])
        a.run(["ping", "-c", "1", b.addr4])

Addresses stay inside the documentation and private ranges: outer links use 198.51.100.0/24 and
fd00:5100::/64; tests pick inner prefixes from 10.x and fd00::/8.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import TracebackType

__all__ = ["Namespace", "Topology", "isolated"]

_counter = itertools.count()


def isolated() -> bool:
    """True when running inside ``netns/isolate`` (a private network namespace)."""
    return os.environ.get("MINIVPN_ISOLATED") == "1"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


class Namespace:
    """One named network namespace inside a :class:`Topology`."""

    def __init__(self, topology: Topology, name: str) -> None:
        self.topology = topology
        self.name = name
        #: Addresses given by :meth:`Topology.pair`, for convenience.
        self.addr4 = ""
        self.addr6 = ""
        #: Name of the veth end inside this namespace, when made by :meth:`Topology.pair`.
        self.veth = ""

    def prefix(self) -> list[str]:
        """The command prefix that runs something inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run *cmd* in the namespace and wait for it (bounded by *timeout* seconds)."""
        return subprocess.run(
            [*self.prefix(), *cmd],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=env,
        )

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start *cmd* in the namespace; the topology stops it (by PID) on exit."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            [*self.prefix(), *cmd], start_new_session=True, **kwargs
        )
        self.topology.processes.append(proc)
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip ARGS`` inside the namespace."""
        return _ip("-n", self.name, *args, check=check)


class Topology:
    """A set of namespaces and processes that is always cleaned up.

    Args:
        prefix: start of every namespace name; a random tag and a counter follow, so parallel
            runs and leftovers from a killed run never collide.
    """

    def __init__(self, prefix: str = "mv") -> None:
        self.prefix = f"{prefix}{secrets.token_hex(2)}"
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def namespace(self, tag: str = "") -> Namespace:
        """Make a new namespace with ``lo`` up."""
        name = f"{self.prefix}{tag or 'n'}{next(_counter)}"
        _ip("netns", "add", name)
        ns = Namespace(self, name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(
        self, a: Namespace, b: Namespace, name_a: str = "", name_b: str = ""
    ) -> tuple[str, str]:
        """Join *a* and *b* by a veth pair (both ends up) and return the two link names."""
        n = next(_counter)
        name_a = name_a or f"ve{n}a"
        name_b = name_b or f"ve{n}b"
        _ip("link", "add", name_a, "netns", a.name, "type", "veth", "peer", name_b, "netns", b.name)
        a.ip("link", "set", name_a, "up")
        b.ip("link", "set", name_b, "up")
        return name_a, name_b

    def pair(self) -> tuple[Namespace, Namespace]:
        """Two namespaces joined by veth, with IPv4 and IPv6 addresses on the veth ends.

        A gets 198.51.100.1/24 and fd00:5100:100::1/64, B gets .2 and ::2.  Every pair uses the
        same addresses: each lives in namespaces of its own, so they never meet, and they stay
        inside the documentation range.  IPv6 duplicate address detection is turned off so the
        addresses are usable at once.
        """
        a, b = self.namespace("a"), self.namespace("b")
        va, vb = self.veth(a, b)
        for i, (ns, link) in enumerate(((a, va), (b, vb)), start=1):
            ns.run(["sysctl", "-qw", f"net.ipv6.conf.{link}.accept_dad=0"])
            ns.ip("addr", "add", f"198.51.100.{i}/24", "dev", link)
            ns.ip("addr", "add", f"fd00:5100:100::{i}/64", "dev", link, "nodad")
            ns.addr4 = f"198.51.100.{i}"
            ns.addr6 = f"fd00:5100:100::{i}"
            ns.veth = link
        return a, b

    def close(self) -> None:
        """Stop every process started here (by PID), then delete every namespace."""
        for proc in self.processes:
            _stop(proc)
        self.processes.clear()
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns.name, check=False)
        self.namespaces.clear()


def _stop(proc: subprocess.Popen[str], grace: float = 3.0) -> None:
    """SIGTERM the process group *proc* leads, then SIGKILL it after *grace* seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=grace)


@contextlib.contextmanager
def topology(prefix: str = "mv") -> Iterator[Topology]:
    """``with topology() as topo:`` -- the same as ``with Topology() as topo:``."""
    with Topology(prefix) as topo:
        yield topo
