"""Fuzzing in the suite: every parser of untrusted bytes (``targets.py``), briefly.

Two tests per target:

* ``test_corpus``: every input kept under ``tests/fuzz/corpus/TARGET/`` (the seeds, and what
  ``nox -s fuzz`` found worth keeping) runs through the target again: a regression suite;
* ``test_fuzz``: Hypothesis draws new inputs (random bytes, and mutations of the seeds):
  ``FUZZ_EXAMPLES`` of them (default 100) in ``nox -s tests``.  ``nox -s fuzz`` runs the same
  targets for a set time instead (``tests/fuzz/run.py``, ``FUZZ_SECONDS``).

A target fails only on an exception its parser does not promise, or a broken invariant (a
drop not counted, a session that stops serving, a message with a line break...).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))


def corpus_inputs() -> list[tuple[str, Path]]:
    return [
        (name, path)
        for name in TARGETS
        for path in sorted((CORPUS / name).glob("*.bin") if (CORPUS / name).is_dir() else [])
    ]


@pytest.mark.parametrize(
    ("name", "path"), corpus_inputs(), ids=lambda value: getattr(value, "name", value)
)
def test_corpus(name: str, path: Path) -> None:
    TARGETS[name].run(path.read_bytes())


def test_every_target_has_a_corpus() -> None:
    for name in TARGETS:
        assert list((CORPUS / name).glob("*.bin")), f"no corpus for {name}: run tests/fuzz/run.py"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz(name: str) -> None:
    target = TARGETS[name]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(target.strategy)
    def fuzz(data: bytes) -> None:
        target.run(data)

    fuzz()
