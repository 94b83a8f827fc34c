"""``minivpn up``/``down`` and ``minivpnd`` without privileges: the decisions made before any
device exists, and the process mechanics (daemonising, signals) in throwaway child processes.

What needs devices and namespaces (the interface itself, routes, ``wg``, ``wg-quick``) is in
``tests/netns/test_up_down.py`` and ``tests/netns/test_daemon.py``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivpn.daemon import log_level
from minivpn.errors import MinivpnError
from minivpn.runtime.interface import InterfaceError, take_down, user_error_messages
from minivpn.runtime.process import Readiness
from minivpn.runtime.uapi_client import NoSuchInterface
from minivpn.runtime.wgquick import (
    CONFIG_DIR,
    RoutePlan,
    check_interface_name,
    ignored_keys,
    interface_name_of,
    locate_config,
    plan_routes,
    resolve_endpoints,
    resolve_table,
)
from minivpn.wireguard.config import parse_config
from minivpn.wireguard.keys import PrivateKey

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER_A = PrivateKey.generate().public_key().to_base64()
PEER_B = PrivateKey.generate().public_key().to_base64()


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def minivpn(*args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "minivpn", *args)


def minivpnd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "minivpn.daemon", *args, env=env)


# --- names and files ------------------------------------------------------------------------------

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_=+.-"
valid_names = st.text(NAME_CHARS, min_size=1, max_size=15).filter(
    lambda name: name not in (".", "..") and not name.endswith(".conf")
)


@given(valid_names)
def test_a_bare_name_means_the_system_config(name: str) -> None:
    assert locate_config(name) == (CONFIG_DIR / f"{name}.conf", name)
    assert interface_name_of(name) == name


@given(valid_names)
def test_a_path_names_the_interface_after_its_stem(name: str) -> None:
    path = f"/srv/vpn/{name}.conf"
    assert locate_config(path) == (Path(path), name)
    assert interface_name_of(path) == name


def test_a_file_in_the_current_directory_is_a_path() -> None:
    # wg-quick would look for /etc/wireguard/wg0.conf.conf; this is what the user meant.
    assert locate_config("wg0.conf") == (Path("wg0.conf"), "wg0")
    assert locate_config("./wg0.conf") == (Path("wg0.conf"), "wg0")
    assert locate_config("office", Path("/opt/wg")) == (Path("/opt/wg/office.conf"), "office")


@pytest.mark.parametrize(
    "argument",
    [
        "sixteen-chars-xx",  # 16 characters: longer than IFNAMSIZ - 1
        "/etc/wireguard/sixteen-chars-xx.conf",
        "wg 0",
        "/tmp/wg 0.conf",
        "wg:0",
        "wgé",
        "",
        "..",
        "/tmp/..conf",  # stem "."
    ],
)
def test_invalid_interface_names(argument: str) -> None:
    with pytest.raises(InterfaceError, match="invalid interface name"):
        locate_config(argument)
    with pytest.raises(InterfaceError, match="invalid interface name"):
        interface_name_of(argument)


@pytest.mark.parametrize("argument", ["/etc/wireguard/wg0", "./wg0.txt", "dir/wg0"])
def test_a_path_must_end_in_conf(argument: str) -> None:
    with pytest.raises(InterfaceError, match=r"followed by \.conf"):
        locate_config(argument)


@given(st.text(min_size=16, max_size=30, alphabet=NAME_CHARS))
def test_long_names_are_refused(name: str) -> None:
    with pytest.raises(InterfaceError):
        check_interface_name(name)


# --- routes ---------------------------------------------------------------------------------------


def config(interface: str = "", peers: tuple[str, ...] = ("10.1.0.0/16",)) -> str:
    text = f"[Interface]\n{interface}\n"
    for key, allowed in zip((PEER_A, PEER_B), peers, strict=False):
        text += f"\n[Peer]\nPublicKey = {key}\nAllowedIPs = {allowed}\n"
    return text


def plan(text: str) -> RoutePlan:
    return plan_routes(parse_config(text, "wg0.conf"), "wg0.conf", "wg0")


def networks(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(text) for text in texts)


def test_routes_most_specific_first_without_duplicates() -> None:
    got = plan(config(peers=("10.1.0.0/16, fd00:1::/48, 10.1.2.3/32", "10.9.0.0/24, 10.1.0.0/16")))
    assert got == RoutePlan(
        None, networks("10.1.2.3/32", "10.9.0.0/24", "10.1.0.0/16", "fd00:1::/48")
    )


def test_prefixes_inside_the_interface_addresses_are_left_to_the_kernel() -> None:
    got = plan(
        config(
            "Address = 10.1.0.1/24, fd00:1::1/64",
            ("10.1.0.2/32, 10.1.0.0/24, 10.1.0.0/23, fd00:1::5/128, fd00:2::/64",),
        )
    )
    assert got == RoutePlan(None, networks("10.1.0.0/23", "fd00:2::/64"))


def test_table_off_means_no_routes() -> None:
    assert plan(config("Table = off", ("0.0.0.0/0, 10.1.0.0/16",))) == RoutePlan(None, ())


@pytest.mark.parametrize("table", ["auto", None])
@pytest.mark.parametrize("default", ["0.0.0.0/0", "::/0"])
def test_a_default_route_needs_table_off_or_a_number(table: str | None, default: str) -> None:
    interface = f"Table = {table}" if table else ""
    with pytest.raises(InterfaceError) as caught:
        plan(config(interface, (f"10.1.0.0/16, {default}",)))
    message = str(caught.value)
    assert message.startswith(f"wg0.conf: AllowedIPs {default} would route all traffic into wg0")
    assert "Table = off" in message


def test_a_table_number_takes_every_prefix() -> None:
    got = plan(config("Table = 1234", ("0.0.0.0/0, 10.1.0.0/16",)))
    assert got == RoutePlan(1234, networks("10.1.0.0/16", "0.0.0.0/0"))


def test_table_names() -> None:
    assert resolve_table("main") == 254
    assert resolve_table("local") == 255
    assert resolve_table("42") == 42
    with pytest.raises(InterfaceError, match="unknown routing table 'no-such-table'"):
        resolve_table("no-such-table")
    assert plan(config("Table = main")).table == 254


def test_ignored_keys_are_listed_in_file_order_of_wg_quick() -> None:
    text = config(
        "DNS = 192.0.2.53, example.test\nPostDown = echo bye\nPreUp = echo hi\nSaveConfig = true"
    )
    assert ignored_keys(parse_config(text, "wg0.conf")) == [
        "DNS",
        "PreUp",
        "PostDown",
        "SaveConfig",
    ]
    assert ignored_keys(parse_config(config("DNS = example.test"), "wg0.conf")) == ["DNS"]
    assert ignored_keys(parse_config(config("MTU = 1400"), "wg0.conf")) == []


def test_only_host_names_are_resolved() -> None:
    text = (
        f"[Interface]\n\n[Peer]\nPublicKey = {PEER_A}\nEndpoint = localhost:51820\n"
        f"\n[Peer]\nPublicKey = {PEER_B}\nEndpoint = 192.0.2.1:51820\n"
    )
    parsed = parse_config(text, "wg0.conf")
    resolved = resolve_endpoints(parsed, "wg0.conf")
    assert list(resolved) == [parsed.peers[0].public_key]
    host, port = resolved[parsed.peers[0].public_key]
    assert ipaddress.ip_address(host).is_loopback
    assert port == 51820


# --- errors ---------------------------------------------------------------------------------------


def test_user_error_messages_flatten_groups() -> None:
    group = BaseExceptionGroup(
        "outer",
        [MinivpnError("a"), ExceptionGroup("inner", [MinivpnError("b"), MinivpnError("a")])],
    )
    assert user_error_messages(group) == ["a", "b"]
    assert user_error_messages(MinivpnError("c")) == ["c"]
    assert user_error_messages(ExceptionGroup("bug", [MinivpnError("a"), KeyError("x")])) is None
    assert user_error_messages(ValueError("x")) is None


# --- the command line, before anything is created ------------------------------------------------


def test_up_reports_a_config_error_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "wgbad0.conf"
    path.write_text(
        f"[Interface]\nListenPort = 51820\n\n[Peer]\nPublicKey = {PEER_A}\nEndpont = x\n"
    )
    path.chmod(0o600)
    result = minivpn("up", str(path))
    assert result.returncode == 1
    assert re.fullmatch(rf"minivpn: {re.escape(str(path))}:6: .*Endpont.*\n", result.stderr)
    assert not Path("/sys/class/net/wgbad0").exists()


def test_up_refuses_a_default_route_before_creating_anything(tmp_path: Path) -> None:
    path = tmp_path / "wgdef0.conf"
    path.write_text(config(peers=("0.0.0.0/0",)))
    result = minivpn("up", str(path))
    assert result.returncode == 1
    assert "Table = off" in result.stderr
    assert not Path("/sys/class/net/wgdef0").exists()


def test_up_refuses_a_bad_file_name(tmp_path: Path) -> None:
    result = minivpn("up", str(tmp_path / "this-is-too-long-a-name.conf"))
    assert result.returncode == 1
    assert result.stderr.startswith("minivpn: invalid interface name 'this-is-too-long-a-name'")


def test_down_refuses_a_bad_name() -> None:
    result = minivpn("down", "wg 0")
    assert (result.returncode, result.stderr.splitlines()[0][:38]) == (
        1,
        "minivpn: invalid interface name 'wg 0'",
    )


def test_up_and_down_are_commands() -> None:
    assert "--foreground" in minivpn("up", "--help").stdout
    assert minivpn("down", "--help").returncode == 0
    usage = minivpn("up")
    assert usage.returncode == 2


# --- down, for names that have no device ------------------------------------------------------

#: A name no link has (the host's links are only read here).
ABSENT = "mvabsent9"


def test_down_without_socket_or_device(tmp_path: Path) -> None:
    assert not Path("/sys/class/net", ABSENT).exists()
    with pytest.raises(NoSuchInterface, match=f"no interface {ABSENT}"):
        take_down(ABSENT, socket_dir=tmp_path)


def test_down_removes_a_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / f"{ABSENT}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    assert take_down(ABSENT, socket_dir=tmp_path) == (
        f"removed the stale socket {path}; {ABSENT} was not running"
    )
    assert not path.exists()


def test_down_leaves_other_files_alone(tmp_path: Path) -> None:
    path = tmp_path / f"{ABSENT}.sock"
    path.write_text("not a socket")
    with pytest.raises(InterfaceError, match="is not a socket"):
        take_down(ABSENT, socket_dir=tmp_path)
    assert path.read_text() == "not a socket"


# --- minivpnd ------------------------------------------------------------------------------------


def test_log_levels_follow_wireguard_go() -> None:
    import logging

    assert log_level(None) == logging.WARNING
    assert log_level("error") == logging.WARNING
    assert log_level("nonsense") == logging.WARNING
    assert log_level("verbose") == logging.DEBUG
    assert log_level("debug") == logging.DEBUG
    assert log_level("silent") > logging.CRITICAL


def test_minivpnd_version_help_and_usage() -> None:
    version = minivpnd("--version")
    assert version.returncode == 0
    assert re.fullmatch(r"minivpnd \d+\.\d+\.\d+\S*\n", version.stdout)
    helped = minivpnd("--help")
    assert helped.returncode == 0
    assert "WG_PROCESS_FOREGROUND" in helped.stdout
    assert minivpnd().returncode == 2
    assert minivpnd("a", "b").returncode == 2


def test_minivpnd_invalid_name(tmp_path: Path) -> None:
    result = minivpnd("bad/name", env={"MINIVPN_SOCKET_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.startswith("minivpnd: ")
    assert "bad/name" in result.stderr
    silent = minivpnd("bad/name", env={"MINIVPN_SOCKET_DIR": str(tmp_path), "LOG_LEVEL": "silent"})
    assert (silent.returncode, silent.stderr) == (1, "")
    assert list(tmp_path.iterdir()) == []


# --- process mechanics, in throwaway child processes ----------------------------------------------

DAEMONIZE_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from minivpn.runtime.process import daemonize
    outcome, report = sys.argv[1], sys.argv[2]
    readiness = daemonize(program="test", keep_output=False, wait_for_readiness=True)
    with open(report, "w") as file:
        print(os.getpid(), os.getsid(0), os.readlink("/proc/self/fd/0"),
              os.readlink("/proc/self/fd/2"), file=file)
    if outcome == "ready":
        readiness.ready("all good")
        readiness.failed("too late: only the first report counts")
    elif outcome == "failed":
        readiness.failed("the port is taken")
    os._exit(0)
    """
)


@pytest.mark.parametrize(
    ("outcome", "status", "stderr"),
    [
        ("ready", 0, ""),
        ("failed", 1, "test: the port is taken\n"),
        ("dies", 1, "test: the daemon (PID {pid}) exited during start-up\n"),
    ],
)
def test_daemonize_reports_the_childs_start_up(
    tmp_path: Path, outcome: str, status: int, stderr: str
) -> None:
    report = tmp_path / "child"
    result = run(sys.executable, "-c", DAEMONIZE_SCRIPT, outcome, str(report))
    pid, sid, stdin, stderr_target = report.read_text().split()
    assert result.returncode == status
    assert result.stderr == stderr.format(pid=pid)
    assert sid == pid, "the child must lead a session of its own"
    assert (stdin, stderr_target) == ("/dev/null", "/dev/null")


def test_readiness_without_a_parent_only_logs() -> None:
    readiness = Readiness()
    readiness.ready("up")
    assert readiness.reported
    readiness.failed("ignored")  # no pipe, no error


def test_readiness_writes_one_report(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    readiness = Readiness(write_fd)
    readiness.failed("first")
    readiness.ready("second")
    with os.fdopen(read_fd, "rb") as pipe:
        assert pipe.read() == b"failed\nfirst"


SIGNALS_SCRIPT = textwrap.dedent(
    """
    import os, signal
    from minivpn.runtime.process import stop_signals_held
    with stop_signals_held():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        print("held", flush=True)
    assert not signal.sigpending() & {signal.SIGTERM, signal.SIGINT}
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGTERM, signal.SIGINT}
    print("survived", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # not held any more: this one ends the process
    print("not reached", flush=True)
    """
)


def test_stop_signals_are_held_then_dropped() -> None:
    result = run(sys.executable, "-c", SIGNALS_SCRIPT)
    assert result.stdout == "held\nsurvived\n"
    assert result.returncode == -15
