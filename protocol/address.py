"""Canonical peer addresses: the one parser for every HOST:PORT keepmesh dials.

Why one parser, at the edge: an address that came from the network (a
`swim.ping_req` target, a node record, a push-pull entry, a join request) is
handed to name resolution and to dial de-duplication. Python's resolver
raises `UnicodeError` on a 64-character DNS label (that crashed the dialler),
and `getaddrinfo` accepts many spellings of one host (`127.1`, `0x7f000001`,
`LOCALHOST`, `[::0001]`), which defeated de-duplication (31x amplification
toward a third party). So an address is parsed once, into one canonical
spelling, and everything after that compares canonical strings.

Accepted (specs/membership.md, "Addresses"):
- `A.B.C.D:PORT` - an IPv4 literal in dotted-quad form, no leading zeros;
- `[V6]:PORT` - an IPv6 literal in brackets, no zone id; canonical form is
  Python's compressed lowercase `ipaddress` text;
- `NAME:PORT` - a DNS host name: ASCII letters, digits and `-` (LDH), labels
  1..63 characters not starting or ending with `-`, separated by single dots,
  total <= 253 characters, no trailing dot, last label not all digits, and
  not a numeric form that `inet_aton` would read as an IPv4 address;
  canonical form is lowercase;
- `PORT` is 1..65535 written in decimal, without sign or leading zeros.
Anything else raises `ProtocolError` with a one-line reason.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import ProtocolError

MAX_HOST_NAME = 253
MAX_LABEL = 63
# "[" + 39-char IPv6 + "]" fits easily; a 253-char name + ":65535" is the longest text.
MAX_ADDRESS_TEXT = MAX_HOST_NAME + 6

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
# What inet_aton accepts besides dotted quads: 1-4 parts, each decimal, octal or hex.
_NUMERIC_PART = r"(?:0x[0-9a-f]*|[0-9]+)"
_INET_ATON = re.compile(rf"{_NUMERIC_PART}(?:\.{_NUMERIC_PART}){{0,3}}")


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A parsed, canonical address; `str()` gives the one spelling used everywhere."""

    host: str       # IPv4/IPv6 literal (no brackets) or lowercase DNS name
    port: int
    is_ip: bool

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _reason(text: str, why: str) -> ProtocolError:
    return ProtocolError(f"address {text[:80]!r}: {why}")


def _ip_literal(text: str, host: str,
                kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], why: str) -> str:
    try:
        return str(kind(host))
    except ValueError:
        raise _reason(text, why) from None


def _host_name(text: str, host: str) -> str:
    if len(host) > MAX_HOST_NAME:
        raise _reason(text, f"host name longer than {MAX_HOST_NAME} characters")
    name = host.lower()
    labels = name.split(".")
    for label in labels:
        if not label:
            raise _reason(text, "empty DNS label")
        if len(label) > MAX_LABEL:
            raise _reason(text, f"DNS label longer than {MAX_LABEL} characters")
        if not _LABEL.fullmatch(label):
            raise _reason(text, "DNS label is not letters, digits and inner hyphens")
    if labels[-1].isdigit() or _INET_ATON.fullmatch(name):
        raise _reason(text, "numeric host that is not a dotted-quad IPv4 literal")
    return name


def parse_address(text: str, *, listen: bool = False) -> PeerAddress:
    """Parse HOST:PORT into its canonical form; ProtocolError on anything else.

    `listen=True` also allows port 0 (bind to any free port); never for dialling."""
    if not isinstance(text, str):
        raise ProtocolError("address must be a string")
    if len(text) > MAX_ADDRESS_TEXT:
        raise _reason(text, f"longer than {MAX_ADDRESS_TEXT} characters")
    if not text.isascii():
        raise _reason(text, "not ASCII (use the punycode form of the name)")
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1:close + 2] != ":":
            raise _reason(text, "IPv6 literal must be written [ADDRESS]:PORT")
        host, port = text[1:close], text[close + 2:]
        if "%" in host:
            raise _reason(text, "IPv6 zone ids are not dialable addresses")
        canon, is_ip = _ip_literal(text, host, ipaddress.IPv6Address, "not an IPv6 literal"), True
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise _reason(text, "not HOST:PORT")
        if ":" in host:
            raise _reason(text, "IPv6 literal must be written [ADDRESS]:PORT")
        if all(c in "0123456789." for c in host):
            canon = _ip_literal(text, host, ipaddress.IPv4Address, "not a dotted-quad IPv4 literal")
            is_ip = True
        else:
            canon = _host_name(text, host)
            is_ip = False
    if listen and port == "0":
        return PeerAddress(canon, 0, is_ip)
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise _reason(text, "port must be a decimal number 1..65535")
    return PeerAddress(canon, int(port), is_ip)


def canonical_address(text: str) -> str:
    """The one spelling of `text` (ProtocolError if it is not a valid address)."""
    return str(parse_address(text))


def format_address(host: str, port: int) -> str:
    """Canonical text for a (host, port) pair, e.g. a socket's bound address."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return canonical_address(f"{host}:{port}")
