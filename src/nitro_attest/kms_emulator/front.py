"""The emulator's HTTP/1.1 server: an asyncio protocol, heads read by ``codec.http1``, the app
called inline on the loop, each answer written in one send.

It replaced uvicorn + httptools + ASGI, which cost some 60-100 us of the emulator's CPU per
Decrypt with Recipient beyond a bare server (bench/kms_emulator.py; docs/kms.md, the emulator's
"Speed") and wrote every answer in two sends, each waking the client. The request head is
read by the codec every HTTP server and client of the project uses (a head of at most
``max_header_bytes`` and ``max_header_lines``, no bare CR/LF/NUL, one Host, one Content-Length
or ``chunked`` alone); the body is capped at ``MAX_BODY_BYTES`` before it is read (413 when
declared larger, at the chunk-size line that passes the cap when chunked). Requests are handled
one at a time on the loop: the state needs no lock and a thread hop would cost more than it saves
(the work is CPU, not waiting).

Limits (``server_limits.Limits``, ``EMULATOR_LIMITS`` by default): ``max_connections`` (a
newcomer beyond it sheds the least recently active connection), ``idle_timeout`` (the silence
allowed between requests, and a client that does not read its answers), ``header_timeout`` (a
request, head and body, once its first byte arrived; the TLS handshake), ``max_header_bytes``,
``max_header_lines``, ``drain_timeout`` (how long a stop waits for answers to be written).

With TLS the front accepts connections itself and starts each handshake with
``connect_accepted_socket``: a connection is in the table (counted, and shed first being idle)
from its accept, not from the end of its handshake as with ``create_server(ssl=...)``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import socket
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from email.utils import formatdate
from typing import Protocol, cast
from urllib.parse import parse_qsl, unquote

from nitro_attest.codec.http import HandshakeError, find_head_end
from nitro_attest.codec.http1 import (
    ChunkedDecoder,
    RequestHead,
    parse_request_head,
    simple_response,
)
from nitro_attest.kms_emulator.app import MAX_BODY_BYTES, error_body
from nitro_attest.kms_emulator.auth import SignedRequest
from nitro_attest.server_limits import EMULATOR_LIMITS, Limits
from nitro_attest.wire.admission import RateLimitedCount

log = logging.getLogger("nitro_attest.kms_emulator")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER = 1.0  # seconds a refused connection drops input before it is closed
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    413: b"Payload Too Large",
    500: b"Internal Server Error",
}


class Handler(Protocol):
    """What the front calls for each whole request (``app.KmsApp``); it never raises."""

    def handle(self, request: SignedRequest) -> tuple[int, bytes]: ...


class _DateHeader:
    """The ``date`` header, formatted once per second rather than once per answer."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


class _RequestIds:
    """``x-amzn-requestid`` values shaped like KMS's (a version-4 UUID): a random prefix drawn
    once per process and a 48-bit counter from a random start, so unique without a getrandom
    call and a UUID object per answer. An id only names a request in logs; nothing trusts it."""

    __slots__ = ("_next", "_prefix")

    def __init__(self) -> None:
        first = uuid.uuid4()
        self._prefix = str(first)[:24].encode("ascii")  # 8-4-4-4 and the last dash
        self._next = first.int & 0xFFFF_FFFF_FFFF

    def take(self) -> bytes:
        value = self._next
        self._next = (value + 1) & 0xFFFF_FFFF_FFFF
        return self._prefix + b"%012x" % value


_REQUEST_IDS = _RequestIds()


def answer_bytes(status: int, payload: bytes, date: bytes, *, close: bool = False) -> bytes:
    """A JSON answer as KMS sends it, head and body in one piece."""
    reason = _REASONS.get(status, b"")
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: %d\r\n"
        b"x-amzn-requestid: %s\r\ndate: %s\r\n"
        % (status, reason, len(payload), _REQUEST_IDS.take(), date)
    )
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + payload


class _Connection(asyncio.Protocol):
    """One client connection: reads requests, answers each as soon as it is whole."""

    def __init__(self, front: EmulatorFront) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: RequestHead | None = None
        self.decoder: ChunkedDecoder | None = None
        self.chunks: list[bytes] = []
        self.begun = False  # the current request's first byte arrived
        self.deadline = math.inf
        self.closing = False
        self.paused = False  # the client does not read its answers: stop reading its requests
        self.discarding = False  # refused: what still arrives is dropped until the close
        self.handshake: asyncio.Task[object] | None = None  # TLS: the handshake under way

    # -- asyncio's calls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, only alike
        self.transport = cast(asyncio.Transport, transport)
        self.deadline = time.monotonic() + self.front.limits.idle_timeout
        if self.handshake is None:
            self.front.admit(self)
        else:  # TLS: admitted at the accept
            self.handshake = None
            if self.closing:  # shed while its handshake was finishing
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.front.forget(self)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.discarding:
            return
        self.buffer += data
        self.front.touch(self)
        self._run()

    def eof_received(self) -> bool | None:
        self.close()
        return None

    def pause_writing(self) -> None:
        self.paused = True
        self.deadline = time.monotonic() + self.front.limits.idle_timeout
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
            if not self.begun:  # a request under way keeps the deadline its first byte set
                self.deadline = time.monotonic() + self.front.limits.idle_timeout
            self._run()

    # -- requests

    def _run(self) -> None:
        try:
            self._process()
        except HandshakeError as exc:
            refused = (exc.status, exc.reason)
        else:
            return
        # Refused outside the except block: the exception's traceback holds the chunked
        # decoder's frame and its view of self.buffer, which _linger could not clear
        # (BufferError, the connection reset instead of lingering).
        self._refuse(*refused)

    def _process(self) -> None:
        limits = self.front.limits
        while not self.closing and not self.paused and not self.discarding:
            if self.head is None:
                if not self.buffer:
                    return
                if not self.begun:
                    self.begun = True
                    self.deadline = time.monotonic() + limits.header_timeout
                end = find_head_end(self.buffer, limits.max_header_bytes)
                if end < 0:
                    return
                head = parse_request_head(
                    bytes(self.buffer[:end]),
                    limit=limits.max_header_bytes,
                    max_lines=limits.max_header_lines,
                )
                del self.buffer[:end]
                if head.framing == "length" and head.length > MAX_BODY_BYTES:
                    raise HandshakeError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
                self.head = head
                if head.framing == "chunked":
                    self.decoder = ChunkedDecoder(max_body=MAX_BODY_BYTES)
                if head.expect_continue and not self._body_complete() and self.transport:
                    self.transport.write(CONTINUE)
            body = self._take_body()
            if body is None:
                return
            head = self.head
            self.head = None
            self.decoder = None
            self.begun = False
            self._answer(head, body)
            if not head.keep_alive:
                self.close()
                return
            self.deadline = time.monotonic() + limits.idle_timeout

    def _body_complete(self) -> bool:
        head = self.head
        assert head is not None
        return head.framing == "none" or (
            head.framing == "length" and len(self.buffer) >= head.length
        )

    def _take_body(self) -> bytes | None:
        """The whole body once it is here (None until then)."""
        head = self.head
        assert head is not None
        if head.framing == "none":
            return b""
        if head.framing == "length":
            if len(self.buffer) < head.length:
                return None
            body = bytes(self.buffer[: head.length])
            del self.buffer[: head.length]
            return body
        assert self.decoder is not None
        # 413 at the chunk-size line that passes the cap
        pieces, rest = self.decoder.feed(memoryview(self.buffer))
        self.chunks.extend(pieces)
        self.buffer = bytearray(rest)
        if not self.decoder.done:
            return None
        body = b"".join(self.chunks)
        self.chunks = []
        return body

    def _answer(self, head: RequestHead, body: bytes) -> None:
        path, _, query = head.target.partition("?")
        request = SignedRequest(
            method=head.method,
            path=unquote(path) if "%" in path else path,  # (unquote's own shortcut, sooner)
            query=parse_qsl(query, keep_blank_values=True) if query else [],
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers],
            body=body,
        )
        status, payload = self.front.app.handle(request)
        if self.transport is not None:
            self.transport.write(
                answer_bytes(status, payload, self.front.date.value(), close=not head.keep_alive)
            )

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a request the HTTP layer refuses, then close: what follows cannot be framed."""
        log.info("HTTP %d: %s", status, reason)
        if self.transport is not None and not self.closing:
            if status == 413:  # as KMS's front words it, in KMS's error shape
                payload = error_body("SerializationException", reason)
                date = self.front.date.value()
                self.transport.write(answer_bytes(413, payload, date, close=True))
            else:
                self.transport.write(simple_response(status, f"{reason}\n".encode(), close=True))
        self._linger()

    def _linger(self) -> None:
        """After a refusal, drop what still arrives (the rest of a body, say) for up to
        ``LINGER`` seconds before closing: a close with unread bytes resets the connection, and
        the reset can destroy the answer before the client has read it."""
        self.discarding = True
        self.buffer.clear()
        self.head = None
        self.decoder = None
        self.chunks = []
        self.deadline = time.monotonic() + LINGER
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()  # plain TCP: the client sees the end after the answer

    def expire(self) -> None:
        if self.discarding:
            self.close()
        elif self.begun and not self.paused:
            self._refuse(408, "request not complete in time")
        else:
            self.abort()

    def close(self) -> None:
        """Close once what was written is sent."""
        if self.handshake is not None:
            self.abort()
        elif not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.handshake is not None:  # cancelled, the handshake closes its socket
            self.handshake.cancel()
        elif self.transport is not None:
            self.transport.abort()


def _same(conn: _Connection) -> _Connection:
    """The protocol factory of one accepted TLS connection: the _Connection admitted for it."""
    return conn


class EmulatorFront:
    """The listening side: admission, deadlines, and the app every request goes to."""

    def __init__(self, app: Handler, limits: Limits = EMULATOR_LIMITS) -> None:
        if not isinstance(limits, Limits):
            raise TypeError("limits must be a nitro_attest.server_limits.Limits")
        self.app = app
        self.limits = limits
        self.date = _DateHeader()
        self._connections: OrderedDict[_Connection, None] = OrderedDict()
        self._server: asyncio.AbstractServer | None = None
        self._listening: socket.socket | None = None  # TLS: accepted here (_accept)
        self._tls: ssl.SSLContext | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.shed = 0
        self._shed_log = RateLimitedCount(
            lambda n: log.warning(
                "%d connection(s) closed to admit newer ones (--max-connections %d)",
                n, limits.max_connections,
            )
        )

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    def protocol(self) -> _Connection:
        return _Connection(self)

    async def start(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol] = self.protocol
        if tls is None:
            self._server = await loop.create_server(factory, sock=sock)
        else:
            # Accepted here, so that a connection counts (and can be shed) from the accept:
            # create_server(ssl=...) hands one over only once its handshake is done, and
            # handshakes never finished held descriptors outside the table, never shed.
            sock.setblocking(False)
            self._listening = sock
            self._tls = tls
            loop.add_reader(sock.fileno(), self._accept)
        self._sweeper = asyncio.ensure_future(self._sweep())

    def _accept(self) -> None:
        assert self._listening is not None
        loop = asyncio.get_running_loop()
        for _ in range(64):  # a batch, then the other connections get their turn
            try:
                raw, _ = self._listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: pause a moment, as asyncio does
                log.warning("accept failed (%s); retrying in 1 s", exc.strerror or exc)
                fd = self._listening.fileno()
                loop.remove_reader(fd)
                loop.call_later(1.0, self._resume_accepting, fd)
                return
            raw.setblocking(False)
            conn = _Connection(self)
            conn.deadline = time.monotonic() + self.limits.header_timeout
            conn.handshake = asyncio.ensure_future(
                loop.connect_accepted_socket(
                    functools.partial(_same, conn), raw, ssl=self._tls,
                    ssl_handshake_timeout=self.limits.header_timeout,
                )
            )
            conn.handshake.add_done_callback(functools.partial(self._handshaken, conn))
            self.admit(conn)

    def _resume_accepting(self, fd: int) -> None:
        if self._listening is not None and self._listening.fileno() == fd:
            asyncio.get_running_loop().add_reader(fd, self._accept)

    def _handshaken(self, conn: _Connection, task: asyncio.Task[object]) -> None:
        """A handshake ended; one that failed, timed out or was cancelled (shed) never reached
        connection_made, and its socket is closed: forgotten here."""
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.debug("TLS handshake failed: %s", task.exception())
            conn.handshake = None
            conn.closing = True
            self.forget(conn)

    async def stop(self) -> None:
        """Stop accepting and close every connection once its answers are written (at most
        ``drain_timeout``): requests are handled inline, so none is half-done."""
        if self._server is not None:
            self._server.close()
        if self._listening is not None:
            asyncio.get_running_loop().remove_reader(self._listening.fileno())
            self._listening.close()
            self._listening = None
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self._connections):
            conn.close()
        deadline = time.monotonic() + self.limits.drain_timeout
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._connections):
            conn.abort()

    def admit(self, conn: _Connection) -> None:
        while len(self._connections) >= self.limits.max_connections:
            # the least recently active connection between requests, else the least recent
            victim = next((c for c in self._connections if not c.begun), None)
            if victim is None:
                victim = next(iter(self._connections))
            self._connections.pop(victim, None)
            self.shed += 1
            self._shed_log.add(time.monotonic())
            victim.abort()
        self._connections[conn] = None

    def touch(self, conn: _Connection) -> None:
        if conn in self._connections:
            self._connections.move_to_end(conn)

    def forget(self, conn: _Connection) -> None:
        self._connections.pop(conn, None)

    async def _sweep(self) -> None:
        """Expire connections past their deadline: one timer for all, every tick."""
        limits = self.limits
        tick = min(0.25, limits.header_timeout / 4, limits.idle_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in list(self._connections):
                if conn.deadline < now and not conn.closing:
                    conn.expire()


__all__ = ["EmulatorFront", "Handler", "answer_bytes"]
