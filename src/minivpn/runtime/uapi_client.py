"""The client's end of the UAPI: read and change a running interface without ``wg``.

This is what ``wg`` does for a userspace interface (wireguard-tools ``ipc-uapi-unix.h`` and
``ipc-uapi.h``), written as blocking calls for the command line:

* :func:`list_interfaces`: the ``*.sock`` files in the socket directory that are sockets and
  do not refuse a connection (``wg show interfaces``);
* :func:`get_device`: connect, send ``get=1``, parse the answer into a
  :class:`~minivpn.wireguard.uapi.DeviceSnapshot` (``wg show``/``wg showconf``);
* :func:`set_device`: send one ``set=1`` request and check its ``errno`` (``wg set``).

Unlike ``wg``, nothing here deletes a stale socket file: reading the state of interfaces
should not change anything.  Every call has a deadline, so a daemon that stops answering cannot
hang the command.  The snapshot holds the private and preshared keys, because the protocol
sends them; what the caller prints is its responsibility (``minivpn show`` never prints them).
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from typing import TYPE_CHECKING

from minivpn.errors import MinivpnError
from minivpn.runtime.uapi_server import default_socket_dir, socket_path
from minivpn.tuntap.errors import InvalidDeviceName
from minivpn.tuntap.ioctl import encode_name
from minivpn.wireguard.uapi import (
    DeviceSet,
    DeviceSnapshot,
    PeerSet,
    UapiError,
    format_set_request,
    parse_get_response,
)

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = [
    "DEFAULT_TIMEOUT",
    "NoSuchInterface",
    "UapiClientError",
    "UapiPermissionError",
    "get_device",
    "list_interfaces",
    "set_device",
]

#: Seconds a whole exchange with a daemon may take.
DEFAULT_TIMEOUT = 10.0

#: The largest answer read.  A get answer is about 60 bytes per allowed IP; this allows
#: millions, and stops a runaway daemon from filling the memory.
_MAX_ANSWER = 256 * 1024 * 1024

#: How much is read at a time.
_READ_SIZE = 64 * 1024

_ERRNO_ANSWER = re.compile(rb"errno=(-?[0-9]{1,10})\n\n")


class UapiClientError(MinivpnError):
    """Talking to an interface's UAPI socket failed."""


class NoSuchInterface(UapiClientError):
    """No interface of that name runs here: no socket for it (or it runs in another directory).

    Raised by this module's calls, and by :func:`minivpn.runtime.interface.take_down` when
    there is neither a socket nor a device of that name.
    """


class UapiPermissionError(UapiClientError):
    """The socket or its directory belongs to someone else (normally root)."""


def list_interfaces(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """The names of the userspace interfaces with a live socket in *directory*, sorted.

    Like ``wg show interfaces``: a ``NAME.sock`` entry counts if it is a socket and a
    connection to it is not refused.  A missing directory means no interfaces.

    Raises:
        UapiPermissionError: the directory cannot be read.
    """
    folder = default_socket_dir() if directory is None else directory
    names = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except PermissionError:
        raise _permission_error(folder) from None
    except OSError as exc:
        raise UapiClientError(f"cannot read {os.fspath(folder)}: {exc.strerror}") from None
    for entry in entries:
        name, suffix, rest = entry.name.rpartition(".sock")
        if not suffix or rest or not _valid_name(name):
            continue
        try:
            if not stat.S_ISSOCK(entry.stat(follow_symlinks=True).st_mode):
                continue
        except OSError:
            continue
        if _refuses_connections(entry.path):
            continue
        names.append(name)
    return sorted(names)


def get_device(
    name: str,
    directory: str | os.PathLike[str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> DeviceSnapshot:
    """Ask interface *name* for its state (``get=1``).

    Raises:
        InvalidDeviceName: *name* is not a valid interface name.
        NoSuchInterface: there is no socket for *name*.
        UapiPermissionError: the socket belongs to someone else.
        UapiClientError: the daemon did not answer in time, or answered nonsense.
    """
    answer = _exchange(name, directory, b"get=1\n\n", timeout)
    try:
        return parse_get_response(answer)
    except UapiError as exc:
        raise UapiClientError(f"interface {name} answered get=1 with an error: {exc}") from None


def set_device(
    name: str,
    device: DeviceSet | None = None,
    peers: Iterable[PeerSet] = (),
    directory: str | os.PathLike[str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Change interface *name* with one ``set=1`` request, as ``wg set`` does.

    Raises:
        InvalidDeviceName, NoSuchInterface, UapiPermissionError: as :func:`get_device`.
        UapiClientError: the daemon answered a non-zero errno (the message names it), or
            did not answer in time.
    """
    request = format_set_request(device if device is not None else DeviceSet(), peers)
    answer = _exchange(name, directory, request, timeout)
    match = _ERRNO_ANSWER.fullmatch(answer)
    if match is None:
        raise UapiClientError(f"interface {name} answered set=1 with something else than errno")
    code = int(match.group(1))
    if code != 0:
        described = os.strerror(-code) if code < 0 else "unknown error"
        raise UapiClientError(f"interface {name} refused the change: errno={code} ({described})")


# --- one exchange ---------------------------------------------------------------------------------


def _exchange(
    name: str, directory: str | os.PathLike[str] | None, request: bytes, timeout: float
) -> bytes:
    """Connect to *name*'s socket, send *request*, return the answer up to its blank line."""
    path = socket_path(name, directory)
    deadline = time.monotonic() + timeout
    with _connect(name, path, timeout) as sock:
        try:
            sock.sendall(request)
            return _read_answer(name, sock, deadline)
        except TimeoutError:
            raise UapiClientError(
                f"interface {name} did not answer within {timeout:g} seconds"
            ) from None
        except OSError as exc:
            raise UapiClientError(f"talking to interface {name} failed: {exc.strerror}") from None


def _connect(name: str, path: Path, timeout: float) -> socket.socket:
    """A socket connected to *path*, with errors a user can act on."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _no_such_interface(name, path) from None
    except PermissionError:
        raise _permission_error(path) from None
    if not stat.S_ISSOCK(info.st_mode):
        raise UapiClientError(f"{path} is not a socket, so interface {name} is not running")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(os.fsencode(path))
    except OSError as exc:
        sock.close()
        raise _connect_error(name, path, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_error(name: str, path: Path, exc: OSError) -> UapiClientError:
    if isinstance(exc, FileNotFoundError):
        return _no_such_interface(name, path)
    if isinstance(exc, PermissionError):
        return _permission_error(path)
    if isinstance(exc, ConnectionRefusedError):
        return NoSuchInterface(
            f"interface {name} is not running (stale socket {path}: nothing listens on it)"
        )
    if isinstance(exc, TimeoutError):
        return UapiClientError(f"interface {name} did not accept a connection")
    return UapiClientError(f"cannot connect to {path}: {exc.strerror}")


def _read_answer(name: str, sock: socket.socket, deadline: float) -> bytes:
    """Read one answer: every answer ends at its first blank line (``\\n\\n``).

    Raises:
        TimeoutError: the deadline passed.
        UapiClientError: the daemon closed the connection early, or the answer is too big.
    """
    answer = bytearray()
    searched = 0  # answer[:searched] holds no blank line (so long answers are scanned once)
    while True:
        end = answer.find(b"\n\n", searched)
        if end >= 0:
            return bytes(answer[: end + 2])
        searched = max(0, len(answer) - 1)
        if len(answer) > _MAX_ANSWER:
            raise UapiClientError(f"interface {name} sent an answer of more than 256 MiB")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(_READ_SIZE)
        if not chunk:
            raise UapiClientError(f"interface {name} closed the connection without answering")
        answer += chunk


def _refuses_connections(path: str) -> bool:
    """True if nothing listens on the socket at *path* (a daemon that died)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # alive but busy, or not ours to talk to: get_device will say which
    finally:
        probe.close()
    return False


def _valid_name(name: str) -> bool:
    try:
        encode_name(name)
    except InvalidDeviceName:
        return False
    return True


def _no_such_interface(name: str, path: Path) -> NoSuchInterface:
    return NoSuchInterface(f"no interface {name} (no socket {path})")


def _permission_error(path: str | os.PathLike[str]) -> UapiPermissionError:
    return UapiPermissionError(
        f"permission denied on {os.fspath(path)}: only its owner (normally root) may talk to "
        "the interface; try again as root (e.g. with sudo)"
    )
