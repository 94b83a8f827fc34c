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
    "DatagramAt",
    "Decapsulated",
    "Done",
    "Dropped",
    "Encapsulated",
    "FrameReceived",
    "FrameSent",
    "Queued",
    "Switched",
    "WriteFrame",
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


# --- layer 2 (Mode = tap, minivpn.wireguard.ethernet) ------------------------------------------
#
# ``core.encapsulate_frame`` and ``core.decapsulate_frame`` return the results above, and two
# more: a frame for the TAP device sits behind the 2-byte frame header (so its place in ``out``
# is given), and the switch may send one frame to several places at once -- the TAP device and
# other peers (flooding), or another peer only (a hub forwarding between spokes).  Those copies
# are written one after the other in ``out``, and ``Switched`` says where each one is.


class WriteFrame(NamedTuple):
    """Write ``out[start:start + size]``, a decrypted Ethernet frame, to the TAP device.

    Attributes:
        start: where the frame starts in ``out``.
        size: its length.
        public_key: the peer it came from.
    """

    start: int
    size: int
    public_key: PublicKey


class DatagramAt(NamedTuple):
    """One data message the switch wrote in ``out``: send ``out[start:start + size]``.

    Attributes:
        start: where it starts in ``out``.
        size: its length.
        endpoint: the peer to send it to.
    """

    start: int
    size: int
    endpoint: Endpoint


class Switched(NamedTuple):
    """One frame, sent by the switch to several places: the TAP device and/or other peers.

    Attributes:
        frame_start, frame_size: write ``out[frame_start:frame_start + frame_size]`` (the
            frame) to the TAP device; a size of 0: not to the TAP device.
        datagrams: the data messages carrying the frame to other peers, one per peer.
    """

    frame_start: int
    frame_size: int
    datagrams: tuple[DatagramAt, ...]


#: The result of :meth:`~minivpn.wireguard.ethernet.EthernetCore.encapsulate_frame`.
FrameSent: TypeAlias = WriteToNetwork | Switched | Queued | Done | Dropped
#: The result of :meth:`~minivpn.wireguard.ethernet.EthernetCore.decapsulate_frame`.
FrameReceived: TypeAlias = WriteFrame | Switched | WriteToNetwork | Queued | Done | Dropped
