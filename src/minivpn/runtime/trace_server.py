"""Who reads an interface's trace: clients of its trace socket, and its own log.

The core makes trace events when a tracer is attached (:mod:`minivpn.wireguard.trace`); this
module attaches one while anybody wants them, takes the events, and hands each consumer the
ones it asked for:

* **the trace socket**, ``NAME.trace`` next to the UAPI socket ``NAME.sock``, made the same way
  (mode 0600 in the 0700 socket directory: whoever may configure the interface may trace it,
  nobody else), where ``minivpn trace`` connects.  A separate socket rather than a new UAPI
  operation: the UAPI is wireguard-go's protocol, each ``wg`` call one short request and one
  answer, and a trace is a stream that lasts as long as the reader wants.  ``wg`` lists only
  ``*.sock`` files, so it never sees this one.  The protocol, one JSON object per line::

      client: {"peer": "<base64 key>" | null, "drops_only": false}
      server: {"event": "hello", "interface": "wg0", "public_key": "<base64>" | null, ...}
      server: {"time": 1764950401.123456, "event": "tun_read", ...}     (one per event)
      server: {"time": ..., "event": "lost", "count": 37}              (where events are missing)

  A request that makes no sense gets ``{"event": "error", "message": ...}`` and the socket is
  closed.
* **the log** at ``-v`` (the logger ``minivpn.events`` at INFO): handshake events, and drops
  that mean a misconfiguration, at most one line per reason and peer every 10 seconds; at
  ``-vv`` (DEBUG) every event, per packet too.

**Bounded.**  The tracer holds 4096 events.  Every 50 ms, the pump takes them, turns the ones
some consumer wants into JSON (only once each), and queues them for each client, up to 1 MiB
per client; a client that reads slowly loses what does not fit, counted and reported to it as a
``lost`` event.  The pump's own CPU time is capped: TRACE_CPU_BUDGET seconds in each second,
looked at every 256 events (what it took but has no time for is counted lost).  Once that is
spent it waits for the next second, the tracer fills up, and the packets that find no room are
not traced at all (that costs them one check and a counter).  So a trace can cost
the tunnel about that share of the CPU, plus making the events it does keep; a slow reader only
ever costs itself events (docs/performance.md, "Tracing under load", has the measurement).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from minivpn.errors import MinivpnError
from minivpn.wireguard.errors import InvalidKey
from minivpn.wireguard.keys import PublicKey
from minivpn.wireguard.trace import (
    Drop,
    HandshakeFailed,
    HandshakeReceived,
    HandshakeSent,
    SessionEstablished,
    TimerFired,
    TraceEvent,
    Tracer,
    event_json,
)

if TYPE_CHECKING:
    from minivpn.wireguard.core import WireGuardCore

__all__ = [
    "TRACE_CPU_BUDGET",
    "TRACE_SUFFIX",
    "BadRequest",
    "LogConsumer",
    "TraceHub",
    "TraceSocket",
    "prepare_trace_socket",
    "run_trace",
    "trace_socket_path",
]

log = logging.getLogger("minivpn.trace")
#: The logger of trace events: INFO (``-v``) for handshakes and misconfiguration, DEBUG (``-vv``)
#: for every event.
events_log = logging.getLogger("minivpn.events")

#: The trace socket of ``NAME.sock`` is ``NAME.trace``, in the same directory.
TRACE_SUFFIX = ".trace"
#: Seconds of CPU time the pump may spend in each second (5%).
TRACE_CPU_BUDGET = 0.05
#: How often the pump takes the events (seconds).
PUMP_INTERVAL = 0.05
#: Events delivered between two looks at the CPU time spent.
PUMP_SLICE = 256
#: Bytes queued for one client before its events are dropped (and counted).
CLIENT_QUEUE = 1 << 20
#: A client's request line: its longest length, and how long it may take to come.
_REQUEST_LIMIT = 4096
_REQUEST_TIMEOUT = 5.0
#: The log's misconfiguration drops: one line per reason and peer per this many seconds.
LOG_INTERVAL = 10.0
#: Drops that mean someone's configuration is wrong (logged at -v).
MISCONFIGURATION = frozenset(
    {
        "unknown_peer",
        "invalid_mac1",
        "disallowed_source",
        "no_route",
        "no_endpoint",
        "handshake_invalid",
        "packet_too_big",
        "mode_mismatch",
        "disallowed_mac",
    }
)
PROTOCOL_VERSION = 1


class TraceServerError(MinivpnError):
    """The trace socket cannot be made."""


def trace_socket_path(uapi_path: str | os.PathLike[str]) -> Path:
    """The trace socket beside a UAPI socket: ``/var/run/wireguard/wg0.sock`` ->
    ``/var/run/wireguard/wg0.trace``."""
    path = Path(uapi_path)
    return path.with_name(path.name.removesuffix(".sock") + TRACE_SUFFIX)


# --- the socket -----------------------------------------------------------------------------------


@attrs.define
class TraceSocket:
    """A listening trace socket and the file it is bound to (close it when done)."""

    path: Path
    listener: socket.socket
    file_id: tuple[int, int]
    _closed: bool = attrs.field(default=False, init=False)

    def close(self) -> None:
        """Close the socket and unlink its file, if the file is still this one."""
        if self._closed:
            return
        self._closed = True
        self.listener.close()
        try:
            info = os.lstat(self.path)
        except OSError:
            return
        if (info.st_dev, info.st_ino) == self.file_id:
            self.path.unlink(missing_ok=True)


def prepare_trace_socket(uapi_path: str | os.PathLike[str]) -> TraceSocket:
    """Create the trace socket next to the UAPI socket at *uapi_path*, mode 0600.

    Call it right after the UAPI socket was made (:func:`~minivpn.runtime.uapi_server.
    prepare_socket`), while the process has one thread: the UAPI socket is then ours, so a
    file left where the trace socket goes is a leftover of a process that died, and is
    replaced.  The mode comes from the umask at bind time, as for the UAPI socket.

    Raises:
        TraceServerError: the socket cannot be made (the path is too long, or taken by
            something that is not a socket).
    """
    path = trace_socket_path(uapi_path)
    if len(os.fsencode(path)) > 107:
        raise TraceServerError(f"trace socket path {path} is too long for a UNIX socket")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(info.st_mode):
            raise TraceServerError(f"{path} exists and is not a socket; remove it")
        path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        listener.bind(os.fsencode(path))
        listener.listen(16)
        info = os.lstat(path)
    except OSError as exc:
        listener.close()
        raise TraceServerError(f"cannot create the trace socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    return TraceSocket(path, listener, (info.st_dev, info.st_ino))


# --- consumers ------------------------------------------------------------------------------------


class _Batch:
    """The events of one pump pass, each turned into JSON at most once."""

    def __init__(self, events: list[TraceEvent], offset: float) -> None:
        self.events = events
        self.offset = offset
        self._objects: dict[int, dict[str, Any]] = {}
        self._lines: dict[int, bytes] = {}

    def object(self, position: int) -> dict[str, Any]:
        found = self._objects.get(position)
        if found is None:
            found = self._objects[position] = event_json(self.events[position], self.offset)
        return found

    def line(self, position: int) -> bytes:
        found = self._lines.get(position)
        if found is None:
            import json  # only once someone traces: not kept in every running interface

            text = json.dumps(self.object(position), separators=(",", ":"))
            found = self._lines[position] = text.encode() + b"\n"
        return found


class Consumer(Protocol):
    """Someone who reads the trace."""

    #: Whether it wants the per-packet events (else only handshakes, timers and drops).
    packets: bool

    def deliver(self, batch: _Batch, lost: int, now: float) -> None:
        """Take the events of *batch* it wants; *lost* events went missing before them."""
        ...


def _json_line(message: object) -> bytes:
    """*message* as one line of JSON, as the trace socket sends everything but events."""
    import json  # only once someone traces (see _Batch.line)

    return json.dumps(message).encode() + b"\n"


def _lost_line(count: int, now: float) -> bytes:
    return _json_line({"time": round(now, 6), "event": "lost", "count": count})


class SocketConsumer:
    """A client of the trace socket: its filter, and the bytes waiting to be sent to it."""

    def __init__(self, peer: PublicKey | None, drops_only: bool, limit: int = CLIENT_QUEUE) -> None:
        self.peer = peer
        self.drops_only = drops_only
        self.packets = not drops_only
        self.lost = 0
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._ready = trio.Event()

    def wants(self, event: TraceEvent) -> bool:
        if self.drops_only and not isinstance(event, Drop):
            return False
        return self.peer is None or event.peer == self.peer

    def deliver(self, batch: _Batch, lost: int, now: float) -> None:
        self.lost += lost
        for position, event in enumerate(batch.events):
            if self.wants(event):
                self._queue(batch.line(position), now)
        self._say_what_was_lost(now)
        if self._chunks or self.lost:
            self._ready.set()

    def _queue(self, line: bytes, now: float) -> None:
        """Queue a line, or count it lost: no line goes after a gap that was not reported."""
        self._say_what_was_lost(now)
        if self.lost or self._size + len(line) > self._limit:
            self.lost += 1
            return
        self._chunks.append(line)
        self._size += len(line)

    def _say_what_was_lost(self, now: float) -> None:
        if self.lost:
            marker = _lost_line(self.lost, now)
            if self._size + len(marker) <= self._limit:
                self._chunks.append(marker)
                self._size += len(marker)
                self.lost = 0

    async def next_chunk(self) -> bytes:
        """Wait for events, and take all that are queued."""
        await self._ready.wait()
        self._ready = trio.Event()
        data = b"".join(self._chunks)
        self._chunks, self._size = [], 0
        if self.lost:  # what could not be queued: there is room to say so now
            data += _lost_line(self.lost, time.time())
            self.lost = 0
        return data


class LogConsumer:
    """The interface's own log: handshakes and misconfiguration at INFO, everything at DEBUG.

    Args:
        logger: where to log (``minivpn.events``).
        interval: seconds between two lines for the same kind of misconfiguration drop.
    """

    def __init__(self, logger: logging.Logger = events_log, interval: float = LOG_INTERVAL) -> None:
        self.logger = logger
        self.packets = logger.isEnabledFor(logging.DEBUG)
        self._interval = interval
        #: (reason, peer) -> (when it was last logged, drops not logged since)
        self._quiet_until: dict[tuple[str, str | None], float] = {}
        self._held: dict[tuple[str, str | None], int] = {}

    def deliver(self, batch: _Batch, lost: int, now: float) -> None:
        from minivpn.trace_lines import format_event

        if lost:
            self.logger.debug("%d trace events lost", lost)
        for position, event in enumerate(batch.events):
            if isinstance(event, SessionEstablished | HandshakeFailed):
                continue  # the runtime logs those anyway (vpn.py, carry_out)
            line = format_event(batch.object(position)).split(" ", 1)[1]
            if isinstance(event, HandshakeSent | HandshakeReceived):
                self.logger.info("%s", line)
            elif isinstance(event, Drop) and event.reason.value in MISCONFIGURATION:
                self._misconfiguration(event, line)
            elif isinstance(event, TimerFired) and event.action == "giving up":
                continue
            else:
                self.logger.debug("%s", line)

    def _misconfiguration(self, event: Drop, line: str) -> None:
        """Log the drop, unless one like it was logged less than ``interval`` ago."""
        key = (event.reason.value, event.peer.to_base64() if event.peer is not None else None)
        if event.time < self._quiet_until.get(key, -1.0):
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        more = f" (and {held} more like it before)" if held else ""
        self.logger.info("%s%s", line, more)
        self._quiet_until[key] = event.time + self._interval


# --- the hub --------------------------------------------------------------------------------------


class TraceHub:
    """The consumers of one interface's trace, and the tracer attached for them."""

    def __init__(self, core: WireGuardCore, name: str, *, budget: float = TRACE_CPU_BUDGET) -> None:
        self.core = core
        self.name = name
        self.budget = budget
        self.consumers: list[Consumer] = []
        self.tracer: Tracer | None = None
        self._changed = trio.Event()
        #: Events taken from the tracer but not delivered for want of CPU time.
        self._lost = 0

    def add(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self._retune()

    def remove(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self._retune()

    def _retune(self) -> None:
        """Attach a tracer while anybody consumes, making what the consumers want."""
        if not self.consumers:
            self.core.attach_tracer(None)
            self.tracer = None
            return
        packets = any(consumer.packets for consumer in self.consumers)
        if self.tracer is None:
            self.tracer = Tracer(packets=packets)
            self.core.attach_tracer(self.tracer)
        self.tracer.packets = packets
        self._changed.set()

    async def run(self) -> None:
        """Take the events every PUMP_INTERVAL and deliver them, within the CPU budget."""
        window_start, spent = trio.current_time(), 0.0
        while True:
            if self.tracer is None:
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            await trio.sleep(PUMP_INTERVAL)
            now = trio.current_time()
            if now - window_start >= 1.0:
                window_start, spent = now, 0.0
            if spent >= self.budget:
                await trio.sleep_until(window_start + 1.0)
                continue
            spent += self.pump(self.budget - spent)

    def pump(self, allowance: float = float("inf")) -> float:
        """Deliver what the tracer holds, within *allowance* seconds of CPU time.

        The events are delivered a slice at a time; those that the allowance leaves no time
        for are counted lost, and the consumers hear of them at the next pump.

        Returns:
            The CPU time it took.
        """
        started = time.thread_time()
        tracer = self.tracer
        if tracer is None:
            return 0.0
        tracer.own_public_key = self.core.public_key
        events, lost = tracer.take()
        lost += self._lost
        self._lost = 0
        if not events and not lost:
            return time.thread_time() - started
        offset = time.time() - trio.current_time()
        for first in range(0, max(len(events), 1), PUMP_SLICE):
            batch = _Batch(events[first : first + PUMP_SLICE], offset)
            for consumer in list(self.consumers):
                consumer.deliver(batch, lost, time.time())
            lost = 0
            if time.thread_time() - started >= allowance:
                self._lost = max(len(events) - first - PUMP_SLICE, 0)
                break
        return time.thread_time() - started

    def hello(self) -> dict[str, Any]:
        """The first line a client gets."""
        key = self.core.public_key
        return {
            "event": "hello",
            "version": PROTOCOL_VERSION,
            "interface": self.name,
            "public_key": key.to_base64() if key is not None else None,
            "time": round(time.time(), 6),
        }


# --- serving --------------------------------------------------------------------------------------


async def run_trace(core: WireGuardCore, name: str, listener: socket.socket | None) -> None:
    """Serve the trace of one interface: to the log (at ``-v``), and on *listener* if given.

    One of the interface's tasks (:func:`minivpn.runtime.vpn.run_interface`).
    """
    hub = TraceHub(core, name)
    if events_log.isEnabledFor(logging.INFO):
        hub.add(LogConsumer())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        if listener is not None:
            nursery.start_soon(_accept, listener, hub)


async def _accept(listener: socket.socket, hub: TraceHub) -> None:
    stream_listener = trio.SocketListener(trio.socket.from_stdlib_socket(listener))
    async with trio.open_nursery() as clients:
        while True:
            try:
                stream = await stream_listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    raise
                await trio.sleep(0.1)
                continue
            clients.start_soon(_serve_client, stream, hub)


async def _serve_client(stream: trio.SocketStream, hub: TraceHub) -> None:
    """Read the client's request, then send it events until it goes away."""
    async with stream:
        try:
            consumer = await _read_request(stream)
        except BadRequest as exc:
            await _send_quietly(stream, {"event": "error", "message": str(exc)})
            return
        except trio.BrokenResourceError:
            return
        hub.add(consumer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_the_client_leaves, stream, nursery.cancel_scope)
                await _send_events(stream, hub, consumer)
                nursery.cancel_scope.cancel()  # the client went away
        finally:
            hub.remove(consumer)
            log.debug("a trace client left (%d events it lost still counted)", consumer.lost)


#: What a stream raises when the client hangs up, or has hung up.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


async def _cancel_when_the_client_leaves(
    stream: trio.SocketStream, scope: trio.CancelScope
) -> None:
    """Read (and ignore) what the client sends after its request, until it hangs up."""
    with contextlib.suppress(*_GONE):
        while await stream.receive_some(_REQUEST_LIMIT):
            pass
    scope.cancel()


async def _send_events(stream: trio.SocketStream, hub: TraceHub, consumer: SocketConsumer) -> None:
    """Send the hello, then the consumer's events as they come, until the client hangs up.

    A client that goes away is no error of the interface's: each task of the client's
    nursery handles it itself, so no error of one client ever reaches the interface.
    """
    with contextlib.suppress(*_GONE):
        await stream.send_all(_json_line(hub.hello()))
        while True:
            await stream.send_all(await consumer.next_chunk())


class BadRequest(Exception):
    """A trace client's request that makes no sense (the message says why)."""


async def _read_request(stream: trio.SocketStream) -> SocketConsumer:
    """The client's one request line, as a consumer with its filter."""
    data = b""
    with trio.move_on_after(_REQUEST_TIMEOUT):
        while b"\n" not in data and len(data) <= _REQUEST_LIMIT:
            chunk = await stream.receive_some(_REQUEST_LIMIT)
            if not chunk:
                break
            data += chunk
    peer, drops_only = parse_request_untrusted(data)
    return SocketConsumer(peer, drops_only)


def parse_request_untrusted(data: bytes) -> tuple[PublicKey | None, bool]:
    """What a trace client asks for: ``(peer, drops_only)``, from the bytes it sent.

    Args:
        data: what the client sent (anything): its first line must be the request, a JSON
            object such as ``{"peer": "<base64 key>", "drops_only": true}``.

    Raises:
        BadRequest: it is not (the only exception, whatever ``data`` holds).
    """
    import json  # only once someone traces (see _Batch.line)

    line = data.partition(b"\n")[0]
    if b"\n" not in data:
        raise BadRequest("expected one line of JSON: the request")
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):  # [[[...: deeper than Python goes
        raise BadRequest("the request is not JSON") from None
    if not isinstance(request, dict):
        raise BadRequest("the request must be a JSON object")
    peer_text = request.get("peer")
    drops_only = request.get("drops_only", False)
    if not isinstance(drops_only, bool):
        raise BadRequest("drops_only must be true or false")
    peer = None
    if peer_text is not None:
        if not isinstance(peer_text, str):
            raise BadRequest("peer must be a public key in base64")
        try:
            peer = PublicKey.from_base64(peer_text)
        except InvalidKey as exc:
            raise BadRequest(f"peer: {exc}") from None
    return peer, drops_only


async def _send_quietly(stream: trio.SocketStream, message: dict[str, Any]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(_json_line(message))
