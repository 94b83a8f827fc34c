"""The UAPI and config code checked against the reference programs: wireguard-go and wg(8).

* A real ``wireguard-go`` is configured with ``wg set``; its raw ``get=1`` answer must parse
  and re-serialise byte for byte, and ``wg showconf`` output must parse as a config.
* Malformed ``set=1`` requests go to wireguard-go and to :class:`UapiRequestParser`; both must
  answer the same errno.  This is what makes the errno mapping a fact rather than a guess.
* A fake daemon built from this module's parser and writer is driven by the real ``wg``
  (``wg setconf``, ``wg showconf``), so both directions are checked against the real client.

Run inside ``netns/isolate`` (private network namespace and private /run, where
/var/run/wireguard lives).  Known differences that are *not* compared here, because they depend
on the wireguard-go and Go versions installed (Debian 12: wireguard-go 0.0.20220316, Go 1.19):
``allowed_ip=-<cidr>`` (removal, wireguard-go >= 0.0.20250515) and prefix lengths with a
leading zero or sign such as ``/08`` (refused since Go 1.22; this parser follows the newer
rule).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import pytest
from tests.helpers.wg import SOCKET_DIR

from minivpn.wireguard.config import Config, Endpoint, InterfaceConfig, PeerConfig, parse_config
from minivpn.wireguard.config import format_config as format_config_text
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from minivpn.wireguard.uapi import (
    EINVAL,
    AllowedIPChange,
    CloseConnection,
    DeviceSet,
    DeviceSnapshot,
    GetRequest,
    PeerSet,
    PeerSnapshot,
    RequestError,
    SetRequest,
    UapiEvent,
    UapiRequestParser,
    format_allowed_ip,
    format_endpoint,
    format_errno,
    format_get_response,
    parse_get_response,
)
from netns import Topology

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# Outside netns/isolate, tests/conftest.py skips this module (or fails it, in CI).
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        shutil.which("wireguard-go") is None or shutil.which("wg") is None,
        reason="needs wireguard-go and wg",
    ),
]

IFACE = "wgtest0"


def wg(*args: str, input: str | None = None) -> str:
    return subprocess.run(
        ["wg", *args], check=True, capture_output=True, text=True, timeout=30, input=input
    ).stdout


def key_file(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def exchange(path: Path, request: bytes, sock: socket.socket | None = None) -> bytes:
    """Send *request* and read one answer (up to its blank line), or until EOF."""
    own = sock is None
    if sock is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(path))
    try:
        sock.sendall(request)
        answer = b""
        while not (answer.endswith(b"\n\n") and b"errno=" in answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer
    finally:
        if own:
            sock.close()


@pytest.fixture
def wireguard_go(tmp_path: Path) -> Iterator[Path]:
    """A running wireguard-go; yields its UAPI socket path.  Stopped by PID on exit."""
    with Topology() as topo:
        ns = topo.namespace("wg")
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        with open(tmp_path / "wireguard-go.log", "w") as log:
            proc = ns.popen(["wireguard-go", "-f", IFACE], env=env, stdout=log, stderr=log)
        path = SOCKET_DIR / f"{IFACE}.sock"
        for _ in range(500):
            if path.exists() or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is None, (tmp_path / "wireguard-go.log").read_text()
        assert path.exists()
        yield path


def first_answer_of(events: list[UapiEvent]) -> bytes:
    """What a daemon built on the parser answers to the first event (b"" for a close)."""
    event = events[0]
    if isinstance(event, SetRequest | RequestError):
        return format_errno(event.errno)
    assert isinstance(event, CloseConnection), event
    return b""


# --- get ------------------------------------------------------------------------------------------


def test_get_answer_parses_and_reserialises_byte_for_byte(
    wireguard_go: Path, tmp_path: Path
) -> None:
    private = wg("genkey").strip()
    peers = [wg("pubkey", input=wg("genkey")).strip() for _ in range(3)]
    psk = wg("genpsk").strip()
    wg(
        "set", IFACE,
        "private-key", key_file(tmp_path, "private", private),
        "listen-port", "51820",
        "fwmark", "0x1234",
        "peer", peers[0],
        "preshared-key", key_file(tmp_path, "psk", psk),
        "endpoint", "198.51.100.2:51820",
        "allowed-ips", "10.0.0.2/32,fd00::2/128,10.9.0.0/16",
        "persistent-keepalive", "25",
        "peer", peers[1],
        "endpoint", "[fd00:5100::3]:51821",
        "allowed-ips", "10.0.1.0/24",
        "peer", peers[2],
    )  # fmt: skip
    answer = exchange(wireguard_go, b"get=1\n\n")
    snapshot = parse_get_response(answer)
    assert format_get_response(snapshot) == answer

    assert snapshot.private_key == PrivateKey.from_base64(private)
    assert (snapshot.listen_port, snapshot.fwmark) == (51820, 0x1234)
    by_key = {peer.public_key.to_base64(): peer for peer in snapshot.peers}
    assert set(by_key) == set(peers)
    first, second, third = (by_key[p] for p in peers)
    assert first.preshared_key == PresharedKey.from_base64(psk)
    assert first.endpoint == "198.51.100.2:51820"
    assert set(first.allowed_ips) == {"10.0.0.2/32", "fd00::2/128", "10.9.0.0/16"}
    assert first.persistent_keepalive_interval == 25
    assert second.preshared_key is None
    assert second.endpoint == "[fd00:5100::3]:51821"
    assert second.allowed_ips == ("10.0.1.0/24",)
    assert third == PeerSnapshot(PublicKey.from_base64(peers[2]))

    # wg showconf prints the same device as a config file, which parse_config must read.
    config = parse_config(wg("showconf", IFACE), "showconf")
    assert config.interface.private_key == snapshot.private_key
    assert config.interface.listen_port == 51820
    assert config.interface.fwmark == 0x1234
    shown = {peer.public_key.to_base64(): peer for peer in config.peers}
    assert shown[peers[0]].preshared_key == first.preshared_key
    assert shown[peers[0]].endpoint == Endpoint("198.51.100.2", 51820)
    assert shown[peers[0]].persistent_keepalive == 25
    assert {format_allowed_ip(n) for n in shown[peers[0]].allowed_ips} == set(first.allowed_ips)
    assert shown[peers[1]].endpoint == Endpoint("fd00:5100::3", 51821)
    assert shown[peers[2]].allowed_ips == ()


# --- set errors -----------------------------------------------------------------------------------

HEX1 = "11" * 32
HEX2 = "22" * 32

REQUESTS = [
    # (bytes sent on a fresh connection; both must give the same first answer)
    b"set=1\nlisten_port=abc\n\n",
    b"set=1\nlisten_port=65536\n\n",
    b"set=1\nlisten_port=-1\n\n",
    b"set=1\nlisten_port=+1\n\n",
    b"set=1\nlisten_port=\n\n",
    b"set=1\nfwmark=4294967296\n\n",
    b"set=1\nfwmark=0x10\n\n",
    b"set=1\nno_equals_sign\n\n",
    b"set=1\nfoo=bar\n\n",
    b"set=1\n=\n\n",
    b"set=1\nreplace_peers=yes\n\n",
    b"set=1\nprivate_key=abc\n\n",
    b"set=1\nprivate_key=" + b"g" * 64 + b"\n\n",
    b"set=1\nprivate_key=" + b"a" * 66 + b"\n\n",
    b"set=1\npublic_key=xyz\n\n",
    f"set=1\npublic_key={HEX1}\nlisten_port=1\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nallowed_ip=garbage\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nallowed_ip=10.0.0.0/33\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nallowed_ip=10.0.0.0\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nallowed_ip=fd00::/129\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nallowed_ip=fe80::%lo/64\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nendpoint=garbage\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nendpoint=1.2.3.4\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nendpoint=fd00::1:5\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nendpoint=[1.2.3.4]:5\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nendpoint=1.2.3.4:65536\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nendpoint=01.2.3.4:5\n\n".encode(),
    f"set=1\npublic_key={HEX1}\npersistent_keepalive_interval=65536\n\n".encode(),
    f"set=1\npublic_key={HEX1}\npreshared_key=00\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nprotocol_version=2\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nremove=false\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nupdate_only=1\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nreplace_allowed_ips=True\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nwhatever=1\n\n".encode(),
    f"set=1\npublic_key={HEX1}\nno_equals_sign\n\n".encode(),
    # Valid ones answer 0.
    b"set=1\n\n",
    b"set=1\nfwmark=1\r\n\r\n",
    f"set=1\npublic_key={HEX1}\nendpoint=1.2.3.4:0\nallowed_ip=::ffff:1.2.3.4/128\n\n".encode(),
    f"set=1\npublic_key={HEX2}\nupdate_only=true\nprotocol_version=1\n\n".encode(),
    # get=1 with a trailing character answers EINVAL; a non-operation closes without answer.
    b"get=1\nx",
    b"hello\n",
    b"set=1\r\n",
]


@pytest.mark.parametrize("request_bytes", REQUESTS, ids=repr)
def test_same_answer_as_wireguard_go(wireguard_go: Path, request_bytes: bytes) -> None:
    reference = exchange(wireguard_go, request_bytes)
    ours = first_answer_of(UapiRequestParser().feed(request_bytes))
    assert ours == reference


def test_partial_application_matches_wireguard_go(wireguard_go: Path) -> None:
    request = (
        "set=1\nfwmark=77\n"
        f"public_key={HEX1}\nallowed_ip=10.0.0.0/8\n"
        f"public_key={HEX2}\nallowed_ip=10.1.0.0/16\nendpoint=bad\nallowed_ip=10.2.0.0/16\n"
        "\n"
    ).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(wireguard_go))
        assert exchange(wireguard_go, request, sock) == b"errno=-22\n\n"
        # The connection is still usable: the rest of the failed request was swallowed.
        state = parse_get_response(exchange(wireguard_go, b"get=1\n\n", sock))

    (event,) = UapiRequestParser().feed(request)
    assert event == SetRequest(
        DeviceSet(fwmark=77),
        (
            PeerSet(
                PublicKey.from_hex(HEX1),
                allowed_ips=(AllowedIPChange(ipaddress.ip_network("10.0.0.0/8")),),
            ),
            PeerSet(
                PublicKey.from_hex(HEX2),
                allowed_ips=(AllowedIPChange(ipaddress.ip_network("10.1.0.0/16")),),
            ),
        ),
        errno=EINVAL,
    )
    # What wireguard-go applied is exactly what the event says.
    assert state.fwmark == 77
    applied = {peer.public_key.to_hex(): peer.allowed_ips for peer in state.peers}
    assert applied == {HEX1: ("10.0.0.0/8",), HEX2: ("10.1.0.0/16",)}


# --- the real wg client against a daemon made of this module --------------------------------------


class FakeDaemon:
    """Serves UAPI on /var/run/wireguard/<name>.sock with UapiRequestParser and the writers.

    Get requests are answered from :attr:`snapshot`; set requests are recorded and answered 0.
    """

    def __init__(self, name: str, snapshot: DeviceSnapshot) -> None:
        self.snapshot = snapshot
        self.sets: list[SetRequest] = []
        SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        self.path = SOCKET_DIR / f"{name}.sock"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen()
        self.server.settimeout(0.1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def __enter__(self) -> FakeDaemon:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.server.close()
        self.path.unlink(missing_ok=True)

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        parser = UapiRequestParser()
        while not parser.closed:
            data = conn.recv(65536)
            for event in parser.feed(data) if data else parser.feed_eof():
                if isinstance(event, GetRequest):
                    conn.sendall(format_get_response(self.snapshot))
                elif isinstance(event, SetRequest):
                    self.sets.append(event)
                    conn.sendall(format_errno(event.errno))
                elif isinstance(event, RequestError):
                    conn.sendall(format_errno(event.errno))
                else:
                    return


def test_wg_setconf_and_showconf_against_our_side(tmp_path: Path) -> None:
    private = PrivateKey.generate()
    peer1, peer2 = (PrivateKey.generate().public_key() for _ in range(2))
    psk = PresharedKey.generate()
    config = Config(
        InterfaceConfig(private_key=private, listen_port=51820, fwmark=0x42),
        (
            PeerConfig(
                public_key=peer1,
                preshared_key=psk,
                allowed_ips=(
                    ipaddress.ip_network("10.0.0.0/24"),
                    ipaddress.ip_network("fd00::/64"),
                ),
                endpoint=Endpoint("fd00:5100::9", 51821),
                persistent_keepalive=25,
            ),
            PeerConfig(public_key=peer2, endpoint=Endpoint("198.51.100.9", 7)),
        ),
    )
    path = tmp_path / "mvfake0.conf"
    path.write_text(format_config_text(config))
    path.chmod(0o600)

    snapshot = DeviceSnapshot(
        private_key=private,
        listen_port=51820,
        fwmark=0x42,
        peers=(
            PeerSnapshot(
                peer1,
                preshared_key=psk,
                endpoint=format_endpoint(ipaddress.IPv6Address("fd00:5100::9"), 51821),
                persistent_keepalive_interval=25,
                allowed_ips=("10.0.0.0/24", "fd00::/64"),
                tx_bytes=1234,
                rx_bytes=5678,
            ),
            PeerSnapshot(peer2, endpoint="198.51.100.9:7"),
        ),
    )
    with FakeDaemon("mvfake0", snapshot) as daemon:
        wg("setconf", "mvfake0", str(path))
        shown = wg("showconf", "mvfake0")
        transfer = wg("show", "mvfake0", "transfer")

    # What wg sent, as our parser understood it: setconf replaces everything.
    assert daemon.sets == [
        SetRequest(
            DeviceSet(private_key=private, listen_port=51820, fwmark=0x42, replace_peers=True),
            (
                PeerSet(
                    peer1,
                    preshared_key=psk,
                    endpoint=(ipaddress.IPv6Address("fd00:5100::9"), 51821),
                    persistent_keepalive_interval=25,
                    replace_allowed_ips=True,
                    allowed_ips=(
                        AllowedIPChange(ipaddress.ip_network("10.0.0.0/24")),
                        AllowedIPChange(ipaddress.ip_network("fd00::/64")),
                    ),
                ),
                PeerSet(
                    peer2,
                    endpoint=(ipaddress.IPv4Address("198.51.100.9"), 7),
                    replace_allowed_ips=True,
                ),
            ),
        )
    ]
    # What wg made of our get answer: the same configuration back.
    assert parse_config(shown, "showconf") == config
    assert f"{peer1.to_base64()}\t5678\t1234" in transfer
