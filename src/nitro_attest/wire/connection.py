"""One client connection of the enclave server: an asyncio protocol that reassembles frames,
answers each through its server, and keeps its place in the admission table.

It never waits on anything: a whole frame is dispatched inline, its answer queued for the end of
the server's turn (``ConnectionOwner.queue_answer``). What it needs of the server is the
``ConnectionOwner`` protocol below (EnclaveServer implements it).
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import termios
from typing import Protocol

from nitro_attest.wire import protocol
from nitro_attest.wire.admission import FRAME, IDLE, STALLED, ConnectionTable, Member
from nitro_attest.wire.protocol import HEADER_SIZE, ErrorResponse, ProtocolError, Response

# One logger for the whole server (serve's handler is attached to it).
log = logging.getLogger("nitro_attest.wire.server")


class ConnectionOwner(Protocol):
    """What a connection needs of its server."""

    scratch: memoryview  # every connection reads into this one buffer
    max_frame: int
    table: ConnectionTable
    loop: asyncio.AbstractEventLoop | None

    def admit(self, conn: Connection) -> bool: ...

    def forget(self, conn: Connection) -> None: ...

    def dispatch(self, body: bytes, peer: str) -> Response: ...

    def encode_answer(self, response: Response, peer: str) -> bytes: ...

    def queue_answer(self, conn: Connection, answer: bytes) -> None: ...

    def closing_now(self, conn: Connection) -> float: ...

    def flush_log(self) -> None: ...


FLUSH_TIMEOUT = 1.0  # seconds a closed connection may take to flush its last answer
BUSY_ANSWER = ErrorResponse("busy", "too many connections, retry later").encode()
TIMEOUT_ANSWER = ErrorResponse("timeout", "frame not completed in time").encode()


class Connection(asyncio.BufferedProtocol, Member):
    """One client connection: reassembles frames and answers each; it never waits on anything."""

    __slots__ = (
        "_answering",
        "_buf",
        "_eof",
        "_held",
        "_paused",
                "_serial",
        "_server",
        "_transport",
        "closing_since",
        "peer",
    )  # fmt: skip

    def __init__(self, server: ConnectionOwner, serial: int, now: float) -> None:
        Member.__init__(self, now)
        self._server = server
        self._serial = serial
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self.peer = f"#{serial}"
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
            self.peer = f"#{self._serial} {peer[0]}:{peer[1]}"
        self._server.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        self._buf = bytearray()
        # A _process scheduled before the loss (after a failed write) must not enlist us again.
        self._transport = None

    def get_buffer(self, sizehint: int) -> memoryview:
        # Never empty: reading is paused while the buffer holds a whole frame (see below).
        room = len(self._server.scratch) - len(self._buf)
        return self._server.scratch[: max(1, room)]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing_since is not None:
            return
        self._buf += self._server.scratch[:nbytes]
        if len(self._buf) >= len(self._server.scratch):
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
                    bytes(self._buf[:HEADER_SIZE]), max_size=server.max_frame
                )
            except ProtocolError as exc:
                log.warning("%s rejected frame: %s", self.peer, exc)
                self.finish(protocol.error_for(exc).encode())
                return
        end = HEADER_SIZE + length
        if not length or len(self._buf) < end:
            if self._eof:
                if self._buf:
                    what = "mid-header" if len(self._buf) < HEADER_SIZE else "mid-frame"
                    log.warning("%s closed %s", self.peer, what)
                self.finish(None)
            return
        body = bytes(self._buf[HEADER_SIZE:end])
        del self._buf[:end]
        self._enter(None)  # being answered: no deadline, not sheddable
        self._answering = True
        response = server.dispatch(body, self.peer)
        if isinstance(response, ErrorResponse) and response.code == "bad_frame":
            self._answering = False
            self.finish(response.encode())  # framing is lost; the connection cannot continue
            return
        server.queue_answer(self, server.encode_answer(response, self.peer))

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
        assert self._server.loop is not None
        self._server.loop.call_soon(self._process)

    def _enter(self, state: str | None) -> None:
        assert self._server.loop is not None
        self._server.table.enter(self, state, self._server.loop.time())

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
            log.warning("%s sent half a frame and went quiet", self.peer)
            self.finish(TIMEOUT_ANSWER)
        elif self.state == STALLED:
            log.warning("%s does not read its answers: dropped", self.peer)
            self.abort()
        else:
            self.finish(None)  # idle: drop quietly

    def finish(self, last: bytes | None) -> None:
        """Send ``last`` (if any) and close once it is flushed; read nothing more."""
        if self.closing_since is not None or self._transport is None:
            return
        self.closing_since = self._server.closing_now(self)
        if last is not None and not self._paused:
            self._server.flush_log()  # what led to this answer is logged first
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
        if unread_bytes(transport):
            self._set_reading(True)  # read it: it is answered like any other request
            return
        self.finish(None)

    def abort(self) -> None:
        self._server.table.remove(self)
        if self._transport is not None:
            self._transport.abort()


def unread_bytes(transport: asyncio.Transport) -> int:
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
