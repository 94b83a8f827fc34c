"""The four WireGuard messages, byte for byte.

Every message starts with a 4-byte little-endian word holding the message type (1 to 4); on the
wire that is one type byte followed by three zero bytes, and a receiver insists on the zeros.
All integers are little-endian.  Handshake-class messages have one exact size, and a receiver drops
anything else; a data message is at least 32 bytes (an empty, "keepalive", one).

Handshake initiation, type 1, 148 bytes::

    0       4        8            40                 88                116    132    148
    | type  | sender | ephemeral  | encrypted static | encrypted time  | mac1 | mac2 |
              u32      32           32 + 16 tag        12 + 16 tag       16     16

Handshake response, type 2, 92 bytes::

    0       4        8          12           44                60     76     92
    | type  | sender | receiver | ephemeral  | encrypted empty | mac1 | mac2 |
              u32      u32        32           0 + 16 tag        16     16

Cookie reply, type 3, 64 bytes::

    0       4          8        32                 64
    | type  | receiver | nonce  | encrypted cookie |
              u32        24       16 + 16 tag

Transport data, type 4, 32 bytes or more::

    0       4          8         16
    | type  | receiver | counter | encrypted, zero-padded IP packet + 16 tag |
              u32        u64

``sender`` is an index the sender picked so that replies can name it (``receiver``); ``mac1`` and
``mac2`` are described in :mod:`minivpn.wireguard.cookie`.

Handshake messages are parsed into frozen value objects.  Data messages are the hot path: the
receive loop reads the header with :func:`parse_transport_header_untrusted` and decrypts the bytes
from :data:`TRANSPORT_HEADER_SIZE` on in place, without building an object per packet.
"""

from __future__ import annotations

import enum
import struct
from typing import TYPE_CHECKING

import attrs

from minivpn.wireguard.errors import InvalidMessage

if TYPE_CHECKING:
    from collections.abc import Callable

#: Anything the parsers accept.
Buffer = bytes | bytearray | memoryview


class MessageType(enum.IntEnum):
    """The value of the first 4-byte word of each message."""

    HANDSHAKE_INITIATION = 1
    HANDSHAKE_RESPONSE = 2
    COOKIE_REPLY = 3
    TRANSPORT_DATA = 4


INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
#: Bytes before the ciphertext of a data message: type, receiver, counter.
TRANSPORT_HEADER_SIZE = 16
#: The smallest data message: a header and the tag of an empty plaintext (a keepalive).
KEEPALIVE_SIZE = TRANSPORT_HEADER_SIZE + 16
TRANSPORT_OFFSET_RECEIVER = 4
TRANSPORT_OFFSET_COUNTER = 8
TRANSPORT_OFFSET_CONTENT = 16
#: mac1 and mac2 are the last 32 bytes of the two handshake messages.
MAC_SIZE = 16
MACS_SIZE = 2 * MAC_SIZE

_U32_LIMIT = 1 << 32
_U64_LIMIT = 1 << 64

_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
_TRANSPORT_HEADER = struct.Struct("<IIQ")
_TYPE_WORD = struct.Struct("<I")

assert _INITIATION.size == INITIATION_SIZE
assert _RESPONSE.size == RESPONSE_SIZE
assert _COOKIE_REPLY.size == COOKIE_REPLY_SIZE
assert _TRANSPORT_HEADER.size == TRANSPORT_HEADER_SIZE


def _u32(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value < _U32_LIMIT:
        raise ValueError(f"{attribute.name} must be an unsigned 32-bit integer, got {value}")


def _u64(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value < _U64_LIMIT:
        raise ValueError(f"{attribute.name} must be an unsigned 64-bit integer, got {value}")


def _exactly(size: int) -> Callable[[object, attrs.Attribute[bytes], bytes], None]:
    def check(_instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
        if len(value) != size:
            raise ValueError(f"{attribute.name} must be {size} bytes, got {len(value)}")

    return check


_ZERO_MAC = bytes(MAC_SIZE)


@attrs.frozen
class HandshakeInitiation:
    """Message 1: the initiator's ephemeral key, its encrypted static key and timestamp."""

    sender: int = attrs.field(validator=_u32)
    ephemeral: bytes = attrs.field(validator=_exactly(32))
    encrypted_static: bytes = attrs.field(validator=_exactly(32 + 16))
    encrypted_timestamp: bytes = attrs.field(validator=_exactly(12 + 16))
    mac1: bytes = attrs.field(default=_ZERO_MAC, validator=_exactly(MAC_SIZE))
    mac2: bytes = attrs.field(default=_ZERO_MAC, validator=_exactly(MAC_SIZE))

    def to_bytes(self) -> bytes:
        """Encode the message (148 bytes)."""
        return _INITIATION.pack(
            MessageType.HANDSHAKE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )


@attrs.frozen
class HandshakeResponse:
    """Message 2: the responder's ephemeral key and an empty AEAD that proves the handshake."""

    sender: int = attrs.field(validator=_u32)
    receiver: int = attrs.field(validator=_u32)
    ephemeral: bytes = attrs.field(validator=_exactly(32))
    encrypted_nothing: bytes = attrs.field(validator=_exactly(16))
    mac1: bytes = attrs.field(default=_ZERO_MAC, validator=_exactly(MAC_SIZE))
    mac2: bytes = attrs.field(default=_ZERO_MAC, validator=_exactly(MAC_SIZE))

    def to_bytes(self) -> bytes:
        """Encode the message (92 bytes)."""
        return _RESPONSE.pack(
            MessageType.HANDSHAKE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )


@attrs.frozen
class CookieReply:
    """Message 3: "you are sending too much, prove your address with this cookie"."""

    receiver: int = attrs.field(validator=_u32)
    nonce: bytes = attrs.field(validator=_exactly(24))
    encrypted_cookie: bytes = attrs.field(validator=_exactly(16 + 16))

    def to_bytes(self) -> bytes:
        """Encode the message (64 bytes)."""
        return _COOKIE_REPLY.pack(
            MessageType.COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )


@attrs.frozen
class TransportData:
    """Message 4 as a value object (the hot path uses the header functions instead)."""

    receiver: int = attrs.field(validator=_u32)
    counter: int = attrs.field(validator=_u64)
    encrypted_packet: bytes = attrs.field()

    @encrypted_packet.validator
    def _check_room_for_tag(self, _attribute: attrs.Attribute[bytes], value: bytes) -> None:
        if len(value) < KEEPALIVE_SIZE - TRANSPORT_HEADER_SIZE:
            raise ValueError(f"encrypted_packet must be at least 16 bytes, got {len(value)}")

    def to_bytes(self) -> bytes:
        """Encode the message (16 bytes of header, then the ciphertext)."""
        return transport_header(self.receiver, self.counter) + self.encrypted_packet


Message = HandshakeInitiation | HandshakeResponse | CookieReply | TransportData


def message_type_untrusted(data: Buffer) -> MessageType:
    """Classify a datagram by its type word and its length, as WireGuard receivers do.

    Raises:
        InvalidMessage: the type word is not 1-4 (this includes non-zero reserved bytes), or the
            length is wrong for that type.
    """
    if len(data) < 4:
        raise InvalidMessage(f"datagram of {len(data)} bytes is too short for a WireGuard message")
    (word,) = _TYPE_WORD.unpack_from(data)
    size = len(data)
    if word == MessageType.TRANSPORT_DATA:
        if size < KEEPALIVE_SIZE:
            raise InvalidMessage(f"transport message of {size} bytes, need at least 32")
        return MessageType.TRANSPORT_DATA
    if word == MessageType.HANDSHAKE_INITIATION:
        expected = INITIATION_SIZE
    elif word == MessageType.HANDSHAKE_RESPONSE:
        expected = RESPONSE_SIZE
    elif word == MessageType.COOKIE_REPLY:
        expected = COOKIE_REPLY_SIZE
    else:
        raise InvalidMessage(f"unknown message type word 0x{word:08x}")
    if size != expected:
        raise InvalidMessage(f"{MessageType(word).name} of {size} bytes, expected {expected}")
    return MessageType(word)


def parse_message_untrusted(data: Buffer) -> Message:
    """Parse any WireGuard message (the data message's ciphertext is copied out).

    Raises:
        InvalidMessage: the bytes are not a well-formed message; see :func:`message_type_untrusted`.
    """
    kind = message_type_untrusted(data)
    if kind is MessageType.HANDSHAKE_INITIATION:
        _, sender, ephemeral, static, timestamp, mac1, mac2 = _INITIATION.unpack(data)
        return HandshakeInitiation(sender, ephemeral, static, timestamp, mac1, mac2)
    if kind is MessageType.HANDSHAKE_RESPONSE:
        _, sender, receiver, ephemeral, nothing, mac1, mac2 = _RESPONSE.unpack(data)
        return HandshakeResponse(sender, receiver, ephemeral, nothing, mac1, mac2)
    if kind is MessageType.COOKIE_REPLY:
        _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
        return CookieReply(receiver, nonce, cookie)
    _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
    return TransportData(receiver, counter, bytes(data[TRANSPORT_HEADER_SIZE:]))


def parse_transport_header_untrusted(data: Buffer) -> tuple[int, int]:
    """Read ``(receiver, counter)`` from a data message without copying its payload.

    The ciphertext is ``data[TRANSPORT_OFFSET_CONTENT:]``.

    Raises:
        InvalidMessage: ``data`` is not a transport message of at least 32 bytes.
    """
    if len(data) < KEEPALIVE_SIZE:
        raise InvalidMessage(f"transport message of {len(data)} bytes, need at least 32")
    word, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
    if word != MessageType.TRANSPORT_DATA:
        raise InvalidMessage(f"not a transport message: type word 0x{word:08x}")
    return receiver, counter


def transport_header(receiver: int, counter: int) -> bytes:
    """Encode the 16-byte header of a data message."""
    return _TRANSPORT_HEADER.pack(MessageType.TRANSPORT_DATA, receiver, counter)


def pack_transport_header_into(buffer: bytearray | memoryview, receiver: int, counter: int) -> None:
    """Write the 16-byte header of a data message at the start of ``buffer`` (no allocation)."""
    _TRANSPORT_HEADER.pack_into(buffer, 0, MessageType.TRANSPORT_DATA, receiver, counter)
