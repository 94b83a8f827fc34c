"""The UAPI server (minivpn.runtime.uapi_server) driven by the real ``wg`` and by raw clients.

The server runs in the test's trio loop with :class:`MemoryDevice` as its handler: a device
reduced to the configuration ``wg`` can set and read, kept in plain dicts, applying each
:class:`~minivpn.wireguard.uapi.SetRequest` as its documentation says.  ``wg`` runs as a
subprocess, so both ends of every exchange are real.  What ``wg`` shows is compared with what
the test *asked for*, never with the device's own account of itself.

Run inside ``netns/isolate``: ``wg`` only looks in /var/run/wireguard, which is private there.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import shutil
import socket
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
import trio

from minivpn.runtime.uapi_client import UapiClientError, get_device, set_device
from minivpn.runtime.uapi_server import (
    ERRNO_UNKNOWN,
    SOCKET_DIR,
    UapiServerError,
    UapiSocket,
    default_socket_dir,
    prepare_socket,
    serve_uapi,
    socket_path,
    watch_socket_path,
)
from minivpn.tuntap.errors import InvalidDeviceName
from minivpn.wireguard.config import Endpoint, parse_config
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from minivpn.wireguard.uapi import (
    EADDRINUSE,
    SET_SLICE_LINES,
    DeviceSet,
    DeviceSnapshot,
    PeerSet,
    PeerSnapshot,
    SetRequest,
    format_allowed_ip,
    format_endpoint,
)

if TYPE_CHECKING:
    import subprocess
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- a device made of dicts -----------------------------------------------------------------------


@attrs.define
class MemoryPeer:
    preshared_key: PresharedKey | None = None
    endpoint: str | None = None
    keepalive: int = 0
    allowed_ips: list[IPNetwork] = attrs.field(factory=list)


class MemoryDevice:
    """A UapiHandler keeping the configuration in memory, applied as PeerSet documents it."""

    def __init__(self) -> None:
        self.private_key: PrivateKey | None = None
        self.listen_port = 0
        self.fwmark = 0
        self.peers: dict[PublicKey, MemoryPeer] = {}
        #: listen_port values whose "bind" fails with EADDRINUSE.
        self.busy_ports: set[int] = set()
        #: When set, apply() raises it: a bug in the device.
        self.bug: Exception | None = None
        self.requests: list[SetRequest] = []

    def apply(self, request: SetRequest) -> int:
        self.requests.append(request)
        if self.bug is not None:
            raise self.bug
        device = request.device
        if device.private_key is not None:
            self.private_key = None if device.private_key.is_zero() else device.private_key
        if device.listen_port is not None:
            if device.listen_port in self.busy_ports:
                return EADDRINUSE
            self.listen_port = device.listen_port
        if device.fwmark is not None:
            self.fwmark = device.fwmark
        if device.replace_peers:
            self.peers.clear()
        own = self.private_key.public_key() if self.private_key is not None else None
        for part in request.peers:
            if part.public_key == own:
                continue
            if part.remove:
                self.peers.pop(part.public_key, None)
                continue
            peer = self.peers.get(part.public_key)
            if peer is None:
                if part.update_only:
                    continue
                peer = self.peers[part.public_key] = MemoryPeer()
            if part.replace_allowed_ips:
                peer.allowed_ips.clear()
            if part.preshared_key is not None:
                peer.preshared_key = None if part.preshared_key.is_zero() else part.preshared_key
            if part.endpoint is not None:
                peer.endpoint = format_endpoint(*part.endpoint)
            if part.persistent_keepalive_interval is not None:
                peer.keepalive = part.persistent_keepalive_interval
            for change in part.allowed_ips:
                if change.remove:
                    if change.network in peer.allowed_ips:
                        peer.allowed_ips.remove(change.network)
                    continue
                for other in self.peers.values():  # a prefix belongs to one peer at a time
                    if change.network in other.allowed_ips:
                        other.allowed_ips.remove(change.network)
                peer.allowed_ips.append(change.network)
        return 0

    def snapshot(self) -> DeviceSnapshot:
        return DeviceSnapshot(
            private_key=self.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            peers=[
                PeerSnapshot(
                    key,
                    preshared_key=peer.preshared_key,
                    endpoint=peer.endpoint,
                    persistent_keepalive_interval=peer.keepalive,
                    allowed_ips=[format_allowed_ip(n) for n in peer.allowed_ips],
                )
                for key, peer in self.peers.items()
            ],
        )


# --- helpers --------------------------------------------------------------------------------------

_counter = iter(range(10_000))


@pytest.fixture
def name() -> str:
    """A fresh interface name for each test (sockets of other tests may linger in the dir)."""
    return f"mvu{os.getpid() % 1000}x{next(_counter)}"


@contextlib.asynccontextmanager
async def serving(
    device: MemoryDevice, name: str, directory: Path | None = None, **bounds: float
) -> AsyncIterator[UapiSocket]:
    """Serve *device* as interface *name* for the duration of the block (*bounds*: see
    :func:`serve_uapi`)."""
    with prepare_socket(name, directory) as uapi:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve_uapi, uapi.listener, device, **bounds))
            try:
                yield uapi
            finally:
                nursery.cancel_scope.cancel()


async def wg(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            ["wg", *args], capture_stdout=True, capture_stderr=True, check=check
        )


async def wg_out(*args: str) -> str:
    return (await wg(*args)).stdout.decode()


def secret_file(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


async def connect(path: Path) -> trio.SocketStream:
    return await trio.open_unix_socket(os.fspath(path))


async def read_answer(stream: trio.SocketStream) -> bytes:
    """Read up to the blank line that ends an answer, or to EOF (then what came)."""
    answer = b""
    with trio.fail_after(10):
        while b"\n\n" not in answer:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            answer += chunk
    return answer


async def exchange(path: Path, request: bytes) -> bytes:
    async with await connect(path) as stream:
        await stream.send_all(request)
        return await read_answer(stream)


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes.

    A server that closes with bytes of ours still unread makes the kernel report ECONNRESET
    after the last byte it did send: that counts as the end too.
    """
    data = b""
    with trio.fail_after(10):
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError:
            pass
    return data


# --- wg against the server ------------------------------------------------------------------------


async def test_wg_set_show_and_showconf(name: str, tmp_path: Path) -> None:
    private = PrivateKey.generate()
    peer1, peer2 = (PrivateKey.generate().public_key() for _ in range(2))
    psk = PresharedKey.generate()
    device = MemoryDevice()
    async with serving(device, name) as uapi:
        assert uapi.path == SOCKET_DIR / f"{name}.sock"
        assert name in (await wg_out("show", "interfaces")).split()
        await wg(
            "set", name,
            "private-key", secret_file(tmp_path, "private", private.to_base64()),
            "listen-port", "51820",
            "fwmark", "0x42",
            "peer", peer1.to_base64(),
            "preshared-key", secret_file(tmp_path, "psk", psk.to_base64()),
            "endpoint", "198.51.100.2:51821",
            "allowed-ips", "10.0.0.0/24,fd00::/64",
            "persistent-keepalive", "25",
            "peer", peer2.to_base64(),
            "endpoint", "[fd00:5100::2]:7",
            "allowed-ips", "10.1.0.0/16",
        )  # fmt: skip

        config = parse_config(await wg_out("showconf", name), "showconf")
        assert config.interface.private_key == private
        assert (config.interface.listen_port, config.interface.fwmark) == (51820, 0x42)
        peers = {peer.public_key: peer for peer in config.peers}
        assert set(peers) == {peer1, peer2}
        assert peers[peer1].preshared_key == psk
        assert peers[peer1].endpoint == Endpoint("198.51.100.2", 51821)
        assert peers[peer1].persistent_keepalive == 25
        assert set(peers[peer1].allowed_ips) == {
            ipaddress.ip_network("10.0.0.0/24"),
            ipaddress.ip_network("fd00::/64"),
        }
        assert peers[peer2].preshared_key is None
        assert peers[peer2].endpoint == Endpoint("fd00:5100::2", 7)
        assert peers[peer2].allowed_ips == (ipaddress.ip_network("10.1.0.0/16"),)

        shown = await wg_out("show", name)
        assert f"public key: {private.public_key().to_base64()}" in shown
        assert "listening port: 51820" in shown
        assert "fwmark: 0x42" in shown
        assert f"peer: {peer1.to_base64()}" in shown

        # A prefix moves to the peer that claims it last; removing a peer removes it.
        await wg("set", name, "peer", peer2.to_base64(), "allowed-ips", "10.1.0.0/16,10.0.0.0/24")
        await wg("set", name, "peer", peer1.to_base64(), "remove")
        allowed = await wg_out("show", name, "allowed-ips")
        assert allowed.split() == [peer2.to_base64(), "10.1.0.0/16", "10.0.0.0/24"]

        # An all-zero private key clears it (wg reads /dev/null as that).
        await wg("set", name, "private-key", "/dev/null")
        assert (await wg_out("show", name, "private-key")).strip() == "(none)"
    assert not uapi.path.exists()
    assert name not in (await wg_out("show", "interfaces")).split()


async def test_wg_setconf_replaces_everything(name: str, tmp_path: Path) -> None:
    old_peer, new_peer = (PrivateKey.generate().public_key() for _ in range(2))
    private = PrivateKey.generate()
    conf = tmp_path / "new.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {private.to_base64()}\nListenPort = 1234\n\n"
        f"[Peer]\nPublicKey = {new_peer.to_base64()}\nAllowedIPs = 10.5.0.0/16\n"
    )
    conf.chmod(0o600)
    device = MemoryDevice()
    async with serving(device, name):
        await wg("set", name, "fwmark", "7", "peer", old_peer.to_base64())
        await wg("setconf", name, str(conf))
        dump = (await wg_out("show", name, "dump")).splitlines()
    assert dump[0].split("\t") == [
        private.to_base64(),
        private.public_key().to_base64(),
        "1234",
        "off",  # setconf sends fwmark=0 when the file has none
    ]
    assert [line.split("\t")[0] for line in dump[1:]] == [new_peer.to_base64()]
    assert dump[1].split("\t")[3] == "10.5.0.0/16"


async def test_an_apply_error_reaches_wg(name: str) -> None:
    device = MemoryDevice()
    device.busy_ports = {51822}
    async with serving(device, name):
        result = await wg("set", name, "listen-port", "51822", check=False)
        assert result.returncode != 0
        assert "Address already in use" in result.stderr.decode()
        # The server is still there and still right.
        await wg("set", name, "listen-port", "51823")
        assert (await wg_out("show", name, "listen-port")).strip() == "51823"


async def test_a_set_that_breaks_off_applies_what_came_before(name: str) -> None:
    key = PrivateKey.generate().public_key()
    device = MemoryDevice()
    async with serving(device, name) as uapi, await connect(uapi.path) as stream:
        await stream.send_all(
            f"set=1\nfwmark=9\npublic_key={key.to_hex()}\nendpoint=nonsense\n"
            "allowed_ip=10.0.0.0/8\n\n".encode()
        )
        assert await read_answer(stream) == b"errno=-22\n\n"
        # The same connection goes on; the lines before the bad one are applied.
        await stream.send_all(b"get=1\n\n")
        answer = await read_answer(stream)
    assert b"fwmark=9\n" in answer
    assert f"public_key={key.to_hex()}\n".encode() in answer
    assert b"allowed_ip" not in answer
    assert device.fwmark == 9


async def test_a_handler_bug_answers_unknown_and_the_server_goes_on(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    device = MemoryDevice()
    device.bug = RuntimeError("a bug in the device")
    async with serving(device, name) as uapi:
        assert await exchange(uapi.path, b"set=1\nfwmark=1\n\n") == (
            f"errno={ERRNO_UNKNOWN}\n\n".encode()
        )
        device.bug = None
        assert await exchange(uapi.path, b"set=1\nfwmark=1\n\n") == b"errno=0\n\n"
        assert (await wg_out("show", name, "fwmark")).strip() == "0x1"
    assert "a bug in the device" in caplog.text


async def test_the_python_client_against_the_server(name: str) -> None:
    peer = PrivateKey.generate().public_key()
    device = MemoryDevice()
    device.busy_ports = {9}
    async with serving(device, name):
        await trio.to_thread.run_sync(
            lambda: set_device(name, DeviceSet(fwmark=3), [PeerSet(peer)])
        )
        snapshot = await trio.to_thread.run_sync(get_device, name)
        assert snapshot.fwmark == 3
        assert [p.public_key for p in snapshot.peers] == [peer]
        with pytest.raises(UapiClientError, match=r"errno=-98 \(Address already in use\)"):
            await trio.to_thread.run_sync(lambda: set_device(name, DeviceSet(listen_port=9)))


# --- many clients, bad clients --------------------------------------------------------------------


async def test_concurrent_clients(name: str) -> None:
    keys = [PrivateKey.generate().public_key() for _ in range(16)]
    device = MemoryDevice()
    async with serving(device, name):
        async with trio.open_nursery() as nursery:
            for index, key in enumerate(keys):
                nursery.start_soon(
                    wg, "set", name, "peer", key.to_base64(), "allowed-ips", f"10.7.{index}.0/24"
                )
                nursery.start_soon(wg, "show", name, "dump")
        allowed = (await wg_out("show", name, "allowed-ips")).splitlines()
    assert sorted(allowed) == sorted(
        f"{key.to_base64()}\t10.7.{index}.0/24" for index, key in enumerate(keys)
    )


async def test_misbehaving_clients_do_not_disturb_others(name: str) -> None:
    device = MemoryDevice()
    async with serving(device, name) as uapi:
        # A well-behaved client is in the middle of a set...
        patient = await connect(uapi.path)
        await patient.send_all(b"set=1\nfwmark=5\n")

        # ...while others misbehave, each in its own way.
        idle = await connect(uapi.path)  # connects and says nothing
        async with await connect(uapi.path) as garbage:
            await garbage.send_all(b"\x00\xff hello\n")
            assert await read_to_eof(garbage) == b""  # closed, no answer
        async with await connect(uapi.path) as endless:
            await endless.send_all(b"get=1" + b"x" * 100)  # an operation line that never ends
            assert await read_to_eof(endless) == b""
        async with await connect(uapi.path) as flood:
            await flood.send_all(b"set=1\nfwmark=" + b"7" * (70 * 1024))  # a line over 64 KiB
            assert await read_to_eof(flood) == b"errno=-5\n\n"
        rude = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        rude.connect(os.fspath(uapi.path))
        rude.sendall(b"get=1\n\n")
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()  # gone before reading its answer

        # wg is served meanwhile, and the patient client finishes its set.
        assert "interface: " + name in await wg_out("show", name)
        await patient.send_all(b"\n")
        assert await read_answer(patient) == b"errno=0\n\n"
        assert (await wg_out("show", name, "fwmark")).strip() == "0x5"
        await patient.aclose()
        await idle.aclose()


# --- bounds ---------------------------------------------------------------------------------------


async def test_a_long_set_is_applied_in_slices_and_other_tasks_run_between_them(
    name: str,
) -> None:
    """A ``set`` of 5000 prefixes reaches the device in slices; another task runs in between."""
    log: list[str] = []

    class LoggingDevice(MemoryDevice):
        def apply(self, request: SetRequest) -> int:
            log.append("apply")
            return super().apply(request)

    async def ticking() -> None:
        while True:
            if log and log[-1] != "tick":
                log.append("tick")
            await trio.lowlevel.checkpoint()

    device = LoggingDevice()
    key = PrivateKey.generate().public_key()
    lines = [f"public_key={key.to_hex()}"]
    lines += [f"allowed_ip=10.3.{n >> 8}.{n & 255}/32" for n in range(5000)]
    async with serving(device, name) as uapi, trio.open_nursery() as nursery:
        nursery.start_soon(ticking)
        answer = await exchange(uapi.path, ("set=1\n" + "\n".join(lines) + "\n\n").encode())
        nursery.cancel_scope.cancel()
    assert answer == b"errno=0\n\n"
    assert [r.more for r in device.requests] == [True] * 4 + [False]
    assert log[: 2 * 5 - 1] == ["apply", "tick"] * 4 + ["apply"]
    assert len(device.peers[key].allowed_ips) == 5000


async def test_a_slice_that_fails_ends_the_set_with_its_errno(name: str) -> None:
    device = MemoryDevice()
    device.busy_ports.add(9999)
    key = PrivateKey.generate().public_key()
    lines = ["listen_port=9999", f"public_key={key.to_hex()}"]
    lines += [f"allowed_ip=10.4.{n >> 8}.{n & 255}/32" for n in range(3 * SET_SLICE_LINES)]
    async with serving(device, name) as uapi:
        answer = await exchange(uapi.path, ("set=1\n" + "\n".join(lines) + "\n\n").encode())
        assert answer == f"errno={EADDRINUSE}\n\n".encode()
        # Only the failing slice was offered; the others were skipped; the connection goes on.
        assert len(device.requests) == 1
        assert "interface: " + name in await wg_out("show", name)


async def test_an_idle_connection_is_closed(name: str) -> None:
    async with serving(MemoryDevice(), name, idle_timeout=0.5) as uapi:
        async with await connect(uapi.path) as silent:
            assert await read_to_eof(silent) == b""  # closed by the server, not by the test
        async with await connect(uapi.path) as half:
            await half.send_all(b"set=1\nfwmark=1\n")  # and then nothing
            assert await read_to_eof(half) == b""


async def test_a_connection_that_does_not_read_its_answers_is_closed(name: str) -> None:
    device = MemoryDevice()
    for n in range(200):
        device.peers[PrivateKey.generate().public_key()] = MemoryPeer(endpoint=f"192.0.2.{n}:1")
    async with serving(device, name, idle_timeout=0.5) as uapi:
        greedy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.connect(os.fspath(uapi.path))
        greedy.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            for _ in range(1000):
                greedy.send(b"get=1\n\n")  # about 40 KB of answer each, never read
        await trio.sleep(1.5)
        assert "interface: " + name in await wg_out("show", name)  # the server goes on
        greedy.setblocking(True)
        greedy.settimeout(5)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := greedy.recv(1 << 20):
                received += chunk
        greedy.close()
        assert 0 < len(received) < 1000 * 40_000  # it got some answers, then was closed


async def test_the_connection_cap_closes_the_idlest_and_wg_is_answered(name: str) -> None:
    async with serving(MemoryDevice(), name, max_connections=8) as uapi:
        idle = [await connect(uapi.path) for _ in range(8)]
        await trio.sleep(0.1)
        # A ninth connection (wg's) closes the one idle the longest: the first.
        assert "interface: " + name in await wg_out("show", name)
        assert await read_to_eof(idle[0]) == b""
        more = [await connect(uapi.path) for _ in range(20)]
        assert "interface: " + name in await wg_out("show", name)
        # The cap holds: of all these idle connections, at most 8 are still open.
        still_open = 0
        for stream in idle[1:] + more:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(b"get=1\n\n")
                if (await read_answer(stream)).endswith(b"errno=0\n\n"):
                    still_open += 1
        assert 1 <= still_open <= 8
        for stream in idle + more:
            await stream.aclose()


# --- the socket file ------------------------------------------------------------------------------


def test_modes_of_a_new_directory_and_socket(tmp_path: Path, name: str) -> None:
    directory = tmp_path / "run" / "wireguard"
    old_umask = os.umask(0)  # the most permissive umask must not leak into the modes
    try:
        with prepare_socket(name, directory) as uapi:
            assert os.umask(0) == 0  # the umask is given back after the bind
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
            info = uapi.path.lstat()
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o600
    finally:
        os.umask(old_umask)
    assert not uapi.path.exists()


def test_an_existing_directory_is_left_as_it_is(tmp_path: Path, name: str) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o755)
    with prepare_socket(name, directory):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755


def test_a_stale_socket_is_replaced(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(os.fspath(path))  # a daemon that died without removing its socket
    assert stat.S_ISSOCK(path.lstat().st_mode)
    with prepare_socket(name, tmp_path) as uapi, socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(os.fspath(path))  # refused before; now someone listens
        conn, _ = uapi.listener.accept()
        conn.close()


def test_a_second_server_for_the_same_interface_is_refused(tmp_path: Path, name: str) -> None:
    with prepare_socket(name, tmp_path) as first:
        before = first.path.lstat()
        with pytest.raises(UapiServerError) as caught:
            prepare_socket(name, tmp_path)
        assert str(caught.value) == (
            f"interface {name} is already running (socket {tmp_path / name}.sock in use)"
        )
        after = first.path.lstat()
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(os.fspath(first.path))
            first.listener.accept()[0].close()


def test_a_path_that_is_not_a_socket_is_left_alone(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.sock"
    path.write_text("not a socket")
    with pytest.raises(UapiServerError, match="exists and is not a socket"):
        prepare_socket(name, tmp_path)
    assert path.read_text() == "not a socket"


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 16, "..", "has space", "colon:0"])
def test_invalid_interface_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidDeviceName):
        prepare_socket(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_socket_path_too_long(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(UapiServerError, match="too long"):
        prepare_socket("wg0", deep)
    assert not deep.exists()


def test_the_directory_from_the_environment(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIVPN_SOCKET_DIR", str(tmp_path))
    assert default_socket_dir() == tmp_path
    assert socket_path(name) == tmp_path / f"{name}.sock"
    with prepare_socket(name) as uapi:
        assert uapi.path == tmp_path / f"{name}.sock"
    monkeypatch.delenv("MINIVPN_SOCKET_DIR")
    assert default_socket_dir() == Path("/var/run/wireguard")


def test_close_unlinks_only_its_own_file(tmp_path: Path, name: str) -> None:
    uapi = prepare_socket(name, tmp_path)
    uapi.path.unlink()  # someone removed ours and started another daemon
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(os.fspath(uapi.path))
        uapi.close()
        assert stat.S_ISSOCK(uapi.path.lstat().st_mode)  # the other daemon's file stays
    uapi.close()  # twice is harmless


async def test_watch_returns_when_the_socket_is_removed(tmp_path: Path, name: str) -> None:
    with prepare_socket(name, tmp_path) as uapi:
        with trio.move_on_after(0.3) as unchanged:
            await watch_socket_path(uapi.path, interval=0.01, file_id=uapi.file_id)
        assert unchanged.cancelled_caught  # still there: the watch goes on
        uapi.path.unlink()
        with trio.fail_after(10):
            await watch_socket_path(uapi.path, interval=0.01, file_id=uapi.file_id)


async def test_watch_returns_when_the_socket_is_replaced(tmp_path: Path, name: str) -> None:
    with prepare_socket(name, tmp_path) as uapi:
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def watch() -> None:
                await watch_socket_path(uapi.path, interval=0.01)
                done.set()

            nursery.start_soon(watch)
            await trio.sleep(0.05)
            assert not done.is_set()
            uapi.path.unlink()
            with socket.socket(socket.AF_UNIX) as replacement:
                replacement.bind(os.fspath(uapi.path))
                with trio.fail_after(10):
                    await done.wait()
            uapi.path.unlink()


async def test_removing_the_socket_stops_a_server(name: str) -> None:
    """The daemon pattern: serve until the socket file is deleted (``rm`` stops wireguard-go)."""
    device = MemoryDevice()
    with prepare_socket(name) as uapi:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_uapi, uapi.listener, device)

            async def remove_it() -> None:
                await wg("set", name, "fwmark", "1")
                uapi.path.unlink()

            nursery.start_soon(remove_it)
            with trio.fail_after(10):
                await watch_socket_path(uapi.path, interval=0.01, file_id=uapi.file_id)
            nursery.cancel_scope.cancel()
    assert device.fwmark == 1
    assert name not in (await wg_out("show", "interfaces")).split()
