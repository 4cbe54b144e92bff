"""Host syntax shared by the allowlist and CONNECT, and which resolved addresses a name may reach.

Strict on purpose. An IP literal is what :mod:`ipaddress` accepts (dotted decimal without leading
zeros, or IPv6 without a zone); anything else must be a host name of letters, digits and hyphens
whose last label is not numeric. That rules out the forms ``inet_aton`` would quietly turn into an
address (``2130706433``, ``0x7f.1``, ``127.1``, ``010.0.0.1``), so a string the allowlist calls a
name can never be dialled as some other IP.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from nitro_attest.errors import FormatError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")
_MAX_NAME = 253

# Reached by a name only if the allowlist lists the address itself: a name that resolves here is
# refused (a poisoned or careless DNS answer must not open the parent's own services).
_AWS_INSTANCE_SERVICES = ipaddress.ip_network("fd00:ec2::/32")  # IPv6 metadata, DNS, time
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # DNS64 answers embed the IPv4 address they reach


class HostSyntaxError(FormatError):
    """Not an IP literal nor a host name; the message says why (no untrusted bytes in it)."""


@dataclass(frozen=True, slots=True)
class Host:
    """A validated host: exactly one of ``ip`` (a literal) and ``name`` (lower-case) is set."""

    ip: IPAddress | None = None
    name: str = ""

    def __str__(self) -> str:
        if self.ip is None:
            return self.name
        return f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)


def parse_host(text: str) -> Host:
    """Parse an IP literal (IPv6 without brackets) or a host name."""
    if not text:
        raise HostSyntaxError("empty host")
    if not text.isascii() or not text.isprintable():
        raise HostSyntaxError("host has non-ASCII or control characters")
    if "%" in text:
        raise HostSyntaxError("IPv6 zone identifiers are not accepted")
    try:
        return Host(ip=ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower()
    if len(name) > _MAX_NAME:
        raise HostSyntaxError(f"host name longer than {_MAX_NAME} characters")
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise HostSyntaxError(
            "not an IP address nor a host name (letters, digits, hyphens and dots only)"
        )
    if _NUMERIC_LABEL.match(labels[-1]):
        raise HostSyntaxError("numeric host that is not a plain IP address")
    return Host(name=name)


def refused_for_names(ip: IPAddress) -> str | None:
    """Why a name may not resolve to ``ip`` (None if it may): loopback, metadata and the like."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return refused_for_names(ip.ipv4_mapped)
        if ip in _NAT64:
            return refused_for_names(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local or ip in _AWS_INSTANCE_SERVICES:
        return "link-local or instance metadata"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved or ip == ipaddress.IPv4Address("255.255.255.255"):
        return "reserved"
    return None
