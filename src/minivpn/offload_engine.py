"""The offload engine: the per-packet path of the core, fed and emptied in batches (sans-IO).

The WireGuard core handles one packet at a time (:meth:`WireGuardCore.encapsulate
<minivpn.wireguard.core.WireGuardCore>`, :meth:`~minivpn.wireguard.core.WireGuardCore.decapsulate`):
that is the protocol, and the code docs/vpn.md walks through.  What makes it fast is what
happens around it, and all of that is here, so that the core stays readable::

    TUN read (TSO) --> segments(): cut the super-packet --> core.encapsulate(), one per segment,
                       laid end to end in a train  --> one sendmsg with UDP_SEGMENT (UDP GSO)
    UDP GRO receive --> one datagram at a time --> core.decapsulate() --> coalesce() the TCP
                       segments into super-packets --> one writev each
                       (handshake messages go to the runtime's handshake queue instead)

The engine does no I/O: the runtime (:mod:`minivpn.runtime.vpn`) reads and receives, hands
the bytes over, and passes in at construction what carries out the engine's sends and writes.
So a test can feed it any traffic and compare what comes out, byte for byte, with what the core
gives one packet at a time (``tests/unit/test_offload_engine.py``).

Each trick, and the measurement that keeps it here (docs/performance.md, docs/offload.md):

* *trains*: consecutive datagrams of one size to one endpoint go out with one ``sendmsg``
  (``UDP_SEGMENT``): 42 datagrams per system call on a busy interface instead of one;
* *super-packets in*: a TUN read with TSO gives up to 64 KB of TCP payload at once
  (:func:`~minivpn.framing.offload.segments`);
* *GRO batches*: one ``recvmsg`` returns up to 64 datagrams from one sender;
* *coalesced writes*: the packets decrypted in one wake-up, TCP runs merged
  (:func:`~minivpn.framing.offload.coalesce`): about 30 segments per ``writev``;
* *buffers allocated once*, as anonymous mappings that cost memory only where written.
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING, Protocol

from minivpn.framing.offload import GSO_NONE, VNET_HDR_LEN, coalesce, segments
from minivpn.wireguard.messages import MessageType
from minivpn.wireguard.results import WriteToNetwork, WriteToTunnel

if TYPE_CHECKING:
    from minivpn.framing.offload import Buffer
    from minivpn.wireguard.core import WireGuardCore
    from minivpn.wireguard.events import Endpoint

__all__ = [
    "GSO_MAX_BYTES",
    "GSO_MAX_SEGMENTS",
    "MAX_DATAGRAM",
    "PLAIN_ROOM",
    "HandshakeSink",
    "OffloadEngine",
    "SendTrain",
    "WritePacket",
]

#: The largest UDP payload (and the most one GRO receive returns at once).
MAX_DATAGRAM = 65535
#: Most bytes and datagrams one UDP GSO send may carry: the whole must fit one IP packet, and
#: the kernel takes at most UDP_MAX_SEGMENTS = 64 segments.
GSO_MAX_BYTES = 65000
GSO_MAX_SEGMENTS = 64
#: Room for the packets decrypted between two writes (about 180 full-size packets).
PLAIN_ROOM = 4 * MAX_DATAGRAM
#: The first byte of a data message; every other datagram goes to the handshake sink.
_TRANSPORT_DATA = int(MessageType.TRANSPORT_DATA)


class SendTrain(Protocol):
    """Send ``datagrams``: back-to-back datagrams of ``size`` bytes (the last may be shorter)."""

    def __call__(self, datagrams: memoryview, size: int, endpoint: Endpoint) -> None: ...


class WritePacket(Protocol):
    """Write one packet to the TUN device, gathered from ``buffers`` (a virtio-net header first)."""

    def __call__(self, buffers: list[Buffer]) -> None: ...


class HandshakeSink(Protocol):
    """Take a datagram that is not a data message (the runtime queues handshake messages)."""

    def __call__(self, datagram: memoryview, source: Endpoint, now: float) -> None: ...


def lazy_buffer(size: int) -> memoryview:
    """A zeroed buffer that costs memory only as far as it is written: an anonymous mapping.

    ``bytearray(size)`` writes every byte to zero it, so all of it is resident at once; the
    engine's buffers are sized for the largest batch (about 1 MiB in all), which an idle
    interface may never see.
    """
    return memoryview(mmap.mmap(-1, size))


class OffloadEngine:
    """The per-packet path in batches, for one interface.

    The way out: call :meth:`packets_from_tun` for every read from the TUN device, then
    :meth:`send_trains` once the device is empty.  The way in: call
    :meth:`datagrams_from_network` for every UDP receive while :meth:`has_room`, then
    :meth:`write_packets`.

    Args:
        core: the protocol.
        send: sends a train of datagrams (the runtime: one ``sendmsg`` with ``UDP_SEGMENT``).
        write: writes one packet to the TUN device (the runtime: one ``writev``).
        handshake: takes every datagram that is not a data message (the runtime: its handshake
            queue, :mod:`minivpn.wireguard.handshake_queue`); by default the engine hands it to
            ``core.decapsulate`` at once, as one packet at a time would.
    """

    def __init__(
        self,
        core: WireGuardCore,
        *,
        send: SendTrain,
        write: WritePacket,
        handshake: HandshakeSink | None = None,
    ) -> None:
        self.core = core
        self._send = send
        self._write = write
        self._handshake = handshake if handshake is not None else self._decapsulate_handshake
        # The way out: datagrams of `_segment` bytes for `_endpoint`, in `_train[:_end]`.
        self._train = lazy_buffer(GSO_MAX_BYTES + MAX_DATAGRAM + 64)
        self._end = 0
        self._segment = 0
        self._count = 0
        self._endpoint: Endpoint | None = None
        # The way in: decrypted packets, in `_plain[:_used]`, waiting to be written.
        self._plain = lazy_buffer(PLAIN_ROOM)
        self._used = 0
        self._packets: list[memoryview] = []

    # --- the way out -------------------------------------------------------------------------

    def packets_from_tun(self, frame: memoryview, now: float) -> None:
        """Encapsulate what one TUN read returned: a virtio-net header and a (super-)packet.

        Raises:
            OffloadError: the virtio-net header makes no sense (the caller counts and drops).
        """
        if frame[0] == 0 and frame[1] == GSO_NONE:
            # A plain packet, nothing to cut or complete: skip the generator (about a tenth of
            # the engine's own instructions per packet, measured with callgrind).
            self._encapsulate(frame[VNET_HDR_LEN:], now)
        else:
            for packet in segments(frame):
                self._encapsulate(packet, now)

    def _encapsulate(self, packet: memoryview, now: float) -> None:
        """One packet through the per-packet path, its datagram written where the train ends.

        A train holds datagrams of one size for one endpoint, except that its last one may be
        shorter: that is what one ``sendmsg`` with ``UDP_SEGMENT`` sends.
        """
        end = self._end
        result = self.core.encapsulate(packet, self._train[end:], now)
        if not isinstance(result, WriteToNetwork):
            return  # queued behind a handshake, or dropped: the core has counted it
        size, endpoint = result.size, result.endpoint
        if self._count and (endpoint != self._endpoint or size > self._segment):
            # It cannot join: send the train, and move the datagram to the front.
            self.send_trains()
            self._train[:size] = bytes(self._train[end : end + size])
            end = 0
        if self._count == 0:
            self._segment, self._endpoint = size, endpoint
        end += size
        self._end = end
        self._count += 1
        if size < self._segment or end + size > GSO_MAX_BYTES or self._count == GSO_MAX_SEGMENTS:
            self.send_trains()  # a short datagram ends a train; or it is full

    @property
    def gathering(self) -> bool:
        """Whether a train is being gathered (:meth:`send_trains` would send something)."""
        return self._count > 0

    def send_trains(self) -> None:
        """Send the train being gathered (call it when the TUN device is empty)."""
        if self._count:
            assert self._endpoint is not None
            self._send(self._train[: self._end], self._segment, self._endpoint)
        self._end = self._count = 0

    # --- the way in --------------------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether another receive (up to 64 KiB) fits before the packets must be written."""
        return self._used + MAX_DATAGRAM <= PLAIN_ROOM

    def datagrams_from_network(
        self, data: memoryview, segment: int, source: Endpoint, now: float
    ) -> None:
        """Decapsulate what one UDP receive returned: datagrams of ``segment`` bytes from one
        sender, back to back (the last may be shorter); GRO glues them together.

        Decrypted packets wait for :meth:`write_packets`; anything that is not a data message
        goes to the handshake sink.
        """
        plain, used, packets = self._plain, self._used, self._packets
        for start in range(0, len(data), segment):
            datagram = data[start : start + segment]
            if datagram[0] != _TRANSPORT_DATA:
                self._handshake(datagram, source, now)
                continue
            out = plain[used:]
            result = self.core.decapsulate(source, datagram, out, now)
            if isinstance(result, WriteToTunnel):
                packets.append(out[: result.size])
                used += result.size
        self._used = used

    def _decapsulate_handshake(self, datagram: memoryview, source: Endpoint, now: float) -> None:
        """The default handshake sink: the core at once, a reply sent at once."""
        out = self._plain[self._used :]
        result = self.core.decapsulate(source, datagram, out, now)
        if isinstance(result, WriteToNetwork):
            self._send(out[: result.size], result.size, result.endpoint)

    def write_packets(self) -> bool:
        """Write the decrypted packets, TCP runs merged; returns whether there were any."""
        if not self._packets:
            return False
        for buffers in coalesce(self._packets):
            self._write(buffers)
        self._packets = []
        self._used = 0
        return True
