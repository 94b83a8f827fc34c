"""minivpn's interface-name rules against the kernel's: the kernel is the oracle.

For generated names of at most 15 bytes (longer ones cannot even be passed in ``ifr_name``),
TUNSETIFF is called directly, bypassing minivpn; minivpn's ``encode_name`` must accept exactly
the names the kernel accepts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from minivpn.tuntap.errors import InvalidDeviceName
from minivpn.tuntap.ioctl import encode_name

_TUNSETIFF = 0x400454CA
_IFF_TUN_NO_PI = 0x1001

_interesting = st.sampled_from(list("ab0.-_/: \t\n%dà\u00a0é\x7f~"))
names = st.text(
    st.one_of(_interesting, st.characters(codec="utf-8", exclude_characters="\x00")),
    min_size=1,
    max_size=15,
).filter(lambda n: len(n.encode()) <= 15)


def kernel_accepts(name: str) -> bool:
    """Create a TUN device called *name* with raw ioctls; it vanishes again on close."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN_NO_PI))
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    finally:
        os.close(fd)
    return True


@settings(max_examples=300, deadline=None)
@given(names)
@example("tà")  # UTF-8 C3 A0: the kernel's isspace() counts 0xA0 as space
@example("t%d")
@example("%d%d")
@example("...")
@example("..")
def test_name_rules_match_the_kernel(name: str) -> None:
    assume(name not in os.listdir("/sys/class/net"))  # an existing name would be an attach
    try:
        encode_name(name, allow_template=True)
        ours = True
    except InvalidDeviceName:
        ours = False
    assert ours == kernel_accepts(name), name
