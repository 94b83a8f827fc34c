"""The per-peer sockets' limit (src/minivpn/runtime/peer_sockets.py), on loopback sockets.

Each per-peer socket is a file; past the limit, peers share the listening socket, so that a
configuration with many peers cannot use up the files the TUN device and the UAPI need.
The kernel side (which socket gets which datagram) is tests/netns/test_peer_sockets.py.
"""

from __future__ import annotations

import logging
import resource
import socket
from typing import TYPE_CHECKING

import pytest

from minivpn.runtime.peer_sockets import PeerSockets, default_limit

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A UDP socket on a free loopback port, shared as the runtime shares its listening port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    yield sock
    sock.close()


def open_shared(family: int, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def test_past_the_limit_peers_share_the_listening_socket(
    listening: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    port = listening.getsockname()[1]
    sockets = PeerSockets(limit=2)
    endpoints = [("127.0.0.1", 40001 + n) for n in range(5)]
    try:
        with caplog.at_level(logging.INFO, logger="minivpn.vpn"):
            opened = sockets.sync(endpoints, port, open_shared, now=0.0)
            again = sockets.sync(endpoints, port, open_shared, now=1.0)
        assert len(opened) == 2
        assert again == []
        assert len(sockets.sockets) == 2
        for remote, sock in sockets.sockets.items():
            assert sock.getpeername() == remote
            assert sock.getsockname()[1] == port
        said = [r.getMessage() for r in caplog.records if "share the listening" in r.getMessage()]
        assert len(said) == 1  # once, not at every look
        # A peer that leaves makes room for one that had none.
        first = next(iter(sockets.sockets))
        opened = sockets.sync([e for e in endpoints if e != first], port, open_shared, now=2.0)
        assert len(opened) == 1
        assert first not in sockets.sockets
        assert len(sockets.sockets) == 2
    finally:
        sockets.close_all()


def test_the_default_limit_is_a_quarter_of_the_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert default_limit() == 64
        assert PeerSockets().limit == 64
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
