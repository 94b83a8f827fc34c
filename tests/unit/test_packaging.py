"""What ``pip install .`` puts into site-packages: minivpn, and nothing else.

The wheel is built as ``pip install .`` builds it, by pip with hatchling, but offline: hatchling
comes from the test environment (``--no-build-isolation``), because the namespace the tests run
in has no network.  The wheel is then inspected, and installed into a fresh virtual environment
(without its dependencies, also offline), where ``import netns`` must not find our ``netns/``:
that directory is test and benchmark plumbing of the source tree, and PyPI's ``netns`` is
another package.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from tests.helpers.wheel import REPO_ROOT, build_wheel

VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
#: The only top-level names the wheel may put into site-packages.
INSTALLED = {"minivpn", f"minivpn-{VERSION}.dist-info"}


def _run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_only_minivpn(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == INSTALLED
    assert "minivpn/cli/main.py" in names  # the package itself is there, whole
    assert "minivpn/wireguard/core.py" in names


def test_after_installing_import_netns_is_not_ours(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    made = _run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site_packages = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    )
    before = {entry.name for entry in site_packages.iterdir()}

    installed = _run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    added = {entry.name for entry in site_packages.iterdir()} - before
    assert added == INSTALLED

    # From a directory outside the source tree, as a user would.
    found = _run(python, "-c", "import netns", cwd=tmp_path)
    assert found.returncode == 1
    assert "ModuleNotFoundError: No module named 'netns'" in found.stderr, found.stderr
    where = _run(python, "-c", "import minivpn; print(minivpn.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(site_packages), where
