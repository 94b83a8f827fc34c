"""Handshake rate: how many handshake responses per second a daemon sends back.

minivpn and wireguard-go, in the same run.  Run it with
``netns/isolate python tests/bench/handshakes.py [--peers K] [--rates R,...]``, or as the last
step of ``nox -s bench`` (``tests/bench/run.py`` calls :func:`measure`).

Method.  For every program, two fresh namespaces joined by veth (198.51.100.1 <-> .2): the daemon
in B, started with wireguard-go's contract (``PROG -f IFNAME``), its link up, configured with
``wg setconf``: a private key, listen port 51820, and K peers whose keys this script generated
(no endpoints, no allowed IPs: a responder learns the endpoint from the initiation).  Both
daemons get the *same* private key and peers, so one set of messages serves both.

Before anything is timed, the initiations are built with minivpn's own handshake code
(:func:`minivpn.wireguard.noise.create_initiation`, mac1 from
:class:`~minivpn.wireguard.cookie.CookieGenerator`): round r holds one initiation from each of
the K peers, with the timestamp ``base + r * 50 ms``, so that every peer's timestamps increase
(a responder refuses a timestamp that is not newer than the last one it accepted; TAI64N
timestamps are whitened to ~17 ms).  There is no mac2: the sender has no cookie.

Then, for each offered rate, A sends the messages of the next rounds from one UDP socket at that
steady rate for DURATION seconds, peer after peer, so that the same peer's initiations are
``K / rate`` apart -- K is raised if need be to keep that at 25 ms or more, above the 20 ms per
peer flood limit of both daemons.  A thread counts what comes back during the window:
handshake responses (type 2, 92 bytes, addressed to one of our sender indices, with a mac1 made
for that peer's public key: so the daemon did identify the peer and ran the whole handshake)
and cookie replies (type 3: the daemon is "under load" and asks for proof of address before it
spends Diffie-Hellman operations).  The figure is responses per second over the window.

This is a benchmark, never a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from minivpn.wireguard.cookie import CookieGenerator, compute_mac1, mac1_key  # noqa: E402
from minivpn.wireguard.keys import PrivateKey, PublicKey  # noqa: E402
from minivpn.wireguard.messages import INITIATION_SIZE, RESPONSE_SIZE  # noqa: E402
from minivpn.wireguard.noise import (  # noqa: E402
    PeerHandshakeState,
    StaticIdentity,
    create_initiation,
)
from netns import Namespace, Topology  # noqa: E402

#: Upstream wireguard-go 0.0.20250522 (as in run.py).
WG_GO_2025 = Path(
    os.environ.get("MINIVPN_WG_GO_2025", ROOT.parent / "shared/bench/bin/wireguard-go-0.0.20250522")
)

if TYPE_CHECKING:
    from collections.abc import Callable

PORT = 51820
#: Seconds between the timestamps of two rounds (more than the ~17 ms TAI64N whitening).
ROUND_SPACING = 0.05
#: The least time between two initiations of one peer (the daemons' flood limit is 20 ms).
PEER_SPACING = 0.025
#: Seconds of sending before the counting window opens (the daemon settles into its regime).
WARMUP = 0.5
_RESPONSE_TYPE, _COOKIE_REPLY_TYPE = 2, 3
_MACS_SIZE = 32
_U32 = struct.Struct("<I")

#: How to start each program: the command for interface IFNAME (wireguard-go's contract).
DAEMONS: dict[str, Callable[[str], list[str]]] = {
    "wireguard-go-2025": lambda dev: [str(WG_GO_2025), "-f", dev],
    "wireguard-go": lambda dev: ["wireguard-go", "-f", dev],
    "minivpn": lambda dev: [sys.executable, "-m", "minivpn.daemon", "-f", dev],
}
#: The reference of the ratio column (``run.py``'s), if present.
REFERENCE = "wireguard-go-2025"


class Initiations:
    """K peers' keys and, round by round, one valid initiation from each of them."""

    def __init__(self, responder: PrivateKey, peers: int) -> None:
        self.responder = responder
        responder_public = responder.public_key()
        self.keys = [PrivateKey.generate() for _ in range(peers)]
        self._identities = [StaticIdentity(key) for key in self.keys]
        self._states = [PeerHandshakeState(responder_public) for _ in self.keys]
        self._macs = [CookieGenerator(responder_public) for _ in self.keys]
        self._rounds = 0
        self._base = time.time()

    def next_rounds(self, count: int) -> list[bytes]:
        """The initiations of the next ``count`` rounds, peer after peer within each round."""
        messages = []
        for _ in range(count):
            wall = self._base + self._rounds * ROUND_SPACING
            self._rounds += 1
            for identity, state, macs in zip(
                self._identities, self._states, self._macs, strict=True
            ):
                index = int.from_bytes(os.urandom(4), "little")
                message = create_initiation(identity, state, index, wall)
                messages.append(macs.add_macs(message.to_bytes(), 0.0))
        return messages


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for the daemon's UAPI socket")


def start_daemon(
    ns: Namespace, program: str, dev: str, initiations: Initiations, workdir: Path
) -> int:
    """Start ``program`` in ``ns`` as interface ``dev`` and configure it; return its PID."""
    proc = ns.popen(DAEMONS[program](dev), env={**os.environ, "LOG_LEVEL": "error"})
    _wait_for(lambda: Path(f"/var/run/wireguard/{dev}.sock").exists())
    config = workdir / f"{dev}.conf"
    lines = ["[Interface]", f"PrivateKey = {initiations.responder.to_base64()}"]
    lines.append(f"ListenPort = {PORT}")
    for key in initiations.keys:
        lines += ["[Peer]", f"PublicKey = {key.public_key().to_base64()}"]
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    ns.run(["wg", "setconf", dev, str(config)])
    ns.ip("link", "set", dev, "up")
    return proc.pid


def measure(
    programs: list[str],
    *,
    rates: list[int],
    duration: float = 5.0,
    peers: int = 256,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> dict[tuple[str, int], tuple[float, float]]:
    """Measure every program at every offered rate (inside ``netns/isolate``).

    Args:
        programs: keys of :data:`DAEMONS`.
        rates: offered initiations per second.
        duration: seconds of counting per rate (after WARMUP seconds of sending).
        peers: how many peers (raised if a rate needs more to respect the flood limit).
        log: where progress lines go.

    Returns:
        ``(program, rate) -> (responses per second, cookie replies per second)``.
    """
    peers = max(peers, *(math.ceil(rate * PEER_SPACING) for rate in rates))
    initiations = Initiations(PrivateKey.generate(), peers)
    workdir = Path("/run/bench-handshakes")
    workdir.mkdir(mode=0o700, exist_ok=True)
    (workdir / "peers").write_text(
        "".join(key.public_key().to_base64() + "\n" for key in initiations.keys)
    )
    rounds = [math.ceil(rate * (WARMUP + duration) / peers) + 1 for rate in rates]
    log(f"handshakes: building {sum(rounds) * peers} initiations from {peers} peers")
    for rate, count in zip(rates, rounds, strict=True):
        (workdir / f"initiations-{rate}").write_bytes(b"".join(initiations.next_rounds(count)))
    results: dict[tuple[str, int], tuple[float, float]] = {}
    with Topology("hs") as topo:
        for number, program in enumerate(programs):
            a, b = topo.pair()
            start_daemon(b, program, f"hs{number}", initiations, workdir)
            for rate in rates:
                generator = a.run(
                    [
                        sys.executable,
                        __file__,
                        "--generate",
                        str(workdir),
                        f"{b.addr4}:{PORT}",
                        str(rate),
                        str(duration),
                    ],
                    timeout=WARMUP + duration + 30,
                )
                responses, cookie_replies = (float(x) for x in generator.stdout.split())
                results[(program, rate)] = (responses, cookie_replies)
                log(
                    f"handshakes: {program} offered {rate}/s: "
                    f"{responses:.0f} responses/s, {cookie_replies:.0f} cookie replies/s"
                )
                time.sleep(1.5)  # let "under load" (1 s) wear off before the next rate
    return results


def generate(workdir: Path, destination: tuple[str, int], rate: int, duration: float) -> None:
    """The load generator (run inside namespace A): send, count, print the two rates."""
    public_keys = [PublicKey.from_base64(line) for line in (workdir / "peers").read_text().split()]
    mac1_keys = [mac1_key(key) for key in public_keys]
    data = (workdir / f"initiations-{rate}").read_bytes()
    messages = [data[i : i + INITIATION_SIZE] for i in range(0, len(data), INITIATION_SIZE)]
    # A response quotes our sender index: which peer it answers, hence the key of its mac1.
    peer_of_index = {
        _U32.unpack_from(message, 4)[0]: n % len(public_keys) for n, message in enumerate(messages)
    }

    def is_response(reply: bytes) -> bool:
        if len(reply) != RESPONSE_SIZE or reply[0] != _RESPONSE_TYPE:
            return False
        peer = peer_of_index.get(_U32.unpack_from(reply, 8)[0])  # its receiver index
        if peer is None:
            return False
        return compute_mac1(mac1_keys[peer], reply) == reply[-_MACS_SIZE : -_MACS_SIZE // 2]

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(destination)
    start = time.monotonic() + 0.1
    window = (start + WARMUP, start + WARMUP + duration)
    counts = {"responses": 0, "cookie_replies": 0}
    done = threading.Event()

    def count_replies() -> None:
        sock.settimeout(0.1)
        while not done.is_set():
            try:
                reply = sock.recv(2048)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                continue  # the daemon's port is not open (yet): an ICMP error
            if not window[0] <= time.monotonic() < window[1]:
                continue
            if is_response(reply):
                counts["responses"] += 1
            elif reply[:1] == bytes((_COOKIE_REPLY_TYPE,)):
                counts["cookie_replies"] += 1

    counter = threading.Thread(target=count_replies)
    counter.start()
    try:
        # Message i goes at start + i / rate; a late one goes at once (and the rest catch up).
        for i, message in enumerate(messages):
            delay = start + i / rate - time.monotonic()
            if delay > 0.0005:
                time.sleep(delay)
            with contextlib.suppress(ConnectionRefusedError):  # an ICMP error: not up yet
                sock.send(message)
        time.sleep(max(0.0, window[1] - time.monotonic()) + 0.2)
    finally:
        done.set()
        counter.join()
    print(counts["responses"] / duration, counts["cookie_replies"] / duration)


def print_table(results: dict[tuple[str, int], tuple[float, float]], programs: list[str]) -> None:
    """The Markdown table: responses and cookie replies per second, ratio to the reference."""
    rates = sorted({rate for _, rate in results})
    print("\n| program | offered initiations/s | responses/s | ratio | cookie replies/s |")
    print("|---|---|---|---|---|")
    for program in programs:
        for rate in rates:
            responses, cookies = results[(program, rate)]
            reference = results.get((REFERENCE, rate), results.get(("wireguard-go", rate)))
            reference = reference[0] if reference else 0.0
            ratio = f"{responses / reference:.2f}" if reference else "-"
            print(f"| {program} | {rate} | {responses:.0f} | {ratio} | {cookies:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("programs", nargs="*", default=list(DAEMONS), help=", ".join(DAEMONS))
    parser.add_argument("--peers", type=int, default=256)
    parser.add_argument("--rates", default="200,2000,8000", help="offered initiations/s, e.g. 2000")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--generate", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:  # the load generator, started by measure() inside namespace A
        workdir, destination, rate, duration = args.generate
        host, port = destination.rsplit(":", 1)
        generate(Path(workdir), (host, int(port)), int(rate), float(duration))
        return 0
    if os.environ.get("MINIVPN_ISOLATED") != "1":
        isolate = str(ROOT / "netns/isolate")
        os.execvp(isolate, [isolate, sys.executable, *sys.argv])
    for tool in ("wireguard-go", "wg"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed")
    unknown = set(args.programs) - set(DAEMONS)
    if unknown:
        parser.error(f"unknown programs: {', '.join(sorted(unknown))}")
    programs = [p for p in DAEMONS if p in args.programs]
    if REFERENCE in programs and not WG_GO_2025.is_file():
        print(f"bench: no {WG_GO_2025}: skipping {REFERENCE}", file=sys.stderr)
        programs.remove(REFERENCE)
    rates = [int(rate) for rate in args.rates.split(",")]
    results = measure(programs, rates=rates, duration=args.duration, peers=args.peers)
    print_table(results, programs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
