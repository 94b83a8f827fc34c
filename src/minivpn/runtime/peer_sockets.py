"""Per-peer receive queues: a connected UDP socket for each peer's endpoint.

**Why.**  With one UDP socket per address family, every peer's datagrams wait in one kernel
receive queue.  A peer that sends more than this process can decrypt -- a flood of 100k
Ethernet frames/s from a peer without storm control (docs/l2.md), or any peer sending
faster than Python decrypts -- fills that queue: the kernel then drops the other peers'
datagrams at its tail, and those it keeps wait behind thousands of the flooder's.  Nothing
in the process can tell them apart before reading (and, for storm control, decrypting) them.

**How.**  For each peer's endpoint the runtime opens one more UDP socket on the listening port
and ``connect()``\\s it to that endpoint.  The kernel delivers a datagram to the socket whose
four-tuple (both addresses, both ports) matches it best: a connected socket beats the
listening socket, which is bound to the wildcard address and connected to nothing, so it
keeps the rest -- a new peer's first handshake, a roaming peer's first datagram from its new
address.  (Two sockets on one port need ``SO_REUSEPORT``; the kernel treats a connected
socket as a match of its own, ahead of the unconnected ones, so it receives exactly its
four-tuple's traffic: Linux 5.4, "udp: correct reuseport selection with connected sockets".
The listening socket sets ``SO_REUSEPORT`` only once bound: its own bind still fails on a port
someone else holds.  tests/netns/test_peer_sockets.py checks all of it with ``ss``.)

Each socket is served by a task of its own, running the same receive loop as the listening
socket (wait until readable, at most BATCH datagrams, back to waiting), and trio runs every
ready task in turn: a flooding peer now overflows only its own queue -- the kernel drops the
excess before Python sees it -- and gets one batch per turn, like every other peer.  That is
fair queueing, by the kernel and trio's scheduler, at no cost per datagram.

**Following the endpoints.**  The runtime (``_follow_endpoints`` in vpn.py) calls
:meth:`PeerSockets.sync`, which compares the sockets with the peers'
endpoints whenever the configuration changes (``wg set``, a ``poke``) and every
FOLLOW_INTERVAL seconds (roaming: until then a peer that moved is served, as before, through
the listening socket), and opens, replaces and closes sockets to match.  A socket is bound to
the local address the peer writes to when it is known (the sticky endpoint, sticky.py), else
to the wildcard address, and ``connect()`` chooses one.

Sends still leave through the listening sockets (sticky.py chooses their source address):
the peer cannot tell the difference, the port is the same.

**Limits.**  Binding another socket to the port needs the user that owns the listening socket
(the kernel's rule for ``SO_REUSEPORT``, so that no other user can take part of the traffic)
and, below ``net.ipv4.ip_unprivileged_port_start``, CAP_NET_BIND_SERVICE (kept while the
port is privileged, privileges.py).  After ``--user``, a port bound before the switch (the
configuration's ``ListenPort``) is root's: the kernel refuses (``EADDRINUSE``), and the peers
share the listening socket as before, logged once, until ``wg set listen-port`` binds a port
as the new user.  A socket the kernel refuses (that, or no route to the endpoint yet) is tried
again after RETRY_AFTER seconds.  Every socket is a file: at most a quarter of the files the
process may open (RLIMIT_NOFILE, 1024 by default: 256 sockets) go to peers, so that the TUN
device, the UAPI and trace clients always have room; peers beyond that share the listening
socket, as all peers did before (logged once).
"""

from __future__ import annotations

import contextlib
import logging
import resource
import socket
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from minivpn.wireguard.events import Endpoint

    #: ``(family, address)`` -> a bound, non-blocking UDP socket with the interface's options.
    OpenSocket = Callable[[int, tuple[str, int]], socket.socket]

__all__ = ["FOLLOW_INTERVAL", "PeerSockets", "default_limit", "remote_key"]

log = logging.getLogger("minivpn.vpn")

#: Seconds between two looks at the peers' endpoints (a peer that roamed is caught up then).
FOLLOW_INTERVAL = 0.5
#: Seconds before a socket the kernel refused is tried again (no route to the endpoint yet...).
RETRY_AFTER = 10.0


def default_limit() -> int:
    """How many per-peer sockets at most: a quarter of the files the process may open."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, soft // 4) if soft != resource.RLIM_INFINITY else 4096


def remote_key(endpoint: Endpoint) -> tuple[str, int, str | None]:
    """``(host, port, local address or None)``: what a connected socket for *endpoint* matches."""
    local = getattr(endpoint, "local_address", None)  # a StickyEndpoint knows ours
    return (endpoint[0], endpoint[1], local)


class PeerSockets:
    """The connected sockets of one interface, one per distinct peer endpoint.

    Attributes:
        sockets: ``(host, port)`` -> the socket connected to it.
        changed: set to make the runtime's follower (``vpn._follow_endpoints``) look now.
        limit: the most sockets it keeps (:func:`default_limit`); other peers share the
            listening socket.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = default_limit() if limit is None else limit
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.changed = trio.Event()
        # Endpoints whose socket the kernel refused, and when: tried again after RETRY_AFTER.
        self.refused: dict[tuple[str, int, str | None], float] = {}
        self.warned = False
        self.warned_limit = False

    def poke(self) -> None:
        """The peers or their endpoints may have changed: look now."""
        self.changed.set()

    def sync(
        self,
        endpoints: Iterable[Endpoint | None],
        port: int,
        open_socket: OpenSocket,
        now: float,
    ) -> list[socket.socket]:
        """Open, replace and close sockets so that each endpoint has one; return the new ones."""
        wanted = {remote_key(endpoint) for endpoint in endpoints if endpoint is not None}
        remotes = {key[:2]: key for key in wanted}
        self.refused = {key: at for key, at in self.refused.items() if key in wanted}
        for remote, sock in list(self.sockets.items()):
            key = remotes.get(remote)
            if key is None or (key[2] is not None and _local_address(sock) != key[2]):
                del self.sockets[remote]  # the peer left, or writes to another address of ours
                _close(sock)
        opened = []
        for remote, key in remotes.items():
            if remote in self.sockets or now < self.refused.get(key, now):
                continue
            if len(self.sockets) >= self.limit:
                if not self.warned_limit:
                    self.warned_limit = True
                    log.info(
                        "%d peer endpoints have a socket of their own, the most for this "
                        "process's open-file limit: the others share the listening socket",
                        self.limit,
                    )
                break
            new = self._open(key, port, open_socket)
            if new is None:
                self.refused[key] = now + RETRY_AFTER
            else:
                self.refused.pop(key, None)
                self.sockets[remote] = new
                opened.append(new)
        return opened

    def _open(
        self, key: tuple[str, int, str | None], port: int, open_socket: OpenSocket
    ) -> socket.socket | None:
        host, remote_port, local = key
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        anywhere = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104 (any address)
        try:
            sock = open_socket(family, (local or anywhere, port))
        except OSError as exc:
            if not self.warned:
                self.warned = True
                log.info(
                    "no socket of its own for peer endpoint %s (%s): peers share the listening "
                    "socket",
                    host,
                    exc.strerror,
                )
            return None
        try:
            sock.connect((host, remote_port))
        except OSError as exc:
            sock.close()
            log.debug("cannot connect a socket to %s: %s", host, exc.strerror)
            return None
        return sock

    def set_mark(self, fwmark: int) -> None:
        """Put the firewall mark (``wg set fwmark``) on every socket."""
        for sock in self.sockets.values():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)

    def close_all(self) -> None:
        """Close every socket (the port changed, or the interface stops)."""
        for sock in self.sockets.values():
            _close(sock)
        self.sockets = {}
        self.refused = {}


def _local_address(sock: socket.socket) -> str | None:
    try:
        return str(sock.getsockname()[0])
    except OSError:
        return None


def _close(sock: socket.socket) -> None:
    """Close *sock*, waking its receive task (which then ends)."""
    with contextlib.suppress(RuntimeError):  # outside trio (tests, shutdown)
        trio.lowlevel.notify_closing(sock)
    sock.close()
