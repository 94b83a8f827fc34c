"""Tests of the configuration file parser and writer (minivpn.wireguard.config)."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.docs import REPO_ROOT, parse_markdown

from minivpn.wireguard.config import (
    Config,
    ConfigError,
    Endpoint,
    InterfaceConfig,
    PeerConfig,
    format_config,
    load_config,
    parse_config,
)
from minivpn.wireguard.errors import WireGuardError
from minivpn.wireguard.keys import PresharedKey, PrivateKey, PublicKey

if TYPE_CHECKING:
    from pathlib import Path

# Fixed keys, so the expected values below are written independently of the parser.
PRIVATE = PrivateKey(bytes(range(1, 33)))
PEER1 = PublicKey(bytes(range(100, 132)))
PEER2 = PublicKey(bytes(range(200, 232)))
PSK = PresharedKey(bytes(range(50, 82)))


def error_of(text: str, filename: str = "wg0.conf") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, filename)
    return str(info.value)


def test_full_example() -> None:
    text = f"""\
# a comment line
[Interface]
PrivateKey = {PRIVATE.to_base64()}   # trailing comment
listenport=51820
FwMark = 0x1234
Address = 10.0.0.1/24, fd00::1/64
Address = 10.0.1.1
DNS = 10.0.0.53,fd00::53 example.com
MTU = 1420
Table = auto
PreUp = echo 'a # b' > /dev/null
PostDown = ip rule del table 1234
SaveConfig = TRUE

  [peer]
PublicKey = {PEER1.to_base64()}
PresharedKey = {PSK.to_base64()}
Allowed IPs = 10.0.0.2/32,   fd00::2/128
AllowedIPs = 10.9.0.0/16
Endpoint = [FD00::7]:51820
PersistentKeepalive = 25

[Peer]
PUBLICKEY = {PEER2.to_base64()}
Endpoint = vpn.example.com:443
PersistentKeepalive = off
"""
    config = parse_config(text)
    assert config == Config(
        InterfaceConfig(
            private_key=PRIVATE,
            listen_port=51820,
            fwmark=0x1234,
            addresses=(
                ipaddress.IPv4Interface("10.0.0.1/24"),
                ipaddress.IPv6Interface("fd00::1/64"),
                ipaddress.IPv4Interface("10.0.1.1/32"),
            ),
            dns=(ipaddress.IPv4Address("10.0.0.53"), ipaddress.IPv6Address("fd00::53")),
            dns_search=("example.com",),
            mtu=1420,
            table="auto",
            pre_up=("echo 'a # b' > /dev/null",),
            post_down=("ip rule del table 1234",),
            save_config=True,
        ),
        (
            PeerConfig(
                public_key=PEER1,
                preshared_key=PSK,
                allowed_ips=(
                    ipaddress.IPv4Network("10.0.0.2/32"),
                    ipaddress.IPv6Network("fd00::2/128"),
                    ipaddress.IPv4Network("10.9.0.0/16"),
                ),
                endpoint=Endpoint("fd00::7", 51820),
                persistent_keepalive=25,
            ),
            PeerConfig(
                public_key=PEER2,
                endpoint=Endpoint("vpn.example.com", 443),
                persistent_keepalive=0,
            ),
        ),
    )
    assert config.warnings == ()
    assert parse_config(format_config(config)) == config


def test_crlf_line_endings_parse_the_same() -> None:
    text = (
        f"[Interface]\nPrivateKey = {PRIVATE.to_base64()}\nAddress = 10.0.0.1/24\n"
        "PostUp = echo up\nDNS = 10.0.0.53\n"
        f"[Peer]\nPublicKey = {PEER1.to_base64()}\nEndpoint = 192.0.2.1:51820\n"
    )
    assert parse_config(text.replace("\n", "\r\n")) == parse_config(text)


def test_empty_text_is_an_empty_config() -> None:
    assert parse_config("") == Config()
    assert parse_config("\n# nothing\n   \n[Interface]\n") == Config()


def test_format_matches_wg_showconf_spelling() -> None:
    config = Config(
        InterfaceConfig(private_key=PRIVATE, listen_port=51820, fwmark=0x20),
        (
            PeerConfig(
                public_key=PEER1,
                allowed_ips=(
                    ipaddress.IPv4Network("10.0.0.0/24"),
                    ipaddress.IPv6Network("fd00::/64"),
                ),
                endpoint=Endpoint("198.51.100.2", 51820),
                persistent_keepalive=25,
            ),
        ),
    )
    assert format_config(config) == (
        "[Interface]\n"
        "ListenPort = 51820\n"
        "FwMark = 0x20\n"
        f"PrivateKey = {PRIVATE.to_base64()}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {PEER1.to_base64()}\n"
        "AllowedIPs = 10.0.0.0/24, fd00::/64\n"
        "Endpoint = 198.51.100.2:51820\n"
        "PersistentKeepalive = 25\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[Interface]\nPrivateKey = x\n[Foo]\n", "wg0.conf:2: invalid PrivateKey"),
        (
            "[Interface]\n[Wat]\n",
            "wg0.conf:2: unknown section [Wat]; expected [Interface] or [Peer]",
        ),
        ("[Interface\n", "wg0.conf:1: unknown section header; expected [Interface] or [Peer]"),
        ("\n\n[Peer]\nPublicKy = x\n", "wg0.conf:4: invalid key 'PublicKy' in [Peer]"),
        ("[Interface]\nFoo = 1\n", "wg0.conf:2: invalid key 'Foo' in [Interface]"),
        ("ListenPort = 1\n", "wg0.conf:1: key 'ListenPort' outside any section; put it under"),
        ("Bar = 1\n", "wg0.conf:1: invalid key 'Bar' outside any section"),
        ("[Interface]\nListenPort 51820\n", "wg0.conf:2: expected 'Key = Value' or a [Section]"),
        ("[Interface]\n= 5\n", "wg0.conf:2: missing key before '='"),
        ("[Interface]\nListenPort =\n", "wg0.conf:2: 'ListenPort' has no value"),
        ("[Interface]\nListenPort = abc\n", "wg0.conf:2: ListenPort must be a number from 0"),
        ("[Interface]\nListenPort = 65536\n", "wg0.conf:2: ListenPort must be a number from 0"),
        ("[Interface]\nListenPort = -1\n", "wg0.conf:2: ListenPort must be a number"),
        ("[Interface]\nFwMark = 0x1ffffffff\n", "wg0.conf:2: FwMark must be off or a number"),
        ("[Interface]\nFwMark = on\n", "wg0.conf:2: FwMark must be off or a number"),
        ("[Interface]\nMTU = 20\n", "wg0.conf:2: MTU must be a number from 68 to 65535"),
        ("[Interface]\nTable = a/b\n", "wg0.conf:2: Table must be off, auto,"),
        ("[Interface]\nSaveConfig = yes\n", "wg0.conf:2: SaveConfig must be true or false"),
        ("[Interface]\nAddress = 10.0.0.1/33\n", "wg0.conf:2: Address '10.0.0.1/33' is not"),
        ("[Interface]\nAddress = 10.0.0.1/+3\n", "wg0.conf:2: Address '10.0.0.1/+3' has an"),
        ("[Interface]\nDNS = 10.0.0.300\n", "wg0.conf:2: DNS server '10.0.0.300' is not an IP"),
        ("[Interface]\nDNS = bad!name\n", "wg0.conf:2: DNS entry 'bad!name' is neither"),
        (
            "[Peer]\nAddress = 10.0.0.1/24\n",
            "wg0.conf:2: key 'Address' belongs in [Interface], not",
        ),
        ("[Peer]\nDNS = 10.0.0.1\n", "wg0.conf:2: key 'DNS' belongs in [Interface], not in [Peer]"),
        ("[Interface]\nEndpoint = 1.2.3.4:5\n", "wg0.conf:2: key 'Endpoint' belongs in [Peer]"),
        (
            f"[Interface]\nPrivateKey = {PRIVATE.to_base64()}\n\n"
            f"privatekey = {PRIVATE.to_base64()}",
            "wg0.conf:4: duplicate 'PrivateKey' in [Interface] (first given on line 2)",
        ),
        ("[Interface]\n[Peer]\n", "wg0.conf:2: [Peer] has no PublicKey"),
        (
            f"[Peer]\nPublicKey = {PEER1.to_base64()}\n[Peer]\nAllowedIPs = 10.0.0.0/8\n",
            "wg0.conf:3: [Peer] has no PublicKey",
        ),
        (
            f"[Peer]\nPublicKey = {PEER1.to_base64()}\n\n[Peer]\nPublicKey = {PEER1.to_base64()}\n",
            "wg0.conf:5: duplicate peer: the [Peer] on line 1 has the same PublicKey",
        ),
        ("[Interface]\n[Interface]\n", "wg0.conf:2: second [Interface] section (the first is on"),
        ("[Peer]\nAllowedIPs = 10.0.0.0/8,\n", "wg0.conf:2: AllowedIPs has an empty entry"),
        ("[Peer]\nAllowedIPs = 10.0.0.0/33\n", "wg0.conf:2: the prefix length of '10.0.0.0/33'"),
        ("[Peer]\nAllowedIPs = 10.0.0/8\n", "wg0.conf:2: AllowedIPs entry '10.0.0/8' is not a"),
        ("[Peer]\nAllowedIPs = fd00::/129\n", "wg0.conf:2: the prefix length of 'fd00::/129'"),
        ("[Peer]\nAllowedIPs = -10.0.0.0/8\n", "wg0.conf:2: AllowedIPs entry '-10.0.0.0/8':"),
        ("[Peer]\nEndpoint = 1.2.3.4\n", "wg0.conf:2: Endpoint '1.2.3.4' needs a host and a port"),
        ("[Peer]\nEndpoint = 1.2.3.4:0\n", "wg0.conf:2: the port of Endpoint '1.2.3.4:0' must"),
        ("[Peer]\nEndpoint = 1.2.3.4:http\n", "wg0.conf:2: the port of Endpoint"),
        (
            "[Peer]\nEndpoint = fd00::1:51820\n",
            "wg0.conf:2: Endpoint 'fd00::1:51820': write an IPv6",
        ),
        ("[Peer]\nEndpoint = [fd00::1:51820\n", "wg0.conf:2: Endpoint '[fd00::1:51820' has '['"),
        (
            "[Peer]\nEndpoint = [fd00::1]51820\n",
            "wg0.conf:2: Endpoint '[fd00::1]51820' needs a port",
        ),
        (
            "[Peer]\nEndpoint = [1.2.3.4]:5\n",
            "wg0.conf:2: Endpoint '[1.2.3.4]:5': '1.2.3.4' is not an",
        ),
        (
            "[Peer]\nEndpoint = 1.2.3.256:5\n",
            "wg0.conf:2: Endpoint '1.2.3.256:5': '1.2.3.256' is not",
        ),
        (
            "[Peer]\nEndpoint = bad_host!:5\n",
            "wg0.conf:2: Endpoint 'bad_host!:5': 'bad_host!' is not",
        ),
        (
            "[Peer]\nPersistentKeepalive = 70000\n",
            "wg0.conf:2: PersistentKeepalive must be a number",
        ),
        (
            "[Peer]\nPublicKey = AAAA\n",
            "wg0.conf:2: invalid PublicKey: public key must be 32 bytes",
        ),
    ],
)
def test_errors_name_the_line_and_the_problem(text: str, message: str) -> None:
    assert error_of(text).startswith(message)


def test_error_attributes_and_type() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[Peer]\nPublicKy = x\n", "wg0.conf")
    error = info.value
    assert isinstance(error, WireGuardError)
    assert (error.filename, error.lineno) == ("wg0.conf", 2)
    assert str(error) == "wg0.conf:2: invalid key 'PublicKy' in [Peer] (did you mean 'PublicKey'?)"


def test_messages_never_show_key_material() -> None:
    secret = PRIVATE.to_base64()
    broken = secret[:10] + "!" + secret[11:]  # one character off
    cases = [
        f"[Interface]\nPrivateKey = {broken}\n",
        f"[Interface]\nPrivateKey = {secret[:-2]}\n",  # truncated
        f"[Interface]\n{secret}\n",  # a key pasted on a line of its own ends with '='
        f"[Interface]\nListenPort = {secret}\n",  # in the wrong place
        f"[{secret}]\n",
        f"[Peer]\nEndpoint = {secret}:5\n",
        f"[Peer]\nAllowedIPs = {secret}\n",
    ]
    for text in cases:
        message = error_of(text)
        assert secret[:20] not in message, message
        assert secret[20:40] not in message, message


def test_a_key_pasted_as_endpoint_is_refused_unshown_and_never_a_host_name() -> None:
    for host in (PRIVATE.to_hex(), PRIVATE.to_base64().rstrip("="), "a" * 40):
        message = error_of(f"[Peer]\nEndpoint = {host}:51820\n")
        assert message.startswith("wg0.conf:2: Endpoint <"), message
        assert "the host looks like a key" in message, message
        assert host[:16] not in message, message
        with pytest.raises(ConfigError):
            Endpoint.parse(f"{host}:51820")  # so it never reaches the resolver
    # Ordinary names, even long ones made of short labels, are host names.
    long_name = "a-rather-long-host-name-for-a-vpn-server.eu-west.example.org"
    assert Endpoint.parse(f"{long_name}:51820") == Endpoint(long_name, 51820)
    assert Endpoint.parse("a" * 39 + ".example:1").host == "a" * 39 + ".example"


def test_hooks_keep_hash_signs_and_everything_else_drops_comments() -> None:
    config = parse_config(
        "[Interface]\n"
        "PostUp = iptables -A FORWARD -i %i -j ACCEPT; echo '#1'  \n"
        "ListenPort = 5 # the port\n"
        "# PostDown = commented out\n"
    )
    assert config.interface.post_up == ("iptables -A FORWARD -i %i -j ACCEPT; echo '#1'",)
    assert config.interface.post_down == ()
    assert config.interface.listen_port == 5


def test_values_and_spellings() -> None:
    config = parse_config(
        "[Interface]\nFwMark = off\nTable = 1234\nListenPort = 0\n"
        f"[Peer]\nPublicKey = {PEER1.to_base64()}\nAllowedIPs = 0.0.0.0/0, ::/0, 10.1.2.3\n"
        "Endpoint = 198.51.100.1:51820\nPersistentKeepalive = 0\n"
    )
    assert config.interface.fwmark == 0
    assert config.interface.table == "1234"
    assert config.interface.listen_port == 0
    peer = config.peers[0]
    assert [str(n) for n in peer.allowed_ips] == ["0.0.0.0/0", "::/0", "10.1.2.3/32"]
    assert peer.endpoint == Endpoint("198.51.100.1", 51820)
    assert peer.endpoint.ip == ipaddress.IPv4Address("198.51.100.1")
    assert Endpoint("vpn.example.com", 1).ip is None
    assert peer.persistent_keepalive == 0


def test_warnings() -> None:
    config = parse_config(
        f"[Peer]\nPublicKey = {PEER1.to_base64()}\nAllowedIPs = 10.0.0.7/24\n"
        f"[Peer]\nPublicKey = {PEER2.to_base64()}\nAllowedIPs = 10.0.0.0/24\n",
        "wg0.conf",
    )
    assert config.peers[0].allowed_ips == (ipaddress.IPv4Network("10.0.0.0/24"),)
    assert config.warnings == (
        "wg0.conf:3: AllowedIPs entry '10.0.0.7/24' has host bits set; using 10.0.0.0/24",
        "wg0.conf:4: AllowedIPs 10.0.0.0/24 is also in the [Peer] on line 1;"
        " only this later peer gets it",
    )
    # Warnings do not take part in equality.
    assert config == Config(config.interface, config.peers)


def test_endpoint_parse_and_str() -> None:
    assert Endpoint.parse("[fd00:0::1]:51820") == Endpoint("fd00::1", 51820)
    assert str(Endpoint("fd00::1", 51820)) == "[fd00::1]:51820"
    assert str(Endpoint("192.0.2.1", 1)) == "192.0.2.1:1"
    assert Endpoint.parse("Host-1.example:65535") == Endpoint("Host-1.example", 65535)
    with pytest.raises(ConfigError) as info:
        Endpoint.parse("nope")
    assert str(info.value).startswith("Endpoint 'nope' needs a host and a port")


def test_load_config_warns_about_modes(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIVATE.to_base64()}\n")
    os.chmod(path, 0o600)
    assert load_config(path).warnings == ()
    os.chmod(path, 0o640)
    (warning,) = load_config(path).warnings
    assert str(path) in warning
    assert "mode 0640" in warning
    assert PRIVATE.to_base64() not in warning
    # Without a secret there is nothing to protect.
    path.write_text("[Interface]\nListenPort = 1\n")
    assert load_config(path).warnings == ()


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.conf")
    assert str(info.value).startswith(f"{tmp_path / 'missing.conf'}: cannot read the file")
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"[Interface]\n\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    typo = tmp_path / "wg7.conf"
    typo.write_text("[Interface]\n\n\nListenPort = x\n")
    with pytest.raises(ConfigError) as info:
        load_config(typo)
    assert info.value.lineno == 4
    assert str(info.value).startswith(f"{typo}:4: ListenPort must be")


def test_format_refuses_multiline_hooks() -> None:
    with pytest.raises(ConfigError, match="line break"):
        format_config(Config(InterfaceConfig(post_up=("a\nb",))))


# --- properties -----------------------------------------------------------------------------------

_fragments = st.sampled_from(
    [
        "[Interface]",
        "[Peer]",
        "[peer ]",
        "PrivateKey = ",
        "PublicKey=",
        "PresharedKey = ",
        "AllowedIPs = ",
        "Endpoint = ",
        "ListenPort = ",
        "FwMark = ",
        "PersistentKeepalive = ",
        "Address = ",
        "DNS = ",
        "MTU = ",
        "Table = ",
        "PostUp = ",
        "SaveConfig = ",
        PRIVATE.to_base64(),
        PEER1.to_base64(),
        "10.0.0.1/24",
        "fd00::/64",
        "[fd00::1]:51820",
        "1.2.3.4:5",
        "0x10",
        "off",
        "true",
        ",",
        "#",
        "=",
        "\n",
        " ",
        "[",
        "]",
        ":",
        "/",
        "%",
    ]
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.lists(st.one_of(_fragments, st.text(max_size=5))).map("".join)))
def test_arbitrary_text_only_raises_config_error(text: str) -> None:
    try:
        config = parse_config(text)
    except ConfigError as exc:
        lineno = exc.lineno
        assert lineno is not None
        return
    # Whatever parsed must also survive a round trip.
    assert parse_config(format_config(config)) == config


_keys32 = st.binary(min_size=32, max_size=32)
_ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
_label = st.from_regex(r"[a-z]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=3).map(".".join)
_hook = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"), min_size=1
).filter(lambda s: s == s.strip(" \t\n\v\f\r") and s != "")
_networks = st.one_of(
    st.tuples(_ipv4, st.integers(0, 32)).map(lambda t: ipaddress.ip_network(t, strict=False)),
    st.tuples(_ipv6, st.integers(0, 128)).map(lambda t: ipaddress.ip_network(t, strict=False)),
)
_interfaces = st.one_of(
    st.tuples(_ipv4, st.integers(0, 32)).map(ipaddress.IPv4Interface),
    st.tuples(_ipv6, st.integers(0, 128)).map(ipaddress.IPv6Interface),
)
_endpoints = st.builds(
    Endpoint,
    st.one_of(_ipv4.map(str), _ipv6.map(str), _domain),
    st.integers(1, 65535),
)
_tables = st.one_of(
    st.sampled_from(["off", "auto"]),
    st.integers(0, 2**32 - 1).map(str),
    st.from_regex(r"[a-z_][a-z0-9_.-]{0,10}", fullmatch=True).filter(
        lambda s: s not in ("off", "auto")
    ),
)


def _optional(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.none(), strategy)


_interface_configs = st.builds(
    InterfaceConfig,
    private_key=_optional(_keys32.map(PrivateKey)),
    listen_port=_optional(st.integers(0, 65535)),
    fwmark=_optional(st.integers(0, 2**32 - 1)),
    addresses=st.lists(_interfaces, max_size=3).map(tuple),
    dns=st.lists(st.one_of(_ipv4, _ipv6), max_size=3).map(tuple),
    dns_search=st.lists(_domain, max_size=2).map(tuple),
    mtu=_optional(st.integers(68, 65535)),
    table=_optional(_tables),
    pre_up=st.lists(_hook, max_size=2).map(tuple),
    post_up=st.lists(_hook, max_size=2).map(tuple),
    pre_down=st.lists(_hook, max_size=2).map(tuple),
    post_down=st.lists(_hook, max_size=2).map(tuple),
    save_config=st.booleans(),
)


@st.composite
def _configs(draw: st.DrawFn) -> Config:
    public_keys = draw(st.lists(_keys32, unique=True, max_size=4))
    peers = tuple(
        PeerConfig(
            public_key=PublicKey(raw),
            preshared_key=draw(_optional(_keys32.map(PresharedKey))),  # type: ignore[arg-type]
            allowed_ips=tuple(draw(st.lists(_networks, max_size=4))),
            endpoint=draw(_optional(_endpoints)),  # type: ignore[arg-type]
            persistent_keepalive=draw(_optional(st.integers(0, 65535))),  # type: ignore[arg-type]
        )
        for raw in public_keys
    )
    return Config(draw(_interface_configs), peers)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(config=_configs())
def test_generated_configs_round_trip(config: Config) -> None:
    text = format_config(config)
    assert parse_config(text) == config
    assert format_config(parse_config(text)) == text


def test_the_example_in_docs_vpn_md_parses() -> None:
    """docs/vpn.md's wg0.conf, with its ``<...>`` placeholders filled in, means what it says."""
    (block,) = [
        block
        for block in parse_markdown(REPO_ROOT / "docs" / "vpn.md")
        if "test_the_example_in_docs_vpn_md_parses" in (block.directive("checked by") or "")
    ]
    values = {
        "PrivateKey": PRIVATE.to_base64(),
        "PublicKey": PEER1.to_base64(),
        "PresharedKey": PSK.to_base64(),
    }
    text = re.sub(
        r"^(\w+) = <[^>]*>", lambda m: f"{m[1]} = {values[m[1]]}", block.text, flags=re.MULTILINE
    )
    assert "<" not in text, text
    config = parse_config(text, "wg0.conf")
    assert config.warnings == ()
    interface = config.interface
    assert interface.private_key == PRIVATE
    assert interface.listen_port == 51820
    assert interface.addresses == (
        ipaddress.ip_interface("10.99.0.1/24"),
        ipaddress.ip_interface("fd00:99::1/64"),
    )
    assert interface.mtu == 1420
    (peer,) = config.peers
    assert (peer.public_key, peer.preshared_key) == (PEER1, PSK)
    assert peer.allowed_ips == (
        ipaddress.ip_network("10.99.0.2/32"),
        ipaddress.ip_network("fd00:99::2/128"),
    )
    assert peer.endpoint == Endpoint("vpn.example.net", 51820)
    assert peer.persistent_keepalive == 25
