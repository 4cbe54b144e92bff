"""Helpers for attested HTTPS tests: the app behind the front, the front in a thread, hostile
NSM wrappers standing in for what a parent would like documents to say, and a relaying parent."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import logging
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nitro_attest.attestation.policy import Policy
from nitro_attest.https.client import client_context
from nitro_attest.https.front import Attester, FrontConfig, HttpsFront, seal_caller_key_pcr
from nitro_attest.https.identity import TlsIdentity, make_identity
from nitro_attest.nsm.backend import NsmBackend
from nitro_attest.nsm.simulator.nsm import SimulatedNsm
from nitro_attest.server_limits import HTTPS_LIMITS
from nitro_attest.wire.transport import Address, parse_address
from tests.fakes import MEASUREMENTS
from tests.serverkit import LogCollector, loop_in_thread

POLICY = Policy(pcr_sets=({0: MEASUREMENTS[0], 1: MEASUREMENTS[1], 2: MEASUREMENTS[2]},))


def pcr_flags() -> list[str]:
    return [arg for i in (0, 1, 2) for arg in ("--pcr", f"{i}={MEASUREMENTS[i].hex()}")]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    size: int
    sha256: str


@dataclass
class App:
    """A threaded HTTP/1.1 app: records every request it sees.

    ``/upload``: reads the body (Content-Length or chunked), answers its sha256 and size, and
    counts bytes in ``received`` as they arrive. ``/download?n=N``: sends N bytes with a
    Content-Length, pausing at the half until ``release`` is set (``waited`` says whether it was
    set in time). ``/slow``: answers after 1 s. Anything else: ``hello PATH``.
    """

    seen: list[Seen] = field(default_factory=list)
    received: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    waited: bool | None = None

    def __post_init__(self) -> None:
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> tuple[int, str]:
                digest = hashlib.sha256()
                size = 0
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        n = int(self.rfile.readline().split(b";")[0], 16)
                        if n == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            break
                        left = n
                        while left:
                            data = self.rfile.read(min(left, 65536))
                            digest.update(data)
                            size += len(data)
                            app.received += len(data)
                            left -= len(data)
                        self.rfile.readline()
                else:
                    left = int(self.headers.get("Content-Length", "0"))
                    while left:
                        data = self.rfile.read(min(left, 65536))
                        if not data:
                            break
                        digest.update(data)
                        size += len(data)
                        app.received += len(data)
                        left -= len(data)
                return size, digest.hexdigest()

            def _record(self, size: int, sha: str) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                app.seen.append(Seen(self.command, self.path, headers, size, sha))

            def _send(self, body: bytes, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._record(0, "")
                if self.path.startswith("/download"):
                    n = int(self.path.partition("n=")[2])
                    self.send_response(200)
                    self.send_header("Content-Length", str(n))
                    self.end_headers()
                    block = bytes(range(256)) * 256
                    sent = 0
                    while sent < n:
                        if sent >= n // 2 and app.waited is None:
                            app.waited = app.release.wait(20)
                        piece = block[: min(len(block), n - sent)]
                        self.wfile.write(piece)
                        sent += len(piece)
                    return
                if self.path == "/slow":
                    threading.Event().wait(1.0)
                self._send(f"hello {self.path}\n".encode())

            def do_POST(self) -> None:
                size, sha = self._body()
                self._record(size, sha)
                self._send(f"{size} {sha}".encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"tcp://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running_app() -> Iterator[App]:
    app = App()
    try:
        yield app
    finally:
        app.close()


@dataclass
class Front:
    url: str
    address: Address
    front: HttpsFront
    logs: LogCollector
    identity: TlsIdentity

    def attestation_lines(self) -> list[str]:
        return [line for line in self.logs.lines() if "nitro-attestation" in line]


@contextmanager
def running_front(
    backend: NsmBackend, app: str, *, seal: bool = True, **config: Any
) -> Iterator[Front]:
    """``HttpsFront`` on 127.0.0.1 in a thread over ``backend`` (PCR16 sealed unless told)."""
    identity = make_identity(["localhost"])
    if seal:
        seal_caller_key_pcr(backend)
    front = HttpsFront(
        FrontConfig(app=parse_address(app), limits=replace(HTTPS_LIMITS, **config)),
        identity,
        Attester(backend, identity.spki_der),
    )
    listen = parse_address("tcp://127.0.0.1:0", role="listen")
    with loop_in_thread(
        lambda: front.start(listen), lambda: front.shutdown(1.0), "nitro_attest.https",
        logging.INFO,
    ) as (bound, logs):
        yield Front(f"https://127.0.0.1:{bound.port}", bound, front, logs, identity)


def sim(state: Path) -> SimulatedNsm:
    return SimulatedNsm.open(state)


class ReplayingNsm:
    """Answers every attestation after the first with the first document (another nonce)."""

    def __init__(self, inner: SimulatedNsm) -> None:
        self._inner = inner
        self._first: bytes | None = None

    def attestation(self, **fields: Any) -> bytes:
        if self._first is None:
            self._first = self._inner.attestation(**fields)
        return self._first

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class OtherKeyNsm:
    """Attests ``key`` instead of the key the front asks for."""

    def __init__(self, inner: SimulatedNsm, key: bytes) -> None:
        self._inner = inner
        self._key = key

    def attestation(self, **fields: Any) -> bytes:
        return self._inner.attestation(**{**fields, "public_key": self._key})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextmanager
def relaying_parent(front: Address) -> Iterator[tuple[str, TlsIdentity, list[int]]]:
    """The parent terminating TLS itself with its own key and forwarding every decrypted byte,
    the attestation path included, over a TLS connection of its own to the real front. Yields
    its URL, its identity and the count of bytes it relayed toward the front."""
    own = make_identity(["localhost"])
    relayed = [0]

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                if up:
                    relayed[0] += len(data)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            front.host, front.port, ssl=client_context(), server_hostname=None
        )
        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    holder: list[asyncio.Server] = []

    async def start() -> Address:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=own.context)
        holder.append(server)
        port = server.sockets[0].getsockname()[1]
        return Address("tcp", host="127.0.0.1", port=port)

    async def stop() -> None:
        holder[0].close()

    with loop_in_thread(start, stop, "tests.relay") as (bound, _):
        yield f"https://127.0.0.1:{bound.port}", own, relayed


def tls_connect(address: Address, timeout: float = 10.0) -> ssl.SSLSocket:
    """A raw TLS connection to the front (no attestation), for hostile clients."""
    import socket

    raw = socket.create_connection((address.host, address.port), timeout=timeout)
    return client_context().wrap_socket(raw, server_hostname=None)
