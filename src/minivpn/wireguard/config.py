"""WireGuard configuration files: the ``wg setconf``/``wg showconf`` format plus wg-quick's keys.

A configuration file is an INI-like text::

    [Interface]
    PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
    ListenPort = 51820
    Address = 10.0.0.1/24, fd00::1/64     # wg-quick only

    [Peer]
    PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
    AllowedIPs = 10.0.0.2/32, fd00::2/128
    Endpoint = 192.0.2.7:51820
    PersistentKeepalive = 25

Two programs read these files, and this module follows both:

* ``wg(8)`` (wireguard-tools ``src/config.c``) owns ``PrivateKey``, ``ListenPort``, ``FwMark``
  in ``[Interface]`` and ``PublicKey``, ``PresharedKey``, ``AllowedIPs``, ``Endpoint``,
  ``PersistentKeepalive`` in ``[Peer]``.  It ignores everything after ``#``, deletes *all*
  whitespace from a line (so ``Allowed IPs = a, b`` works), and matches section names and keys
  case-insensitively.
* ``wg-quick(8)`` (``src/wg-quick/linux.bash``) adds ``Address``, ``DNS``, ``MTU``, ``Table``,
  ``PreUp``/``PostUp``/``PreDown``/``PostDown`` and ``SaveConfig`` to ``[Interface]``.
  ``Address`` and ``DNS`` may repeat and hold lists separated by commas or spaces; a ``DNS``
  entry that is not an IP address is a search domain.  The hook commands are shell code, so for
  them ``#`` is *not* a comment: the value is the rest of the raw line (as wg-quick does).

And minivpn adds keys of its own for layer-2 mode (docs/l2.md), which neither ``wg`` nor
``wg-quick`` knows (both refuse such a file: an L3 tool cannot run it by mistake):
``Mode = tun | tap`` in ``[Interface]`` (``tun``, WireGuard, by default), and ``AllowedMACs``
in ``[Peer]``, a list of MAC addresses or prefixes (``52:54:00:00:00:00/24``), only in
``Mode = tap``, where ``AllowedIPs`` has no meaning (frames are switched by MAC address) and is
refused.  The switch's storm control is set in ``[Interface]``, also only in ``Mode = tap``:
``FloodRate`` (flooded frames a second each port may send, 2000 by default, or ``off``) and
``FloodBurst`` (how many at once above the rate, 1000 by default).

The parser is stricter than ``wg`` in a few places where ``wg`` silently does something
surprising: a single-valued key given twice is an error (``wg`` keeps the last one), an IPv6
endpoint must be in brackets, and an endpoint's port must be a number from 1 to 65535.  Host
names in ``Endpoint`` are kept as text: resolving them is the runtime's job, not the parser's.

Every problem is reported as one :class:`ConfigError` naming the file and line, for example
``wg0.conf:7: invalid key 'PublicKy' in [Peer] (did you mean 'PublicKey'?)``.  Messages never
repeat a key's text, since it may be a private key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from typing import TypeAlias, TypeVar

import attrs

from minivpn.wireguard.allowedips import IPAddress, IPNetwork
from minivpn.wireguard.errors import InvalidKey, WireGuardError
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey, looks_like_key, redacted
from minivpn.wireguard.switch import InvalidMac, MacPrefix

__all__ = [
    "Config",
    "ConfigError",
    "Endpoint",
    "IPAddress",
    "IPNetwork",
    "InterfaceConfig",
    "PeerConfig",
    "format_config",
    "load_config",
    "parse_config",
]

IPInterface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
_KeyT = TypeVar("_KeyT", PrivateKey, PublicKey, PresharedKey)


class ConfigError(WireGuardError):
    """A configuration file (or one value in it) is not valid.

    Attributes:
        message: what is wrong, without the location.
        filename: the file's name, or None for a value parsed on its own.
        lineno: the 1-based line number, or None for a problem with the whole file.
    """

    def __init__(self, message: str, filename: str | None = None, lineno: int | None = None):
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.lineno = lineno

    def __str__(self) -> str:
        if self.filename is None:
            return self.message
        if self.lineno is None:
            return f"{self.filename}: {self.message}"
        return f"{self.filename}:{self.lineno}: {self.message}"


# --- the model ------------------------------------------------------------------------------------

_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?\Z)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?"
)
_DIGITS = re.compile(r"[0-9]+")
#: What a key name can look like; anything else is not repeated in messages.
_KEY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,30}")


def _show(text: str) -> str:
    """*text* quoted for an error message, unless it might be a key (a long base64 run)."""
    return redacted(text)


def _parse_uint(text: str, maximum: int, what: str, minimum: int = 0) -> int:
    """A decimal number from *minimum* to *maximum*; only ASCII digits, no sign, no spaces."""
    # The length check keeps int() away from huge digit strings (and its 4300-digit limit).
    if len(text) > 20 or _DIGITS.fullmatch(text) is None or not minimum <= int(text) <= maximum:
        raise ConfigError(f"{what} must be a number from {minimum} to {maximum}, got {_show(text)}")
    return int(text)


@attrs.frozen
class Endpoint:
    """Where a peer is reached: an IP address or a host name, and a UDP port.

    Attributes:
        host: an IP address in canonical form (without brackets), or a DNS name, unresolved.
        port: the UDP port, 1 to 65535.
    """

    host: str
    port: int

    @property
    def ip(self) -> IPAddress | None:
        """The host as an IP address, or None if it is a name that still needs resolving."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``192.0.2.1:51820``, ``[fd00::1]:51820`` or ``vpn.example.com:51820``.

        Raises:
            ConfigError: the text is none of these (without a location: the caller adds it).
        """
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket:
                raise ConfigError(f"Endpoint {_show(text)} has '[' without a matching ']'")
            if not rest.startswith(":"):
                raise ConfigError(
                    f"Endpoint {_show(text)} needs a port after ']', as in [fd00::1]:51820"
                )
            port_text = rest[1:]
            try:
                address = ipaddress.IPv6Address(host)
            except ValueError:
                raise ConfigError(
                    f"Endpoint {_show(text)}: {_show(host)} is not an IPv6 address"
                ) from None
            canonical_host = str(address)
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon or not host:
                raise ConfigError(
                    f"Endpoint {_show(text)} needs a host and a port, as in host:51820"
                )
            if ":" in host:
                raise ConfigError(
                    f"Endpoint {_show(text)}: write an IPv6 address in brackets,"
                    " as in [fd00::1]:51820"
                )
            if re.fullmatch(r"[0-9.]+", host):
                # Only digits and dots: this must be an IPv4 address, not a host name.
                try:
                    canonical_host = str(ipaddress.IPv4Address(host))
                except ValueError:
                    raise ConfigError(
                        f"Endpoint {_show(text)}: {_show(host)} is not an IPv4 address"
                    ) from None
            elif looks_like_key(host):
                # Never resolved: a DNS query would carry the key to the resolver, and beyond.
                raise ConfigError(
                    f"Endpoint {_show(text)}: the host looks like a key, not a host name "
                    "(40 or more letters and digits in a row); is a key pasted here?"
                )
            elif _HOST_NAME.fullmatch(host):
                canonical_host = host
            else:
                raise ConfigError(
                    f"Endpoint {_show(text)}: {_show(host)} is not a host name or IP address"
                )
        port = _parse_uint(port_text, 65535, f"the port of Endpoint {_show(text)}", minimum=1)
        return cls(canonical_host, port)


@attrs.frozen
class InterfaceConfig:
    """The ``[Interface]`` section.

    None means "not given" (``wg`` then leaves the current value alone, or picks a default).

    Attributes:
        private_key: our static private key.
        listen_port: UDP port to listen on; 0 or None means a random port.
        fwmark: firewall mark for outgoing packets; 0 means off.
        addresses: wg-quick ``Address``: addresses (with prefix length) put on the interface.
        dns: wg-quick ``DNS`` entries that are IP addresses: the name servers.
        dns_search: wg-quick ``DNS`` entries that are names: the search domains.
        mtu: wg-quick ``MTU``.
        table: wg-quick ``Table``: ``"off"``, ``"auto"``, a table number or a table name.
        pre_up, post_up, pre_down, post_down: wg-quick hook commands (shell code), in order.
        save_config: wg-quick ``SaveConfig``.
        mode: minivpn ``Mode``: ``"tun"`` (IP packets, WireGuard) or ``"tap"`` (Ethernet
            frames, minivpn's layer-2 extension).
        flood_rate: minivpn ``FloodRate`` (``Mode = tap``): flooded frames a second each port
            of the switch may send; 0: ``off``, no storm control.
        flood_burst: minivpn ``FloodBurst`` (``Mode = tap``): flooded frames a port may send
            at once above the rate.
    """

    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    addresses: tuple[IPInterface, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    dns_search: tuple[str, ...] = ()
    mtu: int | None = None
    table: str | None = None
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    save_config: bool = False
    mode: str = "tun"
    flood_rate: int | None = None
    flood_burst: int | None = None


@attrs.frozen
class PeerConfig:
    """One ``[Peer]`` section.

    Attributes:
        public_key: the peer's static public key (its identity; required).
        preshared_key: optional extra symmetric key.
        allowed_ips: prefixes routed to this peer and accepted from it, host bits cleared.
        endpoint: where to send to, until the peer roams.
        persistent_keepalive: seconds between keepalives; 0 means off.
        allowed_macs: minivpn ``AllowedMACs`` (``Mode = tap``): the source MAC addresses the
            peer's frames may have; empty: any.
    """

    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    allowed_macs: tuple[MacPrefix, ...] = ()


@attrs.frozen
class Config:
    """A whole configuration file.

    Attributes:
        interface: the ``[Interface]`` section (all defaults if the file has none).
        peers: the ``[Peer]`` sections, in file order.
        warnings: things worth telling the user that do not stop the configuration from
            working (a world-readable file, an AllowedIPs entry with host bits set...).  They
            take no part in equality.
    """

    interface: InterfaceConfig = attrs.field(factory=InterfaceConfig)
    peers: tuple[PeerConfig, ...] = ()
    warnings: tuple[str, ...] = attrs.field(default=(), eq=False)


# --- parsing --------------------------------------------------------------------------------------

_INTERFACE = "Interface"
_PEER = "Peer"

# Canonical spelling of every key, and the section it belongs to.
_KEYS: dict[str, tuple[str, str]] = {
    name.lower(): (name, section)
    for section, names in (
        (
            _INTERFACE,
            (
                "PrivateKey",
                "ListenPort",
                "FwMark",
                "Address",
                "DNS",
                "MTU",
                "Table",
                "PreUp",
                "PostUp",
                "PreDown",
                "PostDown",
                "SaveConfig",
                "Mode",
                "FloodRate",
                "FloodBurst",
            ),
        ),
        (
            _PEER,
            (
                "PublicKey",
                "PresharedKey",
                "AllowedIPs",
                "Endpoint",
                "PersistentKeepalive",
                "AllowedMACs",
            ),
        ),
    )
    for name in names
}
#: Keys that may appear more than once in a section (their values accumulate).
_REPEATABLE = frozenset(
    {"Address", "DNS", "PreUp", "PostUp", "PreDown", "PostDown", "AllowedIPs", "AllowedMACs"}
)
#: Keys whose value is shell code: taken from the raw line, where '#' is not a comment.
_HOOKS = {"PreUp": "pre_up", "PostUp": "post_up", "PreDown": "pre_down", "PostDown": "post_down"}
#: Keys owned by wg(8): all whitespace inside their line is removed, as wg does.
_WG_KEYS = frozenset(
    {
        "PrivateKey",
        "ListenPort",
        "FwMark",
        "PublicKey",
        "PresharedKey",
        "AllowedIPs",
        "Endpoint",
        "PersistentKeepalive",
    }
)

#: wg's whitespace (src/ctype.h char_is_space): ASCII only, unlike str.split().
_SPACE = re.compile(r"[ \t\n\v\f\r]+")
_LIST_SEPARATOR = re.compile(r"[ \t\n\v\f\r,]+")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: The largest FloodRate and FloodBurst: a million frames, far above any link's broadcasts.
_MAX_FLOOD = 1_000_000


@attrs.define
class _PeerDraft:
    """A [Peer] section being read."""

    lineno: int
    values: dict[str, object] = attrs.field(factory=dict)
    allowed_ips: list[IPNetwork] = attrs.field(factory=list)
    allowed_macs: list[MacPrefix] = attrs.field(factory=list)
    #: The first line of each list key, for errors that only the whole file reveals.
    first_allowed_ips: int | None = None
    first_allowed_macs: int | None = None


class _Parser:
    """Reads a configuration line by line; see :func:`parse_config`."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.section: str | None = None
        self.interface_line: int | None = None
        self.interface: dict[str, object] = {}
        self.lists: dict[str, list[object]] = {
            "addresses": [],
            "dns": [],
            "dns_search": [],
            "pre_up": [],
            "post_up": [],
            "pre_down": [],
            "post_down": [],
        }
        self.peers: list[_PeerDraft] = []
        self.seen_keys: dict[str, int] = {}  # canonical key -> line, in the current section
        self.public_keys: dict[PublicKey, int] = {}  # -> line of its [Peer]
        self.warnings: list[str] = []
        self.mode_line: int | None = None
        self.tap_only_lines: dict[str, int] = {}  # FloodRate, FloodBurst -> their line

    def error(self, lineno: int | None, message: str) -> ConfigError:
        return ConfigError(message, self.filename, lineno)

    def warn(self, lineno: int, message: str) -> None:
        self.warnings.append(f"{self.filename}:{lineno}: {message}")

    # One line ------------------------------------------------------------------------------------

    def line(self, lineno: int, raw: str) -> None:
        code = raw.split("#", 1)[0]
        squeezed = _SPACE.sub("", code)
        if not squeezed:
            return
        if squeezed.startswith("["):
            self.start_section(lineno, squeezed)
            return
        key_text, equals, _ = code.partition("=")
        if not equals:
            raise self.error(
                lineno, "expected 'Key = Value' or a [Section], found a line without '='"
            )
        key_text = _SPACE.sub("", key_text)
        if not key_text:
            raise self.error(lineno, "missing key before '='")
        known = _KEYS.get(key_text.lower())
        where = f"[{self.section}]" if self.section else "outside any section"
        if known is None:
            import difflib  # only for a misspelt key: not kept in a running interface

            hint = difflib.get_close_matches(key_text.lower(), list(_KEYS), n=1, cutoff=0.75)
            suggestion = f" (did you mean {_KEYS[hint[0]][0]!r}?)" if hint else ""
            prefix = "in " if self.section else ""
            shown = repr(key_text) if _KEY_NAME.fullmatch(key_text) else "(not a key name)"
            raise self.error(lineno, f"invalid key {shown} {prefix}{where}{suggestion}")
        key, section = known
        if self.section is None:
            raise self.error(lineno, f"key {key!r} outside any section; put it under [{section}]")
        if section != self.section:
            raise self.error(lineno, f"key {key!r} belongs in [{section}], not in [{self.section}]")
        if key not in _REPEATABLE:
            first = self.seen_keys.get(key)
            if first is not None:
                raise self.error(
                    lineno, f"duplicate {key!r} in [{self.section}] (first given on line {first})"
                )
        self.seen_keys[key] = lineno
        if key in _HOOKS:
            value = raw.partition("=")[2].strip(" \t\n\v\f\r")
        elif key in _WG_KEYS:
            value = _SPACE.sub("", code.partition("=")[2])
        else:
            value = code.partition("=")[2].strip(" \t\n\v\f\r")
        if not value:
            raise self.error(lineno, f"{key!r} has no value")
        try:
            if self.section == _INTERFACE:
                self.interface_value(lineno, key, value)
            else:
                self.peer_value(lineno, key, value)
        except ConfigError as exc:
            raise self.error(lineno, exc.message) from None

    def start_section(self, lineno: int, header: str) -> None:
        self.finish_peer()
        name = header.lower()
        if name == "[interface]":
            if self.interface_line is not None:
                raise self.error(
                    lineno,
                    f"second [Interface] section (the first is on line {self.interface_line})",
                )
            self.section = _INTERFACE
            self.interface_line = lineno
        elif name == "[peer]":
            self.section = _PEER
            self.peers.append(_PeerDraft(lineno))
        else:
            name_match = re.fullmatch(r"\[([A-Za-z][A-Za-z0-9_-]{0,30})\]", header)
            shown = f"[{name_match.group(1)}]" if name_match else "header"
            raise self.error(lineno, f"unknown section {shown}; expected [Interface] or [Peer]")
        self.seen_keys = {}

    # Values --------------------------------------------------------------------------------------

    def interface_value(self, lineno: int, key: str, value: str) -> None:
        if key == "PrivateKey":
            self.interface["private_key"] = _parse_key(PrivateKey, value, key)
        elif key == "ListenPort":
            self.interface["listen_port"] = _parse_uint(value, 65535, key)
        elif key == "FwMark":
            self.interface["fwmark"] = _parse_fwmark(value)
        elif key == "Address":
            for item in _split_list(value):
                self.lists["addresses"].append(_parse_interface_address(item))
        elif key == "DNS":
            for item in _split_list(value):
                if re.fullmatch(r"[0-9.]+", item) or ":" in item:
                    try:
                        self.lists["dns"].append(ipaddress.ip_address(item))
                    except ValueError:
                        raise ConfigError(
                            f"DNS server {_show(item)} is not an IP address"
                        ) from None
                elif _HOST_NAME.fullmatch(item):
                    self.lists["dns_search"].append(item)
                else:
                    raise ConfigError(
                        f"DNS entry {_show(item)} is neither an IP address nor a domain"
                    )
        elif key == "MTU":
            self.interface["mtu"] = _parse_uint(value, 65535, key, minimum=68)
        elif key == "Table":
            self.interface["table"] = _parse_table(value)
        elif key in _HOOKS:
            self.lists[_HOOKS[key]].append(value)
        elif key == "SaveConfig":
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"SaveConfig must be true or false, got {_show(value)}")
            self.interface["save_config"] = value.lower() == "true"
        elif key == "Mode":
            if value.lower() not in ("tun", "tap"):
                raise ConfigError(
                    f"Mode must be tun (IP packets, WireGuard) or tap (Ethernet frames), "
                    f"got {_show(value)}"
                )
            self.interface["mode"] = value.lower()
            self.mode_line = lineno
        elif key == "FloodRate":
            if value.lower() == "off":
                self.interface["flood_rate"] = 0
            elif not value.isdigit() or not 1 <= int(value) <= _MAX_FLOOD:
                raise ConfigError(
                    f"FloodRate must be off or a number of frames a second from 1 to "
                    f"{_MAX_FLOOD}, got {_show(value)}"
                )
            else:
                self.interface["flood_rate"] = int(value)
            self.tap_only_lines[key] = lineno
        elif key == "FloodBurst":
            self.interface["flood_burst"] = _parse_uint(value, _MAX_FLOOD, key, minimum=1)
            self.tap_only_lines[key] = lineno

    def peer_value(self, lineno: int, key: str, value: str) -> None:
        peer = self.peers[-1]
        if key == "PublicKey":
            public_key = _parse_key(PublicKey, value, key)
            first = self.public_keys.get(public_key)
            if first is not None:
                raise ConfigError(
                    f"duplicate peer: the [Peer] on line {first} has the same PublicKey"
                )
            self.public_keys[public_key] = peer.lineno
            peer.values["public_key"] = public_key
        elif key == "PresharedKey":
            peer.values["preshared_key"] = _parse_key(PresharedKey, value, key)
        elif key == "AllowedIPs":
            for item in value.split(","):
                network, had_host_bits = _parse_allowed_ip(item)
                if had_host_bits:
                    self.warn(
                        lineno, f"AllowedIPs entry {_show(item)} has host bits set; using {network}"
                    )
                peer.allowed_ips.append(network)
            if peer.first_allowed_ips is None:
                peer.first_allowed_ips = lineno
        elif key == "AllowedMACs":
            for item in _split_list(value):
                try:
                    peer.allowed_macs.append(MacPrefix.parse(item))
                except InvalidMac as exc:
                    raise ConfigError(f"AllowedMACs: {exc}") from None
            if peer.first_allowed_macs is None:
                peer.first_allowed_macs = lineno
        elif key == "Endpoint":
            peer.values["endpoint"] = Endpoint.parse(value)
        elif key == "PersistentKeepalive":
            if value.lower() == "off":
                peer.values["persistent_keepalive"] = 0
            else:
                peer.values["persistent_keepalive"] = _parse_uint(value, 65535, key)

    # The end -------------------------------------------------------------------------------------

    def finish_peer(self) -> None:
        if self.section == _PEER and "public_key" not in self.peers[-1].values:
            raise self.error(self.peers[-1].lineno, "[Peer] has no PublicKey")

    def finish(self) -> Config:
        self.finish_peer()
        self.check_mode()
        lists = {name: tuple(values) for name, values in self.lists.items()}
        interface = InterfaceConfig(**self.interface, **lists)  # type: ignore[arg-type]
        peers = tuple(
            PeerConfig(
                **draft.values,  # type: ignore[arg-type]
                allowed_ips=tuple(draft.allowed_ips),
                allowed_macs=tuple(draft.allowed_macs),
            )
            for draft in self.peers
        )
        self.warn_about_shared_prefixes()
        return Config(interface, peers, tuple(self.warnings))

    def check_mode(self) -> None:
        """AllowedIPs belong to ``Mode = tun``; AllowedMACs and storm control to ``Mode = tap``."""
        tap = self.interface.get("mode") == "tap"
        for key, lineno in self.tap_only_lines.items():
            if not tap:
                raise self.error(
                    lineno,
                    f"{key} needs 'Mode = tap' in [Interface]: it sets the storm control of "
                    "the layer-2 switch (a minivpn extension); a tun interface floods nothing",
                )
        if self.interface.get("flood_rate") == 0 and "FloodBurst" in self.tap_only_lines:
            raise self.error(
                self.tap_only_lines["FloodBurst"],
                f"FloodBurst has no meaning with 'FloodRate = off' (line "
                f"{self.tap_only_lines['FloodRate']}): remove one of them",
            )
        for draft in self.peers:
            if tap and draft.first_allowed_ips is not None:
                raise self.error(
                    draft.first_allowed_ips,
                    f"AllowedIPs has no meaning with 'Mode = tap' (line {self.mode_line}): "
                    "frames are switched by MAC address; remove it (AllowedMACs limits the "
                    "source MAC addresses a peer may use)",
                )
            if not tap and draft.first_allowed_macs is not None:
                raise self.error(
                    draft.first_allowed_macs,
                    "AllowedMACs needs 'Mode = tap' in [Interface] (layer 2, a minivpn "
                    "extension); a tun interface routes IP packets by AllowedIPs",
                )

    def warn_about_shared_prefixes(self) -> None:
        owner: dict[IPNetwork, int] = {}
        for draft in self.peers:
            for network in dict.fromkeys(draft.allowed_ips):
                if network in owner:
                    self.warn(
                        draft.lineno,
                        f"AllowedIPs {network} is also in the [Peer] on line {owner[network]};"
                        " only this later peer gets it",
                    )
                owner[network] = draft.lineno


def _split_list(value: str) -> list[str]:
    items = [item for item in _LIST_SEPARATOR.split(value) if item]
    if not items:
        raise ConfigError("empty list")
    return items


def _parse_key(key_type: type[_KeyT], value: str, name: str) -> _KeyT:
    try:
        return key_type.from_base64(value)
    except InvalidKey as exc:
        # InvalidKey's message describes the problem without repeating the text.
        raise ConfigError(f"invalid {name}: {exc}") from None


def _parse_fwmark(value: str) -> int:
    if value.lower() == "off":
        return 0
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", value):
        mark = int(value, 16)
    elif _DIGITS.fullmatch(value):
        mark = int(value)
    else:
        mark = -1
    if not 0 <= mark <= 0xFFFFFFFF:
        raise ConfigError(
            f"FwMark must be off or a number from 0 to 0xffffffff, got {_show(value)}"
        )
    return mark


def _parse_table(value: str) -> str:
    lowered = value.lower()
    if lowered in ("off", "auto"):
        return lowered
    if _DIGITS.fullmatch(value):
        return str(_parse_uint(value, 0xFFFFFFFF, "Table"))
    if _TABLE_NAME.fullmatch(value):
        return value
    raise ConfigError(
        f"Table must be off, auto, a table number or a table name, got {_show(value)}"
    )


def _parse_interface_address(item: str) -> IPInterface:
    _, slash, length = item.partition("/")
    if slash and _DIGITS.fullmatch(length) is None:
        raise ConfigError(f"Address {_show(item)} has an invalid prefix length")
    try:
        return ipaddress.ip_interface(item)
    except ValueError:
        raise ConfigError(
            f"Address {_show(item)} is not an IP address with a prefix length"
        ) from None


def _parse_allowed_ip(item: str) -> tuple[IPNetwork, bool]:
    """Parse one AllowedIPs entry; also tell whether it had host bits set."""
    if not item:
        raise ConfigError("AllowedIPs has an empty entry (a stray comma?)")
    if item[0] in "+-":
        raise ConfigError(
            f"AllowedIPs entry {_show(item)}: incremental '+'/'-' entries are for the command line,"
            " not for configuration files"
        )
    address_text, slash, length_text = item.partition("/")
    try:
        if ":" in address_text:
            address: IPAddress = ipaddress.IPv6Address(address_text)
        else:
            address = ipaddress.IPv4Address(address_text)
    except ValueError:
        raise ConfigError(f"AllowedIPs entry {_show(item)} is not a valid IP prefix") from None
    if getattr(address, "scope_id", None):
        raise ConfigError(f"AllowedIPs entry {_show(item)} must not have a %zone")
    width = address.max_prefixlen
    length = (
        _parse_uint(length_text, width, f"the prefix length of {_show(item)}") if slash else width
    )
    network = ipaddress.ip_network((address, length), strict=False)
    return network, network.network_address != address


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Parse the text of a configuration file.

    Args:
        text: the whole file.
        filename: the name used in error messages and warnings.

    Returns:
        The configuration; :attr:`Config.warnings` lists non-fatal problems.

    Raises:
        ConfigError: the text is not a valid configuration; the error names the line.
    """
    parser = _Parser(filename)
    for lineno, raw in enumerate(text.split("\n"), start=1):
        parser.line(lineno, raw)
    return parser.finish()


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse a configuration file.

    This is the only function of the WireGuard core that touches the file system.  It warns
    (in :attr:`Config.warnings`) when a file holding a secret key is accessible by the group or
    by others, as wg-quick does.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8, or is not a valid configuration.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", filename) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (bad byte at offset {exc.start})", filename) from None
    config = parse_config(text, filename)
    has_secret = config.interface.private_key is not None or any(
        peer.preshared_key is not None for peer in config.peers
    )
    if has_secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = (
            f"{filename}: holds a secret key but is accessible by group or others"
            f" (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {filename}"
        )
        config = attrs.evolve(config, warnings=(warning, *config.warnings))
    return config


# --- writing --------------------------------------------------------------------------------------


def format_config(config: Config) -> str:
    """Write *config* in the file format, so that :func:`parse_config` reads it back equal.

    The order follows ``wg-quick save``: wg-quick's keys, then ``wg showconf``'s.

    Raises:
        ConfigError: a hook command contains a line break, which the format cannot hold.
    """
    interface = config.interface
    lines = ["[Interface]"]
    if interface.mode != "tun":
        lines.append(f"Mode = {interface.mode}")
    if interface.flood_rate is not None:
        lines.append(f"FloodRate = {interface.flood_rate or 'off'}")
    if interface.flood_burst is not None:
        lines.append(f"FloodBurst = {interface.flood_burst}")
    lines += [f"Address = {address}" for address in interface.addresses]
    dns = [str(server) for server in interface.dns] + list(interface.dns_search)
    if dns:
        lines.append(f"DNS = {', '.join(dns)}")
    if interface.mtu is not None:
        lines.append(f"MTU = {interface.mtu}")
    if interface.table is not None:
        lines.append(f"Table = {interface.table}")
    if interface.save_config:
        lines.append("SaveConfig = true")
    for key, attribute in _HOOKS.items():
        for command in getattr(interface, attribute):
            if "\n" in command or "\r" in command:
                raise ConfigError(f"a {key} command contains a line break")
            lines.append(f"{key} = {command}")
    if interface.listen_port is not None:
        lines.append(f"ListenPort = {interface.listen_port}")
    if interface.fwmark is not None:
        lines.append(f"FwMark = {hex(interface.fwmark) if interface.fwmark else 'off'}")
    if interface.private_key is not None:
        lines.append(f"PrivateKey = {interface.private_key.to_base64()}")
    for peer in config.peers:
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key.to_base64()}"]
        if peer.preshared_key is not None:
            lines.append(f"PresharedKey = {peer.preshared_key.to_base64()}")
        if peer.allowed_ips:
            lines.append(f"AllowedIPs = {', '.join(str(n) for n in peer.allowed_ips)}")
        if peer.allowed_macs:
            lines.append(f"AllowedMACs = {', '.join(str(m) for m in peer.allowed_macs)}")
        if peer.endpoint is not None:
            lines.append(f"Endpoint = {peer.endpoint}")
        if peer.persistent_keepalive is not None:
            keepalive = peer.persistent_keepalive
            lines.append(f"PersistentKeepalive = {keepalive if keepalive else 'off'}")
    return "\n".join(lines) + "\n"
