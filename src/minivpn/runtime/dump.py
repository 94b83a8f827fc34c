"""``minivpn dump``: attach to a device and show, decoded, every packet that crosses it.

The loop is the simplest use of the device layer::

    async with open_tun_device(name) as device:       # attach (or create a temporary device)
        configure: link up, addresses                  # netlink (minivpn.netconf)
        while True:
            packet = await device.read()               # waits with trio.lowlevel.wait_readable
            if packet_filter.matches(packet):          # optional: tcpdump-style filter
                print(summarize(packet))               # sans-IO decoding (minivpn.framing)
                pcap.write(record(packet))             # optional capture file
            reply = answer_untrusted(packet)           # optional: answer ping, ARP, NS
            if reply: await device.write(reply)        # ... and show the reply too

A TUN device hands over IP packets the kernel routed to it: ``ping 10.9.0.2`` with the device
holding 10.9.0.1/24 puts ICMP echo requests on it.  Nobody answers them unless
``--answer-pings`` makes minivpn play the remote host, so that ``ping`` sees replies.  On a TAP
device the kernel first asks, with ARP (IPv4) or a neighbour solicitation (IPv6), which
Ethernet address owns 10.9.0.2; the answerer replies to those too, with a made-up MAC.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, BinaryIO

import attrs
import trio

from minivpn import netconf
from minivpn.framing.decode import Link
from minivpn.framing.errors import MalformedPacket
from minivpn.framing.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, pcap_global_header, pcap_record
from minivpn.framing.pi import PI_LENGTH, build_pi, parse_pi_untrusted
from minivpn.framing.responder import answer_untrusted
from minivpn.framing.summary import summarize
from minivpn.netconf import NetconfError
from minivpn.outputfile import open_output
from minivpn.tuntap.aio import TunDevice, open_tun_device
from minivpn.tuntap.ioctl import Mode

if TYPE_CHECKING:
    from collections.abc import Callable

    from minivpn.framing.filter import PacketFilter

__all__ = ["DumpConfig", "format_line", "run_dump"]

log = logging.getLogger("minivpn.dump")

_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = 0x0800, 0x86DD


@attrs.frozen
class DumpConfig:
    """What ``minivpn dump`` was asked to do.

    Attributes:
        device: a device name or template; None lets the kernel pick (``tun%d``/``tap%d``).
        mode: TUN or TAP.
        pi: the device carries the 4-byte packet-information header.
        addresses: CIDRs to add to the device.
        count: stop after this many packets (None: until cancelled).
        write: path of a pcap file to write, or None.
        answer_pings: answer echo requests (and ARP/neighbour solicitations on TAP).
        packet_filter: show (and count, and write) only the packets it matches, replies
            included; None shows everything.  Pings are answered whether shown or not.
    """

    device: str | None = None
    mode: Mode = Mode.TUN
    pi: bool = False
    addresses: tuple[str, ...] = ()
    count: int | None = None
    write: str | None = None
    answer_pings: bool = False
    packet_filter: PacketFilter | None = None


@attrs.define
class DumpResult:
    """What happened.

    Attributes:
        device: the device's name.
        packets: packets read from the device and shown (what ``count`` counts).
        replies: replies sent (``answer_pings``), shown or not.
        captured: lines shown (and records written): packets and the replies shown.
        filtered_out: packets read from the device that the filter left out.
    """

    device: str = ""
    packets: int = 0
    replies: int = 0
    captured: int = 0
    filtered_out: int = 0

    def summary(self, config: DumpConfig) -> str:
        """``N packets captured[, M replies sent][, K filtered out]``."""
        text = f"{self.captured} packets captured"
        if config.answer_pings:
            text += f", {self.replies} replies sent"
        if config.packet_filter is not None:
            text += f", {self.filtered_out} filtered out"
        return text


def format_line(timestamp: float, data: bytes | memoryview, link: Link) -> str:
    """One output line: local time as ``tcpdump`` prints it, then the summary."""
    # Split exactly as pcap_record does (whole seconds, then the rounded fraction), so the
    # printed time is the one tcpdump shows for the same record.  Rounding the whole value
    # instead, round(timestamp * 1e6), differs by a microsecond for some floats.
    seconds = int(timestamp)
    micros = round((timestamp - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    clock = time.strftime("%H:%M:%S", time.localtime(seconds))
    return f"{clock}.{micros:06d} {summarize(data, link)}"


async def run_dump(
    config: DumpConfig,
    emit: Callable[[str], object],
    *,
    result: DumpResult | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> DumpResult:
    """Attach, configure, and show packets until *count* is reached or the task is cancelled.

    Args:
        config: what to do.
        emit: called with each output line.
        result: filled in as packets arrive (so a caller that cancels still has the counts).
        task_status: ``nursery.start`` gets the device name once packets are being read.

    Raises:
        TunError: the device cannot be attached.
        NetconfError: an address was asked for and cannot be added.
        DeviceGone: the device was deleted while attached.
    """
    result = result if result is not None else DumpResult()
    template = config.device or ("tap%d" if config.mode is Mode.TAP else "tun%d")
    async with open_tun_device(template, config.mode, pi=config.pi) as device:
        result.device = device.name
        _configure(device, config)
        link = Link.ETHERNET if config.mode is Mode.TAP else Link.IP
        pcap = _open_pcap(config.write, link)
        # A locally administered unicast MAC for the pretend remote host on a TAP link.
        my_mac = bytes([0x02]) + os.urandom(5)
        shown = config.packet_filter.matches if config.packet_filter is not None else None

        def show(packet: memoryview | bytes, now: float) -> bool:
            """Print and write *packet* if the filter lets it through."""
            if shown is not None and not shown(packet, link):
                return False
            result.captured += 1
            emit(format_line(now, packet, link))
            if pcap is not None:
                pcap.write(pcap_record(packet, now))
            return True

        try:
            task_status.started(device.name)
            while config.count is None or result.packets < config.count:
                data = await device.read()
                now = time.time()
                payload = _strip_pi(data) if config.pi else memoryview(data)
                if payload is None:  # nothing to filter on: shown, unless filtering
                    if shown is None:
                        result.packets += 1
                        result.captured += 1
                        emit(_bad_pi(data))
                    else:
                        result.filtered_out += 1
                    continue
                if show(payload, now):
                    result.packets += 1
                else:
                    result.filtered_out += 1
                if config.answer_pings:
                    reply = answer_untrusted(payload, link, my_mac=my_mac)
                    if reply is not None:
                        await device.write(_with_pi(reply, link) if config.pi else reply)
                        result.replies += 1
                        show(reply, time.time())  # both directions, as tcpdump sees them
        finally:
            if pcap is not None:
                pcap.close()
    return result


def _configure(device: TunDevice, config: DumpConfig) -> None:
    """Bring the link up and add addresses; an owner without CAP_NET_ADMIN just attaches."""
    for cidr in config.addresses:
        netconf.add_address(device.name, cidr)  # asked for explicitly: failing is an error
    if netconf.link_state(device.name).up:
        return
    try:
        netconf.set_link_up(device.name)
    except NetconfError as exc:
        log.warning("%s; reading from it anyway (packets flow once it is up)", exc)


def _open_pcap(path: str | None, link: Link) -> BinaryIO | None:
    """Open the capture file and write its header.

    Plain blocking writes: a pcap record is a few hundred bytes going to a local file's page
    cache, far cheaper than handing each one to a worker thread.
    """
    if path is None:
        return None
    linktype = LINKTYPE_ETHERNET if link is Link.ETHERNET else LINKTYPE_RAW
    # Never through a symbolic link, and mode 0600: the capture holds decrypted traffic.
    pcap = open_output(path, "capture")  # closed in run_dump's finally
    pcap.write(pcap_global_header(linktype))
    return pcap


def _strip_pi(data: bytes) -> memoryview | None:
    try:
        _, payload = parse_pi_untrusted(data)
    except MalformedPacket:
        return None
    return payload


def _bad_pi(data: bytes) -> str:
    return f"[packet without a valid PI header] length {len(data)}"


def _with_pi(packet: bytes, link: Link) -> bytes:
    if link is Link.ETHERNET:
        proto = int.from_bytes(packet[12:14], "big")
    else:
        proto = _ETHERTYPE_IPV6 if packet[0] >> 4 == 6 else _ETHERTYPE_IPV4
    return build_pi(proto) + packet


assert PI_LENGTH == 4
