"""Sans-IO packet handling: bytes in, bytes (or descriptions) out, no I/O anywhere.

Everything a VPN does to a packet short of encrypting it lives here, as plain functions over
``bytes``/``memoryview`` that never touch a socket, a file or the clock (time is passed in).
That keeps the logic testable with hypothesis and comparable with real tools (tcpdump reads
the pcap files written with :mod:`~minivpn.framing.pcap`).

Modules:

* :mod:`~minivpn.framing.pi`: the 4-byte TUN packet-information header
  (:func:`parse_pi_untrusted`, :func:`build_pi`).
* :mod:`~minivpn.framing.decode`: decoders for Ethernet, ARP, IPv4/IPv6, TCP, UDP, ICMP/ICMPv6;
  helpers that read one field (:func:`ip_destination_untrusted`,
  :func:`inner_ip_length_untrusted`).
* :mod:`~minivpn.framing.summary`: :func:`summarize`, a one-line description in the words of
  ``tcpdump -n``.
* :mod:`~minivpn.framing.stream`: 2-byte length-prefix framing for a TCP tunnel
  (:func:`encode_frame`, :class:`FrameDecoder`).
* :mod:`~minivpn.framing.pcap`: classic pcap file writer and reader.
* :mod:`~minivpn.framing.filter`: a small part of tcpdump's filter language, for ``minivpn
  dump --filter`` (:func:`compile_filter`).
* :mod:`~minivpn.framing.responder`: replies to ping, ARP and neighbor solicitation, so a
  device can be tested with the real ``ping`` (:func:`answer_untrusted`).
* :mod:`~minivpn.framing.tunnel`: what the plain tunnel accepts from the network
  (:func:`check_payload`), and whom it sends to (:class:`PeerFollower`).
* :mod:`~minivpn.framing.offload`: the virtio-net header, cutting super-packets into segments
  and merging TCP segments back (docs/offload.md).
* :mod:`~minivpn.framing.protocols`: EtherTypes and IP protocol numbers.
* :mod:`~minivpn.framing.errors`: :class:`FramingError` and its subclasses; parsers of
  outside bytes (the ``*_untrusted`` functions) raise only :class:`MalformedPacket`.

See docs/framing.md for the formats.

Names are imported from the module that defines them (``from minivpn.framing.summary import
summarize``); the package re-exports nothing, so that a program loads only the modules it
uses: ``minivpnd`` needs one of them, and every module loaded stays resident
(docs/performance.md, "Memory of minivpnd").
"""
