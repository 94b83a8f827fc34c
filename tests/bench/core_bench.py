"""Micro-benchmark of the data path in memory: microseconds per packet (a script, not a test).

Two in-memory cores complete a handshake.  Then full-size TCP segments (MTU 1420, the
timestamps option, as Linux sends them) go through

* ``encapsulate`` and ``decapsulate``: the per-packet path, one call each;
* ``decapsulate_frame``: layer 2's per-packet way in (``Mode = tap``), the same segments in
  Ethernet frames to a known unicast MAC, so that each goes to the TAP device;
* the offload engine's way out, fed MTU-sized reads (``MINIVPN_OFFLOAD=batch``) and 64 KB TSO
  super-packets (``tso``), sending trains into a sink that does nothing;
* the offload engine's way in, fed UDP GRO batches of 44 datagrams, writing the merged
  super-packets into a sink that does nothing;

and, for scale, the bare ChaCha20-Poly1305 calls of ``cryptography``: no Python implementation
can go under that floor.  Each figure is the best of ``--repeat`` runs, since other processes
on the machine only ever make a run slower.  docs/performance.md uses it for the per-packet
budget.

Run: ``python tests/bench/core_bench.py [--packets N] [--repeat R]``
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import gso_reference as ref
from tests.helpers.l2net import L2Net, mac
from tests.helpers.wgnet import A_ENDPOINT, established

from minivpn.offload_engine import OffloadEngine
from minivpn.wireguard.ethernet import FRAME_HEADER_SIZE
from minivpn.wireguard.results import WriteFrame, WriteToNetwork, WriteToTunnel

if TYPE_CHECKING:
    from collections.abc import Callable

MSS = 1368  # 1420 - 20 (IPv4) - 32 (TCP with timestamps)
TIMESTAMPS = b"\x01\x01\x08\x0a" + bytes(8)
GRO_BATCH = 44  # datagrams of one UDP GRO receive at MTU 1420


def best_of(repeat: int, count: int, run: Callable[[], None]) -> float:
    """Microseconds per packet: the fastest of ``repeat`` runs of ``count`` packets."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    count = args.packets - args.packets % (45 * GRO_BATCH)  # whole super-packets and batches
    net, a, b = established(seed=1)
    now = net.now
    payload = os.urandom(MSS * 45)
    segments = [
        ref.tcp_packet("10.0.0.1", "10.0.0.2", i * MSS, payload[:MSS], options=TIMESTAMPS, ident=i)
        for i in range(count)
    ]
    out = memoryview(bytearray(65535))
    datagrams: list[bytes] = []
    for packet in segments:
        result = a.core.encapsulate(packet, out, now)
        assert isinstance(result, WriteToNetwork)
        datagrams.append(bytes(out[: result.size]))
    # A second session, so that the timed runs do not count from where the one above stopped.
    net, a, b = established(seed=2)
    now = net.now
    figures: dict[str, float] = {}

    def encapsulate() -> None:
        for packet in segments:
            a.core.encapsulate(packet, out, now)

    figures["encapsulate (per-packet path)"] = best_of(args.repeat, count, encapsulate)

    sealed = [bytes(d) for d in datagrams]

    def decapsulate_all() -> None:
        b.core.drops.clear()
        for keypair in b.core._index.keypairs.values():  # every run starts a fresh window
            keypair.replay.reset()
        for datagram in sealed:
            result = b.core.decapsulate(A_ENDPOINT, datagram, out, now)
            assert isinstance(result, WriteToTunnel)

    net, a, b = established(seed=1)  # the session the datagrams were sealed under
    now = net.now
    figures["decapsulate (per-packet path)"] = best_of(args.repeat, count, decapsulate_all)

    figures["decapsulate_frame (layer 2, per-packet)"] = decapsulate_frames(
        segments, args.repeat, count
    )

    frames = [memoryview(bytearray(ref.plain_frame(packet))) for packet in segments]
    engine = OffloadEngine(a.core, send=lambda d, s, e: None, write=lambda b: None)

    def engine_out() -> None:
        for frame in frames:
            engine.packets_from_tun(frame, now)
        engine.send_trains()

    figures["engine out, MTU-sized reads"] = best_of(args.repeat, count, engine_out)

    whole = ref.tcp_packet("10.0.0.1", "10.0.0.2", 0, payload, options=TIMESTAMPS)
    tso = ref.tso_frame(whole, MSS)
    tso_frames = [bytearray(tso) for _ in range(count // 45)]

    def engine_out_tso() -> None:
        for frame in tso_frames:
            frame[:] = tso  # segments() writes headers in place
            engine.packets_from_tun(memoryview(frame), now)
        engine.send_trains()

    figures["engine out, 64 KB TSO reads"] = best_of(args.repeat, count, engine_out_tso)

    batches = [memoryview(b"".join(sealed[i : i + GRO_BATCH])) for i in range(0, count, GRO_BATCH)]
    size = len(sealed[0])
    writes = [0]

    def count_write(buffers: object) -> None:
        writes[0] += 1

    receiver = OffloadEngine(b.core, send=lambda d, s, e: None, write=count_write)

    def engine_in() -> None:
        for keypair in b.core._index.keypairs.values():
            keypair.replay.reset()
        for batch in batches:
            if not receiver.has_room():
                receiver.write_packets()
            receiver.datagrams_from_network(batch, size, A_ENDPOINT, now)
        receiver.write_packets()

    figures["engine in, GRO batches of 44, coalesced"] = best_of(args.repeat, count, engine_in)

    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = struct.Struct("<4xQ")
    plain = bytes(1420)
    sealed_one = aead.encrypt(nonce.pack(1), plain, None)
    buffer = bytearray(1436)

    def seal() -> None:
        for n in range(count):
            aead.encrypt_into(nonce.pack(n), plain, None, buffer)

    def open_() -> None:
        for _ in range(count):
            aead.decrypt_into(nonce.pack(1), sealed_one, None, buffer[:1420])

    figures["ChaCha20-Poly1305 seal alone"] = best_of(args.repeat, count, seal)
    figures["ChaCha20-Poly1305 open alone"] = best_of(args.repeat, count, open_)
    print(f"{count} TCP segments of {MSS} bytes (MTU 1420), best of {args.repeat} runs:")
    for name, us in figures.items():
        print(f"  {name:42} {us:6.2f} us/packet")
    print(f"  ({writes[0] // args.repeat} writes per run on the way in)")


def decapsulate_frames(segments: list[bytes], repeat: int, count: int) -> float:
    """``decapsulate_frame`` per frame: the segments in frames for a MAC behind the receiver."""
    net = L2Net()
    # MTU 1420 for the TAP devices too: the same IP packets, each 16 bytes longer in its message.
    a = net.add("a", ("192.0.2.1", 51820), 1, mtu=1420)
    b = net.add("b", ("192.0.2.2", 51820), 2, mtu=1420)
    net.link(a, b, keepalive=25)
    here, there = mac(1), mac(2)
    net.frame_from_tap(b, there + here + b"\x08\x00" + bytes(46))  # b learns mac(2) as its own
    net.sent.clear()
    out = memoryview(bytearray(65535))
    sealed = []
    for packet in segments:
        frame = here + there + b"\x08\x00" + packet
        message = memoryview(bytearray(FRAME_HEADER_SIZE + len(frame)))
        message[FRAME_HEADER_SIZE:] = frame
        result = a.core.encapsulate_frame(message, out, net.now)
        assert isinstance(result, WriteToNetwork)
        sealed.append(bytes(out[: result.size]))
    core, source, now = b.core, a.endpoint, net.now

    def decapsulate_all() -> None:
        core.drops.clear()
        for keypair in core._index.keypairs.values():  # every run starts a fresh window
            keypair.replay.reset()
        for datagram in sealed:
            result = core.decapsulate_frame(source, datagram, out, now)
            assert isinstance(result, WriteFrame)

    return best_of(repeat, count, decapsulate_all)


if __name__ == "__main__":
    main()
