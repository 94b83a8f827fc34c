"""Where minivpn's documentation is, so that commands can point at a file that exists.

``pip install .`` puts the Markdown files of ``docs/`` inside the package, as
``minivpn/docs/`` (``[tool.hatch.build.targets.wheel.force-include]`` in pyproject.toml); a
source checkout, installed editable or not installed at all, has them in ``docs/`` next to
``src/``.  :func:`doc_path` finds a page in either place, so ``minivpn demo``'s closing line names
a file the reader can open, wherever minivpn came from.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["doc_path"]

#: This package's directory: ``.../site-packages/minivpn`` or ``<checkout>/src/minivpn``.
_PACKAGE = Path(__file__).resolve().parent


def doc_path(name: str) -> Path:
    """The file of the documentation page *name* (``"vpn.md"``).

    Raises:
        FileNotFoundError: neither an installed nor a source-tree copy exists.
    """
    for directory in (_PACKAGE / "docs", _PACKAGE.parent.parent / "docs"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"minivpn's documentation page {name} is not installed")
