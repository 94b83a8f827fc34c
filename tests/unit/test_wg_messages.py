"""Tests for minivpn.wireguard.messages: exact layouts, round trips, hostile bytes."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivpn.wireguard.errors import InvalidMessage
from minivpn.wireguard.messages import (
    CookieReply,
    HandshakeInitiation,
    HandshakeResponse,
    Message,
    MessageType,
    TransportData,
    message_type_untrusted,
    pack_transport_header_into,
    parse_message_untrusted,
    parse_transport_header_untrusted,
    transport_header,
)

u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)


def blob(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


initiations = st.builds(HandshakeInitiation, u32, blob(32), blob(48), blob(28), blob(16), blob(16))
responses = st.builds(HandshakeResponse, u32, u32, blob(32), blob(16), blob(16), blob(16))
cookie_replies = st.builds(CookieReply, u32, blob(24), blob(32))
transports = st.builds(TransportData, u32, u64, st.binary(min_size=16, max_size=200))
messages = st.one_of(initiations, responses, cookie_replies, transports)


def filled(size: int, byte: int) -> bytes:
    return bytes([byte]) * size


# --- layouts, checked against the offsets of the protocol description ----------------------------
# (ANCHORS section 3.2, wireguard-go device/noise-protocol.go).  Each field is filled with a
# distinct byte so a misplaced field cannot go unnoticed.


def test_initiation_layout() -> None:
    message = HandshakeInitiation(
        0x04030201,
        filled(32, 0xE0),
        filled(48, 0x5A),
        filled(28, 0x7B),
        filled(16, 0xA1),
        filled(16, 0xA2),
    )
    data = message.to_bytes()
    assert len(data) == 148
    assert data[0:4] == b"\x01\x00\x00\x00"
    assert data[4:8] == b"\x01\x02\x03\x04"  # little-endian
    assert data[8:40] == filled(32, 0xE0)
    assert data[40:88] == filled(48, 0x5A)
    assert data[88:116] == filled(28, 0x7B)
    assert data[116:132] == filled(16, 0xA1)
    assert data[132:148] == filled(16, 0xA2)


def test_response_layout() -> None:
    message = HandshakeResponse(
        0x04030201,
        0x08070605,
        filled(32, 0xE0),
        filled(16, 0x5A),
        filled(16, 0xA1),
        filled(16, 0xA2),
    )
    data = message.to_bytes()
    assert len(data) == 92
    assert data[0:4] == b"\x02\x00\x00\x00"
    assert data[4:8] == b"\x01\x02\x03\x04"
    assert data[8:12] == b"\x05\x06\x07\x08"
    assert data[12:44] == filled(32, 0xE0)
    assert data[44:60] == filled(16, 0x5A)
    assert data[60:76] == filled(16, 0xA1)
    assert data[76:92] == filled(16, 0xA2)


def test_cookie_reply_layout() -> None:
    data = CookieReply(0x04030201, filled(24, 0x11), filled(32, 0x22)).to_bytes()
    assert len(data) == 64
    assert data[0:4] == b"\x03\x00\x00\x00"
    assert data[4:8] == b"\x01\x02\x03\x04"
    assert data[8:32] == filled(24, 0x11)
    assert data[32:64] == filled(32, 0x22)


def test_transport_layout() -> None:
    data = TransportData(0x04030201, 0x0C0B0A0908070605, filled(20, 0x33)).to_bytes()
    assert data[0:4] == b"\x04\x00\x00\x00"
    assert data[4:8] == b"\x01\x02\x03\x04"
    assert data[8:16] == bytes(range(5, 13))  # u64 little-endian
    assert data[16:] == filled(20, 0x33)
    assert transport_header(0x04030201, 0x0C0B0A0908070605) == data[:16]


# --- round trips ---------------------------------------------------------------------------------


@given(messages)
def test_parse_inverts_to_bytes(message: Message) -> None:
    data = message.to_bytes()
    assert parse_message_untrusted(data) == message
    assert parse_message_untrusted(bytearray(data)) == message
    assert parse_message_untrusted(memoryview(data)) == message
    assert int(message_type_untrusted(data)) == data[0]


@given(u32, u64, st.binary(min_size=16, max_size=100))
def test_transport_header_fast_path(receiver: int, counter: int, ciphertext: bytes) -> None:
    datagram = bytearray(16 + len(ciphertext))
    pack_transport_header_into(datagram, receiver, counter)
    datagram[16:] = ciphertext
    assert bytes(datagram) == TransportData(receiver, counter, ciphertext).to_bytes()
    assert parse_transport_header_untrusted(memoryview(datagram)) == (receiver, counter)


# --- hostile input -------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_invalid_message(data: bytes) -> None:
    for parse in (
        parse_message_untrusted,
        message_type_untrusted,
        parse_transport_header_untrusted,
    ):
        with contextlib.suppress(InvalidMessage):
            parse(data)


@given(st.integers(min_value=0, max_value=6), st.integers(min_value=0, max_value=200), st.data())
def test_plausible_headers_only_raise_invalid_message(
    kind: int, size: int, data: st.DataObject
) -> None:
    # Random bytes rarely start with a valid type word; this reaches the per-type checks.
    body = data.draw(blob(size))
    datagram = (bytes([kind, 0, 0, 0]) + body)[:size]
    try:
        message = parse_message_untrusted(datagram)
    except InvalidMessage:
        return
    assert message.to_bytes() == datagram


@pytest.mark.parametrize(
    ("kind", "size"),
    [(1, 148), (2, 92), (3, 64), (4, 32), (4, 1500)],
)
def test_the_exact_sizes_are_accepted(kind: int, size: int) -> None:
    datagram = bytes([kind, 0, 0, 0]) + bytes(size - 4)
    assert message_type_untrusted(datagram) is MessageType(kind)
    assert parse_message_untrusted(datagram).to_bytes() == datagram


@pytest.mark.parametrize(
    ("kind", "size"),
    [(1, 147), (1, 149), (1, 92), (2, 91), (2, 93), (2, 148), (3, 63), (3, 65), (4, 31), (4, 16)],
)
def test_wrong_sizes_are_refused(kind: int, size: int) -> None:
    datagram = bytes([kind, 0, 0, 0]) + bytes(size - 4)
    with pytest.raises(InvalidMessage):
        parse_message_untrusted(datagram)


@pytest.mark.parametrize("reserved", [1, 2, 3])
@pytest.mark.parametrize(("kind", "size"), [(1, 148), (2, 92), (3, 64), (4, 32)])
def test_nonzero_reserved_bytes_are_refused(reserved: int, kind: int, size: int) -> None:
    datagram = bytearray([kind, 0, 0, 0]) + bytes(size - 4)
    datagram[reserved] = 0x80
    with pytest.raises(InvalidMessage):
        parse_message_untrusted(datagram)
    if kind == 4:
        with pytest.raises(InvalidMessage):
            parse_transport_header_untrusted(datagram)


@pytest.mark.parametrize("kind", [0, 5, 255])
def test_unknown_types_are_refused(kind: int) -> None:
    with pytest.raises(InvalidMessage, match="unknown"):
        parse_message_untrusted(bytes([kind, 0, 0, 0]) + bytes(60))


def test_transport_fast_path_refuses_other_types_and_short_data() -> None:
    with pytest.raises(InvalidMessage):
        parse_transport_header_untrusted(bytes([1, 0, 0, 0]) + bytes(144))
    with pytest.raises(InvalidMessage):
        parse_transport_header_untrusted(bytes([4, 0, 0, 0]) + bytes(27))
    with pytest.raises(InvalidMessage):
        parse_transport_header_untrusted(b"")


# --- building messages checks field sizes ------------------------------------------------------


def test_fields_are_validated_when_building() -> None:
    with pytest.raises(ValueError, match="sender"):
        HandshakeInitiation(2**32, bytes(32), bytes(48), bytes(28))
    with pytest.raises(ValueError, match="ephemeral"):
        HandshakeResponse(1, 2, bytes(31), bytes(16))
    with pytest.raises(ValueError, match="counter"):
        TransportData(1, 2**64, bytes(16))
    with pytest.raises(ValueError, match="at least 16"):
        TransportData(1, 0, bytes(15))
    with pytest.raises(struct.error):
        transport_header(-1, 0)


def test_handshake_macs_default_to_zero() -> None:
    data = HandshakeInitiation(1, bytes(32), bytes(48), bytes(28)).to_bytes()
    assert data[-32:] == bytes(32)
