"""The parent attacks the server's turns: resets and half-closes around a queued answer, and a
request log that fails. Nothing may strand an answer, pin a slot or leave bookkeeping behind."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from nitro_attest.wire import protocol
from nitro_attest.wire.protocol import ErrorResponse, Request, Response
from nitro_attest.wire.server import EnclaveServer, RequestLog, nsm_handlers
from nitro_attest.wire.transport import Address, parse_address
from tests.fakes import FakeNsm
from tests.serverkit import LogCollector, loop_in_thread, read_response
from tests.test_server_turns import echoed_nonce, frame

RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST
T = TypeVar("T")


@contextmanager
def attack_server(
    handlers: dict[str, protocol.RequestHandler] | None = None,
    request_log: RequestLog | None = None,
    **options: float,
) -> Iterator[tuple[Address, EnclaveServer, asyncio.AbstractEventLoop, LogCollector]]:
    server = EnclaveServer(
        handlers or nsm_handlers(FakeNsm(echo=True)),
        request_log=request_log,
        **options,  # type: ignore[arg-type]
    )
    listen = parse_address("tcp://127.0.0.1:0", role="listen")
    name = "nitro_attest.wire.server"
    with loop_in_thread(lambda: server.start(listen), server.close, name) as (addr, logs):
        assert server.loop is not None
        yield addr, server, server.loop, logs


def on_loop(loop: asyncio.AbstractEventLoop, read: Callable[[], T], passes: int = 8) -> T:
    """``read()`` on the server's loop after a few passes of it (its pending callbacks ran)."""

    async def run() -> T:
        for _ in range(passes):
            await asyncio.sleep(0)
        return read()

    return asyncio.run_coroutine_threadsafe(run(), loop).result(10)


def bookkeeping(server: EnclaveServer) -> tuple[int, int, int, int]:
    """(open connections, flushing, table members, table waiting entries): all 0 when idle."""
    waiting = len(server.table.expired(float("inf")))
    return len(server._connections), len(server._finishing), len(server.table), waiting


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_reset_that_fails_the_queued_answers_write_leaves_no_bookkeeping() -> None:
    # The relay pipelines two requests and half-closes; while the second is being answered it
    # resets the connection, so writing that answer fails. The connection is then lost, and what
    # was scheduled after the write must not enlist it again among those closing (or in the
    # table): a stale entry is never removed and is aborted again on every sweep, forever.
    victims: list[socket.socket] = []

    def resetting_attest(request: Request) -> Response:
        assert isinstance(request, protocol.AttestRequest)
        if request.nonce == b"second--":
            victims[0].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
            victims[0].close()  # the RST reaches the server's socket before its answer is sent
            time.sleep(0.05)
        return protocol.AttestationResponse(document=b"FAKE|" + (request.nonce or b""))

    with attack_server({"attest": resetting_attest}) as (addr, server, loop, logs):
        sock = socket.create_connection((addr.host, addr.port), timeout=10)
        victims.append(sock)
        wait_until(lambda: on_loop(loop, lambda: len(server.table)) == 1)
        loop.call_soon_threadsafe(time.sleep, 0.3)  # both frames and the FIN arrive together
        time.sleep(0.1)
        sock.sendall(frame(b"first---") + frame(b"second--"))
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: on_loop(loop, lambda: server.active_connections) == 0)
        assert on_loop(loop, lambda: bookkeeping(server)) == (0, 0, 0, 0)
        assert on_loop(loop, lambda: server.requests_served) == 2  # the attack took place
    assert not [r for r in logs.records if r.levelno >= logging.ERROR]


class BrokenLog:
    """A RequestLog whose every call fails, as a log on a broken stream might."""

    def __init__(self) -> None:
        self.calls = 0

    def request(self, line: str) -> None:
        self.calls += 1
        raise RuntimeError("log gone")

    def flush(self) -> None:
        self.calls += 1
        raise RuntimeError("log gone")


def test_a_failing_request_log_strands_no_answer_and_stops_no_deadline() -> None:
    # The log failing inside a turn must not drop the turn's answers (their connections would
    # wait forever in no waiting state: neither expired nor sheddable, a slot pinned), nor kill
    # the sweeper when it flushes before a timeout answer (no deadline would be enforced again).
    broken = BrokenLog()
    with attack_server(request_log=broken, frame_deadline=0.3) as (addr, server, loop, logs):
        socks = [socket.create_connection((addr.host, addr.port), timeout=5) for _ in range(3)]
        try:
            wait_until(lambda: on_loop(loop, lambda: len(server.table)) == 3)
            loop.call_soon_threadsafe(time.sleep, 0.3)  # both requests end in one turn
            time.sleep(0.1)
            socks[0].sendall(frame(b"request0"))
            socks[1].sendall(frame(b"request1"))
            assert echoed_nonce(read_response(socks[0])) == b"request0"
            assert echoed_nonce(read_response(socks[1])) == b"request1"
            socks[2].sendall(frame(b"half-fra")[:10])  # the sweeper answers it with a timeout
            late = read_response(socks[2])
            assert isinstance(late, ErrorResponse) and late.code == "timeout"
            socks[0].sendall(frame(b"again---"))  # the server still serves
            assert echoed_nonce(read_response(socks[0])) == b"again---"
        finally:
            for sock in socks:
                sock.close()
        wait_until(lambda: on_loop(loop, lambda: server.active_connections) == 0)
        assert on_loop(loop, lambda: bookkeeping(server)) == (0, 0, 0, 0)
    assert broken.calls >= 4
    assert any("request log failed" in line for line in logs.lines())


def test_an_answer_too_large_to_frame_is_an_internal_error_and_the_connection_goes_on() -> None:
    # A handler whose answer cannot be framed (over MAX_FRAME_BYTES) must not strand the
    # connection with an answer that never comes: the client gets a typed error, then is served.
    def huge_or_echo(request: Request) -> Response:
        assert isinstance(request, protocol.AttestRequest)
        if request.nonce == b"huge----":
            return protocol.AttestationResponse(document=b"x" * (protocol.MAX_FRAME_BYTES + 1))
        return protocol.AttestationResponse(document=b"FAKE|" + (request.nonce or b"") + b"|")

    with (
        attack_server({"attest": huge_or_echo}) as (addr, server, _, logs),
        socket.create_connection((addr.host, addr.port), timeout=10) as sock,
    ):
        sock.sendall(frame(b"huge----") + frame(b"after---"))
        error, after = read_response(sock), read_response(sock)
        assert isinstance(error, ErrorResponse) and error.code == "internal"
        assert echoed_nonce(after) == b"after---"
        assert server.requests_served == 2
    assert any("too large" in line for line in logs.lines())


def test_a_failure_sending_one_answer_does_not_strand_the_rest_of_the_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nitro_attest.wire import connection as connection_module

    real = connection_module.Connection.send_answer
    failed: list[bool] = []

    def first_fails(self: connection_module.Connection, answer: bytes) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("a bug on this connection")
        real(self, answer)

    monkeypatch.setattr(connection_module.Connection, "send_answer", first_fails)
    with attack_server() as (addr, _, loop, logs):
        socks = [socket.create_connection((addr.host, addr.port), timeout=10) for _ in range(3)]
        try:
            time.sleep(0.2)  # all accepted
            loop.call_soon_threadsafe(time.sleep, 0.4)  # hold the loop: one turn for all three
            time.sleep(0.1)
            for i, sock in enumerate(socks):
                sock.sendall(frame(bytes([i]) * 8))
            outcomes: list[bytes | None] = []
            for sock in socks:
                try:
                    outcomes.append(echoed_nonce(read_response(sock)))
                except AssertionError:  # closed without an answer
                    outcomes.append(None)
        finally:
            for sock in socks:
                sock.close()
    assert outcomes.count(None) == 1  # the one whose send failed was closed
    assert all(o in (None, bytes([i]) * 8) for i, o in enumerate(outcomes))  # each its own
    assert any("answer not sent: RuntimeError" in line for line in logs.lines())
