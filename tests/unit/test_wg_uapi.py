"""Tests of the UAPI request parser and response writer (minivpn.wireguard.uapi).

The errno expected for each malformed request here is checked against a real wireguard-go by
tests/netns/test_uapi_reference.py.
"""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from minivpn.wireguard.uapi import (
    EINVAL,
    EIO,
    EPROTO,
    MAX_LINE,
    SET_SLICE_LINES,
    AllowedIPChange,
    CloseConnection,
    DeviceSet,
    DeviceSnapshot,
    GetRequest,
    PeerSet,
    PeerSnapshot,
    RequestError,
    SetRequest,
    UapiError,
    UapiEvent,
    UapiRequestParser,
    format_allowed_ip,
    format_endpoint,
    format_errno,
    format_get_response,
    format_set_request,
    parse_get_response,
)

PRIVATE = PrivateKey(bytes(range(1, 33)))
PEER1 = PublicKey(bytes(range(100, 132)))
PEER2 = PublicKey(bytes(range(200, 232)))
PSK = PresharedKey(bytes(range(50, 82)))
HEX1 = bytes(range(100, 132)).hex()
HEX2 = bytes(range(200, 232)).hex()


def parse(data: bytes) -> list[UapiEvent]:
    parser = UapiRequestParser()
    return parser.feed(data)


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


# --- set requests ---------------------------------------------------------------------------------


def test_a_request_as_wg_setconf_sends_it() -> None:
    request = (
        "set=1\n"
        f"private_key={bytes(range(1, 33)).hex()}\n"
        "listen_port=51820\n"
        "fwmark=0\n"
        "replace_peers=true\n"
        f"public_key={HEX1}\n"
        f"preshared_key={bytes(range(50, 82)).hex()}\n"
        "endpoint=[fd00::1]:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.0.0.0/24\n"
        "allowed_ip=fd00::/64\n"
        f"public_key={HEX2.upper()}\n"
        "endpoint=198.51.100.2:1\n"
        "replace_allowed_ips=true\n"
        "\n"
    ).encode()
    assert parse(request) == [
        SetRequest(
            DeviceSet(private_key=PRIVATE, listen_port=51820, fwmark=0, replace_peers=True),
            (
                PeerSet(
                    PEER1,
                    preshared_key=PSK,
                    endpoint=(ipaddress.IPv6Address("fd00::1"), 51820),
                    persistent_keepalive_interval=25,
                    replace_allowed_ips=True,
                    allowed_ips=(
                        AllowedIPChange(net("10.0.0.0/24")),
                        AllowedIPChange(net("fd00::/64")),
                    ),
                ),
                PeerSet(
                    PEER2,
                    endpoint=(ipaddress.IPv4Address("198.51.100.2"), 1),
                    replace_allowed_ips=True,
                ),
            ),
        )
    ]


def test_private_key_is_clamped_and_zero_means_clear() -> None:
    unclamped = bytes([0xFF] * 32)
    (event,) = parse(f"set=1\nprivate_key={unclamped.hex()}\n\n".encode())
    assert isinstance(event, SetRequest)
    assert event.device.private_key is not None
    raw = event.device.private_key.raw
    assert raw[0] == 0xF8
    assert raw[31] == 0x7F
    (event,) = parse(f"set=1\nprivate_key={'0' * 64}\n\n".encode())
    assert isinstance(event, SetRequest)
    assert event.device.private_key is not None
    assert event.device.private_key.is_zero()


def test_allowed_ip_removal_and_host_bits() -> None:
    (event,) = parse(
        f"set=1\npublic_key={HEX1}\nallowed_ip=10.1.2.3/8\nallowed_ip=-fd00::1/64\n\n".encode()
    )
    assert isinstance(event, SetRequest)
    assert event.peers[0].allowed_ips == (
        AllowedIPChange(net("10.0.0.0/8")),
        AllowedIPChange(net("fd00::/64"), remove=True),
    )


def test_normalisation_of_remove_update_only_and_replace() -> None:
    request = (
        "set=1\n"
        f"public_key={HEX1}\nallowed_ip=10.0.0.0/8\nremove=true\nendpoint=1.2.3.4:5\n"
        f"public_key={HEX2}\nallowed_ip=10.1.0.0/16\nreplace_allowed_ips=true\n"
        "allowed_ip=10.2.0.0/16\nupdate_only=true\nprotocol_version=1\n"
        "\n"
    ).encode()
    (event,) = parse(request)
    assert event == SetRequest(
        DeviceSet(),
        (
            PeerSet(PEER1, remove=True),
            PeerSet(
                PEER2,
                update_only=True,
                replace_allowed_ips=True,
                allowed_ips=(AllowedIPChange(net("10.2.0.0/16")),),
            ),
        ),
    )


def test_same_peer_twice_gives_two_parts() -> None:
    (event,) = parse(
        f"set=1\npublic_key={HEX1}\nallowed_ip=10.0.0.0/8\npublic_key={HEX1}\n\n".encode()
    )
    assert isinstance(event, SetRequest)
    assert [p.public_key for p in event.peers] == [PEER1, PEER1]


# (request lines after "set=1", errno): verified against wireguard-go by the netns test.
SET_ERRORS = [
    ("listen_port=abc", EINVAL),
    ("listen_port=65536", EINVAL),
    ("listen_port=-1", EINVAL),
    ("listen_port=+1", EINVAL),
    ("listen_port=", EINVAL),
    ("fwmark=4294967296", EINVAL),
    ("fwmark=0x10", EINVAL),
    ("no_equals_sign", EPROTO),
    ("", 0),
    ("foo=bar", EINVAL),
    ("=", EINVAL),
    ("replace_peers=yes", EINVAL),
    ("private_key=abc", EINVAL),
    (f"private_key={'g' * 64}", EINVAL),
    (f"private_key={'a' * 66}", EINVAL),
    ("public_key=xyz", EINVAL),
    (f"public_key={HEX1}\nlisten_port=1", EINVAL),
    (f"public_key={HEX1}\nallowed_ip=garbage", EINVAL),
    (f"public_key={HEX1}\nallowed_ip=10.0.0.0/33", EINVAL),
    (f"public_key={HEX1}\nallowed_ip=10.0.0.0", EINVAL),
    (f"public_key={HEX1}\nallowed_ip=fd00::/129", EINVAL),
    (f"public_key={HEX1}\nendpoint=garbage", EINVAL),
    (f"public_key={HEX1}\nendpoint=1.2.3.4", EINVAL),
    (f"public_key={HEX1}\nendpoint=fd00::1:5", EINVAL),
    (f"public_key={HEX1}\nendpoint=[1.2.3.4]:5", EINVAL),
    (f"public_key={HEX1}\nendpoint=1.2.3.4:65536", EINVAL),
    (f"public_key={HEX1}\nendpoint=01.2.3.4:5", EINVAL),
    (f"public_key={HEX1}\npersistent_keepalive_interval=65536", EINVAL),
    (f"public_key={HEX1}\npreshared_key=00", EINVAL),
    (f"public_key={HEX1}\nprotocol_version=2", EINVAL),
    (f"public_key={HEX1}\nremove=false", EINVAL),
    (f"public_key={HEX1}\nupdate_only=1", EINVAL),
    (f"public_key={HEX1}\nreplace_allowed_ips=True", EINVAL),
    (f"public_key={HEX1}\nwhatever=1", EINVAL),
    (f"public_key={HEX1}\nno_equals_sign", EPROTO),
    (f"public_key={HEX1}\nendpoint=1.2.3.4:0\nallowed_ip=::ffff:1.2.3.4/128", 0),
    ("fwmark=1\r", 0),
]


@pytest.mark.parametrize(("lines", "errno"), SET_ERRORS)
def test_set_errors(lines: str, errno: int) -> None:
    events = parse(f"set=1\n{lines}\n\n".encode())
    assert isinstance(events[0], SetRequest)
    assert events[0].errno == errno
    assert format_errno(events[0].errno) == f"errno={errno}\n\n".encode()


def test_error_midway_keeps_what_came_before_and_skips_the_rest() -> None:
    request = (
        "set=1\nfwmark=77\n"
        f"public_key={HEX1}\nallowed_ip=10.0.0.0/8\n"
        f"public_key={HEX2}\nallowed_ip=10.1.0.0/16\nendpoint=bad\nallowed_ip=10.2.0.0/16\n"
        f"public_key={HEX1}\n"
        "\n"
        "get=1\n\n"
    ).encode()
    events = parse(request)
    assert events == [
        SetRequest(
            DeviceSet(fwmark=77),
            (
                PeerSet(PEER1, allowed_ips=(AllowedIPChange(net("10.0.0.0/8")),)),
                PeerSet(PEER2, allowed_ips=(AllowedIPChange(net("10.1.0.0/16")),)),
            ),
            errno=EINVAL,
        ),
        GetRequest(),
    ]
    assert isinstance(events[0], SetRequest)
    assert "endpoint" in events[0].message


def test_messages_never_contain_keys() -> None:
    secret = bytes(range(1, 33)).hex()
    for lines in (f"private_key={secret}x", f"private_key={secret[:-1]}", f"{secret}"):
        (event,) = parse(f"set=1\n{lines}\n\n".encode())
        assert isinstance(event, SetRequest)
        assert secret[:32] not in event.message


def test_endpoint_errors_never_show_a_pasted_key() -> None:
    secret = bytes(range(1, 33)).hex()
    for value in (f"{secret}:51820", f"[{secret}]:51820", f"{secret}:51820:1", secret):
        (event,) = parse(f"set=1\npublic_key={HEX1}\nendpoint={value}\n\n".encode())
        assert isinstance(event, SetRequest)
        assert event.errno == EINVAL
        assert secret[:24] not in event.message, event.message
        assert secret[24:48] not in event.message, event.message


def test_several_operations_on_one_connection_in_any_chunks() -> None:
    stream = (
        b"get=1\n\n"
        b"set=1\nlisten_port=1\n\n"
        b"get=1\nx"  # a trailing character: EINVAL, the byte is consumed
        b"get=1\n\n"
        b"set=1\r\n"  # not an operation: close
        b"get=1\n\n"
    )
    expected = [
        GetRequest(),
        SetRequest(DeviceSet(listen_port=1)),
        RequestError(EINVAL),
        GetRequest(),
        CloseConnection("invalid operation"),
    ]
    assert parse(stream) == expected
    parser = UapiRequestParser()
    byte_by_byte = [event for i in range(len(stream)) for event in parser.feed(stream[i : i + 1])]
    assert byte_by_byte == expected
    assert parser.closed
    assert parser.feed(b"get=1\n\n") == []


def test_eof_applies_a_set_in_progress_like_wireguard_go() -> None:
    parser = UapiRequestParser()
    assert parser.feed(b"set=1\nfwmark=1\nlisten_port=7") == []
    assert parser.feed_eof() == [SetRequest(DeviceSet(fwmark=1, listen_port=7))]
    assert parser.closed
    parser = UapiRequestParser()
    assert parser.feed(b"get=1\n") == []
    assert parser.feed_eof() == []  # wireguard-go needs the second newline to answer
    parser = UapiRequestParser()
    parser.feed(b"set=1\nlisten_port=x")
    (event,) = parser.feed_eof()
    assert isinstance(event, SetRequest)
    assert event.errno == EINVAL


def test_overlong_lines() -> None:
    parser = UapiRequestParser()
    events = parser.feed(b"hello, this is not an operation")
    assert events == [CloseConnection("invalid operation")]
    parser = UapiRequestParser()
    events = parser.feed(b"set=1\nfwmark=3\nlisten_port=" + b"1" * (MAX_LINE + 1))
    assert events == [SetRequest(DeviceSet(fwmark=3), errno=EIO), CloseConnection("line too long")]
    # The same when the long line's newline arrives in the same chunk.
    events = UapiRequestParser().feed(b"set=1\nfwmark=3\nlisten_port=" + b"1" * MAX_LINE + b"\n")
    assert events == [SetRequest(DeviceSet(fwmark=3), errno=EIO), CloseConnection("line too long")]


# --- slices: a set of any length ------------------------------------------------------------------


def _prefixes(count: int, start: int = 0) -> list[str]:
    return [f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}/32" for n in range(start, start + count)]


def test_a_long_set_comes_in_slices_that_add_up_to_the_request() -> None:
    prefixes = _prefixes(3 * SET_SLICE_LINES)
    lines = ["set=1", "fwmark=9", f"public_key={HEX1}", "update_only=true"]
    lines += [f"allowed_ip={p}" for p in prefixes]
    lines += [f"public_key={HEX2}", "remove=true", "allowed_ip=10.255.0.0/16"]
    events = parse(("\n".join(lines) + "\n\n").encode())
    assert all(isinstance(event, SetRequest) for event in events)
    requests = [event for event in events if isinstance(event, SetRequest)]
    assert [r.more for r in requests] == [True, True, True, False]
    assert [r.device for r in requests] == [DeviceSet(fwmark=9)] + [DeviceSet()] * 3
    # Each slice holds SET_SLICE_LINES lines (the first counts set=1's lines from fwmark on).
    assert [sum(len(p.allowed_ips) for p in r.peers) for r in requests] == [
        SET_SLICE_LINES - 3,
        SET_SLICE_LINES,
        SET_SLICE_LINES,
        3,
    ]
    # PEER1's part spans four slices and keeps its update_only in each.
    parts = [part for r in requests for part in r.peers]
    assert [part.public_key for part in parts] == [PEER1] * 4 + [PEER2]
    assert all(part.update_only for part in parts[:4])
    assert [str(c.network) for part in parts[:4] for c in part.allowed_ips] == prefixes
    assert parts[4] == PeerSet(PEER2, remove=True)


def test_remove_is_carried_into_the_next_slices() -> None:
    lines = ["set=1", f"public_key={HEX1}", "remove=true"]
    lines += [f"allowed_ip={p}" for p in _prefixes(2 * SET_SLICE_LINES)]
    requests = parse(("\n".join(lines) + "\n\n").encode())
    assert len(requests) == 3
    for request in requests:
        assert isinstance(request, SetRequest)
        assert request.peers == (PeerSet(PEER1, remove=True),)


def test_an_endless_set_never_holds_more_than_a_slice() -> None:
    """Lines are handed over as they arrive, the request never ends: nothing piles up."""
    parser = UapiRequestParser()
    parser.feed(f"set=1\npublic_key={HEX1}\n".encode())
    handed_over = 0
    fed = 1
    chunk = b"allowed_ip=10.0.0.1/32\n" * 500
    for _ in range(200):
        events = parser.feed(chunk)
        fed += 500
        for event in events:
            assert isinstance(event, SetRequest)
            assert event.more
            handed_over += len(event.peers[0].allowed_ips)
        assert 0 <= fed - handed_over <= SET_SLICE_LINES
    assert handed_over >= 100_000 - SET_SLICE_LINES


def test_a_bad_line_after_some_slices_ends_the_request_with_its_errno() -> None:
    lines = ["set=1", f"public_key={HEX1}"]
    lines += [f"allowed_ip={p}" for p in _prefixes(SET_SLICE_LINES + 10)]
    lines += ["allowed_ip=300.0.0.0/8", "allowed_ip=10.200.0.0/16", "", "get=1", ""]
    events = parse(("\n".join(lines) + "\n").encode())
    first, last, get = events
    assert isinstance(first, SetRequest)
    assert first.more
    assert isinstance(last, SetRequest)
    assert not last.more
    assert last.errno == EINVAL
    assert len(last.peers[0].allowed_ips) == 11  # those after the slice, before the bad line
    assert get == GetRequest()


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=80), max_size=8), st.booleans())
def test_arbitrary_bytes_never_raise(chunks: list[bytes], eof: bool) -> None:
    parser = UapiRequestParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    if eof:
        events += parser.feed_eof()
    for event in events:
        assert isinstance(event, GetRequest | SetRequest | RequestError | CloseConnection)
        if isinstance(event, SetRequest | RequestError):
            assert event.errno in (0, EINVAL, EPROTO, EIO)


_line_fragments = st.sampled_from(
    [
        b"set=1\n",
        b"get=1\n",
        b"\n",
        b"\r\n",
        f"public_key={HEX1}\n".encode(),
        b"private_key=" + b"0" * 64 + b"\n",
        b"allowed_ip=10.0.0.0/8\n",
        b"allowed_ip=-fd00::/8\n",
        b"allowed_ip=",
        b"endpoint=[fd00::1]:5\n",
        b"endpoint=[",
        b"listen_port=",
        b"remove=true\n",
        b"=",
        b"%",
        b"/",
        b"\xff",
    ]
)


@settings(max_examples=500)
@given(st.lists(st.one_of(_line_fragments, st.binary(max_size=4)), max_size=20), st.data())
def test_protocol_like_bytes_never_raise_and_chunking_does_not_matter(
    fragments: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(fragments)
    whole = UapiRequestParser()
    expected = whole.feed(stream) + whole.feed_eof()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunked = UapiRequestParser()
    got: list[UapiEvent] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += chunked.feed(stream[start:end])
    got += chunked.feed_eof()
    assert got == expected


# --- round trips ----------------------------------------------------------------------------------

_keys32 = st.binary(min_size=32, max_size=32)
_ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
_networks = st.one_of(
    st.tuples(_ipv4, st.integers(0, 32)).map(lambda t: ipaddress.ip_network(t, strict=False)),
    st.tuples(_ipv6, st.integers(0, 128)).map(lambda t: ipaddress.ip_network(t, strict=False)),
)
_peer_sets = st.builds(
    PeerSet,
    public_key=_keys32.map(PublicKey),
    update_only=st.booleans(),
    preshared_key=st.one_of(st.none(), _keys32.map(PresharedKey)),
    endpoint=st.one_of(st.none(), st.tuples(st.one_of(_ipv4, _ipv6), st.integers(0, 65535))),
    persistent_keepalive_interval=st.one_of(st.none(), st.integers(0, 65535)),
    replace_allowed_ips=st.booleans(),
    allowed_ips=st.lists(st.builds(AllowedIPChange, _networks, st.booleans()), max_size=4).map(
        tuple
    ),
) | st.builds(PeerSet, public_key=_keys32.map(PublicKey), remove=st.just(True))
_device_sets = st.builds(
    DeviceSet,
    private_key=st.one_of(st.none(), _keys32.map(PrivateKey)),
    listen_port=st.one_of(st.none(), st.integers(0, 65535)),
    fwmark=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    replace_peers=st.booleans(),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(device=_device_sets, peers=st.lists(_peer_sets, max_size=4))
def test_set_request_round_trip(device: DeviceSet, peers: list[PeerSet]) -> None:
    assert parse(format_set_request(device, peers)) == [SetRequest(device, tuple(peers))]


def test_get_response_exact_bytes() -> None:
    snapshot = DeviceSnapshot(
        private_key=PRIVATE,
        listen_port=51820,
        fwmark=0x1234,
        peers=(
            PeerSnapshot(
                PEER1,
                preshared_key=PSK,
                endpoint="[fd00::2]:51820",
                last_handshake_time_sec=1700000000,
                last_handshake_time_nsec=5,
                tx_bytes=100,
                rx_bytes=200,
                persistent_keepalive_interval=25,
                allowed_ips=("10.0.0.2/32", "fd00::2/128"),
            ),
            PeerSnapshot(PEER2),
        ),
    )
    expected = (
        f"private_key={PRIVATE.raw.hex()}\n"
        "listen_port=51820\n"
        "fwmark=4660\n"
        f"public_key={HEX1}\n"
        f"preshared_key={bytes(range(50, 82)).hex()}\n"
        "protocol_version=1\n"
        "endpoint=[fd00::2]:51820\n"
        "last_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=5\n"
        "tx_bytes=100\n"
        "rx_bytes=200\n"
        "persistent_keepalive_interval=25\n"
        "allowed_ip=10.0.0.2/32\n"
        "allowed_ip=fd00::2/128\n"
        f"public_key={HEX2}\n"
        f"preshared_key={'0' * 64}\n"
        "protocol_version=1\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
        "errno=0\n"
        "\n"
    ).encode()
    assert format_get_response(snapshot) == expected
    assert parse_get_response(expected) == snapshot


def test_get_response_of_an_empty_device() -> None:
    assert format_get_response(DeviceSnapshot()) == b"errno=0\n\n"
    assert format_get_response(DeviceSnapshot(PrivateKey(bytes(32)))) == b"errno=0\n\n"
    assert parse_get_response("errno=0\n\n") == DeviceSnapshot()


_peer_snapshots = st.builds(
    PeerSnapshot,
    public_key=_keys32.map(PublicKey),
    preshared_key=st.one_of(st.none(), _keys32.filter(any).map(PresharedKey)),
    endpoint=st.one_of(
        st.none(),
        st.tuples(st.one_of(_ipv4, _ipv6), st.integers(0, 65535)).map(
            lambda t: format_endpoint(*t)
        ),
    ),
    last_handshake_time_sec=st.integers(0, 2**63 - 1),
    last_handshake_time_nsec=st.integers(0, 999_999_999),
    tx_bytes=st.integers(0, 2**64 - 1),
    rx_bytes=st.integers(0, 2**64 - 1),
    persistent_keepalive_interval=st.integers(0, 65535),
    allowed_ips=st.lists(_networks.map(format_allowed_ip), max_size=4).map(tuple),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    snapshot=st.builds(
        DeviceSnapshot,
        private_key=st.one_of(st.none(), _keys32.filter(any).map(PrivateKey)),
        listen_port=st.integers(0, 65535),
        fwmark=st.integers(0, 2**32 - 1),
        peers=st.lists(_peer_snapshots, max_size=4).map(tuple),
    )
)
def test_get_response_round_trip(snapshot: DeviceSnapshot) -> None:
    text = format_get_response(snapshot)
    assert parse_get_response(text) == snapshot
    assert format_get_response(parse_get_response(text)) == text


def test_parse_get_response_errors() -> None:
    with pytest.raises(UapiError) as info:
        parse_get_response(b"errno=-22\n\n")
    assert info.value.errno == EINVAL
    for bad in (
        b"",
        b"errno=0\n",
        b"listen_port=1\n\n",
        b"listen_port=x\nerrno=0\n\n",
        b"public_key=zz\nerrno=0\n\n",
        b"junk\nerrno=0\n\n",
        f"public_key={HEX1}\ntx_bytes={2**64}\nerrno=0\n\n".encode(),
    ):
        with pytest.raises(UapiError) as info:
            parse_get_response(bad)
        assert info.value.errno == EPROTO


def test_parse_get_response_skips_unknown_keys() -> None:
    text = f"listen_port=5\nfuture_key=1\npublic_key={HEX1}\nanother=2\nerrno=0\n\n"
    assert parse_get_response(text) == DeviceSnapshot(listen_port=5, peers=(PeerSnapshot(PEER1),))


@given(st.binary(max_size=200))
def test_parse_get_response_of_arbitrary_bytes_raises_only_uapi_error(data: bytes) -> None:
    with contextlib.suppress(UapiError):
        parse_get_response(data)


def test_endpoint_and_prefix_formatting_matches_go() -> None:
    # Go's netip keeps the dotted tail of IPv4-mapped addresses and shows zones.
    assert format_endpoint(ipaddress.IPv4Address("192.0.2.1"), 51820) == "192.0.2.1:51820"
    assert format_endpoint(ipaddress.IPv6Address("fd00::1"), 5) == "[fd00::1]:5"
    assert format_endpoint(ipaddress.IPv6Address("::ffff:192.0.2.1"), 5) == "[::ffff:192.0.2.1]:5"
    assert format_endpoint(ipaddress.IPv6Address("fe80::1%eth0"), 5) == "[fe80::1%eth0]:5"
    assert format_allowed_ip(net("::ffff:1.2.3.4/128")) == "::ffff:1.2.3.4/128"
    assert format_allowed_ip(net("fd00:0:0::/16")) == "fd00::/16"
    assert format_allowed_ip(net("0.0.0.0/0")) == "0.0.0.0/0"
