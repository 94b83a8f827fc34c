"""An attached TUN/TAP device as a trio object: read and write packets without threads.

The attached file is put in non-blocking mode, and reading follows the pattern of trio's own
``FdStream`` (``trio/_unix_pipes.py``):

1. ``await trio.lowlevel.checkpoint()`` first, so every read is a cancellation point and lets
   other tasks run even when packets keep coming;
2. try ``os.read()``: a TUN read returns exactly one packet (a TAP read one frame);
3. only when that raises ``BlockingIOError`` (nothing queued), ``await
   trio.lowlevel.wait_readable(fd)``: trio's epoll loop wakes the task when a packet arrives;
   then try again.

Writing is the same with ``wait_writable``, although a TUN write practically never blocks: the
kernel takes the packet at once, as if it had arrived on the link.

What the kernel says and what this module does about it:

* write fails with ``EIO``: the link is down.  The packet is dropped and counted
  (:attr:`TunStats.dropped_link_down`), as a real link drops packets while down.
* write fails with ``EINVAL``: the kernel refused the packet (too short, too big, bad PI
  header).  Packets come from the network, so a bad one is dropped and counted
  (:attr:`TunStats.dropped_invalid`), never fatal.
* read or write fails with ``EBADFD``: the link was deleted (``ip link del``).  Nothing will
  ever arrive again: :class:`~minivpn.tuntap.errors.DeviceGone` is raised, and the runtime
  shuts down, as wireguard-go does.
* closing: ``trio.lowlevel.notify_closing(fd)`` first wakes any task waiting on the fd (it gets
  ``trio.ClosedResourceError``), then ``os.close(fd)``.

:class:`TunDevice` is a ``trio.abc.Channel[bytes]``: ``receive()``/``send()`` and ``async for
packet in device`` work, and code written against the Channel interface can be tested with a
``trio.open_memory_channel`` pair standing in for the device.  The hot path has allocation-free
variants: :meth:`TunDevice.read_nowait_into` reads into a preallocated buffer and
:meth:`TunDevice.write_nowait` writes without a checkpoint.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, final

import attrs
import trio

from minivpn.tuntap.device import GONE_ERRNOS, get_mtu, open_device
from minivpn.tuntap.errors import DeviceGone, TunError
from minivpn.tuntap.ioctl import IFF_PERSIST, DeviceConfig, Mode

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["READ_SIZE", "TunDevice", "TunStats", "open_tun_device"]

#: What a packet to write may be: anything exposing its bytes without a copy.
Packet = bytes | bytearray | memoryview

#: Bytes asked of each read: the largest packet a TUN/TAP link carries (MTU up to 65535)
#: plus the headers in front of it: PI (4), virtio-net (12), Ethernet with a VLAN tag (18).
#: Sizing for the largest possible MTU rather than the current one means a later
#: ``ip link set mtu`` can never truncate packets.
READ_SIZE = 65535 + 4 + 12 + 18


@attrs.define
class TunStats:
    """Packets the device dropped instead of raising, by reason.

    Attributes:
        dropped_link_down: writes refused with EIO because the link was down.
        dropped_invalid: writes refused with EINVAL (malformed or oversized packet).
        dropped_would_block: :meth:`TunDevice.write_nowait` calls that found the device full.
    """

    dropped_link_down: int = 0
    dropped_invalid: int = 0
    dropped_would_block: int = 0


@final
class TunDevice(trio.abc.Channel[bytes]):
    """A file attached to a TUN/TAP device, in non-blocking mode, read and written from trio.

    Make one with :func:`open_tun_device` and use it as an async context manager (``__aenter__``
    and ``__aexit__`` come from ``trio.abc.AsyncResource``); leaving the
    block closes the file, which deletes the device unless it is persistent.  One task may read
    at a time (a second concurrent reader gets ``trio.BusyResourceError``); any number of tasks
    may write.

    Args:
        fd: an attached file (from :func:`~minivpn.tuntap.device.open_device`); the device
            takes ownership and closes it.
        config: what it was attached as.
        flags: the flags TUNGETIFF reported.
    """

    def __init__(self, fd: int, config: DeviceConfig, flags: int) -> None:
        # As in trio's _FdHolder: self._fd becomes -1 once closed, because the kernel reuses fd
        # numbers at once and a stale number could name somebody else's file.
        self._fd = -1
        os.set_blocking(fd, False)
        self._fd = fd
        self._config = config
        self._flags = flags
        self._reading = False
        self._write_wait_lock = trio.Lock()
        self.stats = TunStats()

    # -- what it is ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The interface name the kernel gave (a template like ``tun%d`` resolved)."""
        return self._config.name

    @property
    def mode(self) -> Mode:
        """TUN (IP packets) or TAP (Ethernet frames)."""
        return self._config.mode

    @property
    def pi(self) -> bool:
        """Whether each packet carries the 4-byte PI header (see :mod:`minivpn.framing.pi`)."""
        return self._config.pi

    @property
    def multi_queue(self) -> bool:
        """Whether this is one queue of a multi-queue device."""
        return self._config.multi_queue

    @property
    def persistent(self) -> bool:
        """Whether the device was persistent when attached (it stays after close)."""
        return bool(self._flags & IFF_PERSIST)

    @property
    def config(self) -> DeviceConfig:
        """Name, mode and flags as attached."""
        return self._config

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose`."""
        return self._fd == -1

    def fileno(self) -> int:
        """The attached file descriptor (-1 once closed)."""
        return self._fd

    def mtu(self) -> int:
        """The link's current MTU (``SIOCGIFMTU``; it may change while attached).

        Raises:
            TunError: the link is not in this namespace (deleted or moved away).
        """
        return get_mtu(self.name)

    # -- reading -------------------------------------------------------------------------------

    async def read(self) -> bytes:
        """Wait for the next packet and return it (with its PI header if ``pi``).

        Raises:
            DeviceGone: the link was deleted.
            trio.ClosedResourceError: the device was closed (before or while waiting).
            trio.BusyResourceError: another task is reading.
        """
        self._start_reading()
        try:
            await trio.lowlevel.checkpoint()
            while True:
                try:
                    return os.read(self._checked_fd(), READ_SIZE)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self._fd)
                except OSError as exc:
                    raise self._io_error(exc, "read from") from None
        finally:
            self._reading = False

    async def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Wait for at least one packet, then take whatever else is already queued.

        Draining the queue in one go lets the caller handle a burst with one pass of its
        loop.  Never waits for more than the first packet.

        Args:
            max_packets: at most this many packets are returned (at least 1).

        Raises:
            DeviceGone: the link was deleted.
            trio.ClosedResourceError: the device was closed.
            trio.BusyResourceError: another task is reading.
        """
        batch = [await self.read()]
        while len(batch) < max_packets:
            try:
                batch.append(os.read(self._checked_fd(), READ_SIZE))
            except BlockingIOError:
                break
            except OSError as exc:
                raise self._io_error(exc, "read from") from None
        return batch

    def read_nowait_into(self, buffer: bytearray | memoryview) -> int:
        """Read one queued packet into *buffer* without waiting or allocating.

        For hot loops: ``await wait_readable()``, then call this until it returns 0.  Size the
        buffer :data:`READ_SIZE`; a smaller one truncates long packets (the rest is lost).

        Returns:
            The packet's length, or 0 when nothing is queued (TUN never delivers empty packets).

        Raises:
            DeviceGone: the link was deleted.
            trio.ClosedResourceError: the device was closed.
        """
        try:
            return os.readv(self._checked_fd(), [buffer])
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise self._io_error(exc, "read from") from None

    async def wait_readable(self) -> None:
        """Wait until a packet is queued (for use with :meth:`read_nowait_into`).

        Raises:
            trio.ClosedResourceError: the device was closed.
            trio.BusyResourceError: another task is waiting on this device.
        """
        await trio.lowlevel.wait_readable(self._checked_fd())

    # -- writing -------------------------------------------------------------------------------

    async def write(self, packet: Packet) -> None:
        """Hand one packet (or frame) to the kernel, as if it had arrived on the link.

        A packet the kernel refuses because the link is down or the packet is malformed is
        dropped and counted in :attr:`stats`, not raised: packets come from the network.

        Raises:
            DeviceGone: the link was deleted.
            trio.ClosedResourceError: the device was closed.
        """
        await trio.lowlevel.checkpoint()
        while True:
            try:
                self._try_write(packet)
                return
            except BlockingIOError:
                # Only when the kernel queue is full, which TUN practically never is; the lock
                # lets several writers wait in turn (trio allows one waiter per fd).
                async with self._write_wait_lock:
                    await trio.lowlevel.wait_writable(self._checked_fd())

    def write_nowait(self, packet: Packet) -> bool:
        """Write one packet without a checkpoint; never waits.

        Returns:
            True if the kernel took the packet; False if it was dropped (device full, link
            down, or malformed; :attr:`stats` says which).

        Raises:
            DeviceGone: the link was deleted.
            trio.ClosedResourceError: the device was closed.
        """
        try:
            return self._try_write(packet)
        except BlockingIOError:
            self.stats.dropped_would_block += 1
            return False

    def writev_nowait(self, buffers: Sequence[Packet]) -> bool:
        """Write one packet gathered from several buffers (``writev``); never waits.

        The VPN writes a merged TCP super-packet this way: a virtio header, a rewritten IP/TCP
        header, then the payloads of the segments, straight from where they were decrypted.

        Returns:
            True if the kernel took the packet; False if it was dropped and counted.

        Raises:
            DeviceGone: the link was deleted.
            trio.ClosedResourceError: the device was closed.
        """
        try:
            os.writev(self._checked_fd(), buffers)
        except BlockingIOError:
            self.stats.dropped_would_block += 1
            return False
        except OSError as exc:
            return self._write_failed(exc)
        return True

    def _try_write(self, packet: Packet) -> bool:
        """One write: True if taken, False if dropped and counted; BlockingIOError if full."""
        try:
            os.write(self._checked_fd(), packet)
        except BlockingIOError:
            raise
        except OSError as exc:
            return self._write_failed(exc)
        return True

    def _write_failed(self, exc: OSError) -> bool:
        """Count a refused write (False), or raise if the device is gone or broken."""
        if exc.errno == errno.EIO:
            self.stats.dropped_link_down += 1
            return False
        if exc.errno == errno.EINVAL:
            self.stats.dropped_invalid += 1
            return False
        raise self._io_error(exc, "write to") from None

    # -- trio.abc.Channel[bytes] ---------------------------------------------------------------

    async def receive(self) -> bytes:
        """Same as :meth:`read` (the Channel interface)."""
        return await self.read()

    async def send(self, value: bytes) -> None:
        """Same as :meth:`write` (the Channel interface)."""
        await self.write(value)

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Detach: wake waiting tasks (ClosedResourceError), then close the file.

        A non-persistent device is deleted by the kernel when its last file closes.
        """
        if self._fd == -1:
            return
        fd, self._fd = self._fd, -1
        trio.lowlevel.notify_closing(fd)
        os.close(fd)

    async def aclose(self) -> None:
        """Close (see :meth:`close`); a checkpoint, as trio requires of ``aclose``."""
        self.close()
        await trio.lowlevel.checkpoint()

    def __del__(self) -> None:
        # A device dropped without aclose() must not keep the interface alive.  No
        # notify_closing here: a task waiting on the fd would hold a reference to self.
        if self._fd != -1:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<TunDevice {self.name} {self.mode.value} {state}>"

    # -- helpers -------------------------------------------------------------------------------

    def _start_reading(self) -> None:
        if self._reading:
            raise trio.BusyResourceError(f"another task is already reading from {self.name}")
        self._reading = True

    def _checked_fd(self) -> int:
        if self._fd == -1:
            raise trio.ClosedResourceError(f"the device {self.name} was closed")
        return self._fd

    def _io_error(self, exc: OSError, action: str) -> Exception:
        if exc.errno in GONE_ERRNOS:
            return DeviceGone(f"device {self.name} was deleted while attached")
        return TunError(f"cannot {action} {self.name}: {exc.strerror}")


def open_tun_device(
    name: str | None = None,
    mode: Mode = Mode.TUN,
    *,
    pi: bool = False,
    multi_queue: bool = False,
    vnet_hdr: bool = False,
) -> TunDevice:
    """Create or attach to a TUN/TAP device and return it ready for trio.

    Use it as ``async with open_tun_device("tun0") as device:``.  Without a name the kernel
    picks one (``device.name`` tells which).  A device created here is temporary: it vanishes
    when the block is left; attaching to a persistent one (``minivpn tun add``) leaves it in
    place.

    Args:
        name: interface name, a template like ``tun%d``, or None.
        mode: TUN (IP packets) or TAP (Ethernet frames).
        pi: prefix each packet with the 4-byte packet-information header.
        multi_queue: attach as one queue of a multi-queue device.
        vnet_hdr: prefix each packet with a virtio-net header.

    Raises:
        TunError: see :func:`~minivpn.tuntap.device.open_device` for the subclasses.
    """
    fd, actual_name, flags = open_device(
        name, mode, pi=pi, multi_queue=multi_queue, vnet_hdr=vnet_hdr
    )
    config = DeviceConfig(
        name=actual_name, mode=mode, pi=pi, multi_queue=multi_queue, vnet_hdr=vnet_hdr
    )
    return TunDevice(fd, config, flags)
