"""An in-memory network of layer-2 cores (``EthernetCore``, ``Mode = tap``), like wgnet.py's.

Each node is an :class:`~minivpn.wireguard.ethernet.EthernetCore` with a fake TAP device: the
frames the core hands to it land in ``node.tap``.  :meth:`L2Net.frame_from_tap` is a frame read
from a node's TAP device; datagrams travel between nodes in order, as in
:class:`tests.helpers.wgnet.Net`, and every result the two frame calls return is carried out the
way :mod:`minivpn.runtime.frames` does it (one frame, a flood of copies, a handshake reply).
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING

import attrs
from tests.helpers.wgnet import WALL_START, seeded_rng

from minivpn.wireguard.ethernet import FRAME_HEADER_SIZE, EthernetCore
from minivpn.wireguard.events import SendDatagram
from minivpn.wireguard.keys import PrivateKey, PublicKey
from minivpn.wireguard.results import Switched, WriteFrame, WriteToNetwork

if TYPE_CHECKING:
    from minivpn.wireguard.events import Action, Endpoint
    from minivpn.wireguard.peer import Peer
    from minivpn.wireguard.results import FrameReceived, FrameSent

BROADCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    """A locally administered unicast MAC address: 02:00:00:00:00:nn."""
    return bytes([2, 0, 0, 0, n >> 8, n & 0xFF])


def frame(
    destination: bytes, source: bytes, payload: bytes = b"x" * 46, ethertype: int = 0x88B5
) -> bytes:
    """An Ethernet frame (EtherType 0x88b5: local experimental, by default)."""
    return destination + source + struct.pack("!H", ethertype) + payload


@attrs.define(eq=False)
class L2Node:
    """One layer-2 core, its fake TAP device, and what it reported."""

    name: str
    core: EthernetCore
    endpoint: Endpoint
    key: PrivateKey
    tap: list[bytes] = attrs.field(factory=list)
    events: list[Action] = attrs.field(factory=list)

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def peer(self, other: L2Node) -> Peer:
        return self.core.peers[other.public_key]

    def drops(self) -> dict[str, int]:
        return {reason.value: n for reason, n in self.core.drops.items() if n}


@attrs.define(eq=False)
class L2Net:
    """Carries datagrams between layer-2 nodes; owns the fake clocks."""

    now: float = 1000.0
    wall: float = WALL_START
    nodes: dict[Endpoint, L2Node] = attrs.field(factory=dict)
    in_flight: list[tuple[Endpoint, Endpoint, bytes]] = attrs.field(factory=list)
    #: Every datagram sent: (source, destination, data).
    sent: list[tuple[Endpoint, Endpoint, bytes]] = attrs.field(factory=list)

    def add(self, name: str, endpoint: Endpoint, seed: int, **core_args: object) -> L2Node:
        rng = seeded_rng(seed)
        key = PrivateKey.generate(rng.randbytes)
        core = EthernetCore(
            key,
            rng=rng.randbytes,
            jitter=random.Random(seed + 1000),
            wall_clock=lambda: self.wall,
            report_drops=True,
            **core_args,  # type: ignore[arg-type]
        )
        node = L2Node(name, core, endpoint, key)
        self.nodes[endpoint] = node
        return node

    def link(self, a: L2Node, b: L2Node, *, keepalive: int = 0) -> None:
        """Make ``a`` and ``b`` each other's peers (``b``'s keepalive starts a handshake)."""
        for one, other in ((a, b), (b, a)):
            one.core.add_peer(
                other.public_key,
                endpoint=other.endpoint,
                persistent_keepalive=keepalive if one is b else 0,
                now=self.now,
            )
            self._actions(one)
        self.flush()

    # --- carrying out results ------------------------------------------------------------------

    def _send(self, node: L2Node, data: bytes | memoryview, endpoint: Endpoint) -> None:
        datagram = (node.endpoint, endpoint, bytes(data))
        self.sent.append(datagram)
        self.in_flight.append(datagram)

    def _actions(self, node: L2Node) -> None:
        for action in node.core.take_actions():
            if isinstance(action, SendDatagram):
                self._send(node, action.data, action.endpoint)
            else:
                node.events.append(action)

    def _carry_out(self, node: L2Node, result: FrameSent | FrameReceived, out: memoryview) -> None:
        if isinstance(result, WriteToNetwork):
            self._send(node, out[: result.size], result.endpoint)
        elif isinstance(result, WriteFrame):
            node.tap.append(bytes(out[result.start : result.start + result.size]))
        elif isinstance(result, Switched):
            if result.frame_size:
                node.tap.append(
                    bytes(out[result.frame_start : result.frame_start + result.frame_size])
                )
            for datagram in result.datagrams:
                self._send(
                    node, out[datagram.start : datagram.start + datagram.size], datagram.endpoint
                )
        self._actions(node)

    # --- traffic ---------------------------------------------------------------------------------

    def frame_from_tap(self, node: L2Node, data: bytes) -> FrameSent:
        """``node`` reads ``data`` from its TAP device; everything it causes is delivered."""
        message = memoryview(bytearray(FRAME_HEADER_SIZE + len(data)))
        message[FRAME_HEADER_SIZE:] = data
        out = memoryview(bytearray(8 * (len(data) + 64)))
        result = node.core.encapsulate_frame(message, out, self.now)
        self._carry_out(node, result, out)
        self.flush()
        return result

    def deliver(self, source: Endpoint, destination: Endpoint, data: bytes) -> FrameReceived | None:
        node = self.nodes.get(destination)
        if node is None:
            return None
        out = memoryview(bytearray(8 * (len(data) + 64)))
        result = node.core.decapsulate_frame(source, data, out, self.now)
        self._carry_out(node, result, out)
        return result

    def flush(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.in_flight:
                return
            self.deliver(*self.in_flight.pop(0))
        raise AssertionError("the cores keep talking: an endless exchange?")

    def advance(self, seconds: float) -> None:
        """Let time pass, firing the timers on time."""
        target = self.now + seconds
        for _ in range(100_000):
            deadlines = [
                d for n in self.nodes.values() if (d := n.core.next_deadline()) is not None
            ]
            if not deadlines or min(deadlines) > target:
                break
            step = max(min(deadlines), self.now)
            self.wall += step - self.now
            self.now = step
            for node in list(self.nodes.values()):
                for action in node.core.handle_timer(self.now):
                    if isinstance(action, SendDatagram):
                        self._send(node, action.data, action.endpoint)
                    else:
                        node.events.append(action)
            self.flush()
        self.wall += target - self.now
        self.now = target


HUB = ("192.0.2.1", 51820)
SPOKE1 = ("192.0.2.2", 51820)
SPOKE2 = ("192.0.2.3", 51820)


def hub_and_spokes(seed: int = 1, **core_args: object) -> tuple[L2Net, L2Node, L2Node, L2Node]:
    """A hub with two spokes, sessions established (each spoke knows only the hub)."""
    net = L2Net()
    hub = net.add("hub", HUB, seed, **core_args)
    one = net.add("spoke1", SPOKE1, seed + 1, **core_args)
    two = net.add("spoke2", SPOKE2, seed + 2, **core_args)
    net.link(hub, one, keepalive=25)
    net.link(hub, two, keepalive=25)
    for spoke in (one, two):
        assert hub.peer(spoke).keypairs.current is not None
        assert spoke.peer(hub).keypairs.current is not None
    for node in (hub, one, two):
        node.events.clear()
    net.sent.clear()
    return net, hub, one, two
