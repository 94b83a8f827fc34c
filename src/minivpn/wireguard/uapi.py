"""The cross-platform userspace API (UAPI): how ``wg`` talks to a userspace WireGuard.

A userspace implementation listens on a UNIX stream socket, ``/var/run/wireguard/<iface>.sock``.
``wg`` connects and sends text operations; the daemon answers each one.  This module is the
sans-IO half of both ends: it turns request bytes into events and responses into bytes, exactly
as wireguard-go does (``device/uapi.go``; the protocol is described at
https://www.wireguard.com/xplatform/).  The socket itself belongs to the runtime.

Operations (several may share one connection, one after the other)::

    get=1\\n\\n                          ->  key=value lines ... errno=0\\n\\n
    set=1\\n key=value\\n ... \\n          ->  errno=<0 or -errno>\\n\\n
    anything else                      ->  the daemon closes the connection, no answer

A ``set`` has a device part, then one part per peer, each starting with ``public_key=``:

* device keys: ``private_key=<64 hex>`` (all zeros clears it), ``listen_port=<0..65535>``,
  ``fwmark=<0..2**32-1>`` (0: none), ``replace_peers=true``;
* peer keys, after ``public_key=<64 hex>``: ``update_only=true``, ``remove=true``,
  ``preshared_key=<64 hex>``, ``endpoint=<ipv4>:<port>`` or ``endpoint=[<ipv6>]:<port>``,
  ``persistent_keepalive_interval=<0..65535>``, ``replace_allowed_ips=true``,
  ``allowed_ip=<cidr>`` (``allowed_ip=-<cidr>`` removes it; wireguard-go understands that
  since 0.0.20250515, older versions answer -EINVAL), ``protocol_version=1``.

Errors, with the errno values wireguard-go answers (checked against it by
``tests/netns/test_uapi_reference.py``):

* a line without ``=``: ``-EPROTO`` (-71);
* an unknown key (device keys are unknown after the first ``public_key=``), or a value that does
  not parse (``listen_port=abc``, a key that is not 64 hex digits, ``replace_peers=yes``...):
  ``-EINVAL`` (-22);
* a ``get=1`` line followed by anything but an empty line: ``-EINVAL``;
* a line longer than 64 KiB inside a ``set``: ``-EIO`` (-5); this parser then closes the
  connection (wireguard-go would read on from the middle of that line, to the same end);
* failures while *applying* (rebinding the port: ``-EADDRINUSE``, -98) are the runtime's.

**What is applied when a set fails midway.**  wireguard-go applies each line as it reads it and
stops at the first bad one: everything before that line stays applied, nothing after it is, and
the answer carries the errno.  :class:`SetRequest` therefore holds what came *before* the bad
line, plus the errno; the runtime applies it and answers ``format_errno(request.errno)``.  The
rest of the failed request (up to its blank line) is skipped.  wireguard-go skips it too in
practice, because its line scanner has already read it into its buffer; if the rest arrived
later, wireguard-go would read those lines as operations and close the connection.

**Normalisation.**  Rather than a list of line-by-line actions, a :class:`PeerSet` says what the
lines amount to, which is what a runtime needs.  For every request ``wg`` sends it is the same
thing; it differs from wireguard-go only for odd orders that ``wg`` never produces:

* ``remove=true`` removes the peer; the peer's other lines (before or after) are checked but
  ignored (wireguard-go applies the earlier ones to a peer it then removes);
* ``update_only=true`` anywhere in a peer's lines means "only if the peer already exists"
  (wireguard-go creates the peer and removes it again at that line);
* ``replace_allowed_ips=true`` forgets the ``allowed_ip`` lines before it in the same part
  (wireguard-go inserts and then removes them, which also takes those prefixes away from any
  other peer that had them).

wireguard-go also loses pipelined operations that arrive in the same read as the end of a
``set`` (its line scanner reads ahead); this parser keeps them.

**Slices: lines apply as they arrive.**  A ``set`` can be any length (``wg setconf`` of a
configuration with 300,000 allowed IPs; or a client that never sends the blank line).  So the
parser does not hold a request until its end: every :data:`SET_SLICE_LINES` lines it hands what
it has read as a :class:`SetRequest` with ``more=True``, to be applied at once, and goes on
reading; the last slice (``more=False``) gets the answer.  What a connection holds is bounded
(one line, one slice), whatever the client sends, and a runtime can yield to other work between
two slices.  This is wireguard-go's line-by-line behaviour, in steps of a slice: what was
applied stays applied if the request later fails (and the rest of the request is then skipped).
A peer part that spans slices continues in the next one, with its ``remove=true`` and
``update_only=true`` carried over; one difference with wireguard-go remains, for an order
``wg`` never sends: ``update_only=true`` arriving a slice after the peer was created by its own
request leaves the peer in place (wireguard-go removes it).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeAlias

import attrs

from minivpn.wireguard.allowedips import IPAddress, IPNetwork, Prefix
from minivpn.wireguard.errors import InvalidKey, WireGuardError
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey, redacted

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "EADDRINUSE",
    "EINVAL",
    "EIO",
    "EPROTO",
    "SET_SLICE_LINES",
    "AllowedIPChange",
    "CloseConnection",
    "DeviceSet",
    "DeviceSnapshot",
    "GetRequest",
    "IPAddress",
    "IPNetwork",
    "MacTableEntry",
    "PeerSet",
    "PeerSnapshot",
    "RequestError",
    "SetRequest",
    "UapiError",
    "UapiEvent",
    "UapiRequestParser",
    "format_allowed_ip",
    "format_endpoint",
    "format_errno",
    "format_get_response",
    "format_set_request",
    "parse_get_response",
]

#: An endpoint as a (address, port) pair; IPv6 addresses may carry a ``%zone``.
AddrPort: TypeAlias = tuple[IPAddress, int]

# Negative errno values, as wireguard-go answers them (Linux numbers; ipc/uapi_unix.go).
EIO = -5
EINVAL = -22
EPROTO = -71
EADDRINUSE = -98

#: wireguard-go reads set lines with bufio.Scanner, whose longest line is 64 KiB.
MAX_LINE = 64 * 1024
#: Lines of a ``set`` read before they are handed over as a slice to apply (a few ms of work).
SET_SLICE_LINES = 1024

_ZERO_HEX = "0" * 64


class UapiError(WireGuardError):
    """A UAPI exchange failed: a malformed response, or a non-zero errno from the daemon.

    Attributes:
        errno: the (negative) errno the daemon answered or would answer, e.g. :data:`EINVAL`.
    """

    def __init__(self, message: str, errno: int = EPROTO) -> None:
        super().__init__(message)
        self.errno = errno


# --- values: parsed exactly as Go's strconv and net/netip parse them ----------------------------

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]+")


def _parse_uint(value: str, bits: int, what: str) -> int:
    """Go's ``strconv.ParseUint(value, 10, bits)``: ASCII digits only, no sign, in range."""
    if len(value) > 40 or not _DIGITS.fullmatch(value) or int(value) >= 1 << bits:
        raise UapiError(f"invalid {what}: {redacted(value[:40])}", EINVAL)
    return int(value)


def _parse_hex_key(value: str, what: str) -> bytes:
    """wireguard-go's ``loadExactHex``: exactly 64 hex digits (either case).  Never echoed."""
    if not _HEX_KEY.fullmatch(value):
        raise UapiError(f"invalid {what}: not 64 hexadecimal digits", EINVAL)
    return bytes.fromhex(value)


def _parse_true(value: str, what: str) -> bool:
    if value != "true":
        raise UapiError(
            f"invalid {what}: only 'true' is allowed, got {redacted(value[:40])}", EINVAL
        )
    return True


def _parse_addr(text: str) -> IPAddress:
    """Go's ``netip.ParseAddr``: a dotted-quad IPv4 address, or an IPv6 address with a zone."""
    try:
        if ":" in text:
            return ipaddress.IPv6Address(text)
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise UapiError(f"invalid IP address: {redacted(text[:60])}", EINVAL) from None


def _parse_endpoint(value: str) -> AddrPort:
    """Go's ``netip.ParseAddrPort``: ``1.2.3.4:5`` or ``[fd00::1]:5`` (port 0 allowed)."""
    host, colon, port_text = value.rpartition(":")
    if not colon or not host or not port_text:
        raise UapiError(f"invalid endpoint: {redacted(value[:80])}", EINVAL)
    bracketed = host.startswith("[")
    if bracketed:
        if len(host) < 2 or not host.endswith("]"):
            raise UapiError(f"invalid endpoint: {redacted(value[:80])}", EINVAL)
        host = host[1:-1]
    port = _parse_uint(port_text, 16, "endpoint port")
    address = _parse_addr(host)
    if bracketed != (address.version == 6):
        raise UapiError(f"invalid endpoint: {redacted(value[:80])}: brackets go with IPv6", EINVAL)
    return address, port


# Prefixes are parsed and written without ``ipaddress`` in the common cases, because a
# configuration can have a hundred thousand of them, and ``ipaddress`` costs several
# microseconds per prefix each way (see minivpn.wireguard.allowedips).  The fast path only takes
# the shapes it can check completely with the expressions below; anything else, including every
# mistake, goes to _parse_prefix_with_ipaddress, which stays the reference: what is accepted, the
# result and the error are those of that function (tests/unit/test_wg_uapi_prefixes.py checks).

#: ``a.b.c.d/n``: octets 0..255 and a length 0..32, in decimal without leading zeros.
_OCTET = r"(0|[1-9][0-9]?|1[0-9][0-9]|2[0-4][0-9]|25[0-5])"
_IPV4_PREFIX = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}/([0-9]|[12][0-9]|3[0-2])")
#: Groups of at most 4 hex digits between colons (no zone, no dotted IPv4 tail), then a length
#: 0..128.  Whether the groups make an address is left to _ipv6_to_int.
_IPV6_PREFIX = re.compile(
    r"((?:[0-9a-fA-F]{0,4}:)+[0-9a-fA-F]{0,4})/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])"
)


def _parse_prefix(value: str) -> Prefix:
    """Go's ``netip.ParsePrefix`` (Go >= 1.22 rules), then the host bits cleared as on insert.

    The prefix length is decimal without a sign or leading zeros, and there may be no zone.

    Raises:
        UapiError: (``EINVAL``) *value* is not a prefix.
    """
    match = _IPV4_PREFIX.fullmatch(value)
    if match is not None:
        a, b, c, d, length_text = match.groups()
        address = int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)
        host_bits = 32 - int(length_text)
        return Prefix(4, 32 - host_bits, address >> host_bits << host_bits)  # host bits cleared
    match = _IPV6_PREFIX.fullmatch(value)
    if match is not None:
        address_or_none = _ipv6_to_int(match[1])
        if address_or_none is not None:
            host_bits = 128 - int(match[2])
            return Prefix(6, 128 - host_bits, address_or_none >> host_bits << host_bits)
    return _parse_prefix_with_ipaddress(value)


def _ipv6_to_int(text: str) -> int | None:
    """An IPv6 address made of hex digits and colons as an int; None if it is not one.

    Eight groups of 1 to 4 hex digits, or fewer with one ``::`` standing for at least one group
    of zeros.  On None, the caller hands the text to ``ipaddress``, which words the error.
    """
    before, ellipsis, after = text.partition("::")
    if ellipsis:
        groups = before.split(":") if before else []
        groups_after = after.split(":") if after else []
        missing = 8 - len(groups) - len(groups_after)
        if missing < 1:
            return None
        groups += ["0"] * missing
        groups += groups_after
    else:
        groups = text.split(":")
        if len(groups) != 8:
            return None
    # An empty group is a stray ':' or a second '::'.  (The regular expression has checked the
    # characters and that no group is longer than four.)
    if "" in groups:
        return None
    return int("".join([group.rjust(4, "0") for group in groups]), 16)


def _parse_prefix_with_ipaddress(value: str) -> Prefix:
    """:func:`_parse_prefix` for any text, with ``ipaddress`` (slower, and the reference)."""
    address_text, slash, bits_text = value.rpartition("/")
    if not slash:
        raise UapiError(f"invalid allowed_ip: {redacted(value[:60])}: no '/'", EINVAL)
    address = _parse_addr(address_text)
    if getattr(address, "scope_id", None) is not None:
        raise UapiError(
            f"invalid allowed_ip: {redacted(value[:60])}: zones are not allowed", EINVAL
        )
    if (
        not _DIGITS.fullmatch(bits_text)
        or (len(bits_text) > 1 and bits_text[0] == "0")
        or int(bits_text[:4]) > address.max_prefixlen
    ):
        raise UapiError(f"invalid allowed_ip: {redacted(value[:60])}: bad prefix length", EINVAL)
    return Prefix.from_network(ipaddress.ip_network((address, int(bits_text)), strict=False))


def format_endpoint(address: IPAddress, port: int) -> str:
    """Write an endpoint as Go's ``netip.AddrPort.String`` does (``wg show`` reads it).

    IPv4 is ``1.2.3.4:51820``; IPv6 is bracketed, ``[fd00::1%eth0]:51820``, and an IPv4-mapped
    address keeps its dotted tail, ``[::ffff:1.2.3.4]:51820``.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return f"{address}:{port}"
    zone = f"%{address.scope_id}" if address.scope_id else ""
    return f"[{_format_ipv6(int(address))}{zone}]:{port}"


def format_allowed_ip(network: IPNetwork | Prefix) -> str:
    """Write a prefix as Go's ``netip.Prefix.String`` does: ``10.0.0.0/8``, ``fd00::/8``."""
    prefix = _as_prefix(network)
    if prefix.version == 4:
        return f"{_format_ipv4(prefix.address)}/{prefix.length}"
    return f"{_format_ipv6(prefix.address)}/{prefix.length}"


def _as_prefix(network: IPNetwork | Prefix) -> Prefix:
    return network if isinstance(network, Prefix) else Prefix.from_network(network)


def _format_ipv4(address: int) -> str:
    """Dotted decimal, as ``str(ipaddress.IPv4Address(address))``."""
    return f"{address >> 24}.{address >> 16 & 0xFF}.{address >> 8 & 0xFF}.{address & 0xFF}"


_IPV6_GROUPS = struct.Struct("!8H")
#: Runs of zero groups, longest first, each between colons: ":0:0:0:0:0:0:0:0:" ... ":0:0:".
_ZERO_RUNS = tuple(":" + "0:" * count for count in range(8, 1, -1))


def _format_ipv6(address: int) -> str:
    """An IPv6 address as Go's ``netip.Addr.String`` writes it (RFC 5952).

    Lowercase hex groups without leading zeros, the first longest run of two or more zero
    groups written ``::``; an IPv4-mapped address keeps its dotted tail, ``::ffff:1.2.3.4``
    (where Python's ``ipaddress`` writes ``::ffff:102:304``).
    """
    if address >> 32 == 0xFFFF:
        return f"::ffff:{_format_ipv4(address & 0xFFFFFFFF)}"
    # With a colon at each end, every group is between two colons, so that a zero group is
    # exactly ":0:" ("%x" writes no leading zeros) and a run can be found with str.find.
    # (%-formatting because it is the fastest way here: str.format takes half as long again.)
    groups = _IPV6_GROUPS.unpack(address.to_bytes(16, "big"))
    text = ":%x:%x:%x:%x:%x:%x:%x:%x:" % groups  # noqa: UP031
    for run in _ZERO_RUNS:
        start = text.find(run)  # the first of the longest runs, as RFC 5952 wants
        if start >= 0:
            # ":1:0:0:2:" -> "1" + "::" + "2"; at either end the slice is empty: "::2", "1::".
            return f"{text[1:start]}::{text[start + len(run) : -1]}"
    return text[1:-1]


# --- set requests ---------------------------------------------------------------------------------


@attrs.frozen
class AllowedIPChange:
    """One ``allowed_ip=`` line: add a prefix to the peer, or (with ``-``) remove it.

    It is made from a :class:`~minivpn.wireguard.allowedips.Prefix` (what the parser builds:
    cheap) or an ``ipaddress`` network (converted).

    Attributes:
        prefix: the prefix, host bits cleared.
        remove: True for ``allowed_ip=-<cidr>``: remove it, if this peer owns it.
    """

    prefix: Prefix = attrs.field(converter=_as_prefix)
    remove: bool = False

    @property
    def network(self) -> IPNetwork:
        """:attr:`prefix` as an ``ipaddress`` network (built on each call)."""
        return self.prefix.to_network()


@attrs.frozen
class DeviceSet:
    """The device part of a ``set=1`` request; None/False means "leave as is".

    Attributes:
        private_key: the new private key; an all-zero key (``key.is_zero()``) clears it.
        listen_port: the new port (0: any); the runtime rebinds, answering
            :data:`EADDRINUSE` if that fails.
        fwmark: the new firewall mark (0: none).
        replace_peers: remove every peer before applying the peer parts.
    """

    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False


def _changes(values: Iterable[AllowedIPChange]) -> tuple[AllowedIPChange, ...]:
    return tuple(values)


@attrs.frozen
class PeerSet:
    """One peer part of a ``set=1`` request, in the form a runtime applies it.

    Apply as: if :attr:`remove`, remove the peer (if it exists) and stop.  Otherwise, if the
    peer does not exist, create it, unless :attr:`update_only` (then skip this part).  Then, if
    :attr:`replace_allowed_ips`, remove all its allowed IPs; set the preshared key, endpoint and
    keepalive given; apply :attr:`allowed_ips` in order.  A part whose public key is the
    device's own public key (at that moment) is ignored, as wireguard-go does.

    Attributes:
        public_key: selects (or creates) the peer.
        remove: ``remove=true``.
        update_only: ``update_only=true``: never create the peer.
        preshared_key: ``preshared_key=``; all zeros means "no preshared key".
        endpoint: ``endpoint=``, as (address, port).
        persistent_keepalive_interval: ``persistent_keepalive_interval=`` in seconds (0: off).
            Turning it on (from 0) sends a keepalive at once.
        replace_allowed_ips: ``replace_allowed_ips=true``.
        allowed_ips: the ``allowed_ip=`` lines, in order.
    """

    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    preshared_key: PresharedKey | None = None
    endpoint: AddrPort | None = None
    persistent_keepalive_interval: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[AllowedIPChange, ...] = attrs.field(default=(), converter=_changes)


def _peer_sets(values: Iterable[PeerSet]) -> tuple[PeerSet, ...]:
    return tuple(values)


@attrs.frozen
class GetRequest:
    """``get=1``: answer with :func:`format_get_response`."""


@attrs.frozen
class SetRequest:
    """``set=1``: apply :attr:`device`, then each of :attr:`peers` in order, then answer
    ``format_errno(errno)`` (or the errno of a failure while applying, stopping there).

    Attributes:
        device: the device part.
        peers: the peer parts, in order.
        errno: 0, or the negative errno of the line that ended the request early; device and
            peers then hold what came before that line (wireguard-go has applied it).
        message: what was wrong, for the log; never contains key material.
        more: a slice of a request that goes on (see "Slices" above): apply it, answer nothing
            yet; if applying it fails, skip the request's other slices and answer that errno
            after its last one.
    """

    device: DeviceSet = attrs.field(factory=DeviceSet)
    peers: tuple[PeerSet, ...] = attrs.field(default=(), converter=_peer_sets)
    errno: int = 0
    message: str = attrs.field(default="", eq=False)
    more: bool = False


@attrs.frozen
class RequestError:
    """A malformed request that gets an answer and keeps the connection: answer
    ``format_errno(errno)`` and read on.

    Attributes:
        errno: the negative errno to answer.
        message: what was wrong, for the log.
    """

    errno: int
    message: str = attrs.field(default="", eq=False)


@attrs.frozen
class CloseConnection:
    """The peer sent something that is not an operation: close without answering.

    Attributes:
        reason: why, for the log.
    """

    reason: str


UapiEvent: TypeAlias = GetRequest | SetRequest | RequestError | CloseConnection


@attrs.define
class _PeerDraft:
    """A peer part being read (mutable until the part ends)."""

    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    preshared_key: PresharedKey | None = None
    endpoint: AddrPort | None = None
    persistent_keepalive_interval: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[AllowedIPChange] = attrs.field(factory=list)

    def continuation(self) -> _PeerDraft:
        """The same peer part, for the lines of the next slice (what was read is applied)."""
        return _PeerDraft(self.public_key, remove=self.remove, update_only=self.update_only)

    def freeze(self) -> PeerSet:
        if self.remove:
            return PeerSet(self.public_key, remove=True)
        return PeerSet(
            self.public_key,
            update_only=self.update_only,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive_interval=self.persistent_keepalive_interval,
            replace_allowed_ips=self.replace_allowed_ips,
            allowed_ips=self.allowed_ips,
        )


class _SetDraft:
    """A ``set=1`` request being read, line by line."""

    def __init__(self) -> None:
        self.device: dict[str, object] = {}
        self.peers: list[PeerSet] = []
        self.peer: _PeerDraft | None = None
        self.lines = 0  # lines read since the last slice

    def finish(self, errno: int = 0, message: str = "") -> SetRequest:
        if self.peer is not None:
            self.peers.append(self.peer.freeze())
            self.peer = None
        device = DeviceSet(**self.device)  # type: ignore[arg-type]
        return SetRequest(device, self.peers, errno, message)

    def slice(self) -> SetRequest:
        """What was read so far, to apply now (``more=True``); the peer part being read goes on."""
        peers = self.peers
        if self.peer is not None:
            peers.append(self.peer.freeze())
            self.peer = self.peer.continuation()
        device = DeviceSet(**self.device)  # type: ignore[arg-type]
        self.device, self.peers, self.lines = {}, [], 0
        return SetRequest(device, peers, more=True)

    def line(self, line: str) -> None:
        """Apply one ``key=value`` line.

        Raises:
            UapiError: the line is malformed; its errno is the answer.
        """
        key, equals, value = line.partition("=")
        if not equals:
            raise UapiError("line without '='", EPROTO)
        if key == "public_key":
            public_key = PublicKey(_parse_hex_key(value, "public_key"))
            if self.peer is not None:
                self.peers.append(self.peer.freeze())
            self.peer = _PeerDraft(public_key)
        elif self.peer is None:
            self.device_line(key, value)
        else:
            self.peer_line(self.peer, key, value)

    def device_line(self, key: str, value: str) -> None:
        if key == "private_key":
            # PrivateKey clamps, except the all-zero key ("clear"), exactly as wireguard-go.
            self.device["private_key"] = PrivateKey(_parse_hex_key(value, "private_key"))
        elif key == "listen_port":
            self.device["listen_port"] = _parse_uint(value, 16, "listen_port")
        elif key == "fwmark":
            self.device["fwmark"] = _parse_uint(value, 32, "fwmark")
        elif key == "replace_peers":
            self.device["replace_peers"] = _parse_true(value, "replace_peers")
        else:
            raise UapiError(f"invalid device key: {redacted(key[:40])}", EINVAL)

    @staticmethod
    def peer_line(peer: _PeerDraft, key: str, value: str) -> None:
        # allowed_ip first: a peer has one line of each other key, but may have 100,000 of it.
        if key == "allowed_ip":
            remove = value.startswith("-")
            prefix = _parse_prefix(value[1:] if remove else value)
            peer.allowed_ips.append(AllowedIPChange(prefix, remove))
        elif key == "update_only":
            peer.update_only = _parse_true(value, "update_only")
        elif key == "remove":
            peer.remove = _parse_true(value, "remove")
        elif key == "preshared_key":
            peer.preshared_key = PresharedKey(_parse_hex_key(value, "preshared_key"))
        elif key == "endpoint":
            peer.endpoint = _parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive_interval = _parse_uint(
                value, 16, "persistent_keepalive_interval"
            )
        elif key == "replace_allowed_ips":
            peer.replace_allowed_ips = _parse_true(value, "replace_allowed_ips")
            peer.allowed_ips.clear()
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(f"invalid protocol_version: {redacted(value[:40])}", EINVAL)
        else:
            raise UapiError(f"invalid peer key: {redacted(key[:40])}", EINVAL)


class UapiRequestParser:
    """Turns the bytes a UAPI client sends into request events.  Sans-IO; one per connection.

    Example (the runtime's loop)::

        parser = UapiRequestParser()
        while not parser.closed:
            data = await stream.receive_some()
            for event in parser.feed_eof() if not data else parser.feed(data):
                if isinstance(event, GetRequest):
                    await stream.send_all(format_get_response(device.snapshot()))
                elif isinstance(event, SetRequest):
                    result = device.apply(event)       # a slice, or the whole request
                    if not event.more:                 # (after a failed slice, skip the rest)
                        await stream.send_all(format_errno(result or event.errno))
                elif isinstance(event, RequestError):
                    await stream.send_all(format_errno(event.errno))
                else:  # CloseConnection
                    break

    Malformed input never raises: it becomes an event with an errno, or
    :class:`CloseConnection`.
    """

    _OPERATION = "operation"
    _GET_END = "get-end"
    _SET = "set"
    _SKIP = "skip"  # the rest of a failed set, up to its blank line
    _CLOSED = "closed"

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: How much of the buffer is known to hold no newline, so that a line trickling in
        #: byte by byte is not rescanned from its start each time.
        self._scanned = 0
        self._state = self._OPERATION
        self._set: _SetDraft | None = None

    @property
    def closed(self) -> bool:
        """True once the connection must be closed (after :class:`CloseConnection` or EOF)."""
        return self._state == self._CLOSED

    def feed(self, data: bytes) -> list[UapiEvent]:
        """Take more bytes from the client; return the events they complete, in order."""
        if self._state == self._CLOSED:
            return []
        self._buffer += data
        events: list[UapiEvent] = []
        while self._state != self._CLOSED:
            if self._state == self._GET_END:
                if not self._buffer:
                    break
                next_byte = self._buffer[0]
                del self._buffer[0]
                self._scanned = 0
                self._state = self._OPERATION
                if next_byte == 0x0A:
                    events.append(GetRequest())
                else:
                    events.append(RequestError(EINVAL, "trailing character after get=1"))
                continue
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                self._scanned = len(self._buffer)
                self._check_unterminated(events)
                break
            raw = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scanned = 0
            self._line(raw, events)
        return events

    def feed_eof(self) -> list[UapiEvent]:
        """The client closed its side.  A set in progress is applied, as wireguard-go does."""
        events: list[UapiEvent] = []
        if self._state == self._SET and self._set is not None:
            if self._buffer:
                # Go's line scanner also returns a last line without a newline.
                raw = bytes(self._buffer)
                self._buffer.clear()
                self._line(raw, events)
            if self._state == self._SET and self._set is not None:
                events.append(self._set.finish())
        self._set = None
        self._buffer.clear()
        self._state = self._CLOSED
        return events

    def _check_unterminated(self, events: list[UapiEvent]) -> None:
        """Bound the buffer while waiting for a newline."""
        if self._state == self._OPERATION and len(self._buffer) > len(b"get=1"):
            # No operation line is this long: it can only end in a close.
            self._close(events, "invalid operation")
        elif len(self._buffer) > MAX_LINE:
            self._line_too_long(events)

    def _line_too_long(self, events: list[UapiEvent]) -> None:
        """A set line over :data:`MAX_LINE`: wireguard-go's scanner fails with -EIO."""
        if self._state == self._SET and self._set is not None:
            events.append(self._set.finish(EIO, "line too long"))
        self._close(events, "line too long")

    def _close(self, events: list[UapiEvent], reason: str) -> None:
        events.append(CloseConnection(reason))
        self._state = self._CLOSED
        self._buffer.clear()
        self._set = None

    def _line(self, raw: bytes, events: list[UapiEvent]) -> None:
        if self._state == self._OPERATION:
            if raw == b"get=1":
                self._state = self._GET_END
            elif raw == b"set=1":
                self._state = self._SET
                self._set = _SetDraft()
            else:
                self._close(events, "invalid operation")
            return
        if len(raw) > MAX_LINE:
            self._line_too_long(events)
            return
        # Inside a set, lines are read like Go's bufio.ScanLines: one trailing \r is dropped.
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if self._state == self._SKIP:
            if not raw:
                self._state = self._OPERATION
            return
        assert self._set is not None
        if not raw:
            events.append(self._set.finish())
            self._set = None
            self._state = self._OPERATION
            return
        try:
            self._set.line(raw.decode("utf-8", "surrogateescape"))
            self._set.lines += 1
            if self._set.lines >= SET_SLICE_LINES:
                events.append(self._set.slice())
        except UapiError as exc:
            events.append(self._set.finish(exc.errno, str(exc)))
            self._set = None
            self._state = self._SKIP
        except InvalidKey as exc:  # not expected: hex is checked first; kept as a safety net
            events.append(self._set.finish(EINVAL, str(exc)))
            self._set = None
            self._state = self._SKIP


def format_set_request(device: DeviceSet, peers: Iterable[PeerSet] = ()) -> bytes:
    """Write a ``set=1`` request as ``wg set``/``wg setconf`` would (the client side)."""
    lines = ["set=1"]
    if device.private_key is not None:
        lines.append(f"private_key={device.private_key.to_hex()}")
    if device.listen_port is not None:
        lines.append(f"listen_port={device.listen_port}")
    if device.fwmark is not None:
        lines.append(f"fwmark={device.fwmark}")
    if device.replace_peers:
        lines.append("replace_peers=true")
    for peer in peers:
        lines.append(f"public_key={peer.public_key.to_hex()}")
        if peer.remove:
            lines.append("remove=true")
            continue
        if peer.update_only:
            lines.append("update_only=true")
        if peer.preshared_key is not None:
            lines.append(f"preshared_key={peer.preshared_key.to_hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(*peer.endpoint)}")
        if peer.persistent_keepalive_interval is not None:
            lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        if peer.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        for change in peer.allowed_ips:
            sign = "-" if change.remove else ""
            lines.append(f"allowed_ip={sign}{format_allowed_ip(change.prefix)}")
    return ("\n".join(lines) + "\n\n").encode()


# --- get responses --------------------------------------------------------------------------------


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _counts(values: Mapping[str, int] | Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    items = values.items() if isinstance(values, Mapping) else values
    return tuple((str(name), int(count)) for name, count in items)


@attrs.frozen
class PeerSnapshot:
    """One peer as ``get=1`` reports it.

    Attributes:
        public_key: the peer's public key.
        preshared_key: its preshared key, or None (reported as all zeros).
        endpoint: the current endpoint, already formatted (:func:`format_endpoint`), or None.
        last_handshake_time_sec, last_handshake_time_nsec: wall-clock time of the last
            completed handshake (0, 0: never).
        tx_bytes, rx_bytes: transport bytes sent and received.
        persistent_keepalive_interval: seconds, 0 for off.
        allowed_ips: the peer's prefixes as text (:func:`format_allowed_ip`), in table order.
        allowed_macs: ``Mode = tap``: the peer's AllowedMACs as text (none: any source).
        drops: minivpn's drops for this peer, ``(reason, count)`` for each reason seen.
        counters: minivpn's other counters of the peer, ``(name, value)``
            (:class:`~minivpn.wireguard.counters.PeerCounters`).  Both are empty for another
            daemon (see :func:`format_get_response`).
    """

    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    endpoint: str | None = None
    last_handshake_time_sec: int = 0
    last_handshake_time_nsec: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive_interval: int = 0
    allowed_ips: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    allowed_macs: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    drops: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=_counts)
    counters: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=_counts)


def _peer_snapshots(values: Iterable[PeerSnapshot]) -> tuple[PeerSnapshot, ...]:
    return tuple(values)


@attrs.frozen
class MacTableEntry:
    """``Mode = tap``: one entry of the switch's MAC table, as ``get=1`` reports it.

    Attributes:
        mac: the address, ``02:00:5e:10:00:01``.
        public_key: the peer it is behind, or None: behind the interface's own TAP device.
        age: whole seconds since a frame from it was last seen.
    """

    mac: str
    public_key: PublicKey | None
    age: int


def _mac_entries(values: Iterable[MacTableEntry]) -> tuple[MacTableEntry, ...]:
    return tuple(values)


@attrs.frozen
class DeviceSnapshot:
    """The device as ``get=1`` reports it.

    Attributes:
        private_key: the (clamped) private key, or None when unset.
        listen_port: the UDP port actually bound (0 when none).
        fwmark: the firewall mark (0: none).
        peers: every peer.
        mode: ``"tun"`` (WireGuard) or ``"tap"`` (minivpn's layer-2 extension).
        mac_table: ``Mode = tap``: the switch's MAC table.
        flood_rate: ``Mode = tap``: the switch's storm control, flooded frames a second
            each port may send (0: off); None: not reported.
        flood_burst: ``Mode = tap``: flooded frames a port may send at once above the rate.
        drops: minivpn's drops of the whole device, ``(reason, count)`` for each reason seen
            (empty for another daemon).
    """

    private_key: PrivateKey | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[PeerSnapshot, ...] = attrs.field(default=(), converter=_peer_snapshots)
    mode: str = "tun"
    mac_table: tuple[MacTableEntry, ...] = attrs.field(default=(), converter=_mac_entries)
    drops: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=_counts)
    flood_rate: int | None = None
    flood_burst: int | None = None


def format_errno(errno: int) -> bytes:
    """The status that ends every answer: ``errno=<n>\\n\\n``."""
    return f"errno={errno}\n\n".encode()


def format_get_response(snapshot: DeviceSnapshot) -> bytes:
    """Write the answer to ``get=1``, line for line as wireguard-go writes it.

    Keys are lowercase hex.  Device lines come first (each only when set), then per peer:
    public_key, preshared_key (always; zeros when none), protocol_version, endpoint (when
    known), handshake time, byte counters, keepalive, allowed_ip lines; then ``errno=0``.

    minivpn adds its counters with two keys of its own, which wireguard-go never sends:
    ``minivpn_drop=REASON:COUNT`` (for the device among its lines, and for each peer among
    the peer's) and ``minivpn_counter=NAME:VALUE`` (per peer).  ``wg`` skips keys it does not
    know (wireguard-tools ``ipc-uapi.h``: the chain of key comparisons has no final ``else``),
    so ``wg show`` and ``wg showconf`` print exactly what they print without them
    (``tests/netns/test_trace.py`` checks it with the real ``wg``).

    In ``Mode = tap`` (minivpn's extension), more keys, which ``wg`` skips (its parser,
    wireguard-tools ``ipc-uapi.h``, ignores keys it does not know): ``minivpn_mode=tap``,
    the storm control as ``minivpn_flood_rate=N`` (0: off) and ``minivpn_flood_burst=N``, and a
    ``minivpn_mac=MAC,AGE`` line per MAC address behind the TAP device among the device
    lines; per peer, ``minivpn_allowed_mac=PREFIX`` lines and a ``minivpn_mac=MAC,AGE`` line
    per address behind that peer.  A ``tun`` device's answer is wireguard-go's, with only the
    counters above added.
    """
    lines: list[str] = []
    if snapshot.private_key is not None and not snapshot.private_key.is_zero():
        lines.append(f"private_key={snapshot.private_key.to_hex()}")
    if snapshot.listen_port:
        lines.append(f"listen_port={snapshot.listen_port}")
    if snapshot.fwmark:
        lines.append(f"fwmark={snapshot.fwmark}")
    macs: dict[PublicKey | None, list[str]] = {}
    if snapshot.mode != "tun":
        lines.append(f"minivpn_mode={snapshot.mode}")
        if snapshot.flood_rate is not None:
            lines.append(f"minivpn_flood_rate={snapshot.flood_rate}")
        if snapshot.flood_burst is not None:
            lines.append(f"minivpn_flood_burst={snapshot.flood_burst}")
        for entry in snapshot.mac_table:
            macs.setdefault(entry.public_key, []).append(f"minivpn_mac={entry.mac},{entry.age}")
        lines.extend(macs.get(None, ()))
    lines.extend(f"minivpn_drop={reason}:{count}" for reason, count in snapshot.drops)
    for peer in snapshot.peers:
        psk = peer.preshared_key.to_hex() if peer.preshared_key is not None else _ZERO_HEX
        lines.append(f"public_key={peer.public_key.to_hex()}")
        lines.append(f"preshared_key={psk}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        lines.append(f"last_handshake_time_sec={peer.last_handshake_time_sec}")
        lines.append(f"last_handshake_time_nsec={peer.last_handshake_time_nsec}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        lines.extend(f"allowed_ip={prefix}" for prefix in peer.allowed_ips)
        lines.extend(f"minivpn_allowed_mac={prefix}" for prefix in peer.allowed_macs)
        lines.extend(macs.get(peer.public_key, ()))
        lines.extend(f"minivpn_drop={reason}:{count}" for reason, count in peer.drops)
        lines.extend(f"minivpn_counter={name}:{value}" for name, value in peer.counters)
    lines.append("errno=0")
    return ("\n".join(lines) + "\n\n").encode()


_PEER_INT_FIELDS = {
    "last_handshake_time_sec": 63,
    "last_handshake_time_nsec": 63,
    "tx_bytes": 64,
    "rx_bytes": 64,
    "persistent_keepalive_interval": 16,
}


def parse_get_response(text: str | bytes) -> DeviceSnapshot:
    """Parse a daemon's answer to ``get=1`` (for ``minivpn show`` and tests).

    Unknown keys are skipped, as ``wg`` skips them, so newer daemons still parse.

    Raises:
        UapiError: the answer is malformed (errno :data:`EPROTO`), or ends in a non-zero errno
            (that errno).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text.endswith("\n\n"):
        raise UapiError("get response does not end with a blank line")
    device: dict[str, object] = {"drops": []}
    peers: list[dict[str, object]] = []
    mac_table: list[MacTableEntry] = []
    lines = text[:-2].split("\n")
    *body, status = lines
    key, _, value = status.partition("=")
    if key != "errno" or not re.fullmatch(r"-?[0-9]{1,10}", value):
        raise UapiError("get response does not end with errno=<n>")
    if int(value) != 0:
        raise UapiError(f"get failed with errno={value}", int(value))
    try:
        for line in body:
            key, equals, value = line.partition("=")
            if not equals:
                raise UapiError(f"line without '=' in get response: {redacted(line[:40])}")
            if key == "public_key":
                peers.append(
                    {
                        "public_key": PublicKey.from_hex(_checked_hex(value)),
                        "ips": [],
                        "macs": [],
                        "drops": [],
                        "counters": [],
                    }
                )
            elif key in ("minivpn_drop", "minivpn_counter"):
                count = _name_and_count(value)
                if count is not None:  # a newer daemon's value we cannot read: skipped
                    target = peers[-1] if peers else device
                    field = "drops" if key == "minivpn_drop" else "counters"
                    if field in target:
                        target[field].append(count)  # type: ignore[attr-defined]
            elif key == "minivpn_mac":
                owner = peers[-1]["public_key"] if peers else None
                mac, _, age = value.partition(",")
                mac_table.append(MacTableEntry(mac, owner, _parse_uint(age, 63, key)))  # type: ignore[arg-type]
            elif not peers:
                if key == "minivpn_mode":
                    device["mode"] = value
                elif key in ("minivpn_flood_rate", "minivpn_flood_burst"):
                    device[key.removeprefix("minivpn_")] = _parse_uint(value, 32, key)
                elif key == "private_key":
                    device["private_key"] = PrivateKey.from_hex(_checked_hex(value))
                elif key in ("listen_port", "fwmark"):
                    device[key] = _parse_uint(value, 16 if key == "listen_port" else 32, key)
            elif key == "preshared_key":
                psk = PresharedKey.from_hex(_checked_hex(value))
                peers[-1]["preshared_key"] = None if psk.is_zero() else psk
            elif key == "endpoint":
                peers[-1]["endpoint"] = value
            elif key == "allowed_ip":
                peers[-1]["ips"].append(value)  # type: ignore[attr-defined]
            elif key == "minivpn_allowed_mac":
                peers[-1]["macs"].append(value)  # type: ignore[attr-defined]
            elif key in _PEER_INT_FIELDS:
                peers[-1][key] = _parse_uint(value, _PEER_INT_FIELDS[key], key)
    except (UapiError, InvalidKey) as exc:
        raise UapiError(f"malformed get response: {exc}") from None
    snapshots = []
    for fields in peers:
        allowed_ips, allowed_macs = fields.pop("ips"), fields.pop("macs")
        snapshots.append(
            PeerSnapshot(**fields, allowed_ips=allowed_ips, allowed_macs=allowed_macs)  # type: ignore[arg-type]
        )
    return DeviceSnapshot(**device, peers=snapshots, mac_table=mac_table)  # type: ignore[arg-type]


def _name_and_count(value: str) -> tuple[str, int] | None:
    """``NAME:COUNT`` of minivpn's counter keys, or None if it is not that."""
    name, colon, count = value.rpartition(":")
    if not colon or not name or not _DIGITS.fullmatch(count) or len(count) > 20:
        return None
    return name, int(count)


def _checked_hex(value: str) -> str:
    """The value, if it is exactly 64 hex digits (``from_hex`` alone would strip spaces)."""
    if not _HEX_KEY.fullmatch(value):
        raise UapiError("key is not 64 hexadecimal digits")
    return value
