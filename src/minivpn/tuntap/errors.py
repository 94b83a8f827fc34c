"""Errors of the device layer, one class per thing a user can do about it.

The kernel answers a failed ``/dev/net/tun`` request with a bare errno (``EINVAL`` covers "no
such mode", "wrong mode for this device" and "that name is not a TUN device" alike).  The code
in :mod:`minivpn.tuntap.device` asks netlink to find out which case it was, and raises one of
these with a message that says what to change.  All of them are
:class:`~minivpn.errors.MinivpnError`, so the command line prints the message and exits non-zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minivpn.errors import MinivpnError

if TYPE_CHECKING:
    from minivpn.tuntap.ioctl import Mode


class TunError(MinivpnError):
    """A TUN/TAP device could not be created, attached, configured, read or written."""


class InvalidDeviceName(TunError):
    """The interface name breaks the kernel's rules (length, ``/``, ``:``, whitespace)."""


class TunUnavailable(TunError):
    """``/dev/net/tun`` is missing or cannot be opened."""


class TunPermissionError(TunError):
    """The kernel refused: creating needs CAP_NET_ADMIN, attaching needs it or ownership."""


class DeviceBusy(TunError):
    """The device is attached elsewhere (single-queue) or already exists (when creating)."""


class FlagsMismatch(TunError):
    """The requested flags (TUN/TAP, multi-queue) differ from those of the existing device."""


class ModeMismatch(FlagsMismatch):
    """The device is TAP and TUN was asked for, or the reverse.

    Attributes:
        device_mode: what the device is (a :class:`~minivpn.tuntap.ioctl.Mode`), so that a
            command can name its option for it (``--tap``/``--tun``).
    """

    def __init__(self, message: str, device_mode: Mode) -> None:
        super().__init__(message)
        self.device_mode = device_mode


class NoSuchDevice(TunError):
    """No network interface has that name (in this network namespace)."""


class NotATunDevice(TunError):
    """An interface with that name exists, but it is not a TUN/TAP device (e.g. ``lo``)."""


class DeviceGone(TunError):
    """The link was deleted while the device was attached; reads and writes fail with EBADFD."""
