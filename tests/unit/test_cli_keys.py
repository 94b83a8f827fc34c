"""``minivpn genkey``, ``pubkey`` and ``genpsk``, checked against ``wg`` (wireguard-tools).

The public key of a private key is not computed here a second time: ``wg pubkey`` is the
reference.  Keys go both ways (``minivpn genkey`` into ``wg pubkey``, ``wg genkey`` into
``minivpn pubkey``), plus keys that are not clamped, which both tools must clamp alike.  The
world-accessible warning is compared with what ``wg genkey`` does in the same situation.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivpn.cli.main import main
from minivpn.wireguard.keys import PublicKey

if TYPE_CHECKING:
    from pathlib import Path

needs_wg = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools)")

INVALID = "minivpn: invalid private key on stdin\n"
WARNING = (
    "Warning: writing to world accessible file.\nConsider setting the umask to 077 and trying "
    "again.\n"
)


def minivpn(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "minivpn", *args],
        input=stdin.decode("latin-1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def wg(*args: str, stdin: str = "") -> str:
    return subprocess.run(
        ["wg", *args], input=stdin, capture_output=True, text=True, timeout=30, check=True
    ).stdout


def run_in_process(args: list[str], stdin: bytes) -> tuple[int, str, str]:
    """Run ``minivpn ARGS`` in this process with *stdin*; return (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    real_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(args)
    finally:
        sys.stdin = real_stdin
    return status, out.getvalue(), err.getvalue()


def key_bytes(line: str) -> bytes:
    """The 32 bytes of a key line as wg prints it: 44 base64 characters and a newline."""
    assert line.endswith("\n")
    assert len(line) == 45
    raw = base64.b64decode(line[:-1], validate=True)
    assert len(raw) == 32
    return raw


# --- genkey, genpsk -------------------------------------------------------------------------------


def test_genkey_prints_a_new_clamped_key_each_time() -> None:
    first, second = (minivpn("genkey") for _ in range(2))
    assert (first.returncode, first.stderr) == (0, "")
    keys = [key_bytes(result.stdout) for result in (first, second)]
    assert keys[0] != keys[1]
    for raw in keys:
        assert raw[0] & 0b111 == 0  # a multiple of 8
        assert raw[31] & 0b1100_0000 == 0b0100_0000  # bit 255 clear, bit 254 set


def test_genpsk_prints_32_random_bytes() -> None:
    results = [minivpn("genpsk") for _ in range(2)]
    assert all((r.returncode, r.stderr) == (0, "") for r in results)
    assert key_bytes(results[0].stdout) != key_bytes(results[1].stdout)


@needs_wg
@pytest.mark.parametrize("command", ["genkey", "genpsk"])
@pytest.mark.parametrize("mode", [0o644, 0o604, 0o600, 0o640])
def test_warning_for_a_world_accessible_file_like_wg(
    tmp_path: Path, command: str, mode: int
) -> None:
    """Both tools warn exactly when stdout is a regular file that others may access."""
    warnings = []
    for tool in (["wg"], [sys.executable, "-m", "minivpn"]):
        path = tmp_path / f"{tool[0].rsplit('/', 1)[-1]}.key"
        path.touch()
        path.chmod(mode)
        with open(path, "w") as out:
            result = subprocess.run(
                [*tool, command],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                check=False,
            )
        assert result.returncode == 0
        key_bytes(path.read_text())
        warnings.append(result.stderr)
    wg_warning, our_warning = warnings
    assert our_warning == wg_warning
    assert our_warning == (WARNING if mode & 0o007 else "")


def test_no_warning_for_a_pipe() -> None:
    assert minivpn("genkey").stderr == ""  # stdout is a pipe here


# --- pubkey ---------------------------------------------------------------------------------------


@needs_wg
def test_pubkey_agrees_with_wg_both_ways() -> None:
    for _ in range(3):
        ours = minivpn("genkey").stdout
        assert minivpn("pubkey", stdin=ours.encode()).stdout == wg("pubkey", stdin=ours)
        theirs = wg("genkey")
        result = minivpn("pubkey", stdin=theirs.encode())
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout == wg("pubkey", stdin=theirs)


@needs_wg
@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_pubkey_of_any_32_bytes_agrees_with_wg(raw: bytes) -> None:
    """Unclamped keys too: both clamp before multiplying, so the public keys agree."""
    text = base64.b64encode(raw).decode() + "\n"
    status, out, err = run_in_process(["pubkey"], text.encode())
    assert (status, err) == (0, "")
    assert out == wg("pubkey", stdin=text)


@needs_wg
@pytest.mark.parametrize("raw", [bytes(32), b"\xff" * 32, bytes(range(32))])
def test_pubkey_of_special_keys_agrees_with_wg(raw: bytes) -> None:
    text = base64.b64encode(raw).decode()
    result = minivpn("pubkey", stdin=text.encode())  # no newline at the end: fine too
    assert result.stdout == wg("pubkey", stdin=text)


@pytest.mark.parametrize(
    "stdin",
    [
        b"",
        b"\n",
        b"not a key\n",
        b"AAAA\n",
        base64.b64encode(bytes(31)) + b"\n",  # 31 bytes
        base64.b64encode(bytes(33)) + b"\n",  # 33 bytes
        bytes(32).hex().encode() + b"\n",  # hex, as UAPI writes keys: not what pubkey reads
        base64.b64encode(bytes(32)) + b" trailing\n",
        base64.b64encode(bytes(32)) * 2,
        b"\xff\xfe" * 30,
        b"A" * 100_000,
    ],
    ids=repr,
)
def test_pubkey_refuses_what_is_not_a_key(stdin: bytes) -> None:
    result = minivpn("pubkey", stdin=stdin)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", INVALID)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_pubkey_of_arbitrary_bytes_is_a_key_or_the_error(stdin: bytes) -> None:
    status, out, err = run_in_process(["pubkey"], stdin)
    if status == 0:
        assert err == ""
        PublicKey.from_base64(out.rstrip("\n"))
    else:
        assert (status, out, err) == (1, "", INVALID)


def test_the_private_key_is_never_echoed() -> None:
    secret = base64.b64encode(os.urandom(32)).decode()
    result = minivpn("pubkey", stdin=(secret + "junk").encode())
    assert result.returncode == 1
    assert secret not in result.stdout + result.stderr
