"""The WireGuard core between real in-memory peers: handshake, data, replay, cookies, routing.

Every test runs two (or three) real :class:`WireGuardCore` objects joined by the synchronous
network of ``tests/helpers/wgnet.py``; the clocks are fake and only move when a test says so.
The timers have their own file (``test_wg_timers.py``), and so does UAPI (``test_wg_core_uapi.py``).
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers.keys import LOW_ORDER_POINTS
from tests.helpers.wgnet import (
    A_ADDRESS,
    A_ADDRESS6,
    A_ENDPOINT,
    B_ADDRESS,
    B_ADDRESS6,
    B_ENDPOINT,
    C_ADDRESS,
    C_ENDPOINT,
    Datagram,
    Delivered,
    Net,
    a_to_b,
    b_to_a,
    connect,
    established,
    ipv4_packet,
    ipv6_packet,
    pair,
    receive_datagram,
    send_packet,
)

from minivpn.wireguard.config import ConfigError, parse_config
from minivpn.wireguard.constants import (
    MAX_STAGED_PACKETS,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
)
from minivpn.wireguard.cookie import compute_mac1, mac1_key
from minivpn.wireguard.core import WireGuardCore
from minivpn.wireguard.device import MAX_DATAGRAM_SIZE
from minivpn.wireguard.events import (
    DropReason,
    HandshakeCompleted,
    SendDatagram,
)
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from minivpn.wireguard.messages import MACS_SIZE
from minivpn.wireguard.ratelimit import (
    COOKIE_REPLIES_BURSTABLE,
    COOKIE_REPLIES_PER_SECOND,
    PACKETS_BURSTABLE,
)
from minivpn.wireguard.replay import WINDOW_SIZE
from minivpn.wireguard.results import Dropped, Queued, WriteToNetwork, WriteToTunnel
from minivpn.wireguard.send import padded_size
from minivpn.wireguard.uapi import AllowedIPChange, PeerSet, SetRequest

INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT = 1, 2, 3, 4


def flipped(data: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


def with_mac1(message: bytes, receiver: PublicKey) -> bytes:
    """``message`` with a correct mac1 for ``receiver`` (and mac2 zeroed)."""
    body = message[:-MACS_SIZE]
    return body + compute_mac1(mac1_key(receiver), message) + bytes(16)


# --- handshake and data ------------------------------------------------------------------------


def test_two_peers_handshake_and_exchange_data_both_ways() -> None:
    net, a, b = pair()
    first = a_to_b(b"first from A")
    net.send(a, first)
    assert b.delivered == [first]
    reply = b_to_a(b"answer from B")
    net.send(b, reply)
    assert a.delivered == [reply]
    # One initiation, one response, then data messages only.
    assert [d.data[0] for d in net.sent[:2]] == [INITIATION, RESPONSE]
    assert all(d.data[0] == TRANSPORT for d in net.sent[2:])
    assert a.events_of(HandshakeCompleted) == [HandshakeCompleted(b.public_key, initiator=True)]
    assert b.events_of(HandshakeCompleted) == [HandshakeCompleted(a.public_key, initiator=False)]
    assert not a.drops()
    assert not b.drops()


def test_ipv6_packets_travel_too() -> None:
    net, a, b = established()
    packet = ipv6_packet(A_ADDRESS6, B_ADDRESS6, b"over v6")
    net.send(a, packet)
    assert b.delivered == [packet]


def test_preshared_key_must_match() -> None:
    net = Net()
    a = net.add("A", A_ENDPOINT, 1)
    b = net.add("B", B_ENDPOINT, 2)
    a.core.add_peer(
        b.public_key,
        preshared_key=PresharedKey(b"\x01" * 32),
        endpoint=B_ENDPOINT,
        allowed_ips=["10.0.0.2/32"],
        now=net.now,
    )
    b.core.add_peer(
        a.public_key,
        preshared_key=PresharedKey(b"\x02" * 32),
        endpoint=A_ENDPOINT,
        allowed_ips=["10.0.0.1/32"],
        now=net.now,
    )
    net.send(a, a_to_b())
    assert b.delivered == []
    assert a.drops() == {"handshake_invalid": 1}  # the response does not authenticate


def test_responder_keeps_new_keypair_as_next_until_data_confirms_it() -> None:
    net, a, b = pair()
    net.hold = True
    net.send(a, a_to_b())
    net.deliver(net.take_held()[0])  # the initiation reaches B
    slots = b.peer(a).keypairs
    assert slots.next is not None
    assert slots.current is None
    # B cannot send with an unconfirmed keypair: its packet waits, and no data goes out.
    net.send(b, b_to_a(b"early"))
    assert [d.data[0] for d in net.in_flight] == [RESPONSE]
    assert b.peer(a).staged
    net.hold = False
    net.flush()  # response to A; A sends its staged packet, which confirms B's keypair
    assert slots.next is None
    assert slots.current is not None
    assert b.events_of(HandshakeCompleted) == [HandshakeCompleted(a.public_key, initiator=False)]
    # ...and B's staged packet went out right after the confirmation.
    assert a.delivered == [b_to_a(b"early")]


def test_initiator_confirms_with_a_keepalive_when_it_has_nothing_to_send() -> None:
    net, a, b = pair()
    # Turning a persistent keepalive on sends a keepalive, which needs a session first.
    request = SetRequest(peers=[PeerSet(b.public_key, persistent_keepalive_interval=25)])
    assert a.core.apply(request, net.now) == 0
    net.handle(a, a.core.take_actions())
    assert [d.data[0] for d in net.sent] == [INITIATION, RESPONSE, TRANSPORT]
    assert len(net.sent[-1].data) == 32  # a keepalive: empty plaintext
    assert b.peer(a).keypairs.current is not None
    assert b.delivered == []  # a keepalive delivers nothing


def test_packets_sent_before_the_handshake_are_staged_then_flushed_in_order() -> None:
    net, a, b = pair()
    net.hold = True
    packets = [a_to_b(bytes([n]) * 10) for n in range(5)]
    for packet in packets:
        net.send(a, packet)
    # Only one initiation, however many packets wait.
    assert [d.data[0] for d in net.in_flight] == [INITIATION]
    net.hold = False
    net.flush()
    assert b.delivered == packets


def test_staged_queue_is_bounded_and_drops_the_oldest() -> None:
    net, a, b = pair()
    net.hold = True
    packets = [a_to_b(n.to_bytes(2, "big")) for n in range(MAX_STAGED_PACKETS + 3)]
    for packet in packets:
        net.send(a, packet)
    assert len(a.peer(b).staged) == MAX_STAGED_PACKETS
    assert a.core.drops[DropReason.STAGED_OVERFLOW] == 3
    net.hold = False
    net.flush()
    assert b.delivered == packets[3:]


def test_sender_indices_are_random_unique_and_never_zero() -> None:
    # An rng that first repeats itself and offers 0: the core must skip both.
    chunks = [bytes(4), b"\x07\x00\x00\x00", b"\x07\x00\x00\x00", b"\x09\x00\x00\x00"]
    source = random.Random(5)

    def rng(size: int) -> bytes:
        if size == 4 and chunks:
            return chunks.pop(0)
        return source.randbytes(size)

    core = WireGuardCore(PrivateKey.generate(source.randbytes), rng=rng)
    peers = [PrivateKey.generate(source.randbytes).public_key() for _ in range(2)]
    for n, key in enumerate(peers):
        core.add_peer(key, endpoint=("192.0.2.9", 1), allowed_ips=[f"10.1.{n}.0/24"], now=0.0)
    senders = []
    for n in range(2):
        actions = send_packet(core, ipv4_packet(A_ADDRESS, bytes([10, 1, n, 1]), b"x"), 0.0)
        [initiation] = [a for a in actions if isinstance(a, SendDatagram)]
        senders.append(struct.unpack_from("<I", initiation.data, 4)[0])
    assert senders == [7, 9]


def test_many_handshakes_use_distinct_indices() -> None:
    net, a, b = established()
    indices = set()
    for _ in range(30):
        net.advance(130)  # past REKEY_AFTER_TIME: the next packet rekeys
        net.send(a, a_to_b())
        net.send(b, b_to_a())
    for datagram in net.sent:
        if datagram.data[0] in (INITIATION, RESPONSE):
            indices.add(struct.unpack_from("<I", datagram.data, 4)[0])
    handshakes = sum(1 for d in net.sent if d.data[0] == INITIATION)
    assert handshakes >= 30
    assert len(indices) == sum(1 for d in net.sent if d.data[0] in (INITIATION, RESPONSE))


# --- replay ----------------------------------------------------------------------------------


def test_replayed_transport_packet_is_refused() -> None:
    net, a, b = established()
    net.hold = True
    net.send(a, a_to_b(b"once"))
    [datagram] = net.take_held()
    net.deliver(datagram)
    net.deliver(datagram)
    assert b.delivered == [a_to_b(b"once")]
    assert b.drops() == {"replayed_counter": 1}


def test_reordered_packets_inside_the_window_are_all_accepted_once() -> None:
    net, a, b = established()
    net.hold = True
    packets = [a_to_b(bytes([n])) for n in range(6)]
    for packet in packets:
        net.send(a, packet)
    held = net.take_held()
    order = [3, 0, 5, 1, 4, 2, 3, 0]  # with two duplicates
    for position in order:
        net.deliver(held[position])
    assert sorted(b.delivered) == sorted(packets)
    assert b.core.drops[DropReason.REPLAYED_COUNTER] == 2


def test_counter_older_than_the_window_is_refused() -> None:
    net, a, b = established()
    net.hold = True
    net.send(a, a_to_b(b"old"))
    [old] = net.take_held()
    a.peer(b).keypairs.current.send_counter += WINDOW_SIZE + 10  # type: ignore[union-attr]
    net.send(a, a_to_b(b"new"))
    net.flush()
    net.deliver(old)
    assert b.delivered == [a_to_b(b"new")]
    assert b.drops() == {"replayed_counter": 1}


def test_forged_packet_cannot_move_the_replay_window() -> None:
    """The window is only updated after decryption: a forged high counter changes nothing."""
    net, a, b = established()
    net.hold = True
    net.send(a, a_to_b(b"genuine"))
    [genuine] = net.take_held()
    forged = bytearray(genuine.data)
    struct.pack_into("<Q", forged, 8, 2**40)  # a far-ahead counter; the tag no longer matches
    net.deliver(Datagram(A_ENDPOINT, B_ENDPOINT, bytes(forged)))
    net.deliver(genuine)
    assert b.delivered == [a_to_b(b"genuine")]
    assert b.drops() == {"decryption_failed": 1}


def test_stale_and_replayed_initiations_are_refused() -> None:
    net, a, b = pair()
    net.hold = True
    net.send(a, a_to_b())
    [initiation] = net.take_held()
    net.deliver(initiation)
    assert [d.data[0] for d in net.take_held()] == [RESPONSE]

    # The same initiation again, even much later: its timestamp is not newer.
    net.now += 60
    net.deliver(initiation)
    assert net.take_held() == []
    assert b.core.drops[DropReason.REPLAYED_INITIATION] == 1

    # A restarted A whose wall clock is behind: refused as stale too.
    restarted = WireGuardCore(
        a.key, wall_clock=lambda: net.wall - 3600, rng=random.Random(9).randbytes
    )
    restarted.add_peer(b.public_key, endpoint=B_ENDPOINT, allowed_ips=["10.0.0.2/32"], now=net.now)
    [stale] = [x for x in send_packet(restarted, a_to_b(), net.now) if isinstance(x, SendDatagram)]
    net.deliver(Datagram(A_ENDPOINT, B_ENDPOINT, bytes(stale.data)))
    assert net.take_held() == []
    assert b.core.drops[DropReason.REPLAYED_INITIATION] == 2


def test_initiations_faster_than_one_per_20ms_are_dropped() -> None:
    net, a, b = pair()
    net.hold = True

    def fresh_initiation(wall: float) -> Datagram:
        core = WireGuardCore(a.key, wall_clock=lambda: wall, rng=random.Random(wall).randbytes)
        core.add_peer(b.public_key, endpoint=B_ENDPOINT, allowed_ips=["10.0.0.2/32"], now=0.0)
        [message] = [x for x in send_packet(core, a_to_b(), 0.0) if isinstance(x, SendDatagram)]
        return Datagram(A_ENDPOINT, B_ENDPOINT, bytes(message.data))

    net.deliver(fresh_initiation(net.wall + 1))
    assert len(net.take_held()) == 1
    net.now += 0.010  # 10 ms later, with a newer timestamp: a flood
    net.deliver(fresh_initiation(net.wall + 2))
    assert net.take_held() == []
    assert b.core.drops[DropReason.INITIATION_FLOOD] == 1
    net.now += 0.015  # 25 ms after the accepted one: fine
    net.deliver(fresh_initiation(net.wall + 3))
    assert len(net.take_held()) == 1


# --- every byte counts ---------------------------------------------------------------------


def _first_initiation() -> tuple[Net, bytes]:
    net, a, _ = pair(seed=11)
    net.hold = True
    net.send(a, a_to_b())
    [initiation] = net.take_held()
    return net, initiation.data


def _responder_reaction(
    data: bytes, *, under_load: bool = False
) -> tuple[list[int], dict[str, int]]:
    """What a fresh B does with an initiation: the types it sends back, its drops."""
    net, _, b = pair(seed=11)
    b.core.under_load = under_load
    actions = receive_datagram(b.core, data, A_ENDPOINT, net.now)
    sent = [a.data[0] for a in actions if isinstance(a, SendDatagram)]
    return sent, b.drops()


def test_initiation_with_any_byte_flipped_is_refused() -> None:
    _, initiation = _first_initiation()
    assert _responder_reaction(initiation)[0] == [RESPONSE]  # the control
    for index in range(len(initiation) - 16):  # mac2 is not checked when not under load
        for mask in (0x01, 0x80):
            sent, drops = _responder_reaction(flipped(initiation, index, mask))
            assert sent == [], (index, mask)
            assert drops, (index, mask)


def test_initiation_tampered_under_a_valid_mac1_is_refused() -> None:
    """Recompute mac1 after the flip, so that the Noise checks themselves must refuse it."""
    _, _, b = pair(seed=11)
    _, initiation = _first_initiation()
    for index in range(8, len(initiation) - MACS_SIZE):  # bytes 4-8 are the (free) sender index
        tampered = with_mac1(flipped(initiation, index), b.public_key)
        sent, drops = _responder_reaction(tampered)
        assert sent == [], index
        assert set(drops) <= {"handshake_invalid", "unknown_peer", "low_order_key"}, index


def test_initiation_with_mac2_flipped_gets_a_cookie_reply_under_load() -> None:
    net, a, b = pair(seed=11)
    net.hold = True
    net.send(a, a_to_b())
    [first] = net.take_held()
    b.core.under_load = True
    net.deliver(first)
    [reply] = net.take_held()
    net.deliver(reply)  # A now holds a cookie for its address
    net.now += 6
    net.run_timers()  # retransmission, with a valid mac2
    [retry] = net.take_held()
    for index in range(len(retry.data) - 16, len(retry.data)):
        net.now += 0.05  # a cookie reply's worth of the source's rate limit (20 a second)
        net.deliver(Datagram(A_ENDPOINT, B_ENDPOINT, flipped(retry.data, index)))
        assert [d.data[0] for d in net.take_held()] == [COOKIE_REPLY], index
    assert b.peer(a).keypairs.next is None
    # The unflipped retry passes under load.
    net.deliver(retry)
    assert [d.data[0] for d in net.take_held()] == [RESPONSE]


def test_response_with_any_byte_flipped_is_refused() -> None:
    for index in range(76):
        for mask in (0x01, 0x80):
            net, a, b = pair(seed=12)
            net.hold = True
            net.send(a, a_to_b())
            net.deliver(net.take_held()[0])
            [response] = net.take_held()
            net.deliver(Datagram(B_ENDPOINT, A_ENDPOINT, flipped(response.data, index, mask)))
            assert net.take_held() == [], (index, mask)
            assert a.peer(b).keypairs.current is None, (index, mask)
            # The genuine response still works afterwards: nothing was spoiled.
            net.deliver(response)
            assert a.peer(b).keypairs.current is not None, (index, mask)


def test_response_tampered_under_a_valid_mac1_is_refused() -> None:
    for index in range(8, 92 - MACS_SIZE):  # bytes 4-8: the responder's (free) sender index
        net, a, b = pair(seed=12)
        net.hold = True
        net.send(a, a_to_b())
        net.deliver(net.take_held()[0])
        [response] = net.take_held()
        tampered = with_mac1(flipped(response.data, index), a.public_key)
        net.deliver(Datagram(B_ENDPOINT, A_ENDPOINT, tampered))
        assert a.peer(b).keypairs.current is None, index
        assert set(a.drops()) <= {"handshake_invalid", "unknown_index", "low_order_key"}, index


def test_cookie_reply_with_any_byte_flipped_is_refused() -> None:
    net, a, b = pair(seed=13)
    net.hold = True
    b.core.under_load = True
    net.send(a, a_to_b())
    net.deliver(net.take_held()[0])
    [reply] = net.take_held()
    assert reply.data[0] == COOKIE_REPLY
    cookies = a.peer(b).cookies
    for index in range(len(reply.data)):
        for mask in (0x01, 0x80):
            net.deliver(Datagram(B_ENDPOINT, A_ENDPOINT, flipped(reply.data, index, mask)))
            assert not cookies.has_cookie(net.now), (index, mask)
    net.deliver(reply)
    assert cookies.has_cookie(net.now)


def test_transport_message_with_any_byte_flipped_is_refused() -> None:
    net, a, b = established()
    net.hold = True
    net.send(a, a_to_b(b"precious"))
    [datagram] = net.take_held()
    for index in range(len(datagram.data)):
        for mask in (0x01, 0x80):
            net.deliver(Datagram(A_ENDPOINT, B_ENDPOINT, flipped(datagram.data, index, mask)))
    assert b.delivered == []
    assert b.peer(a).endpoint == A_ENDPOINT
    net.deliver(datagram)
    assert b.delivered == [a_to_b(b"precious")]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), kind=st.sampled_from([None, 1, 2, 3, 4]))
def test_arbitrary_datagrams_never_raise_and_never_deliver(data: bytes, kind: int | None) -> None:
    net, a, b = established(seed=14)
    if kind is not None:
        sizes = {1: 148, 2: 92, 3: 64, 4: max(32, len(data))}
        data = (bytes([kind, 0, 0, 0]) + data).ljust(sizes[kind], b"\0")[: sizes[kind]]
    for under_load in (False, True):
        b.core.under_load = under_load
        actions = receive_datagram(b.core, data, ("203.0.113.5", 4444), net.now)
        assert not any(isinstance(x, Delivered) for x in actions)
    assert b.peer(a).endpoint == A_ENDPOINT


# --- cookies and load ------------------------------------------------------------------------


def test_under_load_initiator_gets_a_cookie_then_succeeds_with_mac2() -> None:
    net, a, b = pair()
    b.core.under_load = True
    net.send(a, a_to_b(b"patience"))
    assert [d.data[0] for d in net.sent] == [INITIATION, COOKIE_REPLY]
    assert b.drops() == {"cookie_required": 1}
    assert a.peer(b).cookies.has_cookie(net.now)
    assert b.delivered == []
    net.advance(6)  # the retransmission carries a valid mac2
    assert b.delivered == [a_to_b(b"patience")]
    assert [d.data[0] for d in net.sent[:4]] == [INITIATION, COOKIE_REPLY, INITIATION, RESPONSE]
    assert b.drops() == {"cookie_required": 1}


def test_cookie_is_bound_to_the_source_address_and_port() -> None:
    net, a, b = pair()
    net.hold = True
    b.core.under_load = True
    net.send(a, a_to_b())
    net.deliver(net.take_held()[0])
    net.deliver(net.take_held()[0])  # the cookie reply, to A
    net.now += 6
    net.run_timers()
    [retry] = net.take_held()
    # The same message from another port: the cookie does not fit, another cookie reply.
    net.deliver(retry, source=(A_ENDPOINT[0], A_ENDPOINT[1] + 1))
    assert [d.data[0] for d in net.take_held()] == [COOKIE_REPLY]
    net.deliver(retry)
    assert [d.data[0] for d in net.take_held()] == [RESPONSE]


def test_cookie_expires_after_two_minutes() -> None:
    net, a, b = pair()
    b.core.under_load = True
    net.hold = True
    net.send(a, a_to_b())
    net.deliver(net.take_held()[0])
    net.deliver(net.take_held()[0])
    assert a.peer(b).cookies.has_cookie(net.now)
    net.now += 121
    assert not a.peer(b).cookies.has_cookie(net.now)
    net.run_timers()
    for datagram in net.take_held():  # initiations without mac2 now
        net.deliver(datagram)
    assert [d.data[0] for d in net.take_held()] == [COOKIE_REPLY]


def test_rate_limiter_applies_under_load_before_any_diffie_hellman() -> None:
    net, a, b = pair()
    net.hold = True
    b.core.under_load = True
    net.send(a, a_to_b())
    net.deliver(net.take_held()[0])
    net.deliver(net.take_held()[0])
    net.now += 6
    net.run_timers()
    [retry] = net.take_held()  # valid mac2
    for _ in range(10):
        net.deliver(retry)
    responses = [d for d in net.take_held() if d.data[0] == RESPONSE]
    assert len(responses) == 1
    # Burst of 5 per source: 1 accepted, 4 replays refused by the handshake, 5 rate-limited.
    assert b.core.drops[DropReason.REPLAYED_INITIATION] == 4
    assert b.core.drops[DropReason.RATE_LIMITED] == 5


def test_cookie_replies_are_rate_limited_per_source_and_overall() -> None:
    """A flood of initiations without mac2 buys a few cookie replies, not one per message."""
    net, a, b = pair()
    net.hold = True
    b.core.under_load = True
    net.send(a, a_to_b())
    [initiation] = net.take_held()
    # One source: a burst of 5 cookie replies, then 20 a second.
    for _ in range(50):
        net.deliver(initiation)
    assert [d.data[0] for d in net.take_held()] == [COOKIE_REPLY] * PACKETS_BURSTABLE
    assert b.core.drops[DropReason.COOKIE_RATE_LIMITED] == 50 - PACKETS_BURSTABLE
    net.now += 0.5  # 10 replies' worth of refill, but a bucket holds a burst of 5
    for _ in range(50):
        net.deliver(initiation)
    assert len(net.take_held()) == PACKETS_BURSTABLE
    # Another source is not held back by the first one's flood...
    net.deliver(initiation, source=("203.0.113.7", 4000))
    assert [d.data[0] for d in net.take_held()] == [COOKIE_REPLY]
    # ... but all sources together get COOKIE_REPLIES_PER_SECOND, in bursts of
    # COOKIE_REPLIES_BURSTABLE: the shared bucket, full again after 0.5 s, gave 5 + 1 already.
    sent = 0
    for host in range(2 * COOKIE_REPLIES_BURSTABLE):
        net.deliver(initiation, source=(f"10.0.{host}.1", 4000))
        sent += len(net.take_held())
    assert sent == COOKIE_REPLIES_BURSTABLE - PACKETS_BURSTABLE - 1
    net.now += 1 / COOKIE_REPLIES_PER_SECOND
    net.deliver(initiation, source=("10.1.0.1", 4000))
    assert len(net.take_held()) == 1


def test_not_under_load_mac2_is_not_required() -> None:
    net, a, b = pair()
    net.send(a, a_to_b())
    assert b.delivered == [a_to_b()]
    assert b.core.drops[DropReason.COOKIE_REQUIRED] == 0


def test_handshake_with_bad_mac1_is_dropped_silently() -> None:
    net, a, b = pair()
    net.hold = True
    net.send(a, a_to_b())
    [initiation] = net.take_held()
    wrong = bytearray(initiation.data)
    wrong[-32:-16] = bytes(16)
    net.deliver(Datagram(A_ENDPOINT, B_ENDPOINT, bytes(wrong)), source=("203.0.113.9", 1))
    assert net.take_held() == []
    assert b.drops() == {"invalid_mac1": 1}


# --- cryptokey routing and roaming -----------------------------------------------------------


def test_packet_from_a_source_outside_allowed_ips_is_dropped() -> None:
    net, a, b = established()
    spoofed = ipv4_packet(bytes([10, 0, 0, 99]), B_ADDRESS, b"not mine")
    net.send(a, spoofed)
    assert b.delivered == []
    assert b.drops() == {"disallowed_source": 1}


def test_packet_to_an_unrouted_destination_is_dropped() -> None:
    net, a, _ = established()
    net.send(a, ipv4_packet(A_ADDRESS, bytes([10, 9, 9, 9]), b"nowhere"))
    assert a.drops() == {"no_route": 1}
    net.send(a, b"\x00garbage")
    assert a.drops() == {"no_route": 1, "invalid_inner_packet": 1}


def test_allowed_ips_pick_the_peer_and_moving_a_prefix_moves_traffic() -> None:
    net = Net()
    a = net.add("A", A_ENDPOINT, 1)
    b = net.add("B", B_ENDPOINT, 2)
    c = net.add("C", C_ENDPOINT, 3)
    connect(a, b, b_allowed=["10.0.0.2/32", "10.9.0.0/16"])
    connect(a, c, a_allowed=["10.0.0.1/32"], b_allowed=["10.0.0.3/32"])
    to_c = ipv4_packet(A_ADDRESS, C_ADDRESS, b"for C")
    to_net = ipv4_packet(A_ADDRESS, bytes([10, 9, 1, 1]), b"for the /16")
    net.send(a, to_c)
    net.send(a, to_net)
    assert c.delivered == [to_c]
    assert b.delivered == [to_net]
    # Give 10.9.0.0/16 to C: it moves away from B.
    move = SetRequest(
        peers=[
            PeerSet(
                c.public_key, allowed_ips=[AllowedIPChange(ipaddress.ip_network("10.9.0.0/16"))]
            )
        ]
    )
    assert a.core.apply(move, net.now) == 0
    net.send(a, to_net)
    assert c.delivered == [to_c, to_net]
    assert b.delivered == [to_net]


def test_endpoint_follows_the_last_authenticated_source() -> None:
    net, a, b = established()
    net.hold = True
    net.send(a, a_to_b(b"from a new place"))
    [datagram] = net.take_held()
    roamed = ("198.51.100.7", 40000)
    net.deliver(datagram, source=roamed)
    assert b.peer(a).endpoint == roamed
    # B now answers to the new address.
    net.send(b, b_to_a())
    assert [d.destination for d in net.take_held()] == [roamed]
    # A replay from yet another address does not move it back.
    net.deliver(datagram, source=("203.0.113.66", 1))
    assert b.peer(a).endpoint == roamed


def test_responder_learns_the_endpoint_from_the_initiation() -> None:
    net = Net()
    a = net.add("A", A_ENDPOINT, 1)
    b = net.add("B", B_ENDPOINT, 2)
    connect(a, b, b_knows_a_endpoint=False)
    net.send(b, b_to_a(b"cannot"))  # B does not know where A is
    assert b.drops() == {"no_endpoint": 1}
    assert net.sent == []
    net.send(a, a_to_b(b"hello"))
    assert b.peer(a).endpoint == A_ENDPOINT
    # The packet B staged while it had no endpoint went out once the session was confirmed.
    assert a.delivered == [b_to_a(b"cannot")]


# --- padding and truncation ------------------------------------------------------------------


@pytest.mark.parametrize("size", [20, 21, 31, 32, 33, 100, 1404, 1405, 1419, 1420])
def test_plaintext_is_padded_to_16_but_not_beyond_the_mtu(size: int) -> None:
    net, a, b = established()
    packet = ipv4_packet(A_ADDRESS, B_ADDRESS, bytes(size - 20))
    net.hold = True
    net.send(a, packet)
    [datagram] = net.take_held()
    expected_plaintext = min(-(-size // 16) * 16, 1420)
    assert len(datagram.data) == 16 + expected_plaintext + 16
    net.deliver(datagram)
    assert b.delivered == [packet]  # the padding is cut off again


@given(
    size=st.integers(min_value=0, max_value=70000),
    mtu=st.sampled_from([0, 68, 576, 1280, 1420, 9000]),
)
def test_padded_size_matches_wireguard_go(size: int, mtu: int) -> None:
    result = padded_size(size, mtu)
    assert size <= result < size + 16
    if mtu == 0 or size <= mtu:
        expected = -(-size // 16) * 16
        if mtu:
            expected = min(expected, mtu)
        assert result == max(expected, size)


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=1600), v6=st.booleans())
def test_any_packet_goes_through_unchanged(payload: bytes, v6: bool) -> None:
    net, a, b = established(seed=15)
    if v6:
        packet = ipv6_packet(A_ADDRESS6, B_ADDRESS6, payload)
    else:
        packet = ipv4_packet(A_ADDRESS, B_ADDRESS, payload)
    net.hold = True
    net.send(a, packet)
    [datagram] = net.take_held()
    assert len(datagram.data) == 32 + padded_size(len(packet), 1420)
    net.deliver(datagram)
    assert b.delivered == [packet]


def test_trailing_bytes_after_the_ip_packet_are_cut_on_receive() -> None:
    net, a, b = established()
    packet = ipv4_packet(A_ADDRESS, B_ADDRESS, b"twelve bytes")
    net.send(a, packet + b"TRAILING-GARBAGE")
    assert b.delivered == [packet]


def test_inner_packet_claiming_more_than_it_has_is_dropped() -> None:
    net, a, b = established()
    liar = bytearray(a_to_b(b"short"))
    struct.pack_into("!H", liar, 2, 500)
    net.send(a, bytes(liar))
    assert b.delivered == []
    assert b.drops() == {"invalid_inner_packet": 1}


def test_one_packet_each_way_through_the_per_packet_path() -> None:
    net, a, b = established()
    packet = a_to_b(b"one")
    out = memoryview(bytearray(MAX_DATAGRAM_SIZE))
    sent = a.core.encapsulate(packet, out, net.now)
    assert isinstance(sent, WriteToNetwork)
    assert sent.endpoint == B_ENDPOINT
    # 20 + 4 bytes of IPv4 packet, padded to 32, behind 16 bytes of header and a 16-byte tag.
    assert sent.size == 16 + 32 + 16
    plain = memoryview(bytearray(MAX_DATAGRAM_SIZE))
    received = b.core.decapsulate(A_ENDPOINT, out[: sent.size], plain, net.now)
    assert received == WriteToTunnel(len(packet), a.public_key)
    assert bytes(plain[: received.size]) == packet
    # The same datagram again is a replay.
    again = b.core.decapsulate(A_ENDPOINT, out[: sent.size], plain, net.now)
    assert again == Dropped(DropReason.REPLAYED_COUNTER, a.public_key)


def test_encapsulate_leaves_the_packet_as_it_was() -> None:
    """Padding is written into the core's own buffer, never after the caller's packet."""
    net, a, b = established()
    buffer = bytearray(a_to_b(b"x") + b"\xaa" * 40)  # room after the packet
    packet = memoryview(buffer)[:21]
    out = memoryview(bytearray(MAX_DATAGRAM_SIZE))
    sent = a.core.encapsulate(packet, out, net.now)
    assert isinstance(sent, WriteToNetwork)
    assert buffer[21:] == b"\xaa" * 40
    plain = memoryview(bytearray(MAX_DATAGRAM_SIZE))
    received = b.core.decapsulate(A_ENDPOINT, out[: sent.size], plain, net.now)
    assert isinstance(received, WriteToTunnel)
    assert bytes(plain[: received.size]) == bytes(packet)


def test_results_say_queued_and_dropped_with_their_reasons() -> None:
    net, a, b = pair()
    out = memoryview(bytearray(MAX_DATAGRAM_SIZE))
    assert a.core.encapsulate(a_to_b(), out, net.now) == Queued(b.public_key)
    nowhere = ipv4_packet(A_ADDRESS, bytes([10, 9, 9, 9]), b"x")
    assert a.core.encapsulate(nowhere, out, net.now) == Dropped(DropReason.NO_ROUTE)
    assert a.core.encapsulate(b"\x45", out, net.now) == Dropped(DropReason.INVALID_INNER_PACKET)
    assert b.core.decapsulate(A_ENDPOINT, b"\x07" * 40, out, net.now) == Dropped(
        DropReason.MALFORMED
    )


# --- keypair lifecycle -----------------------------------------------------------------------


def test_packets_in_flight_under_the_previous_keypair_still_arrive() -> None:
    net, a, b = established()
    net.advance(121)  # A's keypair is now old enough to rekey on sending
    net.hold = True
    net.send(a, a_to_b(b"under old keys"))
    held = net.take_held()
    assert [d.data[0] for d in held] == [TRANSPORT, INITIATION]
    old_data, initiation = held
    net.deliver(initiation)
    net.deliver(net.take_held()[0])  # response to A: new current, old one is previous
    for datagram in net.take_held():
        net.deliver(datagram)
    net.deliver(old_data)  # arrives late, under the keypair B now keeps as previous
    assert a_to_b(b"under old keys") in b.delivered


def test_rekey_after_messages_starts_a_handshake_and_reject_after_messages_stops_sending() -> None:
    net, a, b = established()
    keypair = a.peer(b).keypairs.current
    assert keypair is not None
    keypair.send_counter = REKEY_AFTER_MESSAGES
    net.now += 6  # (at most one initiation per REKEY_TIMEOUT)
    net.hold = True
    net.send(a, a_to_b(b"counter high"))
    assert [d.data[0] for d in net.take_held()] == [TRANSPORT, INITIATION]
    keypair.send_counter = REJECT_AFTER_MESSAGES
    net.now += 6
    net.send(a, a_to_b(b"counter exhausted"))
    assert [d.data[0] for d in net.take_held()] == [INITIATION]
    assert a.peer(b).staged


def test_low_order_peer_is_accepted_but_never_sent_anything() -> None:
    for text in LOW_ORDER_POINTS:
        key = PublicKey.from_base64(text)
        core = WireGuardCore(PrivateKey.generate(random.Random(3).randbytes))
        core.add_peer(
            key, endpoint=B_ENDPOINT, allowed_ips=["10.0.0.2/32"], persistent_keepalive=1, now=0.0
        )
        actions = list(send_packet(core, a_to_b(), 0.0)) + list(core.handle_timer(100.0))
        assert not any(isinstance(x, SendDatagram) for x in actions), text
        assert core.drops[DropReason.LOW_ORDER_KEY] >= 1
        assert core.snapshot().peers[0].public_key == key


def test_no_private_key_means_no_handshakes() -> None:
    core = WireGuardCore()
    peer_key = PrivateKey.generate(random.Random(4).randbytes)
    core.add_peer(peer_key.public_key(), endpoint=B_ENDPOINT, allowed_ips=["10.0.0.2/32"], now=0.0)
    assert not [x for x in send_packet(core, a_to_b(), 0.0) if isinstance(x, SendDatagram)]
    net, a, _ = pair()
    net.hold = True
    net.send(a, a_to_b())
    [initiation] = net.take_held()
    assert receive_datagram(core, initiation.data, A_ENDPOINT, 0.0) == []
    assert core.drops[DropReason.NO_PRIVATE_KEY] == 2


# --- configuration -------------------------------------------------------------------------


def test_from_config_builds_peers_and_needs_resolved_host_names() -> None:
    rng = random.Random(6)
    ours, theirs, third = (PrivateKey.generate(rng.randbytes) for _ in range(3))
    text = f"""
[Interface]
PrivateKey = {ours.to_base64()}
ListenPort = 51820
FwMark = 0x10
MTU = 1380

[Peer]
PublicKey = {theirs.public_key().to_base64()}
AllowedIPs = 10.0.0.2/32, fd00::2/128
Endpoint = 192.0.2.2:51820

[Peer]
PublicKey = {third.public_key().to_base64()}
AllowedIPs = 10.0.0.3/32
Endpoint = vpn.example.com:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {ours.public_key().to_base64()}
AllowedIPs = 10.0.0.99/32
"""
    config = parse_config(text)
    with pytest.raises(ConfigError, match="not resolved"):
        WireGuardCore.from_config(config, now=0.0)
    core = WireGuardCore.from_config(
        config, now=0.0, endpoints={third.public_key(): ("203.0.113.3", 51820)}
    )
    assert core.public_key == ours.public_key()
    assert (core.listen_port, core.fwmark, core.mtu) == (51820, 0x10, 1380)
    assert list(core.peers) == [theirs.public_key(), third.public_key()]  # own key ignored
    assert core.peers[third.public_key()].endpoint == ("203.0.113.3", 51820)
    # The persistent keepalive started a handshake with the third peer at once.
    actions = core.take_actions()
    assert [(x.data[0], x.endpoint) for x in actions if isinstance(x, SendDatagram)] == [
        (INITIATION, ("203.0.113.3", 51820))
    ]
