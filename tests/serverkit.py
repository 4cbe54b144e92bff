"""Test helpers for the enclave server: a server running in a thread, and its log collector."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

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
    collector = LogCollector()
    logger = logging.getLogger("nitro_attest.wire.server")
    logger.addHandler(collector)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    bound: list[Address] = []
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            bound.append(
                loop.run_until_complete(server.start(parse_address(address, role="listen")))
            )
        except BaseException as exc:
            errors.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        # As asyncio.run does: cancel whatever is left so no task is destroyed while pending.
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    if errors:
        raise errors[0]
    try:
        yield bound[0], server, collector
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        logger.removeHandler(collector)
        logger.setLevel(old_level)
