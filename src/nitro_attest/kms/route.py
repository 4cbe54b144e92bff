"""The way out of the enclave (``--via``): how a socket to KMS's host:port is obtained.

- ``direct``: a TCP connection to the host itself (outside an enclave).
- ``vsock://CID:PORT``, ``tcp://HOST:PORT``, ``unix:///path``: raw bytes to a forwarder that
  always goes to one target (AWS's ``vsock-proxy 8000 kms.REGION.amazonaws.com 443``, or
  ``nitro-attest proxy --to tcp://kms...:443``); the host asked for is not sent anywhere, TLS
  below names it.
- ``connect://HOST:PORT`` (TCP), ``connect+vsock://CID:PORT``, ``connect+unix:///path``, or
  ``connect+tcp://HOST:PORT``: an HTTP CONNECT proxy (``nitro-attest proxy --to connect``); the
  tunnel is asked for ``host:port`` and the proxy's answer read strictly (``codec.connect``).

Whatever the route, the parent carries every byte: TLS, checked above this module, is what makes
the answer KMS's. This module only dials.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Literal

from nitro_attest.codec.connect import (
    ConnectError,
    connect_request,
    find_head_end,
    parse_connect_response,
)
from nitro_attest.errors import TransportError
from nitro_attest.wire.transport import Address, AddressError, connect, parse_address

Mode = Literal["direct", "forward", "connect"]


@dataclass(frozen=True, slots=True)
class Route:
    mode: Mode
    address: Address | None = None

    def __str__(self) -> str:
        if self.mode == "direct" or self.address is None:
            return "direct"
        if self.mode == "forward":
            return str(self.address)
        if self.address.scheme == "tcp":
            return "connect://" + str(self.address).removeprefix("tcp://")
        return f"connect+{self.address}"

    def dial(self, host: str, port: int, *, timeout: float) -> socket.socket:
        """A connected stream socket whose far end is ``host:port`` (as far as the route goes:
        a raw forwarder reaches its own fixed target). Failures are ``TransportError``."""
        try:
            if self.mode == "direct" or self.address is None:
                return socket.create_connection((host, port), timeout=timeout)
            sock = connect(self.address, timeout=timeout)
        except OSError as exc:
            raise TransportError(f"cannot reach {host}:{port} via {self}: "
                                 f"{exc.strerror or exc}") from None
        if self.mode == "connect":
            try:
                _tunnel(sock, host, port, timeout)
            except BaseException:
                sock.close()
                raise
        return sock


def _tunnel(sock: socket.socket, host: str, port: int, timeout: float) -> None:
    """Ask the proxy for ``host:port`` and read its answer, all of it within ``timeout`` (not
    each recv: a proxy trickling its answer would hold the caller for hours); nothing may follow
    it (a TLS client speaks first, so a byte from the far side before that is the proxy's, and
    wrong)."""
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(connect_request(host, port))
        buffer = bytearray()
        while (end := find_head_end(buffer)) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectError("proxy closed the connection before answering CONNECT")
            buffer += chunk
    except TimeoutError:
        raise ConnectError(f"CONNECT: the proxy's answer timed out after {timeout:g} s") from None
    except OSError as exc:
        raise ConnectError(f"CONNECT to the proxy failed: {exc.strerror or exc}") from None
    sock.settimeout(timeout)
    parse_connect_response(bytes(buffer[:end]))
    if len(buffer) > end:
        raise ConnectError("proxy sent bytes after its CONNECT answer, before TLS began")


def parse_route(text: str | None) -> Route:
    """``--via``'s value (``None`` or ``direct``: no proxy)."""
    if text is None or text.strip().lower() == "direct":
        return Route("direct")
    value = text.strip()
    scheme, sep, rest = value.partition("://")
    lowered = scheme.lower()
    if lowered == "connect":
        return Route("connect", _address(f"tcp://{rest}", value))
    if lowered.startswith("connect+"):
        inner = lowered.removeprefix("connect+")
        if inner not in ("tcp", "vsock", "unix"):
            raise AddressError(f"{value}: expected connect+vsock://, connect+tcp:// or "
                               "connect+unix://")
        return Route("connect", _address(f"{inner}://{rest}", value))
    if not sep:
        raise AddressError(f"{value!r}: expected direct, vsock://CID:PORT, tcp://HOST:PORT, "
                           "unix:///path or connect://HOST:PORT")
    return Route("forward", _address(value, value))


def _address(text: str, original: str) -> Address:
    try:
        return parse_address(text, role="connect")
    except AddressError as exc:
        raise AddressError(f"--via {original}: {exc}") from None
