"""Fuzz targets: every parser of untrusted bytes, each a function of one input.

A target takes the fuzzed input and returns an *outcome*: a short label for what the parser
made of it (``"HandshakeInitiation"``, ``"MalformedPacket: pcap file too short"``,
``"dropped: replay"``).  It raises only for a bug: any exception the parser does not promise
(an ``IndexError``, a ``struct.error``, a ``UnicodeDecodeError`` ...) fails the fuzzing.  The
outcomes are how ``tests/fuzz/run.py`` (``nox -s fuzz``) chooses which inputs to keep as seeds:
the first input, then the shortest, for every outcome seen.

Each target also has seeds of its own (valid inputs built here: a real handshake, a pcap file, a
configuration), which the strategies mutate; the corpus under ``tests/fuzz/corpus/TARGET/`` adds
the inputs earlier fuzzing kept.

The targets (``TARGETS``):

=============  =====================================================================
wg_message     :func:`minivpn.wireguard.messages.parse_message_untrusted`
wg_receive     ``WireGuardCore.decapsulate`` of a live session: drops and counts anything
               bad, then still delivers the next real packet
stream         :class:`minivpn.framing.stream.FrameDecoder`, the input cut in chunks
pi             :func:`minivpn.framing.pi.parse_pi_untrusted`
decode         the ``decode_*_untrusted`` functions and :func:`summarize` (``minivpn dump``)
responder      :func:`minivpn.framing.responder.answer_untrusted` (``--answer-pings``)
pcap           :func:`minivpn.framing.pcap.read_pcap_untrusted`
offload        :func:`minivpn.framing.offload.segments` (a TUN read behind a virtio-net header)
uapi           :class:`minivpn.wireguard.uapi.UapiRequestParser`, in chunks, then EOF; and
               :func:`~minivpn.wireguard.uapi.parse_get_response`
config         :func:`minivpn.wireguard.config.parse_config`
tap_receive    ``EthernetCore.decapsulate_frame`` of a live hub (``Mode = tap``): the
               input as a datagram from a spoke, or (first byte odd) as the plaintext a
               spoke seals, so that an authenticated message with any content reaches
               the frame header and the switch; then the hub still switches frames
trace_request  :func:`minivpn.runtime.trace_server.parse_request_untrusted`: what a
               trace client sends
=============  =====================================================================
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypothesis import strategies as st

from minivpn.framing.decode import (
    Link,
    decode_arp_untrusted,
    decode_ethernet_untrusted,
    decode_icmp_untrusted,
    decode_ip_untrusted,
    decode_quoted_ip_untrusted,
    decode_tcp_untrusted,
    decode_udp_untrusted,
    inner_ip_length_untrusted,
)
from minivpn.framing.errors import FramingError
from minivpn.framing.offload import VNET_HDR, VNET_HDR_LEN, OffloadError, segments
from minivpn.framing.pcap import pcap_global_header, pcap_record, read_pcap_untrusted
from minivpn.framing.pi import build_pi, parse_pi_untrusted
from minivpn.framing.responder import answer_untrusted
from minivpn.framing.stream import FrameDecoder, encode_frame
from minivpn.framing.summary import summarize
from minivpn.runtime.trace_server import BadRequest, parse_request_untrusted
from minivpn.wireguard.config import ConfigError, parse_config
from minivpn.wireguard.errors import WireGuardError
from minivpn.wireguard.events import PacketDropped
from minivpn.wireguard.messages import parse_message_untrusted
from minivpn.wireguard.results import Dropped, WriteToNetwork, WriteToTunnel
from minivpn.wireguard.uapi import (
    CloseConnection,
    GetRequest,
    RequestError,
    SetRequest,
    UapiRequestParser,
    parse_get_response,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["TARGETS", "Target"]


def _label(exc: BaseException) -> str:
    """An exception as an outcome: its class and the words of its message, numbers removed."""
    words = re.sub(r"[0-9a-f]{6,}|\d+", "N", str(exc)).split()[:6]
    return f"{type(exc).__name__}: {' '.join(words)}"


# --- byte mutations of seeds -------------------------------------------------------------------


@st.composite
def _mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with a few bytes flipped, inserted, removed, or cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[where] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, data[where] + 1 & 0xFF]))
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[where : where + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[where:]
    return bytes(data)


def _bytes_from(
    seeds: Callable[[], tuple[bytes, ...]], max_size: int = 256
) -> st.SearchStrategy[bytes]:
    """Random bytes, or a mutated seed (seeds are built on first use)."""
    return st.one_of(st.binary(max_size=max_size), st.deferred(lambda: _mutated(seeds())))


# --- the targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One parser: its input strategy, the function, and how seeds are turned into inputs.

    Attributes:
        name: the corpus directory's name.
        strategy: the inputs (bytes for every target: a text target decodes them).
        run: the target itself: input -> outcome.
    """

    name: str
    strategy: st.SearchStrategy[bytes]
    run: Callable[[bytes], str]


def _cached(build: Callable[[], tuple[bytes, ...]]) -> Callable[[], tuple[bytes, ...]]:
    cache: list[tuple[bytes, ...]] = []

    def get() -> tuple[bytes, ...]:
        if not cache:
            cache.append(build())
        return cache[0]

    return get


# wg_message and wg_receive --------------------------------------------------------------------


def _wg_seeds() -> tuple[bytes, ...]:
    """A real initiation, response and data message (and a keepalive) of a seeded pair."""
    from tests.helpers.wgnet import a_to_b, established, pair

    net, a, _ = pair(seed=7)
    net.hold = True
    net.send(a, a_to_b(b"first"))
    initiation = net.take_held()[0]
    net.deliver(initiation)
    response = net.take_held()[0]
    net, a, _ = established(seed=7)
    net.hold = True
    net.send(a, a_to_b(b"fuzz"))
    data = net.take_held()[0]
    cookie = bytes([3, 0, 0, 0]) + bytes(4) + bytes(24) + bytes(32)
    return (initiation.data, response.data, data.data, cookie)


_wg_seeds_cached = _cached(_wg_seeds)


def wg_message(data: bytes) -> str:
    try:
        return type(parse_message_untrusted(data)).__name__
    except WireGuardError as exc:
        return _label(exc)


def wg_receive(data: bytes) -> str:
    """B of a live session takes the datagram; it must drop (and count) or accept, then serve."""
    from tests.helpers.wgnet import A_ENDPOINT, Delivered, a_to_b, established, receive_datagram

    net, a, b = established(seed=7)
    # A's counter moves past the seed data message's, which B has not seen: the seed is
    # delivered, and A's packet after the fuzzed one is not a replay of it.
    net.hold = True
    net.send(a, a_to_b(b"lost"))
    net.take_held()
    drops_before = sum(b.core.drops.values())
    out = memoryview(bytearray(max(len(data), 64)))
    result = b.core.decapsulate(A_ENDPOINT, data, out, net.now)
    actions = b.core.take_actions()
    if isinstance(result, Dropped):
        assert sum(b.core.drops.values()) == drops_before + 1, "a drop that was not counted"
        outcome = f"dropped: {result.reason.value}"
    elif isinstance(result, WriteToTunnel | WriteToNetwork):
        outcome = type(result).__name__
    else:
        outcome = type(result).__name__
    outcome += "".join(f" +{type(action).__name__}" for action in actions[:3])
    for action in actions:
        if isinstance(action, PacketDropped):
            outcome += f"({action.reason.value})"
    # And the session still serves: the next real packet from A arrives.
    net.send(a, a_to_b(b"after"))
    for datagram in net.take_held():
        delivered = receive_datagram(b.core, datagram.data, datagram.source, net.now)
        assert any(isinstance(d, Delivered) for d in delivered) or datagram.data[0] != 4, (
            f"the session stopped serving after {data.hex()}"
        )
    return outcome


# stream -----------------------------------------------------------------------------------------


def _stream_seeds() -> tuple[bytes, ...]:
    return (
        encode_frame(b"\x45" + bytes(27)) + encode_frame(bytes(100)),
        encode_frame(b"x" * 1500) + b"\x00\x00",  # a zero length: refused
        b"\xff\xff" + bytes(10),
    )


def stream(data: bytes) -> str:
    """The stream cut where its bytes say (the first byte picks the chunk size)."""
    size = (data[0] % 17 + 1) if data else 1
    decoder = FrameDecoder(max_frame=1600)
    frames = 0
    try:
        for start in range(1, len(data), size):
            frames += len(decoder.feed_and_drain(data[start : start + size]))
    except FramingError as exc:
        assert decoder.broken
        return _label(exc)
    return f"frames: {min(frames, 3)}, buffered: {min(decoder.buffered, 2)}"


# pi, decode, responder --------------------------------------------------------------------------


def _ip_seeds() -> tuple[bytes, ...]:
    from tests.helpers.wgnet import (
        A_ADDRESS,
        A_ADDRESS6,
        B_ADDRESS,
        B_ADDRESS6,
        ipv4_packet,
        ipv6_packet,
    )

    udp = struct.pack("!HHHH", 5353, 53, 12, 0) + b"data"
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    icmp = bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"ping"
    icmp6 = bytes([128, 0, 0, 0, 0, 1, 0, 1]) + b"ping"
    ethernet = (
        bytes.fromhex("ffffffffffff020000000001")
        + b"\x08\x06"
        + bytes.fromhex("0001080006040001020000000001c0000201000000000000c0000202")
    )
    return (
        ipv4_packet(A_ADDRESS, B_ADDRESS, udp),
        ipv4_packet(A_ADDRESS, B_ADDRESS, tcp, protocol=6),
        ipv4_packet(A_ADDRESS, B_ADDRESS, icmp, protocol=1),
        ipv6_packet(A_ADDRESS6, B_ADDRESS6, udp),
        ipv6_packet(A_ADDRESS6, B_ADDRESS6, icmp6, next_header=58),
        ethernet,
        bytes.fromhex("020000000002020000000001")
        + b"\x08\x00"
        + ipv4_packet(A_ADDRESS, B_ADDRESS, icmp, protocol=1),
    )


_ip_seeds_cached = _cached(_ip_seeds)


def pi(data: bytes) -> str:
    try:
        info, payload = parse_pi_untrusted(data)
    except FramingError as exc:
        return _label(exc)
    assert len(payload) == len(data) - 4
    return f"PI proto {info.proto:#06x}" if info.proto in (0x0800, 0x86DD) else "PI other"


_DECODERS = (
    decode_ethernet_untrusted,
    decode_arp_untrusted,
    decode_ip_untrusted,
    decode_quoted_ip_untrusted,
    decode_tcp_untrusted,
    decode_udp_untrusted,
    decode_icmp_untrusted,
    inner_ip_length_untrusted,
)


def decode(data: bytes) -> str:
    outcomes = []
    for decoder in _DECODERS:
        try:
            decoder(data)
            outcomes.append("ok")
        except FramingError as exc:
            outcomes.append(type(exc).__name__)
    for link in (Link.IP, Link.ETHERNET):
        line = summarize(data, link)
        assert isinstance(line, str)
        assert "\n" not in line
        outcomes.append("cut" if "[|" in line else "whole")
    return " ".join(outcomes)


def responder(data: bytes) -> str:
    outcomes = []
    for link in (Link.IP, Link.ETHERNET):
        answer = answer_untrusted(data, link, my_mac=b"\x02\x00\x00\x00\x00\x01")
        outcomes.append("none" if answer is None else f"answer {answer[:1].hex()}")
    return " ".join(outcomes)


# pcap -------------------------------------------------------------------------------------------


def _pcap_seeds() -> tuple[bytes, ...]:
    packets = _ip_seeds_cached()
    raw = pcap_global_header(101) + b"".join(pcap_record(p, 1.5 + i) for i, p in enumerate(packets))
    ethernet = pcap_global_header(1) + pcap_record(packets[5], 2.25)
    return (raw, ethernet, pcap_global_header(101))


def pcap(data: bytes) -> str:
    try:
        linktype, records = read_pcap_untrusted(data)
    except FramingError as exc:
        return _label(exc)
    for timestamp, stored in records:
        assert timestamp >= 0
        assert isinstance(stored, bytes)
    return (
        f"linktype {linktype if linktype in (1, 101) else 'other'}, {min(len(records), 3)} records"
    )


# offload ----------------------------------------------------------------------------------------


def _offload_seeds() -> tuple[bytes, ...]:
    packets = _ip_seeds_cached()
    plain = VNET_HDR.pack(0, 0, 0, 0, 0, 0) + packets[0]
    csum = VNET_HDR.pack(1, 0, 0, 0, 20, 6) + packets[0]
    tcp = packets[1] + bytes(3000)
    tso = VNET_HDR.pack(1, 1, 40, 1000, 20, 16) + tcp[:2] + len(tcp).to_bytes(2, "big") + tcp[4:]
    return (plain, csum, tso)


def offload(data: bytes) -> str:
    if len(data) < VNET_HDR_LEN:
        return "short"
    frame = memoryview(bytearray(data))
    count = 0
    try:
        for packet in segments(frame):
            assert len(packet) <= len(data)
            count += 1
    except OffloadError as exc:
        return _label(exc)
    return f"{min(count, 3)} segments"


# uapi -------------------------------------------------------------------------------------------


def _uapi_seeds() -> tuple[bytes, ...]:
    key = bytes(range(1, 33)).hex()
    return (
        b"get=1\n\n",
        (
            f"set=1\nprivate_key={key}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n"
            f"public_key={key}\npreshared_key={key}\nendpoint=[fd00::1]:51820\n"
            "replace_allowed_ips=true\nallowed_ip=10.0.0.0/8\nallowed_ip=fd00::/64\n"
            "persistent_keepalive_interval=25\nprotocol_version=1\n\n"
        ).encode(),
        f"set=1\npublic_key={key}\nremove=true\n\nget=1\n\n".encode(),
        (
            f"private_key={key}\nlisten_port=51820\npublic_key={key}\nendpoint=192.0.2.1:5\n"
            "last_handshake_time_sec=1\nlast_handshake_time_nsec=2\ntx_bytes=3\nrx_bytes=4\n"
            "persistent_keepalive_interval=0\nallowed_ip=10.0.0.0/8\nprotocol_version=1\n"
            "errno=0\n\n"
        ).encode(),
    )


def uapi(data: bytes) -> str:
    """The server's parser, in chunks the input's first byte sizes; and the client's."""
    size = (data[0] % 31 + 1) if data else 1
    parser = UapiRequestParser()
    events = []
    for start in range(1, len(data), size):
        events += parser.feed(data[start : start + size])
    events += parser.feed_eof()
    kinds = []
    for event in events:
        assert isinstance(event, GetRequest | SetRequest | RequestError | CloseConnection)
        if isinstance(event, SetRequest | RequestError):
            kinds.append(f"{type(event).__name__}({event.errno})")
        else:
            kinds.append(type(event).__name__)
    try:
        parse_get_response(data)
        kinds.append("get-response")
    except WireGuardError as exc:
        kinds.append(_label(exc).split(":")[0])
    return " ".join(dict.fromkeys(kinds))


# tap_receive ------------------------------------------------------------------------------------


def _tap_seeds() -> tuple[bytes, ...]:
    """Datagrams of a real layer-2 session (an initiation, a frame); plaintexts to seal."""
    from tests.helpers.l2net import BROADCAST, L2Net, frame, mac

    net = L2Net()
    hub = net.add("hub", ("192.0.2.1", 51820), 7)
    spoke = net.add("spoke", ("192.0.2.2", 51820), 8)
    net.link(hub, spoke, keepalive=25)
    initiation = next(data for _, _, data in net.sent if data[0] == 1)
    net.sent.clear()
    net.frame_from_tap(spoke, frame(BROADCAST, mac(1)))
    data = net.sent[-1][2]
    header = len(frame(mac(2), mac(1))).to_bytes(2, "big")
    return (
        b"\x00" + initiation,
        b"\x00" + data,
        b"\x01" + header + frame(BROADCAST, mac(1)),  # plaintexts: flooded,
        b"\x01" + header + frame(mac(9), mac(1)),  # unknown unicast,
        b"\x01" + header + frame(mac(1), mac(1)),  # to its own source,
        b"\x01" + header + frame(BROADCAST, BROADCAST),  # from a non-unicast source,
        b"\x01" + b"\x45" + bytes(27),  # an IP packet (a mode mismatch),
        b"\x01",  # a keepalive
    )


def tap_receive(data: bytes) -> str:
    """A hub with two spokes takes the datagram from spoke 1: it drops (and counts) or
    switches it, never raises; then a real frame from spoke 1 still reaches the hub's TAP and
    spoke 2."""
    from tests.helpers.l2net import BROADCAST, frame, hub_and_spokes, mac

    net, hub, one, two = hub_and_spokes(seed=7)
    peer = one.peer(hub)
    keypair = peer.keypairs.current
    assert keypair is not None
    out = memoryview(bytearray(len(data) + 64))
    # Spoke 1's counter moves past the seed data message's (the seeds' session is this one),
    # which the hub has not seen: the seed is delivered, and the frame after is no replay.
    one.core._send_data(peer, keypair, b"", out, net.now)
    if data[:1] and data[0] & 1:  # the rest is what spoke 1 seals: a peer's own plaintext
        datagram = bytes(out[: one.core._send_data(peer, keypair, data[1:], out, net.now)])
    else:
        datagram = data[1:]
    drops_before = sum(hub.core.drops.values())
    result = net.deliver(one.endpoint, hub.endpoint, datagram)
    actions = [type(event).__name__ for event in hub.events]
    if isinstance(result, Dropped):
        assert sum(hub.core.drops.values()) == drops_before + 1, "a drop that was not counted"
        outcome = f"dropped: {result.reason.value}"
    else:
        outcome = type(result).__name__
    outcome += "".join(f" +{name}" for name in sorted(set(actions))[:3])
    # And the hub still switches: a broadcast from spoke 1 reaches its TAP and spoke 2.
    net.flush()
    hub.tap.clear()
    two.tap.clear()
    check = frame(BROADCAST, mac(0x77), b"after" + bytes(41))
    net.frame_from_tap(one, check)
    assert hub.tap == [check], f"the hub stopped switching after {data.hex()}"
    assert two.tap == [check], f"the hub stopped flooding after {data.hex()}"
    return outcome


# trace_request ----------------------------------------------------------------------------------


def _trace_request_seeds() -> tuple[bytes, ...]:
    key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
    return (
        b'{"peer": null, "drops_only": false}\n',
        f'{{"peer": "{key}", "drops_only": true}}\n'.encode(),
        b"{}\n",
        b"[" * 2000 + b"\n",  # nested deeper than Python recurses (it stopped the interface)
    )


def trace_request(data: bytes) -> str:
    try:
        peer, drops_only = parse_request_untrusted(data)
    except BadRequest as exc:
        return _label(exc)
    assert isinstance(drops_only, bool)
    return f"request: peer {'given' if peer is not None else 'none'}, drops_only {drops_only}"


# config -----------------------------------------------------------------------------------------


def _config_seeds() -> tuple[bytes, ...]:
    key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
    peer = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
    return (
        (
            f"[Interface]\nPrivateKey = {key}\nListenPort = 51820\nAddress = 10.0.0.1/24, "
            "fd00::1/64\nDNS = 10.0.0.53, example.org\nMTU = 1420\nTable = off\nFwMark = 0x20\n"
            "PostUp = echo up # kept\nSaveConfig = false\n\n"
            f"[Peer]\nPublicKey = {peer}\nPresharedKey = {key}\nAllowedIPs = 10.0.0.2/32, ::/0\n"
            "Endpoint = [fd00::2]:51820\nPersistentKeepalive = 25\n"
        ).encode(),
        f"[Peer]\nPublicKey = {peer}\nEndpoint = vpn.example.org:51820\n".encode(),
    )


def config(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    try:
        parsed = parse_config(text, "fuzz.conf")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("fuzz.conf"), message
        assert "\n" not in message, message
        # The kind of error, without the values it quotes (which would make every input new).
        words = re.sub(r"'[^']*'|\"[^\"]*\"|<[^>]*>|\[[^\]]*\]|\S*\d\S*", "_", message).split()[1:4]
        return f"ConfigError: {' '.join(words)}"
    return f"config, {min(len(parsed.peers), 2)} peers"


#: The seeds each target starts from (valid inputs; ``run.py --init`` writes them to the corpus).
SEEDS: dict[str, Callable[[], tuple[bytes, ...]]] = {
    "wg_message": _wg_seeds_cached,
    "wg_receive": _wg_seeds_cached,
    "stream": _cached(_stream_seeds),
    "pi": _cached(lambda: tuple(build_pi(0x0800) + p for p in _ip_seeds_cached())),
    "decode": _ip_seeds_cached,
    "responder": _ip_seeds_cached,
    "pcap": _cached(_pcap_seeds),
    "offload": _cached(_offload_seeds),
    "uapi": _cached(_uapi_seeds),
    "config": _cached(_config_seeds),
    "tap_receive": _cached(_tap_seeds),
    "trace_request": _cached(_trace_request_seeds),
}

_RUN: dict[str, Callable[[bytes], str]] = {
    "wg_message": wg_message,
    "wg_receive": wg_receive,
    "stream": stream,
    "pi": pi,
    "decode": decode,
    "responder": responder,
    "pcap": pcap,
    "offload": offload,
    "uapi": uapi,
    "config": config,
    "tap_receive": tap_receive,
    "trace_request": trace_request,
}

TARGETS: dict[str, Target] = {
    name: Target(name, _bytes_from(SEEDS[name], 512), run) for name, run in _RUN.items()
}
