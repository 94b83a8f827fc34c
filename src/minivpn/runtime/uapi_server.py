"""The daemon's end of the UAPI: the UNIX socket through which ``wg`` configures minivpn.

``wg`` (and ``minivpn show``) finds a userspace WireGuard interface by its socket,
``/var/run/wireguard/<name>.sock``, connects, writes ``get=1`` or ``set=1`` operations and reads
the answers.  This module follows wireguard-go's contract for that socket (``ipc/uapi_unix.go``,
``ipc/uapi_linux.go``, ``device/uapi.go``); the bytes themselves are parsed and written by the
sans-IO :mod:`minivpn.wireguard.uapi`.

The life of the socket::

    prepare_socket(name)          mkdir 0700, bind under umask 177 (mode 0600), listen;
                                  an old socket nobody answers on is replaced, a live one is an
                                  error ("already running")
    serve_uapi(listener, handler) accept loop; one task per connection, each with its own
                                  UapiRequestParser; get -> handler.snapshot(),
                                  set -> handler.apply()
    watch_socket_path(path)       returns when the file is deleted or replaced: the daemon then
                                  exits, as wireguard-go does (``rm /var/run/wireguard/wg0.sock``
                                  is a documented way to stop it)
    UapiSocket.close()            close, and unlink the file only if it is still ours

A connection that misbehaves (garbage, a line that never ends, a reset) ends only that
connection; the server and the other connections go on.

**Bounds**, so that no client -- buggy or hostile, though it must be allowed to open the socket
(mode 0600: root) -- can take the daemon's memory, file descriptors or time:

* a ``set`` is applied in slices of :data:`~minivpn.wireguard.uapi.SET_SLICE_LINES` lines as
  they arrive (as wireguard-go applies each line as it reads it), and the server checkpoints
  between two slices, so that a huge ``set`` yields to the data path; what a connection holds
  is one line and one slice, whatever it sends, so memory stays flat;
* a connection silent for :data:`IDLE_TIMEOUT` seconds (between requests, or in the middle of
  one), or that does not read its answer for as long, is closed;
* at most :data:`MAX_CONNECTIONS` are served at once: one more closes the connection idle the
  longest, so that ``wg show`` is always answered;
* ``accept()`` errors (out of file descriptors) are logged at most once every
  :data:`ACCEPT_LOG_INTERVAL` seconds, with a count, and one closes the connection idle the
  longest to make room.

The directory can be changed (an argument, or the ``MINIVPN_SOCKET_DIR`` environment variable,
as wireguard-go's iOS and macOS ports needed), but ``wg`` itself only looks in
``/var/run/wireguard``.  The tests run inside ``netns/isolate``, whose ``/run`` is private.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from minivpn.errors import MinivpnError
from minivpn.tuntap.ioctl import encode_name
from minivpn.wireguard.uapi import (
    CloseConnection,
    DeviceSnapshot,
    GetRequest,
    RequestError,
    SetRequest,
    UapiEvent,
    UapiRequestParser,
    format_errno,
    format_get_response,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "ACCEPT_LOG_INTERVAL",
    "ERRNO_UNKNOWN",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "SOCKET_DIR",
    "SOCKET_DIR_ENV",
    "UapiHandler",
    "UapiServerError",
    "UapiSocket",
    "default_socket_dir",
    "prepare_socket",
    "serve_uapi",
    "socket_path",
    "watch_socket_path",
]

log = logging.getLogger("minivpn.uapi")

#: Where ``wg`` looks for userspace interfaces (wireguard-tools: ``RUNSTATEDIR "/wireguard/"``).
SOCKET_DIR = Path("/var/run/wireguard")

#: Environment variable that moves the socket directory (``wg`` will not find it there).
SOCKET_DIR_ENV = "MINIVPN_SOCKET_DIR"

#: wireguard-go's answer when applying fails for a reason that has no errno of its own
#: (``ipc.IpcErrorUnknown``).  minivpn answers it when the handler raises: a bug, logged.
ERRNO_UNKNOWN = -55

#: ``sockaddr_un.sun_path`` holds 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107

#: How much one connection reads at a time (parsing it is about 2 ms of work).  The parser
#: bounds what it keeps (one line of up to 64 KiB, one slice of a set).
_READ_SIZE = 16 * 1024

#: Seconds a connection may stay silent, or leave its answer unread, before it is closed.
IDLE_TIMEOUT = 10.0
#: Connections served at once; one more closes the connection idle the longest.
MAX_CONNECTIONS = 32
#: Seconds between two log lines about accept() errors.
ACCEPT_LOG_INTERVAL = 10.0

#: accept() errors that mean "out of a resource for now": wait a little and accept again,
#: rather than let one burst of connections stop the server (as ``trio.serve_listeners`` does).
_TRANSIENT_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class UapiServerError(MinivpnError):
    """The UAPI socket cannot be set up: the interface already runs, or the path is unusable."""


class UapiHandler(Protocol):
    """What the UAPI server needs from a WireGuard device.

    Both methods are synchronous, so a ``set`` is applied as a whole without another
    connection's ``get`` seeing half of it (wireguard-go holds a lock for the same reason).
    """

    def apply(self, request: SetRequest) -> int:
        """Apply a ``set=1`` request; return 0 or the negative errno of the step that failed.

        ``request.errno`` is not the handler's business: the server answers it when the
        handler itself succeeded (see :func:`serve_uapi`).
        """
        ...

    def snapshot(self) -> DeviceSnapshot:
        """The device as ``get=1`` reports it, now."""
        ...


# --- where the socket lives -----------------------------------------------------------------------


def default_socket_dir() -> Path:
    """The socket directory: ``$MINIVPN_SOCKET_DIR`` if set, else ``/var/run/wireguard``."""
    return Path(os.environ.get(SOCKET_DIR_ENV) or SOCKET_DIR)


def socket_path(name: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The socket of interface *name*: ``<directory>/<name>.sock``.

    Args:
        name: the interface name; it must be a valid Linux interface name (1 to 15 bytes, no
            ``/``, ``:`` or whitespace), which also keeps it from leaving the directory.
        directory: the socket directory; :func:`default_socket_dir` when None.

    Raises:
        InvalidDeviceName: the name is not a valid interface name.
        UapiServerError: the path is too long for a UNIX socket address.
    """
    encode_name(name)
    path = Path(directory if directory is not None else default_socket_dir()) / f"{name}.sock"
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise UapiServerError(
            f"socket path {path} is too long: a UNIX socket path has at most "
            f"{_MAX_SOCKET_PATH} bytes"
        )
    return path


FileId = tuple[int, int]


def _file_id(path: Path) -> FileId | None:
    """The (device, inode) pair naming the file at *path* now, or None if there is none."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        return None  # after a switch to another user (privileges.py): not ours to judge
    return info.st_dev, info.st_ino


# --- creating and removing the socket -------------------------------------------------------------


@attrs.define
class UapiSocket:
    """A listening UAPI socket and the file it is bound to.

    Use it as a context manager, or call :meth:`close`, once :func:`serve_uapi` has returned.
    After a ``fork``, only the process that serves should call :meth:`close`; the other one
    closes :attr:`listener` alone (otherwise it would unlink the file the server still uses).

    Attributes:
        name: the interface name.
        path: the socket file.
        listener: the bound, listening socket (blocking until trio wraps it).
        file_id: (st_dev, st_ino) of the file bound: how :meth:`close` and
            :func:`watch_socket_path` tell our file from one that replaced it.
        handle: an ``O_PATH`` descriptor of the file, or -1: its link count drops to 0 when
            the file is removed or replaced, which a process that may no longer look into the
            directory (after ``--user``, docs/privileges.md) can still see.
    """

    name: str
    path: Path
    listener: socket.socket
    file_id: FileId
    handle: int = -1
    _closed: bool = attrs.field(default=False, init=False)

    def close(self) -> None:
        """Close the socket and unlink its file, unless the file is no longer ours.

        A file with another inode was put there by someone else (a new daemon for the same
        interface, after ours was told to stop by deleting the file): leave it alone.
        Closing twice does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self.listener.close()
        if self.handle >= 0:
            os.close(self.handle)
        if _file_id(self.path) == self.file_id:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> UapiSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def prepare_socket(name: str, directory: str | os.PathLike[str] | None = None) -> UapiSocket:
    """Create, bind and listen on the UAPI socket of interface *name*.

    Synchronous on purpose: a daemon creates the socket before it forks, so that a failure
    ("already running") is reported by the command the user typed.

    The directory is created with mode 0700 if it is missing (an existing one is left as it
    is).  The socket file gets mode 0600: only its owner, normally root, may configure the
    interface.  If the file exists, it is probed as wireguard-go does: a connection that
    succeeds means another daemon serves this interface (an error); a refused connection means
    a stale file left by a daemon that died, which is removed and replaced.

    Args:
        name: the interface name.
        directory: the socket directory; :func:`default_socket_dir` when None.

    Returns:
        The listening socket with its path; close it with :meth:`UapiSocket.close`.

    Raises:
        InvalidDeviceName: *name* is not a valid interface name.
        UapiServerError: the interface is already running, the path is taken by something
            that is not a socket, or the directory or socket cannot be created.
    """
    path = socket_path(name, directory)
    _make_private_directory(path.parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        try:
            _bind_private(listener, path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise _bind_error(path, exc) from None
            _remove_if_stale(name, path)
            try:
                _bind_private(listener, path)
            except OSError as exc2:
                if exc2.errno == errno.EADDRINUSE:  # another daemon won the race for the name
                    raise _already_running(name, path) from None
                raise _bind_error(path, exc2) from None
        bound = True
        file_id = _file_id(path)
        if file_id is None:
            raise UapiServerError(f"socket {path} vanished right after it was created")
        listener.listen(socket.SOMAXCONN)
        handle = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except BaseException:
        listener.close()
        if bound:
            path.unlink(missing_ok=True)
        raise
    log.debug("UAPI socket %s ready", path)
    return UapiSocket(name, path, listener, file_id, handle)


def _make_private_directory(directory: Path) -> None:
    """Create *directory* with mode 0700 if it does not exist (its parents as usual)."""
    if directory.is_dir():
        return
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass  # created meanwhile by someone else (another daemon starting): use it as is
        else:
            directory.chmod(0o700)  # mkdir's mode is filtered by the umask; be exact
    except PermissionError:
        raise UapiServerError(
            f"cannot create {directory}: permission denied (run as root, or set "
            f"{SOCKET_DIR_ENV} to a directory you own; wg only looks in {SOCKET_DIR})"
        ) from None
    except OSError as exc:
        raise UapiServerError(f"cannot create {directory}: {exc.strerror}") from None
    if not directory.is_dir():
        raise UapiServerError(f"{directory} exists and is not a directory")


def _bind_private(listener: socket.socket, path: Path) -> None:
    """Bind *listener* to *path* so that the new file has mode 0600 from the start.

    The mode of a socket file is 0777 filtered by the umask at bind time; there is no ``mode``
    argument.  Changing it with chmod afterwards would leave a moment in which others may
    connect, so the umask is narrowed around the bind instead (wireguard-go does the same with
    077).  The umask is per process: call this while the process has a single thread, as a
    daemon does when it starts.
    """
    old_umask = os.umask(0o177)
    try:
        listener.bind(os.fsencode(path))
    finally:
        os.umask(old_umask)


def _remove_if_stale(name: str, path: Path) -> None:
    """Unlink *path* if it is a socket nobody listens on; raise if a daemon answers on it.

    There is a small race, shared with wireguard-go and ``wg``: a daemon that binds the name
    between our refused connection and the unlink loses its file.  Two daemons started at the
    same instant for the same interface are a mistake anyway.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return  # gone meanwhile: just bind again
    if not stat.S_ISSOCK(info.st_mode):
        raise UapiServerError(f"{path} exists and is not a socket; remove it if it is a leftover")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(os.fsencode(path))
    except ConnectionRefusedError:
        log.info("removing stale UAPI socket %s (nothing listens on it)", path)
        path.unlink(missing_ok=True)
        return
    except FileNotFoundError:
        return
    except PermissionError:
        raise UapiServerError(
            f"socket {path} exists and cannot be probed: permission denied (run as root)"
        ) from None
    except (TimeoutError, BlockingIOError):
        # A full accept queue: someone listens, but is busy.
        raise _already_running(name, path) from None
    finally:
        probe.close()
    raise _already_running(name, path)


def _already_running(name: str, path: Path) -> UapiServerError:
    return UapiServerError(f"interface {name} is already running (socket {path} in use)")


def _bind_error(path: Path, exc: OSError) -> UapiServerError:
    if isinstance(exc, PermissionError):
        return UapiServerError(f"cannot create socket {path}: permission denied (run as root)")
    return UapiServerError(f"cannot create socket {path}: {exc.strerror or exc}")


# --- watching the file ----------------------------------------------------------------------------


async def watch_socket_path(
    path: str | os.PathLike[str],
    *,
    interval: float = 0.5,
    file_id: FileId | None = None,
    handle: int = -1,
) -> None:
    """Return once the socket file at *path* is deleted or replaced by another file.

    The daemon exits then: deleting the socket is how wireguard-go is told to stop, and a
    replaced file means another daemon has taken the interface's name.

    wireguard-go learns of the deletion from inotify.  The Python standard library has no
    inotify binding, and one ``lstat`` twice a second costs next to nothing, so this polls.

    Args:
        path: the socket file.
        interval: seconds between two looks.
        file_id: (st_dev, st_ino) of the file to watch (:attr:`UapiSocket.file_id`); when None,
            the file found at *path* now.  Passing it closes the gap between creating the
            socket and starting the watch.
        handle: :attr:`UapiSocket.handle`: if given, the file's link count is watched instead
            (0 once it is removed or replaced), which needs no right to look into its directory.
    """
    target = Path(path)
    expected = file_id if file_id is not None else _file_id(target)
    while True:
        if handle >= 0:
            if os.fstat(handle).st_nlink == 0:
                break
        elif expected is None or _file_id(target) != expected:
            break
        await trio.sleep(interval)
    log.info("UAPI socket %s was removed or replaced", target)


# --- serving --------------------------------------------------------------------------------------


class _Connection:
    """One connection being served: when it was last active, and how to close it."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.active = trio.current_time()


class _Connections:
    """The connections being served, for the cap (and for making room)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: set[_Connection] = set()

    def close_idlest(self) -> bool:
        """Close the connection idle the longest; False if there is none."""
        if not self.open:
            return False
        idlest = min(self.open, key=lambda connection: connection.active)
        self.open.discard(idlest)
        idlest.scope.cancel()
        return True


class _AcceptErrors:
    """Log accept() errors at most once every ACCEPT_LOG_INTERVAL seconds, counting the rest."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last_logged = -math.inf
        self.unlogged = 0

    def report(self, exc: OSError) -> None:
        now = trio.current_time()
        if now - self.last_logged < self.interval:
            self.unlogged += 1
            return
        more = f" ({self.unlogged} more since the last message)" if self.unlogged else ""
        log.warning(
            "UAPI: cannot accept a connection: %s; closing the idlest one%s", exc.strerror, more
        )
        self.last_logged = now
        self.unlogged = 0


async def serve_uapi(
    listener: socket.socket,
    handler: UapiHandler,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    accept_log_interval: float = ACCEPT_LOG_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept UAPI connections on *listener* and answer them from *handler*, until cancelled.

    Each connection runs in its own task with its own parser.  Answers follow wireguard-go:

    * ``get=1``: :func:`~minivpn.wireguard.uapi.format_get_response` of ``handler.snapshot()``;
    * ``set=1``: ``handler.apply(request)`` for each slice, then ``errno=`` of the first
      failure if one failed (the slices after it are skipped), else ``request.errno``.  A
      request that broke off at a malformed line still carries the lines before it, which
      wireguard-go has applied by then, so they are applied here too;
    * a malformed request that keeps the connection: its errno;
    * anything that is not an operation: the connection is closed without an answer.

    If the handler raises, the exception is logged with its traceback (it is a bug) and the
    client gets ``errno=-55``, wireguard-go's "unknown error"; the server goes on.  The bounds
    (the module documentation) come from the keyword arguments.

    Use with ``await nursery.start(serve_uapi, uapi.listener, handler)``: it reports started
    once it accepts.  *listener* is not closed here (:meth:`UapiSocket.close` does that).
    """
    stream_listener = trio.SocketListener(trio.socket.from_stdlib_socket(listener))
    connections = _Connections(max_connections)
    errors = _AcceptErrors(accept_log_interval)
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            try:
                stream = await stream_listener.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT_ERRNOS:
                    raise
                errors.report(exc)
                connections.close_idlest()
                await trio.sleep(0.1)  # the connection waits in the backlog: no busy loop
                continue
            if len(connections.open) >= connections.limit:
                connections.close_idlest()
            connection = _Connection(trio.CancelScope())
            connections.open.add(connection)
            nursery.start_soon(
                _serve_connection, stream, handler, connection, connections, idle_timeout
            )


async def _serve_connection(
    stream: trio.SocketStream,
    handler: UapiHandler,
    connection: _Connection,
    connections: _Connections,
    idle_timeout: float,
) -> None:
    """Serve one client until it closes, breaks, misbehaves, idles, or is closed for room."""
    try:
        with connection.scope:
            async with stream:
                await _converse(stream, handler, connection, idle_timeout)
    except trio.BrokenResourceError:
        pass  # the client reset the connection or went away before reading its answer
    except trio.TooSlowError:
        log.debug("UAPI: closed a connection silent (or not reading) for %g s", idle_timeout)
    finally:
        connections.open.discard(connection)


async def _converse(
    stream: trio.SocketStream, handler: UapiHandler, connection: _Connection, idle_timeout: float
) -> None:
    """Answer the operations of one client, each read and each answer within *idle_timeout*.

    Raises:
        trio.TooSlowError: the client was silent, or did not read, for *idle_timeout* seconds.
    """
    parser = UapiRequestParser()
    failed = 0  # the errno of a slice of the current set that failed to apply
    while not parser.closed:
        with trio.fail_after(idle_timeout):
            data = await stream.receive_some(_READ_SIZE)
        connection.active = trio.current_time()
        for event in parser.feed(data) if data else parser.feed_eof():
            if isinstance(event, SetRequest) and event.more:
                if not failed:
                    failed = _apply_slice(event, handler)
                await trio.lowlevel.checkpoint()  # the data path goes on between two slices
                continue
            answer = _answer(event, handler, failed)
            failed = 0
            if answer is None:
                return
            with trio.fail_after(idle_timeout):
                await stream.send_all(answer)
            connection.active = trio.current_time()


def _apply_slice(request: SetRequest, handler: UapiHandler) -> int:
    """Apply one slice of a set; the errno if it failed (0 if not)."""
    try:
        return handler.apply(request)
    except Exception:  # a bug in the device: keep serving, say so in the log
        log.exception("UAPI: set failed")
        return ERRNO_UNKNOWN


def _answer(event: UapiEvent, handler: UapiHandler, failed: int = 0) -> bytes | None:
    """The bytes answering *event*, or None to close the connection.

    *failed*: the errno of an earlier slice of this set that failed; the last slice is then
    not applied, and that errno is the answer.
    """
    if isinstance(event, CloseConnection):
        log.debug("UAPI: closing a connection: %s", event.reason)
        return None
    if isinstance(event, RequestError):
        log.info("UAPI: bad request: %s", event.message)
        return format_errno(event.errno)
    if isinstance(event, GetRequest):
        try:
            snapshot = handler.snapshot()
        except Exception:  # a bug in the device: keep serving, say so in the log
            log.exception("UAPI: get failed")
            return format_errno(ERRNO_UNKNOWN)
        return format_get_response(snapshot)
    if failed:
        return format_errno(failed)
    applied = _apply_slice(event, handler)
    # A failure while applying happened at a line before the one that did not parse.
    result = applied or event.errno
    if event.errno and not applied:
        log.info("UAPI: set stopped at a bad line: %s", event.message)
    return format_errno(result)
