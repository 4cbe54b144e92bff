"""Open the connection to a target: resolve names now (not at start-up), check, then dial.

Checks happen before any socket to the target exists. With an allowlist, a name may not lead to
a loopback, link-local (instance metadata), unspecified, multicast or reserved address unless that
exact address and port is itself on the allowlist: DNS answers are input too. Every address the
name resolves to is checked, and only those checked addresses are dialled (no second lookup).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nitro_attest.errors import TransportError
from nitro_attest.proxy.allowlist import Allowlist
from nitro_attest.proxy.hosts import Host, IPAddress, refused_for_names
from nitro_attest.wire.transport import Address

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
SockAddr = tuple[str, int] | tuple[int, int] | str
Dialer = Callable[[int, SockAddr], Awaitable[socket.socket]]


class DialError(TransportError):
    """No connection to the target; ``status`` is the HTTP status a CONNECT client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Dialled:
    sock: socket.socket
    address: str  # what was actually connected to (the resolved IP for names)


async def system_resolve(name: str, port: int) -> list[IPAddress]:
    """getaddrinfo in the loop's executor; distinct addresses in the resolver's order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(str(sockaddr[0]))
        if ip not in found:
            found.append(ip)
    return found


async def system_dial(family: int, sockaddr: SockAddr) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def dial_host(
    host: Host,
    port: int,
    *,
    allowlist: Allowlist | None,
    resolver: Resolver = system_resolve,
    dialer: Dialer = system_dial,
) -> Dialled:
    """Resolve (names only), check every address, dial them in order; the caller bounds time."""
    if host.ip is not None:
        candidates: Sequence[IPAddress] = [host.ip]
    else:
        try:
            candidates = await resolver(host.name, port)
        except OSError as exc:
            raise DialError(502, f"cannot resolve {host.name}: {exc.strerror or exc}") from None
        if not candidates:
            raise DialError(502, f"{host.name} has no address")
        if allowlist is not None:
            for ip in candidates:
                why = refused_for_names(ip)
                if why is not None and not allowlist.allows(Host(ip=ip), port):
                    raise DialError(
                        403, f"{host.name} resolves to {ip} ({why}), which is not on the allowlist"
                    )
    failures: list[str] = []
    for ip in candidates:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            sock = await dialer(family, (str(ip), port))
        except OSError as exc:
            failures.append(f"{ip}: {_errname(exc)}")
            continue
        return Dialled(sock, str(Host(ip=ip)) if host.ip is None else "")
    raise DialError(502, "connect failed: " + ", ".join(failures[:4]))


async def dial_address(target: Address, *, dialer: Dialer = system_dial) -> Dialled:
    """A fixed unix or vsock target (tcp targets go through ``dial_host``)."""
    try:
        sock = await dialer(target.family, target.sockaddr)
    except OSError as exc:
        raise DialError(502, f"connect failed: {_errname(exc)}") from None
    return Dialled(sock, "")


def _errname(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc) or type(exc).__name__
    return errno.errorcode.get(exc.errno, str(exc.errno))


def close_quietly(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
