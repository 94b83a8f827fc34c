"""TUN/TAP devices: the edge where packets enter and leave the kernel's network stack.

* :mod:`.ioctl`: ioctl numbers, IFF_* flags, ``struct ifreq``, interface-name rules (pure);
* :mod:`.device`: create, attach, make persistent, set owner/group, delete (sync ioctls);
* :mod:`.listing`: find TUN/TAP devices and describe them (netlink, RTM_GETLINK);
* :mod:`.aio`: an attached device as a trio ``Channel[bytes]`` (non-blocking, ``wait_readable``);
* :mod:`.errors`: one exception class per thing a user can do about a failure.

docs/tuntap.md walks through how it works, step by step.
"""

from minivpn.tuntap.aio import READ_SIZE as READ_SIZE
from minivpn.tuntap.aio import TunDevice as TunDevice
from minivpn.tuntap.aio import TunStats as TunStats
from minivpn.tuntap.aio import open_tun_device as open_tun_device
from minivpn.tuntap.device import create_persistent as create_persistent
from minivpn.tuntap.device import delete_persistent as delete_persistent
from minivpn.tuntap.device import get_features as get_features
from minivpn.tuntap.device import open_device as open_device
from minivpn.tuntap.errors import DeviceBusy as DeviceBusy
from minivpn.tuntap.errors import DeviceGone as DeviceGone
from minivpn.tuntap.errors import FlagsMismatch as FlagsMismatch
from minivpn.tuntap.errors import InvalidDeviceName as InvalidDeviceName
from minivpn.tuntap.errors import ModeMismatch as ModeMismatch
from minivpn.tuntap.errors import NoSuchDevice as NoSuchDevice
from minivpn.tuntap.errors import NotATunDevice as NotATunDevice
from minivpn.tuntap.errors import TunError as TunError
from minivpn.tuntap.errors import TunPermissionError as TunPermissionError
from minivpn.tuntap.errors import TunUnavailable as TunUnavailable
from minivpn.tuntap.ioctl import DeviceConfig as DeviceConfig
from minivpn.tuntap.ioctl import Mode as Mode
from minivpn.tuntap.listing import DeviceInfo as DeviceInfo
from minivpn.tuntap.listing import get_device as get_device
from minivpn.tuntap.listing import list_devices as list_devices
