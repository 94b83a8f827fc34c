"""``minivpn demo``: a whole WireGuard VPN between two network namespaces, built, shown, removed.

The demo needs no setup and leaves nothing behind.  It does what a reader would otherwise do by
hand with ``ip netns``, ``minivpn genkey``, two configuration files and ``minivpn up``::

    namespace A                                            namespace B
    ┌───────────────────────────────┐                      ┌───────────────────────────────┐
    │ mvwgXXXXa 10.99.0.1/24        │                      │ mvwgXXXXb 10.99.0.2/24        │
    │   └ minivpn up (UDP 51820)    │   encrypted UDP      │   └ minivpn up (UDP 51820)    │
    │ mvvethXXXXa 198.51.100.1/24 ──┼──────── veth ────────┼── mvvethXXXXb 198.51.100.2/24 │
    └───────────────────────────────┘                      └───────────────────────────────┘

1. two network namespaces joined by a veth pair, configured through netlink (pyroute2);
2. a fresh key pair per peer (only the public keys are printed; the private keys exist only in
   the two configuration files, mode 0600 in a private directory that is deleted at the end);
3. ``python -m minivpn up CONF --foreground`` in each namespace;
4. ``ping`` from A to B's inner address, through the tunnel;
5. a small helper in B reads B's WireGuard device with an ``AF_PACKET`` socket and prints the
   decrypted packets it sees, decoded by :func:`minivpn.framing.summary.summarize`;
6. the handshake time and the byte counters, read from A's and B's UAPI sockets
   (:func:`minivpn.runtime.uapi_client.get_device`, what ``wg show`` prints);
7. a short throughput test from A to B (``iperf3``, or a small Python TCP test without it);
8. teardown: every process stopped by PID, both namespaces deleted (their links go with them),
   the private directory removed.  This also happens on failure and on Ctrl-C.

**How a process runs inside a namespace.**  A named network namespace is a file under
``/run/netns`` (a bind mount of a namespace, as ``ip netns add`` makes it).  The demo opens that
file, and each child enters it between ``fork`` and ``exec`` (``subprocess.Popen``'s
``preexec_fn``) with the ``setns(2)`` system call, through ctypes: Python 3.11 has no
``os.setns``.  The demo itself never leaves its own namespace; netlink requests for the other
two go through ``pyroute2.NetNS``.

**Privileges.**  Creating namespaces and devices needs ``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``:
root, or an ordinary user inside ``unshare -Urnm``, which gives them a user namespace where they
are root, and private network and mount namespaces.  There ``/run/netns`` still belongs to the
real root, so the demo mounts a private tmpfs over it (over ``/run`` if ``/run/netns`` does not
exist): only when the mount namespace is its own, never the host's.  The UAPI sockets and
configuration files always go to a private temporary directory (``MINIVPN_SOCKET_DIR``), so the
demo never touches ``/var/run/wireguard``.

The product code runs no configuration command (no ``ip``): only the traffic generators ``ping``
and ``iperf3``, and Python helpers started as ``python -m minivpn.demo --capture ...`` (see
:func:`helper_main`; they are internal, not a sub-command).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from minivpn.documentation import doc_path
from minivpn.errors import MinivpnError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from minivpn.wireguard.keys import PrivateKey, PublicKey
    from minivpn.wireguard.uapi import DeviceSnapshot

__all__ = [
    "INNER_A",
    "INNER_B",
    "LISTEN_PORT",
    "NEEDS_ROOT",
    "OUTER_A",
    "OUTER_B",
    "DemoError",
    "DemoOptions",
    "NeedsRoot",
    "helper_main",
    "run_demo",
]

#: The addresses on the veth pair (documentation range, only inside the demo's namespaces).
OUTER_A = "198.51.100.1/24"
OUTER_B = "198.51.100.2/24"
#: The addresses on the WireGuard devices: the tunnel's inside.
INNER_A = "10.99.0.1/24"
INNER_B = "10.99.0.2/24"
#: Both peers listen on the standard WireGuard port: each namespace has its own ports.
LISTEN_PORT = 51820
#: The TCP port of the throughput test (iperf3's default).
THROUGHPUT_PORT = 5201

#: What an ordinary user is told: one line, with the command that works.
NEEDS_ROOT = "minivpn demo needs root; as an ordinary user run: unshare -Urnm minivpn demo"

#: Where pyroute2 (like ``ip netns``) keeps named network namespaces.
NETNS_DIR = Path("/var/run/netns")

#: Seconds a peer may take to come up (answer on its UAPI socket).
START_TIMEOUT = 15.0
#: Seconds a process gets after SIGTERM before SIGKILL.
STOP_GRACE = 3.0

# Capability bits (linux/capability.h) in CapEff of /proc/self/status.
_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21
# setns(2), mount(2) and ioctl constants (linux/sched.h, linux/mount.h, linux/nsfs.h).
_CLONE_NEWNET = 0x40000000
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MNT_DETACH = 0x2
_NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): the user namespace that owns a namespace
# AF_PACKET (linux/if_ether.h, linux/if_packet.h).
_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4
# prctl(2) (linux/prctl.h): the signal a child gets when its parent dies.
_PR_SET_PDEATHSIG = 1
#: Signals that stop the demo (with a teardown).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# TCP state LISTEN as /proc/net/tcp writes it (include/net/tcp_states.h).
_TCP_LISTEN = "0A"


class DemoError(MinivpnError):
    """A step of the demo failed; everything it made has been removed."""


class NeedsRoot(DemoError):
    """The demo lacks the capabilities to create namespaces and devices."""

    def __init__(self) -> None:
        super().__init__(NEEDS_ROOT)


@attrs.frozen
class DemoOptions:
    """What ``minivpn demo`` was asked to do.

    Attributes:
        pings: echo requests sent from A to B.
        seconds: length of the throughput test; 0 skips it.
        use_iperf3: measure with iperf3 when it is installed (else a small Python TCP test).
    """

    pings: int = 3
    seconds: float = 3.0
    use_iperf3: bool = True


@attrs.frozen
class _Peer:
    """One side of the demo: its namespace, links, addresses and key."""

    label: str
    namespace: str
    veth: str
    interface: str
    outer: ipaddress.IPv4Interface
    inner: ipaddress.IPv4Interface
    private_key: PrivateKey  # its repr() is redacted; it is only ever written to the config

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()


# --- the demo -------------------------------------------------------------------------------------


def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Build the two namespaces, run the VPN, show what happens, and remove everything.

    Args:
        options: what to do.
        out: where the narrative goes (standard output by default).

    Returns:
        0 when every step worked.

    Raises:
        NeedsRoot: no CAP_NET_ADMIN/CAP_SYS_ADMIN (an ordinary user outside ``unshare -Urnm``).
        DemoError: a step failed; the message says which and why.  Everything made so far has
            been torn down by then.
    """
    stream = sys.stdout if out is None else out

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    mount_target = _check_prerequisites()
    teardown = _Teardown()
    with _stop_signals_interrupt() as signalled:

        def say_between_steps(text: str = "") -> None:
            # A signal's KeyboardInterrupt can be lost: if it is raised while Python runs an
            # at-fork callback (pyroute2 and subprocess fork), Python prints it and goes on.
            # The flag stays set, so the next line the steps print raises it again.
            if signalled():
                raise KeyboardInterrupt
            say(text)

        try:
            _run_steps(options, say_between_steps, teardown, mount_target)
            if signalled():
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            say("\nInterrupted.")
            raise
        finally:
            teardown.run(say)
    try:
        vpn, demo = doc_path("vpn.md"), doc_path("demo.md")
    except FileNotFoundError:  # an installation without its docs: name them as in the source
        vpn, demo = Path("docs/vpn.md"), Path("docs/demo.md")
    say(f"\nHow it works: read {vpn} (and {demo} for this demo, step by step).")
    return 0


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[Callable[[], bool]]:
    """Inside the block, SIGINT, SIGTERM and SIGHUP stop the demo with a full teardown.

    The first of them raises KeyboardInterrupt; later ones are ignored, so that pressing Ctrl-C
    again cannot break off the teardown that the first one started.  The block gets a function
    that tells whether one has arrived (its KeyboardInterrupt may have been swallowed).

    Only in this process.  pyroute2 forks to reach into a namespace, and a fork of the demo that
    has not called exec runs the demo's Python code: if a signal raised KeyboardInterrupt there,
    the fork would run the demo's teardown too, deleting the namespaces under the real demo's
    feet.  A fork dies of the signal instead, as it would without a handler.
    """
    owner = os.getpid()
    interrupted = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    previous = {}
    for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. nohup: leave it ignored
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield lambda: interrupted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_steps(
    options: DemoOptions,
    say: Callable[[str], None],
    teardown: _Teardown,
    mount_target: str | None,
) -> None:
    """Steps 1 to 7; everything they make is registered with *teardown* before it exists."""
    from minivpn.wireguard.keys import PrivateKey

    tag = secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix=f"minivpn-demo-{tag}-"))  # mode 0700
    teardown.add(f"removed {workdir}", lambda: shutil.rmtree(workdir, ignore_errors=True))
    if mount_target is not None:
        _mount_tmpfs(mount_target)
        teardown.add(f"unmounted the tmpfs on {mount_target}", lambda: _umount(mount_target))

    a, b = (
        _Peer(
            label=label,
            namespace=f"minivpn-demo-{tag}-{label.lower()}",
            veth=f"mvveth{tag}{label.lower()}",
            interface=f"mvwg{tag}{label.lower()}",
            outer=ipaddress.IPv4Interface(outer),
            inner=ipaddress.IPv4Interface(inner),
            private_key=PrivateKey.generate(),
        )
        for label, outer, inner in (("A", OUTER_A, INNER_A), ("B", OUTER_B, INNER_B))
    )
    say("minivpn demo: a WireGuard VPN between two network namespaces, built here and removed.")

    say("\n1. Two network namespaces, joined by a veth pair (netlink, through pyroute2)")
    namespaces = {peer.label: _create_namespace(peer.namespace, teardown) for peer in (a, b)}
    _build_network(a, b)
    for peer in (a, b):
        say(f"   {peer.label}: namespace {peer.namespace:<24} {peer.veth} {peer.outer}")

    say("\n2. A fresh key pair for each peer (only the public halves are shown)")
    for peer in (a, b):
        say(f"   {peer.label}: public key {peer.public_key.to_base64()}")

    say("\n3. Both peers up: `minivpn up CONF --foreground` inside each namespace")
    env = {**os.environ, "MINIVPN_SOCKET_DIR": str(workdir)}
    runner = _Runner(workdir, env, teardown)
    for peer, other in ((a, b), (b, a)):
        config = _write_config(workdir, peer, other)
        process = runner.start(
            namespaces[peer.label],
            f"up-{peer.label.lower()}",
            [sys.executable, "-m", "minivpn", "up", str(config), "--foreground"],
        )
        snapshot = _wait_until_up(peer, workdir, process, runner.log_of(process))
        say(
            f"   {peer.label}: {peer.interface} {peer.inner}, UDP port {snapshot.listen_port}, "
            f"PID {process.pid}, peer {other.label} at {other.outer.ip}:{LISTEN_PORT}"
        )

    capture = runner.start(
        namespaces["B"],
        "capture",
        [sys.executable, "-m", "minivpn.demo", "--capture", b.interface, str(2 * options.pings)],
    )
    _wait_for_output(runner, capture, "ready", what="the packet capture in B")

    ping = ["ping", "-n", "-c", str(options.pings), "-i", "0.2", "-W", "2", str(b.inner.ip)]
    say(f"\n4. Ping from A to B through the tunnel: {' '.join(ping)}")
    received = _ping(runner, namespaces["A"], ping, options.pings, say)
    if received == 0:
        raise DemoError(
            f"no echo reply came back through the tunnel from {b.inner.ip}; "
            f"the peers' logs:\n{runner.tail('up-a')}\n{runner.tail('up-b')}"
        )

    say(f"\n5. The ICMP seen inside B: decrypted packets crossing {b.interface} (AF_PACKET socket)")
    for line in _collect_capture(runner, capture):
        say(f"   {line}")

    say("\n6. The tunnel, as each peer's UAPI socket reports it (what `wg show` prints)")
    for peer, other in ((a, b), (b, a)):
        say(f"   {peer.label}: {_describe_peer(_snapshot(peer, workdir), other)}")

    if options.seconds <= 0:
        say("\n7. Throughput: skipped (--seconds 0)")
    elif options.use_iperf3 and shutil.which("iperf3"):
        say(f"\n7. Throughput from A to B through the tunnel: iperf3 -t {options.seconds:g}")
        rate = _iperf3(runner, namespaces, b, options.seconds)
        say(f"   {_mbits(rate)} (received by B)")
    else:
        why = "iperf3 is not installed" if options.use_iperf3 else "--no-iperf3"
        say(
            f"\n7. Throughput from A to B through the tunnel: a {options.seconds:g} s Python "
            f"TCP test ({why})"
        )
        rate = _python_throughput(runner, namespaces, b, options.seconds)
        say(f"   {_mbits(rate)} (received by B)")


# --- prerequisites and the namespace directory ----------------------------------------------------


def _check_prerequisites() -> str | None:
    """Refuse early, before making anything, when the demo cannot work here.

    Returns:
        Where a tmpfs must be mounted so that namespaces can be created (see
        :func:`_netns_dir_mount_target`), or None.

    Raises:
        NeedsRoot: no CAP_NET_ADMIN or CAP_SYS_ADMIN.
        DemoError: ``ping`` is missing, ``/dev/net/tun`` cannot be opened, or namespaces
            cannot be created here.
    """
    capabilities = _effective_capabilities()
    if not (capabilities >> _CAP_NET_ADMIN & 1 and capabilities >> _CAP_SYS_ADMIN & 1):
        raise NeedsRoot
    if shutil.which("ping") is None:
        raise DemoError("minivpn demo needs ping (Debian: apt install iputils-ping)")
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        mode = ""
        with contextlib.suppress(OSError):
            mode = f" (mode {os.stat('/dev/net/tun').st_mode & 0o777:04o})"
        raise DemoError(
            f"cannot open /dev/net/tun{mode}: the demo needs it to create the WireGuard devices; "
            "its usual mode is 0666 (root can run: chmod 0666 /dev/net/tun)"
        )
    return _netns_dir_mount_target()


def _effective_capabilities() -> int:
    """The CapEff bits of this process (0 if they cannot be read)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _netns_dir_mount_target() -> str | None:
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


def _mount_tmpfs(target: str) -> None:
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


def _umount(target: str) -> None:
    umount2 = _libc().umount2
    umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    if umount2(os.fsencode(target), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot unmount {target}: {os.strerror(code)}")


# --- namespaces and links -------------------------------------------------------------------------


def _create_namespace(name: str, teardown: _Teardown) -> int:
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


def _build_network(a: _Peer, b: _Peer) -> None:
    """``lo`` up in both; a veth pair from A to B, addressed and up.  Nothing in our namespace.

    The pair is created inside A with its peer end placed straight into B, so no link ever
    appears in the namespace the demo runs in.

    Raises:
        DemoError: a netlink request failed.
    """
    from pyroute2 import NetNS

    for peer in (a, b):
        with _netlink(f"configure namespace {peer.namespace}"), NetNS(peer.namespace) as ipr:
            if peer is a:
                ipr.link(
                    "add",
                    ifname=a.veth,
                    kind="veth",
                    peer={"ifname": b.veth, "net_ns_fd": b.namespace},
                )
            ipr.link("set", index=_index(ipr, "lo"), state="up")
            veth = _index(ipr, peer.veth)
            ipr.addr(
                "add",
                index=veth,
                address=str(peer.outer.ip),
                prefixlen=peer.outer.network.prefixlen,
            )
            ipr.link("set", index=veth, state="up")


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise DemoError(f"the link {name} is missing")
    return int(found[0])


@contextlib.contextmanager
def _netlink(action: str) -> Iterator[None]:
    """Netlink and OS errors inside the block become DemoError("cannot ACTION: reason")."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        raise DemoError(f"cannot {action}: {os.strerror(exc.code)}") from None
    except OSError as exc:
        raise DemoError(f"cannot {action}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# --- the peers ------------------------------------------------------------------------------------


def _write_config(workdir: Path, peer: _Peer, other: _Peer) -> Path:
    """Write *peer*'s configuration, ``NAME.conf`` (mode 0600): the interface is named after it."""
    from minivpn.wireguard.config import (
        Config,
        Endpoint,
        InterfaceConfig,
        PeerConfig,
        format_config,
    )

    config = Config(
        interface=InterfaceConfig(
            private_key=peer.private_key, listen_port=LISTEN_PORT, addresses=(peer.inner,)
        ),
        peers=(
            PeerConfig(
                public_key=other.public_key,
                allowed_ips=(ipaddress.IPv4Network(f"{other.inner.ip}/32"),),
                endpoint=Endpoint(str(other.outer.ip), LISTEN_PORT),
            ),
        ),
    )
    path = workdir / f"{peer.interface}.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as file:
        file.write(format_config(config))
    return path


def _snapshot(peer: _Peer, workdir: Path) -> DeviceSnapshot:
    from minivpn.runtime.uapi_client import get_device

    return get_device(peer.interface, workdir, timeout=5.0)


def _wait_until_up(
    peer: _Peer, workdir: Path, process: subprocess.Popen[bytes], log: Path
) -> DeviceSnapshot:
    """Wait until *peer*'s interface answers on its UAPI socket with a bound port.

    Raises:
        DemoError: the process exited, or it did not answer within START_TIMEOUT.
    """
    from minivpn.runtime.uapi_client import UapiClientError

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise DemoError(
                f"`minivpn up` for peer {peer.label} exited with status {process.returncode}:\n"
                f"{_tail(log)}"
            )
        with contextlib.suppress(UapiClientError):
            snapshot = _snapshot(peer, workdir)
            if snapshot.listen_port:
                return snapshot
        if time.monotonic() > deadline:
            raise DemoError(
                f"peer {peer.label} did not come up within {START_TIMEOUT:g} s:\n{_tail(log)}"
            )
        time.sleep(0.05)


def _describe_peer(snapshot: DeviceSnapshot, other: _Peer) -> str:
    """One ``wg show``-like line about *other*, as seen in *snapshot*."""
    for remote in snapshot.peers:
        if remote.public_key == other.public_key:
            break
    else:
        return f"peer {other.label} is missing from the configuration"
    if remote.last_handshake_time_sec:
        age = time.time() - remote.last_handshake_time_sec - remote.last_handshake_time_nsec / 1e9
        handshake = f"handshake done {max(age, 0.0):.1f} s ago"
    else:
        handshake = "no handshake yet"
    return (
        f"peer {other.label} at {remote.endpoint or '(no endpoint)'}, {handshake}, "
        f"transfer {_bytes(remote.rx_bytes)} received, {_bytes(remote.tx_bytes)} sent"
    )


def _bytes(count: int) -> str:
    """A byte count the way ``wg show`` writes it: 123 B, 1.21 KiB, 3.40 MiB..."""
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    units = ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.2f} {units[0]}"


def _mbits(bits_per_second: float) -> str:
    mbits = bits_per_second / 1e6
    return f"{mbits:.0f} Mbit/s" if mbits >= 10 else f"{mbits:.2f} Mbit/s"


# --- traffic --------------------------------------------------------------------------------------


def _ping(
    runner: _Runner, namespace: int, command: list[str], count: int, say: Callable[[str], None]
) -> int:
    """Run ping in *namespace*, show its replies and summary, return how many replies came.

    Raises:
        DemoError: ping did not finish in time or failed for another reason than lost replies.
    """
    result = runner.run(namespace, command, timeout=10.0 + count)
    lines = result.stdout.splitlines()
    shown = [line for line in lines if " bytes from " in line or "packets transmitted" in line]
    shown += [line for line in lines if line.startswith(("rtt ", "round-trip"))]
    for line in shown:
        say(f"   {line}")
    match = re.search(r"(\d+) (?:packets )?received", result.stdout)
    if match is None:
        raise DemoError(f"ping failed (status {result.returncode}): {result.stderr.strip()}")
    return int(match.group(1))


def _collect_capture(runner: _Runner, capture: subprocess.Popen[bytes]) -> list[str]:
    """The decoded lines the capture helper printed (after its "ready" line).

    It stops by itself after the expected number of packets; if fewer came, it is stopped.

    Raises:
        DemoError: the helper failed.
    """
    try:
        capture.wait(timeout=3.0)
    except subprocess.TimeoutExpired:
        _stop(capture)
    lines = runner.output(capture).splitlines()
    if capture.returncode not in (0, -signal.SIGTERM):
        raise DemoError(
            f"the packet capture in B failed (status {capture.returncode}):\n"
            + "\n".join(lines[-5:])
        )
    packets = [line for line in lines[1:] if line.strip()]
    return packets or ["(nothing was seen)"]


def _wait_for_listener(runner: _Runner, process: subprocess.Popen[bytes], port: int) -> None:
    """Wait until *process*'s namespace has a TCP socket listening on *port*.

    ``/proc/PID/net/tcp`` lists the TCP sockets of the network namespace *process* is in, so
    this works from outside the namespace and needs nothing from the server's output.

    Raises:
        DemoError: the process exited, or nothing listened within 10 s.
    """
    wanted = f":{port:04X}"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(
                f"the throughput server in B exited with status {process.returncode}:\n"
                f"{runner.output(process)[-500:]}"
            )
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{process.pid}/net/{table}").read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[1].endswith(wanted) and fields[3] == _TCP_LISTEN:
                        return
        time.sleep(0.05)
    raise DemoError("the throughput server in B did not start listening within 10 s")


def _iperf3(runner: _Runner, namespaces: dict[str, int], b: _Peer, seconds: float) -> float:
    """iperf3 from A to B's inner address; the bits per second B received.

    Raises:
        DemoError: iperf3 failed.
    """
    address = str(b.inner.ip)
    server = runner.start(
        namespaces["B"],
        "iperf3-server",
        ["iperf3", "-s", "-1", "-B", address, "-p", str(THROUGHPUT_PORT)],
    )
    _wait_for_listener(runner, server, THROUGHPUT_PORT)
    client = ["iperf3", "-c", address, "-p", str(THROUGHPUT_PORT), "-t", f"{seconds:g}", "-J"]
    result = runner.run(namespaces["A"], client, timeout=seconds + 30.0)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = {}
    error = report.get("error") if isinstance(report, dict) else None
    try:
        rate = float(report["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError):
        detail = error or result.stderr.strip() or result.stdout.strip()[-300:]
        raise DemoError(f"iperf3 failed (status {result.returncode}): {detail}") from None
    return rate


def _python_throughput(
    runner: _Runner, namespaces: dict[str, int], b: _Peer, seconds: float
) -> float:
    """The small TCP test of :func:`helper_main`, from A to B; the bits per second B received.

    Raises:
        DemoError: a helper failed.
    """
    address = str(b.inner.ip)
    helper = [sys.executable, "-m", "minivpn.demo"]
    sink = runner.start(
        namespaces["B"], "tcp-sink", [*helper, "--tcp-sink", address, str(THROUGHPUT_PORT)]
    )
    _wait_for_listener(runner, sink, THROUGHPUT_PORT)
    source = [*helper, "--tcp-source", address, str(THROUGHPUT_PORT), f"{seconds:g}"]
    result = runner.run(namespaces["A"], source, timeout=seconds + 30.0)
    if result.returncode != 0:
        raise DemoError(f"the TCP test's sender failed: {result.stderr.strip()[-300:]}")
    try:
        sink.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        raise DemoError("the TCP test's receiver did not finish") from None
    match = re.search(r"received (\d+) bytes in ([0-9.]+) s", runner.output(sink))
    if sink.returncode != 0 or match is None or float(match.group(2)) <= 0:
        raise DemoError(f"the TCP test's receiver failed: {runner.output(sink)[-300:]}")
    return int(match.group(1)) * 8 / float(match.group(2))


# --- processes ------------------------------------------------------------------------------------


class _Runner:
    """Starts processes inside the demo's namespaces, logs their output to files, stops them.

    Output goes to files in the private directory rather than pipes: a chatty process never
    blocks on a full pipe, and what it printed can be read at any moment.
    """

    def __init__(self, workdir: Path, env: dict[str, str], teardown: _Teardown) -> None:
        self.workdir = workdir
        self.env = env
        self.teardown = teardown
        self._logs: dict[int, Path] = {}
        self._by_tag: dict[str, Path] = {}

    def start(self, namespace: int, tag: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start *command* inside *namespace* (an open namespace file); it is stopped at teardown.

        It runs in a session of its own, so Ctrl-C on the terminal reaches only the demo, which
        then stops it by PID.

        Raises:
            DemoError: it could not be started.
        """
        log = self.workdir / f"{tag}.log"
        with open(log, "wb") as output:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                    # The demo has no threads, so running Python between fork and exec is safe.
                    preexec_fn=_entering(namespace),  # noqa: PLW1509
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise DemoError(f"cannot start {command[0]}: {exc}") from None
        self.teardown.add_process(process)
        self._logs[process.pid] = log
        self._by_tag[tag] = log
        return process

    def run(
        self, namespace: int, command: Sequence[str], *, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run *command* inside *namespace* and wait for it (killed after *timeout* seconds).

        Raises:
            DemoError: it could not be started or did not finish in time.
        """
        try:
            return subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
                check=False,
                start_new_session=True,
                preexec_fn=_entering(namespace),
            )
        except subprocess.TimeoutExpired:
            raise DemoError(f"{command[0]} did not finish within {timeout:g} s") from None
        except (OSError, subprocess.SubprocessError) as exc:
            raise DemoError(f"cannot run {command[0]}: {exc}") from None

    def log_of(self, process: subprocess.Popen[bytes]) -> Path:
        return self._logs[process.pid]

    def output(self, process: subprocess.Popen[bytes]) -> str:
        """What *process* printed so far."""
        return self._logs[process.pid].read_text(errors="replace")

    def tail(self, tag: str) -> str:
        """The last lines printed by the process started as *tag*."""
        return _tail(self._by_tag[tag]) if tag in self._by_tag else ""


def _entering(namespace: int) -> Callable[[], None]:
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


def _wait_for_output(
    runner: _Runner, process: subprocess.Popen[bytes], text: str, *, what: str
) -> None:
    """Wait until *process* has printed *text* (bounded: 10 s).

    Raises:
        DemoError: it exited first, or took too long.
    """
    deadline = time.monotonic() + 10.0
    while text not in runner.output(process):
        if process.poll() is not None:
            raise DemoError(
                f"{what} exited with status {process.returncode}:\n{runner.output(process)[-500:]}"
            )
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not start within 10 s")
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop *process* by PID: SIGTERM, up to STOP_GRACE seconds, then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_GRACE)


def _tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(f"   | {line}" for line in text.splitlines()[-lines:])


# --- teardown -------------------------------------------------------------------------------------


class _Teardown:
    """What to undo, in reverse order of making: run always, also on error and Ctrl-C."""

    def __init__(self) -> None:
        self._owner = os.getpid()
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    def add(self, description: str, undo: Callable[[], None]) -> None:
        """Register *undo*; *description* (if any) is printed when it has worked."""
        self._steps.append((description, undo))

    def add_process(self, process: subprocess.Popen[bytes]) -> None:
        """Register a process to stop by PID; processes are stopped before anything else."""
        self._processes.append(process)

    def run(self, say: Callable[[str], None]) -> None:
        """Undo everything, reporting what was done and what failed.

        SIGINT, SIGTERM and SIGHUP are held during the teardown: a Ctrl-C must not leave
        namespaces behind.  They are delivered when the teardown has finished.
        """
        if os.getpid() != self._owner or not (self._steps or self._processes):
            return  # nothing to do, or a fork of the demo (see _stop_signals_interrupt)
        held = set(_STOP_SIGNALS)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            done, failed = self._undo()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        say("\n8. Teardown (it also runs after a failure or Ctrl-C)")
        for item in done:
            say(f"   {item}")
        for problem in failed:
            say(f"   could not undo: {problem}")

    def _undo(self) -> tuple[list[str], list[str]]:
        done: list[str] = []
        failed: list[str] = []
        stopped = 0
        for process in reversed(self._processes):
            try:
                _stop(process)
                stopped += 1
            except (OSError, subprocess.SubprocessError) as exc:
                failed.append(f"stop PID {process.pid}: {exc}")
        if stopped:
            done.append(f"stopped {stopped} processes by PID")
        self._processes.clear()
        for description, undo in reversed(self._steps):
            try:
                undo()
            except Exception as exc:  # report it and go on: undo everything else
                failed.append(f"{description or 'a step'}: {exc}")
            else:
                if description:
                    done.append(description)
        self._steps.clear()
        return done, failed


# --- helpers that run inside a namespace ----------------------------------------------------------


def helper_main(argv: Sequence[str] | None = None) -> int:
    """``python -m minivpn.demo --capture|--tcp-sink|--tcp-source ...``: the demo's helpers.

    Internal: the demo starts them inside its namespaces.

    * ``--capture IFNAME COUNT``: print "ready", then one line per packet crossing IFNAME (an
      ``AF_PACKET`` socket, ``SOCK_DGRAM``: no link header, and a TUN device has none) until
      COUNT packets or 20 s, decoded by :func:`minivpn.framing.summary.summarize`.
    * ``--tcp-sink ADDRESS PORT``: accept one TCP connection, read it to the end, print
      "received N bytes in S s".
    * ``--tcp-source ADDRESS PORT SECONDS``: connect and send as fast as possible for SECONDS.
    """
    parser = argparse.ArgumentParser(prog="python -m minivpn.demo", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--capture", nargs=2, metavar=("IFNAME", "COUNT"))
    group.add_argument("--tcp-sink", nargs=2, metavar=("ADDRESS", "PORT"))
    group.add_argument("--tcp-source", nargs=3, metavar=("ADDRESS", "PORT", "SECONDS"))
    args = parser.parse_args(argv)
    try:
        if args.capture:
            return _capture(args.capture[0], int(args.capture[1]), timeout=20.0)
        if args.tcp_sink:
            return _tcp_sink(args.tcp_sink[0], int(args.tcp_sink[1]), timeout=60.0)
        address, port, seconds = args.tcp_source
        return _tcp_source(address, int(port), float(seconds))
    except OSError as exc:
        print(f"minivpn.demo: {exc}", file=sys.stderr)
        return 1


def _capture(ifname: str, count: int, *, timeout: float) -> int:
    from minivpn.framing.decode import Link
    from minivpn.framing.summary import summarize

    # Protocol 0 receives nothing until bind() names the device and ETH_P_ALL: so not a single
    # packet from another device gets in between.
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0) as sock:
        sock.bind((ifname, _ETH_P_ALL))  # Python converts the protocol to network order here
        print("ready", flush=True)
        deadline = time.monotonic() + timeout
        buffer = bytearray(65536)
        for _ in range(count):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                size, address = sock.recvfrom_into(buffer)
            except TimeoutError:
                break
            direction = "out" if address[2] == _PACKET_OUTGOING else "in"
            print(f"{direction:<4}{summarize(memoryview(buffer)[:size], Link.IP)}", flush=True)
    return 0


def _tcp_sink(address: str, port: int, *, timeout: float) -> int:
    with socket.create_server((address, port)) as server:
        server.settimeout(timeout)
        connection, _ = server.accept()
    with connection:
        connection.settimeout(timeout)
        buffer = bytearray(256 * 1024)
        total = 0
        started = 0.0
        while size := connection.recv_into(buffer):
            if not total:
                started = time.monotonic()
            total += size
        elapsed = time.monotonic() - started if total else 0.0
    print(f"received {total} bytes in {elapsed:.6f} s", flush=True)
    return 0


def _tcp_source(address: str, port: int, seconds: float) -> int:
    chunk = bytes(128 * 1024)
    with socket.create_connection((address, port), timeout=10.0) as connection:
        deadline = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < deadline:
            connection.sendall(chunk)
            sent += len(chunk)
        connection.shutdown(socket.SHUT_WR)
    print(f"sent {sent} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(helper_main())
