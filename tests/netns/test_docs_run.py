"""Every runnable code block of README.md and docs/*.md, run as a reader would run it.

Each block gets its own network namespaces (``netns.Topology``): one host, or the two hosts a
``console`` block names in its prompts (``hosta#``, ``hostb#``), joined by a veth pair, the
first sorted name at 198.51.100.1, the second at .2, each name in the other's ``/etc/hosts``.
Every command runs through ``ip netns exec`` with a private ``/etc/hosts`` and a
``/run/wireguard`` of its host, so that ``minivpnd``, ``minivpn up`` and ``wg`` find each
other there and nowhere else; as root, or, after a ``$`` prompt, as an ordinary user (uid 65534
in a child user namespace: no capabilities).  What is left running at the end -- background
jobs, daemons found through their sockets -- is stopped by PID, and the namespaces go.

How a block passes (the conventions are in :mod:`tests.helpers.docs` and docs/tour.md):

* ``sh``: ``bash -e -o pipefail`` must exit 0.  After a line that puts a job in the background
  (``... &``), the script pauses until that job has printed something (at most 10 s), as a
  reader watches it start before typing the next line.
* ``console``: each command's output must be what the block shows; a command shown without
  output must exit 0.  A command runs on in its terminal (its host or user) while the
  following commands run in others; the next command in the same terminal waits for it to end,
  ``^C`` interrupts it, and those still running at the end are stopped.
* ``python``: the program must exit 0; one that serves (with ``then:`` commands) is stopped with
  SIGINT once they have succeeded.

In a user namespace (``nox`` run by an ordinary user) tcpdump cannot read a file as root (it
changes to its own user and cannot), so there ``tcpdump`` runs as ``nobody`` in a child user
namespace, as docs/privileges.md tells readers to do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.helpers.daemons import process_alive, socket_owner
from tests.helpers.docs import REPO_ROOT, Block, Command, all_blocks, output_matches, parse_console
from tests.helpers.runas import tun_openable_by_everyone
from tests.helpers.tools import in_user_namespace

from netns import Namespace, Topology

if TYPE_CHECKING:
    from collections.abc import Callable

#: Seconds one command (or a whole sh block, or a program) may take.
TIMEOUT = 90.0
#: Seconds a program that goes on running gets to print what the block shows.
SHOWN_TIMEOUT = 30.0
#: Seconds a command shown without output gets before the next one is typed elsewhere.
SETTLE = 2.0
#: Seconds a ``then:`` command is tried for.
THEN_TIMEOUT = 20.0
#: Where the blocks' hosts live: their addresses, in sorted order of their names.
ADDRESSES = ("198.51.100.1", "198.51.100.2")
#: The uid and gid of the first user a ``users:`` directive names; the next get the next ones.
FIRST_UID = 60001

BLOCKS = [block for block in all_blocks() if block.runs_here]

_PAUSE = r"""
__docs_pause() {  # a job went to the background: wait until it has printed something
    local pid=$1 size i
    size=$(stat -c %s "$DOCS_OUTPUT")
    for ((i = 0; i < 100; i++)); do
        if (( $(stat -c %s "$DOCS_OUTPUT") > size )); then sleep 0.2; return 0; fi
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    return 0
}
__docs_settle() {  # wait until the output has been still for 0.3 s (at most 9 s)
    local size i
    for ((i = 0; i < 30; i++)); do
        size=$(stat -c %s "$DOCS_OUTPUT")
        sleep 0.3
        (( $(stat -c %s "$DOCS_OUTPUT") == size )) && return 0
    done
    return 0
}
"""
_BACKGROUND = re.compile(r"(?<![&|])&\s*(#.*)?$")


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_the_block_runs_as_shown(block: Block, tmp_path: Path) -> None:
    run_block(block, tmp_path)


#: Blocks that must fail, and how: the runner itself is tested, so that it cannot pass a block
#: by accident.
FAILING = [
    ("sh", "true\nfalse\ntrue\n", "the block exited with status 1"),
    ("sh", "minivpn tun list --no-such-option\n", "the block exited with status 2"),
    ("sh", "false | true\n", "the block exited with status 1"),  # pipefail
    ("console", "# echo one\ntwo\n", "printed something else"),
    ("console", "# echo one; echo two\none\n", "printed something else"),
    ("console", "# false\n", "exited with status 1"),
    ("console", "$ minivpn tun add mvdocx0\n", "exited with status 1"),  # no CAP_NET_ADMIN
    ("python", "raise SystemExit(3)\n", "the program exited with status 3"),
    ("python", "import minivpn.no_such_module\n", "the program exited with status 1"),
]


@pytest.mark.parametrize(("info", "text", "message"), FAILING)
def test_a_block_that_fails_fails_the_test(
    info: str, text: str, message: str, tmp_path: Path
) -> None:
    block = Block(path=REPO_ROOT / "made-up.md", line=1, info=info, text=text)
    with pytest.raises(AssertionError, match=re.escape(message)):
        run_block(block, tmp_path)


def run_block(block: Block, tmp_path: Path) -> None:
    """Run *block* as the module documentation says; AssertionError when it does not pass."""
    users = block.directive("users")
    if users and (in_user_namespace() or os.geteuid() != 0):
        pytest.skip(
            f"needs real root: the block runs as the user(s) {users}, who must be real other "
            "users (in a user namespace only your own uid is mapped)"
        )
    commands = parse_console(block.text) if block.info == "console" else []
    named = {command.who for command in commands} - {""} - set((users or "").split())
    with Scene(tmp_path, sorted(named) or [""], (users or "").split()) as scene:
        for before in block.all("before"):
            scene.check(scene.run(scene.first, before), f"before: {before}", block)
        if block.info == "sh":
            scene.run_script(block)
        elif block.info == "console":
            scene.run_console(block, commands)
        else:
            scene.run_python(block)


class Scene:
    """The hosts, users, files and processes of one block, all removed at the end."""

    def __init__(self, directory: Path, hosts: list[str], users: list[str]) -> None:
        if len(hosts) > len(ADDRESSES):
            raise AssertionError(f"a block may name at most two hosts, not {hosts}")
        self.directory = directory
        self.work = directory / "work"
        self.work.mkdir()
        self.hosts = hosts
        self.users = {name: FIRST_UID + index for index, name in enumerate(users)}
        self.topology = Topology("mvdoc")
        self.namespaces: dict[str, Namespace] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.bin = directory / "bin"
        self._exit = contextlib.ExitStack()

    @property
    def first(self) -> str:
        return self.hosts[0]

    def __enter__(self) -> Scene:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _build(self) -> None:
        Path("/run/wireguard").mkdir(mode=0o700, exist_ok=True)  # a mount point (private /run)
        if len(self.hosts) == 2:
            a, b = self.topology.pair()
            self.namespaces = dict(zip(self.hosts, (a, b), strict=True))
        else:
            self.namespaces = {self.hosts[0]: self.topology.namespace("h")}
        known = "".join(
            f"{address} {name}\n" for name, address in zip(self.hosts, ADDRESSES, strict=False)
        )
        for host in self.hosts:
            files = self._host_dir(host)
            files.mkdir()
            (files / "wireguard").mkdir(mode=0o700)
            (files / "log").mkdir()  # /var/log: a background `minivpn up` logs there
            (files / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{known}")
        if self.users:
            passwd = Path("/etc/passwd").read_text()
            group = Path("/etc/group").read_text()
            for name, uid in self.users.items():
                passwd += f"{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"
                group += f"{name}:x:{uid}:\n"
            (self.directory / "passwd").write_text(passwd)
            (self.directory / "group").write_text(group)
            self._exit.enter_context(tun_openable_by_everyone())
        self.bin.mkdir()
        tcpdump = shutil.which("tcpdump", path="/usr/sbin:/usr/bin:/sbin:/bin")
        if in_user_namespace() and tcpdump is not None:
            shim = self.bin / "tcpdump"
            shim.write_text(
                "#!/bin/sh\n# tcpdump as nobody: as root of a user namespace it cannot read "
                "files (docs/privileges.md)\n"
                f'exec unshare --map-user=65534 --map-group=65534 -- {tcpdump} "$@"\n'
            )
            shim.chmod(0o755)

    def _host_dir(self, host: str) -> Path:
        return self.directory / f"host-{host or 'one'}"

    def close(self) -> None:
        """Stop every process by PID (the daemons found through their sockets), then the rest."""
        for process in self.processes:
            _stop_group(process)
        for host in self.hosts:
            sockets = (self._host_dir(host) / "wireguard").glob("*.sock")
            for path in sockets:
                pid = socket_owner(path)
                if pid is not None and process_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                    _wait(lambda pid=pid: not process_alive(pid), 5.0)  # type: ignore[misc]
                    if process_alive(pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
        self.topology.close()
        self._exit.close()

    # --- running commands -------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        path = f"{self.bin}:{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"
        return {
            "PATH": path,
            "HOME": str(self.work),
            "LC_ALL": "C.UTF-8",
            "TERM": "dumb",
            # Output in the order it is written, as a terminal shows it (a pipe would hold
            # Python's standard output back until it exits, and let standard error overtake it).
            "PYTHONUNBUFFERED": "1",
        }

    def argv(self, host: str, command: str, *, user: str | None = None) -> list[str]:
        """The command line that runs shell *command* on *host*, as root or as *user*
        ("" for an ordinary user, a name from ``users:`` for that user)."""
        files = self._host_dir(host)
        mounts = [
            f"mount --bind {files / 'hosts'} /etc/hosts",
            f"mount --bind {files / 'wireguard'} /run/wireguard",
            f"mount --bind {files / 'log'} /var/log",
        ]
        if self.users:
            mounts += [
                f"mount --bind {self.directory / 'passwd'} /etc/passwd",
                f"mount --bind {self.directory / 'group'} /etc/group",
            ]
        shell = ["bash", "-e", "-o", "pipefail", "-c", command]
        if user == "":
            shell = ["unshare", "--user", "--map-user=65534", "--map-group=65534", "--", *shell]
        elif user is not None:
            shell = self._as_user(user, command)
        setup = " && ".join(mounts)
        return [
            *self.namespaces[host].prefix(),
            "bash",
            "-c",
            f'{setup} && exec "$@"',
            "docs",
            *shell,
        ]

    def _as_user(self, user: str, command: str) -> list[str]:
        """``minivpn ARGS`` as a real other user, through tests/helpers/runas.py."""
        words = shlex.split(command, comments=True)
        if not words or words[0] != "minivpn":
            raise AssertionError(f"only minivpn commands run as {user}, not {command!r}")
        uid = self.users[user]
        return [
            sys.executable, "-m", "tests.helpers.runas", "--uid", str(uid), "--gid", str(uid),
            "--", *words[1:],
        ]  # fmt: skip

    def start(
        self, host: str, command: str, output: Path, *, user: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start *command*; its output (both streams, as a terminal shows them) goes to *output*."""
        with output.open("ab") as file:
            process = subprocess.Popen(
                self.argv(host, command, user=user),
                stdin=subprocess.DEVNULL,
                stdout=file,
                stderr=subprocess.STDOUT,
                cwd=self.work,
                env={
                    **self.environment(),
                    "DOCS_OUTPUT": str(output),
                    "PYTHONPATH": str(REPO_ROOT),
                },
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(self, host: str, command: str) -> tuple[int, str]:
        """Run *command* on *host* as root and wait for it: (status, output)."""
        output = self.directory / f"run-{len(self.processes)}.out"
        process = self.start(host, command, output)
        try:
            status = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            status = -1
        return status, output.read_text(errors="replace")

    def check(self, result: tuple[int, str], what: str, block: Block) -> None:
        status, output = result
        assert status == 0, f"{block.where}: {what} exited with status {status}:\n{output}"

    def run_then(self, block: Block) -> None:
        """Each ``then:`` command, tried until it succeeds (at most THEN_TIMEOUT seconds)."""
        for command in block.all("then"):
            deadline = time.monotonic() + THEN_TIMEOUT
            while True:
                status, output = self.run(self.first, command)
                if status == 0:
                    break
                assert time.monotonic() < deadline, (
                    f"{block.where}: then: {command} kept failing (status {status}):\n{output}"
                )
                time.sleep(0.5)

    # --- the three kinds of block -----------------------------------------------------------

    def run_script(self, block: Block) -> None:
        lines: list[str] = []
        jobs = 0
        for line in block.text.splitlines():
            if _BACKGROUND.search(line):
                if jobs:
                    # The last job's last words (a dump's summary, printed just after the
                    # ping it saw) must not pass for this job's first: wait as a reader would.
                    lines.append("__docs_settle")
                jobs += 1
                lines.extend((line, "__docs_pause $!"))
            else:
                lines.append(line)
        output = self.directory / "block.out"
        process = self.start(self.first, _PAUSE + "\n".join(lines), output)
        try:
            status = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            status = -1
        assert status == 0, (
            f"{block.where}: the block exited with status {status}:\n{block.text}\n"
            f"--- its output:\n{output.read_text(errors='replace')}"
        )
        self.run_then(block)

    def run_python(self, block: Block) -> None:
        program = self.work / "block.py"
        program.write_text(block.text)
        output = self.directory / "block.out"
        process = self.start(self.first, f"exec python {program}", output)
        if block.all("then"):
            _wait(lambda: process.poll() is not None, 1.0)
            assert process.poll() is None, (
                f"{block.where}: the program exited with status {process.returncode}:\n"
                f"{output.read_text(errors='replace')}"
            )
            self.run_then(block)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            return
        try:
            status = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            status = -1
        assert status == 0, (
            f"{block.where}: the program exited with status {status}:\n"
            f"{output.read_text(errors='replace')}"
        )

    def run_console(self, block: Block, commands: list[Command]) -> None:
        running: dict[str, tuple[Command, subprocess.Popen[bytes], Path]] = {}
        background: list[tuple[Command, Path]] = []
        for number, command in enumerate(commands):
            terminal = command.who
            if terminal in running:  # the prompt is back: what ran there has ended
                self._finish(block, *running.pop(terminal))
            user = (command.who if command.who in self.users else "") if not command.root else None
            host = self.first if command.who in self.users or not command.who else command.who
            output = self.directory / f"command-{number}.out"
            process = self.start(host, command.command, output, user=user)
            if _BACKGROUND.search(command.command):  # the prompt is back at once; the job goes on
                background.append((command, output))
                self._wait_shown(block, command, output, lambda: False)
                continue
            running[terminal] = (command, process, output)
            if command.after_interrupt is not None:
                self._wait_shown(block, command, output, _ended(process))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)
                self._finish(block, *running.pop(terminal))
            else:
                self._wait_shown(block, command, output, _ended(process))
        for command, process, output in running.values():
            if process.poll() is None and command.output:
                continue  # a program that goes on, its output checked by _wait_shown
            self._finish(block, command, process, output)
        self.run_then(block)

    def _wait_shown(
        self, block: Block, command: Command, output: Path, ended: Callable[[], bool]
    ) -> None:
        """Wait until the program has printed what the block shows, or has *ended*."""

        def shown() -> bool:
            text = output.read_text(errors="replace").splitlines()
            return bool(command.output) and output_matches(command.output, text, prefix=True)

        if command.output:
            _wait(lambda: ended() or shown(), SHOWN_TIMEOUT)
        else:
            _wait(ended, SETTLE)
        if not ended() and command.output:
            assert shown(), (
                f"{block.where}: `{command.command}` did not print what the block shows:\n"
                + _difference(command.output, output.read_text(errors="replace"))
            )

    def _finish(
        self, block: Block, command: Command, process: subprocess.Popen[bytes], output: Path
    ) -> None:
        """Wait for the program to end; compare all it printed with the block."""
        try:
            status = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{block.where}: `{command.command}` was still running when the block went on "
                f"in its terminal:\n{output.read_text(errors='replace')}"
            ) from None
        text = output.read_text(errors="replace")
        expected = list(command.output)
        if command.after_interrupt is not None:
            expected += list(command.after_interrupt)
        if expected:
            assert output_matches(expected, text.splitlines()), (
                f"{block.where}: `{command.command}` printed something else:\n"
                + _difference(expected, text)
            )
        else:
            assert status == 0, (
                f"{block.where}: `{command.command}` exited with status {status}:\n{text}"
            )


def _difference(expected: tuple[str, ...] | list[str], actual: str) -> str:
    shown = "\n".join(f"  | {line}" for line in expected)
    printed = "\n".join(f"  | {line}" for line in actual.splitlines())
    return f"--- the block shows:\n{shown}\n--- it printed:\n{printed}"


def _ended(process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is not None


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group *process* leads (by its PID), SIGKILL it 5 s later."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    # Background jobs of a finished script are in its group too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
