"""``minivpn demo``: a whole WireGuard VPN between two network namespaces, built, shown, removed.

The demo needs no setup and leaves nothing behind.  It does what a reader would otherwise do by
hand with ``ip netns``, ``minivpn genkey``, two configuration files and ``minivpn up``::

    namespace A                                            namespace B
    ┌───────────────────────────────┐                      ┌───────────────────────────────┐
    │ mvwgXXXXa 10.99.0.1/24        │                      │ mvwgXXXXb 10.99.0.2/24        │
    │   └ minivpn up (UDP 51820)    │   encrypted UDP      │   └ minivpn up (UDP 51820)    │
    │ mvvethXXXXa 198.51.100.1/24 ──┼──────── veth ────────┼── mvvethXXXXb 198.51.100.2/24 │
    └───────────────────────────────┘                      └───────────────────────────────┘

The modules:

* :mod:`~minivpn.demo.steps`: :func:`~minivpn.demo.steps.run_demo` and the eight steps, what
  the reader sees (docs/demo.md follows them);
* :mod:`~minivpn.demo.namespaces`: named network namespaces, the veth pair (configured through
  :mod:`minivpn.netconf`), ``setns(2)`` and ``mount(2)`` through ctypes, capabilities;
* :mod:`~minivpn.demo.processes`: the programs started inside the namespaces, stopped by PID,
  and the teardown that always runs;
* :mod:`~minivpn.demo.helpers`: the small programs run inside a namespace (a packet capture, a
  TCP sink and source), ``python -m minivpn.demo.helpers``;
* :mod:`~minivpn.demo.errors`: :class:`~minivpn.demo.errors.DemoError` and
  :class:`~minivpn.demo.errors.NeedsRoot`.

The product code runs no configuration command (no ``ip``): only the traffic generators
``ping`` and ``iperf3``, and the helpers.  Like the other packages, this one re-exports
nothing: names are imported from the module that defines them.
"""
