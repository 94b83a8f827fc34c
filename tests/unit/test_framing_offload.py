"""Receive-side TCP coalescing (minivpn.framing.offload).

The central property: cutting every planned write back into segments, as the kernel does with
a GSO super-packet, gives back exactly the packets that went in, in order -- except the fields
the kernel rewrites when it segments (IPv4 ID and header checksum, TCP checksum, PSH on all
but the last segment).  The reference segmenter here is written from the kernel's rules, not
from the code under test.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_framing_packets import ipv4, ipv6, reference_checksum, tcp, udp, v4, v6

from minivpn.framing.offload import VNET_HDR, VNET_HDR_LEN, ZERO_VNET_HDR, coalesce

ACK, PSH = 0x10, 0x08
A4, B4 = "10.9.0.1", "10.9.0.2"
A6, B6 = "fd00:9::1", "fd00:9::2"


def segment(
    seq: int,
    data: bytes,
    *,
    flags: int = ACK,
    v6: bool = False,
    sport: int = 40000,
    ack: int = 7,
    options: bytes = b"",
) -> bytes:
    body = tcp(sport, 5201, seq, ack, flags, data=data, options=options)
    return ipv6(A6, B6, 6, body) if v6 else ipv4(A4, B4, 6, body)


def views(packets: list[bytes]) -> list[memoryview]:
    return [memoryview(p) for p in packets]


def resegment(write: list[bytes | bytearray | memoryview]) -> list[bytes]:
    """What the kernel makes of one write: the packets it stands for."""
    header = bytes(write[0])
    rest = b"".join(bytes(b) for b in write[1:])
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(header)
    if gso_type == 0:
        assert header == ZERO_VNET_HDR
        return [rest]
    assert flags == 1  # NEEDS_CSUM
    assert csum_offset == 16
    ip_len = csum_start
    head, payload = rest[:hdr_len], rest[hdr_len:]
    assert len(payload) > gso_size  # a merged write holds more than one segment
    seq = struct.unpack_from("!I", head, ip_len + 4)[0]
    out = []
    for offset in range(0, len(payload), gso_size):
        chunk = payload[offset : offset + gso_size]
        h = bytearray(head)
        if ip_len == 20:
            struct.pack_into("!H", h, 2, hdr_len + len(chunk))
        else:
            struct.pack_into("!H", h, 4, hdr_len - ip_len + len(chunk))
        struct.pack_into("!I", h, ip_len + 4, (seq + offset) & 0xFFFFFFFF)
        out.append(bytes(h) + chunk)
    return out


def normalize(packet: bytes) -> bytes:
    """Blank the fields the kernel rewrites when it segments."""
    p = bytearray(packet)
    ip_len = 20 if p[0] >> 4 == 4 else 40
    if p[9 if ip_len == 20 else 6] != 6 or len(p) < ip_len + 20:
        return packet  # not TCP: written as it is
    if ip_len == 20:
        p[4:6] = b"\0\0"  # IPv4 ID
        p[10:12] = b"\0\0"  # header checksum
    p[ip_len + 13] &= ~PSH & 0xFF
    p[ip_len + 16 : ip_len + 18] = b"\0\0"  # TCP checksum
    return bytes(p)


def expand(packets: list[bytes]) -> list[bytes]:
    return [q for write in coalesce(views(packets)) for q in resegment(write)]


def test_a_run_of_full_segments_becomes_one_write() -> None:
    packets = [segment(1000 + i * 1000, bytes([i]) * 1000) for i in range(5)]
    writes = coalesce(views(packets))
    assert len(writes) == 1
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(
        bytes(writes[0][0])
    )
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, 1, 40, 1000, 20, 16)
    merged = b"".join(bytes(b) for b in writes[0][1:])
    assert len(merged) == 40 + 5000
    assert struct.unpack_from("!H", merged, 2)[0] == 5040
    assert reference_checksum(merged[:20]) == 0  # a valid IPv4 header checksum
    pseudo = v4(A4) + v4(B4) + struct.pack("!BBH", 0, 6, 20 + 5000)
    expected = 0xFFFF - reference_checksum(pseudo)  # the pseudo-header sum, not complemented
    assert struct.unpack_from("!H", merged, 36)[0] == expected
    assert merged[40:] == b"".join(bytes([i]) * 1000 for i in range(5))
    assert [normalize(p) for p in resegment(writes[0])] == [normalize(p) for p in packets]


def test_ipv6_runs_merge_with_tcpv6() -> None:
    packets = [segment(i * 1200, b"x" * 1200, v6=True) for i in range(3)]
    (write,) = coalesce(views(packets))
    flags, gso_type, hdr_len, gso_size, csum_start, _ = VNET_HDR.unpack(bytes(write[0]))
    assert (flags, gso_type, hdr_len, gso_size, csum_start) == (1, 4, 60, 1200, 40)
    merged = b"".join(bytes(b) for b in write[1:])
    assert struct.unpack_from("!H", merged, 4)[0] == 20 + 3600
    pseudo = v6(A6) + v6(B6) + struct.pack("!IxxxB", 20 + 3600, 6)
    assert struct.unpack_from("!H", merged, 56)[0] == 0xFFFF - reference_checksum(pseudo)


def test_psh_ends_a_run_and_a_short_segment_is_last() -> None:
    packets = [
        segment(0, b"a" * 100),
        segment(100, b"b" * 100, flags=ACK | PSH),
        segment(200, b"c" * 100),
        segment(300, b"d" * 40),
        segment(340, b"e" * 100),
    ]
    writes = coalesce(views(packets))
    assert [len(resegment(w)) for w in writes] == [2, 2, 1]
    merged = b"".join(bytes(b) for b in writes[0][1:])
    assert merged[33] == ACK | PSH  # the PSH of the run's last segment survives
    assert [normalize(p) for p in expand(packets)] == [normalize(p) for p in packets]


def test_what_must_not_merge_goes_out_alone() -> None:
    packets = [
        segment(0, b"a" * 100),
        segment(150, b"b" * 100),  # a gap in the sequence
        segment(250, b"c" * 100, ack=8),  # another ACK number
        segment(350, b"d" * 100, sport=1),  # another flow
        segment(450, b"e" * 100, options=b"\x01\x01\x01\x01"),  # other options
        ipv4(A4, B4, 17, udp(1, 2, b"u" * 100)),  # not TCP
        segment(550, b""),  # no payload
        ipv4(A4, B4, 6, tcp(1, 2, 0, 0, ACK, data=b"f" * 10), flags_offset=0x2001),  # fragment
    ]
    writes = coalesce(views(packets))
    assert len(writes) == len(packets)
    for write, packet in zip(writes, packets, strict=True):
        assert write[0] == ZERO_VNET_HDR
        assert bytes(write[1]) == packet


def test_a_run_stays_within_one_ip_packet() -> None:
    packets = [segment(i * 1400, b"z" * 1400) for i in range(60)]
    writes = coalesce(views(packets))
    assert len(writes) > 1
    for write in writes:
        assert sum(len(b) for b in write[1:]) <= 65535
    assert [normalize(p) for p in expand(packets)] == [normalize(p) for p in packets]


flows = st.sampled_from([(40000, False), (40001, False), (40000, True)])


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """Interleaved TCP streams with gaps, odd sizes and PSH, plus a little UDP."""
    seqs: dict[tuple[int, bool], int] = {}
    packets = []
    for _ in range(draw(st.integers(0, 40))):
        if draw(st.integers(0, 9)) == 0:
            packets.append(ipv4(A4, B4, 17, udp(1, 2, b"u" * draw(st.integers(0, 50)))))
            continue
        sport, is_v6 = draw(flows)
        seq = seqs.get((sport, is_v6), draw(st.integers(0, 2**32 - 1)))
        if draw(st.integers(0, 9)) == 0:
            seq = (seq + draw(st.integers(1, 500))) & 0xFFFFFFFF  # a gap
        size = draw(st.sampled_from([1200, 1200, 1200, 1, 300, 1199]))
        flags = ACK | PSH if draw(st.integers(0, 6)) == 0 else ACK
        packets.append(segment(seq, b"p" * size, flags=flags, v6=is_v6, sport=sport))
        seqs[(sport, is_v6)] = (seq + size) & 0xFFFFFFFF
    return packets


@settings(max_examples=300)
@given(batches())
def test_writes_expand_back_to_the_packets(packets: list[bytes]) -> None:
    assert [normalize(p) for p in expand(packets)] == [normalize(p) for p in packets]


@given(st.lists(st.binary(max_size=120), max_size=10))
def test_arbitrary_bytes_never_raise(blobs: list[bytes]) -> None:
    writes = coalesce(views(blobs))
    assert sum(len(w) for w in writes) >= len(writes)


def test_header_length_constant() -> None:
    assert VNET_HDR_LEN == 10


def _v4_segment(seq: int, data: bytes, **fields: int) -> bytes:
    """A TCP segment in IPv4 whose IP and TCP header fields can be set one by one."""
    ip_fields = {k: fields.pop(k) for k in ("ttl", "identification", "flags_offset") if k in fields}
    tos = fields.pop("tos", 0)
    body = tcp(40000, 5201, seq, 7, fields.pop("flags", ACK), data=data, **fields)
    packet = bytearray(ipv4(A4, B4, 6, body, **ip_fields))
    if tos:  # not a builder argument: set it, and redo the header checksum
        packet[1] = tos
        packet[10:12] = b"\0\0"
        packet[10:12] = struct.pack("!H", reference_checksum(bytes(packet[:20])))
    return bytes(packet)


@pytest.mark.parametrize(
    "field",
    [{"tos": 0x02}, {"ttl": 63}, {"flags_offset": 0}, {"window": 1000}, {"urgent": 5}],
    ids=["TOS/ECN", "TTL", "DF", "window", "urgent pointer"],
)
def test_a_header_field_that_differs_ends_the_run(field: dict[str, int]) -> None:
    df = 0x4000
    packets = [
        _v4_segment(0, b"a" * 100, flags_offset=df),
        _v4_segment(100, b"b" * 100, flags_offset=df),
        _v4_segment(200, b"c" * 100, **{"flags_offset": df, **field}),
    ]
    writes = coalesce(views(packets))
    assert [len(resegment(w)) for w in writes] == [2, 1]
    assert [normalize(p) for p in expand(packets)] == [normalize(p) for p in packets]


def test_what_the_kernel_rewrites_anyway_does_not_end_the_run() -> None:
    """IPv4 identification and checksums differ from segment to segment of one flow."""
    packets = [
        _v4_segment(i * 100, bytes([i]) * 100, identification=1000 + 7 * i) for i in range(4)
    ]
    assert len({p[4:6] for p in packets}) == 4  # identifications
    assert len({p[10:12] for p in packets}) == 4  # header checksums
    (write,) = coalesce(views(packets))
    assert [normalize(p) for p in resegment(write)] == [normalize(p) for p in packets]
