"""Micro-benchmark of the WireGuard core's data path (a script, not a test).

Two in-memory cores complete a handshake.  Then packets of 1400 bytes (by default) go through
the core as a runtime would send them:

* ``encrypt_packet_into``: the packet sits at the start of a big reusable buffer (a TUN read),
  the data message is written into another reusable buffer;
* ``decrypt_datagram_into_untrusted``: the datagram is a memoryview of a receive buffer, the
  packet is written into a reusable buffer;

and through the allocating convenience methods ``encrypt_packet`` and
``decrypt_datagram_untrusted``.  For scale, it also times the bare ChaCha20-Poly1305 calls of
``cryptography``: no Python implementation can go under that floor.  Every decrypted packet
is checked, and each counter is used once (the replay window is real).  Each figure is the
best of ``--repeat`` runs, since other processes on the machine only ever make a run slower.

Run: ``.venv/bin/python tests/bench/core_bench.py [--packets N] [--size BYTES] [--repeat R]``
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import time
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from minivpn.wireguard.core import MAX_DATAGRAM_SIZE, WireGuardCore
from minivpn.wireguard.events import SendDatagram
from minivpn.wireguard.keys import PrivateKey

if TYPE_CHECKING:
    from collections.abc import Callable

A_ENDPOINT = ("192.0.2.1", 51820)
B_ENDPOINT = ("192.0.2.2", 51820)
NOW = 2.0


def ipv4_packet(size: int) -> bytes:
    """A UDP-in-IPv4 packet of ``size`` bytes from 10.0.0.1 to 10.0.0.2 (checksums left 0)."""
    payload = bytes(range(256)) * (size // 256 + 1)
    udp = struct.pack("!HHHH", 40000, 5201, size - 20, 0) + payload[: size - 28]
    source, destination = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000, 64, 17, 0, source, destination)
    return header + udp


def connected_pair() -> tuple[WireGuardCore, WireGuardCore]:
    """Two cores with a completed, confirmed handshake (A initiated)."""
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    a, b = WireGuardCore(key_a), WireGuardCore(key_b)
    a.add_peer(key_b.public_key(), endpoint=B_ENDPOINT, allowed_ips=["10.0.0.2/32"], now=0.0)
    b.add_peer(key_a.public_key(), endpoint=A_ENDPOINT, allowed_ips=["10.0.0.1/32"], now=0.0)
    cores = {A_ENDPOINT: a, B_ENDPOINT: b}
    pending = [(A_ENDPOINT, action) for action in a.send_packet(ipv4_packet(100), 1.0)]
    while pending:
        source, action = pending.pop(0)
        if isinstance(action, SendDatagram):
            replies = cores[action.endpoint].receive_datagram(action.data, source, 1.0)
            pending.extend((action.endpoint, reply) for reply in replies)
    return a, b


def datagrams_for(a: WireGuardCore, packet: bytes, count: int) -> list[memoryview]:
    """``count`` data messages from A, as memoryviews of receive buffers."""
    views = []
    for _ in range(count):
        result = a.encrypt_packet(packet, NOW)
        assert result is not None
        views.append(memoryview(bytearray(result[0])))
    return views


def report(
    label: str, count: int, size: int, prepare: Callable[[], Callable[[], None]], repeat: int
) -> None:
    """Time ``prepare()()`` (preparation not timed) ``repeat`` times; print the best."""
    elapsed = math.inf
    for _ in range(repeat):
        run = prepare()
        start = time.perf_counter()
        run()
        elapsed = min(elapsed, time.perf_counter() - start)
    pps = count / elapsed
    print(
        f"{label:<46} {pps:>10,.0f} packets/s {pps * size * 8 / 1e9:6.2f} Gbit/s "
        f"{elapsed / count * 1e6:6.2f} us/packet"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="WireGuard core data-path micro-benchmark")
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1400)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    count, size, repeat = args.packets, args.size, args.repeat
    packet = ipv4_packet(size)

    a, b = connected_pair()
    tun_buffer = bytearray(MAX_DATAGRAM_SIZE)
    tun_buffer[:size] = packet
    out = memoryview(bytearray(MAX_DATAGRAM_SIZE))
    plain = bytearray(MAX_DATAGRAM_SIZE)

    def encrypt_into() -> Callable[[], None]:
        def run() -> None:
            encrypt = a.encrypt_packet_into
            for _ in range(count):
                encrypt(tun_buffer, size, out, NOW)

        return run

    def encrypt_allocating() -> Callable[[], None]:
        def run() -> None:
            encrypt = a.encrypt_packet
            for _ in range(count):
                encrypt(packet, NOW)

        return run

    def decrypt_into() -> Callable[[], None]:
        datagrams = datagrams_for(a, packet, count)

        def run() -> None:
            decrypt = b.decrypt_datagram_into_untrusted
            for datagram in datagrams:
                if decrypt(datagram, A_ENDPOINT, plain, NOW) != size:
                    raise SystemExit("a packet did not decrypt")

        return run

    def decrypt_allocating() -> Callable[[], None]:
        datagrams = datagrams_for(a, packet, count)

        def run() -> None:
            decrypt = b.decrypt_datagram_untrusted
            for datagram in datagrams:
                if decrypt(datagram, A_ENDPOINT, NOW) is None:
                    raise SystemExit("a packet did not decrypt")

        return run

    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = bytes(12)
    padded = packet + bytes(-size % 16)
    sealed = aead.encrypt(nonce, padded, None)
    sealed_out = memoryview(bytearray(len(sealed)))
    opened_out = memoryview(bytearray(len(padded)))

    def bare_encrypt() -> Callable[[], None]:
        def run() -> None:
            for _ in range(count):
                aead.encrypt_into(nonce, padded, None, sealed_out)

        return run

    def bare_decrypt() -> Callable[[], None]:
        def run() -> None:
            for _ in range(count):
                aead.decrypt_into(nonce, sealed, None, opened_out)

        return run

    report("core.encrypt_packet_into", count, size, encrypt_into, repeat)
    report("core.encrypt_packet (allocating)", count, size, encrypt_allocating, repeat)
    report("core.decrypt_datagram_into_untrusted", count, size, decrypt_into, repeat)
    report("core.decrypt_datagram_untrusted (allocating)", count, size, decrypt_allocating, repeat)
    report("floor: ChaCha20Poly1305.encrypt_into", count, size, bare_encrypt, repeat)
    report("floor: ChaCha20Poly1305.decrypt_into", count, size, bare_decrypt, repeat)


if __name__ == "__main__":
    main()
