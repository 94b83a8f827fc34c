"""Two WireGuard cores over a terrible fake network, under trio's autojump clock.

In the spirit of trio's own DTLS test (``test_handshake_over_terrible_network``): each core is
driven by a small trio task, as the real runtime drives it (wait for a datagram or for
``next_deadline()``, then ``handle_timer``), and the datagrams between them go through a router
that randomly drops, duplicates, delays and so reorders them.  The autojump clock makes the
minutes of protocol time (rekeys, expiries, retries, zeroed keys) pass in milliseconds.  Now and
then a node restarts with a fresh core and the same key, as a rebooted machine would.

Whatever the network does, every round of data must eventually get through in both directions,
nothing may be delivered twice or forged, and the drop counters may only show what such a
network explains.
"""

from __future__ import annotations

import math
import random
import struct

import attrs
import pytest
import trio
import trio.testing

from minivpn.wireguard.core import WireGuardCore
from minivpn.wireguard.events import (
    DropReason,
    Endpoint,
    HandshakeCompleted,
    SendDatagram,
)
from minivpn.wireguard.keys import PrivateKey
from minivpn.wireguard.results import (
    Decapsulated,
    Encapsulated,
    WriteToNetwork,
    WriteToTunnel,
)

WALL_START = 1_700_000_000.0
ROUNDS = 50
ADDRESSES = {"A": bytes([10, 0, 0, 1]), "B": bytes([10, 0, 0, 2])}
ENDPOINTS: dict[str, Endpoint] = {"A": ("192.0.2.1", 51820), "B": ("192.0.2.2", 51820)}

#: Drops no terrible-but-honest network can cause: they would mean a bug.
IMPOSSIBLE_DROPS = {
    DropReason.MALFORMED,
    DropReason.INVALID_MAC1,
    DropReason.UNKNOWN_PEER,
    DropReason.HANDSHAKE_INVALID,
    DropReason.INVALID_COOKIE_REPLY,
    DropReason.DECRYPTION_FAILED,
    DropReason.INVALID_INNER_PACKET,
    DropReason.DISALLOWED_SOURCE,
    DropReason.NO_ROUTE,
    DropReason.NO_ENDPOINT,
}


def ip_packet(source: str, destination: str, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
        ADDRESSES[source], ADDRESSES[destination],
    )  # fmt: skip
    return header + payload


@attrs.define(eq=False)
class Router:
    """The terrible network: drops, duplicates, delays (and so reorders) datagrams."""

    rng: random.Random
    nursery: trio.Nursery
    nodes: dict[Endpoint, FakeNode] = attrs.field(factory=dict)
    dropped: int = 0
    duplicated: int = 0
    carried: int = 0

    def route(self, data: bytes, source: Endpoint, destination: Endpoint) -> None:
        roll = self.rng.random()
        if roll < 0.15:
            self.dropped += 1
            return
        copies = 2 if roll > 0.90 else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            delay = self.rng.choice([0.0, 0.001, 0.05, 0.3, self.rng.uniform(0, 2)])
            self.nursery.start_soon(self._arrive, delay, data, source, destination)

    async def _arrive(self, delay: float, data: bytes, source: Endpoint, target: Endpoint) -> None:
        await trio.sleep(delay)
        node = self.nodes.get(target)
        if node is not None:
            self.carried += 1
            node.post.send_nowait(("datagram", data, source))


@attrs.define(eq=False)
class FakeNode:
    """One core and the task that drives it, as the runtime would."""

    name: str
    key: PrivateKey
    core: WireGuardCore
    post: trio.MemorySendChannel[tuple[str, bytes, Endpoint]]
    mailbox: trio.MemoryReceiveChannel[tuple[str, bytes, Endpoint]]
    rng: random.Random
    delivered: list[bytes] = attrs.field(factory=list)
    handshakes: int = 0
    drops: dict[DropReason, int] = attrs.field(factory=dict)

    @property
    def endpoint(self) -> Endpoint:
        return ENDPOINTS[self.name]

    def restart(self, peer_key: PrivateKey) -> None:
        """Replace the core by a fresh one with the same key, keeping the drop statistics."""
        for reason, count in self.core.drops.items():
            self.drops[reason] = self.drops.get(reason, 0) + count
        self.core = make_core(self.name, self.key, peer_key, self.rng)

    def all_drops(self) -> dict[DropReason, int]:
        totals = dict(self.drops)
        for reason, count in self.core.drops.items():
            totals[reason] = totals.get(reason, 0) + count
        return totals

    async def run(self, router: Router) -> None:
        """Drive the core as the runtime's plain loops do: one result per call, then actions."""
        out = memoryview(bytearray(65535))
        while True:
            deadline = self.core.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                kind, data, source = await self.mailbox.receive()
                now = trio.current_time()
                result: Encapsulated | Decapsulated
                if kind == "datagram":
                    result = self.core.decapsulate(source, data, out, now)
                else:
                    result = self.core.encapsulate(data, out, now)
                if isinstance(result, WriteToNetwork):
                    router.route(bytes(out[: result.size]), self.endpoint, result.endpoint)
                elif isinstance(result, WriteToTunnel):
                    self.delivered.append(bytes(out[20 : result.size]))
            actions = self.core.handle_timer(trio.current_time())
            for action in actions:
                if isinstance(action, SendDatagram):
                    router.route(bytes(action.data), self.endpoint, action.endpoint)
                elif isinstance(action, HandshakeCompleted):
                    self.handshakes += 1


def make_core(
    name: str, key: PrivateKey, peer_key: PrivateKey, rng: random.Random
) -> WireGuardCore:
    other = "B" if name == "A" else "A"
    core = WireGuardCore(
        key,
        rng=rng.randbytes,
        jitter=random.Random(rng.random()),
        wall_clock=lambda: WALL_START + trio.current_time(),
    )
    core.add_peer(
        peer_key.public_key(),
        endpoint=ENDPOINTS[other],
        allowed_ips=[f"{'.'.join(map(str, ADDRESSES[other]))}/32"],
        now=trio.current_time(),
    )
    return core


@pytest.mark.parametrize("seed", [1, 2, 3, 20260525])
async def test_handshakes_and_data_converge_over_a_terrible_network(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    rng = random.Random(seed)
    keys = {name: PrivateKey.generate(rng.randbytes) for name in ("A", "B")}
    other = {"A": "B", "B": "A"}
    async with trio.open_nursery() as nursery:
        router = Router(random.Random(rng.random()), nursery)
        nodes: dict[str, FakeNode] = {}
        for name in ("A", "B"):
            send, receive = trio.open_memory_channel[tuple[str, bytes, Endpoint]](math.inf)
            node_rng = random.Random(rng.random())
            core = make_core(name, keys[name], keys[other[name]], node_rng)
            nodes[name] = FakeNode(name, keys[name], core, send, receive, node_rng)
            router.nodes[nodes[name].endpoint] = nodes[name]
            nursery.start_soon(nodes[name].run, router)

        sent: dict[str, set[bytes]] = {"A": set(), "B": set()}
        rounds_done = 0
        for round_number in range(ROUNDS):
            # Long pauses let keys age: rekeys, expiries, zeroed keys all happen along the way.
            await trio.sleep(rng.choice([0.0, 1.0, 30.0, 130.0, 200.0, 600.0]))
            if rng.random() < 0.1:
                restarted = rng.choice(["A", "B"])
                nodes[restarted].restart(keys[other[restarted]])
            with trio.fail_after(900):  # virtual seconds: a round that never completes fails
                for sequence in range(10_000):
                    pending = [
                        name
                        for name in ("A", "B")
                        if not any(
                            p.startswith(f"{name}-{round_number}-".encode())
                            for p in nodes[other[name]].delivered
                        )
                    ]
                    if not pending:
                        break
                    for name in pending:
                        payload = f"{name}-{round_number}-{sequence}".encode()
                        sent[name].add(payload)
                        packet = ip_packet(name, other[name], payload)
                        nodes[name].post.send_nowait(("packet", packet, nodes[name].endpoint))
                    await trio.sleep(1.0)
            rounds_done += 1
        nursery.cancel_scope.cancel()

    assert rounds_done == ROUNDS
    for name in ("A", "B"):
        delivered = nodes[name].delivered
        assert len(delivered) == len(set(delivered)), f"{name} delivered a packet twice"
        assert set(delivered) <= sent[other[name]], f"{name} delivered something never sent"
        drops = nodes[name].all_drops()
        assert not {reason for reason in IMPOSSIBLE_DROPS if drops.get(reason)}, drops
    # The network really was terrible, and the cores really had work to do.
    assert router.dropped > 20
    assert router.duplicated > 10
    replays = sum(nodes[name].all_drops().get(DropReason.REPLAYED_COUNTER, 0) for name in nodes)
    assert replays > 0
    assert nodes["A"].handshakes + nodes["B"].handshakes > ROUNDS // 2
