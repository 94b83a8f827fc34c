"""Protocol numbers shared by the framing modules.

Two registries name what comes next in a packet:

* the **EtherType** (IEEE 802), a 16-bit number in an Ethernet header, a VLAN tag, and the
  ``proto`` field of the TUN packet-information header; it says which network protocol the
  payload carries;
* the **IP protocol number** (IANA "Assigned Internet Protocol Numbers"), the 8-bit IPv4
  ``protocol`` field and IPv6 ``next header`` field; it says what follows the IP header.
"""

from __future__ import annotations

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100  # IEEE 802.1Q tag
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_LLDP = 0x88CC
#: EtherType values below this are not types but the length of an IEEE 802.3 frame.
ETHERTYPE_MIN = 0x0600

IPPROTO_HOPOPTS = 0  # IPv6 hop-by-hop options header
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43  # IPv6 routing header
IPPROTO_FRAGMENT = 44  # IPv6 fragment header
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59  # IPv6 "no next header"
IPPROTO_DSTOPTS = 60  # IPv6 destination options header
