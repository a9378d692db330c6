"""Canonical peer addresses (protocol/address.py): one spelling per host, hostile text refused."""

from __future__ import annotations

import pytest
from keepmesh.protocol.address import (
    PeerAddress,
    canonical_address,
    format_address,
    parse_address,
)
from keepmesh.protocol.errors import ProtocolError

LONGEST = ".".join(["a" * 63] * 3) + "." + "b" * 61 + ":9"  # a 253-character name


@pytest.mark.parametrize("text, canon", [
    ("127.0.0.1:7000", "127.0.0.1:7000"),
    ("10.1.2.3:1", "10.1.2.3:1"),
    ("255.255.255.255:65535", "255.255.255.255:65535"),
    ("[::1]:7000", "[::1]:7000"),
    ("[0:0:0:0:0:0:0:0001]:7000", "[::1]:7000"),
    ("[2001:DB8::A]:443", "[2001:db8::a]:443"),
    ("localhost:7946", "localhost:7946"),
    ("Node-1.Example.COM:80", "node-1.example.com:80"),
    ("xn--bcher-kva.example:7000", "xn--bcher-kva.example:7000"),
    ("n0:7946", "n0:7946"),
    ("a" * 63 + ".b:1", "a" * 63 + ".b:1"),
    (LONGEST, LONGEST),
    ("1host.example:9", "1host.example:9"),
])
def test_valid_addresses_have_one_canonical_spelling(text: str, canon: str) -> None:
    assert canonical_address(text) == canon
    assert canonical_address(canon) == canon  # idempotent


@pytest.mark.parametrize("text, why", [
    ("a" * 64 + ".example:7000", "64-char label (crashed the resolver with UnicodeError)"),
    ("a" * 64 + ":7000", "64-char single label"),
    (".".join(["a" * 63] * 4) + ":9", "name longer than 253"),
    ("host:0", "port 0"),
    ("host:65536", "port too large"),
    ("host:-1", "negative port"),
    ("host:+80", "signed port"),
    ("host:080", "leading zero port"),
    ("host: 80", "space in port"),
    ("host:", "empty port"),
    ("host", "no port"),
    (":7000", "no host"),
    ("-host:1", "label starts with hyphen"),
    ("host-:1", "label ends with hyphen"),
    ("ho_st:1", "underscore"),
    ("ho st:1", "space"),
    ("a..b:1", "empty label"),
    ("host.:1", "trailing dot"),
    ("bücher.example:1", "non-ASCII"),
    ("127.1:7000", "short IPv4 form inet_aton would accept"),
    ("0x7f000001:7000", "hex IPv4 form"),
    ("0x7f.0x0.0x0.0x1:7000", "hex dotted form"),
    ("017700000001:7000", "octal/decimal integer form"),
    ("127.000.000.001:7000", "leading zeros in a dotted quad"),
    ("1.2.3.4.5:7000", "five parts"),
    ("host.123:7000", "all-numeric last label"),
    ("::1:7000", "IPv6 without brackets (ambiguous)"),
    ("[::1]7000", "no colon after bracket"),
    ("[::1:7000", "unclosed bracket"),
    ("[fe80::1%eth0]:7000", "zone id"),
    ("[1.2.3.4]:7000", "IPv4 in brackets"),
    ("x" * 300, "too long"),
])
def test_invalid_addresses_are_refused(text: str, why: str) -> None:
    with pytest.raises(ProtocolError):
        parse_address(text)


def test_non_string_refused() -> None:
    with pytest.raises(ProtocolError):
        parse_address(b"127.0.0.1:1")  # type: ignore[arg-type]


def test_listen_allows_port_zero_only_when_asked() -> None:
    assert parse_address("127.0.0.1:0", listen=True) == PeerAddress("127.0.0.1", 0, True)
    with pytest.raises(ProtocolError):
        parse_address("127.0.0.1:0")


def test_format_address_brackets_ipv6() -> None:
    assert format_address("::1", 7000) == "[::1]:7000"
    assert format_address("127.0.0.1", 7000) == "127.0.0.1:7000"
    assert format_address("LOCALHOST", 1) == "localhost:1"
    assert parse_address("[::1]:7").is_ip and not parse_address("h:7").is_ip
