"""Test, lint, type-check and benchmark sessions.

``nox`` with no arguments runs ``tests``, ``lint`` and ``typecheck``.  The tests run inside
``netns/isolate``: a private network and mount namespace (``unshare``), as root or, for an
ordinary user, under ``unshare --map-root-user``; nothing they make is visible on the host.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """pytest: sans-IO unit tests and real-device tests, all inside netns/isolate."""
    session.install("-e", ".[test]")
    session.run(
        "netns/isolate",
        "python",
        "-m",
        "pytest",
        *(session.posargs or ["-q"]),
        external=True,
        env={"MINIVPN_REQUIRE_NETNS": "1"},
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/ against trio's own inline types (no trio-typing; docs/typing.md)."""
    session.install("-e", ".[typecheck,test]")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput and latency benchmarks (never part of pass/fail tests)."""
    session.install("-e", ".[test]", "py-spy")
    if os.geteuid() != 0:
        session.error("the benchmark needs root (it builds namespaces and runs iperf3)")
    session.run(
        "python",
        "tests/bench/run.py",
        *(session.posargs or ["--streams", "1,4", "--profile", "minivpn"]),
    )
    if not session.posargs:
        session.run("python", "tests/bench/floor.py")
        session.run("python", "tests/bench/core_bench.py")
        session.run("python", "tests/bench/l2_flood.py")
        session.run("python", "tests/bench/trace_load.py")
