"""Segmentation and coalescing checked against the kernel itself.

The unit tests compare ``framing.offload`` with a reference written from the kernel's rules; here
the kernel is the reference.  In a namespace of its own, ``tests/helpers/kernel_gso.py`` writes
frames into a TUN device with a virtio-net header and routes them out of a plain one, where the
kernel's own segmentation cuts them into packets:

* a TSO/USO super-packet, forwarded, comes out as exactly the packets :func:`segments` makes of
  it (with the TTL one less: it was forwarded);
* a run merged by :func:`coalesce`, forwarded, comes out as exactly the segments that went in;
* a merged run addressed to the namespace itself is checked by the kernel's TCP: with no socket
  there it answers with a RST, or, if a segment was damaged, counts a checksum error and
  answers nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.helpers import gso_reference as ref

from minivpn.framing.offload import coalesce, segments

if TYPE_CHECKING:
    from collections.abc import Iterator

    from netns import Namespace

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
TIMESTAMPS = b"\x01\x01\x08\x0a" + bytes(8)
#: Sender (behind kgA) and receiver (behind kgB), both ways of addressing.
FAMILIES = {4: ("10.1.0.2", "10.2.0.2", "10.1.0.1"), 6: ("fd01::2", "fd02::2", "fd01::1")}


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    from netns import Topology

    with Topology("kg") as topo:
        yield topo.namespace()


def ask_kernel(ns: Namespace, frames: list[bytes]) -> list[dict[str, object]]:
    """Write each frame to kgA; what the kernel forwarded and answered, per frame."""
    done = ns.run(
        [sys.executable, "-m", "tests.helpers.kernel_gso"],
        input=json.dumps([frame.hex() for frame in frames]),
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def ours(frame: bytes) -> list[bytes]:
    return [bytes(p) for p in segments(memoryview(bytearray(frame)))]


def packets(hexes: object) -> list[bytes]:
    """TCP and UDP packets only: the kernel's own IPv6 chatter is left out."""
    assert isinstance(hexes, list)
    out = [bytes.fromhex(h) for h in hexes]
    return [p for p in out if (p[9] if p[0] >> 4 == 4 else p[6]) in (ref.TCP, ref.UDP)]


def tcp_frames() -> list[bytes]:
    frames = []
    for family, (src, dst, _) in FAMILIES.items():
        ip_len = 20 if family == 4 else 40
        for mss, size, flags, options in [
            (1448 - ip_len + 20 - 12, 30_000, ref.ACK | ref.PSH, TIMESTAMPS),
            (1000, 5000, ref.ACK | ref.PSH | ref.FIN, b""),
            (536, 4000 + 123, ref.ACK | ref.CWR | ref.ECE, TIMESTAMPS),
            (1200, 64_000 - ip_len - 40, ref.ACK, b""),
        ]:
            packet = ref.tcp_packet(
                src, dst, 2**32 - 5000, os.urandom(size), flags=flags, options=options, ident=7
            )
            frames.append(ref.tso_frame(packet, mss))
    return frames


def test_the_kernel_cuts_tso_super_packets_as_segments_does(namespace: Namespace) -> None:
    frames = tcp_frames()
    for frame, seen in zip(frames, ask_kernel(namespace, frames), strict=True):
        expected = [ref.ttl_decremented(p) for p in ours(frame)]
        assert len(expected) > 1
        assert packets(seen["forwarded"]) == expected


def test_the_kernel_cuts_uso_super_packets_as_segments_does(namespace: Namespace) -> None:
    frames = []
    for src, dst, _ in FAMILIES.values():
        for size, total in [(1000, 4500), (1, 7), (1300, 1300 * 40)]:
            frames.append(ref.tso_frame(ref.udp_packet(src, dst, os.urandom(total), ident=9), size))
    for frame, seen in zip(frames, ask_kernel(namespace, frames), strict=True):
        assert packets(seen["forwarded"]) == [ref.ttl_decremented(p) for p in ours(frame)]


def run_of(family: int, count: int, size: int, *, dst: str | None = None) -> list[bytes]:
    src, to, _ = FAMILIES[family]
    return [
        ref.tcp_packet(
            src,
            dst or to,
            1000 + i * size,
            os.urandom(size),
            sport=40000,
            dport=5201,
            options=TIMESTAMPS,
            ident=300 + i,
            flags=ref.ACK | ref.PSH if i == count - 1 else ref.ACK,
        )
        for i in range(count)
    ]


def test_the_kernel_cuts_merged_runs_back_into_the_same_segments(namespace: Namespace) -> None:
    runs = [run_of(4, 30, 1368), run_of(6, 20, 1348), run_of(4, 3, 100)]
    frames = []
    for run in runs:
        (write,) = coalesce([memoryview(p) for p in run])
        frames.append(b"".join(bytes(b) for b in write))
    for run, seen in zip(runs, ask_kernel(namespace, frames), strict=True):
        assert packets(seen["forwarded"]) == [ref.ttl_decremented(p) for p in run]


@pytest.mark.parametrize("family", [4, 6])
def test_the_kernel_checks_the_merged_checksum(namespace: Namespace, family: int) -> None:
    """A merged run for us is verified as a whole: a damaged segment spoils it all."""
    local = FAMILIES[family][2]
    good = run_of(family, 10, 1000, dst=local)
    bad = [bytearray(p) for p in run_of(family, 10, 1000, dst=local)]
    bad[4][-1] ^= 0x80  # one payload bit, its checksum not updated
    frames = []
    for run in (good, [bytes(p) for p in bad]):
        (write,) = coalesce([memoryview(p) for p in run])
        frames.append(b"".join(bytes(b) for b in write))
    accepted, refused = ask_kernel(namespace, frames)
    assert accepted["csum_errors"] == 0
    (reset,) = packets(accepted["answered"])  # no socket listens: the kernel resets
    assert reset[(20 if family == 4 else 40) + 13] & ref.RST
    assert refused["csum_errors"] == 1
    assert packets(refused["answered"]) == []
