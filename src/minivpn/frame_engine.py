"""The offload engine for Ethernet frames (``Mode = tap``): UDP GSO and GRO, frames coalesced.

:class:`~minivpn.offload_engine.OffloadEngine` feeds the layer-3 per-packet path in batches;
this is the same for layer 2, around ``encapsulate_frame`` and ``decapsulate_frame``
(:mod:`minivpn.wireguard.ethernet`), sans-IO as well::

    TAP read --> core.encapsulate_frame() --> laid end to end in a train --> one sendmsg with
                 UDP_SEGMENT (UDP GSO); a flood's copies go out one by one
    UDP GRO receive --> one datagram at a time --> core.decapsulate_frame() --> the frames for
                 the TAP device, TCP runs merged into super-frames (virtio-net header) --> writes

The trains are the layer-3 engine's, inherited.  Merging works on frames as it does on packets,
through the TAP device's virtio-net header: consecutive frames with the same Ethernet header
(destination, source, an IPv4 or IPv6 EtherType) carry IP packets that
:func:`~minivpn.framing.offload.coalesce` may merge, and the merged packet gets that Ethernet
header back, with the header lengths of the virtio-net header moved on by 14 bytes.  A frame
with an 802.1Q tag, or anything but IP, is written as it came.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minivpn.framing.offload import VNET_HDR, ZERO_VNET_HDR, coalesce
from minivpn.offload_engine import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, OffloadEngine
from minivpn.wireguard.ethernet import ETHERNET_HEADER_SIZE
from minivpn.wireguard.messages import MessageType
from minivpn.wireguard.results import Switched, WriteFrame, WriteToNetwork

if TYPE_CHECKING:
    from minivpn.framing.offload import Buffer
    from minivpn.offload_engine import HandshakeSink, SendTrain, WritePacket
    from minivpn.wireguard.ethernet import EthernetCore
    from minivpn.wireguard.events import Endpoint

__all__ = ["FrameEngine"]

#: The EtherTypes of IPv4 and IPv6, as the last two bytes of an Ethernet header.
_IP_ETHERTYPES = (b"\x08\x00", b"\x86\xdd")


#: The first byte of a data message; every other datagram goes to the handshake sink.
_TRANSPORT_DATA = int(MessageType.TRANSPORT_DATA)


class FrameEngine(OffloadEngine):
    """The per-frame path in batches, for one tap-mode interface.

    The way out: :meth:`frame_from_tap` for every read from the TAP device, then
    :meth:`send_trains` once the device is empty.  The way in: :meth:`datagrams_from_network`
    for every UDP receive while :meth:`has_room`, then :meth:`write_frames`.

    Args:
        core: the protocol.
        send: sends a train of datagrams (one ``sendmsg`` with ``UDP_SEGMENT``).
        write: writes one frame to the TAP device, gathered from buffers.
        vnet_hdr: the TAP device reads and writes a virtio-net header before each frame:
            TCP runs are merged into super-frames.
        handshake: takes every datagram that is not a data message (as for
            :class:`~minivpn.offload_engine.OffloadEngine`: the runtime's handshake queue).
    """

    def __init__(
        self,
        core: EthernetCore,
        *,
        send: SendTrain,
        write: WritePacket,
        vnet_hdr: bool,
        handshake: HandshakeSink | None = None,
    ) -> None:
        super().__init__(core, send=send, write=write, handshake=handshake)
        self.frames = core
        self.vnet_hdr = vnet_hdr
        self._frames: list[memoryview] = []

    # --- the way out -------------------------------------------------------------------------

    def frame_from_tap(self, message: memoryview, now: float) -> None:
        """Encapsulate one frame (behind its 2 bytes of room) where the train ends."""
        end = self._end
        result = self.frames.encapsulate_frame(message, self._train[end:], now)
        if isinstance(result, WriteToNetwork):
            self._gather(end, result.size, result.endpoint)
        elif isinstance(result, Switched):
            # A flood: one datagram per peer, each to another endpoint, written past the train.
            # The train goes first (it ends at `end`, before them): each peer gets its
            # datagrams in the order the per-frame path sends them.
            self.send_trains()
            for datagram in result.datagrams:
                start = end + datagram.start
                self._send(
                    self._train[start : start + datagram.size], datagram.size, datagram.endpoint
                )

    def _gather(self, end: int, size: int, endpoint: Endpoint) -> None:
        """The datagram at ``train[end:end + size]`` joins the train (OffloadEngine's rule)."""
        if self._count and (endpoint != self._endpoint or size > self._segment):
            self.send_trains()
            self._train[:size] = bytes(self._train[end : end + size])
            end = 0
        if self._count == 0:
            self._segment, self._endpoint = size, endpoint
        end += size
        self._end = end
        self._count += 1
        if size < self._segment or end + size > GSO_MAX_BYTES or self._count == GSO_MAX_SEGMENTS:
            self.send_trains()

    # --- the way in --------------------------------------------------------------------------

    def datagrams_from_network(
        self, data: memoryview, segment: int, source: Endpoint, now: float
    ) -> None:
        """Decapsulate one UDP receive: datagrams of ``segment`` bytes, back to back.

        Frames for the TAP device wait for :meth:`write_frames`; a handshake reply, and the
        copies the switch sends on to other peers, are sent at once.
        """
        plain, used, frames = self._plain, self._used, self._frames
        for start in range(0, len(data), segment):
            message = data[start : start + segment]
            if message[0] != _TRANSPORT_DATA:
                self._handshake(message, source, now)
                continue
            out = plain[used:]
            result = self.frames.decapsulate_frame(source, message, out, now)
            if isinstance(result, WriteFrame):
                frames.append(out[result.start : result.start + result.size])
                used += result.start + result.size
            elif isinstance(result, Switched):
                for datagram in result.datagrams:
                    where = out[datagram.start : datagram.start + datagram.size]
                    self._send(where, datagram.size, datagram.endpoint)
                if result.frame_size:
                    end = result.frame_start + result.frame_size
                    frames.append(out[result.frame_start : end])
                    used += end
            elif isinstance(result, WriteToNetwork):
                self._send(out[: result.size], result.size, result.endpoint)
        self._used = used

    def write_frames(self) -> bool:
        """Write the frames for the TAP device; returns whether there were any."""
        frames = self._frames
        if not frames:
            return False
        if self.vnet_hdr:
            for buffers in _coalesce_frames(frames):
                self._write(buffers)
        else:
            for frame in frames:
                self._write([frame])
        self._frames = []
        self._used = 0
        return True


def _coalesce_frames(frames: list[memoryview]) -> list[list[Buffer]]:
    """The writes for a batch of frames: runs with one Ethernet header merged as IP packets."""
    writes: list[list[Buffer]] = []
    count = len(frames)
    i = 0
    while i < count:
        first = frames[i]
        header = first[:ETHERNET_HEADER_SIZE]
        if len(first) <= ETHERNET_HEADER_SIZE or bytes(header[12:]) not in _IP_ETHERTYPES:
            writes.append([ZERO_VNET_HDR, first])
            i += 1
            continue
        j = i + 1
        while j < count and frames[j][:ETHERNET_HEADER_SIZE] == header:
            j += 1
        for buffers in coalesce([frame[ETHERNET_HEADER_SIZE:] for frame in frames[i:j]]):
            vnet = buffers[0]
            if vnet is not ZERO_VNET_HDR:
                flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(vnet)
                vnet = VNET_HDR.pack(
                    flags,
                    gso_type,
                    hdr_len + ETHERNET_HEADER_SIZE,
                    gso_size,
                    csum_start,
                    csum_offset,
                )
            writes.append([vnet, header, *buffers[1:]])
        i = j
    return writes
