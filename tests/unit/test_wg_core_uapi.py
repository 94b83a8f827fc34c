"""UAPI connected to the core: ``set=1`` requests applied with wireguard-go's semantics, ``get=1``.

Requests are written as text, the way ``wg`` sends them, and go through the real parser
(:class:`UapiRequestParser`); answers go through the real serializer and parser of ``get``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from tests.helpers.wgnet import (
    A_ADDRESS,
    A_ENDPOINT,
    WALL_START,
    a_to_b,
    established,
    ipv4_packet,
    pair,
    send_packet,
)

from minivpn.wireguard import uapi
from minivpn.wireguard.core import WireGuardCore
from minivpn.wireguard.events import (
    DropReason,
    FwmarkChanged,
    ListenPortChanged,
    SendDatagram,
)
from minivpn.wireguard.keys import PresharedKey, PrivateKey
from minivpn.wireguard.uapi import (
    EINVAL,
    SET_SLICE_LINES,
    SetRequest,
    UapiEvent,
    UapiRequestParser,
    format_get_response,
    parse_get_response,
)

if TYPE_CHECKING:
    import pytest

INITIATION, TRANSPORT = 1, 4


def request(*lines: str) -> SetRequest:
    """Parse one ``set=1`` operation made of ``lines``."""
    events = UapiRequestParser().feed(
        ("set=1\n" + "".join(f"{line}\n" for line in lines) + "\n").encode()
    )
    [event] = events
    assert isinstance(event, SetRequest)
    return event


def keys(seed: int, count: int) -> list[PrivateKey]:
    rng = random.Random(seed)
    return [PrivateKey.generate(rng.randbytes) for _ in range(count)]


def test_set_then_get_round_trip() -> None:
    own, first, second = keys(1, 3)
    psk = PresharedKey(bytes(range(32)))
    core = WireGuardCore(wall_clock=lambda: WALL_START)
    errno = core.apply(
        request(
            f"private_key={own.to_hex()}",
            "listen_port=51820",
            "fwmark=7",
            f"public_key={first.public_key().to_hex()}",
            f"preshared_key={psk.to_hex()}",
            "endpoint=192.0.2.7:51820",
            "allowed_ip=10.0.0.2/32",
            "allowed_ip=10.1.0.0/16",
            f"public_key={second.public_key().to_hex()}",
            "endpoint=[fd00::7]:4500",
            "allowed_ip=fd00::7/128",
        ),
        0.0,
    )
    assert errno == 0
    snapshot = parse_get_response(format_get_response(core.snapshot()))
    assert snapshot.private_key == own
    assert (snapshot.listen_port, snapshot.fwmark) == (51820, 7)
    peers = {peer.public_key: peer for peer in snapshot.peers}
    one, two = peers[first.public_key()], peers[second.public_key()]
    assert one.preshared_key == psk
    assert one.endpoint == "192.0.2.7:51820"
    assert one.allowed_ips == ("10.0.0.2/32", "10.1.0.0/16")
    assert two.preshared_key is None
    assert two.endpoint == "[fd00::7]:4500"
    assert two.allowed_ips == ("fd00::7/128",)
    assert (one.last_handshake_time_sec, one.tx_bytes, one.rx_bytes) == (0, 0, 0)
    actions = core.take_actions()
    assert ListenPortChanged(51820) in actions
    assert FwmarkChanged(7) in actions


def test_get_reports_traffic_and_the_time_of_the_last_handshake() -> None:
    net, a, b = established()
    net.wall += 0.25
    net.send(a, a_to_b(b"counted"))
    [peer] = parse_get_response(format_get_response(b.core.snapshot())).peers
    assert peer.last_handshake_time_sec == int(WALL_START)
    # rx_bytes as wireguard-go counts: 148 for the initiation, then per data message the
    # plaintext length (padded) + 32; tx_bytes: the response (92).
    data_sizes = [
        len(d.data) for d in net.sent if d.source == A_ENDPOINT and d.data[0] == TRANSPORT
    ]
    assert peer.rx_bytes == 148 + sum(data_sizes)
    assert peer.tx_bytes == 92


def test_changing_the_private_key_removes_a_peer_with_that_key_and_expires_sessions() -> None:
    net, a, b = established()
    third = keys(7, 1)[0]
    a.core.add_peer(third.public_key(), allowed_ips=["10.0.0.3/32"], now=net.now)
    old_keypair = a.peer(b).keypairs.current
    assert old_keypair is not None
    assert a.core.apply(request(f"private_key={third.to_hex()}"), net.now) == 0
    assert list(a.core.peers) == [b.public_key]  # the peer with our new key is gone
    assert a.core.public_key == third.public_key()
    assert not old_keypair.can_send(net.now)
    # The next packet needs a new handshake (which B refuses: it does not know the new key).
    actions = send_packet(a.core, a_to_b(), net.now)
    assert [x.data[0] for x in actions if isinstance(x, SendDatagram)] == [INITIATION]


def test_setting_the_same_private_key_changes_nothing() -> None:
    net, a, b = established()
    keypair = a.peer(b).keypairs.current
    assert a.core.apply(request(f"private_key={a.key.to_hex()}"), net.now) == 0
    assert keypair is not None
    assert keypair.can_send(net.now)


def test_zero_private_key_clears_it() -> None:
    net, a, _ = pair()
    assert a.core.apply(request("private_key=" + "0" * 64), net.now) == 0
    assert a.core.public_key is None
    assert b"private_key" not in format_get_response(a.core.snapshot())
    net.send(a, a_to_b())
    assert net.sent == []
    assert a.core.drops[DropReason.NO_PRIVATE_KEY] == 1


def test_replace_peers_update_only_and_remove() -> None:
    own, first, second, third = keys(2, 4)
    core = WireGuardCore(own)
    core.add_peer(first.public_key(), allowed_ips=["10.0.0.1/32"], now=0.0)
    core.add_peer(second.public_key(), allowed_ips=["10.0.0.2/32"], now=0.0)
    # update_only: never creates, but does update.
    assert (
        core.apply(
            request(
                f"public_key={third.public_key().to_hex()}",
                "update_only=true",
                "allowed_ip=10.0.0.3/32",
                f"public_key={second.public_key().to_hex()}",
                "update_only=true",
                "endpoint=192.0.2.2:1",
            ),
            0.0,
        )
        == 0
    )
    assert list(core.peers) == [first.public_key(), second.public_key()]
    assert core.peers[second.public_key()].endpoint == ("192.0.2.2", 1)
    # remove
    assert core.apply(request(f"public_key={first.public_key().to_hex()}", "remove=true"), 0.0) == 0
    assert list(core.peers) == [second.public_key()]
    assert core.allowed_ips.lookup(bytes([10, 0, 0, 1])) is None
    # replace_peers, then a new one
    assert (
        core.apply(request("replace_peers=true", f"public_key={third.public_key().to_hex()}"), 0.0)
        == 0
    )
    assert list(core.peers) == [third.public_key()]
    assert core.allowed_ips.lookup(bytes([10, 0, 0, 2])) is None


def test_allowed_ip_add_remove_and_replace() -> None:
    own, peer = keys(3, 2)
    core = WireGuardCore(own)
    pk = peer.public_key().to_hex()
    core.apply(request(f"public_key={pk}", "allowed_ip=10.0.0.0/24", "allowed_ip=10.9.0.0/16"), 0.0)
    core.apply(
        request(f"public_key={pk}", "allowed_ip=-10.9.0.0/16", "allowed_ip=-10.8.0.0/16"), 0.0
    )
    [snapshot] = core.snapshot().peers
    assert snapshot.allowed_ips == ("10.0.0.0/24",)
    core.apply(request(f"public_key={pk}", "replace_allowed_ips=true", "allowed_ip=fd00::/64"), 0.0)
    [snapshot] = core.snapshot().peers
    assert snapshot.allowed_ips == ("fd00::/64",)
    # The route cache must not remember a prefix that left.
    assert core.allowed_ips.lookup(bytes([10, 0, 0, 5])) is None
    assert send_packet(core, ipv4_packet(A_ADDRESS, bytes([10, 0, 0, 5]), b"x"), 0.0) == []
    assert core.drops[DropReason.NO_ROUTE] == 1


def test_route_cache_follows_allowed_ip_changes() -> None:
    net, a, b = established()
    net.send(a, a_to_b(b"cached route"))  # the destination is now in the route cache
    assert b.delivered == [a_to_b(b"cached route")]
    a.core.apply(request(f"public_key={b.public_key.to_hex()}", "allowed_ip=-10.0.0.2/32"), net.now)
    net.send(a, a_to_b(b"no route any more"))
    assert b.delivered == [a_to_b(b"cached route")]
    assert a.core.drops[DropReason.NO_ROUTE] == 1


def test_turning_persistent_keepalive_on_sends_a_keepalive_at_once() -> None:
    net, a, b = established()
    net.hold = True
    a.core.apply(
        request(f"public_key={b.public_key.to_hex()}", "persistent_keepalive_interval=25"), net.now
    )
    net.handle(a, a.core.take_actions())
    [keepalive] = net.take_held()
    assert keepalive.data[0] == TRANSPORT
    assert len(keepalive.data) == 32
    # Changing the interval while it is on sends nothing.
    a.core.apply(
        request(f"public_key={b.public_key.to_hex()}", "persistent_keepalive_interval=30"), net.now
    )
    net.handle(a, a.core.take_actions())
    assert net.take_held() == []
    assert a.peer(b).persistent_keepalive_interval == 30


def test_own_public_key_in_a_peer_part_is_ignored() -> None:
    own, other = keys(4, 2)
    core = WireGuardCore(own)
    errno = core.apply(
        request(
            f"public_key={own.public_key().to_hex()}",
            "allowed_ip=10.0.0.0/8",
            f"public_key={other.public_key().to_hex()}",
        ),
        0.0,
    )
    assert errno == 0
    assert list(core.peers) == [other.public_key()]
    assert core.allowed_ips.lookup(bytes([10, 1, 2, 3])) is None


def test_what_came_before_a_bad_line_is_applied_and_its_errno_returned() -> None:
    own, first = keys(5, 2)
    core = WireGuardCore(own)
    parsed = request(
        f"public_key={first.public_key().to_hex()}", "allowed_ip=10.0.0.1/32", "endpoint=nonsense"
    )
    assert parsed.errno == EINVAL
    assert core.apply(parsed, 0.0) == EINVAL
    assert list(core.peers) == [first.public_key()]
    assert core.allowed_ips.lookup(bytes([10, 0, 0, 1])) is core.peers[first.public_key()]


def test_snapshot_endpoint_follows_roaming() -> None:
    net, a, b = established()
    net.hold = True
    net.send(a, a_to_b())
    [datagram] = net.take_held()
    net.deliver(datagram, source=("fd00::99", 4000))
    [peer] = b.core.snapshot().peers
    assert peer.endpoint == "[fd00::99]:4000"


def test_a_set_applied_in_slices_ends_where_the_whole_request_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The slices of a long ``wg setconf`` request, applied one by one, leave the same device."""
    own, *peers = keys(7, 4)
    lines = [f"private_key={own.to_hex()}", "listen_port=51820", "replace_peers=true"]
    for number, peer in enumerate(peers):
        lines += [f"public_key={peer.public_key().to_hex()}", "replace_allowed_ips=true"]
        lines += [f"endpoint=192.0.2.{number + 1}:51820", "persistent_keepalive_interval=0"]
        lines += [f"allowed_ip=10.{number}.{n >> 8}.{n & 255}/32" for n in range(1500)]
        lines.append("allowed_ip=10.99.0.0/16")  # moved from peer to peer: the last one keeps it
    text = ("set=1\n" + "".join(f"{line}\n" for line in lines) + "\n").encode()

    def applied(requests: list[UapiEvent]) -> bytes:
        core = WireGuardCore(wall_clock=lambda: WALL_START)
        core.apply(request(f"public_key={keys(8, 1)[0].public_key().to_hex()}"), 0.0)
        for part in requests:
            assert isinstance(part, SetRequest)
            assert core.apply(part, 0.0) == 0
        return format_get_response(core.snapshot())

    slices = UapiRequestParser().feed(text)
    assert len(slices) == -(-len(lines) // SET_SLICE_LINES)
    monkeypatch.setattr(uapi, "SET_SLICE_LINES", len(lines) + 1)
    [whole] = UapiRequestParser().feed(text)
    assert applied(slices) == applied([whole])
