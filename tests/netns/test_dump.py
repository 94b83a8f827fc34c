"""``minivpn dump`` as a user runs it: a real process on a real device, pinged by real ``ping``.

Each test makes its own network namespace (:class:`netns.Topology`), starts
``python -m minivpn dump ...`` in it and drives traffic with ``ping``.  What the dump claims is
checked against independent witnesses:

* ``ping`` itself: with ``--answer-pings`` it must get its replies (IPv4 and IPv6, and on TAP
  only after minivpn answered ARP and neighbour solicitation);
* ``tcpdump -n -r`` (``-e`` on TAP) reading the ``--write`` capture: its lines must be the
  dump's printed lines, one for one, timestamps included;
* ``ip link``: which devices exist before and after.
"""

from __future__ import annotations

import json
import re
import signal
import time
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers.procs import (
    MINIVPN,
    Process,
    assert_clean_failure,
    ping,
    run_all,
    start_minivpn,
    wait_until,
)
from tests.helpers.tools import tcpdump

from minivpn.framing.decode import Link
from minivpn.framing.pcap import pcap_record
from minivpn.runtime.dump import format_line
from netns import Namespace, Topology

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: The device's addresses; the pretend remote host is .2 / ::2.
ADDRESSES = ("--address", "10.9.0.1/24", "--address", "fd00:9::1/64")
REMOTE4, REMOTE6 = "10.9.0.2", "fd00:9::2"
#: Seconds to wait for the dump to start or stop.
START, STOP = 20.0, 15.0


@pytest.fixture
def ns() -> Iterator[Namespace]:
    """A fresh network namespace (with ``lo`` up), deleted with everything in it afterwards."""
    with Topology("dmp") as topo:
        yield topo.namespace()


def start_dump(ns: Namespace, args: list[str], tmp_path: Path, name: str = "dump") -> Process:
    """Start ``minivpn dump ARGS`` and wait until it says it is reading packets."""
    dump = start_minivpn(ns, ["dump", *args], tmp_path, name)
    dump.wait_for(r"^minivpn: listening on \S+$", timeout=START)
    return dump


def link_exists(ns: Namespace, name: str) -> bool:
    return ns.ip("link", "show", "dev", name, check=False).returncode == 0


def link_names(ns: Namespace) -> list[str]:
    return [link["ifname"] for link in json.loads(ns.ip("-json", "link", "show").stdout)]


def tun_info(ns: Namespace, name: str) -> dict[str, object]:
    """The kernel's view of a TUN/TAP device (``ip -details -json link show``)."""
    (link,) = json.loads(ns.ip("-details", "-json", "link", "show", "dev", name).stdout)
    info: dict[str, object] = link["linkinfo"]["info_data"]
    return info


def captured(stderr: str) -> tuple[int, int | None]:
    """The final ``N packets captured[, M replies sent]`` line as numbers."""
    match = re.search(
        r"^minivpn: (\d+) packets captured(?:, (\d+) replies sent)?(?:, \d+ filtered out)?$",
        stderr,
        re.MULTILINE,
    )
    assert match, stderr
    return int(match[1]), int(match[2]) if match[2] is not None else None


def tcpdump_lines(ns: Namespace, pcap: Path, *, ethernet: bool) -> list[str]:
    """What ``tcpdump -n -r`` (with ``-e`` for Ethernet) prints for the capture file."""
    result = ns.run(tcpdump("-n", *(["-e"] if ethernet else []), "-r", str(pcap)), timeout=30)
    return result.stdout.splitlines()


# -- ping through --answer-pings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "ethernet"),
    [([], False), (["--tap"], True), (["--pi"], False), (["--tap", "--pi"], True)],
    ids=["tun", "tap", "tun-pi", "tap-pi"],
)
def test_pings_are_answered_printed_and_captured(
    ns: Namespace, tmp_path: Path, flags: list[str], ethernet: bool
) -> None:
    pcap = tmp_path / "dump.pcap"
    dump = start_dump(
        ns, ["mvdump0", *flags, *ADDRESSES, "--answer-pings", "--write", str(pcap)], tmp_path
    )
    info = tun_info(ns, "mvdump0")
    assert info["type"] == ("tap" if ethernet else "tun")
    assert info["pi"] is ("--pi" in flags)

    for remote in (REMOTE4, REMOTE6):
        result = ping(ns, remote, count=3)
        assert result.returncode == 0, f"{result.stdout}\n{dump.describe()}"
        assert " 3 received," in result.stdout, result.stdout

    assert dump.stop(signal.SIGINT, timeout=STOP) == 0, dump.describe()
    assert "Traceback" not in dump.stderr()
    lines = dump.stdout().splitlines()
    packets, replies = captured(dump.stderr())
    assert packets == len(lines)

    # The echo requests are printed, as tcpdump words them, and each reply right after.
    for seq in (1, 2, 3):
        for request, reply in (
            (
                rf"10\.9\.0\.1 > 10\.9\.0\.2: ICMP echo request, id \d+, seq {seq},",
                rf"10\.9\.0\.2 > 10\.9\.0\.1: ICMP echo reply, id \d+, seq {seq},",
            ),
            (
                rf"fd00:9::1 > fd00:9::2: ICMP6, echo request, id \d+, seq {seq},",
                rf"fd00:9::2 > fd00:9::1: ICMP6, echo reply, id \d+, seq {seq},",
            ),
        ):
            (where,) = [i for i, line in enumerate(lines) if re.search(request, line)]
            assert re.search(reply, lines[where + 1]), lines
    if ethernet:
        # The kernel had to find the pretend host's MAC first, and minivpn told it.
        assert any("Request who-has 10.9.0.2 tell 10.9.0.1" in line for line in lines), lines
        assert any("Reply 10.9.0.2 is-at " in line for line in lines), lines
        assert any("neighbor solicitation, who has fd00:9::2" in line for line in lines), lines
        assert any("neighbor advertisement, tgt is fd00:9::2" in line for line in lines), lines
        assert replies is not None
        assert replies >= 8
    else:
        assert replies is not None
        assert replies >= 6

    # The capture holds the same packets: tcpdump prints exactly the dump's lines.
    assert tcpdump_lines(ns, pcap, ethernet=ethernet) == lines


@pytest.mark.parametrize(
    ("remote", "expression", "shown"),
    [
        (REMOTE4, "icmp", ["ICMP echo request", "ICMP echo reply"]),
        (REMOTE6, "icmp6[icmp6type] == icmp6-echo", ["ICMP6, echo request"]),
    ],
    ids=["icmp", "icmp6-echo"],
)
def test_count_1_with_a_filter_catches_the_ping(
    ns: Namespace, tmp_path: Path, remote: str, expression: str, shown: list[str]
) -> None:
    """``-c 1`` alone usually catches an IPv6 router solicitation first; a filter picks the ping."""
    pcap = tmp_path / "ping.pcap"
    args = [*ADDRESSES, "--answer-pings", "-c", "1", "--filter", expression, "-w", str(pcap)]
    dump = start_dump(ns, ["mvdump0", *args], tmp_path)
    result = ping(ns, remote, count=1)
    assert result.returncode == 0, f"{result.stdout}\n{dump.describe()}"  # answered
    assert dump.wait(timeout=STOP) == 0, dump.describe()
    lines = dump.stdout().splitlines()
    assert len(lines) == len(shown), lines
    for line, words in zip(lines, shown, strict=True):
        assert words in line, lines
    summary = re.search(
        r"^minivpn: (\d+) packets captured, 1 replies sent, (\d+) filtered out$",
        dump.stderr(),
        re.MULTILINE,
    )
    assert summary, dump.stderr()
    assert int(summary[1]) == len(shown)
    assert tcpdump_lines(ns, pcap, ethernet=False) == lines


# -- how it ends ---------------------------------------------------------------------------------


def test_count_exits_by_itself(ns: Namespace, tmp_path: Path) -> None:
    dump = start_dump(ns, ["mvdump0", "--count", "3", *ADDRESSES], tmp_path)
    # Unanswered pings: each request is one packet on the device.
    pinger = ns.popen(["ping", "-n", "-c", "10", "-i", "0.2", "-W", "1", REMOTE4])
    assert dump.wait(timeout=STOP) == 0, dump.describe()
    pinger.kill()
    assert captured(dump.stderr()) == (3, None)
    assert len(dump.stdout().splitlines()) == 3
    assert not link_exists(ns, "mvdump0")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_ends_it_cleanly_with_the_count(
    ns: Namespace, tmp_path: Path, signum: signal.Signals
) -> None:
    dump = start_dump(ns, ["mvdump0", *ADDRESSES], tmp_path)
    ping(ns, REMOTE4, count=2)  # two unanswered requests
    assert dump.stop(signum, timeout=STOP) == 0, dump.describe()
    assert "Traceback" not in dump.stderr()
    lines = dump.stdout().splitlines()
    assert sum("ICMP echo request" in line for line in lines) == 2, lines
    assert captured(dump.stderr()) == (len(lines), None)


@pytest.mark.parametrize("tap", [False, True], ids=["tun", "tap"])
def test_without_a_name_the_kernel_picks_one_and_it_goes_away(
    ns: Namespace, tmp_path: Path, tap: bool
) -> None:
    dump = start_minivpn(ns, ["dump", *(["--tap"] if tap else [])], tmp_path, "dump")
    name = dump.wait_for(r"^minivpn: listening on (\S+)$", timeout=START)[1]
    assert re.fullmatch(r"tap\d+" if tap else r"tun\d+", name), name
    assert link_exists(ns, name)
    assert tun_info(ns, name)["type"] == ("tap" if tap else "tun")
    assert dump.stop(signal.SIGTERM, timeout=STOP) == 0, dump.describe()
    assert not link_exists(ns, name)


@pytest.mark.parametrize("maker", ["ip", "minivpn"])
def test_a_persistent_device_is_left_in_place(ns: Namespace, tmp_path: Path, maker: str) -> None:
    if maker == "ip":
        ns.run(["ip", "tuntap", "add", "dev", "keep0", "mode", "tun"])
    else:
        ns.run([*MINIVPN, "tun", "add", "keep0"])
    assert tun_info(ns, "keep0")["persist"] is True
    dump = start_dump(ns, ["keep0", *ADDRESSES, "--answer-pings"], tmp_path)
    result = ping(ns, REMOTE4, count=2)
    assert result.returncode == 0, f"{result.stdout}\n{dump.describe()}"
    assert dump.stop(signal.SIGTERM, timeout=STOP) == 0, dump.describe()
    assert link_exists(ns, "keep0")
    assert tun_info(ns, "keep0")["persist"] is True
    # ... and it can be attached again.
    again = start_dump(ns, ["keep0"], tmp_path, "again")
    assert again.stop(signal.SIGTERM, timeout=STOP) == 0, again.describe()
    assert link_exists(ns, "keep0")


def test_a_reader_that_goes_away_ends_it_quietly(ns: Namespace, tmp_path: Path) -> None:
    """``minivpn dump | head -1``: the pipe closes, and the dump stops without a traceback."""
    stderr_path = tmp_path / "dump.err"
    with stderr_path.open("w") as stderr:
        proc = ns.popen([*MINIVPN, "dump", "mvdump0", *ADDRESSES], stderr=stderr)
    assert proc.stdout is not None
    wait_until(
        lambda: "listening on" in stderr_path.read_text(), timeout=START, what="the dump to start"
    )
    ping(ns, REMOTE4, count=1)
    first = proc.stdout.readline()  # there is a line: the request was printed
    assert "ICMP echo request" in first or "IP6" in first, first
    proc.stdout.close()  # as head does after its line
    for _ in range(3):  # each packet is one more print into the closed pipe
        ping(ns, REMOTE4, count=1, wait=0.3)
        if proc.poll() is not None:
            break
    assert proc.wait(timeout=STOP) == 0
    stderr_text = stderr_path.read_text()
    assert "Traceback" not in stderr_text, stderr_text
    assert re.search(r"^minivpn: \d+ packets captured$", stderr_text, re.MULTILINE), stderr_text
    assert not link_exists(ns, "mvdump0")


def test_deleting_the_device_ends_it_with_a_clear_message(ns: Namespace, tmp_path: Path) -> None:
    dump = start_dump(ns, ["mvdump0", *ADDRESSES], tmp_path)
    ns.ip("link", "del", "dev", "mvdump0")
    assert dump.wait(timeout=STOP) == 1, dump.describe()
    assert "Traceback" not in dump.stderr()
    assert dump.stderr().strip().splitlines()[-1] == (
        "minivpn: device mvdump0 was deleted while attached"
    ), dump.describe()


# -- bad input ------------------------------------------------------------------------------------


def dump_fails(ns: Namespace, *args: str) -> str:
    """Run ``minivpn dump ARGS``, which must fail cleanly with one line; return it."""
    result = ns.run([*MINIVPN, "dump", *args], check=False, timeout=30)
    return assert_clean_failure(result)


#: Bad command lines and the message each must give.
BAD_ARGUMENTS = [
    (["--address", "10.9.0.1"], r"invalid address '10\.9\.0\.1'"),
    (["--address", "10.9.0.300/24"], r"invalid address"),
    (["--address", "fd00:9::1/129"], r"invalid address"),
    (["--count", "0"], r"positive number"),
    (["--count", "-3"], r"positive number|expected one argument"),
    (["--count", "many"], r"positive number"),
    (["bad/name"], r"bad/name"),
    (["--filter", "host example.org"], r"invalid filter 'host example.org': .*not looked up"),
    (["--filter", "icmp or"], r"invalid filter 'icmp or'"),
]


def test_bad_arguments_are_one_line(ns: Namespace) -> None:
    commands = [[*MINIVPN, "dump", *args] for args, _ in BAD_ARGUMENTS]
    for (args, message), result in zip(BAD_ARGUMENTS, run_all(ns, commands), strict=True):
        line = assert_clean_failure(result)
        assert re.search(message, line), (args, line)
    assert link_names(ns) == ["lo"]  # nothing was left behind


def test_tap_dump_on_an_existing_tun_device_is_refused(ns: Namespace) -> None:
    ns.run(["ip", "tuntap", "add", "dev", "keep0", "mode", "tun"])
    line = dump_fails(ns, "keep0", "--tap")
    assert "keep0" in line
    assert line.endswith("it is a TUN device, but TAP was requested (use --tun instead of --tap)")
    assert tun_info(ns, "keep0")["type"] == "tun"


def test_dump_on_a_tap_device_suggests_tap(ns: Namespace, tmp_path: Path) -> None:
    ns.run(["ip", "tuntap", "add", "dev", "keep0", "mode", "tap"])
    line = dump_fails(ns, "keep0")
    assert line.endswith("it is a TAP device, but TUN was requested (use --tap)"), line
    # ... and with it, it works; --tun is the default, and can be said.
    start_dump(ns, ["keep0", "--tap"], tmp_path).stop(signal.SIGTERM, timeout=STOP)
    assert dump_fails(ns, "keep0", "--tun").endswith("(use --tap)")
    assert "not allowed with" in dump_fails(ns, "keep0", "--tun", "--tap")


def test_a_link_that_is_not_tun_is_refused(ns: Namespace) -> None:
    line = dump_fails(ns, "lo")
    assert "not a TUN/TAP device" in line, line


def test_an_unwritable_capture_file_is_refused(ns: Namespace, tmp_path: Path) -> None:
    line = dump_fails(ns, "mvdump0", "--write", str(tmp_path / "missing" / "x.pcap"))
    assert "x.pcap" in line, line
    assert not link_exists(ns, "mvdump0")


# -- the printed timestamp is the captured one -------------------------------------------------


@given(st.floats(min_value=0, max_value=2**32 - 2, allow_nan=False, allow_infinity=False))
def test_printed_time_is_the_pcap_time(timestamp: float) -> None:
    """The clock on a printed line is what tcpdump shows for the pcap record of that packet."""
    header = pcap_record(b"\x45", timestamp)[:8]
    seconds = int.from_bytes(header[:4], "little")
    micros = int.from_bytes(header[4:8], "little")
    as_tcpdump_prints = time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{micros:06d}"
    assert format_line(timestamp, b"\x45", Link.IP).split(" ", 1)[0] == as_tcpdump_prints
