"""The server answers in turns: a turn's log lines are written (one write), then its answers sent.

The parent sees every answer; the log must never lag behind what it saw, and a relay that
pipelines frames, or a request that makes the server close, must not reorder or break answers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from nitro_attest._cli.serve_log import ServerLogHandler
from nitro_attest.wire import protocol
from nitro_attest.wire.protocol import AttestRequest, ErrorResponse, Request, Response
from nitro_attest.wire.server import EnclaveServer, nsm_handlers
from nitro_attest.wire.transport import Address, parse_address
from tests.fakes import FakeNsm
from tests.serverkit import LogCollector, loop_in_thread, read_response


class RecordingLog:
    """A RequestLog that records what was flushed when; ``flush_delay`` widens any race."""

    def __init__(self, flush_delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.held: list[str] = []
        self.flushes: list[list[str]] = []
        self.flush_delay = flush_delay

    def request(self, line: str) -> None:
        with self.lock:
            self.held.append(line)

    def flush(self) -> None:
        if not self.held:
            return
        time.sleep(self.flush_delay)  # an answer sent before this returns would be seen early
        with self.lock:
            self.flushes.append(self.held)
            self.held = []

    def flushed_lines(self) -> int:
        with self.lock:
            return sum(len(batch) for batch in self.flushes)


@contextmanager
def turn_server(
    log: RecordingLog, handlers: dict[str, protocol.RequestHandler] | None = None
) -> Iterator[tuple[Address, EnclaveServer, asyncio.AbstractEventLoop, LogCollector]]:
    server = EnclaveServer(handlers or nsm_handlers(FakeNsm(echo=True)), request_log=log)
    listen = parse_address("tcp://127.0.0.1:0", role="listen")
    with loop_in_thread(
        lambda: server.start(listen), server.close, "asyncio", logging.WARNING
    ) as (addr, errors):
        assert server.loop is not None
        yield addr, server, server.loop, errors


def frame(nonce: bytes) -> bytes:
    return AttestRequest(nonce=nonce).encode()


def echoed_nonce(answer: Response) -> bytes:
    """The nonce an echoing FakeNsm answered (its documents are b"FAKE|nonce|...")."""
    assert isinstance(answer, protocol.AttestationResponse)
    return answer.document.split(b"|")[1]


def test_every_answer_arrives_after_its_log_line() -> None:
    log = RecordingLog(flush_delay=0.002)
    received = [0]
    lock = threading.Lock()
    failures: list[str] = []

    def client(addr: Address, index: int) -> None:
        with socket.create_connection((addr.host, addr.port), timeout=10) as sock:
            for n in range(15):
                sock.sendall(frame(bytes([index, n]) * 4))
                read_response(sock)
                with lock:
                    received[0] += 1
                    if log.flushed_lines() < received[0]:
                        failures.append(f"answer {received[0]} seen, {log.flushed_lines()} logged")

    with turn_server(log) as (addr, _, _, _):
        threads = [threading.Thread(target=client, args=(addr, i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert received[0] == 60
    assert not failures, failures[:3]
    assert log.flushed_lines() == 60


def test_requests_that_arrive_together_are_logged_in_one_write() -> None:
    log = RecordingLog()
    with turn_server(log) as (addr, _, loop, _):
        socks = [socket.create_connection((addr.host, addr.port), timeout=10) for _ in range(8)]
        try:
            time.sleep(0.2)  # every connection accepted
            loop.call_soon_threadsafe(time.sleep, 0.5)  # hold the loop while all 8 arrive
            time.sleep(0.1)
            for i, sock in enumerate(socks):
                sock.sendall(frame(bytes([i]) * 8))
            answers = [read_response(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
    for i, answer in enumerate(answers):
        assert echoed_nonce(answer) == bytes([i]) * 8
    assert [len(batch) for batch in log.flushes] == [8]


def test_pipelined_frames_are_answered_in_order_and_an_error_does_not_overtake() -> None:
    # A relay writes three frames at once: two requests, then garbage. The two answers come back
    # in order, then the bad_frame error, then the close; nothing is skipped or reordered.
    log = RecordingLog()
    garbage = b"\x00\x00\x00\x03\xff\xff\xff"
    with (
        turn_server(log) as (addr, _, _, errors),
        socket.create_connection((addr.host, addr.port), timeout=10) as sock,
    ):
        sock.sendall(frame(b"first---") + frame(b"second--") + garbage)
        first, second, error = (read_response(sock) for _ in range(3))
        assert sock.recv(1) == b""
    assert echoed_nonce(first) == b"first---"
    assert echoed_nonce(second) == b"second--"
    assert isinstance(error, ErrorResponse) and error.code == "bad_frame"
    assert [len(batch) for batch in log.flushes] == [1, 1, 1]  # each flushed before its answer
    assert not errors.records


def test_server_closing_while_an_answer_waits_drops_it_cleanly() -> None:
    holder: list[EnclaveServer] = []
    closing: list[asyncio.Future[None]] = []

    def closing_attest(request: Request) -> Response:
        # Runs inside the turn: the close starts before the turn's answers go out.
        closing.append(asyncio.ensure_future(holder[0].close()))
        return protocol.AttestationResponse(document=b"never sent")

    log = RecordingLog()
    with turn_server(log, {"attest": closing_attest}) as (addr, server, _, errors):
        holder.append(server)
        with socket.create_connection((addr.host, addr.port), timeout=10) as sock:
            sock.sendall(frame(b"closing!"))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert b"never sent" not in data
        assert server.active_connections == 0
        assert server.table.expired(float("inf")) == []  # no stale entry left to sweep
    assert not errors.records


# --- the CLI's handler -------------------------------------------------------------------------


class CountingStream:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_cli_handler_holds_request_lines_until_the_turn_ends() -> None:
    stream = CountingStream()
    handler = ServerLogHandler(stream)  # type: ignore[arg-type]
    for i in range(3):
        handler.request(f"#{i} attest")
    assert stream.writes == []  # held
    handler.flush()
    handler.flush()  # nothing held: nothing written
    assert len(stream.writes) == 1
    assert [line.split(" ", 1)[1] for line in stream.writes[0].splitlines()] == [
        "INFO #0 attest",
        "INFO #1 attest",
        "INFO #2 attest",
    ]


def test_cli_handler_writes_other_records_at_once() -> None:
    stream = CountingStream()
    handler = ServerLogHandler(stream)  # type: ignore[arg-type]
    logger = logging.getLogger("tests.turns.records")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        handler.request("#1 attest")
        logger.warning("#2 sent half a frame and went quiet")
    finally:
        logger.removeHandler(handler)
    assert len(stream.writes) == 1  # the warning; the request line waits for its turn's end
    assert stream.writes[0].endswith(" WARNING #2 sent half a frame and went quiet\n")
    handler.flush()
    assert stream.writes[1].endswith(" INFO #1 attest\n")
