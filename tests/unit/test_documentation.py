"""The documentation is installed: the wheel carries docs/ as minivpn/docs/, and doc_path finds it.

``minivpn demo`` ends by naming docs/vpn.md, which ``pip install .`` used to leave behind.  This
builds the wheel (hatchling, no build isolation, no network), checks that it holds every page
of ``docs/``, installs it into an empty directory and asks the installed minivpn where its
pages are.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers.wheel import REPO_ROOT, build_wheel

from minivpn.documentation import doc_path

PAGES = sorted(path.name for path in (REPO_ROOT / "docs").glob("*.md"))


def test_a_source_checkout_finds_its_docs() -> None:
    assert doc_path("vpn.md") == REPO_ROOT / "docs" / "vpn.md"


def test_the_wheel_installs_the_docs(tmp_path: Path) -> None:
    assert "vpn.md" in PAGES
    wheel = build_wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"minivpn/docs/{page}" for page in PAGES} <= names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
         str(target), str(wheel)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    where = subprocess.run(
        [sys.executable, "-c",
         "import minivpn, minivpn.documentation as d; "
         "print(minivpn.__file__); print(d.doc_path('vpn.md')); print(d.doc_path('demo.md'))"],
        env={"PYTHONPATH": str(target)}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    package, vpn, demo = (Path(line) for line in where)
    assert package.is_relative_to(target)  # the installed copy, not the checkout
    assert vpn == target / "minivpn" / "docs" / "vpn.md"
    assert demo == target / "minivpn" / "docs" / "demo.md"
    assert vpn.read_text() == (REPO_ROOT / "docs" / "vpn.md").read_text()
