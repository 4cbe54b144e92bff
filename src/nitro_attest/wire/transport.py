"""Addresses and sockets for vsock://CID:PORT, tcp://HOST:PORT and unix:///path.

The same server and client run inside a real enclave over vsock and locally over TCP or a Unix
socket. Parsing is pure; ``connect`` (blocking, for the client) and ``start_server`` (asyncio, for
the enclave) are the only two places that open sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from nitro_attest.errors import ConfigurationError

# vsock constants (linux/vm_sockets.h). CPython exports only some of them, so define them all.
AF_VSOCK = 40
VMADDR_CID_HYPERVISOR = 0
VMADDR_CID_LOCAL = 1
VMADDR_CID_HOST = 2
VMADDR_CID_PARENT = 3  # the parent instance, seen from inside a Nitro Enclave
VMADDR_CID_ANY = 0xFFFFFFFF
VMADDR_PORT_ANY = 0xFFFFFFFF
_U32_MAX = 0xFFFFFFFF
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL

Scheme = Literal["vsock", "tcp", "unix"]
Role = Literal["connect", "listen"]


class AddressError(ConfigurationError):
    """A malformed or unusable address; the message is one line and names the address."""


@dataclass(frozen=True, slots=True)
class Address:
    scheme: Scheme
    host: str = ""  # tcp only
    port: int = 0  # tcp and vsock
    cid: int = 0  # vsock only
    path: str = ""  # unix only

    @property
    def family(self) -> int:
        """The socket family a socket for this address is created with."""
        if self.scheme == "vsock":
            return AF_VSOCK
        if self.scheme == "unix":
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def sockaddr(self) -> tuple[int, int] | tuple[str, int] | str:
        """The address argument for bind() / connect()."""
        if self.scheme == "vsock":
            return (self.cid, self.port)
        if self.scheme == "unix":
            return self.path
        return (self.host, self.port)

    def __str__(self) -> str:
        if self.scheme == "vsock":
            cid = "any" if self.cid == VMADDR_CID_ANY else str(self.cid)
            return f"vsock://{cid}:{self.port}"
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def _int(text: str, what: str, address: str, hi: int) -> int:
    if not text.isascii() or not text.isdigit():
        raise AddressError(f"{address}: {what} {text!r} is not a decimal number")
    value = int(text)
    if value > hi:
        raise AddressError(f"{address}: {what} {value} is out of range (0..{hi})")
    return value


def parse_address(text: str, *, role: Role = "connect") -> Address:
    """Parse ``vsock://CID:PORT``, ``tcp://HOST:PORT`` or ``unix:///path`` for connect or listen.

    vsock: listening takes ``any`` (or a number) as CID; connecting needs an enclave CID (>= 4)
    or the parent (3); 0, 1, 2 and ``any`` are refused because a client never means them here.
    """
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise AddressError(f"{text!r}: expected vsock://CID:PORT, tcp://HOST:PORT or unix:///path")
    scheme = scheme.lower()
    if scheme == "unix":
        return _parse_unix(text, rest)
    if scheme == "tcp":
        return _parse_tcp(text, rest, role)
    if scheme == "vsock":
        return _parse_vsock(text, rest, role)
    raise AddressError(f"{text}: unknown scheme {scheme!r} (use vsock, tcp or unix)")


def _parse_unix(text: str, path: str) -> Address:
    if not path:
        raise AddressError(f"{text}: empty socket path (use unix:///absolute/path)")
    if "\0" in path:
        raise AddressError(f"{text}: NUL byte in socket path")
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise AddressError(f"{text}: socket path longer than {_UNIX_PATH_MAX} bytes")
    return Address("unix", path=path)


def _split_host_port(text: str, rest: str) -> tuple[str, str]:
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise AddressError(f"{text}: expected [IPv6]:PORT")
        return host, tail[1:]
    host, colon, port = rest.rpartition(":")
    if not colon:
        raise AddressError(f"{text}: missing :PORT")
    if ":" in host:
        raise AddressError(f"{text}: put an IPv6 host in brackets, e.g. tcp://[::1]:5005")
    return host, port


def _parse_tcp(text: str, rest: str, role: Role) -> Address:
    host, port_text = _split_host_port(text, rest)
    if not host:
        raise AddressError(f"{text}: missing host")
    port = _int(port_text, "port", text, 0xFFFF)
    if port == 0 and role == "connect":
        raise AddressError(f"{text}: cannot connect to port 0")
    return Address("tcp", host=host, port=port)


def _parse_vsock(text: str, rest: str, role: Role) -> Address:
    cid_text, colon, port_text = rest.partition(":")
    if not colon:
        raise AddressError(f"{text}: expected vsock://CID:PORT")
    port = _int(port_text, "port", text, _U32_MAX)
    cid = VMADDR_CID_ANY if cid_text.lower() == "any" else _int(cid_text, "CID", text, _U32_MAX)
    if role == "connect":
        if cid == VMADDR_CID_ANY:
            raise AddressError(f"{text}: 'any' is for listening; connect to the enclave's CID")
        if cid < VMADDR_CID_PARENT:
            raise AddressError(
                f"{text}: CID {cid} is reserved (0 hypervisor, 1 local, 2 host); enclave CIDs "
                "are 4 and above (see nitro-cli describe-enclaves), the parent is 3"
            )
        if port == VMADDR_PORT_ANY:
            raise AddressError(f"{text}: cannot connect to the wildcard port")
    return Address("vsock", cid=cid, port=port)


# --- sockets ------------------------------------------------------------------------------------


def connect(address: Address, *, timeout: float) -> socket.socket:
    """Open a blocking stream socket to ``address`` with ``timeout`` on connect and every recv."""
    if address.scheme == "tcp":
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    else:
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address.sockaddr)
        except BaseException:
            sock.close()
            raise
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressError(f"unix://{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        raise
    finally:
        probe.close()
    raise AddressError(f"unix://{path}: another server is already listening there")


DEFAULT_SOCKET_MODE = 0o600  # a Unix socket is for its owner unless widened on purpose
LISTEN_BACKLOG = socket.SOMAXCONN


def listening_socket(
    address: Address, *, backlog: int = LISTEN_BACKLOG, socket_mode: int = DEFAULT_SOCKET_MODE
) -> socket.socket:
    """Create, bind and listen a non-blocking socket for ``address``.

    A Unix socket gets ``socket_mode`` whatever the umask: it is set after bind() and before
    listen(), so nobody can connect while it still has the umask's mode.
    """
    if address.scheme == "unix":
        _remove_stale_unix_socket(address.path)
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        if address.scheme == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address.sockaddr)
        if address.scheme == "unix":
            _restrict_unix_socket(address.path, socket_mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _restrict_unix_socket(path: str, mode: int) -> None:
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        raise AddressError(f"unix://{path}: replaced by something else while being created")
    os.chmod(path, mode)


def bound_address(address: Address, sock: socket.socket) -> Address:
    """The address actually bound (resolves port 0 to the port the kernel chose)."""
    if address.scheme == "unix":
        return address
    name = sock.getsockname()
    if address.scheme == "vsock":
        return Address("vsock", cid=address.cid, port=int(name[1]))
    return Address("tcp", host=address.host, port=int(name[1]))


async def start_server(
    address: Address,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    backlog: int = LISTEN_BACKLOG,
    accept_batch: int = 128,
    socket_mode: int = DEFAULT_SOCKET_MODE,
) -> tuple[asyncio.Server, Address]:
    """Start an asyncio server on ``address``; return it with the address it is bound to.

    asyncio uses its ``backlog`` argument both for listen() and as the number of connections
    accepted per wake-up; we want a deep kernel queue but small accept batches, so the socket is
    listened again with ``backlog`` once asyncio has set it up.
    """
    sock = listening_socket(address, backlog=backlog, socket_mode=socket_mode)
    loop = asyncio.get_running_loop()
    try:
        create = loop.create_unix_server if address.scheme == "unix" else loop.create_server
        server = await create(protocol_factory, sock=sock, backlog=accept_batch)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return server, bound_address(address, sock)
