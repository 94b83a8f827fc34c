"""A synchronous in-memory network of WireGuard cores, shared by the core and timer tests.

Nothing is mocked: every node is a real :class:`WireGuardCore`, and the "network" only carries
the datagrams the cores ask to send from one core to the other, with a fake monotonic clock
(``net.now``) and a fake wall clock that both only move when a test says so.  Tests can hold
datagrams back (``net.hold = True``) to replay, tamper with, reorder or drop them.

:func:`send_packet` and :func:`receive_datagram` turn the core's one-result-per-call API
(``encapsulate``/``decapsulate`` plus ``take_actions``) into one list per call, which is what
these tests compare; they exist for the tests only.

The IP packets are built here, by hand, so that the tests do not trust the code under test to
build them.  ``tests/unit/test_wgnet.py`` checks the harness itself.
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING

import attrs

from minivpn.wireguard.core import WireGuardCore
from minivpn.wireguard.events import (
    Action,
    Endpoint,
    PacketDropped,
    SendDatagram,
)
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from minivpn.wireguard.results import WriteToNetwork, WriteToTunnel

if TYPE_CHECKING:
    from collections.abc import Iterable

    from minivpn.wireguard.peer import Peer

WALL_START = 1_700_000_000.0
A_ENDPOINT: Endpoint = ("192.0.2.1", 51820)
B_ENDPOINT: Endpoint = ("192.0.2.2", 51820)
C_ENDPOINT: Endpoint = ("192.0.2.3", 51820)
A_ADDRESS = bytes([10, 0, 0, 1])
B_ADDRESS = bytes([10, 0, 0, 2])
C_ADDRESS = bytes([10, 0, 0, 3])
A_ADDRESS6 = bytes.fromhex("fd000000000000000000000000000001")
B_ADDRESS6 = bytes.fromhex("fd000000000000000000000000000002")


@attrs.frozen
class Delivered:
    """What :func:`receive_datagram` lists for a packet the core wrote to the tunnel."""

    packet: bytes
    public_key: PublicKey


#: What the list-returning wrappers return: the core's actions, and delivered packets.
Output = Action | Delivered


def send_packet(core: WireGuardCore, packet: bytes, now: float) -> list[Output]:
    """``core.encapsulate`` as a list: the data message (if it could go now), then the actions."""
    out = memoryview(bytearray(len(packet) + 64))
    result = core.encapsulate(packet, out, now)
    outputs: list[Output] = []
    if isinstance(result, WriteToNetwork):
        outputs.append(SendDatagram(bytes(out[: result.size]), result.endpoint))
    outputs.extend(core.take_actions())
    return outputs


def receive_datagram(
    core: WireGuardCore, data: bytes | bytearray | memoryview, source: Endpoint, now: float
) -> list[Output]:
    """``core.decapsulate`` as a list: a delivered packet or a reply first, then the actions."""
    out = memoryview(bytearray(max(len(data), 64)))
    result = core.decapsulate(source, data, out, now)
    outputs: list[Output] = []
    if isinstance(result, WriteToTunnel):
        outputs.append(Delivered(bytes(out[: result.size]), result.public_key))
    elif isinstance(result, WriteToNetwork):
        outputs.append(SendDatagram(bytes(out[: result.size]), result.endpoint))
    outputs.extend(core.take_actions())
    return outputs


def seeded_rng(seed: int) -> random.Random:
    return random.Random(seed)


def ipv4_packet(source: bytes, destination: bytes, payload: bytes, protocol: int = 17) -> bytes:
    """An IPv4 packet (header checksum left at 0: WireGuard does not look at it)."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, protocol, 0, source, destination
    )
    return header + payload


def ipv6_packet(source: bytes, destination: bytes, payload: bytes, next_header: int = 17) -> bytes:
    """An IPv6 packet."""
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, source, destination)
    return header + payload


@attrs.define(eq=False)
class Node:
    """One core on the network, and what it delivered and reported."""

    name: str
    core: WireGuardCore
    endpoint: Endpoint
    key: PrivateKey
    delivered: list[bytes] = attrs.field(factory=list)
    events: list[Output] = attrs.field(factory=list)

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def peer(self, other: Node) -> Peer:
        return self.core.peers[other.public_key]

    def events_of(self, kind: type) -> list[Output]:
        return [event for event in self.events if isinstance(event, kind)]

    def drops(self) -> dict[str, int]:
        """The non-zero drop counters, by reason name."""
        return {reason.value: n for reason, n in self.core.drops.items() if n}


@attrs.define(eq=False)
class Datagram:
    source: Endpoint
    destination: Endpoint
    data: bytes
    sent_at: float = 0.0


@attrs.define(eq=False)
class Net:
    """Carries datagrams between nodes; owns the fake clocks."""

    now: float = 1000.0
    wall: float = WALL_START
    nodes: dict[Endpoint, Node] = attrs.field(factory=dict)
    in_flight: list[Datagram] = attrs.field(factory=list)
    sent: list[Datagram] = attrs.field(factory=list)
    #: When True, datagrams stay in ``in_flight`` until the test moves them.
    hold: bool = False
    #: (time, node name, event) for every event any node reported.
    event_times: list[tuple[float, str, Output]] = attrs.field(factory=list)

    def wall_clock(self) -> float:
        return self.wall

    def add(self, name: str, endpoint: Endpoint, seed: int, **core_args: object) -> Node:
        rng = seeded_rng(seed)
        key = PrivateKey.generate(rng.randbytes)
        core = WireGuardCore(
            key,
            rng=rng.randbytes,
            jitter=random.Random(seed + 1000),
            wall_clock=self.wall_clock,
            report_drops=True,
            **core_args,  # type: ignore[arg-type]
        )
        node = Node(name, core, endpoint, key)
        self.nodes[endpoint] = node
        return node

    def handle(self, node: Node, actions: Iterable[Output]) -> None:
        for action in actions:
            if isinstance(action, SendDatagram):
                datagram = Datagram(node.endpoint, action.endpoint, bytes(action.data), self.now)
                self.sent.append(datagram)
                self.in_flight.append(datagram)
            elif isinstance(action, Delivered):
                node.delivered.append(action.packet)
            else:
                node.events.append(action)
                self.event_times.append((self.now, node.name, action))
        if not self.hold:
            self.flush()

    def deliver(self, datagram: Datagram, source: Endpoint | None = None) -> None:
        """Hand one datagram to its destination (from ``source`` if given, to test roaming)."""
        node = self.nodes.get(datagram.destination)
        if node is None:
            return  # nobody lives there: lost
        actions = receive_datagram(node.core, datagram.data, source or datagram.source, self.now)
        self.handle(node, actions)

    def flush(self, limit: int = 10_000) -> None:
        """Deliver everything in flight, and what that causes, in order."""
        for _ in range(limit):
            if not self.in_flight:
                return
            self.deliver(self.in_flight.pop(0))
        raise AssertionError("the cores keep talking: an endless exchange?")

    def take_held(self) -> list[Datagram]:
        held, self.in_flight = self.in_flight, []
        return held

    def send(self, node: Node, packet: bytes) -> None:
        self.handle(node, send_packet(node.core, packet, self.now))

    def run_timers(self) -> None:
        for node in list(self.nodes.values()):
            self.handle(node, node.core.handle_timer(self.now))

    def next_deadline(self) -> float | None:
        deadlines = [d for n in self.nodes.values() if (d := n.core.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, firing every timer on time (as a runtime would)."""
        target = self.now + seconds
        for _ in range(100_000):
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            step = max(deadline, self.now)
            self.wall += step - self.now
            self.now = step
            self.run_timers()
        else:
            raise AssertionError("timers fire without end")
        self.wall += target - self.now
        self.now = target

    def datagrams(self, source: Node, kind: int) -> list[Datagram]:
        """Datagrams sent so far by ``source`` whose message type is ``kind`` (1-4)."""
        return [d for d in self.sent if d.source == source.endpoint and d.data[0] == kind]


def connect(
    a: Node,
    b: Node,
    *,
    a_allowed: Iterable[str] = ("10.0.0.1/32", "fd00::1/128"),
    b_allowed: Iterable[str] = ("10.0.0.2/32", "fd00::2/128"),
    psk: PresharedKey | None = None,
    now: float = 0.0,
    a_knows_b_endpoint: bool = True,
    b_knows_a_endpoint: bool = True,
) -> None:
    """Configure ``a`` and ``b`` as each other's peers."""
    a.core.add_peer(
        b.public_key,
        preshared_key=psk,
        endpoint=b.endpoint if a_knows_b_endpoint else None,
        allowed_ips=b_allowed,
        now=now,
    )
    b.core.add_peer(
        a.public_key,
        preshared_key=psk,
        endpoint=a.endpoint if b_knows_a_endpoint else None,
        allowed_ips=a_allowed,
        now=now,
    )


def pair(seed: int = 1, **core_args: object) -> tuple[Net, Node, Node]:
    """Two connected nodes, A (192.0.2.1, 10.0.0.1) and B (192.0.2.2, 10.0.0.2), no session yet."""
    net = Net()
    a = net.add("A", A_ENDPOINT, seed, **core_args)
    b = net.add("B", B_ENDPOINT, seed + 1, **core_args)
    connect(a, b, now=net.now)
    return net, a, b


def established(seed: int = 1, **core_args: object) -> tuple[Net, Node, Node]:
    """Two nodes with a confirmed session (A initiated; B has promoted it to current)."""
    net, a, b = pair(seed, **core_args)
    net.send(a, ipv4_packet(A_ADDRESS, B_ADDRESS, b"hello"))
    assert b.delivered == [ipv4_packet(A_ADDRESS, B_ADDRESS, b"hello")]
    assert b.peer(a).keypairs.current is not None
    a.events.clear()
    b.events.clear()
    b.delivered.clear()
    return net, a, b


def a_to_b(payload: bytes = b"data") -> bytes:
    return ipv4_packet(A_ADDRESS, B_ADDRESS, payload)


def b_to_a(payload: bytes = b"data") -> bytes:
    return ipv4_packet(B_ADDRESS, A_ADDRESS, payload)


def only_drops(node: Node) -> list[PacketDropped]:
    return [event for event in node.events if isinstance(event, PacketDropped)]
