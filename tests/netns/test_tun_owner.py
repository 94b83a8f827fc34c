"""Ownership: root makes a device once, an unprivileged user then attaches to it.

These tests act as a second user (``nobody``, 65534, and the unused uid 65533) through
:mod:`tests.helpers.runas`, so they need real root: a user namespace made by a rootless
``netns/isolate`` maps only one uid.  The functions at the bottom run in those child processes.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from tests.helpers.runas import run_call_as, run_cli_as, tun_openable_by_everyone

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.realroot

NOBODY = 65534
NOGROUP = 65534
STRANGER = 65533  # a uid and gid nobody uses
PERMISSION_DENIED = (
    "minivpn: permission denied: attaching to {} needs CAP_NET_ADMIN or being its owner/group "
    "(see docs/privileges.md)"
)

_names = itertools.count()


@pytest.fixture(autouse=True)
def _tun_openable() -> Iterator[None]:
    """Other users must be able to open /dev/net/tun (0666 on most systems, 0600 here)."""
    with tun_openable_by_everyone():
        yield


@pytest.fixture
def name() -> Iterator[str]:
    fresh = f"mvown{next(_names)}"
    yield fresh
    if Path("/sys/class/net", fresh).exists():
        subprocess.run(["ip", "link", "del", fresh], check=False, timeout=30)


def minivpn(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "minivpn", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def clean(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_runas_really_drops_privileges() -> None:
    result = run_call_as(
        "tests.netns.test_tun_owner:report_identity", uid=NOBODY, gid=NOGROUP, groups=[STRANGER]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["65534", "65534", "65534", "65534", "65533", "denied"]


def test_owner_attaches_and_exchanges_packets_without_privileges(name: str) -> None:
    root = minivpn("tun", "add", name, "--user", "nobody", "--address", "10.9.8.1/24", "--up")
    assert root.returncode == 0, root.stderr
    result = run_call_as(
        "tests.netns.test_tun_owner:reflect_one_datagram", [name], uid=NOBODY, gid=NOGROUP
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "reflected\n"


def test_another_user_is_refused_with_a_clear_message(name: str) -> None:
    assert minivpn("tun", "add", name, "--user", "nobody").returncode == 0
    result = clean(run_cli_as(["tun", "attach", name, "--seconds", "0"], uid=STRANGER, gid=NOGROUP))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(PERMISSION_DENIED.format(name))
    assert "owner: uid 65534; group: none; this process: uid 65533" in result.stderr

    owner = clean(run_cli_as(["tun", "attach", name, "--seconds", "0"], uid=NOBODY, gid=NOGROUP))
    assert owner.returncode == 0, owner.stderr
    assert owner.stdout == f"attached to {name} (tun, persistent)\ndetached from {name}\n"


def test_group_members_may_attach(name: str) -> None:
    assert minivpn("tun", "add", name, "--group", "nogroup").returncode == 0
    attach = ["tun", "attach", name, "--seconds", "0"]
    assert run_cli_as(attach, uid=STRANGER, gid=NOGROUP).returncode == 0
    assert run_cli_as(attach, uid=STRANGER, gid=STRANGER, groups=[NOGROUP]).returncode == 0
    outsider = clean(run_cli_as(attach, uid=STRANGER, gid=STRANGER))
    assert outsider.returncode == 1
    assert outsider.stderr.startswith(PERMISSION_DENIED.format(name))


def test_owner_and_group_must_both_match_when_both_are_set(name: str) -> None:
    assert minivpn("tun", "add", name, "--user", "nobody", "--group", "nogroup").returncode == 0
    attach = ["tun", "attach", name, "--seconds", "0"]
    assert run_cli_as(attach, uid=NOBODY, gid=NOGROUP).returncode == 0
    assert run_cli_as(attach, uid=NOBODY, gid=STRANGER).returncode == 1
    assert run_cli_as(attach, uid=STRANGER, gid=NOGROUP).returncode == 1


def test_a_device_without_owner_or_group_is_open_to_every_user(name: str) -> None:
    """The kernel's rule, and the reason `tun add` warns about it."""
    created = minivpn("tun", "add", name)
    assert created.returncode == 0
    assert "no owner or group, so any user" in created.stderr
    result = run_cli_as(["tun", "attach", name, "--seconds", "0"], uid=STRANGER, gid=STRANGER)
    assert result.returncode == 0, result.stderr


def test_owner_without_cap_net_admin_attaches_but_cannot_configure(name: str) -> None:
    assert minivpn("tun", "add", name, "--user", "nobody").returncode == 0
    result = clean(
        run_cli_as(
            ["tun", "attach", name, "--seconds", "0", "--address", "10.9.9.1/24", "--up"],
            uid=NOBODY,
            gid=NOGROUP,
        )
    )
    assert result.returncode == 0
    assert result.stdout.startswith(f"attached to {name}")
    assert f"cannot add address 10.9.9.1/24 to {name}: permission denied" in result.stderr
    assert "going on attach-only" in result.stderr
    shown = minivpn("tun", "show", name).stdout
    assert "10.9.9.1" not in shown

    # Once root has configured it, the same command needs no privilege and warns about nothing.
    root = minivpn("tun", "attach", name, "--seconds", "0", "--address", "10.9.9.1/24", "--up")
    assert root.returncode == 0, root.stderr
    again = clean(
        run_cli_as(
            ["tun", "attach", name, "--seconds", "0", "--address", "10.9.9.1/24", "--up"],
            uid=NOBODY,
            gid=NOGROUP,
        )
    )
    assert again.returncode == 0
    assert again.stderr == ""


def test_owner_may_delete_and_others_may_not(name: str) -> None:
    assert minivpn("tun", "add", name, "--user", "nobody").returncode == 0
    stranger = clean(run_cli_as(["tun", "del", name], uid=STRANGER, gid=STRANGER))
    assert stranger.returncode == 1
    assert "permission denied: deleting" in stranger.stderr
    owner = clean(run_cli_as(["tun", "del", name], uid=NOBODY, gid=NOGROUP))
    assert owner.returncode == 0, owner.stderr
    assert not Path("/sys/class/net", name).exists()


def test_creating_needs_cap_net_admin(name: str) -> None:
    for argv in (["tun", "add", name], ["tun", "attach", name, "--seconds", "0"]):
        result = clean(run_cli_as(argv, uid=NOBODY, gid=NOGROUP))
        assert result.returncode == 1
        assert result.stderr == (
            f"minivpn: permission denied: creating {name} needs CAP_NET_ADMIN "
            "(see docs/privileges.md)\n"
        )
    assert not Path("/sys/class/net", name).exists()


# --- run in the child process, after runas dropped privileges --------------------------------


def report_identity() -> int:
    """Print real/effective/saved uid, gid, groups, and whether root's home is readable."""
    uid, euid, _ = os.getresuid()
    gid, egid, _ = os.getresgid()
    try:
        os.listdir("/root")
        root_home = "readable"
    except PermissionError:
        root_home = "denied"
    print(uid, euid, gid, egid, *os.getgroups(), root_home)
    return 0


def reflect_one_datagram(name: str) -> int:
    """Attach to *name* (set up by root) and bounce one UDP datagram back to its sender.

    Reflecting means swapping the IP addresses and the UDP ports.  The IPv4 header checksum
    and the UDP checksum are one's-complement sums of 16-bit words, which do not depend on the
    order of the words, so the reflected packet is valid without recomputing anything.
    """
    from minivpn.tuntap import open_tun_device

    async def bounce() -> None:
        async with open_tun_device(name) as device:
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.bind(("10.9.8.1", 0))
                await sock.sendto(b"ping from owner", ("10.9.8.2", 5000))
                with trio.fail_after(10):
                    while True:
                        packet = await device.read()
                        if packet[0] >> 4 == 4 and packet[9] == socket.IPPROTO_UDP:
                            break
                ihl = (packet[0] & 0x0F) * 4
                reflected = (
                    packet[:12]
                    + packet[16:20]  # source <- destination
                    + packet[12:16]  # destination <- source
                    + packet[20:ihl]
                    + packet[ihl + 2 : ihl + 4]  # source port <- destination port
                    + packet[ihl : ihl + 2]
                    + packet[ihl + 4 :]
                )
                await device.write(reflected)
                with trio.fail_after(10):
                    data, sender = await sock.recvfrom(2048)
                assert (data, sender) == (b"ping from owner", ("10.9.8.2", 5000)), (data, sender)

    trio.run(bounce)
    print("reflected")
    return 0
