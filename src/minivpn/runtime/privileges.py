"""Least privilege: what ``minivpn up`` and ``minivpnd`` give up once they are set up.

Creating the TUN device, configuring the link and binding the sockets need root (or
CAP_NET_ADMIN); serving the interface afterwards needs only one capability, CAP_NET_ADMIN,
for what ``wg`` may still ask at run time (``SO_MARK`` for ``wg set fwmark``), and
CAP_NET_BIND_SERVICE while the UDP port is a privileged one.  So, once the UDP sockets are
bound, :func:`drop_privileges`:

1. removes every other capability from the bounding set (``PR_CAPBSET_DROP``), so that nothing
   this process or its children run can ever get them back;
2. with ``--user``/``--group``, switches the real, effective and saved uid and gid (and the
   supplementary groups) to that user, keeping the permitted capabilities across the switch
   (``PR_SET_KEEPCAPS``);
3. sets the permitted and effective sets to the capabilities kept, the inheritable and ambient
   sets to nothing (``capset``);
4. sets ``PR_SET_NO_NEW_PRIVS``: no ``execve`` of a set-user-ID or file-capability program can
   raise privileges again.

Capabilities are per thread: the drop runs while the process has one thread (trio starts
none of its own here), and refuses otherwise.

One thing the daemon can no longer do after ``--user``: remove its UAPI socket file, which
lives in a directory only root may write (``/var/run/wireguard``, mode 0700).  So before the
switch a small **janitor** process is forked (:func:`start_janitor`): it keeps uid 0, the owner
of that directory, but no capability at all and no way to gain one, closes every file, and waits
for the daemon to end (a pipe closing, however it ends, even killed); then it removes the
socket file if it is still the daemon's, and exits.  Without ``--user`` the daemon stays uid 0
and removes its socket itself.

All of this talks to the kernel through ``prctl(2)`` and ``capset(2)`` with :mod:`ctypes`; see
docs/privileges.md for the model and a systemd unit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import grp
import logging
import os
import pwd
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from minivpn.errors import MinivpnError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "PrivilegeDrop",
    "PrivilegeError",
    "capabilities_to_keep",
    "drop_privileges",
    "resolve_user",
    "start_janitor",
]

log = logging.getLogger("minivpn.privileges")

#: Capability numbers (linux/capability.h).
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
_CAP_SETPCAP = 8

# prctl(2) options (linux/prctl.h).
_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4

#: ``_LINUX_CAPABILITY_VERSION_3``: two 32-bit words per set.
_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(MinivpnError):
    """Privileges cannot be dropped as asked (an unknown user, an unmapped uid, a refusal)."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@attrs.frozen
class PrivilegeDrop:
    """What to become once set up.

    Attributes:
        uid, gid: the user and group to switch to (``--user``/``--group``), or None to keep
            them (the capabilities are dropped all the same).
        label: how to name the user in messages (``nobody (uid 65534)``).
    """

    uid: int | None = None
    gid: int | None = None
    label: str = ""

    @property
    def switches_user(self) -> bool:
        return self.uid is not None and (self.uid != os.getuid() or self.gid != os.getgid())


def resolve_user(user: str | None, group: str | None) -> PrivilegeDrop:
    """The :class:`PrivilegeDrop` for ``--user USER [--group GROUP]`` (names or numbers).

    Without *group*, the user's primary group.  Checked now, before anything is set up, so that
    a typo fails at once: the user and group must exist and be mapped in this user namespace.

    Raises:
        PrivilegeError: unknown, or not mapped.
    """
    if user is None:
        if group is not None:
            raise PrivilegeError("--group needs --user")
        return PrivilegeDrop()
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not user.isdigit():
            raise PrivilegeError(f"--user {user}: no such user") from None
        uid, gid = int(user), int(user)  # a bare uid with no passwd entry: its own group
    if group is not None:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            if not group.isdigit():
                raise PrivilegeError(f"--group {group}: no such group") from None
            gid = int(group)
    for kind, value, option in (("uid", uid, "--user"), ("gid", gid, "--group")):
        if not _mapped(kind, value):
            raise PrivilegeError(
                f"{option}: {kind} {value} is not mapped in this user namespace, so this "
                "process cannot switch to it (see docs/privileges.md)"
            )
    return PrivilegeDrop(uid, gid, f"{user} (uid {uid}, gid {gid})")


def _mapped(kind: str, value: int) -> bool:
    """Whether *value* is mapped in this user namespace (``/proc/self/uid_map``, ``gid_map``)."""
    try:
        lines = Path(f"/proc/self/{kind}_map").read_text().splitlines()
    except OSError:
        return True  # no user namespaces: every id exists
    for line in lines:
        inside, _outside, count = (int(field) for field in line.split())
        if inside <= value < inside + count:
            return True
    return False


def capabilities_to_keep(listen_port: int) -> frozenset[int]:
    """CAP_NET_ADMIN, and CAP_NET_BIND_SERVICE if *listen_port* is a privileged port.

    A port is privileged below ``net.ipv4.ip_unprivileged_port_start`` of this network
    namespace (1024 by default).  Rebinding it (link up, ``wg set`` of another key) does not
    need the capability, the socket stays bound; a later ``wg set listen-port`` to a privileged
    port does, which is why it is kept while the port is one.
    """
    keep = {CAP_NET_ADMIN}
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        start = 1024
    if 0 < listen_port < start:
        keep.add(CAP_NET_BIND_SERVICE)
    return frozenset(keep)


def drop_privileges(plan: PrivilegeDrop, keep: Iterable[int]) -> None:
    """Give up every capability but *keep*, switch user if *plan* says so, set no_new_privs.

    Capabilities not held to begin with are not gained (the sets only ever shrink).  Call it
    with one thread.

    Raises:
        PrivilegeError: another thread exists, or the kernel refused a step.
    """
    threads = os.listdir("/proc/self/task")
    if len(threads) != 1:
        raise PrivilegeError(
            f"cannot drop privileges: the process has {len(threads)} threads (capabilities are "
            "per thread)"
        )
    held = _status_bits("CapPrm")
    kept = _bits(keep) & held
    if held >> _CAP_SETPCAP & 1:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):
            if not kept >> cap & 1:
                _prctl(_PR_CAPBSET_DROP, cap, f"drop capability {cap} from the bounding set")
    if plan.switches_user and plan.uid is not None and plan.gid is not None:
        _prctl(_PR_SET_KEEPCAPS, 1, "keep capabilities across the user switch")
        try:
            os.setgroups([plan.gid])
            os.setresgid(plan.gid, plan.gid, plan.gid)
            os.setresuid(plan.uid, plan.uid, plan.uid)
        except OSError as exc:
            raise PrivilegeError(f"cannot switch to {plan.label}: {exc.strerror}") from None
        _prctl(_PR_SET_KEEPCAPS, 0, "clear keep-capabilities")
    _capset(kept)
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clear the ambient capabilities", 0)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs", 0)
    log.info(
        "dropped privileges: uid %d, gid %d, capabilities kept: %s",
        os.geteuid(),
        os.getegid(),
        ", ".join(_CAP_NAMES.get(cap, str(cap)) for cap in sorted(keep) if kept >> cap & 1)
        or "none",
    )


_CAP_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE"}


def _bits(caps: Iterable[int]) -> int:
    bits = 0
    for cap in caps:
        bits |= 1 << cap
    return bits


def _status_bits(field: str) -> int:
    """A capability set of this process from ``/proc/self/status`` (``CapPrm``, ``CapEff``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise PrivilegeError(f"/proc/self/status has no {field}")


def _prctl(option: int, arg: int, what: str, *rest: int) -> None:
    args = (arg, *rest) + (0,) * (4 - 1 - len(rest))
    if _libc.prctl(option, *(ctypes.c_ulong(value) for value in args)) != 0:
        code = ctypes.get_errno()
        if option == _PR_CAPBSET_DROP and code == errno.EINVAL:
            return  # a capability this kernel does not know
        raise PrivilegeError(f"cannot {what}: {os.strerror(code)}")


def _capset(bits: int) -> None:
    """Set the permitted and effective sets to *bits*, the inheritable set to nothing."""
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in range(2):
        value = (bits >> (32 * word)) & 0xFFFFFFFF
        data[word].effective = value
        data[word].permitted = value
        data[word].inheritable = 0
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"cannot set capabilities: {os.strerror(ctypes.get_errno())}")


# --- the janitor ----------------------------------------------------------------------------------


def start_janitor(files: Iterable[tuple[Path, tuple[int, int]]]) -> int:
    """Fork the process that removes *files* once this one has ended; return its PID.

    For a daemon about to switch user (see the module documentation).  Each file is a
    ``(path, (st_dev, st_ino))`` pair: it is removed only if it is still that file, a socket.
    Call it before trio starts, with one thread.  The janitor keeps the current uid and drops
    every capability at once; this process keeps the pipe's write end until it exits.
    """
    files = list(files)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the janitor: never returns into the caller's code
        try:
            _janitor(read_end, files)
        finally:
            os._exit(0)
    os.close(read_end)
    os.set_inheritable(write_end, False)
    return pid


def _janitor(read_end: int, files: list[tuple[Path, tuple[int, int]]]) -> None:
    os.setsid()  # out of the daemon's process group: a Ctrl-C meant for it is not for us
    os.dup2(read_end, 0)
    os.closerange(1, os.sysconf("SC_OPEN_MAX"))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)
    if null > 2:
        os.close(null)
    drop_privileges(PrivilegeDrop(), keep=())
    while os.read(0, 1):
        pass  # the daemon never writes; EOF means it has exited
    for path, file_id in files:
        try:
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) == file_id and stat.S_ISSOCK(info.st_mode):
                os.unlink(path)
        except OSError:
            continue
