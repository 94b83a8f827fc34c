"""The demo's namespace plumbing: named network namespaces, the veth pair, setns, mounts.

**How a process runs inside a namespace.**  A named network namespace is a file under
``/run/netns`` (a bind mount of a namespace, as ``ip netns add`` makes it).  The demo opens that
file, and each child enters it between ``fork`` and ``exec`` (``subprocess.Popen``'s
``preexec_fn``, :func:`entering`) with the ``setns(2)`` system call, through ctypes: Python 3.11
has no ``os.setns``.  The demo itself enters a namespace only for the few netlink requests that
configure its links (:func:`inside`): a netlink socket belongs to the namespace its thread was
in when it opened it, so :mod:`minivpn.netconf` then configures that namespace, and the demo
steps back out at once.

**Privileges.**  Creating namespaces and devices needs ``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``
(:func:`has_capabilities`): root, or an ordinary user inside ``unshare -Urnm``, which gives them a
user namespace where they are root, and private network and mount namespaces.  There
``/run/netns`` still belongs to the real root, so the demo mounts a private tmpfs over it (over
``/run`` if ``/run/netns`` does not exist): only when the mount namespace is its own, never the
host's (:func:`netns_dir_mount_target`, :func:`mount_tmpfs`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from minivpn import netconf
from minivpn.demo.errors import DemoError
from minivpn.runtime.process import CAP_NET_ADMIN, CAP_SYS_ADMIN, effective_capabilities

if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Callable, Iterator

    from minivpn.demo.processes import Teardown

__all__ = [
    "NETNS_DIR",
    "VethEnd",
    "build_network",
    "create_namespace",
    "entering",
    "has_capabilities",
    "inside",
    "mount_tmpfs",
    "netns_dir_mount_target",
    "umount",
]

#: Where pyroute2 (like ``ip netns``) keeps named network namespaces.
NETNS_DIR = Path("/var/run/netns")

# setns(2), mount(2) and ioctl constants (linux/sched.h, linux/mount.h, linux/nsfs.h).
_CLONE_NEWNET = 0x40000000
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MNT_DETACH = 0x2
_NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): the user namespace that owns a namespace
# prctl(2) (linux/prctl.h): the signal a child gets when its parent dies.
_PR_SET_PDEATHSIG = 1


@attrs.frozen
class VethEnd:
    """One end of the veth pair: the namespace it is in, its name and its address.

    Attributes:
        namespace: the namespace, as an open file (:func:`create_namespace`).
        name: the link's name.
        address: its address and prefix.
    """

    namespace: int
    name: str
    address: ipaddress.IPv4Interface


# --- privileges and the namespace directory -------------------------------------------------------


def has_capabilities() -> bool:
    """Whether this process has CAP_NET_ADMIN and CAP_SYS_ADMIN (in its user namespace)."""
    capabilities = effective_capabilities() or 0
    return bool(capabilities >> CAP_NET_ADMIN & 1 and capabilities >> CAP_SYS_ADMIN & 1)


def netns_dir_mount_target() -> str | None:
    """Where to mount a tmpfs so that named namespaces can be created, if anywhere.

    As root, ``/run/netns`` is writable: nothing to do.  Under ``unshare -Urnm`` it belongs to
    the real root, so a private tmpfs goes over it (over ``/run`` if it does not exist), which
    only this mount namespace sees.

    Returns:
        The directory to mount on (symbolic links resolved), or None.

    Raises:
        DemoError: the directory is not writable and the mount namespace is not our own.
    """
    if _writable(NETNS_DIR):
        return None
    if not _in_private_mount_namespace():
        raise DemoError(
            f"cannot create network namespaces: {NETNS_DIR} is not writable here. Run the demo "
            "as root, or as an ordinary user with its own mount namespace: "
            "unshare -Urnm minivpn demo"
        )
    return os.path.realpath(NETNS_DIR if NETNS_DIR.is_dir() else NETNS_DIR.parent)


def _writable(directory: Path) -> bool:
    """Whether *directory* can be written to (or, if missing, created)."""
    if directory.is_dir():
        return os.access(directory, os.W_OK | os.X_OK)
    return os.access(directory.parent, os.W_OK | os.X_OK)


def _in_private_mount_namespace() -> bool:
    """Whether this process has a mount namespace of its own (``unshare -m``), not the host's.

    Normally: whether it differs from the mount namespace of PID 1.  An ordinary user in a user
    namespace cannot look at PID 1's namespaces; then the mount namespace is ours if our own
    user namespace owns it (``unshare -Urnm`` made both), which the ``NS_GET_USERNS`` ioctl tells.
    """
    mine = os.stat("/proc/self/ns/mnt")
    try:
        first = os.stat("/proc/1/ns/mnt")
    except PermissionError:
        return _owned_by_own_user_namespace("/proc/self/ns/mnt")
    return (mine.st_dev, mine.st_ino) != (first.st_dev, first.st_ino)


def _owned_by_own_user_namespace(namespace_file: str) -> bool:
    """Whether the namespace open at *namespace_file* belongs to this process's user namespace."""
    fd = os.open(namespace_file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner_fd = fcntl.ioctl(fd, _NS_GET_USERNS)
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        owner = os.fstat(owner_fd)
    finally:
        os.close(owner_fd)
    own = os.stat("/proc/self/ns/user")
    return (owner.st_dev, owner.st_ino) == (own.st_dev, own.st_ino)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_tmpfs(target: str) -> None:
    """``mount -t tmpfs tmpfs TARGET`` through mount(2).

    Raises:
        DemoError: the kernel refused.
    """
    mount = _libc().mount
    mount.argtypes = [
        ctypes.c_char_p,  # source
        ctypes.c_char_p,  # target
        ctypes.c_char_p,  # file system type
        ctypes.c_ulong,  # flags
        ctypes.c_char_p,  # options
    ]
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if mount(b"tmpfs", os.fsencode(target), b"tmpfs", flags, b"mode=0755") != 0:
        code = ctypes.get_errno()
        raise DemoError(f"cannot mount a private tmpfs on {target}: {os.strerror(code)}")


def umount(target: str) -> None:
    umount2 = _libc().umount2
    umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    if umount2(os.fsencode(target), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot unmount {target}: {os.strerror(code)}")


# --- namespaces and links ------------------------------------------------------------------------


def create_namespace(name: str, teardown: Teardown) -> int:
    """Create the named network namespace *name*; return an open descriptor of it.

    Raises:
        DemoError: the kernel refused.
    """
    from pyroute2 import netns

    path = NETNS_DIR / name
    # Registered first: an interrupted create can leave the file behind.
    teardown.add(f"deleted namespace {name}", lambda: _remove_namespace(name))
    try:
        netns.create(name)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DemoError(f"cannot create network namespace {name}: {_reason(exc)}") from None
    teardown.add("", lambda: os.close(fd))
    return fd


def _remove_namespace(name: str) -> None:
    from pyroute2 import netns

    path = NETNS_DIR / name
    if path.exists():
        netns.remove(name)
    if path.exists():
        raise OSError(errno.EBUSY, f"{path} is still there")


def build_network(a: VethEnd, b: VethEnd) -> None:
    """``lo`` up in both namespaces; a veth pair from A to B, addressed and up.

    The pair is created inside A with its other end placed straight into B, so no link ever
    appears in the namespace the demo runs in.  The links are configured by
    :mod:`minivpn.netconf`, from inside each namespace in turn (:func:`inside`).

    Raises:
        DemoError: a netlink request failed.
    """
    try:
        with inside(a.namespace):
            netconf.add_veth(a.name, b.name, peer_namespace=b.namespace)
        for end in (a, b):
            with inside(end.namespace):
                netconf.set_link_up("lo")
                netconf.add_address(end.name, str(end.address))
                netconf.set_link_up(end.name)
    except netconf.NetconfError as exc:  # its message says what could not be done, and why
        raise DemoError(str(exc)) from None


@contextlib.contextmanager
def inside(namespace: int) -> Iterator[None]:
    """Run the block with this thread in the network namespace open as *namespace*.

    ``setns(2)`` moves only the calling thread, and the demo has only one.  Back in its own
    namespace on the way out, however the block ends.

    Raises:
        DemoError: the kernel refused to enter the namespace.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(namespace)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def _setns(namespace: int) -> None:
    setns = _libc().setns
    setns.argtypes = [ctypes.c_int, ctypes.c_int]
    if setns(namespace, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise DemoError(f"cannot enter a network namespace: {os.strerror(code)}")


def entering(namespace: int) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the child into the network namespace open as *namespace*.

    It also asks the kernel to send the child SIGTERM if the demo dies (``PR_SET_PDEATHSIG``):
    even a demo killed with SIGKILL, which has no chance to tear down, leaves no VPN process
    running.  The libc functions are looked up here, before the fork, so the child does as
    little as possible between fork and exec: two system calls.
    """
    libc = _libc()
    setns, prctl = libc.setns, libc.prctl
    setns.argtypes = [ctypes.c_int, ctypes.c_int]
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]

    def enter() -> None:
        if setns(namespace, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns: {os.strerror(code)}")
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return enter


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
