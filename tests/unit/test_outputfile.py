"""minivpn.outputfile: private output files, never written through a symbolic link."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest

from minivpn.outputfile import OutputFileError, open_output

if TYPE_CHECKING:
    from pathlib import Path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new"
    old = os.umask(0)
    try:
        with open_output(path, "capture") as file:
            file.write(b"data")
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert path.read_bytes() == b"data"


def test_an_existing_file_is_made_private_and_truncated(tmp_path: Path) -> None:
    path = tmp_path / "old"
    path.write_bytes(b"x" * 100)
    path.chmod(0o644)
    with open_output(path) as file:
        file.write(b"new")
    assert mode(path) == 0o600
    assert path.read_bytes() == b"new"


def test_a_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    target.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OutputFileError, match=r"it is a symbolic link"):
        open_output(link, "capture")
    assert target.read_bytes() == b"precious"
    assert mode(target) == 0o644
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputFileError, match=r"it is a symbolic link"):
        open_output(dangling)
    assert not (tmp_path / "nowhere").exists()


def test_a_file_with_another_hard_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    os.link(target, tmp_path / "alias")
    with pytest.raises(OutputFileError, match=r"1 other hard link"):
        open_output(tmp_path / "alias")
    assert target.read_bytes() == b"precious"


def test_other_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(OutputFileError, match=r"cannot write the capture to .*/missing/x: No such"):
        open_output(tmp_path / "missing" / "x", "capture")


def test_append_keeps_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"line 1\n")
    path.chmod(0o644)
    with open_output(path, "log", append=True) as file:
        file.write(b"line 2\n")
    assert path.read_bytes() == b"line 1\nline 2\n"
    assert mode(path) == 0o600
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(OutputFileError, match=r"refusing to write the log to .*symbolic link"):
        open_output(link, "log", append=True)
