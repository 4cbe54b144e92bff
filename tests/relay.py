"""A man in the middle written for attack tests: the parent instance, between client and enclave.

``Relay`` listens on a Unix socket and, for each client connection, opens one connection to the
real enclave server. Every request frame is decoded to a plain map and given to ``handle``, which
by default forwards it unchanged; subclasses rewrite, drop, replay or answer requests themselves
(docs/threat-model.md: the parent reads, drops, reorders, replays and injects every byte).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cbor2

from nitro_attest.wire import protocol
from nitro_attest.wire.transport import connect, parse_address

Frame = dict[str, Any]


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(sock: socket.socket) -> Frame | None:
    header = _recv_exactly(sock, protocol.HEADER_SIZE)
    if header is None:
        return None
    body = _recv_exactly(sock, protocol.decode_header(header))
    if body is None:
        return None
    frame: Frame = cbor2.loads(body)
    return frame


def write_frame(sock: socket.socket, frame: Frame) -> None:
    sock.sendall(protocol.encode_frame(cbor2.dumps(frame)))


class Upstream:
    """The relay's own connection to the enclave: send a map, get the answer's map."""

    def __init__(self, address: str) -> None:
        self.sock = connect(parse_address(address, role="connect"), timeout=20)

    def call(self, frame: Frame) -> Frame:
        write_frame(self.sock, frame)
        answer = read_frame(self.sock)
        assert answer is not None, "the enclave closed the relay's connection"
        return answer

    def close(self) -> None:
        self.sock.close()


class Relay:
    """Forward everything; override ``handle`` to attack. ``seen`` logs every request type."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def handle(self, request: Frame, upstream: Upstream) -> Frame:
        return upstream.call(request)

    def serve_connection(self, client: socket.socket) -> None:
        upstream = Upstream(self.upstream)
        try:
            while (request := read_frame(client)) is not None:
                with self.lock:
                    self.seen.append(str(request.get("type")))
                write_frame(client, self.handle(request, upstream))
        finally:
            upstream.close()


@contextmanager
def relaying(relay: Relay, sock: Path) -> Iterator[str]:
    """Run ``relay`` on a Unix socket at ``sock``; yield its address."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            relay.serve_connection(self.request)

    server = socketserver.ThreadingUnixStreamServer(str(sock), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"unix://{sock}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
