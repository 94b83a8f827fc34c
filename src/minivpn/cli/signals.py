"""Stopping a foreground command cleanly on SIGINT (Ctrl-C) or SIGTERM."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable


async def stop_on_signals(
    scope: trio.CancelScope,
    on_signal: Callable[[str], None] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Cancel *scope* at the first SIGINT or SIGTERM.

    Start it with ``await nursery.start(stop_on_signals, nursery.cancel_scope)`` before
    anything else: from then on the signals are caught, so a SIGTERM ends the command through
    its normal clean-up, never halfway through setting up.

    Args:
        scope: what to cancel (the command's nursery).
        on_signal: called first with the signal's name (``"SIGTERM"``), e.g. to log it.
        task_status: ``started()`` once the signals are caught.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if on_signal is not None:
                on_signal(signal.Signals(signum).name)
            scope.cancel()
            return
