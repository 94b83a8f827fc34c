"""A reader that goes away ends a command quietly: ``minivpn tun list | head -1``.

Python ignores SIGPIPE, so writing into a pipe whose reader has exited raises
``BrokenPipeError`` instead of killing the process as it kills ``ls``.  It may come from any
``print``, or only when Python flushes standard output at exit (a short output sits in the
buffer until then), which is why it seemed to happen "sometimes": it depends on whether
``head`` has exited before the write.  Caught at exit, it would be printed as "Exception
ignored ... BrokenPipeError" with exit status 120.

:func:`run_quietly_on_closed_pipe` runs a command's ``main``, flushes standard output while it
can still catch the error, and on ``BrokenPipeError`` points the closed streams at
``/dev/null`` (so that the flush at exit cannot fail again) and exits 0: the reader chose to
stop reading, nothing failed.  The recipe is the one in Python's documentation of SIGPIPE.
"""

from __future__ import annotations

import os
import select
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["discard_closed_output", "run_quietly_on_closed_pipe"]


def run_quietly_on_closed_pipe(run: Callable[[], int]) -> int:
    """Return ``run()``'s exit status, or 0 if its output pipe was closed by the reader."""
    try:
        try:
            status = run()
        except SystemExit:  # argparse: --help, --version, usage errors
            sys.stdout.flush()
            raise
        sys.stdout.flush()
    except BrokenPipeError:
        discard_closed_output()
        return 0
    except BaseExceptionGroup as group:  # printed from inside a trio nursery
        _, others = group.split(BrokenPipeError)
        if others is not None:
            raise
        discard_closed_output()
        return 0
    return status


def discard_closed_output() -> None:
    """Point standard output and error at ``/dev/null`` if their reader has gone away."""
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue  # replaced by something without a file (a test's StringIO)
        if _reader_gone(fd):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)


def _reader_gone(fd: int) -> bool:
    """Whether *fd* is a pipe or socket whose other end is closed (poll reports POLLERR)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
