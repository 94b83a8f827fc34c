"""The plain tunnel's sans-IO decisions: which datagrams reach the device, who the peer is.

:func:`check_payload` is fed packets written field by field (the reference builders of
``tests/helpers/packets.py``), the headers the kernel puts in front of them (PI, virtio-net, in
the order ``tun_get_user`` reads them), boundary lengths, and arbitrary bytes.
:class:`PeerFollower` is driven with explicit clock values: no sleeping.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers.packets import MAC_A, MAC_B, ethernet, icmp_echo, icmpv6_echo, ipv4, ipv6, tcp

from minivpn.framing.tunnel import (
    VNET_HDR_LEN,
    PayloadKind,
    PeerFollower,
    PeerVerdict,
    check_payload,
)

ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_ARP = 0x0800, 0x86DD, 0x0806

PING4 = ipv4("10.9.0.1", "10.9.0.2", 1, icmp_echo(True, 7, 1, b"x" * 56))
PING6 = ipv6("fd00:9::1", "fd00:9::2", 58, icmpv6_echo("fd00:9::1", "fd00:9::2", True, 7, 1, b""))
#: The shortest legal packets: a bare header each.
BARE4 = ipv4("10.9.0.1", "10.9.0.2", 253, b"")
BARE6 = ipv6("fd00:9::1", "fd00:9::2", 59, b"")  # next header 59: nothing follows
ARP_FRAME = ethernet(b"\xff" * 6, MAC_A, ETHERTYPE_ARP, bytes(28))
PING4_FRAME = ethernet(MAC_B, MAC_A, ETHERTYPE_IPV4, PING4)


def pi(proto: int, flags: int = 0) -> bytes:
    """The 4-byte packet-information header: flags, then the EtherType, big-endian."""
    return struct.pack("!HH", flags, proto)


def pi_for(packet: bytes) -> bytes:
    return pi(ETHERTYPE_IPV4 if packet[0] >> 4 == 4 else ETHERTYPE_IPV6)


def vnet(
    flags: int = 0,
    gso_type: int = 0,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
) -> bytes:
    """``struct virtio_net_hdr`` as tun reads and writes it (little-endian on x86)."""
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def check(data: bytes, kind: PayloadKind, *, vnet: bool = False) -> str | None:
    return check_payload(data, len(data), kind, vnet=vnet)


# -- what each kind of device takes ------------------------------------------------------------


def test_the_reference_virtio_header_is_ten_bytes() -> None:
    assert len(vnet()) == VNET_HDR_LEN == 10


@pytest.mark.parametrize(
    "packet", [PING4, PING6, BARE4, BARE6], ids=["ping4", "ping6", "bare4", "bare6"]
)
def test_ip_packets_pass_with_and_without_pi(packet: bytes) -> None:
    assert check(packet, PayloadKind.IP) is None
    assert check(pi_for(packet) + packet, PayloadKind.IP_PI) is None


@pytest.mark.parametrize(("packet", "minimum"), [(PING4, 20), (PING6, 40)], ids=["ipv4", "ipv6"])
def test_ip_packets_shorter_than_their_header_are_malformed(packet: bytes, minimum: int) -> None:
    for length in range(1, minimum):
        assert check(packet[:length], PayloadKind.IP) == "malformed", length
        assert check(pi_for(packet) + packet[:length], PayloadKind.IP_PI) == "malformed", length
    assert check(packet[:minimum], PayloadKind.IP) is None


@pytest.mark.parametrize("first", [0x00, 0x15, 0x30, 0x55, 0x7F, 0x80, 0xFF])
def test_other_ip_versions_are_refused(first: int) -> None:
    packet = bytes([first]) + PING4[1:]
    expected = "offload-mismatch" if first <= 7 else "malformed"
    assert check(packet, PayloadKind.IP) == expected
    assert check(pi(ETHERTYPE_IPV4) + packet, PayloadKind.IP_PI) == expected


def test_empty_datagrams_are_malformed_for_every_kind() -> None:
    for kind in PayloadKind:
        assert check(b"", kind) == "malformed", kind
        assert check(b"", kind, vnet=True) == "malformed", kind


@pytest.mark.parametrize(
    ("header", "packet"),
    [
        (pi(ETHERTYPE_IPV6), PING4),  # the PI says IPv6, the packet is IPv4
        (pi(ETHERTYPE_IPV4), PING6),
        (pi(ETHERTYPE_ARP), PING4),
        (pi(0), PING4),
    ],
    ids=["v6-says-pi-v4-packet", "v4-pi-v6-packet", "arp-pi", "zero-pi"],
)
def test_pi_must_agree_with_the_packet(header: bytes, packet: bytes) -> None:
    assert check(header + packet, PayloadKind.IP_PI) == "malformed"


def test_a_bare_packet_is_not_a_pi_packet() -> None:
    # Without its PI header the IPv4 header's first bytes are read as one, and do not agree.
    assert check(PING4, PayloadKind.IP_PI) is not None
    assert check(pi_for(PING4) + PING4, PayloadKind.IP) == "offload-mismatch"  # starts 00 00


def test_ethernet_frames_need_a_whole_ethernet_header() -> None:
    for frame in (ARP_FRAME, PING4_FRAME):
        assert check(frame, PayloadKind.ETHERNET) is None
        assert check(pi(ETHERTYPE_IPV4) + frame, PayloadKind.ETHERNET_PI) is None
    header = PING4_FRAME[:14]
    assert check(header, PayloadKind.ETHERNET) is None
    assert check(header[:13], PayloadKind.ETHERNET) == "malformed"
    assert check(pi(ETHERTYPE_IPV4) + header[:13], PayloadKind.ETHERNET_PI) == "malformed"
    # Whatever the first byte: a frame starts with a MAC address, not a version.
    assert check(b"\x00" * 14, PayloadKind.ETHERNET) is None


def test_only_the_first_length_bytes_count() -> None:
    buffer = bytearray(PING6 + bytes(1000))  # a receive buffer bigger than the datagram
    assert check_payload(buffer, len(PING6), PayloadKind.IP) is None
    assert check_payload(buffer, 39, PayloadKind.IP) == "malformed"
    assert check_payload(memoryview(buffer), 0, PayloadKind.IP) == "malformed"
    assert check_payload(memoryview(buffer), 40, PayloadKind.IP) is None


# -- offload: the virtio-net header ------------------------------------------------------------

TCP4 = ipv4("10.9.0.1", "10.9.0.2", 6, tcp(40000, 5201, 1, 1, 0x10, data=b"y" * 3000))
#: The header of a TCP super-packet the kernel asks us to segment (TSO) and checksum.
TSO4 = vnet(flags=1, gso_type=1, hdr_len=40, gso_size=1448, csum_start=20, csum_offset=16)


@pytest.mark.parametrize(
    "header",
    [vnet(), vnet(flags=2), TSO4, vnet(flags=1, gso_type=4), vnet(gso_type=0x81)],
    ids=["plain", "data-valid", "tso4", "tso6", "tso4-ecn"],
)
def test_vnet_packets_pass(header: bytes) -> None:
    for packet in (TCP4, PING4, PING6):
        assert check(header + packet, PayloadKind.IP, vnet=True) is None
    assert check(header + PING4_FRAME, PayloadKind.ETHERNET, vnet=True) is None


def test_vnet_header_comes_after_pi_as_the_kernel_puts_it() -> None:
    # tun_get_user() reads the PI header first, then the virtio header: PI, vnet, packet.
    for packet in (TCP4, PING6):
        assert check(pi_for(packet) + TSO4 + packet, PayloadKind.IP_PI, vnet=True) is None
        assert check(TSO4 + pi_for(packet) + packet, PayloadKind.IP_PI, vnet=True) is not None
    frame = PING4_FRAME
    assert check(pi(ETHERTYPE_IPV4) + vnet() + frame, PayloadKind.ETHERNET_PI, vnet=True) is None


@pytest.mark.parametrize("packet", [PING4, PING6, TCP4], ids=["ping4", "ping6", "tcp4"])
def test_one_end_with_offload_and_one_without_is_told_apart(packet: bytes) -> None:
    # The offload end gets bare packets: not a virtio header.
    assert check(packet, PayloadKind.IP, vnet=True) == "offload-mismatch"
    # The plain end gets virtio headers: not an IP header.
    assert check(TSO4 + packet, PayloadKind.IP) == "offload-mismatch"
    assert check(vnet() + packet, PayloadKind.IP) == "offload-mismatch"


@pytest.mark.parametrize(
    "header",
    [vnet(flags=0x08), vnet(flags=0x80), vnet(gso_type=2), vnet(gso_type=6), vnet(gso_type=0x80)],
    ids=["flag-8", "flag-80", "gso-2", "gso-6", "ecn-alone"],
)
def test_impossible_virtio_headers_are_refused(header: bytes) -> None:
    assert check(header + PING4, PayloadKind.IP, vnet=True) == "offload-mismatch"


def test_vnet_datagrams_too_short_for_header_and_packet_are_malformed() -> None:
    assert check(vnet(), PayloadKind.IP, vnet=True) == "malformed"
    assert check(vnet()[:5], PayloadKind.IP, vnet=True) == "malformed"
    assert check(vnet() + PING4[:19], PayloadKind.IP, vnet=True) == "malformed"
    assert check(vnet() + PING4_FRAME[:13], PayloadKind.ETHERNET, vnet=True) == "malformed"
    assert check(pi(ETHERTYPE_IPV4) + vnet(), PayloadKind.IP_PI, vnet=True) == "malformed"


# -- properties --------------------------------------------------------------------------------

kinds = st.sampled_from(list(PayloadKind))
REASONS = {None, "malformed", "offload-mismatch"}


@given(st.binary(max_size=200), kinds, st.booleans(), st.data())
def test_arbitrary_bytes_never_raise(
    data: bytes, kind: PayloadKind, with_vnet: bool, draw: st.DataObject
) -> None:
    length = draw.draw(st.integers(0, len(data)))
    assert check_payload(data, length, kind, vnet=with_vnet) in REASONS
    assert check_payload(memoryview(data), length, kind, vnet=with_vnet) in REASONS
    assert check_payload(bytearray(data), length, kind, vnet=with_vnet) in REASONS


@given(st.binary(max_size=120), st.binary(max_size=50), kinds, st.booleans())
def test_bytes_after_the_datagram_do_not_matter(
    data: bytes, junk: bytes, kind: PayloadKind, with_vnet: bool
) -> None:
    assert check_payload(data + junk, len(data), kind, vnet=with_vnet) == check_payload(
        data, len(data), kind, vnet=with_vnet
    )


@given(st.binary(min_size=1, max_size=120))
def test_headers_in_front_do_not_change_the_verdict_on_an_ip_packet(packet: bytes) -> None:
    """Whatever the TUN device would do with a packet, it does with PI and virtio in front."""
    bare = check(packet, PayloadKind.IP)
    if bare == "offload-mismatch":
        return  # a first byte 0..7: what it means depends on the framing around it
    assert check(vnet() + packet, PayloadKind.IP, vnet=True) == bare
    if packet[0] >> 4 in (4, 6):
        framed = pi_for(packet) + packet
        assert check(framed, PayloadKind.IP_PI) == bare
        assert check(pi_for(packet) + TSO4 + packet, PayloadKind.IP_PI, vnet=True) == bare


@given(st.binary(max_size=100))
def test_a_tap_frame_is_judged_by_length_alone(frame: bytes) -> None:
    expected = None if len(frame) >= 14 else "malformed"
    assert check(frame, PayloadKind.ETHERNET) == expected
    assert check(pi(ETHERTYPE_IPV4) + frame, PayloadKind.ETHERNET_PI) == expected


# -- PeerFollower ------------------------------------------------------------------------------

PEER = ("::ffff:198.51.100.1", 40000, 0, 0)
SAME_HOST_OTHER_PORT = ("::ffff:198.51.100.1", 40001, 0, 0)
THIRD = ("fd00:5100:100::3", 40000, 0, 0)


def test_the_first_sender_becomes_the_peer() -> None:
    assert PeerFollower(roam_after=2.0).address is None  # nobody to send to yet
    follower = PeerFollower(roam_after=2.0)
    assert follower.observe(PEER, now=100.0) is PeerVerdict.NEW_PEER
    assert follower.address == PEER
    assert follower.observe(PEER, now=100.5) is PeerVerdict.PEER
    assert follower.address == PEER


def test_others_are_foreign_while_the_peer_talks() -> None:
    follower = PeerFollower(roam_after=2.0)
    follower.observe(PEER, now=100.0)
    # The peer keeps talking every 1.5 s: nobody else ever gets in, however long this goes.
    for step in range(1, 20):
        now = 100.0 + 1.5 * step
        assert follower.observe(THIRD, now=now - 0.1) is PeerVerdict.FOREIGN
        assert follower.observe(SAME_HOST_OTHER_PORT, now=now - 0.1) is PeerVerdict.FOREIGN
        assert follower.observe(PEER, now=now) is PeerVerdict.PEER
    assert follower.address == PEER


def test_foreign_traffic_does_not_count_as_the_peer_talking() -> None:
    follower = PeerFollower(roam_after=2.0)
    follower.observe(PEER, now=100.0)
    for t in (100.5, 101.0, 101.5, 101.9):
        assert follower.observe(THIRD, now=t) is PeerVerdict.FOREIGN
    # The peer has now been silent for 2 s, the third party's datagrams notwithstanding.
    assert follower.observe(SAME_HOST_OTHER_PORT, now=102.0) is PeerVerdict.MOVED


def test_the_peer_may_move_after_the_roam_delay() -> None:
    follower = PeerFollower(roam_after=2.0)
    follower.observe(PEER, now=100.0)
    assert follower.observe(SAME_HOST_OTHER_PORT, now=101.99) is PeerVerdict.FOREIGN
    assert follower.address == PEER
    assert follower.observe(SAME_HOST_OTHER_PORT, now=102.5) is PeerVerdict.MOVED
    assert follower.address == SAME_HOST_OTHER_PORT
    assert follower.observe(SAME_HOST_OTHER_PORT, now=102.6) is PeerVerdict.PEER
    # The old address is now the stranger, until the new one falls silent in its turn.
    assert follower.observe(PEER, now=103.0) is PeerVerdict.FOREIGN
    assert follower.observe(PEER, now=104.6) is PeerVerdict.MOVED
    assert follower.address == PEER


@pytest.mark.parametrize("roam_after", [0.5, 2.0, 30.0])
def test_the_roam_delay_is_the_configured_one(roam_after: float) -> None:
    follower = PeerFollower(roam_after=roam_after)
    follower.observe(PEER, now=1000.0)
    assert follower.observe(THIRD, now=1000.0 + roam_after * 0.99) is PeerVerdict.FOREIGN
    assert follower.observe(THIRD, now=1000.0 + roam_after * 1.01) is PeerVerdict.MOVED


addresses = st.sampled_from([PEER, SAME_HOST_OTHER_PORT, THIRD])


@given(st.lists(st.tuples(addresses, st.floats(0, 5)), max_size=40))
def test_follower_invariants(events: list[tuple[tuple[object, ...], float]]) -> None:
    follower = PeerFollower(roam_after=2.0)
    now = 0.0
    for index, (address, step) in enumerate(events):
        now += step
        before, last_seen = follower.address, follower.last_seen
        verdict = follower.observe(address, now=now)
        # NEW_PEER only for the very first datagram.
        assert (verdict is PeerVerdict.NEW_PEER) == (index == 0)
        if verdict is PeerVerdict.FOREIGN:
            # A stranger changes nothing, and only while the peer spoke less than 2 s ago.
            assert (follower.address, follower.last_seen) == (before, last_seen)
            assert address != before
            assert now - last_seen < 2.0
        else:
            # Anyone else ends up as the peer, seen now.
            assert follower.address == address
            assert follower.last_seen == now
            assert (verdict is PeerVerdict.PEER) == (address == before)
