"""``nox -s fuzz``: the fuzz targets of ``targets.py`` for a set time, keeping a corpus.

::

    python tests/fuzz/run.py [--seconds S] [--init] [TARGET ...]

Every target gets an equal share of ``--seconds`` (default: ``FUZZ_SECONDS``, else 300).  It
first runs its corpus (``tests/fuzz/corpus/TARGET/*.bin``), then Hypothesis draws inputs in
rounds of 200 until its share is used up.  Inputs whose *outcome* (the label the target
returns) was never seen before are written to the corpus, and for an outcome already known, a
shorter input replaces the kept one: the corpus ends up with the smallest known input for each
thing a parser can make of its bytes, which ``nox -s tests`` replays every time
(``tests/fuzz/test_fuzz.py``).  ``--init`` first writes each target's seeds (valid inputs).

A failure (an exception a parser does not promise) stops the run with Hypothesis's report:
the shrunk input that fails, which also goes to ``tests/fuzz/corpus/TARGET/failing-*.bin``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from tests.fuzz.targets import SEEDS, TARGETS  # noqa: E402

CORPUS = Path(__file__).parent / "corpus"
ROUND = 200


def _index_path(name: str) -> Path:
    return CORPUS / name / "outcomes.json"


def _load(name: str) -> dict[str, str]:
    """outcome -> file name, for the inputs kept so far."""
    path = _index_path(name)
    return json.loads(path.read_text()) if path.exists() else {}


def _keep(name: str, data: bytes, outcome: str, index: dict[str, str]) -> bool:
    """Keep *data* for *outcome* if the outcome is new, or *data* is shorter; True if kept."""
    directory = CORPUS / name
    known = index.get(outcome)
    if known is not None and len((directory / known).read_bytes()) <= len(data):
        return False
    file_name = hashlib.sha256(data).hexdigest()[:16] + ".bin"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / file_name).write_bytes(data)
    index[outcome] = file_name
    if known is not None and known not in index.values():  # no other outcome keeps it
        (directory / known).unlink(missing_ok=True)
    return True


def fuzz_target(name: str, seconds: float, init: bool) -> tuple[int, int, int]:
    """Fuzz one target for *seconds*; return (inputs run, outcomes known, inputs kept now)."""
    target = TARGETS[name]
    index = _load(name)
    kept = 0
    runs = 0
    if init:
        for seed in SEEDS[name]():
            kept += _keep(name, seed, target.run(seed), index)
    for path in sorted((CORPUS / name).glob("*.bin")):
        target.run(path.read_bytes())
        runs += 1

    @settings(
        max_examples=ROUND,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(target.strategy)
    def one_round(data: bytes) -> None:
        nonlocal kept, runs
        try:
            outcome = target.run(data)
        except BaseException:
            failing = CORPUS / name / f"failing-{hashlib.sha256(data).hexdigest()[:16]}.bin"
            failing.parent.mkdir(parents=True, exist_ok=True)
            failing.write_bytes(data)
            raise
        runs += 1
        kept += _keep(name, data, outcome, index)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        one_round()
    _index_path(name).write_text(json.dumps(dict(sorted(index.items())), indent=1) + "\n")
    return runs, len(index), kept


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"default: all ({', '.join(TARGETS)})")
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", "300"))
    )
    parser.add_argument("--init", action="store_true", help="write the seeds to the corpus too")
    args = parser.parse_args()
    names = args.targets or list(TARGETS)
    for name in names:
        if name not in TARGETS:
            parser.error(f"unknown target {name}")
    share = args.seconds / len(names)
    print(f"fuzz: {len(names)} targets, {share:.0f} s each")
    for name in names:
        started = time.monotonic()
        runs, outcomes, kept = fuzz_target(name, share, args.init)
        rate = runs / (time.monotonic() - started)
        print(
            f"fuzz: {name:<11} {runs:>8} inputs ({rate:.0f}/s), {outcomes} outcomes known, "
            f"{kept} inputs kept now"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
