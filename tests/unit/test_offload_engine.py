"""The offload engine against the per-packet path: the same traffic, the same bytes.

Two identical pairs of cores (same keys, same random streams, the same handshake) get the same
random traffic.  One pair takes it one packet at a time, the plain way: every TUN read cut into
packets by the slow reference segmenter (``tests/helpers/gso_reference.py``), then
``encapsulate``; every datagram through ``decapsulate`` on its own.  The other pair takes it
through :class:`~minivpn.offload_engine.OffloadEngine`: TSO super-packets cut by
``framing.offload.segments``, datagrams laid out in trains, UDP GRO batches, TCP runs merged
into super-packets.  The datagrams on the wire must be byte for byte the same, the packets
delivered (the engine's merged writes cut back into segments, as the kernel does) the same,
and so must the drop counters and every other action.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import gso_reference as ref
from tests.helpers.wgnet import A_ENDPOINT, established

from minivpn.offload_engine import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, OffloadEngine
from minivpn.wireguard.results import WriteToNetwork, WriteToTunnel

if TYPE_CHECKING:
    from minivpn.framing.offload import Buffer
    from minivpn.wireguard.core import WireGuardCore
    from minivpn.wireguard.events import Endpoint

A4, B4, A6, B6 = "10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"
NOWHERE = "10.0.0.99"  # in no peer's allowed IPs
MTU = 1420
TIMESTAMPS = b"\x01\x01\x08\x0a" + bytes(8)


@st.composite
def tun_reads(draw: st.DrawFn) -> bytes:
    """One read from A's TUN device: a TSO/USO super-packet or a plain packet."""
    v6 = draw(st.booleans())
    src, dst = (A6, B6) if v6 else (A4, B4)
    ip_len = 40 if v6 else 20
    kind = draw(st.sampled_from(["tso", "tso", "tso", "uso", "udp", "icmp", "tcp", "nowhere"]))
    if kind == "tso":
        options = draw(st.sampled_from([b"", TIMESTAMPS]))
        mss = draw(st.integers(1, MTU - ip_len - 20 - len(options)))
        size = draw(st.integers(1, min(20_000, 45 * mss)))
        flags = draw(st.sampled_from([ref.ACK, ref.ACK | ref.PSH, ref.ACK | ref.FIN]))
        packet = ref.tcp_packet(
            src,
            dst,
            draw(st.integers(0, 2**32 - 1)),
            os.urandom(size),
            flags=flags,
            options=options,
            ident=draw(st.integers(0, 0xFFFF)),
        )
        return ref.tso_frame(packet, mss)
    if kind == "uso":
        size = draw(st.integers(1, MTU - ip_len - 8))
        packet = ref.udp_packet(src, dst, os.urandom(draw(st.integers(1, 8 * size))))
        return ref.tso_frame(packet, size)
    if kind == "udp":
        packet = ref.udp_packet(src, dst, os.urandom(draw(st.integers(0, MTU - ip_len - 8))))
        return ref.plain_frame(packet, needs_csum=draw(st.booleans()))
    if kind == "icmp":
        echo = b"\x08\x00\x00\x00" + os.urandom(draw(st.integers(0, 100)))
        return ref.plain_frame(ref.ip_packet(src, dst, 58 if v6 else 1, echo))
    if kind == "tcp":
        payload = os.urandom(draw(st.integers(0, 200)))
        packet = ref.tcp_packet(src, dst, draw(st.integers(0, 2**32 - 1)), payload)
        return ref.plain_frame(packet, needs_csum=draw(st.booleans()))
    return ref.plain_frame(ref.udp_packet(A4, NOWHERE, b"lost"))


class Wire:
    """Records what an engine sends and writes."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, Endpoint]] = []
        self.writes: list[list[bytes]] = []

    def send(self, datagrams: memoryview, size: int, endpoint: Endpoint) -> None:
        assert 0 < len(datagrams) <= GSO_MAX_BYTES + MTU
        count = -(-len(datagrams) // size)
        assert count <= GSO_MAX_SEGMENTS
        for start in range(0, len(datagrams), size):
            self.datagrams.append((bytes(datagrams[start : start + size]), endpoint))

    def write(self, buffers: list[Buffer]) -> None:
        self.writes.append([bytes(b) for b in buffers])


def send_plainly(
    core: WireGuardCore, reads: list[bytes], now: float
) -> list[tuple[bytes, Endpoint]]:
    out = memoryview(bytearray(65535))
    datagrams = []
    for frame in reads:
        for packet in ref.split(frame):
            result = core.encapsulate(packet, out, now)
            if isinstance(result, WriteToNetwork):
                datagrams.append((bytes(out[: result.size]), result.endpoint))
    return datagrams


def receive_plainly(core: WireGuardCore, datagrams: list[bytes], now: float) -> list[bytes]:
    out = memoryview(bytearray(65535))
    delivered = []
    for datagram in datagrams:
        result = core.decapsulate(A_ENDPOINT, datagram, out, now)
        assert not isinstance(result, WriteToNetwork)  # no handshake in this traffic
        if isinstance(result, WriteToTunnel):
            delivered.append(bytes(out[: result.size]))
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
    reads=st.lists(tun_reads(), min_size=1, max_size=12),
    flushes=st.lists(st.booleans(), min_size=12, max_size=12),
    data=st.data(),
)
def test_engine_and_per_packet_path_give_the_same_bytes(
    reads: list[bytes], flushes: list[bool], data: st.DataObject
) -> None:
    _, plain_a, plain_b = established(seed=5)
    net, engine_a, engine_b = established(seed=5)
    now = net.now

    # The way out: A's reads.
    wire_a = Wire()
    engine = OffloadEngine(engine_a.core, send=wire_a.send, write=wire_a.write)
    for frame, flush in zip(reads, flushes, strict=False):
        engine.packets_from_tun(memoryview(bytearray(frame)), now)
        if flush:
            engine.send_trains()  # a drain ends here: the TUN device was empty
    engine.send_trains()
    expected = send_plainly(plain_a.core, reads, now)
    assert wire_a.datagrams == expected
    assert engine_a.core.drops == plain_a.core.drops
    assert list(engine_a.core.take_actions()) == list(plain_a.core.take_actions())

    # The way in: B receives them, with garbage and replays mixed in, in GRO batches.
    datagrams = [datagram for datagram, _ in expected]
    for _ in range(data.draw(st.integers(0, 5))):
        where = data.draw(st.integers(0, len(datagrams)))
        if datagrams and data.draw(st.booleans()):
            datagrams.insert(where, datagrams[data.draw(st.integers(0, len(datagrams) - 1))])
        else:
            datagrams.insert(where, data.draw(st.binary(min_size=1, max_size=200)))
    cuts = data.draw(st.lists(st.booleans(), min_size=len(datagrams), max_size=len(datagrams)))
    wire_b = Wire()
    engine = OffloadEngine(engine_b.core, send=wire_b.send, write=wire_b.write)
    for batch, segment in gro_batches(datagrams, cuts):
        if not engine.has_room() or data.draw(st.booleans()):
            engine.write_packets()
        engine.datagrams_from_network(memoryview(batch), segment, A_ENDPOINT, now)
    engine.write_packets()
    delivered = [packet for write in wire_b.writes for packet in ref.resegment(write)]
    assert delivered == receive_plainly(plain_b.core, datagrams, now)
    assert wire_b.datagrams == []
    assert engine_b.core.drops == plain_b.core.drops
    assert list(engine_b.core.take_actions()) == list(plain_b.core.take_actions())


def test_a_full_tso_read_goes_out_as_one_train_per_64_kb() -> None:
    """45 segments of 1368 bytes: one sendmsg carries as many as fit 65,000 bytes."""
    net, a, _ = established(seed=6)
    packet = ref.tcp_packet(A4, B4, 0, os.urandom(45 * 1368), options=TIMESTAMPS)
    wire = Wire()
    trains: list[int] = []

    def send(datagrams: memoryview, size: int, endpoint: Endpoint) -> None:
        trains.append(len(datagrams) // size)
        wire.send(datagrams, size, endpoint)

    engine = OffloadEngine(a.core, send=send, write=wire.write)
    engine.packets_from_tun(memoryview(bytearray(ref.tso_frame(packet, 1368))), net.now)
    engine.send_trains()
    assert len(wire.datagrams) == 45
    assert {len(d) for d, _ in wire.datagrams} == {16 + 1420 + 16}
    assert trains == [44, 1]  # 44 * 1452 bytes fit in 65,000


def test_a_rekey_in_the_middle_of_the_traffic() -> None:
    """Old-session data, the initiation, then new-session data confirming B's ``next``."""
    plain_net, plain_a, plain_b = established(seed=7)
    engine_net, engine_a, engine_b = established(seed=7)
    wire = Wire()
    engine = OffloadEngine(engine_b.core, send=wire.send, write=wire.write)
    out = memoryview(bytearray(65535))

    def a_sends(payload: bytes) -> list[bytes]:
        """What both A's send for one packet (the same bytes), actions included."""
        sent = []
        for net, a in ((plain_net, plain_a), (engine_net, engine_a)):
            result = a.core.encapsulate(ref.udp_packet(A4, B4, payload), out, net.now)
            datagrams = [bytes(out[: result.size])] if isinstance(result, WriteToNetwork) else []
            datagrams += [bytes(x.data) for x in a.core.take_actions() if hasattr(x, "data")]
            sent.append(datagrams)
        assert sent[0] == sent[1]
        return sent[0]

    def b_receives(datagrams: list[bytes]) -> list[bytes]:
        now = plain_net.now
        replies = []
        for datagram in datagrams:
            result = plain_b.core.decapsulate(A_ENDPOINT, datagram, out, now)
            if isinstance(result, WriteToNetwork):
                replies.append(bytes(out[: result.size]))
        for batch, segment in gro_batches(datagrams, [False] * len(datagrams)):
            engine.datagrams_from_network(memoryview(batch), segment, A_ENDPOINT, now)
        engine.write_packets()
        assert [datagram for datagram, _ in wire.datagrams] == replies
        wire.datagrams.clear()
        return replies

    old = [d for n in range(3) for d in a_sends(b"old %d" % n)]
    for net in (plain_net, engine_net):
        net.now += 121.0  # past REKEY_AFTER_TIME: A's next packet starts a handshake
        net.wall += 121.0
    trigger = a_sends(b"trigger")
    assert [d[0] for d in trigger] == [4, 1]  # the data, then the initiation
    (response,) = b_receives(old + trigger)
    for net, a in ((plain_net, plain_a), (engine_net, engine_a)):
        a.core.decapsulate(("192.0.2.2", 51820), response, out, net.now)
        a.core.take_actions()  # the keepalive that confirms the keys
    new = [d for n in range(3) for d in a_sends(b"new %d" % n)]
    assert plain_b.peer(plain_a).keypairs.next is not None
    b_receives(new)
    assert plain_b.peer(plain_a).keypairs.next is None  # confirmed: promoted to current
    assert engine_b.peer(engine_a).keypairs.next is None
    delivered = [packet for write in wire.writes for packet in ref.resegment(write)]
    expected = [ref.udp_packet(A4, B4, p) for p in [b"old 0", b"old 1", b"old 2", b"trigger"]]
    expected += [ref.udp_packet(A4, B4, b"new %d" % n) for n in range(3)]
    assert delivered == expected
    assert engine_b.core.drops == plain_b.core.drops


def test_handshake_messages_go_to_the_sink_and_data_goes_on() -> None:
    """With a handshake sink (the runtime's queue), the engine decrypts data messages only.

    A cookie reply in the middle of a GRO batch of data messages of its very size (64 bytes; an
    attacker can send from the peer's address and port) reaches the sink, not the core; the
    data around it is delivered as without it.
    """
    net, a, b = established(seed=8)
    wire = Wire()
    sunk: list[tuple[bytes, Endpoint, float]] = []

    def sink(datagram: memoryview, source: Endpoint, now: float) -> None:
        sunk.append((bytes(datagram), source, now))

    engine = OffloadEngine(b.core, send=wire.send, write=wire.write, handshake=sink)
    out = memoryview(bytearray(65535))
    packets = [ref.udp_packet(A4, B4, bytes(n)) for n in range(3)]  # 28-30 bytes, padded to 32
    data = []
    for packet in packets:
        result = a.core.encapsulate(packet, out, net.now)
        assert isinstance(result, WriteToNetwork)
        data.append(bytes(out[: result.size]))
    assert {len(d) for d in data} == {64}  # the size of a cookie reply
    cookie_reply = bytes([3, 0, 0, 0]) + os.urandom(60)
    batch = data[0] + cookie_reply + data[1] + data[2]
    drops_before = dict(b.core.drops)
    engine.datagrams_from_network(memoryview(batch), 64, A_ENDPOINT, net.now)
    engine.write_packets()
    assert sunk == [(cookie_reply, A_ENDPOINT, net.now)]
    assert b.core.drops == drops_before  # the core never saw it
    delivered = [packet for write in wire.writes for packet in ref.resegment(write)]
    assert delivered == packets
    assert wire.datagrams == []
