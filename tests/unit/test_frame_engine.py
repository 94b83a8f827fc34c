"""The frame engine against the per-frame path (``Mode = tap``): the same traffic, the same bytes.

As tests/unit/test_offload_engine.py does for layer 3: two identical pairs of EthernetCores
(same keys, same random streams, the same handshake) get the same random frames.  One pair
takes them one at a time through ``encapsulate_frame``/``decapsulate_frame``; the other through
:class:`~minivpn.frame_engine.FrameEngine` (trains, UDP GRO batches, and with a virtio-net
header TCP runs merged into super-frames).  The datagrams on the wire must be byte for byte the
same, the frames delivered the same (merged writes cut back into frames, as the kernel does),
and so must the drop counters and the other actions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import gso_reference as ref
from tests.helpers.l2net import BROADCAST, L2Net, L2Node, frame, mac
from tests.helpers.wgnet import A_ENDPOINT, B_ENDPOINT

from minivpn.frame_engine import FrameEngine
from minivpn.framing.offload import ZERO_VNET_HDR
from minivpn.offload_engine import GSO_MAX_BYTES, GSO_MAX_SEGMENTS
from minivpn.wireguard.ethernet import FRAME_HEADER_SIZE
from minivpn.wireguard.results import Switched, WriteFrame, WriteToNetwork

if TYPE_CHECKING:
    from minivpn.framing.offload import Buffer
    from minivpn.wireguard.events import Endpoint

HOST_A, HOST_B, UNKNOWN = mac(1), mac(2), mac(9)
A4, B4 = "10.0.0.1", "10.0.0.2"
MTU = 1404


def pair(seed: int) -> tuple[L2Net, L2Node, L2Node]:
    """A and B with a session, and each other's host learned (B's host behind A's peer B)."""
    net = L2Net()
    a = net.add("A", A_ENDPOINT, seed)
    b = net.add("B", B_ENDPOINT, seed + 1)
    net.link(a, b, keepalive=25)
    net.frame_from_tap(b, frame(BROADCAST, HOST_B))
    net.frame_from_tap(a, frame(BROADCAST, HOST_A))
    a.core.take_actions()
    b.core.take_actions()
    a.tap.clear()
    b.tap.clear()
    return net, a, b


@st.composite
def tap_frames(draw: st.DrawFn) -> list[bytes]:
    """One or more frames read from A's TAP device: a TCP run, or one frame of another kind."""
    kind = draw(st.sampled_from(["tcp-run", "tcp-run", "arp", "vlan", "unknown", "big", "runt"]))
    if kind == "tcp-run":
        mss = draw(st.integers(1, MTU - 40))
        seq = draw(st.integers(0, 2**32 - 1))
        count = draw(st.integers(1, 6))
        run = []
        for n in range(count):
            seq_n = (seq + n * mss) & 0xFFFFFFFF
            packet = ref.tcp_packet(A4, B4, seq_n, os.urandom(mss), ident=n)
            run.append(frame(HOST_B, HOST_A, packet, ethertype=0x0800))
        return run
    if kind == "arp":
        return [frame(BROADCAST, HOST_A, os.urandom(28), ethertype=0x0806)]
    if kind == "vlan":
        inner = ref.udp_packet(A4, B4, os.urandom(draw(st.integers(0, 200))))
        return [frame(HOST_B, HOST_A, b"\x00\x64\x08\x00" + inner, ethertype=0x8100)]
    if kind == "unknown":
        return [frame(UNKNOWN, HOST_A, os.urandom(draw(st.integers(0, MTU))))]
    if kind == "big":
        return [frame(HOST_B, HOST_A, os.urandom(MTU + 1))]  # dropped as oversized
    return [os.urandom(draw(st.integers(1, 13)))]  # shorter than a header: dropped


class Wire:
    """Records what an engine sends and writes."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, Endpoint]] = []
        self.writes: list[list[bytes]] = []

    def send(self, datagrams: memoryview, size: int, endpoint: Endpoint) -> None:
        assert 0 < len(datagrams) <= GSO_MAX_BYTES + 1500
        assert -(-len(datagrams) // size) <= GSO_MAX_SEGMENTS
        for start in range(0, len(datagrams), size):
            self.datagrams.append((bytes(datagrams[start : start + size]), endpoint))

    def write(self, buffers: list[Buffer]) -> None:
        self.writes.append([bytes(b) for b in buffers])

    def frames(self, vnet_hdr: bool) -> list[bytes]:
        """The frames the writes stand for (what the kernel makes of them)."""
        if not vnet_hdr:
            return [b"".join(write) for write in self.writes]
        frames = []
        for write in self.writes:
            if len(write) == 2:  # not IP: as it came, behind an empty virtio-net header
                assert write[0] == ZERO_VNET_HDR
                frames.append(write[1])
            else:  # an Ethernet header, then an IP (super-)packet
                header = write[1]
                frames += [header + packet for packet in ref.resegment([write[0], *write[2:]])]
        return frames


def send_plainly(node: L2Node, reads: list[bytes], now: float) -> list[tuple[bytes, Endpoint]]:
    out = memoryview(bytearray(65535))
    datagrams = []
    for data in reads:
        message = memoryview(bytearray(FRAME_HEADER_SIZE + len(data)))
        message[FRAME_HEADER_SIZE:] = data
        result = node.core.encapsulate_frame(message, out, now)
        if isinstance(result, WriteToNetwork):
            datagrams.append((bytes(out[: result.size]), result.endpoint))
        elif isinstance(result, Switched):
            for d in result.datagrams:
                datagrams.append((bytes(out[d.start : d.start + d.size]), d.endpoint))
    return datagrams


def receive_plainly(node: L2Node, datagrams: list[bytes], now: float) -> list[bytes]:
    out = memoryview(bytearray(65535))
    delivered = []
    for datagram in datagrams:
        result = node.core.decapsulate_frame(A_ENDPOINT, datagram, out, now)
        assert not isinstance(result, WriteToNetwork)  # no handshake in this traffic
        if isinstance(result, WriteFrame):
            delivered.append(bytes(out[result.start : result.start + result.size]))
        elif isinstance(result, Switched):  # a flood: to the TAP device (no other peer here)
            assert result.datagrams == ()
            start, size = result.frame_start, result.frame_size
            delivered.append(bytes(out[start : start + size]))
    return delivered


def gro_batches(datagrams: list[bytes], cuts: list[bool]) -> list[tuple[bytes, int]]:
    """Group datagrams as UDP GRO would: equal sizes, the last of a batch may be shorter."""
    batches: list[tuple[bytes, int]] = []
    current: list[bytes] = []
    for datagram, cut in zip(datagrams, cuts, strict=True):
        if current and (
            cut or len(datagram) > len(current[0]) or len(current[-1]) < len(current[0])
        ):
            batches.append((b"".join(current), len(current[0])))
            current = []
        current.append(datagram)
    if current:
        batches.append((b"".join(current), len(current[0])))
    return batches


@settings(max_examples=60, deadline=None)
@given(
    reads=st.lists(tap_frames(), min_size=1, max_size=8),
    flushes=st.lists(st.booleans(), min_size=8, max_size=8),
    vnet_hdr=st.booleans(),
    data=st.data(),
)
def test_frame_engine_and_per_frame_path_give_the_same_bytes(
    reads: list[list[bytes]], flushes: list[bool], vnet_hdr: bool, data: st.DataObject
) -> None:
    _, plain_a, plain_b = pair(seed=5)
    net, engine_a, engine_b = pair(seed=5)
    now = net.now
    frames = [f for group in reads for f in group]

    # The way out: A's TAP reads.
    wire_a = Wire()
    engine = FrameEngine(engine_a.core, send=wire_a.send, write=wire_a.write, vnet_hdr=vnet_hdr)
    for group, flush in zip(reads, flushes, strict=False):
        for data_frame in group:
            message = memoryview(bytearray(FRAME_HEADER_SIZE + len(data_frame)))
            message[FRAME_HEADER_SIZE:] = data_frame
            engine.frame_from_tap(message, now)
        if flush:
            engine.send_trains()  # a drain ends here: the TAP device was empty
    engine.send_trains()
    expected = send_plainly(plain_a, frames, now)
    assert wire_a.datagrams == expected
    assert engine_a.core.drops == plain_a.core.drops
    assert list(engine_a.core.take_actions()) == list(plain_a.core.take_actions())

    # The way in: B receives them, with garbage and replays mixed in, in GRO batches.
    datagrams = [datagram for datagram, _ in expected]
    for _ in range(data.draw(st.integers(0, 4))):
        where = data.draw(st.integers(0, len(datagrams)))
        if datagrams and data.draw(st.booleans()):
            datagrams.insert(where, datagrams[data.draw(st.integers(0, len(datagrams) - 1))])
        else:
            datagrams.insert(where, data.draw(st.binary(min_size=1, max_size=200)))
    cuts = data.draw(st.lists(st.booleans(), min_size=len(datagrams), max_size=len(datagrams)))
    wire_b = Wire()
    engine = FrameEngine(engine_b.core, send=wire_b.send, write=wire_b.write, vnet_hdr=vnet_hdr)
    for batch, segment in gro_batches(datagrams, cuts):
        if not engine.has_room() or data.draw(st.booleans()):
            engine.write_frames()
        engine.datagrams_from_network(memoryview(batch), segment, A_ENDPOINT, now)
    engine.write_frames()
    assert wire_b.frames(vnet_hdr) == receive_plainly(plain_b, datagrams, now)
    assert wire_b.datagrams == []
    assert engine_b.core.drops == plain_b.core.drops
    assert list(engine_b.core.take_actions()) == list(plain_b.core.take_actions())


def test_a_tcp_run_is_merged_into_one_super_frame_with_a_virtio_net_header() -> None:
    """Five full segments, one Ethernet header: one write, which the kernel cuts back."""
    net, a, b = pair(seed=8)
    run = [
        frame(
            HOST_B,
            HOST_A,
            ref.tcp_packet(A4, B4, n * 1000, os.urandom(1000), ident=n),
            ethertype=0x0800,
        )
        for n in range(5)
    ]
    datagrams = send_plainly(a, run, net.now)
    wire = Wire()
    engine = FrameEngine(b.core, send=wire.send, write=wire.write, vnet_hdr=True)
    batch = b"".join(d for d, _ in datagrams)
    engine.datagrams_from_network(memoryview(batch), len(datagrams[0][0]), A_ENDPOINT, net.now)
    engine.write_frames()
    assert len(wire.writes) == 1
    assert wire.frames(vnet_hdr=True) == run
