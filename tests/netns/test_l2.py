"""Layer 2 (``Mode = tap``) with real TAP devices: a hub, two spokes, a bridged LAN at each spoke.

The lab (built once for the module; each test leaves it as it found it)::

    lan1 --veth-- [br0 + tap] spoke1 ==WG== hub (tap) ==WG== spoke2 [tap + br0] --veth-- lan2
    10.88.0.11    10.88.0.2 on br0           10.88.0.1         10.88.0.3 on br0    10.88.0.12

Every node runs ``minivpn up CONFIG --foreground`` (its log on stderr; SIGUSR1 prints the drop
counters).  The spokes know the hub's endpoint, the hub knows theirs.  Each side's MAC
addresses are fixed, so that the hub can restrict each spoke with ``AllowedMACs``: site 1 uses
02:11:..., site 2 02:22:..., and the host that moves between sites 02:33:00:00:00:01.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest
from tests.helpers.daemons import interface_name, wg
from tests.helpers.procs import (
    MINIVPN,
    Process,
    ping,
    start_minivpn,
    wait_for_ping,
    wait_until,
)
from tests.helpers.wg import genkey, iperf3
from tests.netns.test_vpn_datapath import transfer

from netns import Topology

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from netns import Namespace

pytestmark = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools)")

PORT = 51820
HUB4, SPOKE1_4, SPOKE2_4, LAN1_4, LAN2_4 = (
    "10.88.0.1",
    "10.88.0.2",
    "10.88.0.3",
    "10.88.0.11",
    "10.88.0.12",
)
HUB6, SPOKE1_6, SPOKE2_6 = "fd00:88::1", "fd00:88::2", "fd00:88::3"
MOVER_MAC, MOVER4 = "02:33:00:00:00:01", "10.88.0.50"


class Site:
    """A spoke namespace with its bridge and its LAN host namespace."""

    def __init__(self, spoke: Namespace, lan: Namespace, number: int) -> None:
        self.spoke = spoke
        self.lan = lan
        self.number = number

    def mac(self, last: int) -> str:
        return f"02:{self.number}{self.number}:00:00:00:{last:02x}"


class L2Lab:
    """The three minivpn nodes, their configs and processes."""

    def __init__(self, topo: Topology, directory: Path) -> None:
        self.topo = topo
        self.directory = directory
        self.hub = topo.namespace("h")
        self.sites = [Site(topo.namespace("s"), topo.namespace("l"), n) for n in (1, 2)]
        self.keys = {node: genkey() for node in ("hub", "spoke1", "spoke2")}
        self.names = {node: interface_name("mvl", node[0] + node[-1]) for node in self.keys}
        self.processes: dict[str, Process] = {}
        self.outer: dict[str, str] = {}
        for index, site in enumerate(self.sites):
            hub_end, spoke_end = topo.veth(self.hub, site.spoke)
            hub_addr, spoke_addr = f"198.51.100.{4 * index + 1}", f"198.51.100.{4 * index + 2}"
            self.hub.ip("addr", "add", f"{hub_addr}/30", "dev", hub_end)
            site.spoke.ip("addr", "add", f"{spoke_addr}/30", "dev", spoke_end)
            self.outer[f"hub{index + 1}"] = hub_addr
            self.outer[f"spoke{index + 1}"] = spoke_addr
            # the bridge, and the LAN host on a veth behind it
            site.spoke.ip("link", "add", "br0", "address", site.mac(0xB0), "type", "bridge")
            site.spoke.run(["sysctl", "-qw", "net.ipv6.conf.br0.accept_dad=0"])
            site.spoke.ip("link", "set", "br0", "up")
            spoke_veth, lan_veth = topo.veth(site.spoke, site.lan)
            site.spoke.ip("link", "set", spoke_veth, "master", "br0")
            site.lan.ip("link", "set", lan_veth, "down")
            site.lan.ip("link", "set", lan_veth, "address", site.mac(0x11), "mtu", "1404")
            site.lan.run(["sysctl", "-qw", f"net.ipv6.conf.{lan_veth}.accept_dad=0"])
            site.lan.ip("link", "set", lan_veth, "up")
            site.lan.ip("addr", "add", f"10.88.0.1{site.number}/24", "dev", lan_veth)
            site.spoke.ip("addr", "add", f"10.88.0.{site.number + 1}/24", "dev", "br0")
            site.spoke.ip("addr", "add", f"fd00:88::{site.number + 1}/64", "dev", "br0", "nodad")
        for node in self.keys:
            self.start(node)

    def config(self, node: str) -> Path:
        key = self.keys[node].private
        if node == "hub":
            text = (
                f"[Interface]\nMode = tap\nPrivateKey = {key}\nListenPort = {PORT}\n"
                f"Address = {HUB4}/24, {HUB6}/64\n"
            )
            for n in (1, 2):
                site = self.sites[n - 1]
                text += (
                    f"\n[Peer]\nPublicKey = {self.keys[f'spoke{n}'].public}\n"
                    f"Endpoint = {self.outer[f'spoke{n}']}:{PORT}\n"
                    f"AllowedMACs = {site.mac(0)}/24, {MOVER_MAC}\n"
                )
        else:
            n = int(node[-1])
            text = (
                f"[Interface]\nMode = tap\nPrivateKey = {key}\nListenPort = {PORT}\n\n"
                f"[Peer]\nPublicKey = {self.keys['hub'].public}\n"
                f"Endpoint = {self.outer[f'hub{n}']}:{PORT}\nPersistentKeepalive = 25\n"
            )
        path = self.directory / f"{self.names[node]}.conf"
        path.write_text(text)
        path.chmod(0o600)
        return path

    def ns(self, node: str) -> Namespace:
        return self.hub if node == "hub" else self.sites[int(node[-1]) - 1].spoke

    def start(self, node: str) -> None:
        """``minivpn up --foreground`` on *node*; a spoke's TAP goes into its bridge."""
        ns, name = self.ns(node), self.names[node]
        process = start_minivpn(
            ns, ["up", str(self.config(node)), "--foreground"], self.directory, f"{node}-{name}"
        )
        self.processes[node] = process
        process.wait_for(r"data path:")
        if node == "hub":
            ns.ip("link", "set", name, "address", "02:44:00:00:00:01")
        else:
            site = self.sites[int(node[-1]) - 1]
            ns.ip("link", "set", name, "address", site.mac(0x7A))
            ns.ip("link", "set", name, "master", "br0")

    def drops(self, node: str) -> dict[str, int]:
        """The drop counters *node* logs on SIGUSR1."""
        return logged_drops(self.processes[node])

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.running():
                process.stop()


def logged_drops(process: Process) -> dict[str, int]:
    """The drop counters a ``minivpn up`` process logs on SIGUSR1."""
    before = process.count(r"dropped \d+")
    process.send_signal(signal.SIGUSR1)
    wait_until(lambda: process.count(r"dropped \d+") > before, timeout=10, what="the drop counters")
    line = re.findall(r"dropped \d+(?: \((.*)\))?", process.stderr())[-1]
    counts = {}
    for item in line.split(", ") if line else ():
        reason, number = item.rsplit(" ", 1)
        counts[reason] = int(number)
    return counts


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[L2Lab]:
    with Topology() as topo:
        built = None
        try:
            built = L2Lab(topo, tmp_path_factory.mktemp("l2"))
            wait_for_ping(built.hub, SPOKE1_4, timeout=20)
            wait_for_ping(built.hub, SPOKE2_4, timeout=20)
            yield built
        finally:
            if built is not None:
                built.stop_all()


def doctor(ns: Namespace, name: str) -> subprocess.CompletedProcess[str]:
    """``minivpn doctor NAME`` in *ns*, its report's wrapped lines joined into one."""
    result = ns.run([*MINIVPN, "doctor", name], check=False, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    result.stdout = " ".join(result.stdout.split())
    return result


def neighbour_mac(ns: Namespace, address: str) -> str:
    """The MAC address ``ip neigh`` lists for *address* in *ns* ('' if none)."""
    shown = ns.ip("neigh", "show", address).stdout.split()
    return shown[shown.index("lladdr") + 1] if "lladdr" in shown else ""


def test_arp_and_ping_v4_spoke_to_spoke_through_the_hub(lab: L2Lab) -> None:
    spoke1 = lab.sites[0].spoke
    spoke1.ip("neigh", "flush", "dev", "br0")
    assert ping(spoke1, SPOKE2_4, count=3, interval=0.1).returncode == 0
    assert neighbour_mac(spoke1, SPOKE2_4) == lab.sites[1].mac(0xB0)  # ARP answered across


def test_neighbour_discovery_and_ping_v6_spoke_to_spoke(lab: L2Lab) -> None:
    spoke1 = lab.sites[0].spoke
    spoke1.ip("-6", "neigh", "flush", "dev", "br0")
    assert ping(spoke1, SPOKE2_6, count=3, interval=0.1).returncode == 0
    assert neighbour_mac(spoke1, SPOKE2_6) == lab.sites[1].mac(0xB0)
    assert ping(spoke1, HUB6, count=1).returncode == 0


def test_bridged_lan_hosts_reach_each_other(lab: L2Lab) -> None:
    lan1, lan2 = (site.lan for site in lab.sites)
    wait_for_ping(lan1, LAN2_4)
    assert neighbour_mac(lan1, LAN2_4) == lab.sites[1].mac(0x11)
    assert ping(lan2, LAN1_4, count=3, interval=0.1).returncode == 0


def test_a_broadcast_reaches_every_host(lab: L2Lab) -> None:
    for ns in (lab.hub, *(site.spoke for site in lab.sites), *(site.lan for site in lab.sites)):
        ns.run(["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"])
    result = lab.sites[0].lan.run(
        ["ping", "-n", "-b", "-c", "3", "-i", "0.3", "-W", "2", "10.88.0.255"], check=False
    )
    responders = set(re.findall(r"bytes from ([\d.]+)", result.stdout))
    assert {HUB4, SPOKE1_4, SPOKE2_4, LAN2_4} <= responders, result.stdout


def test_a_tcp_transfer_arrives_intact(lab: L2Lab) -> None:
    """Four TCP streams, LAN host to LAN host across both tunnels, SHA-256 on both ends."""
    lan1, lan2 = (site.lan for site in lab.sites)
    sent, received = transfer(lan1, lan2, LAN2_4, megabytes=8)
    assert len(sent.split()) == 4
    assert received == sent
    sent, received = transfer(lab.hub, lan1, LAN1_4, megabytes=4)
    assert received == sent


def test_iperf3_runs_across_without_stalls(lab: L2Lab) -> None:
    """iperf3 LAN to LAN, both directions (its bytes are not checked: the SHA-256 transfer
    above does that; iperf3's own ``-F`` loses the rest of a block on a short send)."""
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3")
    lan1, lan2 = (site.lan for site in lab.sites)
    for extra in ((), ("-R",)):
        result = iperf3(lan2, lan1, LAN2_4, seconds=2, extra=extra)
        assert result.total_bytes > 0
        assert result.stalls() == []


def test_a_mac_move_is_followed_and_logged(lab: L2Lab) -> None:
    """A host with one MAC address unplugged from site 1 and plugged into site 2."""
    mover = lab.topo.namespace("m")
    site1, site2 = lab.sites
    hub_log = lab.processes["hub"]

    def plug(site: Site) -> str:
        bridge_end, host_end = lab.topo.veth(site.spoke, mover)
        site.spoke.ip("link", "set", bridge_end, "master", "br0")
        mover.ip("link", "set", host_end, "down")
        mover.ip("link", "set", host_end, "address", MOVER_MAC, "mtu", "1404")
        mover.run(["sysctl", "-qw", f"net.ipv6.conf.{host_end}.disable_ipv6=1"])
        mover.ip("link", "set", host_end, "up")
        mover.ip("addr", "add", f"{MOVER4}/24", "dev", host_end)
        return bridge_end

    bridge_end = plug(site1)
    wait_for_ping(mover, HUB4)
    site1.spoke.ip("link", "del", bridge_end)
    plug(site2)
    wait_for_ping(mover, HUB4)
    hub_log.wait_for(rf"MAC {MOVER_MAC} moved from peer \S+ to peer \S+")
    assert ping(mover, LAN1_4, count=2, interval=0.1).returncode == 0


def test_a_forged_source_mac_is_refused_and_counted(lab: L2Lab) -> None:
    """Site 1 may only use 02:11:00:00:00:00/24 (and the mover): another source is dropped."""
    lan1 = lab.sites[0].lan
    veth = lan_link(lan1)
    before = lab.drops("hub").get("disallowed_mac", 0)
    lan1.ip("link", "set", veth, "address", "02:99:00:00:00:01")
    try:
        lan1.ip("neigh", "flush", "dev", veth)
        assert ping(lan1, HUB4, count=3, interval=0.2).returncode != 0
        assert lab.drops("hub").get("disallowed_mac", 0) > before  # its ARP requests
        report = doctor(lab.hub, lab.names["hub"])
        assert report.returncode == 1
        assert (
            "frames from it were dropped: their source MAC address is not in its AllowedMACs"
            in (report.stdout)
        )
    finally:
        lan1.ip("link", "set", veth, "address", lab.sites[0].mac(0x11))
        lan1.ip("neigh", "flush", "dev", veth)
    wait_for_ping(lan1, HUB4)


#: Send one Ethernet frame (hex) out of an interface, through a packet socket.
SEND_FRAME = """
import socket, sys
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind((sys.argv[1], 0))
    s.send(bytes.fromhex(sys.argv[2]))
"""

#: Wait (at most 5 s) for a frame carrying a marker; print its length and 802.1Q VLAN ID, tag
#: included (the kernel may have moved the tag into the packet's metadata: PACKET_AUXDATA).
RECEIVE_FRAME = """
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
s.settimeout(0.2)
print("ready", flush=True)
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    try:
        data, ancillary, _, _ = s.recvmsg(65535, 512)
    except socket.timeout:
        continue
    if bytes.fromhex(sys.argv[2]) not in data:
        continue
    vlan, length = None, len(data)
    for level, kind, aux in ancillary:
        if (level, kind) == (263, 8):
            status, _, _, _, _, tci, tpid = struct.unpack_from("IIIHHHH", aux)
            if status & 0x10:  # TP_STATUS_VLAN_VALID: the tag was taken out of the frame
                vlan, length = tci & 0xFFF, len(data) + 4
    if data[12:14] == b"\\x81\\x00":
        vlan = int.from_bytes(data[14:16], "big") & 0xFFF
    print(length, vlan)
    break
"""


def tagged_frame(source: str, ip_size: int, marker: bytes) -> str:
    """A broadcast frame tagged VLAN 100, carrying *ip_size* bytes after the tag (hex)."""
    body = marker + bytes(ip_size - len(marker))
    header = bytes.fromhex("ffffffffffff" + source.replace(":", "") + "8100" + "0064" + "88b5")
    return (header + body).hex()


def test_vlan_tagged_frames_pass_and_oversized_ones_are_dropped(lab: L2Lab) -> None:
    """802.1Q frames pass; one 4 bytes longer than the TAP's MTU + 14 is dropped and counted."""
    python = shutil.which("python3") or "python3"
    lan1, lan2 = (site.lan for site in lab.sites)
    veth1, veth2 = (lan_link(site.lan) for site in lab.sites)
    mac1 = lab.sites[0].mac(0x11)

    def send_and_watch(ip_size: int, marker: bytes) -> str:
        receiver = lan2.popen(
            [python, "-c", RECEIVE_FRAME, veth2, marker.hex()], stdout=subprocess.PIPE
        )
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        frame = tagged_frame(mac1, ip_size, marker)
        lan1.run([python, "-c", SEND_FRAME, veth1, frame])
        out, _ = receiver.communicate(timeout=15)
        return out.strip()

    # 1400 bytes behind the tag: 1418 bytes, which fits (the TAP's MTU 1404 + 14)
    assert send_and_watch(1400, b"tagged-fits") == "1418 100"
    before = lab.drops("spoke1").get("oversized_frame", 0)
    # a full 1404 bytes behind the tag: 1422 > 1418, never fragmented, dropped and counted
    assert send_and_watch(1404, b"tagged-full") == ""
    assert lab.drops("spoke1").get("oversized_frame", 0) == before + 1


def lan_link(ns: Namespace) -> str:
    """The name of the LAN host's veth."""
    (line,) = ns.ip("-o", "link", "show", "type", "veth").stdout.splitlines()
    return line.split(":")[1].strip().split("@")[0]


def test_wg_show_parses_a_tap_interface(lab: L2Lab) -> None:
    """``wg`` reads the UAPI get of a tap-mode interface (it skips the minivpn_ keys)."""
    name = lab.names["hub"]
    shown = wg(lab.hub, "show", name)
    assert f"interface: {name}" in shown
    assert shown.count("peer: ") == 2
    dump = wg(lab.hub, "show", name, "dump").splitlines()
    assert len(dump) == 3
    assert all(int(line.split("\t")[5]) > 0 for line in dump[1:])  # latest handshakes


def test_minivpn_show_lists_the_mac_table(lab: L2Lab) -> None:
    """``minivpn show`` and ``--json``: the mode, AllowedMACs and the MAC table, labelled."""
    lan1 = lab.sites[0].lan
    assert ping(lan1, HUB4, count=1).returncode == 0
    name = lab.names["hub"]
    spoke1 = lab.keys["spoke1"].public
    python = [*MINIVPN, "show", name]
    text = lab.hub.run(python).stdout
    assert "  mode: tap (layer 2, a minivpn extension)\n" in text
    storm = "  storm control: 2000 flooded frames a second per port, in bursts of up to 1000\n"
    assert storm in text
    allowed = re.findall(r"^  allowed macs: (.*)$", text, re.M)
    assert sorted(sorted(line.split(", ")) for line in allowed) == [
        ["02:11:00:00:00:00/24", MOVER_MAC],
        ["02:22:00:00:00:00/24", MOVER_MAC],
    ]
    assert "mac table (minivpn extension, Mode = tap):\n" in text
    assert re.search(rf"^  02:11:00:00:00:11  peer {re.escape(spoke1)}  \d+ s$", text, re.M)
    assert re.search(r"^  02:44:00:00:00:01  this tap device  \d+ s$", text, re.M)
    shown = json.loads(lab.hub.run([*python, "--json"]).stdout)
    assert shown["mode"] == "tap"
    assert (shown["flood_rate"], shown["flood_burst"]) == (2000, 1000)
    table = {entry["mac"]: entry for entry in shown["mac_table"]}
    assert table["02:11:00:00:00:11"]["peer"] == spoke1
    assert table["02:44:00:00:00:01"]["peer"] is None
    assert all(isinstance(entry["age"], int) for entry in table.values())
    by_key = {peer["public_key"]: peer for peer in shown["peers"]}
    assert sorted(by_key[spoke1]["allowed_macs"]) == ["02:11:00:00:00:00/24", MOVER_MAC]


def test_a_restarted_spoke_recovers(lab: L2Lab) -> None:
    lab.processes["spoke2"].stop()
    lab.start("spoke2")
    wait_for_ping(lab.sites[0].lan, LAN2_4, timeout=30)
    wait_for_ping(lab.hub, SPOKE2_4, timeout=30)


def test_a_restarted_hub_recovers(lab: L2Lab) -> None:
    lab.processes["hub"].stop()
    lab.start("hub")
    wait_for_ping(lab.hub, SPOKE1_4, timeout=30)
    wait_for_ping(lab.sites[0].lan, LAN2_4, timeout=30)


# --- a tap interface against a tun one -----------------------------------------------------------


def start_pair(
    namespaces: tuple[Namespace, Namespace],
    names: tuple[str, str],
    texts: list[str],
    tmp_path: Path,
) -> list[Process]:
    """``minivpn up --foreground`` with each config (0600) in its namespace, until both run."""
    processes = []
    for ns, name, text in zip(namespaces, names, texts, strict=True):
        path = tmp_path / f"{name}.conf"
        path.write_text(text)
        path.chmod(0o600)
        process = start_minivpn(ns, ["up", str(path), "--foreground"], tmp_path, name)
        process.wait_for("data path:")
        processes.append(process)
    return processes


def test_a_layer3_peer_is_refused_clearly(tmp_path: Path) -> None:
    """Mode = tap against Mode = tun: nothing passes, and both logs say why."""
    with Topology() as topo:
        a, b = topo.pair()
        keys = genkey(), genkey()
        names = interface_name("mvl", "ta"), interface_name("mvl", "tu")
        texts = [
            f"[Interface]\nMode = tap\nPrivateKey = {keys[0].private}\nListenPort = {PORT}\n"
            "Address = 10.87.0.1/24\n\n"
            f"[Peer]\nPublicKey = {keys[1].public}\nEndpoint = {b.addr4}:{PORT}\n",
            f"[Interface]\nPrivateKey = {keys[1].private}\nListenPort = {PORT}\n"
            "Address = 10.87.0.2/24\n\n"
            f"[Peer]\nPublicKey = {keys[0].public}\nAllowedIPs = 10.87.0.0/24\n"
            f"Endpoint = {a.addr4}:{PORT}\n",
        ]
        processes = start_pair((a, b), names, texts, tmp_path)
        try:
            assert ping(b, "10.87.0.1", count=3, interval=0.3).returncode != 0
            processes[0].wait_for(r"sends IP packets, but this interface is in Mode = tap")
            assert ping(a, "10.87.0.2", count=2, interval=0.3).returncode != 0  # ARP: a frame
            processes[1].wait_for(r"sends Ethernet frames \(it is minivpn in Mode = tap\)")
            tap_report, tun_report = doctor(a, names[0]), doctor(b, names[1])
            assert (
                "messages from it were dropped: they carry IP packets, but this interface is in"
                in (tap_report.stdout)
            )
            assert (
                "they carry Ethernet frames (it is minivpn in Mode = tap), but this interface"
                in (tun_report.stdout)
            )
            assert (tap_report.returncode, tun_report.returncode) == (1, 1)
        finally:
            for process in processes:
                process.stop()


#: Send argv[3] copies of one Ethernet frame (hex, argv[2]) out of an interface, back to back.
SEND_FRAMES = """
import socket, sys
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind((sys.argv[1], 0))
    for _ in range(int(sys.argv[3])):
        s.send(bytes.fromhex(sys.argv[2]))
"""


def test_a_configured_flood_rate_takes_effect(tmp_path: Path) -> None:
    """``FloodRate = 1``, ``FloodBurst = 2``: of 50 broadcasts in a row, at most 2 are flooded,
    the rest dropped and counted as ``flood_limited`` (the default, 2000 a second in bursts of
    1000, would flood them all)."""
    with Topology() as topo:
        a, b = topo.pair()
        keys = genkey(), genkey()
        names = interface_name("mvl", "fa"), interface_name("mvl", "fb")
        texts = [
            f"[Interface]\nMode = tap\nFloodRate = 1\nFloodBurst = 2\n"
            f"PrivateKey = {keys[0].private}\nListenPort = {PORT}\nAddress = 10.87.1.1/24\n\n"
            f"[Peer]\nPublicKey = {keys[1].public}\nEndpoint = {b.addr4}:{PORT}\n",
            f"[Interface]\nMode = tap\nPrivateKey = {keys[1].private}\nListenPort = {PORT}\n"
            "Address = 10.87.1.2/24\n\n"
            f"[Peer]\nPublicKey = {keys[0].public}\nEndpoint = {a.addr4}:{PORT}\n",
        ]
        processes = start_pair((a, b), names, texts, tmp_path)
        try:
            wait_for_ping(a, "10.87.1.2", timeout=20)  # a session, and ARP's flood spent
            before = logged_drops(processes[0]).get("flood_limited", 0)
            broadcast = "ff" * 6 + "021100000099" + "88b5" + "00" * 46
            a.run([MINIVPN[0], "-c", SEND_FRAMES, names[0], broadcast, "50"])
            counted = logged_drops(processes[0]).get("flood_limited", 0) - before
            assert counted >= 45  # (the kernel's own multicast may add a few)
        finally:
            for process in processes:
                process.stop()


def test_minivpn_demo_tap() -> None:
    """``minivpn demo --tap``: host A reaches host B and knows B's own MAC; nothing is left."""
    result = subprocess.run(
        [*MINIVPN, "demo", "--tap"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"3 packets transmitted, 3 received", result.stdout)
    match = re.search(r"10\.99\.0\.12 lladdr (\S+)    \(host B's eth0 is (\S+)\)", result.stdout)
    assert match is not None, result.stdout
    assert match.group(1) == match.group(2)
    assert re.search(rf"{match.group(1)} behind site B \(the peer\)", result.stdout)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert "minivpn-demo" not in listed.stdout
