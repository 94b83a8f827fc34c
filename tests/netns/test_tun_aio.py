"""The attached device under trio: real packets between the kernel and a TunDevice.

Runs inside ``netns/isolate`` (a private network namespace), so devices and addresses made here
are invisible outside.  The kernel is the peer: a UDP socket sends into the device (routed there
by the address on it) and packets written to the device are delivered to a UDP socket.
"""

from __future__ import annotations

import itertools
import socket
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from minivpn import netconf
from minivpn.tuntap import (
    READ_SIZE,
    DeviceGone,
    Mode,
    TunDevice,
    create_persistent,
    delete_persistent,
    open_tun_device,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

_names = itertools.count()


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@pytest.fixture
def tun_name() -> Iterator[str]:
    """A fresh interface name; whatever is left under it is deleted afterwards."""
    name = f"mvaio{next(_names)}"
    yield name
    if _link_exists(name):
        subprocess.run(["ip", "link", "del", name], check=False, timeout=30)


# --- minimal IPv4/UDP, written here so the test does not trust the code under test -----------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 packet carrying one UDP datagram (UDP checksum 0: "none", allowed in IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, header length 5 words
        0,
        20 + len(udp),
        0x1234,  # identification
        0x4000,  # don't fragment
        64,  # TTL
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def parse_ipv4_udp(packet: bytes) -> tuple[str, str, int, int, bytes] | None:
    """(src, dst, sport, dport, payload) of an IPv4 UDP packet, or None for anything else."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    header_length = (packet[0] & 0x0F) * 4
    sport, dport, length = struct.unpack("!HHH", packet[header_length : header_length + 6])
    payload = packet[header_length + 8 : header_length + length]
    return socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), sport, dport, payload


async def _next_udp(device: TunDevice, dport: int) -> tuple[str, str, int, int, bytes]:
    """Read until the UDP packet to *dport* (IPv6 router solicitations etc. are skipped)."""
    for _ in range(100):
        parsed = parse_ipv4_udp(await device.read())
        if parsed is not None and parsed[3] == dport:
            return parsed
    raise AssertionError(f"no UDP packet to port {dport} among 100 packets")


async def _configured(device: TunDevice, cidr: str) -> None:
    netconf.set_link_up(device.name)
    netconf.add_address(device.name, cidr)


async def _bound_udp(address: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((address, 0))
    return sock


# --- tests ------------------------------------------------------------------------------------


async def test_packets_flow_both_ways_through_a_tun_device(tun_name: str) -> None:
    async with open_tun_device(tun_name) as device:
        await _configured(device, "10.9.0.1/24")
        with await _bound_udp("10.9.0.1") as sock:
            port = sock.getsockname()[1]

            # kernel -> device: a datagram to 10.9.0.2 is routed into the TUN.
            await sock.sendto(b"hello tun", ("10.9.0.2", 4000))
            with trio.fail_after(10):
                src, dst, sport, _, payload = await _next_udp(device, 4000)
            assert (src, dst, sport, payload) == ("10.9.0.1", "10.9.0.2", port, b"hello tun")

            # device -> kernel: a packet written to the TUN arrives as if from 10.9.0.2.
            await device.write(ipv4_udp("10.9.0.2", "10.9.0.1", 4000, port, b"hello socket"))
            with trio.fail_after(10):
                data, sender = await sock.recvfrom(2048)
            assert (data, sender) == (b"hello socket", ("10.9.0.2", 4000))
    assert device.stats.dropped_link_down == device.stats.dropped_invalid == 0


async def test_pi_header_carries_the_ethertype(tun_name: str) -> None:
    async with open_tun_device(tun_name, pi=True) as device:
        assert device.pi
        await _configured(device, "10.9.1.1/24")
        with await _bound_udp("10.9.1.1") as sock:
            await sock.sendto(b"with pi", ("10.9.1.2", 4001))
            with trio.fail_after(10):
                for _ in range(100):
                    frame = await device.read()
                    flags, proto = struct.unpack("=H", frame[:2])[0], frame[2:4]
                    if proto == b"\x08\x00" and parse_ipv4_udp(frame[4:]) is not None:
                        break
                else:
                    raise AssertionError("no IPv4 packet")
            assert flags == 0
            assert parse_ipv4_udp(frame[4:]) == (
                "10.9.1.1",
                "10.9.1.2",
                sock.getsockname()[1],
                4001,
                b"with pi",
            )
            # Writing needs the header too: EtherType 0x0800 says IPv4.
            packet = ipv4_udp("10.9.1.2", "10.9.1.1", 4001, sock.getsockname()[1], b"back")
            await device.write(b"\x00\x00\x08\x00" + packet)
            with trio.fail_after(10):
                data, _ = await sock.recvfrom(2048)
            assert data == b"back"


async def test_tap_device_carries_ethernet_frames(tun_name: str) -> None:
    async with open_tun_device(tun_name, Mode.TAP) as device:
        assert device.mode is Mode.TAP
        await _configured(device, "10.9.2.1/24")
        with await _bound_udp("10.9.2.1") as sock:
            await sock.sendto(b"x", ("10.9.2.2", 4002))
            # On layer 2 the kernel first has to resolve 10.9.2.2: an ARP request comes out.
            with trio.fail_after(10):
                for _ in range(100):
                    frame = await device.read()
                    if frame[12:14] == b"\x08\x06":  # EtherType ARP
                        break
                else:
                    raise AssertionError("no ARP request")
            assert frame[0:6] == b"\xff" * 6  # broadcast
            assert frame[14 + 24 : 14 + 28] == socket.inet_aton("10.9.2.2")  # target IP


async def test_temporary_device_vanishes_and_persistent_one_stays(tun_name: str) -> None:
    async with open_tun_device(tun_name) as device:
        assert not device.persistent
        assert _link_exists(tun_name)
    assert device.closed
    assert not _link_exists(tun_name)

    create_persistent(tun_name)
    async with open_tun_device(tun_name) as device:
        assert device.persistent
    assert _link_exists(tun_name)
    assert delete_persistent(tun_name)
    assert not _link_exists(tun_name)


async def test_kernel_picks_a_name_when_none_is_given() -> None:
    async with open_tun_device(None, Mode.TAP) as device:
        assert device.name.startswith("tap")
        assert _link_exists(device.name)
    assert not _link_exists(device.name)


async def test_deleting_the_link_under_a_reader_raises_device_gone(tun_name: str) -> None:
    async with open_tun_device(tun_name) as device:
        netconf.set_link_up(tun_name)
        caught: list[BaseException] = []

        async def reader() -> None:
            try:
                while True:  # IPv6 chatter may arrive first; read until the link is gone
                    await device.read()
            except DeviceGone as exc:
                caught.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                await trio.run_process(["ip", "link", "del", tun_name])
        assert len(caught) == 1
        assert tun_name in str(caught[0])
        with pytest.raises(DeviceGone):
            await device.write(ipv4_udp("10.9.3.2", "10.9.3.1", 1, 2, b"late"))


async def test_write_to_a_down_link_drops_and_counts(tun_name: str) -> None:
    async with open_tun_device(tun_name) as device:
        packet = ipv4_udp("10.9.4.2", "10.9.4.1", 1, 2, b"nobody listens")
        await device.write(packet)  # the link is down: EIO, dropped, no exception
        assert not device.write_nowait(packet)
        assert device.stats.dropped_link_down == 2
        netconf.set_link_up(tun_name)
        assert device.write_nowait(packet)
        assert device.stats.dropped_link_down == 2


async def test_write_of_a_malformed_packet_is_dropped_not_raised(tun_name: str) -> None:
    async with open_tun_device(tun_name, pi=True) as device:
        netconf.set_link_up(tun_name)
        await device.write(b"\x00\x00")  # shorter than the PI header: EINVAL
        assert device.stats.dropped_invalid == 1


async def test_nowait_reads_into_a_buffer_and_batches(tun_name: str) -> None:
    async with open_tun_device(tun_name) as device:
        await _configured(device, "10.9.5.1/24")
        # Quiet the device: no IPv6 chatter (router solicitations) mixed into the counts.
        await trio.Path(f"/proc/sys/net/ipv6/conf/{tun_name}/disable_ipv6").write_text("1")
        buffer = bytearray(READ_SIZE)
        while device.read_nowait_into(buffer):  # drain what came before
            pass
        assert device.read_nowait_into(buffer) == 0  # nothing queued: 0, no waiting

        with await _bound_udp("10.9.5.1") as sock:
            for i in range(5):
                await sock.sendto(b"%d" % i, ("10.9.5.2", 4005))
            await device.wait_readable()
            length = device.read_nowait_into(buffer)
            first = parse_ipv4_udp(bytes(buffer[:length]))
            assert first is not None
            assert first[3:] == (4005, b"0")

            payloads: list[bytes] = []
            with trio.fail_after(10):
                while len(payloads) < 4:
                    batch = await device.read_batch(max_packets=3)
                    assert 1 <= len(batch) <= 3
                    payloads += [p[4] for p in map(parse_ipv4_udp, batch) if p and p[3] == 4005]
            assert payloads == [b"1", b"2", b"3", b"4"]


async def test_one_reader_at_a_time_and_close_wakes_the_reader(tun_name: str) -> None:
    device = open_tun_device(tun_name)
    results: list[str] = []

    async def reader() -> None:
        try:
            await device.read()
        except trio.ClosedResourceError:
            results.append("closed")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await device.read()
            await device.aclose()
    assert results == ["closed"]
    with pytest.raises(trio.ClosedResourceError):
        await device.read()
    with pytest.raises(trio.ClosedResourceError):
        device.write_nowait(b"\x45")
    await device.aclose()  # closing twice is fine
    assert not _link_exists(tun_name)


async def test_device_is_a_trio_channel(tun_name: str) -> None:
    async with open_tun_device(tun_name) as device:
        channel: trio.abc.Channel[bytes] = device
        await _configured(device, "10.9.6.1/24")
        with await _bound_udp("10.9.6.1") as sock:
            await sock.sendto(b"via channel", ("10.9.6.2", 4006))
            with trio.fail_after(10):
                async for packet in channel:
                    parsed = parse_ipv4_udp(packet)
                    if parsed and parsed[3] == 4006:
                        break
            assert parsed is not None
            assert parsed[4] == b"via channel"
            await channel.send(ipv4_udp("10.9.6.2", "10.9.6.1", 4006, sock.getsockname()[1], b"ok"))
            with trio.fail_after(10):
                data, _ = await sock.recvfrom(2048)
            assert data == b"ok"


async def test_multi_queue_device_takes_several_attachments(tun_name: str) -> None:
    async with (
        open_tun_device(tun_name, multi_queue=True) as first,
        open_tun_device(tun_name, multi_queue=True) as second,
    ):
        assert first.name == second.name == tun_name
        assert first.fileno() != second.fileno()
        await first.aclose()
        assert _link_exists(tun_name)  # the second queue keeps it alive
    assert not _link_exists(tun_name)


async def test_mtu_follows_the_link(tun_name: str) -> None:
    async with open_tun_device(tun_name) as device:
        assert device.mtu() == 1500
        netconf.set_mtu(tun_name, 1420)
        assert device.mtu() == 1420
        assert int(await trio.Path(f"/sys/class/net/{tun_name}/mtu").read_text()) == 1420
