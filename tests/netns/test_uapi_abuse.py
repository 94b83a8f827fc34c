"""UAPI abuse against a running minivpnd (issue 13's table), end to end with ``wg``.

* A ``set`` that never ends (one ``allowed_ip`` line repeated, no blank line): its lines are
  applied as they come, in slices (another client sees them before the end), and the daemon's
  memory stays flat instead of holding the whole request.
* 1100 idle connections, more than the process may have files open (RLIMIT_NOFILE lowered to
  256 here): ``wg show`` still answers, the daemon keeps a bounded number of files open, and
  the accept errors (if any) are logged a few times, not 10 a second.

Unit-level and trio-level tests of the same bounds are in tests/unit/test_wg_uapi.py and
tests/netns/test_uapi_server.py (slices yielding to other tasks, idle time-out, the cap).
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers.wg import SOCKET_DIR, genkey, open_lab

from minivpn.wireguard.keys import PublicKey


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_never_ending_set_is_applied_as_it_comes_in_flat_memory(tmp_path: Path) -> None:
    with open_lab(tmp_path, "ua") as lab:
        ns = lab.topology.namespace()
        daemon = lab.minivpnd(ns, "s")
        daemon.set_private_key(listen_port=51830)
        peer_hex = PublicKey.from_base64(genkey().public).to_hex()
        pid = daemon.process.pid
        before = rss_kib(pid)
        peak = before
        chunk = b"allowed_ip=10.98.0.2/32\n" * 4096  # ~100 KB
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(SOCKET_DIR / f"{daemon.name}.sock"))
            conn.settimeout(30)
            conn.sendall(f"set=1\npublic_key={peer_hex}\nallowed_ip=10.98.0.99/32\n".encode())
            for i in range(160):  # 16 MB: the old server grew by ~8 bytes per byte held
                conn.sendall(chunk)
                if i % 16 == 0:
                    peak = max(peak, rss_kib(pid))
            # The request has not ended, yet what came so far is there for everyone.
            shown = daemon.wg("show", daemon.name, "allowed-ips").stdout
            assert "10.98.0.99/32" in shown
            assert "10.98.0.2/32" in shown
            peak = max(peak, rss_kib(pid))
        assert peak - before < 8 * 1024, f"RSS {before} KiB -> {peak} KiB"
        assert daemon.running()


def test_idle_connections_beyond_the_file_limit_do_not_block_wg(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 1400)), hard))
    connections: list[socket.socket] = []
    try:
        with open_lab(tmp_path, "ub") as lab:
            ns = lab.topology.namespace()
            daemon = lab.minivpnd(ns, "i")
            pid = daemon.process.pid
            subprocess.run(["prlimit", f"--pid={pid}", "--nofile=256:256"], check=True)
            path = str(SOCKET_DIR / f"{daemon.name}.sock")
            for _ in range(1100):
                conn = socket.socket(socket.AF_UNIX)
                conn.setblocking(False)
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    conn.connect(path)
                connections.append(conn)
            time.sleep(1.0)
            logged_before = daemon.process.stderr().count("accept")
            for _ in range(3):
                result = ns.run(["wg", "show", daemon.name], check=False, timeout=20)
                assert result.returncode == 0, result.stderr
                assert f"interface: {daemon.name}" in result.stdout
            assert len(list(Path(f"/proc/{pid}/fd").iterdir())) < 128
            time.sleep(3.0)
            logged = daemon.process.stderr().count("accept") - logged_before
            assert logged <= 2, daemon.process.stderr()[-2000:]
            assert daemon.running()
    finally:
        for conn in connections:
            conn.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
