"""minivpn's wheel, built in a test as ``pip install .`` builds it, but offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["REPO_ROOT", "build_wheel"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def build_wheel(directory: Path) -> Path:
    """Build the wheel of the source tree into *directory* and return its path.

    pip runs hatchling from the test environment (``--no-build-isolation``, ``--no-index``):
    the namespace the tests run in has no network to fetch it from.

    Raises:
        AssertionError: pip failed (its output is the message).
    """
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(directory), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = directory.glob("minivpn-*.whl")
    return wheel
