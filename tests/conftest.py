"""Shared test configuration.

Tests under ``tests/netns/`` use real devices and namespaces.  They run only inside
``netns/isolate`` (a private network namespace), which ``nox -s tests`` arranges; elsewhere they
are skipped, or fail when ``MINIVPN_REQUIRE_NETNS=1`` says they must run (as in CI).
"""

from __future__ import annotations

import os

import pytest

import netns


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
