"""One line of words per trace event, as ``tcpdump -n`` prints packets: ``minivpn trace``'s lines.

The trace socket sends each event as a JSON object (:func:`minivpn.wireguard.trace.event_json`);
:func:`format_event` writes it for people::

    16:39:12.660547 tun-read  IP 10.77.0.1 > 10.77.0.2: ICMP echo request, id 7, seq 1, length 64
    16:39:12.660547 route     10.77.0.2 is in allowed ips 10.77.0.2/32 of peer vZbRF2Sb…
    16:39:12.667990 data-out  to 198.51.100.2:51821 for peer vZbRF2Sb…, receiver 0x5a09f3fd, ...

A time, a word for the step (the JSON's ``event``, shortened), then what happened.  Inner
packets are summarised by :func:`minivpn.framing.summary.summarize`, as ``minivpn dump`` does:
the event carries a packet's first bytes and its length, which is all the summary reads.
docs/trace.md is the guide to reading them.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["DROP_EXPLANATIONS", "format_event", "short_key", "summarize_head"]

#: What each drop reason means, said to the person who runs the interface.
DROP_EXPLANATIONS = {
    "malformed": "not a WireGuard message (unknown type, or the wrong length)",
    "no_private_key": "this interface has no private key yet",
    "invalid_mac1": (
        "its mac1 is not made for our public key: the sender has a wrong public key for us"
    ),
    "cookie_required": "we are under load: it got a cookie reply instead of an answer",
    "rate_limited": "we are under load: too many handshake messages from this address",
    "unknown_peer": "the public key it claims is no peer of ours",
    "handshake_invalid": (
        "it did not authenticate: the keys or the preshared key differ, or it answers nothing "
        "we sent"
    ),
    "replayed_initiation": (
        "its timestamp is not newer than the last initiation accepted from that peer (a replay)"
    ),
    "initiation_flood": "less than 20 ms after the last initiation accepted from that peer",
    "low_order_key": "the peer's public key is a low-order point: no handshake is possible",
    "invalid_cookie_reply": "a cookie reply that does not decrypt, or answers nothing we sent",
    "unknown_index": "its receiver index names no session or handshake of ours",
    "keypair_expired": "its session is older than 180 s and no longer accepted",
    "decryption_failed": "it does not decrypt under that session's key (tampered, or forged)",
    "replayed_counter": "its counter was seen before, or is too old for the replay window",
    "invalid_inner_packet": "the packet inside is not a well-formed IPv4 or IPv6 packet",
    "disallowed_source": "the source of the packet inside is not in that peer's allowed ips",
    "no_route": "no peer's allowed ips contain its destination",
    "multicast": "a multicast or broadcast packet, which WireGuard does not carry",
    "no_endpoint": "the peer has no endpoint yet: nowhere to send to",
    "staged_overflow": "too many packets wait for the handshake: the oldest one goes",
    "staged_flushed": (
        "the packets waiting for a session were discarded (handshake given up, keys erased, or "
        "peer removed)"
    ),
    "cookie_rate_limited": (
        "we are under load: it would have got a cookie reply, but its address (or all of them) "
        "had as many as allowed"
    ),
    "packet_too_big": "the kernel would not send a datagram this big (EMSGSIZE): lower the MTU",
    "send_failed": "the kernel refused to send the datagram",
    "tun_link_down": "the TUN device's link is down",
    "tun_write_failed": "the TUN device refused the packet, or had no room for it",
    "tun_bad_frame": "a read from the TUN device with a virtio-net header that made no sense",
    "handshake_queue_full": (
        "the queue of handshake messages was full (a flood of them): it was not looked at"
    ),
    "mode_mismatch": (
        "the peer sends what the other Mode carries (IP packets to Mode = tap, or Ethernet "
        "frames to Mode = tun): give both ends the same Mode"
    ),
    "invalid_frame": (
        "Mode = tap: not a well-formed Ethernet frame (too short, a length header that does not "
        "match, or a source MAC address that is not unicast)"
    ),
    "oversized_frame": (
        "Mode = tap: a frame from the TAP device longer than its MTU + 14, which would not fit "
        "one datagram"
    ),
    "disallowed_mac": "Mode = tap: its source MAC address is not in that peer's AllowedMACs",
    "flood_limited": (
        "Mode = tap: a broadcast, multicast or unknown-unicast frame beyond its port's flood limit "
        "(storm control)"
    ),
}

_TIMER_NAMES = {
    "retransmit_handshake": "retransmit",
    "new_handshake": "new-handshake",
    "send_keepalive": "keepalive",
    "persistent_keepalive": "persistent-keepalive",
    "zero_key_material": "zero-keys",
}


def short_key(key: str | None) -> str:
    """A public key as traces and logs show it: its first 8 characters, then ``…``."""
    return f"{key[:8]}…" if key else "?"


def summarize_head(head_hex: str, length: int) -> str:
    """The ``tcpdump -n`` summary of a packet of which only the first bytes were kept.

    The rest is filled with zeros up to *length*: the summary reads headers and lengths, never
    the payload, so it is the packet's own summary.
    """
    from minivpn.framing.decode import Link
    from minivpn.framing.summary import summarize

    head = bytes.fromhex(head_hex)
    return summarize(head + bytes(max(length - len(head), 0)), Link.IP)


def _time(event: dict[str, Any]) -> str:
    stamp = float(event.get("time", 0.0))
    whole = int(stamp)
    micros = min(int((stamp - whole) * 1e6), 999_999)
    return time.strftime("%H:%M:%S", time.localtime(whole)) + f".{micros:06d}"


def _peer(event: dict[str, Any]) -> str:
    return f"peer {short_key(event.get('peer'))}"


def _index(value: int | None) -> str:
    return f"0x{value:08x}" if value is not None else "?"


def format_event(event: dict[str, Any]) -> str:
    """One line for *event*, a JSON object of the trace (see the module docstring)."""
    name = event.get("event", "?")
    word, text = _describe(name, event)
    return f"{_time(event)} {word:<9} {text}"


def _describe(name: str, e: dict[str, Any]) -> tuple[str, str]:
    """The step's word and the line's text."""
    if name == "tun_read":
        return "tun-read", summarize_head(e["head"], e["length"])
    if name == "route":
        return "route", f"{e['destination']} is in allowed ips {e['prefix']} of {_peer(e)}"
    if name == "queued":
        why = "no session yet" if e["session"] == "none" else "the session expired"
        waiting = e["waiting"]
        packets = f"{waiting} packet{'s' if waiting != 1 else ''} waiting"
        return "queued", f"for {_peer(e)}: {why}, {packets} for the handshake"
    if name == "data_sent":
        what = "keepalive" if e["keepalive"] else "data"
        return f"{what[:4]}-out", (
            f"{'keepalive ' if e['keepalive'] else ''}to {e['endpoint']} for {_peer(e)}, "
            f"receiver {_index(e['receiver_index'])}, counter {e['counter']}, {e['size']} bytes"
        )
    if name == "datagram":
        text = f"{e['kind']} from {e['source']}, {e['size']} bytes"
        if e.get("peer"):
            text += f", {_peer(e)}"
        if e.get("receiver_index") is not None:
            text += f", receiver {_index(e['receiver_index'])}, counter {e['counter']}"
        return "udp-in", text
    if name == "decrypted":
        return "decrypted", f"{_peer(e)}, receiver {_index(e['receiver_index'])}"
    if name == "replay_checked":
        return "replay", f"counter {e['counter']} not seen before: accepted"
    if name == "keepalive_received":
        return "keepalive", f"from {_peer(e)}: nothing inside"
    if name == "source_checked":
        return "source", f"{e['source']} is in allowed ips {e['prefix']} of {_peer(e)}"
    if name == "tun_write":
        return "tun-write", summarize_head(e["head"], e["length"])
    if name == "handshake_sent":
        return "hs-out", _handshake_sent(e)
    if name == "handshake_received":
        return "hs-in", f"{e['kind']} from {e['source']}, {_peer(e)}: {e['outcome']}"
    if name == "session":
        side = "we initiated" if e["initiator"] else "the peer initiated"
        return "session", f"with {_peer(e)} established ({side})"
    if name == "timer":
        timer = _TIMER_NAMES.get(e["timer"], e["timer"])
        return "timer", f"{timer} for {_peer(e)}: {e['action']}"
    if name == "handshake_failed":
        return "GAVE-UP", (
            f"no handshake with {_peer(e)} after {e['attempts']} initiations: {e['cause']}"
        )
    if name == "drop":
        return "DROP", _drop(e)
    if name == "lost":
        count = e["count"]
        return "LOST", (
            f"{count} event{'s' if count != 1 else ''} (the reader, or the trace's share of "
            "the CPU, fell behind)"
        )
    return name, " ".join(f"{key}={value}" for key, value in e.items() if key != "time")


def _handshake_sent(e: dict[str, Any]) -> str:
    kind = e["kind"].replace("_", " ")
    if e["endpoint"] is None:
        return f"{kind} for {_peer(e)} not sent: it has no endpoint"
    text = f"{kind} to {e['endpoint']}"
    if e.get("peer"):
        text += f" for {_peer(e)}"
    if e.get("sender_index") is not None:
        text += f", sender {_index(e['sender_index'])}"
    if e.get("why"):
        text += f": {e['why']}"
    return text


def _drop(e: dict[str, Any]) -> str:
    reason = e["reason"]
    text = f"{reason}: "
    if e.get("source"):
        text += f"{e['kind']} from {e['source']}"
        if e.get("receiver_index") is not None:
            text += f", receiver {_index(e['receiver_index'])}, counter {e['counter']}"
        text += ": "
    if reason == "unknown_peer" and e.get("peer"):
        text += f"the public key it claims, {e['peer']}, is no peer of ours"
    elif reason == "no_route" and e.get("head"):
        text += "no peer's allowed ips contain its destination"
    else:
        text += DROP_EXPLANATIONS.get(reason, reason)
        if e.get("peer"):
            text += f" ({_peer(e)})"
    if e.get("head"):
        text += f": {summarize_head(e['head'], e['length'])}"
    return text
