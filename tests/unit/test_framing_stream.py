"""Tests for the 2-byte length-prefix stream framing (minivpn.framing.stream)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivpn.framing.errors import FrameTooLarge, FramingError, MalformedPacket
from minivpn.framing.stream import MAX_FRAME, FrameDecoder, encode_frame

_packets = st.binary(min_size=1, max_size=2000)


def test_encoding_is_big_endian_length_then_packet() -> None:
    assert encode_frame(b"\x45abc") == b"\x00\x04\x45abc"
    assert encode_frame(bytearray(300))[:2] == b"\x01\x2c"
    assert encode_frame(memoryview(b"xy")) == b"\x00\x02xy"


def test_encode_rejects_empty_and_oversize() -> None:
    with pytest.raises(MalformedPacket):
        encode_frame(b"")
    assert len(encode_frame(bytes(MAX_FRAME))) == MAX_FRAME + 2
    with pytest.raises(FrameTooLarge):
        encode_frame(bytes(MAX_FRAME + 1))
    with pytest.raises(FrameTooLarge):
        encode_frame(bytes(1501), max_frame=1500)


@st.composite
def _frames_and_chunks(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """A list of packets and their framed stream, cut at arbitrary points."""
    packets = draw(st.lists(_packets, max_size=20))
    stream = b"".join(struct.pack("!H", len(packet)) + packet for packet in packets)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[start:end] for start, end in itertools.pairwise(bounds)]
    return packets, chunks


@given(case=_frames_and_chunks())
def test_any_chunking_yields_exactly_the_packets(case: tuple[list[bytes], list[bytes]]) -> None:
    packets, chunks = case
    decoder = FrameDecoder()
    received = []
    for chunk in chunks:
        received += decoder.feed_and_drain(memoryview(chunk))
    assert received == packets
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


@given(packets=st.lists(_packets, max_size=10))
def test_encode_then_decode_round_trip(packets: list[bytes]) -> None:
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(packet) for packet in packets))
    assert list(decoder.frames()) == packets


def test_byte_at_a_time() -> None:
    stream = encode_frame(b"first") + encode_frame(b"second")
    decoder = FrameDecoder()
    received = []
    for index in range(len(stream)):
        decoder.feed(stream[index : index + 1])
        frame = decoder.next_frame()
        if frame is not None:
            received.append(frame)
    assert received == [b"first", b"second"]


def test_incomplete_frame_waits_and_is_counted_as_buffered() -> None:
    decoder = FrameDecoder()
    assert decoder.feed_and_drain(b"\x00\x05abc") == []
    assert decoder.buffered == 5
    assert decoder.feed_and_drain(b"de\x00") == [b"abcde"]
    assert decoder.buffered == 1


def test_long_stream_in_large_reads() -> None:
    """Enough data to make the decoder drop consumed bytes many times over."""
    packets = [bytes([index % 256]) * (1 + index % 1400) for index in range(3000)]
    stream = b"".join(encode_frame(packet) for packet in packets)
    decoder = FrameDecoder()
    received = []
    for start in range(0, len(stream), 65536 + 7):
        received += decoder.feed_and_drain(stream[start : start + 65536 + 7])
    assert received == packets
    assert decoder.buffered == 0


def test_frames_are_independent_bytes() -> None:
    decoder = FrameDecoder()
    first, second = decoder.feed_and_drain(encode_frame(b"one") + encode_frame(b"two"))
    decoder.feed_and_drain(encode_frame(b"three") * 100)
    assert (first, second) == (b"one", b"two")
    assert isinstance(first, bytes)


def test_oversize_frame_breaks_the_decoder_for_good() -> None:
    decoder = FrameDecoder(max_frame=1500)
    frames = decoder.feed_and_drain(encode_frame(b"ok"))
    assert frames == [b"ok"]
    with pytest.raises(FrameTooLarge):
        decoder.feed_and_drain(struct.pack("!H", 1501) + bytes(1501))
    assert decoder.broken
    with pytest.raises(FramingError):
        decoder.feed(encode_frame(b"later"))
    with pytest.raises(FramingError):
        decoder.next_frame()


def test_zero_length_frame_is_malformed_and_breaks_the_decoder() -> None:
    decoder = FrameDecoder()
    with pytest.raises(MalformedPacket):
        decoder.feed_and_drain(b"\x00\x00" + encode_frame(b"x"))
    with pytest.raises(FramingError):
        decoder.feed_and_drain(b"")


def test_frames_before_a_bad_one_are_delivered_first() -> None:
    decoder = FrameDecoder(max_frame=100)
    decoder.feed(encode_frame(b"good") + struct.pack("!H", 101))
    assert decoder.next_frame() == b"good"
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()

    decoder = FrameDecoder(max_frame=100)
    decoder.feed(encode_frame(b"one") + encode_frame(b"two") + b"\x00\x00")
    frames = decoder.frames()
    assert next(frames) == b"one"
    assert next(frames) == b"two"
    with pytest.raises(MalformedPacket):
        next(frames)


@pytest.mark.parametrize("max_frame", [0, -1, MAX_FRAME + 1])
def test_max_frame_must_be_in_range(max_frame: int) -> None:
    with pytest.raises(ValueError, match="max_frame"):
        FrameDecoder(max_frame=max_frame)


@given(chunks=st.lists(st.binary(max_size=300), max_size=10), max_frame=st.integers(1, MAX_FRAME))
def test_arbitrary_bytes_only_raise_framing_errors(chunks: list[bytes], max_frame: int) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    try:
        for chunk in chunks:
            for frame in decoder.feed_and_drain(chunk):
                assert 1 <= len(frame) <= max_frame
    except FramingError:
        assert decoder.broken
