"""The demo's Ctrl-C handling: a KeyboardInterrupt that Python swallows is not lost.

Python ignores (prints and drops) an exception raised inside an at-fork callback.  A signal
that arrives while one runs -- pyroute2 and subprocess fork all through the demo -- raises its
KeyboardInterrupt there, and it is gone.  The demo keeps a flag besides, and checks it between
steps.  These tests make that happen for real: a fork, and a signal handled inside the
callback that runs after it.  They run with SIGINT's Python handler in place even when the test
run was started with SIGINT ignored (``sigint_not_ignored``); the demo itself leaves an ignored
signal ignored, as under ``nohup``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from minivpn.demo.steps import _stop_signals_interrupt

_armed: set[str] = set()  # "sigint" while the next fork should be followed by a SIGINT


def _signal_self_after_fork() -> None:
    # Runs in the parent after every fork of this test process; acts only while armed.
    if "sigint" in _armed:
        _armed.discard("sigint")
        os.kill(os.getpid(), signal.SIGINT)  # handled right here, inside the callback


os.register_at_fork(after_in_parent=_signal_self_after_fork)


def _fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _signal_self_and_wait(signum: int, seconds: float = 5.0) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(seconds)  # a handler that raises ends this at once


# Python reports the swallowed exception as "unraisable": that report is the point of the test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.usefixtures("sigint_not_ignored")
def test_interrupt_swallowed_in_an_at_fork_callback_is_still_seen() -> None:
    with _stop_signals_interrupt() as signalled:
        assert not signalled()
        _armed.add("sigint")
        _fork_and_reap()  # no KeyboardInterrupt comes out of this: Python swallowed it
        assert not _armed, "the callback did not run"
        assert signalled()


@pytest.mark.usefixtures("sigint_not_ignored")
def test_first_signal_raises_later_ones_are_ignored() -> None:
    with _stop_signals_interrupt() as signalled:
        with pytest.raises(KeyboardInterrupt):
            _signal_self_and_wait(signal.SIGINT)
        assert signalled()
        _signal_self_and_wait(signal.SIGTERM, seconds=0.01)  # the teardown runs on: ignored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_ignored_from_the_start_stays_ignored() -> None:
    """``nohup`` starts the demo with SIGHUP ignored (a background job, SIGINT): it stays so."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with _stop_signals_interrupt() as signalled:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            _signal_self_and_wait(signal.SIGHUP, seconds=0.01)
            assert not signalled()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
