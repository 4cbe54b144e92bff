"""The enclave attestation server: answers protocol requests with the NSM, over any transport.

One asyncio loop accepts connections; each connection is a protocol object that reassembles
frames and can carry several requests. Admission (limits, deadlines, shedding) is in
``admission``. Handlers are blocking callables keyed by request type, run inline on the loop: an
NSM call takes a fraction of a millisecond (the simulator's signature) to a few (the device, which
serialises its callers anyway), and handing it to a thread cost more CPU than the call itself
(bench/server.py). A client that misbehaves only ever loses its own connection.

Answers are sent in turns: every request that became whole in one pass of the loop is answered,
then the request log writes their lines in one go (``RequestLog.flush``), then the answers go out.
One log write per turn instead of one per request is most of what batching saves
(bench/server.py), and the order keeps the log from ever lagging behind what a client has seen.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import signal
import termios
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from nitro_attest.attestation.caller_keys import (
    CALLER_KEY_LABEL,
    CALLER_KEY_PCR,
    MARKED_PCR_VALUE,
    PRISTINE_PCR_VALUE,
)
from nitro_attest.errors import ConfigurationError
from nitro_attest.nsm.backend import NsmBackend, NsmError, PcrDescription
from nitro_attest.server_limits import SERVE_LIMITS, Limits
from nitro_attest.wire import protocol
from nitro_attest.wire.admission import (
    FRAME,
    IDLE,
    STALLED,
    ConnectionTable,
    Member,
    RateLimitedCount,
    descriptor_budget,
    sweep_interval,
)
from nitro_attest.wire.protocol import (
    HEADER_SIZE,
    AttestationResponse,
    AttestRequest,
    DescribeRequest,
    DescriptionResponse,
    ErrorResponse,
    ProtocolError,
    PublicKeyRefusedError,
    Request,
    RequestHandler,
    Response,
)
from nitro_attest.wire.transport import DEFAULT_SOCKET_MODE, Address, start_server

log = logging.getLogger("nitro_attest.wire.server")

_MAX_DESCRIBED_PCRS = 32


class RequestLog(Protocol):
    """Where the server's line per request goes: held by ``request``, written by ``flush``."""

    def request(self, line: str) -> None: ...

    def flush(self) -> None: ...


class LoggingRequestLog:
    """The default: each line is an INFO record of this module's logger, at once."""

    def request(self, line: str) -> None:
        log.info("%s", line)

    def flush(self) -> None:
        pass


def check_caller_public_key(public_key: bytes | None, *, allow: bool) -> None:
    """Refuse a caller-chosen public_key unless allowed; refuse a channel-shaped one always.

    The NSM signs whatever key it is given, so a caller choosing the key turns the enclave into a
    signing oracle for whoever reaches the port (docs/threat-model.md).
    """
    if public_key is None:
        return
    if public_key.startswith(protocol.CHANNEL_KEY_PREFIX):
        raise PublicKeyRefusedError(
            "a public_key in the attested-channel format is attested only by the enclave's own "
            "channel code (use channel_attest), never for a caller"
        )
    if not allow:
        raise PublicKeyRefusedError(
            "this enclave does not attest caller-chosen public keys (its operator can allow them "
            "with serve --allow-caller-public-key)"
        )


class PcrRegisters(Protocol):
    """The part of an NSM backend that marks documents (``settle_caller_key_pcr``)."""

    def describe_pcr(self, index: int) -> PcrDescription: ...

    def extend_pcr(self, index: int, data: bytes) -> bytes: ...

    def lock_pcr(self, index: int) -> None: ...


def settle_caller_key_pcr(nsm: PcrRegisters, *, allow: bool) -> None:
    """Lock PCR16 so every document says whether this enclave attests caller-chosen keys.

    ``allow``: extend it with the caller-key label, then lock it (attestation.caller_keys); if
    it is already locked with any other value, raise ConfigurationError: the enclave could not
    say so. Otherwise lock it untouched, so documents carry the value relying parties require;
    a PCR16 already marked or holding another value is left alone with a warning (our relying
    parties refuse those documents). Idempotent; the NSM's own errors pass as NsmError.
    """
    pcr = f"PCR{CALLER_KEY_PCR}"
    want = MARKED_PCR_VALUE if allow else PRISTINE_PCR_VALUE
    now = nsm.describe_pcr(CALLER_KEY_PCR)
    if now.locked and now.data == want:
        return
    if not allow:
        if now.locked or now.data != PRISTINE_PCR_VALUE:
            what = "the caller-key mark" if now.data == MARKED_PCR_VALUE else "another value"
            log.warning(
                "%s holds %s (%s): nitro-attest's relying parties refuse this enclave's "
                "documents until it restarts", pcr, what, "locked" if now.locked else "unlocked",
            )  # fmt: skip
            return
        nsm.lock_pcr(CALLER_KEY_PCR)
    else:
        if now.locked or now.data not in (PRISTINE_PCR_VALUE, MARKED_PCR_VALUE):
            raise ConfigurationError(
                f"{pcr} is {'locked' if now.locked else 'already extended'} with a value other "
                f"than the caller-key mark ({now.data.hex()[:16]}...): this enclave cannot mark "
                "its documents, so it will not attest caller-chosen keys"
            )
        if now.data == PRISTINE_PCR_VALUE:
            nsm.extend_pcr(CALLER_KEY_PCR, CALLER_KEY_LABEL)
        nsm.lock_pcr(CALLER_KEY_PCR)
    done = nsm.describe_pcr(CALLER_KEY_PCR)  # another extend may have raced ours
    if not (done.locked and done.data == want):
        raise ConfigurationError(
            f"{pcr} ended {'locked' if done.locked else 'unlocked'} at {done.data.hex()[:16]}..., "
            f"not the expected {'caller-key mark' if allow else 'untouched value'}"
        )


def nsm_handlers(
    backend: NsmBackend, *, allow_caller_public_key: bool = False
) -> dict[str, RequestHandler]:
    """The standard handlers: attestation and description, both answered by ``backend``.

    ``allow_caller_public_key`` lets an `attest` request name its own public_key: anyone who
    reaches the server then gets any key attested, so such a document proves nothing about who
    holds the key. Channel-shaped keys are refused regardless. Either way PCR16 is settled
    first (``settle_caller_key_pcr``): marked and locked with the opt-in, locked untouched
    without, so no document of an oracle enclave passes for one naming the enclave's own key.
    """
    settle_caller_key_pcr(backend, allow=allow_caller_public_key)

    def attest(request: Request) -> Response:
        assert isinstance(request, AttestRequest)
        check_caller_public_key(request.public_key, allow=allow_caller_public_key)
        document = backend.attestation(
            user_data=request.user_data, nonce=request.nonce, public_key=request.public_key
        )
        return AttestationResponse(document=document)

    def describe(request: Request) -> Response:
        assert isinstance(request, DescribeRequest)
        nsm = backend.describe_nsm()
        count = min(nsm.max_pcrs, _MAX_DESCRIBED_PCRS)
        pcrs: dict[int, PcrDescription] = {i: backend.describe_pcr(i) for i in range(count)}
        return DescriptionResponse(nsm=nsm, pcrs=pcrs)

    return {AttestRequest.TYPE: attest, DescribeRequest.TYPE: describe}


_OLD_NAMES = {"read_timeout": "idle_timeout", "max_frame_size": "max_frame_bytes"}


def with_overrides(limits: Limits, overrides: Mapping[str, float]) -> Limits:
    """``limits`` with single fields replaced (checked again); older keyword names accepted."""
    if not overrides:
        return limits
    named = {_OLD_NAMES.get(k, k): v for k, v in overrides.items()}
    unknown = sorted(set(named) - {f.name for f in dataclasses.fields(Limits)})
    if unknown:
        raise TypeError(f"unknown limit(s): {', '.join(unknown)}")
    return dataclasses.replace(limits, **named)  # type: ignore[arg-type]


def _size(value: bytes | None) -> str:
    return "-" if value is None else f"{len(value)}B"


def describe_request(request: Request) -> str:
    """What a log line may say about a request: sizes only, never the values."""
    if isinstance(request, AttestRequest):
        return (
            f"nonce={_size(request.nonce)} user_data={_size(request.user_data)} "
            f"public_key={_size(request.public_key)}"
        )
    return ""


def describe_response(response: Response) -> str:
    if isinstance(response, AttestationResponse):
        digest = hashlib.sha256(response.document).hexdigest()[:16]
        return f"attestation {len(response.document)}B sha256:{digest}"
    if isinstance(response, ErrorResponse):
        return f"error {response.code}"
    return response.TYPE


class EnclaveServer:
    """Serve protocol requests on one address until ``close()``."""

    def __init__(
        self,
        handlers: Mapping[str, RequestHandler],
        *,
        limits: Limits = SERVE_LIMITS,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        request_log: RequestLog | None = None,
        **overrides: float,
    ) -> None:
        """``limits``: what the server admits (fields it reads: max_connections, idle_timeout,
        frame_deadline, write_timeout, shed_grace, max_frame_bytes). ``overrides``: single
        fields by name (``max_connections=2``), or by their older names ``read_timeout``
        (idle_timeout) and ``max_frame_size`` (max_frame_bytes)."""
        if not handlers:
            raise ValueError("an enclave server needs at least one request handler")
        self._handlers = dict(handlers)
        self.limits = with_overrides(limits, overrides)
        self._table = ConnectionTable(self.limits)
        self._max_frame = self.limits.max_frame_bytes
        # Every connection reads into this one buffer, then keeps only what it received; no
        # connection buffers more than one whole frame (the rest waits in the kernel).
        self._scratch = memoryview(bytearray(HEADER_SIZE + self._max_frame))
        self._socket_mode = socket_mode
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._address: Address | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._connections: set[_Connection] = set()  # open or still flushing a last answer
        self._finishing: dict[_Connection, None] = {}  # closed by us, flushing, oldest first
        self._serial = 0
        self._closing = False
        self._log = request_log or LoggingRequestLog()
        self._answers: list[tuple[_Connection, bytes]] = []  # this turn's, in request order
        self.requests_served = 0
        self.answered: dict[tuple[str, str], int] = {}  # (request type, "ok" or error code)
        self.shed = RateLimitedCount(
            lambda n: log.warning(
                "shed %d least recently active connection(s) to admit new ones (limit %d)",
                n,
                self.limits.max_connections,
            )
        )
        self.refused = RateLimitedCount(
            lambda n: log.warning(
                "refused %d connection(s) busy: %d open, all younger than %gs",
                n,
                len(self._table),
                self.limits.shed_grace,
            )
        )
        self.log_failures = RateLimitedCount(
            lambda n: log.error("request log failed %d time(s); answers go out regardless", n)
        )

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("server not started")
        return self._address

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def start(self, address: Address) -> Address:
        self._loop = asyncio.get_running_loop()
        self._server, self._address = await start_server(
            address, self._new_connection, socket_mode=self._socket_mode
        )
        if address.scheme == "unix":
            st = os.stat(address.path)
            self._unix_inode = (st.st_dev, st.st_ino)
        self._sweeper = self._loop.call_later(sweep_interval(self.limits), self._sweep)
        return self._address

    async def close(self, *, drain: float = 0.0) -> None:
        """Stop accepting; for up to ``drain`` seconds answer every request already received
        (buffered, or waiting in the kernel) and close each connection once it has nothing left
        to answer; then drop what remains and remove our Unix socket file."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        if drain > 0 and self._connections:
            await self._drain(drain)
        for conn in list(self._connections):
            conn.abort()
        for _ in range(8):  # let the transports run their connection_lost callbacks
            await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._remove_unix_socket()

    async def _drain(self, deadline: float) -> None:
        assert self._loop is not None
        until = self._loop.time() + deadline
        while self._connections and self._loop.time() < until:
            for conn in list(self._connections):
                conn.close_if_done()
            await asyncio.sleep(_DRAIN_POLL)
        if self._connections:
            log.warning(
                "%d connection(s) still busy after the %gs drain deadline: dropped",
                len(self._connections), deadline,
            )  # fmt: skip

    def _remove_unix_socket(self) -> None:
        if self._address is None or self._address.scheme != "unix" or self._unix_inode is None:
            return
        with contextlib.suppress(OSError):
            st = os.stat(self._address.path)
            if (st.st_dev, st.st_ino) == self._unix_inode:  # never remove a successor's socket
                os.unlink(self._address.path)
        self._unix_inode = None

    # --- admission ------------------------------------------------------------------------------

    def _new_connection(self) -> _Connection:
        self._serial += 1
        assert self._loop is not None
        return _Connection(self, self._serial, self._loop.time())

    def _admit(self, conn: _Connection) -> bool:
        """Called when ``conn`` connects: make room by shedding, or refuse it. True: admitted."""
        self._connections.add(conn)
        if self._closing:
            conn.abort()
            return False
        now = conn.connected_at
        if self._table.full():
            victim = self._table.shed_candidate(now)
            if victim is None:
                self.refused.add(now)
                conn.finish(_BUSY)
                return False
            assert isinstance(victim, _Connection)
            self.shed.add(now)
            victim.finish(_BUSY)
        self._table.add(conn, now)
        return True

    def _sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for member in self._table.expired(now):
            assert isinstance(member, _Connection)
            member.expire()
        for conn in list(self._finishing):  # a last answer nobody reads must not hold a socket
            if conn.closing_since is not None and now - conn.closing_since < _FLUSH_TIMEOUT:
                break
            conn.abort()
        self.shed.flush(now)
        self.refused.flush(now)
        self.log_failures.flush(now)
        if not self._closing:
            self._sweeper = self._loop.call_later(sweep_interval(self.limits), self._sweep)

    def _closing_now(self, conn: _Connection) -> float:
        """``conn`` is being closed by us: out of the table, flushing; returns the time."""
        assert self._loop is not None
        self._table.remove(conn)
        self._finishing[conn] = None
        return self._loop.time()

    def _forget(self, conn: _Connection) -> None:
        self._table.remove(conn)
        self._finishing.pop(conn, None)
        self._connections.discard(conn)

    # --- requests -------------------------------------------------------------------------------

    def _queue_answer(self, conn: _Connection, answer: bytes) -> None:
        self._answers.append((conn, answer))
        if len(self._answers) > 1:
            return  # the turn's end is already scheduled
        assert self._loop is not None
        # asyncio's queue of callbacks for this pass of the loop (uvloop has none: always
        # schedule). Empty means no other connection is ready in this pass: the turn ends here,
        # without a second pass and its epoll_wait (what a lone client paid per request).
        pending = getattr(self._loop, "_ready", None)
        if pending is not None and not pending:
            self._end_turn()
        else:
            self._loop.call_soon(self._end_turn)

    def _end_turn(self) -> None:
        """Write this turn's log lines, then send its answers."""
        answers, self._answers = self._answers, []
        self._flush_log()
        for conn, answer in answers:
            try:
                conn.send_answer(answer)
            except Exception as exc:  # a bug on one connection must not strand the others
                log.error("%s answer not sent: %s", conn._peer, type(exc).__name__)
                conn.abort()

    def _flush_log(self) -> None:
        """Write the held lines. A failing log (a custom RequestLog) costs its lines, but never
        an answer, a connection or the sweeper, like ServerLogHandler on a broken stream."""
        try:
            self._log.flush()
        except Exception:
            self.log_failures.add(time.monotonic())

    def dispatch(self, body: bytes, peer: str) -> Response:
        started = time.perf_counter()
        detail = ""
        try:
            request = protocol.decode_request(body)
        except ProtocolError as exc:
            response: Response = protocol.error_for(exc)
            kind = "?"
        else:
            kind = request.TYPE
            detail = describe_request(request)
            handler = self._handlers.get(request.TYPE)
            if handler is None:
                response = ErrorResponse("unknown_type", f"this server does not serve {kind!r}")
            else:
                response = self._run_handler(handler, request, peer)
        self.requests_served += 1
        # For --metrics: answers by request type and outcome, read at scrape time.
        outcome = (kind, response.code if isinstance(response, ErrorResponse) else "ok")
        self.answered[outcome] = self.answered.get(outcome, 0) + 1
        elapsed = (time.perf_counter() - started) * 1000
        try:
            self._log.request(
                f"{peer} {kind} {detail or '-'} -> {describe_response(response)} {elapsed:.1f}ms"
            )
        except Exception:
            self.log_failures.add(time.monotonic())
        return response

    def _encode_answer(self, response: Response, peer: str) -> bytes:
        """The framed answer; one that cannot be framed (a handler's bug) is an internal error."""
        try:
            return response.encode()
        except ProtocolError as exc:
            log.error("%s answer %s too large to send: %s", peer, response.TYPE, exc)
            return _INTERNAL

    def _run_handler(self, handler: RequestHandler, request: Request, peer: str) -> Response:
        try:
            return handler(request)
        except NsmError as exc:
            return ErrorResponse("nsm_error", str(exc))
        except ProtocolError as exc:
            return protocol.error_for(exc)
        except Exception as exc:
            log.error("%s handler %s failed: %s", peer, request.TYPE, _failure(exc))
            return _INTERNAL_ERROR


def _failure(exc: Exception) -> str:
    """What the log says about a handler's unexpected exception: its class, and for an OSError
    the errno, its text and the path, which say what the operator must fix ("No space left on
    device"). Never the exception's own message: it may quote request data. The client gets
    only "internal"."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return type(exc).__name__
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = "".join(
        f": {os.fsdecode(p) if isinstance(p, str | bytes | os.PathLike) else str(p)!r}"
        for p in paths
    )  # repr: a path is text from anywhere, never a second log line
    return f"{type(exc).__name__} [{name}] {exc.strerror or os.strerror(exc.errno)}{where}"


_FLUSH_TIMEOUT = 1.0  # seconds a closed connection may take to flush its last answer
_DRAIN_POLL = 0.01
_BUSY = ErrorResponse("busy", "too many connections, retry later").encode()
_TIMEOUT = ErrorResponse("timeout", "frame not completed in time").encode()
_INTERNAL_ERROR = ErrorResponse("internal", "the enclave failed to answer this request")
_INTERNAL = _INTERNAL_ERROR.encode()


class _Connection(asyncio.BufferedProtocol, Member):
    """One client connection: reassembles frames and answers each; it never waits on anything."""

    __slots__ = (
        "_answering",
        "_buf",
        "_eof",
        "_held",
        "_paused",
        "_peer",
        "_serial",
        "_server",
        "_transport",
        "closing_since",
    )  # fmt: skip

    def __init__(self, server: EnclaveServer, serial: int, now: float) -> None:
        Member.__init__(self, now)
        self._server = server
        self._serial = serial
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._peer = f"#{serial}"
        self._paused = False  # the client is not reading our answers
        self._held = False  # we stopped reading: the buffer holds a whole frame
        self._eof = False
        self._answering = False  # an answer waits for the end of the turn
        self.closing_since: float | None = None

    # --- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = f"#{self._serial} {peer[0]}:{peer[1]}"
        self._server._admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._forget(self)
        self._buf = bytearray()
        # A _process scheduled before the loss (after a failed write) must not enlist us again.
        self._transport = None

    def get_buffer(self, sizehint: int) -> memoryview:
        # Never empty: reading is paused while the buffer holds a whole frame (see below).
        room = len(self._server._scratch) - len(self._buf)
        return self._server._scratch[: max(1, room)]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing_since is not None:
            return
        self._buf += self._server._scratch[:nbytes]
        if len(self._buf) >= len(self._server._scratch):
            self._set_reading(False)  # read on once this frame is answered
        self._process()
        if self.state == IDLE and self._buf:
            self._enter(FRAME)  # a frame has started: its deadline runs from its first byte

    def eof_received(self) -> bool:
        self._eof = True
        self._process()  # answers a whole frame still buffered, then finishes
        return True  # we close once our answers are out

    def pause_writing(self) -> None:
        self._paused = True
        if self.state is not None and self.closing_since is None:
            self._enter(STALLED)

    def resume_writing(self) -> None:
        self._paused = False
        if self.state == STALLED:
            self._enter(FRAME if self._buf else IDLE)
            self._later()

    # --- frames ---------------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer one whole frame if the buffer holds one; the next waits for the next loop turn."""
        if self.closing_since is not None or self._paused or self._answering:
            return
        if self._transport is None:
            return
        server = self._server
        length = 0
        if len(self._buf) >= HEADER_SIZE:
            try:
                length = protocol.decode_header(
                    bytes(self._buf[:HEADER_SIZE]), max_size=server._max_frame
                )
            except ProtocolError as exc:
                log.warning("%s rejected frame: %s", self._peer, exc)
                self.finish(protocol.error_for(exc).encode())
                return
        end = HEADER_SIZE + length
        if not length or len(self._buf) < end:
            if self._eof:
                if self._buf:
                    what = "mid-header" if len(self._buf) < HEADER_SIZE else "mid-frame"
                    log.warning("%s closed %s", self._peer, what)
                self.finish(None)
            return
        body = bytes(self._buf[HEADER_SIZE:end])
        del self._buf[:end]
        self._enter(None)  # being answered: no deadline, not sheddable
        self._answering = True
        response = server.dispatch(body, self._peer)
        if isinstance(response, ErrorResponse) and response.code == "bad_frame":
            self._answering = False
            self.finish(response.encode())  # framing is lost; the connection cannot continue
            return
        server._queue_answer(self, server._encode_answer(response, self._peer))

    def send_answer(self, answer: bytes) -> None:
        """Send one queued answer (end of the turn), then read or answer on."""
        self._answering = False
        if self.closing_since is not None or self._transport is None:
            return  # closed by us, or lost; an abort still pending drops the write
        self._transport.write(answer)  # may call pause_writing()
        if self._paused:
            self._enter(STALLED)
            return
        self._enter(FRAME if self._buf else IDLE)
        self._set_reading(True)
        if self._buf or self._eof:
            self._later()

    def _later(self) -> None:
        assert self._server._loop is not None
        self._server._loop.call_soon(self._process)

    def _enter(self, state: str | None) -> None:
        assert self._server._loop is not None
        self._server._table.enter(self, state, self._server._loop.time())

    def _set_reading(self, on: bool) -> None:
        if on is not self._held:  # only this class pauses reading; nothing to change
            return
        self._held = not on
        if self._transport is None or self._transport.is_closing():
            return
        if on and not self._transport.is_reading():
            self._transport.resume_reading()
        elif not on and self._transport.is_reading():
            self._transport.pause_reading()

    # --- endings --------------------------------------------------------------------------------

    def expire(self) -> None:
        """The current state's deadline passed."""
        if self.state == FRAME:
            log.warning("%s sent half a frame and went quiet", self._peer)
            self.finish(_TIMEOUT)
        elif self.state == STALLED:
            log.warning("%s does not read its answers: dropped", self._peer)
            self.abort()
        else:
            self.finish(None)  # idle: drop quietly

    def finish(self, last: bytes | None) -> None:
        """Send ``last`` (if any) and close once it is flushed; read nothing more."""
        if self.closing_since is not None or self._transport is None:
            return
        self.closing_since = self._server._closing_now(self)
        if last is not None and not self._paused:
            self._server._flush_log()  # what led to this answer is logged first
            self._transport.write(last)
        self._transport.close()

    def close_if_done(self) -> None:
        """While the server drains: close once nothing received is left to answer, nothing is
        left to send, and the kernel holds no unread bytes (a request that arrived counts)."""
        transport = self._transport
        if self.closing_since is not None or transport is None:
            return
        if self._buf or self._answering or self._paused or transport.get_write_buffer_size():
            return
        if _unread_bytes(transport):
            self._set_reading(True)  # read it: it is answered like any other request
            return
        self.finish(None)

    def abort(self) -> None:
        self._server._table.remove(self)
        if self._transport is not None:
            self._transport.abort()


def _unread_bytes(transport: asyncio.Transport) -> int:
    """Bytes the kernel received on this connection that we have not read (FIONREAD)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf, True)
    except OSError:
        return 0
    return buf[0]


async def serve(
    address: Address,
    handlers: Mapping[str, RequestHandler],
    *,
    ready: Callable[[Address], None] | None = None,
    stop: asyncio.Event | None = None,
    limits: Limits = SERVE_LIMITS,
    socket_mode: int = DEFAULT_SOCKET_MODE,
    request_log: RequestLog | None = None,
    created: Callable[[EnclaveServer], None] | None = None,
    **overrides: float,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then shut down cleanly: requests already
    received are answered for up to ``limits.drain_timeout`` seconds before connections close.

    ``request_log`` takes the line per request (default: INFO records of this module's logger);
    ``created`` is handed the server before it listens (its counters feed ``serve --metrics``).
    ``overrides`` as for EnclaveServer (``drain_timeout=0``...).
    """
    limits = with_overrides(limits, overrides)
    cap, fd_limit = descriptor_budget(limits.max_connections)
    if cap < limits.max_connections:
        log.warning(
            "open-file limit %d allows %d connections, not %d: serving %d",
            fd_limit, cap, limits.max_connections, cap,
        )  # fmt: skip
    server = EnclaveServer(
        handlers,
        limits=dataclasses.replace(limits, max_connections=cap),
        socket_mode=socket_mode,
        request_log=request_log,
    )
    if created is not None:
        created(server)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        bound = await server.start(address)
        limits = server.limits
        log.info(
            "listening on %s (at most %d connections; frame deadline %gs, idle timeout %gs)",
            bound, limits.max_connections, limits.frame_deadline, limits.idle_timeout,
        )  # fmt: skip
        if ready is not None:
            ready(bound)
        await stop.wait()
        log.info("shutting down after %d request(s)", server.requests_served)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await server.close(drain=limits.drain_timeout)
