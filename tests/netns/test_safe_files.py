"""Output files and secrets in messages, end to end: ``minivpn dump --write``, ``minivpn up``.

* ``--write PATH`` where PATH is a symbolic link is refused with one line, and the file the
  link points to is left as it was; a new capture is mode 0600 whatever the umask, and an
  existing capture of mode 0644 becomes 0600 (it holds decrypted traffic).
* An ``Endpoint`` holding a pasted key fails ``minivpn up`` with one line that does not show
  the key, before any name is looked up and before anything is created.
"""

from __future__ import annotations

import base64
import os
import signal
import stat
from typing import TYPE_CHECKING

import pytest
from tests.helpers.procs import MINIVPN, assert_clean_failure, start_minivpn
from tests.helpers.wg import SOCKET_DIR, genkey

from netns import Namespace, Topology

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def ns() -> Iterator[Namespace]:
    with Topology("saf") as topo:
        yield topo.namespace()


def link_exists(ns: Namespace, name: str) -> bool:
    return ns.ip("link", "show", "dev", name, check=False).returncode == 0


def test_dump_refuses_to_write_through_a_symlink(ns: Namespace, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep me\n")
    target.chmod(0o644)
    trap = tmp_path / "capture.pcap"
    trap.symlink_to(target)
    result = ns.run([*MINIVPN, "dump", "mvsafe0", "--write", str(trap)], check=False, timeout=30)
    line = assert_clean_failure(result)
    assert line == (
        f"minivpn: refusing to write the capture to {trap}: it is a symbolic link "
        "(give the real path, or remove the link)"
    ), line
    assert target.read_bytes() == b"keep me\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not link_exists(ns, "mvsafe0")


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing-0644"])
def test_dump_capture_is_private(ns: Namespace, tmp_path: Path, existing: bool) -> None:
    pcap = tmp_path / "dump.pcap"
    if existing:
        pcap.write_bytes(b"old contents, longer than a pcap header of 24 bytes\n" * 10)
        pcap.chmod(0o644)
    old_umask = os.umask(0)  # the dump inherits it: 0666 & ~0 would be world-writable
    try:
        dump = start_minivpn(ns, ["dump", "mvsafe1", "--write", str(pcap)], tmp_path, "dump")
    finally:
        os.umask(old_umask)
    dump.wait_for(r"^minivpn: listening on \S+$", timeout=20)
    assert dump.stop(signal.SIGINT, timeout=15) == 0, dump.describe()
    assert stat.S_IMODE(pcap.stat().st_mode) == 0o600
    data = pcap.read_bytes()
    assert data[:4] == bytes.fromhex("d4c3b2a1")  # a fresh pcap header
    assert b"old contents" not in data  # truncated, not overwritten in place


@pytest.mark.parametrize("form", ["hex", "base64"])
def test_a_key_pasted_as_endpoint_is_not_shown_nor_resolved(
    ns: Namespace, tmp_path: Path, form: str
) -> None:
    keys = genkey()
    secret = keys.private
    # As UAPI writes keys (64 hex digits), or base64 without its final '='.
    pasted = base64.b64decode(secret).hex() if form == "hex" else secret.rstrip("=")
    name = "mvsafe2"
    config = tmp_path / f"{name}.conf"
    config.write_text(
        f"[Interface]\nPrivateKey = {genkey().private}\nAddress = 10.97.0.1/24\n\n"
        f"[Peer]\nPublicKey = {keys.public}\nAllowedIPs = 10.97.0.2/32\n"
        f"Endpoint = {pasted}:51820\n"
    )
    config.chmod(0o600)
    result = ns.run([*MINIVPN, "up", str(config)], check=False, timeout=60)
    line = assert_clean_failure(result)
    assert f"{config}:8: Endpoint <" in line, line
    assert "looks like a key" in line, line
    for start in range(0, len(pasted) - 12, 6):
        assert pasted[start : start + 12] not in result.stderr + result.stdout
    assert not link_exists(ns, name)
    assert not (SOCKET_DIR / f"{name}.sock").exists()


def test_up_refuses_a_log_file_that_is_a_symlink(ns: Namespace, tmp_path: Path) -> None:
    name = "mvsafe3"
    config = tmp_path / f"{name}.conf"
    config.write_text(
        f"[Interface]\nPrivateKey = {genkey().private}\nAddress = 10.97.1.1/24\n\n"
        f"[Peer]\nPublicKey = {genkey().public}\nAllowedIPs = 10.97.1.2/32\n"
    )
    config.chmod(0o600)
    target = tmp_path / "precious"
    target.write_bytes(b"keep me\n")
    trap = tmp_path / "up.log"
    trap.symlink_to(target)
    result = ns.run([*MINIVPN, "up", str(config), "--log-file", str(trap)], check=False, timeout=60)
    line = assert_clean_failure(result)
    assert f"refusing to write the log to {trap}: it is a symbolic link" in line, line
    assert target.read_bytes() == b"keep me\n"
    assert not link_exists(ns, name)
    assert not (SOCKET_DIR / f"{name}.sock").exists()
    # A real file: appended to, and private.
    log = tmp_path / "real.log"
    log.write_bytes(b"earlier\n")
    log.chmod(0o644)
    up = ns.run([*MINIVPN, "up", str(config), "--log-file", str(log)], check=False, timeout=60)
    assert up.returncode == 0, up.stderr
    down = ns.run([*MINIVPN, "down", name], check=False, timeout=60)
    assert down.returncode == 0, down.stderr
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert log.read_bytes().startswith(b"earlier\n")
