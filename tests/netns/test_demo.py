"""``minivpn demo``, run the way a reader runs it, as a separate ``python -m minivpn demo`` process.

What a run must show: ping replies through the tunnel, B's device seeing the echo requests and
replies (decoded), a handshake on both sides, non-zero byte counters, a throughput figure; no
private key anywhere in the output; and, afterwards, nothing the demo made (namespaces, links,
processes, the private directory).

The runs:

* as root, with iperf3 and with the Python TCP test;
* as root inside ``unshare -Urnm`` (a user namespace where root is mapped to itself);
* as an ordinary user (``nobody``) inside ``unshare -Urnm``: the real case of the README, where
  ``/run`` belongs to someone else and the demo mounts a tmpfs of its own over it;
* as an ordinary user without any namespace: one line saying what to type, exit status 1;
  and inside ``unshare -Urn`` (no mount namespace): refused, nothing made;
* interrupted with SIGINT half-way: everything torn down, exit status 130.

The ordinary-user runs need real root to become ``nobody`` (``realroot``).  ``nobody`` cannot
reach an interpreter under ``/root`` (mode 0700), nor open a ``/dev/net/tun`` of mode 0600, so
:func:`run_as_nobody` first makes both reachable in a mount namespace of its own (``unshare -m``
inside ``netns/isolate``): a tmpfs over the closed directory with the interpreter's tree bound
back into it, and a 0666 node bound over ``/dev/net/tun``.  The host sees none of it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.helpers.docs import parse_console, parse_markdown

from minivpn.demo.errors import NEEDS_ROOT
from minivpn.wireguard.keys import PublicKey

if TYPE_CHECKING:
    from collections.abc import Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = (sys.executable, "-m", "minivpn", "demo")
#: A generous bound for one whole demo (it takes about 6 seconds).
TIMEOUT = 180
NOBODY = 65534

#: A WireGuard key in base64: 43 characters, the last one carrying 4 bits, then "=".
KEY_LIKE = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=(?![A-Za-z0-9+/=])")


# --- what a successful run must show --------------------------------------------------------------


def check_success(result: subprocess.CompletedProcess[str]) -> str:
    """Assert that *result* is a successful demo run showing every step; return its tag."""
    out = result.stdout
    assert result.returncode == 0, f"status {result.returncode}\n{out}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr

    # The ping went through the tunnel, to B's inner address.
    assert re.search(r"bytes from 10\.99\.0\.2: icmp_seq=\d+", out), out
    assert re.search(r"\d+ packets transmitted, [1-9]\d* received", out), out

    # B's WireGuard device saw the echo requests come in and the replies go out, decoded.
    assert re.search(r"IP 10\.99\.0\.1 > 10\.99\.0\.2: ICMP echo request, id \d+, seq \d+", out)
    assert re.search(r"IP 10\.99\.0\.2 > 10\.99\.0\.1: ICMP echo reply, id \d+, seq \d+", out)

    # Both sides report a handshake and traffic in both directions.
    assert len(re.findall(r"handshake done [0-9.]+ s ago", out)) == 2, out
    counters = re.findall(r"transfer ([0-9.]+) (?:B|KiB|MiB|GiB) received, ([0-9.]+) \S+ sent", out)
    assert len(counters) == 2, out
    assert all(float(value) > 0 for pair in counters for value in pair), counters

    # A throughput figure.
    rate = re.search(r"([0-9.]+) Mbit/s \(received by B\)", out)
    assert rate is not None, out
    assert float(rate.group(1)) > 0

    check_no_private_key(out + result.stderr)

    # It ends by naming the documentation, as files that exist (the wheel installs them:
    # tests/unit/test_documentation.py).
    pages = re.search(r"^How it works: read (\S+) \(and (\S+) for this demo", out, re.MULTILINE)
    assert pages is not None, out
    assert pages[1].endswith("vpn.md")
    assert pages[2].endswith("demo.md")
    assert all(Path(page).is_file() for page in pages.groups()), pages.groups()

    match = re.search(r"namespace minivpn-demo-([0-9a-f]+)-a\b", out)
    assert match is not None, out
    return match.group(1)


def check_no_private_key(text: str) -> None:
    """The only keys in *text* are the two public keys it introduces as such.

    The private keys are never known to the test, so this checks the next best thing: every
    key-shaped string printed is one of the printed public keys, and nothing says "private".
    """
    public = re.findall(r"public key (\S+)", text)
    assert len(set(public)) == 2, text
    for key in public:
        PublicKey.from_base64(key)  # a real key, not something else
    assert set(KEY_LIKE.findall(text)) == set(public), text
    assert "private" not in text.lower(), text


# --- what must be gone afterwards -----------------------------------------------------------------


def link_names() -> set[str]:
    result = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=True
    )
    return {line.split(":")[1].strip().split("@")[0] for line in result.stdout.splitlines()}


def processes_mentioning(words: Sequence[str]) -> list[str]:
    """Command lines of running processes that contain one of *words*."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(word in command for word in words):
            found.append(f"{entry.name}: {command}")
    return found


def check_nothing_left(output: str, tag: str, links_before: set[str]) -> None:
    """No namespace, link, process or directory of the demo run *tag* remains."""
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        assert not [name for name in os.listdir(netns_dir) if f"minivpn-demo-{tag}" in name]
    assert link_names() == links_before
    # The VPN processes name their interface or config file; iperf3 and the Python helpers
    # name the tunnel address they serve on.
    words = [f"mvwg{tag}", f"minivpn-demo-{tag}", "-B 10.99.0.2 -p 5201", "--tcp-sink 10.99.0.2"]
    assert processes_mentioning(words) == []
    removed = re.search(r"removed (/\S+)", output)
    assert removed is not None, output
    assert not Path(removed.group(1)).exists()


def run(
    command: Sequence[str], timeout: float = TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO_ROOT,
        env=env,
    )


# --- as root --------------------------------------------------------------------------------------


def test_demo_as_root_without_iperf3() -> None:
    links_before = link_names()
    result = run([*DEMO, "--seconds", "1", "--no-iperf3"])
    tag = check_success(result)
    assert "Python TCP test (--no-iperf3)" in result.stdout
    check_nothing_left(result.stdout, tag, links_before)


def test_demo_with_its_trace() -> None:
    """``--trace``: the handshake as messages, then each echo request's way out and each
    reply's way in, as A's ``minivpn trace`` printed them during the ping."""
    links_before = link_names()
    result = run([*DEMO, "--seconds", "0", "--trace"])
    tag = check_success_without_throughput(result)
    out = result.stdout
    trace = out[out.index("What A did with each packet: minivpn trace ") : out.index("\n5. ")]
    steps = [line.split()[1] for line in trace.splitlines()[1:] if line.strip()]
    # The first packet: read, routed, an initiation, queued; the response, the session, sent.
    assert steps[:8] == [
        "tun-read", "route", "hs-out", "queued", "udp-in", "hs-in", "session", "data-out",
    ]  # fmt: skip
    assert "initiation to 198.51.100.2:51820" in trace
    assert "10.99.0.2 is in allowed ips 10.99.0.2/32 of peer" in trace
    # Each reply on its way in: decrypted, replay-checked, its source checked, written.
    replies = re.findall(r"tun-write IP 10\.99\.0\.2 > 10\.99\.0\.1: ICMP echo reply", trace)
    assert len(replies) == 3, trace
    assert steps.count("decrypted") == steps.count("replay") == steps.count("source") == 3
    check_nothing_left(out, tag, links_before)


def check_success_without_throughput(result: subprocess.CompletedProcess[str]) -> str:
    """check_success for a run with ``--seconds 0``."""
    assert "7. Throughput: skipped (--seconds 0)" in result.stdout, result.stdout
    skipped = result.stdout.replace(
        "7. Throughput: skipped (--seconds 0)", "7. skipped\n   1.0 Mbit/s (received by B)"
    )
    return check_success(subprocess.CompletedProcess(result.args, 0, skipped, result.stderr))


def masked(text: str, tag: str) -> list[str]:
    """*text* with what differs from run to run replaced: the demo's tag and the random part of
    its directory, keys, numbers, and where the documentation pages are."""
    text = text.replace(tag, "TAG")
    text = re.sub(r"(minivpn-demo-TAG-)[a-z0-9_]+", r"\1XXXXXXXX", text)
    text = KEY_LIKE.sub("KEY", text)
    text = re.sub(
        r"read \S+/vpn\.md \(and \S+/demo\.md", "read DOCS/vpn.md (and DOCS/demo.md", text
    )
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text.splitlines()


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="the sample shows iperf3")
def test_the_sample_output_is_what_the_demo_prints() -> None:
    """As root, with iperf3: every line docs/demo.md shows, but for what differs in each run."""
    (block,) = [
        block
        for block in parse_markdown(REPO_ROOT / "docs" / "demo.md")
        if "test_the_sample_output_is_what_the_demo_prints" in (block.directive("checked by") or "")
    ]
    (command,) = parse_console(block.text)
    assert command.command == "minivpn demo"
    links_before = link_names()
    result = run(DEMO)
    tag = check_success(result)
    check_nothing_left(result.stdout, tag, links_before)
    sample_tag = re.search(r"namespace minivpn-demo-([0-9a-f]+)-a\b", block.text)
    assert sample_tag is not None
    assert masked("\n".join(command.output), sample_tag[1]) == masked(result.stdout, tag)


def test_demo_in_a_user_namespace() -> None:
    """``unshare -Urnm`` run by root: the user-namespace path, with root mapped to itself."""
    result = run(["unshare", "-Urnm", *DEMO, "--seconds", "1"])
    tag = check_success(result)
    check_nothing_left(result.stdout, tag, link_names())


@pytest.mark.usefixtures("sigint_not_ignored")  # the demo leaves an ignored SIGINT ignored
def test_sigint_tears_everything_down(tmp_path: Path) -> None:
    """Ctrl-C half-way: the demo stops its processes and deletes its namespaces, status 130."""
    links_before = link_names()
    output = tmp_path / "demo.out"
    with output.open("w") as file:
        demo = subprocess.Popen(
            [*DEMO], stdout=file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT
        )
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"^   B: mvwg", output.read_text(), re.MULTILINE):
            assert demo.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        demo.send_signal(signal.SIGINT)
        status = demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
    text = output.read_text()
    assert status == 130, text
    assert "Interrupted." in text
    assert re.search(r"stopped \d+ processes by PID", text), text
    assert len(re.findall(r"deleted namespace minivpn-demo-", text)) == 2, text
    tag = re.search(r"namespace minivpn-demo-([0-9a-f]+)-a\b", text)
    assert tag is not None, text
    check_nothing_left(text, tag.group(1), links_before)


# --- as an ordinary user --------------------------------------------------------------------------


def _closed_ancestor(path: Path) -> Path | None:
    """The first directory above *path* that others may not enter (like /root, mode 0700)."""
    for parent in reversed(path.parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def run_as_nobody(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run *command* as uid/gid 65534, with the interpreter and /dev/net/tun reachable.

    Everything is arranged in a mount namespace of its own (see the module documentation).
    """
    base = Path(sys.base_prefix).resolve()
    for needed in (REPO_ROOT, Path(sys.prefix)):
        if _closed_ancestor(needed / "x") is not None:
            pytest.skip(f"{needed} is not reachable by other users")
    # A scratch tmpfs seen only by the child's mount namespace; here it stays an empty directory.
    scratch = Path(tempfile.mkdtemp(dir="/run", prefix="minivpn-demo-test-"))
    steps = ["set -e", f"mount -t tmpfs -o mode=0700 tmpfs {scratch}"]
    closed = _closed_ancestor(base / "x")
    if closed is not None:
        # Bind the interpreter's tree aside, cover the closed directory, bind the tree back.
        inside = shlex.quote(str(closed / base.relative_to(closed).parts[0]))
        steps += [
            f"mkdir {scratch}/tree",
            f"mount --bind {inside} {scratch}/tree",
            f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(closed))}",
            f"mkdir {inside}",
            f"mount --bind {scratch}/tree {inside}",
        ]
    tun = os.stat("/dev/net/tun")
    if stat.S_IMODE(tun.st_mode) & 0o666 != 0o666:
        major, minor = os.major(tun.st_rdev), os.minor(tun.st_rdev)
        steps += [
            f"mknod -m 0666 {scratch}/tun c {major} {minor}",
            f"mount --bind {scratch}/tun /dev/net/tun",
        ]
    drop = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    steps.append(f"exec {shlex.join([*drop, *command])}")
    env = {**os.environ, "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        return run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(steps)], env=env
        )
    finally:
        scratch.rmdir()


@pytest.fixture
def user_namespaces() -> None:
    """Skip unless an ordinary user may create user namespaces here."""
    try:
        enabled = int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
    except (OSError, ValueError):
        enabled = False
    if not enabled or run_as_nobody(["unshare", "-Ur", "true"]).returncode != 0:
        pytest.skip("user namespaces are not available to ordinary users here")


@pytest.mark.realroot
@pytest.mark.usefixtures("user_namespaces")
def test_demo_as_an_ordinary_user() -> None:
    """``unshare -Urnm minivpn demo`` by an ordinary user: /run/netns is not theirs."""
    links_before = link_names()
    result = run_as_nobody(["unshare", "-Urnm", *DEMO, "--seconds", "1"])
    tag = check_success(result)
    assert re.search(r"unmounted the tmpfs on /run", result.stdout), result.stdout
    check_nothing_left(result.stdout, tag, links_before)


@pytest.mark.realroot
def test_demo_without_privileges_says_what_to_type() -> None:
    result = run_as_nobody([*DEMO])
    assert result.returncode == 1, result
    assert result.stderr.strip() == NEEDS_ROOT
    assert result.stdout == ""


@pytest.mark.realroot
@pytest.mark.usefixtures("user_namespaces")
def test_demo_without_a_mount_namespace_is_refused() -> None:
    """``unshare -Urn`` (no m): /run/netns cannot be made writable without touching the host."""
    result = run_as_nobody(["unshare", "-Urn", *DEMO])
    assert result.returncode == 1, result
    assert "unshare -Urnm" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line
    assert result.stdout == ""  # refused before making anything
