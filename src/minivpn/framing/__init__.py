"""Sans-IO packet handling: bytes in, bytes (or descriptions) out, no I/O anywhere.

Everything a VPN does to a packet short of encrypting it lives here, as plain functions over
``bytes``/``memoryview`` that never touch a socket, a file or the clock (time is passed in).
That keeps the logic testable with hypothesis and comparable with real tools (tcpdump reads
the pcap files written with :mod:`~minivpn.framing.pcap`).

Modules:

* :mod:`~minivpn.framing.pi`: the 4-byte TUN packet-information header
  (:func:`parse_pi_untrusted`, :func:`build_pi`).
* :mod:`~minivpn.framing.decode`: decoders for Ethernet, ARP, IPv4/IPv6, TCP, UDP, ICMP/ICMPv6
  and :func:`summarize`, a one-line description in the words of ``tcpdump -n``; fast helpers
  for the packet path (:func:`ip_destination_untrusted`, :func:`inner_ip_length_untrusted`).
* :mod:`~minivpn.framing.stream`: 2-byte length-prefix framing for a TCP tunnel
  (:func:`encode_frame`, :class:`FrameDecoder`).
* :mod:`~minivpn.framing.pcap`: classic pcap file writer and reader.
* :mod:`~minivpn.framing.responder`: replies to ping, ARP and neighbor solicitation, so a
  device can be tested with the real ``ping`` (:func:`answer_untrusted`).
* :mod:`~minivpn.framing.errors`: :class:`FramingError` and its subclasses; parsers of
  outside bytes (the ``*_untrusted`` functions) raise only :class:`MalformedPacket`.

See docs/framing.md for the formats.
"""

from __future__ import annotations

from .decode import ARPPacket as ARPPacket
from .decode import EthernetFrame as EthernetFrame
from .decode import ExtensionHeader as ExtensionHeader
from .decode import Fragment as Fragment
from .decode import ICMPMessage as ICMPMessage
from .decode import IPPacket as IPPacket
from .decode import Link as Link
from .decode import TCPSegment as TCPSegment
from .decode import UDPDatagram as UDPDatagram
from .decode import VlanTag as VlanTag
from .decode import decode_arp_untrusted as decode_arp_untrusted
from .decode import decode_ethernet_untrusted as decode_ethernet_untrusted
from .decode import decode_icmp_untrusted as decode_icmp_untrusted
from .decode import decode_ip_untrusted as decode_ip_untrusted
from .decode import decode_tcp_untrusted as decode_tcp_untrusted
from .decode import decode_udp_untrusted as decode_udp_untrusted
from .decode import format_mac as format_mac
from .decode import inner_ip_length_untrusted as inner_ip_length_untrusted
from .decode import ip_destination_untrusted as ip_destination_untrusted
from .decode import ip_source_untrusted as ip_source_untrusted
from .decode import summarize as summarize
from .errors import FrameTooLarge as FrameTooLarge
from .errors import FramingError as FramingError
from .errors import MalformedPacket as MalformedPacket
from .pcap import LINKTYPE_ETHERNET as LINKTYPE_ETHERNET
from .pcap import LINKTYPE_RAW as LINKTYPE_RAW
from .pcap import pcap_global_header as pcap_global_header
from .pcap import pcap_record as pcap_record
from .pcap import read_pcap_untrusted as read_pcap_untrusted
from .pi import PI_LENGTH as PI_LENGTH
from .pi import TUN_PKT_STRIP as TUN_PKT_STRIP
from .pi import PacketInfo as PacketInfo
from .pi import build_pi as build_pi
from .pi import ethertype_for_ip_packet as ethertype_for_ip_packet
from .pi import parse_pi_untrusted as parse_pi_untrusted
from .responder import answer_untrusted as answer_untrusted
from .responder import internet_checksum as internet_checksum
from .stream import MAX_FRAME as MAX_FRAME
from .stream import FrameDecoder as FrameDecoder
from .stream import encode_frame as encode_frame
