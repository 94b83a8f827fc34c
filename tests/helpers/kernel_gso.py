"""Ask the kernel itself how it cuts and checks super-packets (run inside a test namespace).

``python -m tests.helpers.kernel_gso`` makes two TUN devices and routes between them, with
forwarding on:

* ``kgA`` (10.1.0.1/24, fd01::1/64), opened with a virtio-net header: the frames written to it
  arrive as if from a network card, GSO super-packets included;
* ``kgB`` (10.2.0.1/24, fd02::1/64), plain and without offloads: what the kernel forwards to
  10.2.0.0/24 or fd02::/64 comes out of it one packet at a time, cut by the kernel's own
  segmentation (``skb_gso_segment``).

It reads a JSON list of hex frames on stdin, writes each to ``kgA``, and prints, one JSON line
per frame: the packets read from ``kgB``, the packets read back from ``kgA`` (the kernel's
answers to what was addressed to 10.1.0.1, such as a RST), and the ``Tcp: InCsumErrors``
counter.  Devices and routes vanish with the namespace.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from minivpn.tuntap.device import open_device
from minivpn.tuntap.ioctl import Mode

#: Seconds to wait for the packets of one frame (they come at once, or not at all).
QUIET = 0.2


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def _csum_errors() -> int:
    lines = [line.split() for line in open("/proc/net/snmp") if line.startswith("Tcp:")]  # noqa: SIM115
    names, values = lines
    return int(values[names.index("InCsumErrors")])


def _drain(fd: int) -> list[str]:
    packets = []
    deadline = time.monotonic() + QUIET
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        packets.append(os.read(fd, 70000).hex())
        deadline = time.monotonic() + QUIET / 4
    return packets


def main() -> None:
    frames = json.load(sys.stdin)
    a, _, _ = open_device("kgA", Mode.TUN, vnet_hdr=True, exclusive=True)
    b, _, _ = open_device("kgB", Mode.TUN, exclusive=True)
    _sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    for name, v4, v6 in (
        ("kgA", "10.1.0.1/24", "fd01::1/64"),
        ("kgB", "10.2.0.1/24", "fd02::1/64"),
    ):
        _sh("ip", "addr", "add", v4, "dev", name)
        _sh("ip", "addr", "add", v6, "dev", name, "nodad")
        _sh("ip", "link", "set", name, "up")
    time.sleep(0.1)
    _drain(a)  # router solicitations and the like
    _drain(b)
    for frame in frames:
        before = _csum_errors()
        os.write(a, bytes.fromhex(frame))
        forwarded = _drain(b)
        answered = [p[20:] for p in _drain(a)]  # without the virtio-net header (10 bytes)
        print(
            json.dumps(
                {
                    "forwarded": forwarded,
                    "answered": answered,
                    "csum_errors": _csum_errors() - before,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
