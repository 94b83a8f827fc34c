"""minivpn: a small, readable userspace VPN for Linux on trio.

The package has three layers, visible from the file list:

* sans-IO cores that take bytes and clock values and return bytes and events:
  :mod:`minivpn.framing` (packets, PI header, stream framing, pcap, offloads),
  :mod:`minivpn.wireguard` (the WireGuard protocol) and :mod:`minivpn.offload_engine` (the
  protocol's per-packet path, in batches);
* the edges of the world, the only code that talks to the kernel:
  :mod:`minivpn.tuntap` (``/dev/net/tun``) and :mod:`minivpn.netconf` (netlink);
* the trio runtime, thin shells that feed the cores: :mod:`minivpn.runtime`.

On top: :mod:`minivpn.cli`, the ``minivpn`` command; :mod:`minivpn.daemon`, ``minivpnd``;
:mod:`minivpn.demo`, ``minivpn demo``.  docs/tour.md reads the code in the order a packet
meets it.
"""

__version__ = "0.1.0"
