"""How much minivpn logs, and where: what ``-q``, ``-v``, ``-vv`` and ``-vvv`` stand for.

==========  =====================================================================================
verbosity   what is logged
==========  =====================================================================================
``-q``      warnings and errors only
(default)   what an interface does once: up, listening on a port, the data path, a handshake
            completed or given up (with the likely cause)
``-v``      and every handshake message sent or received (``retry 3 of 19``...), and the drops
            that mean a misconfiguration (unknown public key, allowed IPs that do not match),
            at most one line per kind and peer every 10 seconds
``-vv``     and every trace event, per packet too (``minivpn trace`` prints the same lines)
            and minivpn's own debugging messages
``-vvv``    and the debugging output of the libraries (pyroute2's netlink messages)
==========  =====================================================================================

``-v`` and ``-q`` add up and may stand anywhere on the command line.  The events of ``-v`` and
``-vv`` come from the trace (:mod:`minivpn.runtime.trace_server`), under the logger
``minivpn.events``; with neither, no tracer is attached and the data path pays nothing.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["configure_logging", "events_level"]


def events_level(verbosity: int) -> int:
    """The level of the ``minivpn.events`` logger for a verbosity (``-v`` = 1)."""
    if verbosity <= 0:
        return logging.WARNING
    return logging.INFO if verbosity == 1 else logging.DEBUG


def configure_logging(
    verbosity: int,
    *,
    prefix: str = "minivpn",
    stream: TextIO | None = None,
    timestamps: bool = False,
) -> None:
    """Log to *stream* (stderr) at the levels *verbosity* stands for (see the module docstring).

    Args:
        verbosity: the count of ``-v`` minus the count of ``-q``.
        prefix: what each line starts with (``minivpn``, ``minivpn (wg0)``).
        stream: where the lines go; standard error by default.
        timestamps: start each line with the date and time (for a log file; the journal and a
            terminal have their own).
    """
    stamp = "%(asctime)s " if timestamps else ""
    logging.basicConfig(
        # The root logger decides for the libraries: only their warnings, unless -vvv.
        level=logging.DEBUG if verbosity >= 3 else logging.WARNING,
        format=f"{stamp}{prefix}: %(message)s",
        stream=stream if stream is not None else sys.stderr,
        force=True,
    )
    own = logging.WARNING if verbosity < 0 else logging.INFO if verbosity < 2 else logging.DEBUG
    logging.getLogger("minivpn").setLevel(own)
    logging.getLogger("minivpn.events").setLevel(events_level(verbosity))
