"""minivpnd lengthens the TUN device's queue from the kernel's 500 to 1000, and only that.

A TUN device's transmit queue is the ring of packets waiting for the daemon to read them; at 500
it overflowed under one TCP stream and dropped pings (docs/performance.md, "Latency under
load").  A length someone chose is left alone.
"""

from __future__ import annotations

import re
import shutil
from typing import TYPE_CHECKING

import pytest
from tests.helpers.wg import Lab, open_lab

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from netns import Namespace

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg"),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path, "tq") as lab:
        yield lab


def qlen(ns: Namespace, name: str) -> int:
    shown = ns.ip("link", "show", name).stdout
    match = re.search(r"qlen (\d+)", shown)
    assert match, shown
    return int(match.group(1))


def test_a_new_device_gets_a_queue_of_1000(lab: Lab) -> None:
    ns = lab.topology.namespace()
    daemon = lab.minivpnd(ns, "Q")
    daemon.process.wait_for("data path")  # run_interface has set the device up by then
    assert qlen(ns, daemon.name) == 1000


def test_a_length_someone_chose_is_kept(lab: Lab) -> None:
    ns = lab.topology.namespace()
    name = lab.name("K")
    ns.ip("tuntap", "add", "dev", name, "mode", "tun")
    ns.ip("link", "set", name, "txqueuelen", "700")
    daemon = lab.minivpnd(ns, "K", name=name)  # attaches to the persistent device
    daemon.process.wait_for("data path")
    assert qlen(ns, name) == 700
