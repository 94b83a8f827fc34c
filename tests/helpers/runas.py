"""Run a minivpn command, or a Python function, as another user, from the root test process.

Tests of ownership need a second, unprivileged user (``nobody``, uid 65534) to attach to a
device root made.  The obvious ``setpriv --reuid 65534 python -m minivpn ...`` fails here: the
interpreter lives under ``/root/.pyenv`` and ``/root`` is mode 0700, so the new user cannot even
execute it.  So this module does it in the other order:

1. start Python as root (``python -m tests.helpers.runas ...``);
2. import ``minivpn.cli.main`` and every other minivpn module, plus the target of ``--call``,
   while the files are still readable: nothing may be imported lazily after step 3;
3. drop privileges for good: ``setgroups``, ``setgid``, ``setuid`` (and check that getting root
   back fails);
4. run ``minivpn.cli.main.main(argv)`` (or the function) and exit with its status.

Command line::

    python -m tests.helpers.runas --uid 65534 --gid 65534 [--groups G,...] -- tun attach t0
    python -m tests.helpers.runas --uid 65534 --gid 65534 --call PKG.MODULE:FUNC -- ARG...

From tests, :func:`run_cli_as` and :func:`run_call_as` build that command line and return the
finished process.  Run them from the repository root (``tests`` is a namespace package found
through the current directory, ``tests.helpers`` a regular one).

Another user also needs to open ``/dev/net/tun``, which is normally mode 0666 but 0600 on some
machines (containers).  :func:`tun_openable_by_everyone` bind-mounts a 0666 node over it, which
only changes the private mount namespace that ``netns/isolate`` made.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = [
    "drop_privileges",
    "import_everything",
    "main",
    "run_call_as",
    "run_cli_as",
    "tun_openable_by_everyone",
]

#: The repository root: the working directory the child needs to find ``tests.helpers``.
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Modules that minivpn or Python itself may import late (on first use): minivpn.netconf
#: imports pyroute2 only when it first talks netlink.
_LATE_IMPORTS = (
    "argparse",
    "asyncio",
    "encodings.idna",
    "grp",
    "json",
    "logging",
    "pyroute2",
    "pyroute2.netlink.exceptions",
    "pwd",
    "signal",
    "socket",
    "traceback",
)


def import_everything(extra: Sequence[str] = ()) -> list[str]:
    """Import every minivpn module, a few late stdlib ones and *extra*; return the failures.

    A module that fails to import (one being written by someone else, say) is reported but not
    fatal: if the command needs it, the command fails with its own error.
    """
    failed = []
    for name in (*_LATE_IMPORTS, "minivpn.cli.main", *extra):
        importlib.import_module(name)
    import minivpn

    for module in pkgutil.walk_packages(minivpn.__path__, "minivpn."):
        if module.name.rpartition(".")[2] == "__main__":
            continue  # importing minivpn.__main__ would run the command line
        try:
            importlib.import_module(module.name)
        except Exception as exc:  # any import error: note it and go on
            failed.append(f"{module.name}: {exc!r}")
    return failed


def drop_privileges(uid: int, gid: int, groups: Sequence[int] = ()) -> None:
    """Become *uid*/*gid* with supplementary *groups*, irreversibly.

    Raises:
        RuntimeError: root could be regained (the drop did not work).
    """
    os.setgroups(list(groups))
    os.setgid(gid)
    os.setuid(uid)
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise RuntimeError("privileges were not dropped: setuid(0) succeeded")
    os.environ["HOME"] = "/"


def _load_callable(target: str) -> Callable[..., object]:
    module_name, _, function_name = target.partition(":")
    if not function_name:
        raise SystemExit(f"runas: --call wants MODULE:FUNCTION, got {target!r}")
    function: Callable[..., object] = getattr(importlib.import_module(module_name), function_name)
    return function


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m tests.helpers.runas`` entry point."""
    parser = argparse.ArgumentParser(prog="runas", description=__doc__.splitlines()[0])
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument(
        "--groups", default="", help="comma-separated supplementary gids (default: none)"
    )
    parser.add_argument("--call", metavar="MODULE:FUNCTION", help="call this instead of minivpn")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="after '--': arguments")
    options = parser.parse_args(argv)
    args = options.args[1:] if options.args[:1] == ["--"] else options.args

    # Step 2: everything is imported while the files are readable.
    function = _load_callable(options.call) if options.call else None
    import_everything()
    from minivpn.cli.main import main as minivpn_main

    # Step 3: no way back.
    groups = [int(g) for g in options.groups.split(",") if g]
    drop_privileges(options.uid, options.gid, groups)

    # Step 4.
    if function is not None:
        result = function(*args)
        return result if isinstance(result, int) else 0
    return minivpn_main(args)


def _command(uid: int, gid: int, groups: Sequence[int], call: str | None) -> list[str]:
    command = [sys.executable, "-m", "tests.helpers.runas", "--uid", str(uid), "--gid", str(gid)]
    if groups:
        command += ["--groups", ",".join(str(g) for g in groups)]
    if call:
        command += ["--call", call]
    return [*command, "--"]


def run_cli_as(
    argv: Sequence[str],
    *,
    uid: int,
    gid: int,
    groups: Sequence[int] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``minivpn ARGV`` as *uid*/*gid* and wait for it (output captured as text)."""
    return subprocess.run(
        [*_command(uid, gid, groups, None), *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_call_as(
    target: str,
    args: Sequence[str] = (),
    *,
    uid: int,
    gid: int,
    groups: Sequence[int] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Call ``MODULE:FUNCTION(*args)`` as *uid*/*gid* in a child process and wait for it.

    The function's int return value (or 0) is the exit status; string arguments only.
    """
    return subprocess.run(
        [*_command(uid, gid, groups, target), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def tun_openable_by_everyone(path: str = "/dev/net/tun") -> Iterator[None]:
    """Make *path* mode 0666 for the duration, by bind-mounting a fresh node over it.

    Only for a private mount namespace (``netns/isolate``); the host's node is untouched.
    Does nothing when the node is already 0666.
    """
    info = os.stat(path)
    if stat.S_IMODE(info.st_mode) & 0o666 == 0o666:
        yield
        return
    with tempfile.TemporaryDirectory(dir="/run", prefix="minivpn-tun-") as tmp:
        node = os.path.join(tmp, "tun")
        os.mknod(node, 0o666 | stat.S_IFCHR, info.st_rdev)
        os.chmod(node, 0o666)  # mknod's mode is filtered by the umask
        subprocess.run(["mount", "--bind", node, path], check=True, timeout=30)
        try:
            yield
        finally:
            subprocess.run(["umount", path], check=True, timeout=30)


if __name__ == "__main__":
    sys.exit(main())
