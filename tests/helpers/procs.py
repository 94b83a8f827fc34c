"""Start, watch, signal and stop real processes in test namespaces, with bounded waits.

The device tests run ``python -m minivpn ...`` (and ``iperf3``, ``ping``) inside namespaces made
by :class:`netns.Topology`, and watch what they print.  A process started with
:func:`start` writes its stdout and stderr to files, not pipes: a chatty process can never block
on a full pipe, nothing competes with :class:`~netns.Topology` (which reads pipes when it stops
a process), and the test reads what was printed so far at any moment.

Every wait here has a timeout and fails the test with the process's output when it expires, so
a hung process shows what it was doing instead of hanging CI.

Example::

    with Topology() as topo:
        a, b = topo.pair()
        server = start(b, [*MINIVPN, "tunnel", "t0", "--listen", ":5000"], tmp_path, "server")
        server.wait_for("device t0 .* up")
        ...
        assert server.stop(signal.SIGINT) == 0
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from netns import Namespace

__all__ = [
    "MINIVPN",
    "Process",
    "assert_clean_failure",
    "ping",
    "run_all",
    "start",
    "start_minivpn",
    "wait_for_ping",
    "wait_until",
]

#: The command line prefix of minivpn, run by the test's own interpreter.
MINIVPN = (sys.executable, "-m", "minivpn")

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call *predicate* until it returns something true, and return that.

    Raises:
        AssertionError: still false after *timeout* seconds (the message names *what*).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A process started by :func:`start`: its output so far, signals, exit status.

    Args:
        popen: the running process (the topology stops it on exit if the test did not).
        name: a label for messages.
        stdout_path, stderr_path: the files its output goes to.
    """

    def __init__(
        self, popen: subprocess.Popen[str], name: str, stdout_path: Path, stderr_path: Path
    ) -> None:
        self.popen = popen
        self.name = name
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        """The process id (``ip netns exec`` execs the command, so this is the command's)."""
        return self.popen.pid

    def stdout(self) -> str:
        """Everything printed on stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        """Everything printed on stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        """Status and output, for assertion messages."""
        status = self.popen.poll()
        return (
            f"{self.name} (pid {self.pid}, "
            f"{'running' if status is None else f'exit status {status}'})\n"
            f"--- stdout ---\n{self.stdout()}--- stderr ---\n{self.stderr()}"
        )

    def wait_for(
        self, pattern: str, *, stream: str = "stderr", timeout: float = 15.0
    ) -> re.Match[str]:
        """Wait until *pattern* (a regular expression) matches a line of the output.

        Raises:
            AssertionError: the process exited, or *timeout* passed, without a match.
        """
        read = self.stderr if stream == "stderr" else self.stdout
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.popen.poll() is not None  # before reading: output is then complete
            match = regex.search(read())
            if match:
                return match
            if exited:
                raise AssertionError(f"{pattern!r} never printed; {self.describe()}")
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{pattern!r} not printed within {timeout} s; {self.describe()}"
                )
            time.sleep(0.05)

    def count(self, pattern: str, *, stream: str = "stderr") -> int:
        """How many times *pattern* matches the output so far."""
        text = self.stderr() if stream == "stderr" else self.stdout()
        return len(re.findall(pattern, text, re.MULTILINE))

    def send_signal(self, signum: int) -> None:
        """Send *signum* to the process (by PID)."""
        assert self.popen.poll() is None, f"cannot signal: {self.describe()}"
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit and return its status.

        Raises:
            AssertionError: still running after *timeout* seconds.
        """
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s; {self.describe()}") from None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send *signum* and wait for the exit status."""
        self.send_signal(signum)
        return self.wait(timeout)

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None


def start(ns: Namespace, cmd: Sequence[str], log_dir: Path, name: str) -> Process:
    """Start *cmd* in namespace *ns*, output to ``log_dir/NAME.out`` and ``NAME.err``."""
    stdout_path = log_dir / f"{name}.out"
    stderr_path = log_dir / f"{name}.err"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        popen = ns.popen(list(cmd), stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    return Process(popen, name, stdout_path, stderr_path)


def start_minivpn(ns: Namespace, args: Sequence[str], log_dir: Path, name: str) -> Process:
    """Start ``minivpn ARGS`` in *ns* (see :func:`start`)."""
    return start(ns, [*MINIVPN, *args], log_dir, name)


def ping(
    ns: Namespace, address: str, *, count: int = 1, interval: float = 0.2, wait: float = 1.0
) -> subprocess.CompletedProcess[str]:
    """``ping -c COUNT -i INTERVAL -W WAIT -n ADDRESS`` in *ns*; never raises on failure."""
    return ns.run(
        ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), address],
        check=False,
        timeout=count * interval + wait + 10,
    )


def wait_for_ping(ns: Namespace, address: str, *, timeout: float = 15.0) -> None:
    """Ping *address* from *ns* once at a time until a reply comes back.

    Raises:
        AssertionError: no reply within *timeout* seconds.
    """
    wait_until(
        lambda: ping(ns, address, wait=0.5).returncode == 0,
        timeout=timeout,
        what=f"a ping reply from {address} in {ns.name}",
        interval=0.1,
    )


def run_all(
    ns: Namespace, commands: Sequence[Sequence[str]], *, timeout: float = 60.0
) -> list[subprocess.CompletedProcess[str]]:
    """Run *commands* in *ns* side by side and wait for all of them (bounded by *timeout*).

    For many short commands (usage errors, say), whose time is mostly interpreter start-up.

    Returns:
        One finished process per command, in order, output captured as text.
    """
    procs = [(command, ns.popen(list(command), stdin=subprocess.DEVNULL)) for command in commands]
    deadline = time.monotonic() + timeout
    results = []
    for command, proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{command} still running after {timeout} s") from None
        results.append(subprocess.CompletedProcess(command, proc.returncode, stdout, stderr))
    return results


def assert_clean_failure(result: subprocess.CompletedProcess[str], *, lines: int | None = 1) -> str:
    """Check a command failed as a user expects: non-zero status, no traceback.

    Args:
        result: the finished command.
        lines: how many lines stderr must have (None: any number).

    Returns:
        stderr's last line (the error message).
    """
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr, result.stderr
    stderr_lines = result.stderr.strip().splitlines()
    assert stderr_lines, result
    if lines is not None:
        assert len(stderr_lines) == lines, result.stderr
    return stderr_lines[-1]
