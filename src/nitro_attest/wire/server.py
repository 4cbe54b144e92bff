"""The enclave attestation server: answers protocol requests with the NSM, over any transport.

One asyncio loop accepts connections; each connection is a protocol object that reassembles
frames and can carry several requests. Admission (limits, deadlines, shedding) is in
``admission``, the connection's protocol in ``connection``, the typed table of handlers in
``routes``. Handlers are blocking callables, one per request type, run inline on the loop: an
NSM call takes a fraction of a millisecond (the simulator's signature) to a few (the device, which
serialises its callers anyway), and handing it to a thread cost more CPU than the call itself
(bench/server.py). A client that misbehaves only ever loses its own connection.

Answers are sent in turns: every request that became whole in one pass of the loop is answered,
then the request log writes their lines in one go (``RequestLog.flush``), then the answers go out.
One log write per turn instead of one per request is most of what batching saves
(bench/server.py), and the order keeps the log from ever lagging behind what a client has seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from nitro_attest.nsm.backend import NsmError
from nitro_attest.server_limits import SERVE_LIMITS, Limits
from nitro_attest.wire import protocol
from nitro_attest.wire.admission import (
    ConnectionTable,
    RateLimitedCount,
    descriptor_budget,
    sweep_interval,
)
from nitro_attest.wire.connection import BUSY_ANSWER, FLUSH_TIMEOUT, Connection
from nitro_attest.wire.protocol import (
    HEADER_SIZE,
    AttestationResponse,
    AttestRequest,
    ErrorResponse,
    ProtocolError,
    Request,
    RequestHandler,
    RequestRefused,
    Response,
)
from nitro_attest.wire.routes import PcrRegisters as PcrRegisters  # re-exported: their home
from nitro_attest.wire.routes import Route, Routes  # was this module, callers import them here
from nitro_attest.wire.routes import check_caller_public_key as check_caller_public_key
from nitro_attest.wire.routes import nsm_handlers as nsm_handlers
from nitro_attest.wire.routes import nsm_routes as nsm_routes
from nitro_attest.wire.routes import settle_caller_key_pcr as settle_caller_key_pcr
from nitro_attest.wire.transport import DEFAULT_SOCKET_MODE, Address, start_server

log = logging.getLogger("nitro_attest.wire.server")


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


def summarize_request(request: Request) -> str:
    """What a log line may say about a request: sizes only, never the values."""
    if isinstance(request, AttestRequest):
        return (
            f"nonce={_size(request.nonce)} user_data={_size(request.user_data)} "
            f"public_key={_size(request.public_key)}"
        )
    return ""


def summarize_response(response: Response) -> str:
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
        routes: Routes | Mapping[str, RequestHandler],
        *,
        limits: Limits = SERVE_LIMITS,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        request_log: RequestLog | None = None,
        **overrides: float,
    ) -> None:
        """``routes``: the table (``nsm_routes``, channel.routes.enclave_routes), or the older
        dict of handlers by request type. ``limits``: what the server admits (fields it reads:
        max_connections, idle_timeout, frame_deadline, write_timeout, shed_grace,
        max_frame_bytes). ``overrides``: single fields by name (``max_connections=2``), or by
        their older names ``read_timeout`` (idle_timeout), ``max_frame_size`` (max_frame_bytes).
        """
        if not isinstance(routes, Routes):
            routes = Routes.from_handlers(routes)
        if not routes:
            raise ValueError("an enclave server needs at least one request handler")
        self._routes = routes
        self.limits = with_overrides(limits, overrides)
        self.table = ConnectionTable(self.limits)
        self.max_frame = self.limits.max_frame_bytes
        # Every connection reads into this one buffer, then keeps only what it received; no
        # connection buffers more than one whole frame (the rest waits in the kernel).
        self.scratch = memoryview(bytearray(HEADER_SIZE + self.max_frame))
        self._socket_mode = socket_mode
        self._server: asyncio.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._address: Address | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._connections: set[Connection] = set()  # open or still flushing a last answer
        self._finishing: dict[Connection, None] = {}  # closed by us, flushing, oldest first
        self._serial = 0
        self._closing = False
        self._log = request_log or LoggingRequestLog()
        self._answers: list[tuple[Connection, bytes]] = []  # this turn's, in request order
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
                len(self.table),
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
        self.loop = asyncio.get_running_loop()
        self._server, self._address = await start_server(
            address, self._new_connection, socket_mode=self._socket_mode
        )
        if address.scheme == "unix":
            st = os.stat(address.path)
            self._unix_inode = (st.st_dev, st.st_ino)
        self._sweeper = self.loop.call_later(sweep_interval(self.limits), self._sweep)
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
        assert self.loop is not None
        until = self.loop.time() + deadline
        while self._connections and self.loop.time() < until:
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

    def _new_connection(self) -> Connection:
        self._serial += 1
        assert self.loop is not None
        return Connection(self, self._serial, self.loop.time())

    def admit(self, conn: Connection) -> bool:
        """Called when ``conn`` connects: make room by shedding, or refuse it. True: admitted."""
        self._connections.add(conn)
        if self._closing:
            conn.abort()
            return False
        now = conn.connected_at
        if self.table.full():
            victim = self.table.shed_candidate(now)
            if victim is None:
                self.refused.add(now)
                conn.finish(BUSY_ANSWER)
                return False
            assert isinstance(victim, Connection)
            self.shed.add(now)
            victim.finish(BUSY_ANSWER)
        self.table.add(conn, now)
        return True

    def _sweep(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        for member in self.table.expired(now):
            assert isinstance(member, Connection)
            member.expire()
        for conn in list(self._finishing):  # a last answer nobody reads must not hold a socket
            if conn.closing_since is not None and now - conn.closing_since < FLUSH_TIMEOUT:
                break
            conn.abort()
        self.shed.flush(now)
        self.refused.flush(now)
        self.log_failures.flush(now)
        if not self._closing:
            self._sweeper = self.loop.call_later(sweep_interval(self.limits), self._sweep)

    def closing_now(self, conn: Connection) -> float:
        """``conn`` is being closed by us: out of the table, flushing; returns the time."""
        assert self.loop is not None
        self.table.remove(conn)
        self._finishing[conn] = None
        return self.loop.time()

    def forget(self, conn: Connection) -> None:
        self.table.remove(conn)
        self._finishing.pop(conn, None)
        self._connections.discard(conn)

    # --- requests -------------------------------------------------------------------------------

    def queue_answer(self, conn: Connection, answer: bytes) -> None:
        self._answers.append((conn, answer))
        if len(self._answers) > 1:
            return  # the turn's end is already scheduled
        assert self.loop is not None
        # asyncio's queue of callbacks for this pass of the loop (uvloop has none: always
        # schedule). Empty means no other connection is ready in this pass: the turn ends here,
        # without a second pass and its epoll_wait (what a lone client paid per request).
        pending = getattr(self.loop, "_ready", None)
        if pending is not None and not pending:
            self._end_turn()
        else:
            self.loop.call_soon(self._end_turn)

    def _end_turn(self) -> None:
        """Write this turn's log lines, then send its answers."""
        answers, self._answers = self._answers, []
        self.flush_log()
        for conn, answer in answers:
            try:
                conn.send_answer(answer)
            except Exception as exc:  # a bug on one connection must not strand the others
                log.error("%s answer not sent: %s", conn.peer, type(exc).__name__)
                conn.abort()

    def flush_log(self) -> None:
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
            request = self._routes.decode(body)
        except ProtocolError as exc:
            response: Response = protocol.error_for(exc)
            request_type = "?"
        else:
            request_type = request.TYPE
            detail = summarize_request(request)
            route = self._routes.get(request_type)
            if route is None:
                response = ErrorResponse(
                    "unknown_type", f"this server does not serve {request_type!r}"
                )
            else:
                response = self._run_handler(route, request, peer)
        self.requests_served += 1
        # For --metrics: answers by request type and outcome, read at scrape time.
        outcome = (request_type, response.code if isinstance(response, ErrorResponse) else "ok")
        self.answered[outcome] = self.answered.get(outcome, 0) + 1
        elapsed = (time.perf_counter() - started) * 1000
        try:
            self._log.request(
                f"{peer} {request_type} {detail or '-'} -> {summarize_response(response)} "
                f"{elapsed:.1f}ms"
            )
        except Exception:
            self.log_failures.add(time.monotonic())
        return response

    def encode_answer(self, response: Response, peer: str) -> bytes:
        """The framed answer; one that cannot be framed (a handler's bug) is an internal error."""
        try:
            return response.encode()
        except ProtocolError as exc:
            log.error("%s answer %s too large to send: %s", peer, response.TYPE, exc)
            return _INTERNAL

    def _run_handler(self, route: Route[Request], request: Request, peer: str) -> Response:
        try:  # ``request`` was decoded by this route's own class (Routes.decode)
            return route.handle(request)
        except NsmError as exc:
            return ErrorResponse("nsm_error", str(exc))
        except RequestRefused as exc:
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


_DRAIN_POLL = 0.01
_INTERNAL_ERROR = ErrorResponse("internal", "the enclave failed to answer this request")
_INTERNAL = _INTERNAL_ERROR.encode()


async def serve(
    address: Address,
    routes: Routes | Mapping[str, RequestHandler],
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
        routes,
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
