"""Every printing command, read by a reader that goes away: no traceback, the same exit status.

``minivpn tun show X | head -1`` used to end in a ``BrokenPipeError`` traceback now and then:
whether it did depended on ``head`` exiting before minivpn wrote.  Each command here runs three
ways, side by side:

* its whole output read: the reference exit status and stderr;
* piped into ``head -c 1``, as a user would (the race: usually harmless, sometimes not);
* with standard output a pipe whose reader is already gone (every write fails: the race lost,
  every time).

The last two must give the reference's exit status and stderr: no traceback, no "Exception
ignored", no other complaint.  Errors printed into a closed stderr are checked the same way.
``minivpn dump``'s own case (a packet printed after the reader left) is in test_dump.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from minivpn.wireguard.keys import PrivateKey

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

MINIVPN = [sys.executable, "-m", "minivpn"]
MINIVPND = [sys.executable, "-m", "minivpn.daemon"]
DEVICE, INTERFACE = "mvpipe0", "mvpipewg0"
KEY = PrivateKey.generate()


def commands() -> list[tuple[list[str], str]]:
    """(command, standard input) for each command that prints."""
    return [
        ([*MINIVPN], ""),
        ([*MINIVPN, "--help"], ""),
        ([*MINIVPN, "--version"], ""),
        ([*MINIVPN, "tun"], ""),
        ([*MINIVPN, "tun", "list"], ""),
        ([*MINIVPN, "tun", "list", "--json"], ""),
        ([*MINIVPN, "tun", "show", DEVICE], ""),
        ([*MINIVPN, "tun", "show", DEVICE, "--json"], ""),
        ([*MINIVPN, "tun", "show", "mvnosuch0"], ""),
        ([*MINIVPN, "show"], ""),
        ([*MINIVPN, "show", "--json"], ""),
        ([*MINIVPN, "show", INTERFACE], ""),
        ([*MINIVPN, "show", INTERFACE, "--json"], ""),
        ([*MINIVPN, "show", INTERFACE, "peers"], ""),
        ([*MINIVPN, "show", "all", "transfer"], ""),
        ([*MINIVPN, "show", "interfaces"], ""),
        ([*MINIVPN, "genkey"], ""),
        ([*MINIVPN, "genpsk"], ""),
        ([*MINIVPN, "pubkey"], KEY.to_base64() + "\n"),
        ([*MINIVPN, "dump", "--help"], ""),
        ([*MINIVPN, "tunnel", "--help"], ""),
        ([*MINIVPN, "up", "--help"], ""),
        ([*MINIVPND, "--help"], ""),
        ([*MINIVPND, "--version"], ""),
    ]


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A TUN device with an address, and a WireGuard interface served by minivpnd."""
    subprocess.run([*MINIVPN, "tun", "add", DEVICE, "--address", "10.9.0.1/24"], check=True)
    daemon = subprocess.Popen(
        [*MINIVPND, "-f", INTERFACE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        socket_path = f"/var/run/wireguard/{INTERFACE}.sock"
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path):
            assert daemon.poll() is None, "minivpnd exited"
            assert time.monotonic() < deadline, "minivpnd did not make its socket"
            time.sleep(0.05)
        key_file = str(tmp_path_factory.mktemp("keys") / "private.key")
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(KEY.to_base64() + "\n")
        peer = PrivateKey.generate().public_key().to_base64()
        subprocess.run(
            ["wg", "set", INTERFACE, "private-key", key_file, "listen-port", "51820",
             "peer", peer, "allowed-ips", "10.9.9.0/24", "endpoint", "198.51.100.9:51820"],
            check=True, timeout=30,
        )  # fmt: skip
        yield
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=30)
        subprocess.run([*MINIVPN, "tun", "del", DEVICE], check=False, timeout=30)


def _start(command: Sequence[str], stdin: str, stdout: int, stderr: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        list(command), stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, text=True
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(stdin)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # a command that does not read its input
    proc.stdin = None  # closed: communicate() must not flush it
    return proc


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, stderr or ""


def _closed_pipe() -> tuple[int, int]:
    """A pipe whose reader is gone: (write end, unused placeholder)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end, -1


@pytest.mark.usefixtures("devices")
def test_a_reader_that_goes_away_changes_nothing() -> None:
    cases = commands()
    reference, into_head, into_closed = [], [], []
    heads = []
    for command, stdin in cases:
        reference.append(_start(command, stdin, subprocess.PIPE, subprocess.PIPE))
        producer = _start(command, stdin, subprocess.PIPE, subprocess.PIPE)
        assert producer.stdout is not None
        heads.append(
            subprocess.Popen(["head", "-c", "1"], stdin=producer.stdout, stdout=subprocess.DEVNULL)
        )
        producer.stdout.close()  # head's now, as in a shell pipeline
        into_head.append(producer)
        closed, _ = _closed_pipe()
        into_closed.append(_start(command, stdin, closed, subprocess.PIPE))
        os.close(closed)
    for head in heads:
        head.wait(timeout=60)
    for (command, _), *procs in zip(cases, reference, into_head, into_closed, strict=True):
        (status, stderr), *others = (_finish(proc) for proc in procs)
        assert "Traceback" not in stderr, (command, stderr)
        for how, (other_status, other_stderr) in zip(("head -c 1", "closed"), others, strict=True):
            assert (other_status, other_stderr) == (status, stderr), (command, how, other_stderr)


def test_errors_into_a_closed_stderr_keep_their_status() -> None:
    command = [*MINIVPN, "tun", "show", "mvnosuch0"]
    closed, _ = _closed_pipe()
    proc = _start(command, "", subprocess.PIPE, closed)
    os.close(closed)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert stdout == ""


def test_the_demo_into_a_closed_pipe_still_tears_down() -> None:
    """``minivpn demo | head -1``: the demo stops at its next line, undoes all, says nothing."""
    links_before = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.count("\n")
    closed, _ = _closed_pipe()
    proc = _start([*MINIVPN, "demo", "--seconds", "1"], "", closed, subprocess.PIPE)
    os.close(closed)
    status, stderr = _finish(proc)
    assert (status, stderr) == (0, "")
    netns = "/run/netns"
    assert not [n for n in (os.listdir(netns) if os.path.isdir(netns) else []) if "demo" in n]
    links_after = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.count("\n")
    assert links_after == links_before
