"""Sticky source addresses: answer a peer from the address it wrote to.

The interface's UDP sockets are bound to the wildcard addresses (``0.0.0.0`` and ``::``), so
for every datagram sent the kernel picks a source address, by routing: usually the first
address of the outgoing interface.  On a host with several addresses, a peer that wrote to
another one of them then hears back from an address it did not write to.  Its roaming (it
follows the source of authenticated datagrams) moves its endpoint for us to that address; a
stateful firewall or a NAT in between, which lets through only answers from the address the
peer wrote to, drops the answer altogether.

WireGuard (the kernel module, and wireguard-go's "sticky sockets") therefore remembers, with
the peer's endpoint, *our* address that the peer's last authenticated datagram arrived at, and
sends from it.  With the socket API that takes two socket options:

* receiving: ``IP_PKTINFO`` (IPv4) and ``IPV6_RECVPKTINFO`` (IPv6) make ``recvmsg`` report,
  as ancillary data, the local address each datagram was sent to (``struct in_pktinfo``,
  ``struct in6_pktinfo``);
* sending: the same structure, handed to ``sendmsg`` as ``IP_PKTINFO`` / ``IPV6_PKTINFO``,
  chooses the source address of that one datagram.

Where the address is kept: a :class:`StickyEndpoint` is the peer's ``(host, port)`` pair, a
tuple the sans-IO core uses like any other endpoint, that also carries the ancillary message
for the source.  The core already stores the source of every *authenticated* datagram as the
peer's endpoint (roaming), so it keeps the latest sticky endpoint without knowing it: a forged
datagram never changes the address we send from, and there is exactly one per peer, no table
that could grow.  An endpoint set by ``wg set ... endpoint`` is a plain tuple: the kernel
chooses the source, as it should for a peer that has not written to us yet.

Not too sticky: when the address goes away (``ip addr del``), sending from it fails
(``ENETUNREACH`` for IPv4, ``EINVAL`` for IPv6).  :func:`send` then forgets it and sends the
datagram again with a source of the kernel's choosing, as the kernel module does.  The next
authenticated datagram from the peer brings a new sticky address.

Only the address is pinned, not the interface (the ``ifindex`` sent is 0): routing still picks
the way out.  wireguard-go's netns.sh checks both behaviours ("saddr routing is sticky but not
too sticky", "reply to sender routing").
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from minivpn.wireguard.events import Endpoint

__all__ = [
    "ANCILLARY_SPACE",
    "IP_PKTINFO",
    "ControlMessage",
    "StickyEndpoint",
    "enable_destination_info",
    "endpoint_from",
    "send",
]

log = logging.getLogger("minivpn.sticky")

#: ``linux/in.h``.  The socket module of Python 3.11 has ``IPV6_PKTINFO`` but not this one.
IP_PKTINFO = 8

#: ``struct in_pktinfo``: interface index, local address ("specific destination"), header
#: destination address.
_IN_PKTINFO = struct.Struct("=i4s4s")
#: ``struct in6_pktinfo``: address, interface index.
_IN6_PKTINFO = struct.Struct("=16si")
_NO_IPV4 = bytes(4)

#: Room for the ancillary data of one receive: a ``UDP_GRO`` segment size (an int) and the
#: larger of the two pktinfo structures.
ANCILLARY_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(_IN6_PKTINFO.size)

#: The errors a send gets when its sticky source is no longer one of our addresses.
_SOURCE_GONE = frozenset({errno.ENETUNREACH, errno.EINVAL, errno.EADDRNOTAVAIL})

#: ``(level, type, data)``, as ``socket.sendmsg`` takes ancillary messages.
ControlMessage = tuple[int, int, bytes]


def enable_destination_info(sock: socket.socket) -> None:
    """Make ``recvmsg`` on UDP socket *sock* report the local address of each datagram.

    Raises:
        OSError: the kernel refused the option.
    """
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)


class StickyEndpoint(tuple[str, int]):
    """A peer's ``(host, port)``, and the local address to send to it from.

    It is a tuple so that everything that handles endpoints (the core, ``wg show``) handles
    it as one: equal to, and hashing like, the plain pair.  Only :func:`send` looks further.

    Attributes:
        source: the ``IP_PKTINFO``/``IPV6_PKTINFO`` ancillary message that sends from the
            local address, or None once that address has gone (see :meth:`forget_source`).
    """

    source: ControlMessage | None

    def __new__(cls, host: str, port: int, source: ControlMessage | None) -> StickyEndpoint:
        endpoint = super().__new__(cls, (host, port))
        endpoint.source = source
        return endpoint

    @property
    def local_address(self) -> str | None:
        """The local address datagrams to this endpoint leave from (None: the kernel's choice)."""
        if self.source is None:
            return None
        level, _, data = self.source
        if level == socket.IPPROTO_IP:
            return socket.inet_ntop(socket.AF_INET, _IN_PKTINFO.unpack(data)[1])
        return socket.inet_ntop(socket.AF_INET6, _IN6_PKTINFO.unpack(data)[0])

    def forget_source(self) -> None:
        """Let the kernel choose the source from now on (our address has gone)."""
        self.source = None

    def __repr__(self) -> str:
        return f"StickyEndpoint({self[0]!r}, {self[1]}, from {self.local_address})"


def endpoint_from(address: tuple[Any, ...], ancillary: Sequence[ControlMessage]) -> Endpoint:
    """The endpoint a datagram came from, sticky to the local address it was sent to.

    Args:
        address: the source address ``recvmsg`` returned (2-tuple for IPv4, 4-tuple for IPv6).
        ancillary: the ancillary messages ``recvmsg`` returned; the kernel's, not the
            sender's, so they are trusted.  Without a pktinfo message among them (the option is
            off, or the buffer was too small) the endpoint is a plain ``(host, port)``.

    Returns:
        A :class:`StickyEndpoint`, or a plain ``(host, port)`` tuple.
    """
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            _, local, _ = _IN_PKTINFO.unpack_from(data)
            source = (level, kind, _IN_PKTINFO.pack(0, local, _NO_IPV4))
            return StickyEndpoint(address[0], address[1], source)
        if (
            level == socket.IPPROTO_IPV6
            and kind == socket.IPV6_PKTINFO
            and len(data) >= _IN6_PKTINFO.size
        ):
            local, _ = _IN6_PKTINFO.unpack_from(data)
            source = (level, kind, _IN6_PKTINFO.pack(local, 0))
            return StickyEndpoint(address[0], address[1], source)
    return (address[0], address[1])


def send(
    sock: socket.socket,
    data: bytes | bytearray | memoryview,
    endpoint: Endpoint,
    control: Sequence[ControlMessage] = (),
) -> None:
    """Send *data* to *endpoint*, from its sticky local address if it has one.

    If that address is no longer ours, it is forgotten and the datagram is sent again with the
    kernel's choice of source.

    Args:
        sock: the UDP socket of the endpoint's address family.
        data: the datagram (or, with a ``UDP_SEGMENT`` message in *control*, several).
        endpoint: where to: a plain ``(host, port)`` or a :class:`StickyEndpoint`.
        control: other ancillary messages for ``sendmsg`` (``UDP_SEGMENT``).

    Raises:
        OSError: the send failed (``BlockingIOError`` when the socket buffer is full).
    """
    if isinstance(endpoint, StickyEndpoint) and endpoint.source is not None:
        try:
            sock.sendmsg([data], [*control, endpoint.source], 0, endpoint)
        except OSError as exc:
            if exc.errno not in _SOURCE_GONE:
                raise
            log.debug(
                "cannot send to %s from %s (%s): letting the kernel choose the source",
                endpoint[0],
                endpoint.local_address,
                exc.strerror,
            )
            endpoint.forget_source()
        else:
            return
    if control:
        sock.sendmsg([data], control, 0, endpoint)
    else:
        sock.sendto(data, endpoint)
