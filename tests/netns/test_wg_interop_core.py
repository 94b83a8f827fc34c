"""The WireGuard core against a real wireguard-go, over loopback in the isolated namespace.

Each test starts a ``wireguard-go`` (configured with ``wg set`` and ``ip``, stopped by PID at the
end) and drives a :class:`WireGuardCore` with a small synchronous UDP loop: wait on the socket
until ``next_deadline()``, feed datagrams to ``decapsulate`` and packets to ``encapsulate``,
run ``handle_timer``, send what the core asks.  The kernel is on the other side of
wireguard-go: it answers our pings, and its ``ping`` is answered by us through the core.

Checked: a handshake initiated by each side, ICMP echo both ways through the tunnel, keepalives
both ways, and the cookie path (we are under load: wireguard-go gets a cookie reply and retries
with a valid mac2 about 5 s later).
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from typing import TYPE_CHECKING

import attrs
import pytest
from tests.helpers.wg import SOCKET_DIR

from minivpn.framing.decode import Link
from minivpn.framing.responder import answer_untrusted, internet_checksum
from minivpn.wireguard.core import WireGuardCore
from minivpn.wireguard.events import (
    Action,
    DropReason,
    HandshakeCompleted,
    SendDatagram,
)
from minivpn.wireguard.keys import PrivateKey, PublicKey
from minivpn.wireguard.results import WriteToNetwork, WriteToTunnel
from minivpn.wireguard.uapi import PeerSet, SetRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        shutil.which("wireguard-go") is None or shutil.which("wg") is None,
        reason="needs wireguard-go and wg",
    ),
]

GO_PORT = 51820
GO_ADDRESS = "10.77.0.1"
CORE_ADDRESS = "10.77.0.2"
_names = itertools.count()


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


def icmp_echo_request(source: str, destination: str, ident: int, sequence: int) -> bytes:
    """An IPv4 ICMP echo request, built here rather than by the code under test."""
    payload = b"minivpn interop " * 3
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, ident, sequence) + payload)
    struct.pack_into("!H", icmp, 2, internet_checksum(icmp))
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0x4000, 64, 1, 0,
            socket.inet_aton(source), socket.inet_aton(destination),
        )
    )  # fmt: skip
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header + icmp)


def is_echo_reply(packet: bytes, ident: int, sequence: int) -> bool:
    if len(packet) < 28 or packet[9] != 1:
        return False
    icmp_type, _, _, got_ident, got_sequence = struct.unpack_from("!BBHHH", packet, 20)
    return icmp_type == 0 and (got_ident, got_sequence) == (ident, sequence)


@attrs.define(eq=False)
class WireGuardGo:
    """A running wireguard-go and the ``wg``/``ip`` commands that configure it."""

    name: str
    key: PrivateKey
    directory: Path

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def set_peer(self, peer: PublicKey, allowed: str, endpoint: str, keepalive: int = 0) -> None:
        args = ["wg", "set", self.name, "peer", peer.to_base64(), "allowed-ips", allowed]
        args += ["endpoint", endpoint]
        if keepalive:
            args += ["persistent-keepalive", str(keepalive)]
        run(*args)

    def peer_value(self, what: str, peer: PublicKey) -> list[str]:
        """One line of ``wg show <if> <what>`` for ``peer``, split (e.g. transfer: rx, tx)."""
        for line in run("wg", "show", self.name, what).splitlines():
            fields = line.split()
            if fields and fields[0] == peer.to_base64():
                return fields[1:]
        raise AssertionError(f"{peer} not in wg show {what}")


@pytest.fixture
def wireguard_go(tmp_path: Path) -> Iterator[WireGuardGo]:
    name = f"wgcore{next(_names)}"
    key = PrivateKey.generate()
    key_path = tmp_path / "private.key"
    key_path.write_text(key.to_base64() + "\n")
    key_path.chmod(0o600)
    env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "verbose"}
    log = tmp_path / "wireguard-go.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            ["wireguard-go", name], env=env, stdout=log_file, stderr=log_file
        )
    try:
        socket_path = SOCKET_DIR / f"{name}.sock"
        for _ in range(500):
            if socket_path.exists() or process.poll() is not None:
                break
            time.sleep(0.01)
        assert process.poll() is None, log.read_text()
        run("wg", "set", name, "private-key", str(key_path), "listen-port", str(GO_PORT))
        run("ip", "addr", "add", f"{GO_ADDRESS}/24", "dev", name)
        run("ip", "link", "set", name, "up")
        yield WireGuardGo(name, key, tmp_path)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


@attrs.define(eq=False)
class CoreLoop:
    """A WireGuardCore on a UDP socket on 127.0.0.1, driven synchronously with select()."""

    core: WireGuardCore
    sock: socket.socket
    delivered: list[bytes] = attrs.field(factory=list)
    events: list[Action] = attrs.field(factory=list)
    #: Called with each delivered packet; may return a packet to send back (a ping answer).
    responder: Callable[[bytes], bytes | None] | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def handle(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, SendDatagram):
                self.sock.sendto(action.data, action.endpoint)
            else:
                self.events.append(action)

    def send(self, packet: bytes) -> None:
        out = memoryview(bytearray(65535))
        result = self.core.encapsulate(packet, out, time.monotonic())
        if isinstance(result, WriteToNetwork):
            self.sock.sendto(out[: result.size], result.endpoint)
        self.handle(self.core.take_actions())

    def receive(self, datagram: bytes, source: tuple[str, int]) -> None:
        out = memoryview(bytearray(65535))
        result = self.core.decapsulate(source, datagram, out, time.monotonic())
        if isinstance(result, WriteToNetwork):
            self.sock.sendto(out[: result.size], result.endpoint)
        elif isinstance(result, WriteToTunnel):
            packet = bytes(out[: result.size])
            self.delivered.append(packet)
            if self.responder is not None:
                answer = self.responder(packet)
                if answer is not None:
                    self.send(answer)
        self.handle(self.core.take_actions())

    def pump(self, until: Callable[[], bool], timeout: float) -> None:
        """Run the loop until ``until()`` holds; fail after ``timeout`` seconds."""
        give_up = time.monotonic() + timeout
        while not until():
            now = time.monotonic()
            assert now < give_up, f"timed out; events: {self.events}; drops: {self.drops()}"
            wake = self.core.next_deadline()
            wait = min(give_up, wake if wake is not None else give_up) - now
            readable, _, _ = select.select([self.sock], [], [], max(0.0, min(wait, 0.1)))
            if readable:
                data, addr = self.sock.recvfrom(65535)
                self.receive(data, addr[:2])
            self.handle(self.core.handle_timer(time.monotonic()))

    def drops(self) -> dict[str, int]:
        return {reason.value: n for reason, n in self.core.drops.items() if n}

    def completed(self) -> list[HandshakeCompleted]:
        return [e for e in self.events if isinstance(e, HandshakeCompleted)]


@pytest.fixture
def core_loop() -> Iterator[CoreLoop]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield CoreLoop(WireGuardCore(PrivateKey.generate()), sock)
    finally:
        sock.close()


def configure(loop: CoreLoop, go: WireGuardGo, *, go_keepalive: int = 0) -> None:
    """Make the core and wireguard-go peers of each other."""
    public_key = loop.core.public_key
    assert public_key is not None
    go.set_peer(public_key, f"{CORE_ADDRESS}/32", loop.endpoint, go_keepalive)
    loop.core.add_peer(
        go.public_key,
        endpoint=("127.0.0.1", GO_PORT),
        allowed_ips=[f"{GO_ADDRESS}/32"],
        now=time.monotonic(),
    )


def test_core_initiates_and_wireguard_go_answers_a_ping(
    wireguard_go: WireGuardGo, core_loop: CoreLoop
) -> None:
    configure(core_loop, wireguard_go)
    core_loop.send(icmp_echo_request(CORE_ADDRESS, GO_ADDRESS, 0x1234, 1))
    core_loop.pump(lambda: any(is_echo_reply(p, 0x1234, 1) for p in core_loop.delivered), 10)
    assert core_loop.completed() == [HandshakeCompleted(wireguard_go.public_key, initiator=True)]
    # wireguard-go saw the handshake and counts our traffic.
    public_key = core_loop.core.public_key
    assert public_key is not None
    assert int(wireguard_go.peer_value("latest-handshakes", public_key)[0]) > 0
    rx, tx = (int(n) for n in wireguard_go.peer_value("transfer", public_key))
    assert rx > 0
    assert tx > 0
    # A second ping uses the same session: no new handshake.
    core_loop.send(icmp_echo_request(CORE_ADDRESS, GO_ADDRESS, 0x1234, 2))
    core_loop.pump(lambda: any(is_echo_reply(p, 0x1234, 2) for p in core_loop.delivered), 5)
    assert len(core_loop.completed()) == 1
    assert not core_loop.drops()


def test_wireguard_go_initiates_and_its_ping_is_answered_through_the_core(
    wireguard_go: WireGuardGo, core_loop: CoreLoop
) -> None:
    configure(core_loop, wireguard_go)
    core_loop.responder = lambda packet: answer_untrusted(packet, Link.IP)
    ping = subprocess.Popen(
        ["ping", "-c", "3", "-i", "0.2", "-W", "3", CORE_ADDRESS],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        core_loop.pump(lambda: ping.poll() is not None, 20)
    finally:
        if ping.poll() is None:
            ping.kill()
        output = ping.communicate(timeout=5)[0]
    assert ping.returncode == 0, output
    assert "3 received" in output
    # wireguard-go initiated; its first data message confirmed our keypair.
    assert core_loop.completed() == [HandshakeCompleted(wireguard_go.public_key, initiator=False)]
    assert len(core_loop.delivered) >= 3


def test_persistent_keepalives_each_way(wireguard_go: WireGuardGo, core_loop: CoreLoop) -> None:
    """Each side's persistent keepalive reaches the other.

    One direction at a time: any authenticated packet received also pushes a peer's own
    persistent keepalive back, so with both sides at one second only one of them would ever
    need to send.
    """
    configure(core_loop, wireguard_go, go_keepalive=1)
    peer = core_loop.core.peers[wireguard_go.public_key]
    public_key = core_loop.core.public_key
    assert public_key is not None
    # wireguard-go's persistent keepalive starts the handshake by itself, then keeps coming.
    core_loop.pump(lambda: bool(core_loop.completed()), 10)
    before = peer.rx_bytes
    start = time.monotonic()
    core_loop.pump(lambda: time.monotonic() - start > 3.5, 10)
    assert peer.rx_bytes - before >= 2 * 32  # a keepalive counts 32 bytes
    assert core_loop.delivered == []

    # Now the other way: wireguard-go's off, ours every second.
    run("wg", "set", wireguard_go.name, "peer", public_key.to_base64(), "persistent-keepalive", "0")
    request = SetRequest(peers=[PeerSet(wireguard_go.public_key, persistent_keepalive_interval=1)])
    assert core_loop.core.apply(request, time.monotonic()) == 0
    core_loop.handle(core_loop.core.take_actions())  # turning it on sends one at once
    go_before = int(wireguard_go.peer_value("transfer", public_key)[0])
    start = time.monotonic()
    core_loop.pump(lambda: time.monotonic() - start > 3.5, 10)
    assert int(wireguard_go.peer_value("transfer", public_key)[0]) - go_before >= 3 * 32
    assert not core_loop.drops()


def test_under_load_wireguard_go_gets_a_cookie_and_retries_with_mac2(
    wireguard_go: WireGuardGo, core_loop: CoreLoop
) -> None:
    core_loop.core.under_load = True
    configure(core_loop, wireguard_go, go_keepalive=1)
    core_loop.pump(lambda: core_loop.core.drops[DropReason.COOKIE_REQUIRED] > 0, 10)
    cookie_sent_at = time.monotonic()
    assert not core_loop.completed()
    # wireguard-go retransmits after REKEY_TIMEOUT (5 s), now with a valid mac2.
    core_loop.pump(lambda: bool(core_loop.completed()), 15)
    assert time.monotonic() - cookie_sent_at > 4
    assert core_loop.completed() == [HandshakeCompleted(wireguard_go.public_key, initiator=False)]
    assert core_loop.core.drops[DropReason.COOKIE_REQUIRED] >= 1
    assert core_loop.core.drops[DropReason.INVALID_MAC1] == 0
    # And the tunnel works, still under load.
    core_loop.send(icmp_echo_request(CORE_ADDRESS, GO_ADDRESS, 9, 1))
    core_loop.pump(lambda: any(is_echo_reply(p, 9, 1) for p in core_loop.delivered), 5)
