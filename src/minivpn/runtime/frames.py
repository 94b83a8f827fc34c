"""The data tasks of an interface in ``Mode = tap``: Ethernet frames through the switch.

:func:`minivpn.runtime.vpn.run_interface` runs these instead of the layer-3 ones when its
device is a TAP device (and its core an :class:`~minivpn.wireguard.ethernet.EthernetCore`);
the rest of the interface -- sockets, timers, UAPI, link watching -- is the same.  They are the
plain loops of :mod:`minivpn.runtime.vpn` with frames in them::

    device_to_network   TAP readable -> read a frame behind 2 bytes of room
                        -> core.encapsulate_frame -> UDP send (one datagram, or one per peer)
    network_to_device   socket readable -> receive -> core.decapsulate_frame
                        -> TAP write, and/or UDP sends (a hub switching between spokes)

Those are the loops with ``MINIVPN_OFFLOAD=off``.  By default the batched loops at the end
run instead (``batched_device_to_network``, ``batched_network_to_device``): the same calls
through the frame engine (:mod:`minivpn.frame_engine`: UDP GSO trains out, UDP GRO in, TCP
runs merged into super-frames behind the TAP device's virtio-net header), about twice as fast
(docs/performance.md, "Layer 2").
"""

from __future__ import annotations

import errno
import os
import sys
from typing import TYPE_CHECKING

import trio

from minivpn.frame_engine import FrameEngine
from minivpn.framing.offload import VNET_HDR_LEN
from minivpn.offload_engine import MAX_DATAGRAM, lazy_buffer
from minivpn.runtime import sticky
from minivpn.runtime.vpn import _TRANSPORT_DATA, BATCH, SOL_UDP, UDP_GRO, _Runtime
from minivpn.tuntap.aio import READ_SIZE
from minivpn.wireguard.ethernet import FRAME_HEADER_SIZE, EthernetCore
from minivpn.wireguard.results import Switched, WriteFrame, WriteToNetwork

if TYPE_CHECKING:
    import socket

    from minivpn.tuntap.aio import TunDevice
    from minivpn.wireguard.core import WireGuardCore
    from minivpn.wireguard.uapi import DeviceSnapshot

__all__ = ["FrameRuntime", "device_to_network", "network_to_device"]


class FrameRuntime(_Runtime):
    """The runtime of a tap-mode interface: the core is an EthernetCore."""

    def __init__(self, device: TunDevice, core: WireGuardCore, *, batched: bool) -> None:
        assert isinstance(core, EthernetCore), "a TAP device needs a core in Mode = tap"
        super().__init__(device, core)
        self.frames = core
        # Batched: GRO on the sockets, GSO trains out, frames merged if the TAP has vnet_hdr.
        self.offloaded = batched
        self.frame_engine = FrameEngine(
            core,
            send=self.send_train,
            write=self.write_packet,
            vnet_hdr=device.config.vnet_hdr,
            handshake=self.queue_handshake,
        )
        # A read: the virtio-net header (if any) apart, the frame behind its 2 bytes of room.
        self.message = lazy_buffer(FRAME_HEADER_SIZE + READ_SIZE)
        self.vnet_buffer = memoryview(bytearray(VNET_HDR_LEN))
        frame_area = self.message[FRAME_HEADER_SIZE:]
        self.read_into_tap = (
            [self.vnet_buffer, frame_area] if device.config.vnet_hdr else [frame_area]
        )

    def snapshot(self) -> DeviceSnapshot:
        """The device for ``get=1``, with the mode and the MAC table (ages need the clock)."""
        return self.frames.snapshot_at(trio.current_time())

    def drain_tap(self, now: float) -> None:
        """Read the TAP device until it is empty (or BATCH reads), through the frame engine."""
        engine, message, read_into = self.frame_engine, self.message, self.read_into_tap
        skip = VNET_HDR_LEN if self.device.config.vnet_hdr else 0
        fd = self.device.fileno()
        reads = 0
        while reads < BATCH or engine.gathering:
            reads += 1
            try:
                size = os.readv(fd, read_into)
            except BlockingIOError:
                break
            except OSError:
                size = self.device.read_nowait_into(message)  # raises DeviceGone... as it should
                if size == 0:
                    break
                continue
            if size > skip:
                engine.frame_from_tap(message[: FRAME_HEADER_SIZE + size - skip], now)
        engine.send_trains()
        actions = self.core.take_actions()
        if actions:
            self.carry_out(actions)
        else:
            self.poke_timers()

    def send_switched(self, out: memoryview, result: Switched) -> None:
        """Carry out a frame the switch sent to several places: the TAP device, peers."""
        if result.frame_size:
            self.write_to_tun(out[result.frame_start : result.frame_start + result.frame_size])
        for datagram in result.datagrams:
            self.send_one(out[datagram.start : datagram.start + datagram.size], datagram.endpoint)


async def device_to_network(iface: _Runtime) -> None:
    """TAP -> UDP: read a frame, encapsulate it, send its datagram(s); again until empty."""
    assert isinstance(iface, FrameRuntime)
    device, core = iface.device, iface.frames
    # The frame header goes in front of the frame: read the frame right behind its room.
    message = memoryview(bytearray(FRAME_HEADER_SIZE + READ_SIZE))
    frame_buffer = message[FRAME_HEADER_SIZE:]
    out = memoryview(bytearray(MAX_DATAGRAM))
    while True:
        await device.wait_readable()
        for _ in range(BATCH):
            size = device.read_nowait_into(frame_buffer)
            if size == 0:
                break
            result = core.encapsulate_frame(
                message[: FRAME_HEADER_SIZE + size], out, trio.current_time()
            )
            if isinstance(result, WriteToNetwork):
                iface.send_one(out[: result.size], result.endpoint)
            elif isinstance(result, Switched):
                iface.send_switched(out, result)
        iface.carry_out(core.take_actions())


async def network_to_device(iface: _Runtime, sock: socket.socket) -> None:
    """UDP -> TAP: receive a datagram, decapsulate it, write the frame and/or send it on."""
    assert isinstance(iface, FrameRuntime)
    core = iface.frames
    datagram_buffer = memoryview(bytearray(MAX_DATAGRAM))
    # The frame, then the copies the switch sends on to other peers: room for many.
    out = lazy_buffer(4 * MAX_DATAGRAM)
    while True:
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            return  # rebound: the socket task restarts
        for _ in range(BATCH):
            try:
                size, ancillary, _flags, address = sock.recvmsg_into(
                    [datagram_buffer], sticky.ANCILLARY_SPACE
                )
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                continue  # an ICMP error for an earlier send: nothing to do here
            source = sticky.endpoint_from(address, ancillary)
            datagram = datagram_buffer[:size]
            if size == 0 or datagram[0] != _TRANSPORT_DATA:  # the handshake queue's (vpn.py)
                iface.queue_handshake(datagram, source, trio.current_time())
                continue
            result = core.decapsulate_frame(source, datagram, out, trio.current_time())
            if isinstance(result, WriteFrame):
                iface.write_to_tun(out[result.start : result.start + result.size])
            elif isinstance(result, Switched):
                iface.send_switched(out, result)
            elif isinstance(result, WriteToNetwork):
                iface.send_one(out[: result.size], result.endpoint)
        iface.carry_out(core.take_actions())


# -- the batched path: through the frame engine ----------------------------------------------------


async def batched_device_to_network(iface: _Runtime) -> None:
    """TAP -> UDP: whenever the TAP device is readable, drain it through the frame engine."""
    assert isinstance(iface, FrameRuntime)
    device = iface.device
    while True:
        await device.wait_readable()
        iface.drain_tap(trio.current_time())


async def batched_network_to_device(iface: _Runtime, sock: socket.socket) -> None:
    """UDP -> TAP: receive GRO trains, decapsulate, write the frames, answer in the same turn."""
    assert isinstance(iface, FrameRuntime)
    core, engine = iface.frames, iface.frame_engine
    receive_buffer = lazy_buffer(MAX_DATAGRAM)
    while True:
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            return  # rebound: the socket task restarts
        now = trio.current_time()
        for _ in range(BATCH):
            if not engine.has_room():
                break
            try:
                size, ancillary, _flags, address = sock.recvmsg_into(
                    [receive_buffer], sticky.ANCILLARY_SPACE
                )
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                continue  # an ICMP error for an earlier send: nothing to do here
            if size == 0:
                continue
            segment = size
            for level, kind, data in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = int.from_bytes(data, sys.byteorder)
            source = sticky.endpoint_from(address, ancillary)
            # Handshake messages go to the handshake queue (the engine's handshake sink).
            engine.datagrams_from_network(receive_buffer[:size], segment, source, now)
            actions = core.take_actions()
            if actions:
                iface.carry_out(actions)
        if engine.write_frames():
            iface.drain_tap(now)
        else:
            iface.poke_timers()
