"""minivpn: a small, readable userspace VPN for Linux on trio.

The package has three layers, visible from the file list:

* sans-IO cores that take bytes and clock values and return bytes and events:
  :mod:`minivpn.framing` (packets, PI header, stream framing, pcap) and
  :mod:`minivpn.wireguard` (the WireGuard protocol);
* the edges of the world, the only code that talks to the kernel:
  :mod:`minivpn.tuntap` (``/dev/net/tun``) and :mod:`minivpn.netconf` (netlink);
* the trio runtime, thin shells that feed the cores: :mod:`minivpn.runtime`.

:mod:`minivpn.cli` is the command line on top.
"""

__version__ = "0.1.0"
