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
        session.run("python", "tests/bench/attacks.py", "minivpn", "wireguard-go")


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """The fuzz targets of tests/fuzz for FUZZ_SECONDS (default 300), growing their corpus.

    ``nox -s tests`` runs the same targets briefly and replays the corpus
    (tests/fuzz/test_fuzz.py); this runs them for a set time and keeps, in
    tests/fuzz/corpus/TARGET/, the shortest input for every new outcome (tests/fuzz/run.py).
    ``nox -s fuzz -- config uapi --seconds 60`` picks targets and time.
    """
    session.install("-e", ".[test]")
    session.run("python", "tests/fuzz/run.py", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """10 minutes of iperf3 and pings through minivpn <-> wireguard-go, rekeying every minute
    (a test build of the timers), wireguard-go restarted halfway; fails on RSS growth over 5 MB
    or a stall over 5 s (tests/bench/soak.py; docs/reliability.md).  Never part of the tests."""
    session.install("-e", ".[test]")
    if os.geteuid() != 0:
        session.error("the soak needs root (it runs wireguard-go and iperf3 in namespaces)")
    session.run("python", "tests/bench/soak.py", *session.posargs)
