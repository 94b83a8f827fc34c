"""Two namespaces, one interface name: the problem, and docs/vpn.md's answer, run as written.

The UAPI socket is a file, and network namespaces do not separate files: a second ``wg0`` in
another namespace finds the first one's socket.  docs/vpn.md ("Two namespaces, one interface
name") shows ``MINIVPN_SOCKET_DIR`` per namespace; its shell block is run here verbatim, with
``bash -e``, inside ``netns/isolate`` (a private ``/run``, so its paths touch nothing else).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers.daemons import process_alive, socket_owner

REPO_ROOT = Path(__file__).resolve().parents[2]
MINIVPND = [sys.executable, "-m", "minivpn.daemon"]
HEADING = "### Two namespaces, one interface name"


def documented_block() -> str:
    """The first ``sh`` block after the heading in docs/vpn.md."""
    text = (REPO_ROOT / "docs" / "vpn.md").read_text()
    section = text.split(f"\n{HEADING}\n", 1)[1]
    match = re.search(r"^```sh\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match is not None, "no sh block under the heading"
    return match.group(1)


def stop_daemons(sockets: list[Path]) -> None:
    """Stop, by PID, whatever still serves *sockets*; then delete what is left."""
    for path in sockets:
        pid = socket_owner(path)
        if pid is not None and process_alive(pid):
            os.kill(pid, signal.SIGTERM)
        path.unlink(missing_ok=True)


def test_a_second_wg0_in_another_namespace_needs_its_own_socket_directory() -> None:
    socket = Path("/var/run/wireguard/mvsd0.sock")
    try:
        for ns in ("mvsdred", "mvsdblue"):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
        first = subprocess.run(
            ["ip", "netns", "exec", "mvsdred", *MINIVPND, "mvsd0"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        second = subprocess.run(
            ["ip", "netns", "exec", "mvsdblue", *MINIVPND, "mvsd0"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"interface mvsd0 is already running (socket {socket} in use)" in second.stderr
    finally:
        stop_daemons([socket])
        for ns in ("mvsdred", "mvsdblue"):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


def test_the_documented_answer_runs_as_written() -> None:
    block = documented_block()
    sockets = [Path(f"/run/minivpn/{ns}/wg0.sock") for ns in ("red", "blue")]
    try:
        result = subprocess.run(
            ["bash", "-e", "-c", block],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            # `minivpn` and `minivpnd` as a user has them: this interpreter's scripts.
            env={"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        # Two shows through minivpn, one through wg, each of a wg0 with a port of its own.
        assert result.stdout.count("interface: wg0\n") == 3, result.stdout
        ports = re.findall(r"^  listening port: (\d+)$", result.stdout, re.MULTILINE)
        assert len(ports) == 3, result.stdout
        assert ports[0] != ports[1], ports  # red's and blue's
        assert ports[2] == "51821"  # blue's, changed by wg through the bind mount
        assert not any(path.exists() for path in sockets)  # minivpn down removed them
        namespaces = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
        assert "red" not in namespaces
        assert "blue" not in namespaces
    finally:
        stop_daemons(sockets)
        for ns in ("red", "blue"):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)
