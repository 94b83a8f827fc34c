"""Layer-2 mode end to end in memory: EthernetCores (hub and spokes) exchanging frames.

Sans-IO: tests/helpers/l2net.py carries the datagrams and plays the TAP devices.  Also the
``Mode``/``AllowedMACs``/``FloodRate``/``FloodBurst`` configuration keys, and the mode mismatch
against a layer-3 core.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers.l2net import BROADCAST, L2Net, frame, hub_and_spokes, mac
from tests.helpers.wgnet import A_ADDRESS, B_ADDRESS, Net, ipv4_packet

from minivpn.runtime.vpn import _moved
from minivpn.wireguard.config import ConfigError, format_config, parse_config
from minivpn.wireguard.counters import KEEPALIVE_SIZE
from minivpn.wireguard.ethernet import FRAME_HEADER_SIZE, EthernetCore
from minivpn.wireguard.events import DropReason, MacMoved, ModeMismatch
from minivpn.wireguard.keys import PrivateKey, PublicKey
from minivpn.wireguard.results import DONE, Dropped, Switched, WriteToNetwork
from minivpn.wireguard.switch import MacPrefix
from minivpn.wireguard.uapi import format_get_response, parse_get_response

HOST1, HOST2, HUBHOST = mac(1), mac(2), mac(3)


def test_broadcast_from_a_spoke_reaches_the_hub_tap_and_the_other_spoke_not_the_sender() -> None:
    net, hub, one, two = hub_and_spokes()
    arp = frame(BROADCAST, HOST1, b"who-has" + bytes(39), ethertype=0x0806)
    result = net.frame_from_tap(one, arp)
    assert isinstance(result, Switched)  # a flood, to the one peer: the hub
    assert len(result.datagrams) == 1
    assert hub.tap == [arp]
    assert two.tap == [arp]
    assert one.tap == []  # split horizon: nothing came back
    # the hub learned HOST1 behind spoke 1; spoke 2 learned it behind the hub
    assert hub.core.switch.lookup(HOST1, net.now) is hub.peer(one)
    assert two.core.switch.lookup(HOST1, net.now) is two.peer(hub)


def test_keepalives_are_counted_as_such_not_as_frames() -> None:
    net, hub, one, _ = hub_and_spokes()
    net.frame_from_tap(one, frame(BROADCAST, HOST1, bytes(46)))  # a session, and data from 1
    of_hub = one.peer(hub)
    rx_before, data_before = of_hub.rx_bytes, of_hub.counters.data_bytes(of_hub.rx_bytes, 0)
    net.advance(11)  # the hub received data and sent nothing back for 10 s: a keepalive
    assert of_hub.counters.keepalives_received == 1
    assert of_hub.rx_bytes == rx_before + KEEPALIVE_SIZE
    assert of_hub.counters.data_bytes(of_hub.rx_bytes, 0) == data_before  # not data


def test_unicast_spoke_to_spoke_is_switched_by_the_hub_past_its_tap() -> None:
    net, hub, one, two = hub_and_spokes()
    net.frame_from_tap(one, frame(BROADCAST, HOST1))
    net.frame_from_tap(two, frame(HOST1, HOST2, b"reply" + bytes(41)))
    assert one.tap == [frame(HOST1, HOST2, b"reply" + bytes(41))]
    hub.tap.clear()
    one.tap.clear()
    two.tap.clear()
    data = frame(HOST2, HOST1, b"unicast" + bytes(100))
    net.frame_from_tap(one, data)
    assert two.tap == [data]
    assert hub.tap == []  # known unicast behind another spoke: never on the hub's TAP
    net.frame_from_tap(hub, frame(HOST1, HUBHOST))
    assert one.tap == [frame(HOST1, HUBHOST)]
    assert two.tap == [data]


def test_unknown_unicast_floods_and_the_answer_is_unicast() -> None:
    net, hub, one, two = hub_and_spokes()
    net.frame_from_tap(one, frame(HOST2, HOST1))  # HOST2 unknown everywhere
    assert hub.tap == [frame(HOST2, HOST1)]
    assert two.tap == [frame(HOST2, HOST1)]
    net.sent.clear()
    net.frame_from_tap(two, frame(HOST1, HOST2))
    assert one.tap == [frame(HOST1, HOST2)]
    assert len(hub.tap) == 1  # not flooded to the hub's TAP: HOST1 is known behind spoke 1
    assert len(net.sent) == 2  # spoke 2 -> hub -> spoke 1


def test_a_frame_for_this_side_goes_nowhere() -> None:
    net, _, one, _ = hub_and_spokes()
    net.frame_from_tap(one, frame(BROADCAST, HOST2))  # HOST2 is behind spoke 1's TAP
    net.sent.clear()
    assert net.frame_from_tap(one, frame(HOST2, HOST1)) == DONE
    assert net.sent == []


def test_a_mac_move_between_spokes_is_reported() -> None:
    net, hub, one, two = hub_and_spokes()
    net.frame_from_tap(one, frame(BROADCAST, HOST1))
    net.frame_from_tap(two, frame(BROADCAST, HOST1))  # the host moved to site 2
    moves = [e for e in hub.events if isinstance(e, MacMoved)]
    assert moves == [MacMoved(HOST1, one.public_key, two.public_key)]
    assert hub.core.switch.lookup(HOST1, net.now) is hub.peer(two)
    net.frame_from_tap(hub, frame(HOST1, HUBHOST))
    assert two.tap[-1] == frame(HOST1, HUBHOST)


def test_moves_not_reported_are_counted_in_the_next_reported_move_and_its_log_line() -> None:
    net, hub, one, two = hub_and_spokes()
    for n in range(6):  # HOST1 flaps: 1 -> 2 reported, then four moves within 10 s are not
        net.frame_from_tap(two if n % 2 else one, frame(BROADCAST, HOST1))
    net.advance(11.0)
    net.frame_from_tap(one, frame(BROADCAST, HOST2))
    net.frame_from_tap(two, frame(BROADCAST, HOST2))  # another address moves: reported
    moves = [e for e in hub.events if isinstance(e, MacMoved)]
    assert moves == [
        MacMoved(HOST1, one.public_key, two.public_key, 0),
        MacMoved(HOST2, one.public_key, two.public_key, 4),
    ]
    line = _moved(moves[1])
    assert line.startswith(f"MAC {HOST2.hex(':')} moved from peer ")
    assert line.endswith(" (4 more moves not logged since the last such line)")
    assert "not logged" not in _moved(moves[0])


def test_storm_control_drops_and_counts_floods_beyond_the_limit_on_both_ways() -> None:
    net, hub, one, two = hub_and_spokes()
    for node in (hub, one):
        node.core.switch.flood_rate, node.core.switch.flood_burst = 1.0, 2.0
    net.frame_from_tap(two, frame(BROADCAST, HOST2))  # before the limits: spoke 2's bucket
    hub.tap.clear()
    two.tap.clear()
    for n in range(3):  # spoke 1's TAP port may flood two: the third is dropped there
        net.frame_from_tap(one, frame(BROADCAST, bytes([2, 1, 0, 0, 0, n])))
    assert one.drops() == {"flood_limited": 1}
    assert len(hub.tap) == len(two.tap) == 2
    one.core.switch.flood_rate = None  # spoke 1 floods unlimited: now the hub limits it
    for n in range(3, 6):
        net.frame_from_tap(one, frame(BROADCAST, bytes([2, 1, 0, 0, 0, n])))
    assert hub.drops() == {"flood_limited": 3}  # spoke 1's port at the hub has no token left
    assert len(hub.tap) == len(two.tap) == 2
    known = bytes([2, 1, 0, 0, 0, 0])  # learned behind spoke 1: unicast to it still flows
    net.frame_from_tap(two, frame(known, HOST2))
    assert one.tap[-1] == frame(known, HOST2)
    assert hub.drops() == {"flood_limited": 3}


def test_allowed_macs_refuse_a_forged_source_and_count_it() -> None:
    net, hub, one, two = hub_and_spokes()
    hub.core.set_allowed_macs(one.public_key, [MacPrefix(HOST1)])
    net.frame_from_tap(two, frame(BROADCAST, HOST2))
    hub.tap.clear()
    forged = frame(BROADCAST, HOST2)  # spoke 1 pretends to be HOST2
    net.frame_from_tap(one, forged)
    assert hub.tap == []
    assert hub.drops() == {"disallowed_mac": 1}
    assert hub.core.switch.lookup(HOST2, net.now) is hub.peer(two)
    net.frame_from_tap(one, frame(BROADCAST, HOST1))
    assert hub.tap == [frame(BROADCAST, HOST1)]


def test_aging_with_the_fake_clock_floods_again() -> None:
    net, hub, one, two = hub_and_spokes(mac_aging=30.0)
    net.frame_from_tap(one, frame(BROADCAST, HOST1))
    hub.tap.clear()
    net.frame_from_tap(hub, frame(HOST1, HUBHOST))
    assert two.tap == [frame(BROADCAST, HOST1)]  # unicast: not to spoke 2
    net.advance(31.0)
    net.frame_from_tap(hub, frame(HOST1, HUBHOST))
    assert two.tap[-1] == frame(HOST1, HUBHOST)  # aged out: flooded


def test_oversized_and_runt_frames_are_dropped_and_counted() -> None:
    net, _, one, _ = hub_and_spokes()
    mtu = one.core.mtu
    assert mtu == 1420 - 16
    assert isinstance(net.frame_from_tap(one, frame(BROADCAST, HOST1, bytes(mtu))), Switched)
    assert net.frame_from_tap(one, frame(BROADCAST, HOST1, bytes(mtu + 1))) == Dropped(
        DropReason.OVERSIZED_FRAME, None
    )
    assert isinstance(net.frame_from_tap(one, bytes(13)), Dropped)
    assert one.drops() == {"oversized_frame": 1, "invalid_frame": 1}


def test_a_full_frame_fills_a_1500_byte_ipv6_datagram() -> None:
    net, _, one, _ = hub_and_spokes()
    net.frame_from_tap(one, frame(BROADCAST, HOST1, bytes(one.core.mtu)))
    (datagram,) = [d for source, _, d in net.sent if source == one.endpoint]
    assert len(datagram) + 8 + 40 == 1500


def test_vlan_tagged_frames_pass_unchanged() -> None:
    net, _, one, two = hub_and_spokes()
    tagged = frame(BROADCAST, HOST1, b"\x00\x64\x08\x00" + bytes(60), ethertype=0x8100)
    net.frame_from_tap(one, tagged)
    assert two.tap == [tagged]


def test_frames_wait_for_a_handshake_then_go() -> None:
    net = L2Net()
    a = net.add("A", ("192.0.2.1", 51820), 11)
    b = net.add("B", ("192.0.2.2", 51820), 12)
    net.link(a, b)
    net.frame_from_tap(b, frame(BROADCAST, HOST2))  # no session: a handshake starts instead
    assert a.tap == []
    assert b.peer(a).keypairs.current is not None
    net.frame_from_tap(b, frame(BROADCAST, HOST2))
    net.frame_from_tap(a, frame(HOST2, HOST1))  # unicast to a known peer
    assert b.tap == [frame(HOST2, HOST1)]


def test_a_layer3_peer_is_a_mode_mismatch_both_ways() -> None:
    """An L3 core and an L2 core with the same keys: authenticated, then refused and named."""
    l3 = Net()
    a = l3.add("A", ("192.0.2.1", 51820), 21)
    key = PrivateKey(bytes(range(1, 33)))
    tap = EthernetCore(key, report_drops=True, wall_clock=l3.wall_clock)

    a.core.add_peer(
        key.public_key(), endpoint=("192.0.2.2", 51820), allowed_ips=["0.0.0.0/0"], now=l3.now
    )
    tap.add_peer(a.public_key, endpoint=a.endpoint, now=l3.now)
    out = memoryview(bytearray(4096))
    a.core.encapsulate(ipv4_packet(A_ADDRESS, B_ADDRESS, b"hi"), out, l3.now)
    (initiation,) = [x.data for x in a.core.take_actions() if hasattr(x, "data")]
    result = tap.decapsulate_frame(a.endpoint, initiation, out, l3.now)
    assert isinstance(result, WriteToNetwork)
    a.core.decapsulate(
        ("192.0.2.2", 51820), out[: result.size], memoryview(bytearray(4096)), l3.now
    )
    staged = [x.data for x in a.core.take_actions() if hasattr(x, "data")]
    assert staged  # the staged IP packet, now encrypted
    for datagram in staged:
        result = tap.decapsulate_frame(a.endpoint, datagram, out, l3.now)
    assert result == Dropped(DropReason.MODE_MISMATCH, a.public_key)
    assert ModeMismatch(a.public_key, "packet") in tap.take_actions()
    # and a frame to the L3 core
    message = memoryview(bytearray(FRAME_HEADER_SIZE + 60))
    message[FRAME_HEADER_SIZE:] = frame(BROADCAST, HOST1)
    sent = tap.encapsulate_frame(message, out, l3.now)
    assert isinstance(sent, Switched)
    (datagram_at,) = sent.datagrams
    datagram = bytes(out[datagram_at.start : datagram_at.start + datagram_at.size])
    a.core.decapsulate(("192.0.2.2", 51820), datagram, memoryview(bytearray(4096)), l3.now)
    assert a.core.drops[DropReason.MODE_MISMATCH] == 1


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_after_authentication_never_raises(payload: bytes) -> None:
    """Any decrypted content: a frame, a drop, a mismatch; never an exception."""
    net, hub, one, _ = hub_and_spokes(seed=3)
    keypair = one.peer(hub).keypairs.current
    assert keypair is not None
    out = memoryview(bytearray(1024))
    size = one.core._send_data(one.peer(hub), keypair, payload, out, net.now)
    result = hub.core.decapsulate_frame(
        one.endpoint, bytes(out[:size]), memoryview(bytearray(8192)), net.now
    )
    assert result is not None


# --- configuration ------------------------------------------------------------------------------

KEY = PrivateKey(bytes(range(1, 33))).to_base64()
PEER = PublicKey(bytes(range(100, 132))).to_base64()


def test_mode_and_allowed_macs_parse_and_format() -> None:
    text = (
        f"[Interface]\nPrivateKey = {KEY}\nMode = TAP\n\n"
        f"[Peer]\nPublicKey = {PEER}\nAllowedMACs = 02:00:00:00:00:01, 52:54:00:00:00:00/24\n"
        "AllowedMACs = 02:00:00:00:00:02\n"
    )
    config = parse_config(text, "l2.conf")
    assert config.interface.mode == "tap"
    assert [str(m) for m in config.peers[0].allowed_macs] == [
        "02:00:00:00:00:01",
        "52:54:00:00:00:00/24",
        "02:00:00:00:00:02",
    ]
    assert parse_config(format_config(config), "again.conf") == config
    assert parse_config(f"[Interface]\nPrivateKey = {KEY}\n", "x").interface.mode == "tun"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[Interface]\nMode = tab\n", "l2.conf:2: Mode must be tun"),
        (
            f"[Interface]\nMode = tap\n[Peer]\nPublicKey = {PEER}\nAllowedIPs = 10.0.0.0/8\n",
            "l2.conf:5: AllowedIPs has no meaning with 'Mode = tap' (line 2)",
        ),
        (
            f"[Peer]\nPublicKey = {PEER}\nAllowedMACs = 02:00:00:00:00:01\n"
            "[Interface]\nMode = tun\n",
            "l2.conf:3: AllowedMACs needs 'Mode = tap'",
        ),
        (
            f"[Interface]\nMode = tap\n[Peer]\nPublicKey = {PEER}\nAllowedMACs = 02:00:00:00:01\n",
            "l2.conf:5: AllowedMACs: '02:00:00:00:01' is not a MAC address",
        ),
    ],
)
def test_config_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "l2.conf")
    assert str(info.value).startswith(message)


def test_from_config_applies_allowed_macs_and_the_tap_mtu() -> None:
    text = (
        f"[Interface]\nPrivateKey = {KEY}\nMode = tap\n\n"
        f"[Peer]\nPublicKey = {PEER}\nAllowedMACs = 02:00:00:00:00:01\n"
    )
    core = EthernetCore.from_config(parse_config(text, "l2.conf"), now=0.0)
    assert core.mtu == 1404
    peer = core.peers[PublicKey.from_base64(PEER)]
    assert [str(p) for p in core.switch.allowed_macs(peer) or ()] == ["02:00:00:00:00:01"]
    response = format_get_response(core.snapshot_at(0.0)).decode()
    assert "minivpn_mode=tap\n" in response
    assert "minivpn_allowed_mac=02:00:00:00:00:01\n" in response


@pytest.mark.parametrize(
    ("lines", "rate", "burst"),
    [
        ("", 2000.0, 1000.0),  # the defaults
        ("FloodRate = 50\nFloodBurst = 5\n", 50.0, 5.0),
        ("floodrate = OFF\n", None, 1000.0),
        ("FloodBurst = 10\n", 2000.0, 10.0),
    ],
)
def test_flood_rate_and_burst_from_the_config_set_storm_control(
    lines: str, rate: float | None, burst: float
) -> None:
    text = f"[Interface]\nPrivateKey = {KEY}\nMode = tap\n{lines}"
    config = parse_config(text, "l2.conf")
    assert parse_config(format_config(config), "again.conf") == config
    core = EthernetCore.from_config(config, now=0.0)
    assert (core.switch.flood_rate, core.switch.flood_burst) == (rate, burst)
    # minivpn show gets it over the UAPI (keys wg skips), 0 for off
    response = format_get_response(core.snapshot_at(0.0))
    expected = f"minivpn_flood_rate={round(rate or 0)}\nminivpn_flood_burst={round(burst)}\n"
    assert expected in response.decode()
    parsed = parse_get_response(response)
    assert (parsed.flood_rate, parsed.flood_burst) == (round(rate or 0), round(burst))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[Interface]\nMode = tap\nFloodRate = fast\n",
            "l2.conf:3: FloodRate must be off or a number of frames a second from 1 to 1000000, "
            "got 'fast'",
        ),
        ("[Interface]\nMode = tap\nFloodRate = 0\n", "l2.conf:3: FloodRate must be off"),
        ("[Interface]\nMode = tap\nFloodRate = 1000001\n", "l2.conf:3: FloodRate must be off"),
        ("[Interface]\nMode = tap\nFloodBurst = 0\n", "l2.conf:3: FloodBurst must be a number"),
        ("[Interface]\nMode = tap\nFloodBurst = -1\n", "l2.conf:3: FloodBurst must be a number"),
        (
            "[Interface]\nFloodRate = 100\n",
            "l2.conf:2: FloodRate needs 'Mode = tap' in [Interface]: it sets the storm control",
        ),
        (
            "[Interface]\nFloodBurst = 100\nMode = tun\n",
            "l2.conf:2: FloodBurst needs 'Mode = tap'",
        ),
        (
            "[Interface]\nMode = tap\nFloodRate = off\nFloodBurst = 10\n",
            "l2.conf:4: FloodBurst has no meaning with 'FloodRate = off' (line 3)",
        ),
        (
            "[Interface]\nMode = tap\nFloodRate = 5\nFloodRate = 6\n",
            "l2.conf:4: duplicate 'FloodRate' in [Interface] (first given on line 3)",
        ),
        ("[Peer]\nFloodRate = 5\n", "l2.conf:2: key 'FloodRate' belongs in [Interface]"),
    ],
)
def test_storm_control_config_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "l2.conf")
    assert str(info.value).startswith(message)
