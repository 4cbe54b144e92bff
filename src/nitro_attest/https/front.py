"""The enclave's HTTPS front: TLS ends here, HTTP/1.1 goes on to the app, attestation is answered.

Per connection: TLS handshake (under the header deadline), then requests one after the other
(keep-alive). Each request head must arrive within ``header_timeout`` of its first byte, and the
next one within ``idle_timeout``; bodies stream both ways in 64 KiB pieces with back-pressure,
each piece under ``idle_timeout``. ``GET /.well-known/nitro-attestation?nonce=HEX`` is answered
here with a fresh NSM document naming this front's certificate key, and never reaches the app.
When ``max_connections`` are open a newcomer sheds the least recently active one (an idle one
first), so clients holding connections cost only themselves (docs/https.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import unquote

from nitro_attest.attestation.caller_keys import CALLER_KEY_PCR, PRISTINE_PCR_VALUE
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.codec.http import HandshakeError, find_head_end
from nitro_attest.codec.http1 import (
    LAST_CHUNK,
    ChunkedDecoder,
    RequestHead,
    ResponseHead,
    chunk,
    forward_request_head,
    forward_response_head,
    parse_request_head,
    parse_response_head,
    simple_response,
)
from nitro_attest.errors import ConfigurationError, NsmError, TransportError
from nitro_attest.https.defaults import DEFAULT_APP_TIMEOUT
from nitro_attest.https.identity import TlsIdentity
from nitro_attest.https.well_known import DOCUMENT_TYPE, MAX_NONCE, MIN_NONCE, WELL_KNOWN
from nitro_attest.nsm.backend import NsmBackend
from nitro_attest.server_limits import HTTPS_LIMITS, Limits
from nitro_attest.wire.transport import Address, listening_socket

log = logging.getLogger("nitro_attest.https")

PIECE = 64 * 1024
CLOSE_LINGER = 1.0  # a closing TLS connection's last answer, close_notify and unread input
MAX_RESPONSE_HEAD = 64 * 1024  # from the app (trusted, but still bounded)
_NONCE = re.compile(r"nonce=([0-9a-fA-F]*)\Z")
_WELL_KNOWN_NAME = WELL_KNOWN.rpartition("/")[2]


@dataclass(frozen=True, slots=True)
class FrontConfig:
    """The app behind the front, and the front's ``Limits`` (read here: max_connections,
    header_timeout, idle_timeout, max_header_bytes, max_header_lines, drain_timeout)."""

    app: Address
    limits: Limits = HTTPS_LIMITS
    app_timeout: float = DEFAULT_APP_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.limits, Limits):
            raise ConfigurationError("limits must be a nitro_attest.server_limits.Limits")
        if not self.app_timeout > 0:
            raise ConfigurationError("app_timeout must be a positive number of seconds")

    @property
    def max_connections(self) -> int:
        return self.limits.max_connections

    @property
    def header_timeout(self) -> float:
        return self.limits.header_timeout

    @property
    def idle_timeout(self) -> float:
        return self.limits.idle_timeout

    @property
    def max_header_bytes(self) -> int:
        return self.limits.max_header_bytes

    @property
    def max_header_lines(self) -> int:
        return self.limits.max_header_lines


class RequestLog(Protocol):
    """Where the line per request goes: held by ``request``, written by ``flush``."""

    def request(self, line: str) -> None: ...

    def flush(self) -> None: ...


class LoggingRequestLog:
    """The default: each line an INFO record of this module's logger, at once."""

    def request(self, line: str) -> None:
        log.info("%s", line)

    def flush(self) -> None:
        pass


class _Closed(TransportError):
    """The connection is over (peer gone, timeout, shed): no answer can be sent."""


class _Refused(TransportError):
    """The request is answered with ``status`` and the connection closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_attestation_path(path: str) -> bool:
    """The front's own path, however it is spelled, so no variant of it reaches the app: percent-
    encoding (decoded up to three times), backslashes, case, doubled slashes, ``;`` parameters,
    dot segments and a ``#`` fragment, all of which some server or framework behind the front
    normalizes away."""
    if "%" not in path and _WELL_KNOWN_NAME not in path.lower():
        return False  # the common case: no spelling of the name at all
    decoded = path
    for _ in range(3):
        if "%" not in decoded:
            break
        decoded = unquote(decoded)
    # A fragment has no place in a target, and servers drop it (urlsplit, httptools).
    decoded = decoded.partition("#")[0]
    segments: list[str] = []
    for segment in decoded.replace("\\", "/").lower().split("/"):
        segment = segment.partition(";")[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments) == WELL_KNOWN


def parse_nonce(query: str) -> bytes:
    found = _NONCE.match(query)
    if found is None:
        raise _Refused(400, "the attestation path takes exactly ?nonce=HEX")
    text = found.group(1)
    if len(text) % 2 or not MIN_NONCE * 2 <= len(text) <= MAX_NONCE * 2:
        raise _Refused(400, f"nonce must be {MIN_NONCE}..{MAX_NONCE} bytes of hex")
    return bytes.fromhex(text)


def seal_caller_key_pcr(backend: NsmBackend) -> None:
    """Lock PCR16 pristine, so every document from now on shows this enclave never signs keys
    chosen by its callers (``attestation.caller_keys``); a document carries only locked PCRs, so
    clients see PCR16 only once it is locked. Refuses if the enclave is already marked."""
    try:
        pcr = backend.describe_pcr(CALLER_KEY_PCR)
        if pcr.data != PRISTINE_PCR_VALUE:
            raise ConfigurationError(
                f"PCR{CALLER_KEY_PCR} is marked: this enclave attests public keys chosen by its "
                "callers (serve --allow-caller-public-key), so no client would trust its key"
            )
        if not pcr.locked:
            backend.lock_pcr(CALLER_KEY_PCR)
    except NsmError as exc:
        raise ConfigurationError(f"cannot lock PCR{CALLER_KEY_PCR}: {exc}") from None


class Attester:
    """Documents from the NSM naming the front's key; one NSM call at a time, off the loop.

    The calls go to one thread of the Attester's own, in order, and each document comes back
    with one ``call_soon_threadsafe``, which hands it to the caller's ``on_ready`` (the front
    writes its answer there) and then settles the caller's future. Against
    ``run_in_executor`` (its work item and locks, a concurrent future chained to an asyncio
    one, and the answer written only once the coroutine resumed, a turn of the loop later):
    0.03-0.05 ms less per attested connection, paired A/B (docs/https.md).

    ``on_loop`` makes them on the event loop instead, for the software NSM (about 0.2 ms of
    signing): the loop stalls for the signing, which is acceptable for a development NSM only
    (tests). The real /dev/nsm stays off the loop: its ioctl waits on the hypervisor and must
    not stall the other connections.

    A caller dropped while its call waits in the queue (its connection shed, cut or drained)
    costs the NSM nothing, as the executor's cancelled work items did, and the queue lets go
    of its ``on_ready`` (the connection's stream and buffers) at once: else a parent that asks
    and drops connection after connection holds the NSM busy for nothing, ahead of everyone,
    and the enclave's memory with it (tests/test_https_redteam3.py)."""

    def __init__(self, backend: NsmBackend, spki_der: bytes, *, on_loop: bool = False) -> None:
        self._backend = backend
        self._spki = spki_der
        self._on_loop = on_loop
        self._calls: queue.SimpleQueue[_NsmCall | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def document(
        self, nonce: bytes, on_ready: Callable[[bytes], None] | None = None
    ) -> bytes:
        """A document naming the front's key with ``nonce``. ``on_ready`` is called with it on
        the loop as soon as it is back, before the caller resumes (a turn of the loop later):
        the front writes its answer there. Not called on the loop-NSM path or on failure."""
        if self._closed:
            raise NsmError("InternalError", "the front is shutting down")
        if self._on_loop:
            return self._backend.attestation(nonce=nonce, public_key=self._spki)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        if self._thread is None:  # started by the first call: a front never asked makes none
            thread = threading.Thread(target=self._work, name="nsm", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # out of memory or threads: this call fails, the next
                raise NsmError("InternalError", f"cannot start the NSM thread: {exc}") from None
            self._thread = thread
        call = _NsmCall(loop, future, nonce, on_ready)
        self._calls.put(call)
        try:
            return await future
        finally:
            call.on_ready = None  # answered, failed or dropped: the queue holds no connection

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            # The loop's future read from this thread: at worst a caller dropped just now has
            # its call made, and _settle throws the document away.
            if call.future.done():  # the caller was dropped while its call waited: none
                continue
            outcome: bytes | Exception
            if self._closed:  # queued before close: refused, as calls after it are
                outcome = NsmError("InternalError", "the front is shutting down")
            else:
                try:
                    outcome = self._backend.attestation(nonce=call.nonce, public_key=self._spki)
                except Exception as exc:  # the caller's to raise, as from an executor
                    outcome = exc
                except BaseException as exc:  # SystemExit and kin: neither end this thread
                    # (every later call would wait for good) nor stop the caller's loop
                    outcome = NsmError("InternalError", f"the NSM call raised {exc!r:.80}")
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                call.loop.call_soon_threadsafe(_settle, call, outcome)

    def close(self) -> None:
        """No new calls, and calls still queued are refused (NsmError); the thread ends after
        the call it is in (not waited for: a /dev/nsm ioctl that hangs must not hang the
        shutdown)."""
        self._closed = True
        self._calls.put(None)


class _NsmCall:
    """One queued call: the loop and future to answer on, the nonce, and the caller's
    ``on_ready`` (cleared once the caller resumes or is dropped)."""

    __slots__ = ("future", "loop", "nonce", "on_ready")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[bytes],
        nonce: bytes,
        on_ready: Callable[[bytes], None] | None,
    ) -> None:
        self.loop = loop
        self.future = future
        self.nonce = nonce
        self.on_ready = on_ready


def _settle(call: _NsmCall, outcome: bytes | Exception) -> None:
    future = call.future
    if future.done():  # the connection's task was cancelled (dropped, shed) during the call
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
        return
    on_ready = call.on_ready
    if on_ready is not None:
        try:
            on_ready(outcome)
        except Exception as exc:  # the caller's to raise, when it resumes
            future.set_exception(exc)
            return
    future.set_result(outcome)


class _Stream(asyncio.Protocol):
    """One side of a relay: the protocol of an asyncio transport (TLS toward the client, plain
    toward the app) and what was read but not used yet.

    TLS is the loop's own transport (uvloop's, in C, when installed): records are read as they
    come, into ``buffer``, and reading pauses once it holds ``PIECE`` bytes until a reader asks
    for more (``fill``), so a peer can make the front hold only so much. Writes go to the
    transport's buffer; ``send`` waits while the transport says it is full (back-pressure).
    """

    __slots__ = (
        "blocked", "buffer", "closed", "eof", "gone", "hook", "loop", "owner", "paused",
        "poked", "readable", "received", "transport", "writable",
    )

    def __init__(self, owner: _Connection) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        # One waiter per direction: a request body may be read from this side while the answer
        # is written to it.
        self.readable: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None
        self.closed = False  # closed by the front or lost: nothing more comes or goes
        self.eof = False  # the peer finished sending
        self.paused = False  # reading paused: the buffer is full
        self.blocked = False  # writing paused: the transport's buffer is full
        self.gone: asyncio.Future[None] = self.loop.create_future()  # the transport closed
        self.received = 0  # bytes ever read: tells new data from a wake-up without any
        self.poked = False  # woken to look at what is buffered already (see ``poke``)
        # The front's callback path (HttpsFront._fast_request, _fast_response): told of every
        # event first; True when it took care of it, so no waiting coroutine needs waking.
        self.hook: Callable[[], bool] | None = None

    # --- the transport's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        # Writing pauses past one piece, as the relay moves them: a TLS transport's default
        # (512 KiB) let a client that reads nothing hold some 750 KB of the enclave's memory.
        self.transport.set_write_buffer_limits(high=PIECE)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)
        if len(self.buffer) >= PIECE and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        if self.hook is None or not self.hook():
            _wake(self.readable)

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.hook is None or not self.hook():
            _wake(self.readable)
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.closed = True
        self.interrupt()
        _wake(self.gone)
        if self.hook is not None:
            self.hook()

    def pause_writing(self) -> None:
        self.blocked = True

    def resume_writing(self) -> None:
        self.blocked = False
        _wake(self.writable)

    # --- the relay's side

    def interrupt(self) -> None:
        """Wake pending waits with _Closed (the connection expired or is closing)."""
        for waiter in (self.readable, self.writable):
            if waiter is not None and not waiter.done():
                waiter.set_exception(_Closed("expired"))

    async def fill(self, timeout: float, *, head: bool = False) -> None:
        """Wait until more is in the buffer; _Closed at EOF, or once the front's sweep found
        nothing arrived for ``timeout`` seconds (a deadline per connection, not a timer per
        read). Callers call it only when the buffer does not hold what they need."""
        owner = self.owner
        owner.deadline = time.monotonic() + timeout
        owner.head = head
        owner.expired = False
        if self.closed or self.eof:
            raise _Closed("closed" if self.closed else "eof")
        # Counted before reading resumes: the loop may deliver data (and run the callback
        # path) within resume_reading itself.
        before = self.received
        self.poked = False
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        if self.received == before and not self.poked and owner.handoff is None:
            waiter = self.loop.create_future()
            self.readable = waiter
            try:
                await waiter
            finally:
                self.readable = None
        if self.received == before and not self.poked and owner.handoff is None:
            raise _Closed("eof")  # woken by the end of the stream

    def poke(self) -> None:
        """Wake a ``fill`` to look at the buffer again though nothing new came (the callback
        path left a buffered request to the coroutine)."""
        self.poked = True
        _wake(self.readable)

    def resume(self) -> None:
        """Read again if reading paused and the buffer has room (the callback path, which
        takes from the buffer without calling ``fill``)."""
        if self.paused and len(self.buffer) < PIECE and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def send(self, data: bytes, timeout: float) -> None:
        """Write all of ``data``; a peer that takes nothing for ``timeout`` seconds is cut."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise _Closed("closed")
        transport.write(data)
        if self.blocked:  # no coroutine made per send when there is room
            await self.drained(timeout)

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` from a callback (no waiting); False when the stream is closed.
        The writer then awaits ``drained``, as ``send`` does."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True

    async def drained(self, timeout: float) -> None:
        """Wait while the transport's buffer is full; a peer that takes nothing for
        ``timeout`` seconds is cut."""
        while self.blocked:
            # Closed before the wait began (the NSM's callback wrote the answer and the
            # connection was cut before its coroutine resumed): nothing would wake the wait.
            if self.closed:
                raise _Closed("closed")
            owner = self.owner
            owner.deadline = max(owner.deadline, time.monotonic() + timeout)
            waiter = self.loop.create_future()
            self.writable = waiter
            try:
                await waiter
            finally:
                self.writable = None
            if self.closed:
                raise _Closed("closed")

    async def finish(self) -> None:
        """After a last answer: close gracefully (the answer flushed, TLS close_notify, input
        discarded meanwhile, so unread bytes do not turn the close into a reset that destroys
        the answer), for at most ``CLOSE_LINGER`` seconds, then cut."""
        self.owner.deadline = math.inf
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_LINGER):
                await asyncio.shield(self.gone)
        self.abort()

    def close(self) -> None:
        """Close once what was written is sent (bounded by ``CLOSE_LINGER`` for TLS)."""
        if self.closed:
            return
        self.interrupt()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping whatever was not sent yet."""
        self.interrupt()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _still_open(stream: _Stream) -> bool:
    """A kept app connection that is neither closed by the app nor holding stray bytes."""
    return not (stream.closed or stream.eof or stream.buffer)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class _Connection:
    __slots__ = (
        "busy", "client", "deadline", "expired", "expired_deadline", "handoff", "head",
        "inflight", "parked", "peer", "served", "task", "upstream",
    )

    def __init__(self, peer: str, task: asyncio.Task[None] | None) -> None:
        self.peer = peer
        self.task = task
        self.client: _Stream | None = None
        self.upstream: _Stream | None = None
        self.busy = False
        self.deadline = math.inf
        self.head = False  # waiting for the rest of a begun request head (expiry: 408)
        self.expired = False  # the current deadline passed (_read_head answers 408)
        self.expired_deadline = math.nan  # the deadline last acted on: each acts once
        # The callback path: the coroutine waits for a head in _read_head (parked), a request
        # relayed by callbacks waits for the app's answer (inflight), or one the callbacks
        # passed back to the coroutine at its answer (handoff).
        self.parked = False
        self.inflight: tuple[RequestHead, float] | None = None
        self.handoff: tuple[RequestHead, float] | None = None
        self.served = 0  # requests the callback path answered


def _peer_text(address: object) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "local"


class HttpsFront:
    def __init__(
        self,
        config: FrontConfig,
        identity: TlsIdentity,
        attester: Attester,
        request_log: RequestLog | None = None,
    ) -> None:
        self.config = config
        self._request_log = request_log or LoggingRequestLog()
        self._flush_pending = False
        self._identity = identity
        self._attester = attester
        self._listener: socket.socket | None = None
        self._unix_path: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: OrderedDict[_Connection, None] = OrderedDict()
        self._shed = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._tick = min(0.25, config.header_timeout / 4, config.idle_timeout / 4)
        # Read once per request by the callback path (FrontConfig's are properties).
        self._max_head = config.max_header_bytes
        self._max_lines = config.max_header_lines
        self._idle = config.idle_timeout

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def start(self, listen: Address) -> Address:
        sock = listening_socket(listen)
        self._listener = sock
        self._unix_path = listen.path if listen.scheme == "unix" else None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_accept)
        self._sweeper = asyncio.ensure_future(self._sweep())
        name = sock.getsockname()
        if listen.scheme == "tcp":
            return Address("tcp", host=listen.host, port=int(name[1]))
        if listen.scheme == "vsock":
            return Address("vsock", cid=listen.cid, port=int(name[1]))
        return listen

    def _stop_accepting(self) -> None:
        if self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            if self._unix_path is not None:  # a dead socket file would refuse the next start
                with contextlib.suppress(OSError):
                    os.unlink(self._unix_path)

    def _on_accept(self) -> None:
        assert self._listener is not None and self._loop is not None
        for _ in range(64):  # a batch per wake-up, so accepting cannot starve the connections
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: pause instead of spinning
                log.warning("https accept failed: %s; pausing 100 ms", exc.strerror or exc)
                listener = self._listener
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(0.1, self._resume_accepting, listener)
                return
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(_peer_text(address), None)
            self._admit(conn)
            conn.task = self._loop.create_task(self._connection(conn, sock))

    def _resume_accepting(self, listener: socket.socket) -> None:
        if self._listener is listener and self._loop is not None:
            self._loop.add_reader(listener.fileno(), self._on_accept)

    async def shutdown(self, drain: float) -> None:
        """Stop accepting, close idle connections, let requests in flight finish for ``drain``
        seconds, then cut the rest."""
        self._stop_accepting()
        for conn in list(self._connections):
            if not conn.busy:
                self._drop(conn)
        deadline = time.monotonic() + drain
        while any(c.busy for c in self._connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self._connections):
            self._drop(conn)
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._attester.close()

    async def _sweep(self) -> None:
        """Expire connections past their deadline, every tick (a quarter of the shortest
        timeout at most): one timer for the front instead of one per read."""
        while True:
            await asyncio.sleep(self._tick)
            now = time.monotonic()
            for conn in list(self._connections):
                # Once per deadline, not once per connection: a deadline that passed while
                # nothing waited (the NSM call) must not exempt the connection from later ones.
                if conn.deadline < now and conn.deadline != conn.expired_deadline:
                    conn.expired_deadline = conn.deadline
                    self._expire(conn)

    def _expire(self, conn: _Connection) -> None:
        conn.expired = True
        if conn.head and conn.client is not None:
            conn.client.interrupt()  # _read_head answers 408, then closes
            return
        for side in (conn.client, conn.upstream):
            if side is not None:
                side.abort()
        if conn.client is None and conn.task is not None:  # still in the TLS handshake
            conn.task.cancel()

    def _drop(self, conn: _Connection, *, cut: bool = False) -> None:
        """Forget ``conn``: its app side cut, its client side closed once what was written is
        sent (at most CLOSE_LINGER), or at once with ``cut``."""
        if conn.upstream is not None:
            conn.upstream.abort()
        if conn.client is not None:
            if cut:
                conn.client.abort()
            else:
                conn.client.close()
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()
        self._connections.pop(conn, None)

    def _admit(self, conn: _Connection) -> None:
        while len(self._connections) >= self.config.max_connections:
            victim = next((c for c in self._connections if not c.busy), None)
            if victim is None:
                victim = next(iter(self._connections))
            self._shed += 1
            self._line(f"https shed peer={victim.peer} (connections full)")
            self._drop(victim, cut=True)
        self._connections[conn] = None

    def _touch(self, conn: _Connection) -> None:
        self._connections.move_to_end(conn)

    async def _connection(self, conn: _Connection, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            conn.deadline = time.monotonic() + self.config.header_timeout
            # The protocol made here, not the one returned (uvloop returns its TLS layer's).
            client = _Stream(conn)
            try:
                await self._loop.connect_accepted_socket(
                    lambda: client, sock, ssl=self._identity.context,
                    ssl_handshake_timeout=self.config.header_timeout,
                    ssl_shutdown_timeout=CLOSE_LINGER,
                )
            except (ssl.SSLError, OSError):  # TimeoutError included
                with contextlib.suppress(OSError):
                    sock.close()  # the loop closed it already (a no-op then)
                return
            conn.client = client
            await self._serve(conn)
        except (_Closed, asyncio.CancelledError):
            pass  # cut mid-handshake: the loop closed the socket
        finally:
            self._drop(conn)

    async def _serve(self, conn: _Connection) -> None:
        client = conn.client
        assert client is not None
        while True:
            conn.busy = False
            try:
                head = await self._read_head(conn, client)
            except _Refused as exc:
                await self._answer_error(conn, exc.status, exc.reason)
                return
            if head is None:  # the callbacks relayed a request and passed its answer here
                assert conn.handoff is not None and conn.upstream is not None
                request, started = conn.handoff
                conn.handoff = None
                if not await self._answer(conn, conn.upstream, request, started, None, None):
                    return
                continue
            conn.busy = True
            self._touch(conn)
            started = time.monotonic()
            try:
                request = parse_request_head(
                    head,
                    limit=self.config.max_header_bytes,
                    max_lines=self.config.max_header_lines,
                )
            except HandshakeError as exc:
                await self._answer_error(conn, exc.status, exc.reason)
                return
            if is_attestation_path(request.path):
                keep = await self._attestation(conn, request, started)
            else:
                keep = await self._relay(conn, request, started)
            if not keep:
                return

    async def _read_head(self, conn: _Connection, client: _Stream) -> bytes | None:
        """The next request head; None when the callback path relayed a request meanwhile and
        passed its answer to the coroutine (``conn.handoff``)."""
        limit = self.config.max_header_bytes
        deadline: float | None = None
        served = conn.served
        while True:
            if conn.handoff is not None:
                return None
            if conn.inflight is not None:
                # Woken while the callbacks relay a request (the client's input ended): what
                # follows in the buffer must not be answered before it. Nothing more can be.
                raise _Closed("input ended with a request in flight")
            if conn.served != served:  # the head begun before was served by the callbacks
                served, deadline = conn.served, None
            try:
                end = find_head_end(client.buffer, limit)
            except HandshakeError as exc:
                raise _Refused(exc.status, exc.reason) from None
            if end >= 0:
                return client.take(end)
            now = time.monotonic()
            if client.buffer and deadline is None:
                deadline = now + self.config.header_timeout
            conn.parked = True
            client.hook = lambda: self._fast_request(conn)
            try:
                if deadline is None:
                    await client.fill(self.config.idle_timeout)
                    continue
                if now >= deadline:
                    raise _Refused(408, "request head not complete in time")
                try:
                    await client.fill(deadline - now, head=True)
                except _Closed:
                    if client.owner.expired:
                        raise _Refused(408, "request head not complete in time") from None
                    raise
            finally:
                conn.parked = False
                if conn.inflight is None:
                    client.hook = None

    # --- the callback path: a plain request and its whole answer relayed from the transports'
    # callbacks, with no coroutine woken; anything else is left to (or passed back to) the
    # coroutine at the step it reached. Same checks, same bytes, same log line.

    def _fast_request(self, conn: _Connection) -> bool:
        """A complete head in the client's buffer while the coroutine waits for one: relay it
        now if it is a body-less request to the app on a kept app connection. False leaves
        the buffer to the coroutine (which parses it again and answers any error)."""
        client = conn.client
        assert client is not None
        if conn.inflight is not None:  # an answer is awaited: keep what follows for later
            return not (client.closed or client.eof)
        upstream = conn.upstream
        # The coroutine must be waiting, not woken yet: once woken (a poke, in the same turn
        # of the loop as these bytes) it reads the buffer itself, and a request relayed here
        # meanwhile would be answered after the one behind it.
        waiting = client.readable
        # client.blocked: the client is not taking its answers; the coroutine's send waits
        # for it (back-pressure, under the idle deadline) where a callback cannot.
        if (not conn.parked or waiting is None or waiting.done() or conn.expired
                or client.closed or client.blocked or upstream is None
                or not _still_open(upstream) or self._listener is None):
            return False
        buffer = client.buffer
        end = buffer.find(b"\r\n\r\n", 0, self._max_head)  # as find_head_end; no 431 here
        if end < 0:
            return False
        end += 4
        try:
            request = parse_request_head(
                bytes(memoryview(buffer)[:end]), limit=self._max_head, max_lines=self._max_lines
            )
        except HandshakeError:
            return False
        if (request.framing != "none" or not request.keep_alive or request.expect_continue
                or is_attestation_path(request.path)):
            return False
        del buffer[:end]
        started = time.monotonic()
        conn.busy = True
        self._connections.move_to_end(conn)
        conn.inflight = (request, started)
        conn.deadline = started + self.config.app_timeout
        conn.head = False
        assert upstream.transport is not None
        upstream.transport.write(
            forward_request_head(request, client=conn.peer, host_fallback=b"enclave")
        )
        upstream.hook = lambda: self._fast_response(conn)
        upstream.resume()  # a big answer before may have left it paused, and empty now
        return True

    def _fast_response(self, conn: _Connection) -> bool:
        """The app's answer to the request in flight: relayed now when all of it is here
        (a final status, a length or no body); otherwise passed to the coroutine."""
        upstream, client = conn.upstream, conn.client
        assert upstream is not None and client is not None and conn.inflight is not None
        request, started = conn.inflight
        response: ResponseHead | None = None
        buffer = upstream.buffer
        end = buffer.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD)
        if end >= 0 and not upstream.closed and not client.closed:
            end += 4
            try:
                response = parse_response_head(
                    bytes(memoryview(buffer)[:end]), request_method=request.method,
                    limit=MAX_RESPONSE_HEAD, max_lines=1000,
                )
            except HandshakeError:
                response = None
        if (response is None or response.status < 200 or response.framing not in
                ("none", "length") or len(buffer) - end < response.length):
            # Not all here, or not plain: the coroutine reads it from the buffers as they are.
            upstream.hook = None
            conn.inflight = None
            conn.handoff = (request, started)
            _wake(client.readable)
            return True
        upstream.hook = None
        conn.inflight = None
        conn.served += 1
        keep = response.keep_alive  # the request kept alive: only those come here
        stop = end + response.length
        head = forward_response_head(response, framing=response.framing, keep_alive=keep)
        assert client.transport is not None
        client.transport.write(head + memoryview(buffer)[end:stop])
        del buffer[:stop]
        upstream.resume()
        client.resume()
        self._log(conn, request, response.status, 0, response.length, started)
        if not keep:
            self._drop(conn)  # the answer flushed, then closed
            return True
        conn.busy = False
        conn.deadline = time.monotonic() + self._idle
        if client.buffer and not self._fast_request(conn):
            client.poke()  # the rest is the coroutine's
        return True

    async def _answer_error(self, conn: _Connection, status: int, reason: str) -> None:
        """Answer ``status`` and close, letting the answer reach the client first (at most 1 s)."""
        self._line(f"https peer={conn.peer} refused status={status} reason={reason}")
        assert conn.client is not None
        body = f"{reason}\n".encode()
        with contextlib.suppress(_Closed):
            await conn.client.send(simple_response(status, body, close=True), 1.0)
            await conn.client.finish()

    async def _attestation(self, conn: _Connection, request: RequestHead, started: float) -> bool:
        assert conn.client is not None
        try:
            if request.method != "GET":
                raise _Refused(405, "the attestation path takes GET only")
            if request.framing != "none":
                raise _Refused(400, "the attestation request has no body")
            nonce = parse_nonce(request.query)
        except _Refused as exc:
            await self._answer_error(conn, exc.status, exc.reason)
            return False
        client = conn.client
        close = not request.keep_alive
        written: list[bool] = []

        def answer_now(document: bytes) -> None:
            # On the loop as soon as the document is back, a turn before this coroutine
            # resumes. Nothing else writes to the client meanwhile: the callbacks take no
            # request while the coroutine is not waiting for one.
            written.append(client.write_now(_document_answer(document, close=close)))

        try:
            document = await self._attester.document(nonce, on_ready=answer_now)
        except NsmError as exc:
            log.warning("https peer=%s attestation failed: %s", conn.peer, exc)
            await self._answer_error(conn, 503, "the NSM did not answer")
            return False
        if not written:  # made on the loop: answer here
            await client.send(_document_answer(document, close=close), self.config.idle_timeout)
        elif written[0]:
            if client.blocked:
                await client.drained(self.config.idle_timeout)
        else:
            raise _Closed("closed")
        self._log(conn, request, 200, 0, len(document), started)
        return request.keep_alive

    def _log(
        self, conn: _Connection, request: RequestHead, status: int, got: int, sent: int,
        started: float,
    ) -> None:
        path = escape_untrusted(request.path[:200])
        ms = (time.monotonic() - started) * 1000
        self._line(
            f"https peer={conn.peer} {request.method} {path} status={status} in={got} "
            f"out={sent} ms={ms:.1f}"
        )

    def _line(self, line: str) -> None:
        """The line per request: held by the request log and written once per loop turn."""
        self._request_log.request(line)
        if not self._flush_pending:
            self._flush_pending = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._request_log.flush()

    async def _open_upstream(self, conn: _Connection) -> _Stream:
        if conn.upstream is not None:
            if _still_open(conn.upstream):
                return conn.upstream
            self._close_upstream(conn)  # the app closed its idle end (its keep-alive timeout)
        app = self.config.app
        assert self._loop is not None
        loop = self._loop
        sock = socket.socket(app.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        upstream = _Stream(conn)
        try:
            async with asyncio.timeout(self.config.app_timeout):
                await loop.sock_connect(sock, app.sockaddr)
                if app.scheme == "tcp":
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    await loop.create_connection(lambda: upstream, sock=sock)
                else:
                    await loop.create_unix_connection(lambda: upstream, sock=sock)
        except (TimeoutError, OSError) as exc:
            sock.close()
            raise _Refused(502, f"app unreachable: {type(exc).__name__}") from None
        conn.upstream = upstream
        return upstream

    def _close_upstream(self, conn: _Connection) -> None:
        if conn.upstream is not None:
            conn.upstream.abort()
            conn.upstream = None

    async def _relay(self, conn: _Connection, request: RequestHead, started: float) -> bool:
        client = conn.client
        assert client is not None
        try:
            upstream = await self._open_upstream(conn)
        except _Refused as exc:
            await self._answer_error(conn, exc.status, exc.reason)
            return False
        idle = self.config.idle_timeout
        head = forward_request_head(request, client=conn.peer, host_fallback=b"enclave")
        try:
            await upstream.send(head, idle)
        except _Closed:
            # A kept-alive app connection may have closed meanwhile: one fresh try.
            self._close_upstream(conn)
            try:
                upstream = await self._open_upstream(conn)
                await upstream.send(head, idle)
            except _Closed:
                await self._answer_error(conn, 502, "the app closed the connection")
                return False
            except _Refused as exc:
                await self._answer_error(conn, exc.status, exc.reason)
                return False
        if request.expect_continue:
            await client.send(b"HTTP/1.1 100 Continue\r\n\r\n", idle)
        body: _BodyRelay | None = None
        task: asyncio.Future[None] | None = None
        if request.framing != "none":
            body = _BodyRelay(client, upstream, request, idle)
            task = asyncio.ensure_future(body.run())
            # a client gone mid-body: stop waiting for the app's answer
            task.add_done_callback(lambda t: _abort_on_failure(t, upstream))
        return await self._answer(conn, upstream, request, started, body, task)

    async def _answer(
        self, conn: _Connection, upstream: _Stream, request: RequestHead, started: float,
        body: _BodyRelay | None, task: asyncio.Future[None] | None,
    ) -> bool:
        """Relay the app's answer to a forwarded request (its body, if any, moving in ``task``);
        whether the client connection stays open."""
        try:
            status, sent, keep, app_keep = await self._relay_response(conn, upstream, request)
        except _Refused as exc:
            if task is not None:
                task.cancel()
            self._close_upstream(conn)
            await self._answer_error(conn, exc.status, exc.reason)
            return False
        except BaseException:
            if task is not None:
                task.cancel()
            self._close_upstream(conn)
            raise
        body_done = True
        if task is not None:
            if not task.done():  # the app answered before reading the whole body
                task.cancel()
                body_done = False
            else:
                body_done = task.exception() is None
        self._log(conn, request, status, 0 if body is None else body.moved, sent, started)
        if not (app_keep and body_done):
            self._close_upstream(conn)
        else:  # kept: reading on, so the app's close (or stray bytes) is seen before reuse
            upstream.resume()
        return keep and body_done

    async def _relay_response(
        self, conn: _Connection, upstream: _Stream, request: RequestHead
    ) -> tuple[int, int, bool, bool]:
        """Relay the app's answer; (status, body bytes, client kept alive, app kept alive)."""
        client = conn.client
        assert client is not None
        idle = self.config.idle_timeout
        while True:
            response = await self._read_response_head(upstream, request)
            if response.status >= 200:
                break
            if response.status == 101:
                raise _Refused(502, "the app switched protocols")
            # Other interim answers (100 is the front's own, 103) are not passed on.
        framing = response.framing
        keep = response.keep_alive and request.keep_alive
        if request.version != "HTTP/1.1" and framing in ("chunked", "close"):
            # A 1.0 client cannot decode chunks (RFC 9112 7.1): the body ends at the close.
            framing, keep = "close", False
        elif framing == "close":
            framing = "chunked"
        head = forward_response_head(response, framing=framing, keep_alive=keep)
        sent = await _relay_response_body(upstream, client, response, framing, idle, head)
        return response.status, sent, keep, response.keep_alive

    async def _read_response_head(self, upstream: _Stream, request: RequestHead) -> ResponseHead:
        deadline = time.monotonic() + self.config.app_timeout
        while True:
            try:
                end = find_head_end(upstream.buffer, MAX_RESPONSE_HEAD)
            except HandshakeError:
                raise _Refused(502, "the app's response head is too large") from None
            if end >= 0:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Refused(504, "the app did not answer in time")
            try:
                await upstream.fill(remaining)
            except _Closed:
                raise _Refused(502, "the app closed without an answer") from None
        head = upstream.take(end)
        try:
            return parse_response_head(
                head, request_method=request.method, limit=MAX_RESPONSE_HEAD, max_lines=1000
            )
        except HandshakeError as exc:
            raise _Refused(502, f"the app's answer is malformed: {exc.reason}") from None


def _document_answer(document: bytes, *, close: bool) -> bytes:
    return simple_response(
        200,
        document,
        content_type=DOCUMENT_TYPE,
        extra=((b"cache-control", b"no-store"),),
        close=close,
    )


def _abort_on_failure(task: asyncio.Future[None], stream: _Stream) -> None:
    if not task.cancelled() and task.exception() is not None:
        stream.abort()


class _BodyRelay:
    """Moves a request body from the client to the app as it arrives."""

    __slots__ = ("client", "idle", "moved", "request", "upstream")

    def __init__(
        self, client: _Stream, upstream: _Stream, request: RequestHead, idle: float
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.request = request
        self.idle = idle
        self.moved = 0

    async def run(self) -> None:
        if self.request.framing == "length":
            remaining = self.request.length
            while remaining:
                if not self.client.buffer:
                    await self.client.fill(self.idle)
                piece = self.client.take(min(remaining, PIECE))
                remaining -= len(piece)
                self.moved += len(piece)
                await self.upstream.send(piece, self.idle)
            return
        decoder = ChunkedDecoder()
        while not decoder.done:
            if not self.client.buffer:
                await self.client.fill(self.idle)
            data = self.client.take(len(self.client.buffer))
            try:
                pieces, rest = decoder.feed(data)
            except HandshakeError as exc:
                raise _Closed(exc.reason) from None
            self.client.buffer[:0] = rest  # the next request's bytes, if pipelined
            payload = b"".join(chunk(p) for p in pieces if p)
            self.moved += sum(len(p) for p in pieces)
            if payload:
                await self.upstream.send(payload, self.idle)
        await self.upstream.send(LAST_CHUNK, self.idle)


async def _relay_response_body(
    upstream: _Stream, client: _Stream, response: ResponseHead, framing: str, idle: float,
    head: bytes,
) -> int:
    """Send ``head`` and the app's body to the client, the body re-framed as ``framing``; the
    bytes of payload moved. The head goes out with the body's first piece (one TLS record)."""
    sent = 0
    if response.framing == "none":
        await client.send(head, idle)
        return 0
    if response.framing == "length":
        remaining = response.length
        prefix = head
        while remaining:
            if not upstream.buffer:
                if prefix:  # the body is not here yet: do not hold the head back for it
                    await client.send(prefix, idle)
                    prefix = b""
                await upstream.fill(idle)
            piece = upstream.take(min(remaining, PIECE))
            remaining -= len(piece)
            sent += len(piece)
            await client.send(prefix + piece if prefix else piece, idle)
            prefix = b""
        if prefix:
            await client.send(prefix, idle)
        return sent
    await client.send(head, idle)
    decoder = ChunkedDecoder() if response.framing == "chunked" else None
    while True:
        if not upstream.buffer:
            try:
                await upstream.fill(idle)
            except _Closed:
                if decoder is not None:
                    raise
                break  # a close-delimited body ends here
        data = upstream.take(len(upstream.buffer))
        if decoder is not None:
            try:
                pieces, rest = decoder.feed(data)
            except HandshakeError as exc:
                raise _Closed(exc.reason) from None
            if rest:
                raise _Closed("bytes after the app's chunked body")
        else:
            pieces = [data]
        size = sum(len(p) for p in pieces)
        sent += size
        if size:
            out = b"".join(chunk(p) for p in pieces if p) if framing == "chunked" else b"".join(
                pieces
            )
            await client.send(out, idle)
        if decoder is not None and decoder.done:
            break
    if framing == "chunked":
        await client.send(LAST_CHUNK, idle)
    return sent


__all__ = [
    "Attester",
    "FrontConfig",
    "HttpsFront",
    "LoggingRequestLog",
    "RequestLog",
    "seal_caller_key_pcr",
]
