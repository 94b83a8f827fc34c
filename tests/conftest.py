"""Shared test configuration.

Tests under ``tests/netns/`` use real devices and namespaces.  They run only inside
``netns/isolate`` (a private network namespace), which ``nox -s tests`` arranges; elsewhere they
are skipped, or fail when ``MINIVPN_REQUIRE_NETNS=1`` says they must run (as in CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import TYPE_CHECKING

import pytest

import netns

if TYPE_CHECKING:
    from collections.abc import Iterator


def pytest_configure(config: pytest.Config) -> None:
    """Background interfaces (``minivpn up``) log to a directory of the test run, never to
    ``/var/log/minivpn``, which ``netns/isolate`` does not make private."""
    if "MINIVPN_LOG_DIR" not in os.environ:
        directory = tempfile.mkdtemp(prefix="minivpn-test-logs-")
        os.environ["MINIVPN_LOG_DIR"] = directory
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    require = os.environ.get("MINIVPN_REQUIRE_NETNS") == "1"
    rootless = os.environ.get("MINIVPN_ROOTLESS") == "1"
    for item in items:
        if "tests/netns/" in item.nodeid.replace("\\", "/") or item.get_closest_marker("netns"):
            item.add_marker(pytest.mark.netns)
            if not netns.isolated():
                reason = "needs a private network namespace: run it through netns/isolate"
                if require:
                    raise pytest.UsageError(f"MINIVPN_REQUIRE_NETNS=1: {item.nodeid} {reason}")
                item.add_marker(pytest.mark.skip(reason=reason))
        if item.get_closest_marker("realroot") and (rootless or os.geteuid() != 0):
            item.add_marker(pytest.mark.skip(reason="needs real root to act as a second user"))


@pytest.fixture
def sigint_not_ignored() -> Iterator[None]:
    """For the test, SIGINT raises KeyboardInterrupt here and kills the children it starts.

    A shell without job control starts background jobs (``nox &`` in a script, some CI runners)
    with SIGINT ignored, and an ignored signal stays ignored across ``exec``: Python installs no
    handler, nor does the demo (on purpose, as under ``nohup``), and every child inherits it.
    Tests of Ctrl-C need it back; afterwards it is as it was.
    """
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
