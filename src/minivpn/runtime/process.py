"""The process an interface lives in: signals, capabilities, daemonising, work in a child.

What ``minivpn up`` and ``minivpnd`` need from the operating system around the interface
itself (:mod:`minivpn.runtime.interface`), none of it specific to WireGuard:

* **signals**: :data:`STOP_SIGNALS`, and :func:`stop_signals_held`, which keeps SIGINT and
  SIGTERM pending from start-up until trio listens for them, so that a signal arriving during
  set-up stops the interface cleanly instead of killing the process half-way;
* **capabilities**: :func:`effective_capabilities`, :func:`has_cap_net_admin`,
  :func:`require_cap_net_admin`;
* **daemonising**: :func:`daemonize` forks into the background before ``trio.run()``, while the
  process has a single thread (forking a process with threads copies only the calling thread,
  with whatever locks the others held); the child starts a new session (``setsid``), so the
  terminal's Ctrl-C and hang-up no longer reach it, and points its standard streams at
  ``/dev/null``.  :class:`Readiness` carries the child's "up" or "failed" back to the waiting
  parent;
* **work in a child**: :func:`run_in_child` runs one-off work that needs a big module (pyroute2,
  ~12 MiB) in a short-lived fork, so that the long-lived process never loads it;
  :func:`trim_heap` gives what start-up freed back to the kernel.

Nothing here imports trio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from minivpn.errors import MinivpnError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "CAP_NET_ADMIN",
    "CAP_SYS_ADMIN",
    "STOP_SIGNALS",
    "NotPrivileged",
    "Readiness",
    "daemonize",
    "effective_capabilities",
    "has_cap_net_admin",
    "require_cap_net_admin",
    "run_in_child",
    "stop_signals_held",
    "trim_heap",
]

log = logging.getLogger("minivpn.process")

#: The signals that stop an interface cleanly.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


#: Capability bits (linux/capability.h), as in ``CapEff`` of ``/proc/self/status``:
#: configuring the network, and most other administration (mounts, namespaces).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


class NotPrivileged(MinivpnError):
    """The process lacks CAP_NET_ADMIN, which creating and configuring an interface needs."""


# --- signals --------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM pending inside the block, unless trio is listening for them.

    :func:`~minivpn.runtime.interface.serve_until_stopped` unblocks them once its signal
    receiver is in place, and blocks them again before it removes it, so a stop signal either
    stops the interface cleanly or waits.  Signals still pending when the block ends arrived
    during teardown, when the interface was stopping anyway: they are dropped.

    A process started with SIGINT ignored (a background job of a script, ``nohup``) gets
    Python's SIGINT handler for the block.  Setting a signal to "ignored" discards it when it is
    pending, and trio does exactly that, harmlessly it thinks, whenever it checks for the main
    thread (``signal.signal(SIGINT, signal.getsignal(SIGINT))``): a SIGINT held here would be
    lost, while one a moment later, once trio listens, stops the interface.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if sigint_ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass
        if sigint_ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- privileges -----------------------------------------------------------------------------------


def effective_capabilities() -> int | None:
    """The effective capability bits of this process (``CapEff``), or None if unreadable.

    Capabilities count in the user namespace the process is in: root of ``unshare -Urn`` has
    them all there.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def has_cap_net_admin() -> bool:
    """Whether this process may configure the network (CAP_NET_ADMIN in its namespace)."""
    capabilities = effective_capabilities()
    if capabilities is None:
        return os.geteuid() == 0
    return bool(capabilities >> CAP_NET_ADMIN & 1)


def require_cap_net_admin(action: str) -> None:
    """Refuse early, with a clear message, when *action* cannot work without CAP_NET_ADMIN.

    Raises:
        NotPrivileged: the process lacks it.
    """
    if not has_cap_net_admin():
        raise NotPrivileged(
            f"cannot {action}: it needs root (CAP_NET_ADMIN) to create the device and set its "
            "addresses and routes; run it with sudo"
        )


# --- daemonising ----------------------------------------------------------------------------------


class Readiness:
    """How a daemonised child tells the waiting parent that start-up succeeded or failed.

    The parent of ``minivpn up`` waits on a pipe, so that a failure of the child's start-up
    (an occupied UDP port is only found when the runtime binds) is reported by the command the
    user typed.  Without a pipe (foreground, or ``minivpnd``, whose parent does not wait)
    reporting only logs.  Only the first report counts.

    Args:
        fd: the pipe's write end, or -1 for none.
    """

    def __init__(self, fd: int = -1) -> None:
        self._fd = fd
        self.reported = False

    def ready(self, message: str) -> None:
        """Start-up succeeded; *message* is what the parent prints (e.g. "wg0 is up ...").

        Without a parent waiting, it is logged here instead.
        """
        waiting = self._fd >= 0
        if self._report(b"ready\n" + message.encode()) and not waiting:
            log.info("%s", message)

    def failed(self, message: str) -> None:
        """Start-up failed; the parent prints *message* and exits with status 1."""
        self._report(b"failed\n" + message.encode())

    def _report(self, data: bytes) -> bool:
        if self.reported:
            return False
        self.reported = True
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.write(fd, data)
            except OSError:
                pass  # the parent is gone (killed while waiting): nobody to tell
            finally:
                os.close(fd)
        return True


def daemonize(*, program: str, keep_output: bool, wait_for_readiness: bool) -> Readiness:
    """Fork into the background.  Returns in the child only; the parent exits.

    The parent exits with status 0 at once, or, with *wait_for_readiness*, once the child
    reports (0 after :meth:`Readiness.ready`, 1 after :meth:`Readiness.failed` or if the child
    dies first).  It exits with ``os._exit``: the ``finally`` blocks and context managers on
    its stack would otherwise close the device and unlink the socket that the child now uses.

    The child starts a new session, and its standard input and output go to ``/dev/null``;
    standard error too unless *keep_output* (wireguard-go keeps them when ``LOG_LEVEL`` is set
    and not ``silent``).  It keeps the working directory, as wireguard-go does.

    Args:
        program: the command name the parent uses in its messages.
        keep_output: keep stdout and stderr (for logs).
        wait_for_readiness: the parent waits for the child's report.

    Returns:
        The child's end of the readiness pipe.
    """
    read_fd, write_fd = os.pipe() if wait_for_readiness else (-1, -1)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        _parent_exit(program, pid, read_fd, write_fd)
    if read_fd >= 0:
        os.close(read_fd)
    os.setsid()
    _redirect_stdio(keep_output)
    return Readiness(write_fd)


def _parent_exit(program: str, pid: int, read_fd: int, write_fd: int) -> NoReturn:
    """The parent's side of :func:`daemonize`: wait for the report if asked, then exit."""
    status = 1
    try:
        if read_fd < 0:
            status = 0
        else:
            os.close(write_fd)
            # Ctrl-C may interrupt the wait; the child, in its own session, goes on.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            status = _read_report(program, pid, read_fd)
    except KeyboardInterrupt:
        status = 130
    except BaseException as exc:  # a bug: say something rather than exit silently
        print(f"{program}: internal error while waiting for the daemon: {exc!r}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _read_report(program: str, pid: int, read_fd: int) -> int:
    """Read the child's report to the end; print it; return the exit status."""
    chunks = []
    while chunk := os.read(read_fd, 4096):
        chunks.append(chunk)
    kind, _, message = b"".join(chunks).decode(errors="replace").partition("\n")
    if kind == "ready":
        log.info("%s", message)
        return 0
    if kind == "failed":
        print(f"{program}: {message}", file=sys.stderr)
        return 1
    print(f"{program}: the daemon (PID {pid}) exited during start-up", file=sys.stderr)
    return 1


def _redirect_stdio(keep_output: bool) -> None:
    """Point stdin (and stdout/stderr unless *keep_output*) at /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    targets = (0,) if keep_output else (0, 1, 2)
    for target in targets:
        os.dup2(null, target)
    if null not in targets:
        os.close(null)


# --- work in a child, memory ----------------------------------------------------------------------


def run_in_child(work: Callable[[], None]) -> None:
    """Run *work* in a forked child process and wait for it; its user error is raised here.

    For one-off work that needs a big module: what the child imports dies with it.  Call it
    before trio starts (a fork must not copy other threads).  A :class:`MinivpnError` in the
    child comes back as one with the same message and exit status; anything else comes back
    as a :class:`MinivpnError` naming it, since its traceback stayed in the child (which
    logged it).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        status = 0
        try:
            os.close(read_end)
            try:
                work()
            except MinivpnError as exc:
                os.write(write_end, f"{exc.exit_code} {exc}".encode())
                status = 1
            except BaseException as exc:  # report it, whatever it is
                log.exception("internal error")
                os.write(write_end, f"1 internal error: {exc!r}".encode())
                status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if report:
        exit_code, _, message = report.partition(" ")
        error = MinivpnError(message)
        error.exit_code = int(exit_code)
        raise error
    if status != 0:
        raise MinivpnError(f"internal error: the child process ended with status {status:#x}")


def trim_heap() -> None:
    """Give the C heap's free memory back to the kernel (glibc's ``malloc_trim``).

    Starting an interface imports some forty modules and compiles their classes; what that
    frees stays in the C heap, where glibc returns only the free space at its very top on its
    own.  The process never needs most of it again, so after start-up it is handed back:
    about 0.5-1 MiB of resident memory (docs/performance.md, "Memory of minivpnd").  Where the
    C library is not glibc, nothing happens.
    """
    import ctypes  # already loaded by trio

    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    malloc_trim(0)
