"""What became of one packet or one datagram: the results of the per-packet path.

The core has one call per direction (boringtun's ``Tunn`` has the same two):

* ``core.encapsulate(packet, out, now)`` (:mod:`minivpn.wireguard.send`) for an IP packet
  read from the TUN device, which returns :data:`Encapsulated`;
* ``core.decapsulate(source, datagram, out, now)`` (:mod:`minivpn.wireguard.receive`) for a
  UDP datagram, which returns :data:`Decapsulated`.

Both write what is to be sent or delivered into the caller's buffer ``out`` and say which:

=================  ========================================================================
result             what the caller does
=================  ========================================================================
WriteToNetwork     send ``out[:size]`` as one UDP datagram to ``endpoint``
WriteToTunnel      write ``out[:size]``, a decrypted IP packet, to the TUN device
Queued             nothing: the packet waits for a handshake with the peer (encapsulate)
Done               nothing: the datagram did its job (a keepalive, a handshake message)
Dropped            nothing: ``reason`` says why (also counted in ``core.drops``)
=================  ========================================================================

A call may also set other things in motion -- a handshake initiation to send, a keepalive that
confirms new keys, packets that waited for a session, an event to log.  Those are not its
result; they wait in ``core.take_actions()``, which the runtime empties after each call or batch
of calls (:mod:`minivpn.wireguard.events`).

The results are immutable values, named tuples: one is made for every packet, and a named
tuple costs half as many instructions to make as an attrs class (about 2,700 against 5,000,
counted with callgrind; docs/performance.md, "The per-packet budget").  Tell them apart with
``isinstance`` (or ``match``), never by truth: ``Done`` carries nothing, so it is an empty tuple,
and one instance, :data:`DONE`, serves all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple, TypeAlias

if TYPE_CHECKING:
    from minivpn.wireguard.events import DropReason, Endpoint
    from minivpn.wireguard.keys import PublicKey

__all__ = [
    "DONE",
    "Decapsulated",
    "Done",
    "Dropped",
    "Encapsulated",
    "Queued",
    "WriteToNetwork",
    "WriteToTunnel",
]


class WriteToNetwork(NamedTuple):
    """Send ``out[:size]`` to ``endpoint`` as one UDP datagram.

    Attributes:
        size: the length of the WireGuard message written at the start of ``out``.
        endpoint: where to send it: ``(ip, port)``.
    """

    size: int
    endpoint: Endpoint


class WriteToTunnel(NamedTuple):
    """Write ``out[:size]`` to the TUN device: a decrypted, authorised IP packet.

    Attributes:
        size: the packet's length (its IP header's length; the padding is cut off).
        public_key: the peer it came from.
    """

    size: int
    public_key: PublicKey


class Queued(NamedTuple):
    """The packet waits for a session with the peer; a handshake is under way.

    Attributes:
        public_key: the peer the packet is for.
    """

    public_key: PublicKey


class Done(NamedTuple):
    """The datagram was consumed and asks for nothing: a keepalive, a handshake message."""


#: The one :class:`Done` (it carries nothing).
DONE: Final = Done()


class Dropped(NamedTuple):
    """The packet or datagram was dropped.

    Attributes:
        reason: why.
        public_key: the peer concerned, when one is known.
    """

    reason: DropReason
    public_key: PublicKey | None = None


#: The result of :meth:`~minivpn.wireguard.core.WireGuardCore.encapsulate`.
Encapsulated: TypeAlias = WriteToNetwork | Queued | Dropped
#: The result of :meth:`~minivpn.wireguard.core.WireGuardCore.decapsulate`.
Decapsulated: TypeAlias = WriteToTunnel | WriteToNetwork | Done | Dropped
