"""The enclave attestation server: answers protocol requests with the NSM, over any transport.

One asyncio loop accepts connections; each connection reads frames with a read timeout and can
send several requests. Handlers are blocking callables keyed by request type, run in a small
thread pool so NSM work (an ioctl, or the simulator's signing) never stalls the loop. A client
that misbehaves only ever loses its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from nitro_attest.limits import MAX_FRAME_BYTES
from nitro_attest.nsm.backend import NsmBackend, NsmError, PcrDescription
from nitro_attest.wire import protocol
from nitro_attest.wire.protocol import (
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
from nitro_attest.wire.transport import Address, start_server

log = logging.getLogger("nitro_attest.wire.server")

DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_WRITE_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 64
# NSM calls run here. Both backends are thread-safe (the device serialises its ioctls, the
# simulator signs outside its lock, and signing releases the GIL), so two threads let the
# signing of one request overlap the loop's socket work and a second signature.
DEFAULT_WORKERS = 2
_MAX_DESCRIBED_PCRS = 32


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


def nsm_handlers(
    backend: NsmBackend, *, allow_caller_public_key: bool = False
) -> dict[str, RequestHandler]:
    """The standard handlers: attestation and description, both answered by ``backend``.

    ``allow_caller_public_key`` lets an `attest` request name its own public_key: anyone who
    reaches the server then gets any key attested, so such a document proves nothing about who
    holds the key. Channel-shaped keys are refused regardless.
    """

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
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_frame_size: int = MAX_FRAME_BYTES,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if not handlers:
            raise ValueError("an enclave server needs at least one request handler")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._handlers = dict(handlers)
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._max_connections = max_connections
        self._max_frame = max_frame_size
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nsm")
        self._server: asyncio.Server | None = None
        self._address: Address | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._serial = 0
        self._closing = False
        self.requests_served = 0

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("server not started")
        return self._address

    @property
    def active_connections(self) -> int:
        return len(self._tasks)

    async def start(self, address: Address) -> Address:
        self._server, self._address = await start_server(address, self._on_connect)
        if address.scheme == "unix":
            st = os.stat(address.path)
            self._unix_inode = (st.st_dev, st.st_ino)
        return self._address

    async def close(self) -> None:
        """Stop accepting, drop open connections, remove our Unix socket file."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for _ in range(8):  # let connections accepted just before close() see _closing
            await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._remove_unix_socket()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _remove_unix_socket(self) -> None:
        if self._address is None or self._address.scheme != "unix" or self._unix_inode is None:
            return
        with contextlib.suppress(OSError):
            st = os.stat(self._address.path)
            if (st.st_dev, st.st_ino) == self._unix_inode:  # never remove a successor's socket
                os.unlink(self._address.path)
        self._unix_inode = None

    # --- connections ----------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._serial += 1
        if self._closing:
            writer.close()
            return
        peer = _peer_name(writer, self._serial)
        if len(self._tasks) >= self._max_connections:
            log.warning("%s refused: %d connections open (limit)", peer, len(self._tasks))
            with contextlib.suppress(Exception):
                writer.write(ErrorResponse("busy", "too many connections, retry later").encode())
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer, peer)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # one connection's failure must never reach the others
            log.error("%s connection failed: %s: %s", peer, type(exc).__name__, exc)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(self._read_timeout):  # no task per read, unlike wait_for
                    header = await reader.readexactly(protocol.HEADER_SIZE)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    log.warning("%s closed mid-header", peer)
                return  # a clean close between requests
            except (TimeoutError, ConnectionError):
                return  # idle or reset: drop quietly
            try:
                length = protocol.decode_header(header, max_size=self._max_frame)
            except ProtocolError as exc:
                log.warning("%s rejected frame: %s", peer, exc)
                await self._send(writer, protocol.error_for(exc))
                return  # framing is lost; the connection cannot continue
            try:
                async with asyncio.timeout(self._read_timeout):
                    body = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                log.warning("%s closed mid-frame", peer)
                return
            except TimeoutError:
                log.warning("%s sent half a frame and went quiet", peer)
                await self._send(writer, ErrorResponse("timeout", "frame not completed in time"))
                return
            except ConnectionError:
                return
            response = await self._dispatch(body, peer)
            if not await self._send(writer, response):
                return
            if isinstance(response, ErrorResponse) and response.code == "bad_frame":
                return

    async def _dispatch(self, body: bytes, peer: str) -> Response:
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
                response = await self._run_handler(handler, request, peer)
        self.requests_served += 1
        elapsed = (time.perf_counter() - started) * 1000
        log.info(
            "%s %s %s -> %s %.1fms",
            peer,
            kind,
            detail or "-",
            describe_response(response),
            elapsed,
        )
        return response

    async def _run_handler(self, handler: RequestHandler, request: Request, peer: str) -> Response:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, handler, request)
        except NsmError as exc:
            return ErrorResponse("nsm_error", str(exc))
        except ProtocolError as exc:
            return protocol.error_for(exc)
        except Exception as exc:
            log.error("%s handler %s failed: %s", peer, request.TYPE, type(exc).__name__)
            return ErrorResponse("internal", "the enclave failed to answer this request")

    async def _send(self, writer: asyncio.StreamWriter, response: Response) -> bool:
        try:
            writer.write(response.encode())
            async with asyncio.timeout(self._write_timeout):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return True


def _peer_name(writer: asyncio.StreamWriter, serial: int) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"#{serial} {peer[0]}:{peer[1]}"
    return f"#{serial}"


async def serve(
    address: Address,
    handlers: Mapping[str, RequestHandler],
    *,
    ready: Callable[[Address], None] | None = None,
    stop: asyncio.Event | None = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then shut down cleanly."""
    server = EnclaveServer(handlers, read_timeout=read_timeout, max_connections=max_connections)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        bound = await server.start(address)
        log.info("listening on %s", bound)
        if ready is not None:
            ready(bound)
        await stop.wait()
        log.info("shutting down after %d request(s)", server.requests_served)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await server.close()
