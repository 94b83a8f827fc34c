"""The demo's processes: started inside its namespaces, logged to files, stopped by PID.

:class:`Runner` starts each program (``minivpn up``, ``ping``, ``iperf3``, the helpers of
:mod:`minivpn.demo.helpers`) inside a namespace, in a session of its own, with its output in a
file of the demo's private directory.  :class:`Teardown` remembers everything the demo makes, in
order, and undoes it in reverse: processes first (by PID: SIGTERM, then SIGKILL after
:data:`STOP_GRACE` seconds), then namespaces, mounts and files.  It runs always, also after a
failure and after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from minivpn.demo.errors import DemoError
from minivpn.demo.namespaces import entering
from minivpn.outputfile import open_output
from minivpn.runtime.process import STOP_SIGNALS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

__all__ = [
    "DEMO_STOP_SIGNALS",
    "STOP_GRACE",
    "Runner",
    "Teardown",
    "stop",
    "tail",
    "wait_for_output",
]

#: Seconds a process gets after SIGTERM before SIGKILL.
STOP_GRACE = 3.0
#: Signals that stop the demo (with a teardown): an interface's, and SIGHUP, since the demo
#: runs in a terminal.
DEMO_STOP_SIGNALS = STOP_SIGNALS | {signal.SIGHUP}


class Runner:
    """Starts processes inside the demo's namespaces, logs their output to files, stops them.

    Output goes to files in the private directory rather than pipes: a chatty process never
    blocks on a full pipe, and what it printed can be read at any moment.
    """

    def __init__(self, workdir: Path, env: dict[str, str], teardown: Teardown) -> None:
        self.workdir = workdir
        self.env = env
        self.teardown = teardown
        self._logs: dict[int, Path] = {}
        self._by_tag: dict[str, Path] = {}

    def start(self, namespace: int, tag: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start *command* inside *namespace* (an open namespace file); it is stopped at teardown.

        It runs in a session of its own, so Ctrl-C on the terminal reaches only the demo, which
        then stops it by PID.

        Raises:
            DemoError: it could not be started.
        """
        log = self.workdir / f"{tag}.log"
        with open_output(log, "log") as output:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                    # The demo has no threads, so running Python between fork and exec is safe.
                    preexec_fn=entering(namespace),  # noqa: PLW1509
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise DemoError(f"cannot start {command[0]}: {exc}") from None
        self.teardown.add_process(process)
        self._logs[process.pid] = log
        self._by_tag[tag] = log
        return process

    def run(
        self, namespace: int, command: Sequence[str], *, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run *command* inside *namespace* and wait for it (killed after *timeout* seconds).

        Raises:
            DemoError: it could not be started or did not finish in time.
        """
        try:
            return subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
                check=False,
                start_new_session=True,
                preexec_fn=entering(namespace),
            )
        except subprocess.TimeoutExpired:
            raise DemoError(f"{command[0]} did not finish within {timeout:g} s") from None
        except (OSError, subprocess.SubprocessError) as exc:
            raise DemoError(f"cannot run {command[0]}: {exc}") from None

    def log_of(self, process: subprocess.Popen[bytes]) -> Path:
        return self._logs[process.pid]

    def output(self, process: subprocess.Popen[bytes]) -> str:
        """What *process* printed so far."""
        return self._logs[process.pid].read_text(errors="replace")

    def tail(self, tag: str) -> str:
        """The last lines printed by the process started as *tag*."""
        return tail(self._by_tag[tag]) if tag in self._by_tag else ""


def wait_for_output(
    runner: Runner, process: subprocess.Popen[bytes], text: str, *, what: str
) -> None:
    """Wait until *process* has printed *text* (bounded: 10 s).

    Raises:
        DemoError: it exited first, or took too long.
    """
    deadline = time.monotonic() + 10.0
    while text not in runner.output(process):
        if process.poll() is not None:
            raise DemoError(
                f"{what} exited with status {process.returncode}:\n{runner.output(process)[-500:]}"
            )
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not start within 10 s")
        time.sleep(0.02)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop *process* by PID: SIGTERM, up to STOP_GRACE seconds, then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_GRACE)


def tail(log: Path, lines: int = 8) -> str:
    """The last *lines* lines of the file *log*, indented for the demo's narrative."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(f"   | {line}" for line in text.splitlines()[-lines:])


class Teardown:
    """What to undo, in reverse order of making: run always, also on error and Ctrl-C."""

    def __init__(self) -> None:
        self._owner = os.getpid()
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    def add(self, description: str, undo: Callable[[], None]) -> None:
        """Register *undo*; *description* (if any) is printed when it has worked."""
        self._steps.append((description, undo))

    def add_process(self, process: subprocess.Popen[bytes]) -> None:
        """Register a process to stop by PID; processes are stopped before anything else."""
        self._processes.append(process)

    def run(self, say: Callable[[str], None]) -> None:
        """Undo everything, reporting what was done and what failed.

        SIGINT, SIGTERM and SIGHUP are held during the teardown: a Ctrl-C must not leave
        namespaces behind.  They are delivered when the teardown has finished.
        """
        if os.getpid() != self._owner or not (self._steps or self._processes):
            return  # nothing to do, or a fork of the demo (see steps._stop_signals_interrupt)
        held = set(DEMO_STOP_SIGNALS)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            done, failed = self._undo()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        say("\n8. Teardown (it also runs after a failure or Ctrl-C)")
        for item in done:
            say(f"   {item}")
        for problem in failed:
            say(f"   could not undo: {problem}")

    def _undo(self) -> tuple[list[str], list[str]]:
        done: list[str] = []
        failed: list[str] = []
        stopped = 0
        for process in reversed(self._processes):
            try:
                stop(process)
                stopped += 1
            except (OSError, subprocess.SubprocessError) as exc:
                failed.append(f"stop PID {process.pid}: {exc}")
        if stopped:
            done.append(f"stopped {stopped} processes by PID")
        self._processes.clear()
        for description, undo in reversed(self._steps):
            try:
                undo()
            except Exception as exc:  # report it and go on: undo everything else
                failed.append(f"{description or 'a step'}: {exc}")
            else:
                if description:
                    done.append(description)
        self._steps.clear()
        return done, failed
