"""Host syntax shared by the proxy's allowlist, CONNECT (both ends) and clients that dial a name.

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
