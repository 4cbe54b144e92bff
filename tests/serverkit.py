"""Test helpers for the enclave server: a server running in a thread, and its log collector."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from nitro_attest.wire import protocol
from nitro_attest.wire.protocol import RequestHandler
from nitro_attest.wire.server import EnclaveServer, nsm_handlers
from nitro_attest.wire.transport import Address, parse_address

from .fakes import FakeNsm


class LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def lines(self) -> list[str]:
        with self._lock2:
            return [r.getMessage() for r in self.records]


@contextmanager
def loop_in_thread(
    start: Callable[[], Awaitable[Address]],
    stop: Callable[[], Awaitable[object]],
    logger_name: str,
    level: int = logging.DEBUG,
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> Iterator[tuple[Address, LogCollector]]:
    """Run ``start()`` on a fresh event loop in a thread, then the loop until the block ends;
    ``stop()`` then closes the server and leftover tasks are cancelled, as asyncio.run does.
    Yields the bound address and what ``logger_name`` logged meanwhile."""
    collector = LogCollector()
    logger = logging.getLogger(logger_name)
    logger.addHandler(collector)
    old_level = logger.level
    logger.setLevel(level)
    loop = new_loop()
    started = threading.Event()
    bound: list[Address] = []
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            bound.append(loop.run_until_complete(start()))
        except BaseException as exc:
            errors.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(stop())
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        if errors:
            raise errors[0]
        yield bound[0], collector
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        logger.removeHandler(collector)
        logger.setLevel(old_level)


@contextmanager
def running_server(
    address: str,
    handlers: Mapping[str, RequestHandler] | None = None,
    **options: float,
) -> Iterator[tuple[Address, EnclaveServer, LogCollector]]:
    """Run an EnclaveServer on its own loop in a thread; yield its bound address.

    Without ``handlers`` it serves an echoing FakeNsm: each answer names the request it answers.
    """
    handlers = handlers if handlers is not None else nsm_handlers(FakeNsm(echo=True))
    server = EnclaveServer(handlers, **options)  # type: ignore[arg-type]
    listen = parse_address(address, role="listen")
    with loop_in_thread(
        lambda: server.start(listen), server.close, "nitro_attest.wire.server"
    ) as (bound, logs):
        yield bound, server, logs


def read_response(sock: socket.socket) -> protocol.Response:
    """Read one whole response frame from a raw socket (for tests that speak bytes themselves)."""
    data = b""
    while len(data) < protocol.HEADER_SIZE:
        chunk = sock.recv(protocol.HEADER_SIZE - len(data))
        assert chunk, "connection closed before a response"
        data += chunk
    length = protocol.decode_header(data)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "connection closed inside a response"
        body += chunk
    return protocol.decode_response(body)


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
