"""``minivpn tun`` in every kind of network namespace a user reaches for, with real devices.

sysfs (``/sys/class/net``) shows the links of the namespace that *mounted* it, not those of the
process reading it.  ``ip netns exec`` re-mounts it; plain ``unshare -n`` does not, and
``unshare -Urn`` (an ordinary user) cannot.  minivpn asks netlink instead, which always answers
for the caller's namespace.  Each case here runs the same steps inside a fresh namespace:

* ``ip netns add`` + ``ip netns exec`` (as root, or as root of ``netns/isolate``'s namespace);
* ``unshare -n``, sysfs left as it was;
* an ordinary user's ``unshare -Urn``: as real root, the test drops to ``nobody`` first (see
  :mod:`tests.helpers.runas`) and makes the user and network namespaces with the same system
  calls as ``unshare -Urn``; run rootless, the test already is an ordinary user.

A decoy TUN device made in the test's own namespace must never show up inside, and the
devices made inside must be found, shown, attached to and deleted.  For the last two cases the
steps also check that ``/sys/class/net`` really shows the outer namespace (the decoy), so the
test would fail with a sysfs-based listing.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.runas import REPO_ROOT, run_call_as, tun_openable_by_everyone

from netns import Topology

DECOY = "mvdecoy0"
INSIDE_TUN, INSIDE_TAP = "mvin0", "mvin1"

#: Runs :func:`run_steps` from a command line (the first argument is the JSON of the steps).
DRIVER = (
    "import sys; from tests.netns.test_tun_namespaces import run_steps; "
    "sys.exit(run_steps(*sys.argv[1:]))"
)

#: ``unshare(2)`` flags (linux/sched.h).
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
#: ``prctl(2)`` option (linux/prctl.h).
PR_SET_DUMPABLE = 4


# --- what runs inside the namespace ---------------------------------------------------------------


def _run_minivpn(argv: list[str]) -> dict[str, Any]:
    """``minivpn ARGV`` in a forked child of this process: its status and output.

    Forked rather than executed, because an unprivileged user cannot execute this interpreter
    (it lives under /root, mode 0700; see tests/helpers/runas.py).
    """
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: minivpn's main with its output going to the pipes
        status = 70
        try:
            os.dup2(out_write, 1)
            os.dup2(err_write, 2)
            from minivpn.cli.main import main

            status = main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(out_write)
    os.close(err_write)
    with os.fdopen(out_read) as out, os.fdopen(err_read) as err:
        stdout, stderr = out.read(), err.read()
    _, wait_status = os.waitpid(pid, 0)
    return {"rc": os.waitstatus_to_exitcode(wait_status), "out": stdout, "err": stderr}


def _enter_user_namespace() -> None:
    """What ``unshare -Urn`` does: new user and network namespaces, this user mapped to root."""
    uid, gid = os.geteuid(), os.getegid()
    libc = ctypes.CDLL(None, use_errno=True)
    # A process that changed its uid (tests/helpers/runas.py) is not "dumpable", which makes
    # its /proc/self files root's; a user who ran unshare from a login shell is dumpable.
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWUSER|CLONE_NEWNET): {os.strerror(errno)}")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


def run_steps(steps_json: str, new_user_namespace: str = "no") -> int:
    """Run each step (``["minivpn", ...]`` or any command) and print their results as JSON."""
    if new_user_namespace == "yes":
        _enter_user_namespace()
    results = []
    for argv in json.loads(steps_json):
        if argv[0] == "minivpn":
            result = _run_minivpn(argv[1:])
        else:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            result = {"rc": done.returncode, "out": done.stdout, "err": done.stderr}
        results.append({"argv": argv, **result})
    print(json.dumps(results))
    return 0


# --- the steps and what they must give ------------------------------------------------------------

STEPS = [
    ["ls", "/sys/class/net"],
    ["minivpn", "tun", "add", INSIDE_TUN, "--address", "10.9.0.1/24", "--up"],
    ["ip", "tuntap", "add", "dev", INSIDE_TAP, "mode", "tap", "multi_queue"],
    ["minivpn", "tun", "list", "--json"],
    ["minivpn", "tun", "list"],
    ["minivpn", "tun", "show", INSIDE_TUN, "--json"],
    ["minivpn", "tun", "show", INSIDE_TAP, "--json"],
    ["ip", "-details", "-json", "link", "show", "dev", INSIDE_TAP],
    ["minivpn", "tun", "attach", INSIDE_TUN, "--seconds", "0"],
    ["minivpn", "tun", "attach", INSIDE_TAP, "--multi-queue", "--seconds", "0"],
    ["minivpn", "tun", "show", DECOY],
    ["minivpn", "tun", "del", DECOY],
    ["minivpn", "tun", "del", INSIDE_TUN],
    ["minivpn", "tun", "del", INSIDE_TAP],
    ["minivpn", "tun", "list", "--json"],
]


def check(results: list[dict[str, Any]], *, sysfs_is_outer: bool) -> None:
    """Check each step's result, in the order of STEPS."""
    assert [result["argv"] for result in results] == STEPS
    remaining = iter(results)

    def ok(*argv: str) -> str:
        result = next(remaining)
        assert result["argv"] == list(argv)
        assert result["rc"] == 0, result
        assert "Traceback" not in result["err"], result
        return str(result["out"])

    def fails(*argv: str) -> str:
        result = next(remaining)
        assert result["argv"] == list(argv)
        assert result["rc"] != 0, result
        assert "Traceback" not in result["err"], result
        return str(result["err"]).strip()

    sysfs = ok("ls", "/sys/class/net").split()
    # The premise: here sysfs shows (or does not show) the outer namespace.
    assert (DECOY in sysfs) is sysfs_is_outer, sysfs

    assert ok("minivpn", "tun", "add", INSIDE_TUN, "--address", "10.9.0.1/24", "--up") == (
        f"created tun device {INSIDE_TUN}\n"
    )
    ok("ip", "tuntap", "add", "dev", INSIDE_TAP, "mode", "tap", "multi_queue")

    listed = json.loads(ok("minivpn", "tun", "list", "--json"))
    assert [device["name"] for device in listed] == [INSIDE_TUN, INSIDE_TAP]
    table = ok("minivpn", "tun", "list").splitlines()
    assert [line.split()[0] for line in table] == ["NAME", INSIDE_TUN, INSIDE_TAP]

    tun = json.loads(ok("minivpn", "tun", "show", INSIDE_TUN, "--json"))
    assert (tun["mode"], tun["persist"], tun["up"]) == ("tun", True, True)
    assert tun["state"] == "no-carrier"
    assert tun["addresses"][0] == "10.9.0.1/24"
    assert tun == next(device for device in listed if device["name"] == INSIDE_TUN)

    tap = json.loads(ok("minivpn", "tun", "show", INSIDE_TAP, "--json"))
    (kernel,) = json.loads(ok("ip", "-details", "-json", "link", "show", "dev", INSIDE_TAP))
    info = kernel["linkinfo"]["info_data"]
    assert (tap["mode"], tap["multi_queue"], tap["pi"], tap["persist"]) == (
        info["type"],
        info["multi_queue"],
        info["pi"],
        info["persist"],
    )
    assert (tap["ifindex"], tap["mac"], tap["mtu"]) == (
        kernel["ifindex"],
        kernel["address"],
        kernel["mtu"],
    )
    assert tap["num_queues"] == 0  # nobody attached

    assert ok("minivpn", "tun", "attach", INSIDE_TUN, "--seconds", "0") == (
        f"attached to {INSIDE_TUN} (tun, persistent)\ndetached from {INSIDE_TUN}\n"
    )
    # Telling why an attach failed asks what the device is: a TAP device.
    assert fails(
        "minivpn", "tun", "attach", INSIDE_TAP, "--multi-queue", "--seconds", "0"
    ).endswith("it is a TAP device, but TUN was requested (use --tap)")
    missing = f"minivpn: no network device named '{DECOY}'"
    assert fails("minivpn", "tun", "show", DECOY) == missing
    assert fails("minivpn", "tun", "del", DECOY) == missing
    assert ok("minivpn", "tun", "del", INSIDE_TUN) == f"deleted {INSIDE_TUN}\n"
    assert ok("minivpn", "tun", "del", INSIDE_TAP) == f"deleted {INSIDE_TAP}\n"
    assert json.loads(ok("minivpn", "tun", "list", "--json")) == []


@pytest.fixture
def decoy() -> Any:
    """A persistent TUN device in the test's own namespace, which no inner listing may show."""
    subprocess.run(["ip", "tuntap", "add", "dev", DECOY, "mode", "tun"], check=True, timeout=30)
    try:
        yield DECOY
    finally:
        subprocess.run(["ip", "link", "del", DECOY], check=False, timeout=30)


def results_of(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def driver_command(*args: str) -> list[str]:
    return [sys.executable, "-c", DRIVER, json.dumps(STEPS), *args]


# --- the cases ------------------------------------------------------------------------------------


def test_in_ip_netns_exec(decoy: str) -> None:
    with Topology("tns") as topo:
        ns = topo.namespace()
        done = ns.run(driver_command(), check=False, timeout=120)
        # `ip netns exec` mounts a sysfs of the namespace: this case worked with sysfs too.
        check(results_of(done), sysfs_is_outer=False)


def test_under_plain_unshare_n(decoy: str) -> None:
    done = subprocess.run(
        ["unshare", "--net", "--", *driver_command()],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    check(results_of(done), sysfs_is_outer=True)


def test_as_an_ordinary_user_under_unshare_urn(decoy: str) -> None:
    if os.geteuid() == 0 and os.environ.get("MINIVPN_ROOTLESS") != "1":
        # Real root: become nobody, then do what `unshare -Urn` does.
        with tun_openable_by_everyone():
            done = run_call_as(
                "tests.netns.test_tun_namespaces:run_steps",
                [json.dumps(STEPS), "yes"],
                uid=65534,
                gid=65534,
                timeout=120,
            )
    else:
        # Already an ordinary user (netns/isolate's user namespace): a nested one, as a user
        # typing `unshare -Urn` gets.
        done = subprocess.run(
            driver_command("yes"),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    check(results_of(done), sysfs_is_outer=True)


def test_the_daemon_path_does_not_load_pyroute2() -> None:
    """Attaching to an existing device, as minivpnd does, asks no netlink question."""
    name = "mvdaemon0"
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tun"], check=True, timeout=30)
    try:
        code = (
            "import os, sys\n"
            "import minivpn.daemon, minivpn.runtime.vpn, minivpn.runtime.interface\n"
            "from minivpn.tuntap.device import open_device\n"
            f"fd, name, flags = open_device({name!r}, vnet_hdr=True)\n"
            "os.close(fd)\n"
            "print(sorted(m for m in sys.modules if m.startswith('pyroute2')))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert done.stdout == "[]\n", done.stdout
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, timeout=30)
