"""Segmentation and coalescing (minivpn.framing.offload) against the slow reference.

Two central properties, each checked with hypothesis against ``tests/helpers/gso_reference.py``
(written field by field from the kernel's rules, not from the code under test):

* cutting a TUN read (:func:`segments`) gives exactly the packets the kernel would have sent
  without the offload, checksums included;
* cutting every planned write (:func:`coalesce`) back into segments, as the kernel does with a
  GSO super-packet, gives back exactly the packets that went in, in order -- and the merged
  checksum is right for the merged bytes, and wrong when one segment was damaged.

``tests/netns/test_offload_kernel.py`` checks the same against the kernel itself.
"""

from __future__ import annotations

import contextlib
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import gso_reference as ref
from tests.helpers.packets import packed, pseudo_header, reference_checksum

from minivpn.framing.offload import (
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    OffloadError,
    checksum,
    coalesce,
    ones_complement_sum,
    segments,
)

A4, B4 = "10.9.0.1", "10.9.0.2"
A6, B6 = "fd00:9::1", "fd00:9::2"
TIMESTAMPS = b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP timestamp: the options Linux sends


def cut(frame: bytes) -> list[bytes]:
    """What :func:`segments` makes of a frame (copied: each packet is valid only until the next)."""
    return [bytes(packet) for packet in segments(memoryview(bytearray(frame)))]


def views(packets: list[bytes]) -> list[memoryview]:
    return [memoryview(p) for p in packets]


def expand(packets: list[bytes]) -> list[bytes]:
    return [q for write in coalesce(views(packets)) for q in ref.resegment(write)]


# --- checksums -----------------------------------------------------------------------------------


@given(st.binary(max_size=5000))
def test_the_checksum_is_rfc_1071(data: bytes) -> None:
    if any(data):
        assert checksum(ones_complement_sum(data)) == reference_checksum(data)


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_sums_add_up_across_even_pieces(first: bytes, second: bytes) -> None:
    first += b"\0" * (len(first) % 2)
    data = first + second
    if any(data):
        total = ones_complement_sum(first) + ones_complement_sum(second)
        assert checksum(total) == reference_checksum(data)


def test_all_ones_data_checks_to_zero() -> None:
    """Ones' complement addition of non-zero words never gives +0: the checksum is 0."""
    assert (
        checksum(ones_complement_sum(b"\xff\xff" * 10)) == 0 == reference_checksum(b"\xff\xff" * 10)
    )


# --- segments(): the send side -------------------------------------------------------------------


def test_a_plain_packet_comes_back_as_it_is() -> None:
    packet = ref.udp_packet(A4, B4, b"hello")
    assert cut(ref.plain_frame(packet)) == [packet]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("make", ["tcp", "udp"])
def test_a_partial_checksum_is_completed(v6: bool, make: str) -> None:
    src, dst = (A6, B6) if v6 else (A4, B4)
    if make == "tcp":
        packet = ref.tcp_packet(src, dst, 1, b"payload" * 30, flags=ref.ACK | ref.PSH)
    else:
        packet = ref.udp_packet(src, dst, b"datagram" * 30)
    frame = ref.plain_frame(packet, needs_csum=True)
    assert frame[VNET_HDR_LEN:] != packet  # the checksum field held only the pseudo-header
    assert cut(frame) == [packet]


def test_a_tcp_super_packet_becomes_the_segments_of_the_kernel() -> None:
    mss = 1000
    payload = os.urandom(4 * mss + 123)
    whole = ref.tcp_packet(
        A4, B4, 2**32 - 1500, payload, flags=ref.ACK | ref.PSH | ref.CWR, options=TIMESTAMPS
    )
    packets = cut(ref.tso_frame(whole, mss))
    assert packets == ref.split(ref.tso_frame(whole, mss))
    assert [len(p) for p in packets] == [20 + 32 + mss] * 4 + [20 + 32 + 123]
    seqs = [struct.unpack_from("!I", p, 24)[0] for p in packets]
    assert seqs == [(2**32 - 1500 + i * mss) % 2**32 for i in range(5)]  # it wraps
    flags = [p[33] for p in packets]
    assert flags == [ref.ACK | ref.CWR] + [ref.ACK] * 3 + [ref.ACK | ref.PSH]
    assert [struct.unpack_from("!H", p, 4)[0] for p in packets] == [0, 1, 2, 3, 4]
    assert b"".join(p[52:] for p in packets) == payload


@st.composite
def super_packets(draw: st.DrawFn) -> tuple[bytes, int]:
    """A TCP or UDP packet over v4 or v6 and a segment size: one TSO/USO read."""
    v6 = draw(st.booleans())
    src, dst = (A6, B6) if v6 else (A4, B4)
    mss = draw(st.integers(1, 1500))
    size = draw(st.integers(1, min(60000, mss * 45)))
    payload = draw(st.binary(min_size=size, max_size=size)) if size < 300 else os.urandom(size)
    if draw(st.integers(0, 4)) == 0:
        packet = ref.udp_packet(src, dst, payload, ident=draw(st.integers(0, 0xFFFF)))
    else:
        flags = draw(st.sampled_from([ref.ACK, ref.ACK | ref.PSH, ref.ACK | ref.FIN | ref.PSH]))
        if draw(st.booleans()):
            flags |= ref.CWR | ref.ECE
        packet = ref.tcp_packet(
            src,
            dst,
            draw(st.integers(0, 2**32 - 1)),
            payload,
            flags=flags,
            options=draw(st.sampled_from([b"", TIMESTAMPS])),
            ident=draw(st.integers(0, 0xFFFF)),
        )
    return ref.tso_frame(packet, mss), mss


@settings(max_examples=300, deadline=None)
@given(super_packets())
def test_segments_match_the_reference(case: tuple[bytes, int]) -> None:
    frame, _ = case
    assert cut(frame) == ref.split(frame)


@pytest.mark.parametrize(
    "header",
    [
        VNET_HDR.pack(0, 3, 0, 1000, 20, 16),  # GSO type 3 (UFO) is gone from the kernel
        VNET_HDR.pack(1, 0, 0, 0, 0, 16),  # a checksum starting at 0
        VNET_HDR.pack(1, 0, 0, 0, 20, 200),  # a checksum past the packet
        VNET_HDR.pack(1, 1, 0, 0, 20, 16),  # TSO with no segment size
    ],
)
def test_a_header_that_makes_no_sense_raises_offload_error(header: bytes) -> None:
    packet = ref.tcp_packet(A4, B4, 1, b"x" * 100)
    with pytest.raises(OffloadError):
        cut(header + packet)


@given(st.binary(min_size=VNET_HDR_LEN, max_size=200))
def test_arbitrary_reads_raise_nothing_but_offload_error(frame: bytes) -> None:
    with contextlib.suppress(OffloadError):
        cut(frame)


# --- coalesce(): the receive side ----------------------------------------------------------------


def segment(
    seq: int,
    data: bytes,
    *,
    flags: int = ref.ACK,
    v6: bool = False,
    sport: int = 40000,
    ack: int = 7,
    options: bytes = b"",
    ident: int | None = None,
) -> bytes:
    src, dst = (A6, B6) if v6 else (A4, B4)
    return ref.tcp_packet(
        src,
        dst,
        seq,
        data,
        flags=flags,
        sport=sport,
        ack=ack,
        options=options,
        ident=(seq // 100) & 0xFFFF if ident is None else ident,
    )


def run(count: int, size: int, **fields: object) -> list[bytes]:
    """Consecutive full segments of one flow (IPv4 identifications counting up)."""
    return [
        segment(i * size, bytes([i]) * size, ident=100 + i, **fields)  # type: ignore[arg-type]
        for i in range(count)
    ]


def test_a_run_of_full_segments_becomes_one_write() -> None:
    packets = run(5, 1000)
    writes = coalesce(views(packets))
    assert len(writes) == 1
    flags, gso_type, hdr_len, gso_size, _, _ = VNET_HDR.unpack(bytes(writes[0][0]))
    # Not NEEDS_CSUM: the kernel checks the merged checksum against the bytes.
    assert (flags, gso_type, hdr_len, gso_size) == (0, 1, 40, 1000)
    merged = b"".join(bytes(b) for b in writes[0][1:])
    assert len(merged) == 40 + 5000
    assert struct.unpack_from("!H", merged, 2)[0] == 5040
    assert reference_checksum(merged[:20]) == 0  # a valid IPv4 header checksum
    pseudo = pseudo_header(packed(A4), packed(B4), ref.TCP, 20 + 5000)
    assert reference_checksum(pseudo + merged[20:]) == 0  # a valid TCP checksum over everything
    assert merged[40:] == b"".join(bytes([i]) * 1000 for i in range(5))
    assert ref.resegment(writes[0]) == packets


def test_ipv6_runs_merge_with_tcpv6() -> None:
    packets = [segment(i * 1200, os.urandom(1200), v6=True) for i in range(3)]
    (write,) = coalesce(views(packets))
    flags, gso_type, hdr_len, gso_size, _, _ = VNET_HDR.unpack(bytes(write[0]))
    assert (flags, gso_type, hdr_len, gso_size) == (0, 4, 60, 1200)
    assert ref.resegment(write) == packets


def test_a_damaged_segment_makes_the_merged_checksum_wrong() -> None:
    """The payload sums come from the segments' own checksums: damage shows in the merge."""
    packets = run(4, 800)
    damaged = bytearray(packets[2])
    damaged[500] ^= 0x01
    packets[2] = bytes(damaged)
    (write,) = coalesce(views(packets))
    with pytest.raises(AssertionError, match="bad merged checksum"):
        ref.resegment(write)


def test_psh_ends_a_run_and_a_short_segment_is_last() -> None:
    packets = [
        segment(0, b"a" * 100, ident=1),
        segment(100, b"b" * 100, flags=ref.ACK | ref.PSH, ident=2),
        segment(200, b"c" * 100, ident=3),
        segment(300, b"d" * 40, ident=4),
        segment(340, b"e" * 100, ident=5),
    ]
    writes = coalesce(views(packets))
    assert [len(ref.resegment(w)) for w in writes] == [2, 2, 1]
    merged = b"".join(bytes(b) for b in writes[0][1:])
    assert merged[33] == ref.ACK | ref.PSH  # the PSH of the run's last segment survives
    assert expand(packets) == packets


def test_what_must_not_merge_goes_out_alone() -> None:
    packets = [
        segment(0, b"a" * 100, ident=1),
        segment(150, b"b" * 100, ident=2),  # a gap in the sequence
        segment(250, b"c" * 100, ack=8, ident=3),  # another ACK number
        segment(350, b"d" * 100, sport=1, ident=4),  # another flow
        segment(450, b"e" * 100, options=TIMESTAMPS, ident=5),  # other options
        segment(550, b"f" * 100, ident=9),  # an identification out of order
        ref.udp_packet(A4, B4, b"u" * 100),  # not TCP
        segment(650, b"", ident=10),  # no payload
    ]
    writes = coalesce(views(packets))
    assert len(writes) == len(packets)
    for write, packet in zip(writes, packets, strict=True):
        assert write[0] == ZERO_VNET_HDR
        assert bytes(write[1]) == packet


def test_a_run_stays_within_one_ip_packet() -> None:
    packets = run(60, 1400)
    writes = coalesce(views(packets))
    assert len(writes) > 1
    for write in writes:
        assert sum(len(b) for b in write[1:]) <= 65535
    assert expand(packets) == packets


flows = st.sampled_from([(40000, False), (40001, False), (40000, True)])


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """Interleaved TCP streams with gaps, odd sizes and PSH, plus a little UDP."""
    seqs: dict[tuple[int, bool], int] = {}
    idents: dict[tuple[int, bool], int] = {}
    packets = []
    for _ in range(draw(st.integers(0, 40))):
        if draw(st.integers(0, 9)) == 0:
            packets.append(ref.udp_packet(A4, B4, b"u" * draw(st.integers(0, 50))))
            continue
        flow = draw(flows)
        seq = seqs.get(flow, draw(st.integers(0, 2**32 - 1)))
        ident = idents.get(flow, draw(st.integers(0, 0xFFFF)))
        if draw(st.integers(0, 9)) == 0:
            seq = (seq + draw(st.integers(1, 500))) & 0xFFFFFFFF  # a gap
        size = draw(st.sampled_from([1200, 1200, 1200, 1, 300, 1199]))
        flags = ref.ACK | ref.PSH if draw(st.integers(0, 6)) == 0 else ref.ACK
        sport, is_v6 = flow
        packets.append(
            segment(seq, os.urandom(size), flags=flags, v6=is_v6, sport=sport, ident=ident)
        )
        seqs[flow] = (seq + size) & 0xFFFFFFFF
        idents[flow] = (ident + 1) & 0xFFFF
    return packets


@settings(max_examples=300, deadline=None)
@given(batches())
def test_writes_expand_back_to_the_packets(packets: list[bytes]) -> None:
    assert expand(packets) == packets


@given(st.lists(st.binary(max_size=120), max_size=10))
def test_arbitrary_bytes_never_raise(blobs: list[bytes]) -> None:
    writes = coalesce(views(blobs))
    assert sum(len(w) for w in writes) >= len(writes)


def _v4_segment(seq: int, data: bytes, ident: int, **fields: int) -> bytes:
    """A TCP segment in IPv4 with one IP or TCP field changed afterwards (checksums redone)."""
    packet = bytearray(segment(seq, data, ident=ident))
    if "tos" in fields:
        packet[1] = fields["tos"]
    if "ttl" in fields:
        packet[8] = fields["ttl"]
    if "df" in fields:
        packet[6] = 0x40 if fields["df"] else 0
    if "window" in fields:
        struct.pack_into("!H", packet, 34, fields["window"])
    if "urgent" in fields:
        struct.pack_into("!H", packet, 38, fields["urgent"])
    packet[10:12] = b"\0\0"
    struct.pack_into("!H", packet, 10, reference_checksum(bytes(packet[:20])))
    packet[36:38] = b"\0\0"
    pseudo = pseudo_header(packed(A4), packed(B4), ref.TCP, len(packet) - 20)
    struct.pack_into("!H", packet, 36, reference_checksum(pseudo + bytes(packet[20:])))
    return bytes(packet)


@pytest.mark.parametrize(
    "field",
    [{"tos": 0x02}, {"ttl": 63}, {"df": 0}, {"window": 1000}, {"urgent": 5}],
    ids=["TOS/ECN", "TTL", "DF", "window", "urgent pointer"],
)
def test_a_header_field_that_differs_ends_the_run(field: dict[str, int]) -> None:
    packets = [
        _v4_segment(0, b"a" * 100, 1),
        _v4_segment(100, b"b" * 100, 2),
        _v4_segment(200, b"c" * 100, 3, **field),
    ]
    writes = coalesce(views(packets))
    assert [len(ref.resegment(w)) for w in writes] == [2, 1]
    assert expand(packets) == packets
