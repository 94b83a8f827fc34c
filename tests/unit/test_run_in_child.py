"""run_in_child: one-off work in a forked child (minivpn up configures its link that way)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from minivpn.errors import MinivpnError
from minivpn.runtime.process import run_in_child

if TYPE_CHECKING:
    from pathlib import Path


def test_the_work_runs_and_its_imports_stay_in_the_child(tmp_path: Path) -> None:
    assert "tabnanny" not in sys.modules  # a module nothing here imports

    def work() -> None:
        import tabnanny

        (tmp_path / "done").write_text(tabnanny.__name__)

    run_in_child(work)
    assert (tmp_path / "done").read_text() == "tabnanny"
    assert "tabnanny" not in sys.modules


class _Refused(MinivpnError):
    exit_code = 3


def test_a_user_error_comes_back_with_its_message_and_status() -> None:
    def work() -> None:
        raise _Refused("cannot add route 10.0.0.0/8 via wg0: File exists (EEXIST)")

    with pytest.raises(MinivpnError) as caught:
        run_in_child(work)
    assert str(caught.value) == "cannot add route 10.0.0.0/8 via wg0: File exists (EEXIST)"
    assert caught.value.exit_code == 3


def test_any_other_error_comes_back_as_an_internal_error() -> None:
    def work() -> None:
        raise ValueError("unexpected")

    with pytest.raises(MinivpnError, match=r"internal error: ValueError\('unexpected'\)"):
        run_in_child(work)
