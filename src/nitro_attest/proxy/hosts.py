"""Which resolved addresses a host name may reach (the syntax of hosts is ``codec.hosts``)."""

from __future__ import annotations

import ipaddress

from nitro_attest.codec.hosts import Host, HostSyntaxError, IPAddress, parse_host

__all__ = ["Host", "HostSyntaxError", "IPAddress", "parse_host", "refused_for_names"]

# Reached by a name only if the allowlist lists the address itself: a name that resolves here is
# refused (a poisoned or careless DNS answer must not open the parent's own services).
_AWS_INSTANCE_SERVICES = ipaddress.ip_network("fd00:ec2::/32")  # IPv6 metadata, DNS, time
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # DNS64 answers embed the IPv4 address they reach
# RFC 8215's local-use NAT64 prefix: where the IPv4 address sits depends on the prefix length the
# operator chose (/48../96, RFC 6052), so the address it reaches cannot be told: refused whole.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def refused_for_names(ip: IPAddress) -> str | None:
    """Why a name may not resolve to ``ip`` (None if it may): loopback, metadata and the like."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return refused_for_names(ip.ipv4_mapped)
        if ip in _NAT64:
            return refused_for_names(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _NAT64_LOCAL:
            return "local-use NAT64 (the IPv4 address it reaches cannot be told)"
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
