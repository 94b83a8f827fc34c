"""``minivpn tun`` as a user runs it: a subprocess, its output and exit status, real devices.

Runs inside ``netns/isolate``.  What the command reports is checked against what the kernel
says through other channels: ``ip -details -json link show`` (iproute2's own reading of the
IFLA_TUN_* attributes minivpn reads through pyroute2), the sysfs files of the tun driver
(``netns/isolate`` re-mounts sysfs, so they describe this namespace) and TUNGETIFF on an
attached fd.  tests/netns/test_tun_namespaces.py covers namespaces where sysfs is wrong.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from minivpn.tuntap import FlagsMismatch
from minivpn.tuntap import device as tun_device
from minivpn.tuntap.listing import read_tun_flags

if TYPE_CHECKING:
    from collections.abc import Iterator

_names = itertools.count()


def minivpn(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m minivpn ARGS`` and return it finished (never raises on failure)."""
    return subprocess.run(
        [sys.executable, "-m", "minivpn", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(*args: str) -> str:
    result = minivpn(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def fails(*args: str) -> str:
    """Run a command that must fail cleanly; return its one-line message."""
    result = minivpn(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "minivpn"
    )  # "minivpn: ..." or argparse's "minivpn tun add: error: ..."
    return lines[0]


def ip_details(name: str) -> dict[str, object]:
    """``ip -d -j link show NAME``: the kernel's own account of the tun device (netlink)."""
    out = subprocess.run(
        ["ip", "-details", "-json", "link", "show", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    (link,) = json.loads(out)
    data: dict[str, object] = link["linkinfo"]["info_data"]
    return data


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh interface name; whatever is left under it is deleted afterwards."""
    fresh = f"mvcli{next(_names)}"
    yield fresh
    if link_exists(fresh):
        subprocess.run(["ip", "link", "del", fresh], check=False, timeout=30)


@pytest.mark.parametrize(
    ("options", "mode", "pi", "multi_queue"),
    [
        ([], "tun", False, False),
        (["--tap"], "tap", False, False),
        (["--pi"], "tun", True, False),
        (["--tap", "--pi", "--multi-queue"], "tap", True, True),
    ],
)
def test_add_show_list_del(
    name: str, options: list[str], mode: str, pi: bool, multi_queue: bool
) -> None:
    assert ok("tun", "add", name, *options) == f"created {mode} device {name}\n"
    kernel = ip_details(name)
    assert (kernel["type"], kernel["pi"], kernel["persist"]) == (mode, pi, True)
    assert kernel["multi_queue"] is multi_queue

    shown = json.loads(ok("tun", "show", name, "--json"))
    assert (shown["mode"], shown["pi"], shown["multi_queue"], shown["persist"]) == (
        mode,
        pi,
        multi_queue,
        True,
    )
    assert (shown["owner"], shown["group"]) == (None, None)
    assert shown["ifindex"] == int(Path(f"/sys/class/net/{name}/ifindex").read_text())
    if mode == "tap":
        assert shown["mac"] == Path(f"/sys/class/net/{name}/address").read_text().strip()
    else:
        assert shown["mac"] is None

    listed = {entry["name"]: entry for entry in json.loads(ok("tun", "list", "--json"))}
    assert listed[name] == shown

    table = ok("tun", "list").splitlines()
    assert table[0].split() == [
        "NAME", "MODE", "PI", "MQ", "PERSIST", "OWNER", "GROUP", "MTU", "STATE", "ADDRESSES"
    ]  # fmt: skip
    (row,) = [line.split() for line in table[1:] if line.split()[0] == name]
    yes_no = {True: "yes", False: "no"}
    assert row == [
        name,
        mode,
        yes_no[pi],
        yes_no[multi_queue],
        "yes",
        "-",
        "-",
        "1500",
        "down",
        "-",
    ]

    assert ok("tun", "del", name) == f"deleted {name}\n"
    assert not link_exists(name)


def test_flags_from_tungetiff_netlink_and_sysfs_agree(name: str) -> None:
    ok("tun", "add", name, "--pi", "--multi-queue")
    fd, attached_name, flags = tun_device.open_device(name, pi=True, multi_queue=True)
    try:
        assert attached_name == name
        ifreq = fcntl.ioctl(fd, 0x800454D2, bytes(40))  # TUNGETIFF, spelled out independently
        raw_name, raw_flags = struct.unpack("16sH22x", ifreq)
        assert raw_name == name.encode().ljust(16, b"\0")
        netlink = read_tun_flags(name)
        assert netlink == 0x0901  # TUN | MULTI_QUEUE | PERSIST, and no NO_PI: PI is on
        sysfs = int(Path(f"/sys/class/net/{name}/tun_flags").read_text(), 16)
        assert sysfs == netlink
        # TUNGETIFF agrees on every bit but 0x1000, which it also uses for IFF_NOFILTER ("no
        # BPF filter attached") and so reports set although PI is on.
        assert raw_flags == netlink | 0x1000
        assert flags == netlink  # open_device reports the truth
        assert ip_details(name)["pi"] is True
        shown = json.loads(ok("tun", "show", name, "--json"))
        assert shown["num_queues"] == 1  # this fd
        assert "queues:      1 attached" in ok("tun", "show", name)
    finally:
        os.close(fd)
    ok("tun", "del", name)


def test_queues_of_a_multi_queue_device_must_agree_on_pi(name: str) -> None:
    first, _, _ = tun_device.open_device(name, pi=True, multi_queue=True)
    try:
        with pytest.raises(FlagsMismatch, match="share one setting, and it has PI on"):
            tun_device.open_device(name, pi=False, multi_queue=True)
        second, _, _ = tun_device.open_device(name, pi=True, multi_queue=True)
        os.close(second)
    finally:
        os.close(first)


def test_template_name_is_resolved_by_the_kernel() -> None:
    out = ok("tun", "add", "mvtpl%d")
    created = out.split()[-1]
    assert created.startswith("mvtpl")
    assert created[len("mvtpl") :].isdigit()
    assert link_exists(created)
    ok("tun", "del", created)
    assert not link_exists(created)


@pytest.mark.realroot  # uid 65534 is not mapped in a rootless user namespace
def test_owner_and_group_are_shown_by_name(name: str) -> None:
    ok("tun", "add", name, "--user", "nobody", "--group", "65534")
    kernel = ip_details(name)
    assert kernel.get("user") == "nobody"
    assert kernel.get("group") == "nogroup"
    shown = json.loads(ok("tun", "show", name, "--json"))
    assert (shown["owner"], shown["group"]) == (65534, 65534)
    assert (shown["owner_name"], shown["group_name"]) == ("nobody", "nogroup")
    text = ok("tun", "show", name)
    assert "owner:       nobody (65534)" in text
    assert "group:       nogroup (65534)" in text


def test_devices_made_by_other_tools_are_listed(name: str) -> None:
    subprocess.run(
        ["ip", "tuntap", "add", "dev", name, "mode", "tap", "user", "0"],
        check=True,
        timeout=30,
    )
    listed = {entry["name"]: entry for entry in json.loads(ok("tun", "list", "--json"))}
    assert listed[name]["mode"] == "tap"
    assert listed[name]["persist"] is True
    assert listed[name]["owner"] == 0
    assert "lo" not in listed  # only TUN/TAP devices
    ok("tun", "del", name)  # and minivpn can delete what ip made
    assert not link_exists(name)


def test_addresses_and_state_are_configured_and_listed(name: str) -> None:
    ok("tun", "add", name, "--address", "10.9.7.1/24", "--address", "fd00:97::1/64", "--up")
    shown = json.loads(ok("tun", "show", name, "--json"))
    assert shown["addresses"][:2] == ["10.9.7.1/24", "fd00:97::1/64"]
    assert shown["up"] is True
    assert shown["state"] == "no-carrier"  # up, but nobody attached
    assert (
        "inet 10.9.7.1/24"
        in subprocess.run(
            ["ip", "addr", "show", name], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    )


def test_attach_holds_the_device_and_reports_it(name: str) -> None:
    ok("tun", "add", name)
    out = ok("tun", "attach", name, "--seconds", "0")
    assert out == f"attached to {name} (tun, persistent)\ndetached from {name}\n"
    assert link_exists(name)
    out = ok("tun", "attach", "mvtmp0", "--tap", "--seconds", "0")
    assert out.startswith("attached to mvtmp0 (tap, temporary)")
    assert not link_exists("mvtmp0")


def test_attach_waits_for_sigterm(name: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "minivpn", "tun", "attach", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == f"attached to {name} (tun, temporary)\n"
        assert link_exists(name)
        process.terminate()
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == 0, err
    assert out == f"detached from {name}\n"
    assert not link_exists(name)


# --- failures: one clear line, non-zero status, no traceback ---------------------------------


def test_bad_names_are_refused() -> None:
    assert "at most 15" in fails("tun", "add", "a" * 16)
    assert "must not contain" in fails("tun", "add", "bad/name")
    assert "must not contain" in fails("tun", "show", "has space")
    assert "must not be empty" in fails("tun", "del", "")


def test_unknown_user_and_group(name: str) -> None:
    assert fails("tun", "add", name, "--user", "no-such-user-x") == (
        "minivpn: unknown user 'no-such-user-x'"
    )
    assert fails("tun", "add", name, "--group", "no-such-group-x") == (
        "minivpn: unknown group 'no-such-group-x'"
    )
    assert not link_exists(name)


def test_bad_address_creates_nothing(name: str) -> None:
    message = fails("tun", "add", name, "--address", "foo")
    assert message == "minivpn: invalid address 'foo': expected ADDR/PREFIX, e.g. 10.9.0.1/24"
    assert not link_exists(name)
    assert "68 to 65535" in fails("tun", "add", name, "--mtu", "10")
    assert not link_exists(name)  # all or nothing


def test_non_tun_devices_are_left_alone() -> None:
    assert fails("tun", "del", "lo") == (
        "minivpn: cannot delete 'lo': it is not a TUN/TAP device (minivpn only deletes those)"
    )
    assert fails("tun", "show", "lo") == "minivpn: 'lo' is not a TUN/TAP device"
    assert "'lo' exists and is not a TUN/TAP device" in fails(
        "tun", "attach", "lo", "--seconds", "0"
    )
    assert "already exists" in fails("tun", "add", "lo")
    assert link_exists("lo")


def test_missing_devices() -> None:
    assert fails("tun", "show", "mvnope") == "minivpn: no network device named 'mvnope'"
    assert fails("tun", "del", "mvnope") == "minivpn: no network device named 'mvnope'"


def test_flag_mismatches_say_which(name: str) -> None:
    ok("tun", "add", name)
    assert fails("tun", "attach", name, "--tap", "--seconds", "0").endswith(
        f"cannot attach to {name}: it is a TUN device, but TAP was requested "
        "(use --tun instead of --tap)"
    )
    assert "it is not multi-queue, but a multi-queue attachment was requested" in fails(
        "tun", "attach", name, "--multi-queue", "--seconds", "0"
    )
    assert "already exists" in fails("tun", "add", name, "--tap")


def test_busy_device(name: str) -> None:
    ok("tun", "add", name)
    fd, _, _ = tun_device.open_device(name)
    try:
        assert "is busy" in fails("tun", "attach", name, "--seconds", "0")
        assert "is busy" in fails("tun", "del", name)
    finally:
        os.close(fd)
    ok("tun", "del", name)


def test_deleting_a_temporary_device_is_refused(name: str) -> None:
    fd, _, _ = tun_device.open_device(name)
    try:
        assert "not persistent" in fails("tun", "del", name)
    finally:
        os.close(fd)


def test_usage_errors_exit_2() -> None:
    result = minivpn("tun", "frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
