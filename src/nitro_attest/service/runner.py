"""Run the app under uvicorn: one process, or N forked workers sharing one listening socket.

uvicorn's own multi-process supervisor restarts every worker on SIGHUP, which would drop the
"a failed reload keeps the old policies" promise; so with N workers this parent binds the socket,
forks the workers, forwards SIGHUP (each worker reloads its policies itself) and SIGTERM (each
worker drains in-flight requests and stops), and restarts a worker that dies unexpectedly.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn

from nitro_attest.logs import uvicorn_log_config
from nitro_attest.service.app import ServiceConfig, create_app
from nitro_attest.service.http_protocol import GatheringHttpToolsProtocol

log = logging.getLogger("nitro_attest.service")
GRACE_SECONDS = 10


def _uvicorn_config(config: ServiceConfig, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(config),
        host=host,
        port=port,
        lifespan="on",
        http=GatheringHttpToolsProtocol,
        access_log=False,
        log_level="info",
        log_config=uvicorn_log_config(config.log_format),
        timeout_graceful_shutdown=GRACE_SECONDS,
        limit_concurrency=1024,
    )


def serve(config: ServiceConfig, host: str, port: int, workers: int = 1) -> int:
    config.handle_sighup = True
    if workers <= 1:
        server = uvicorn.Server(_uvicorn_config(config, host, port))
        _exit_zero_after_drain()
        server.run()
        return 0 if server.started else 2
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"nitro-attest: error: cannot listen on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    sock.listen(2048)
    sock.set_inheritable(True)
    return _Supervisor(config, sock, workers).run()


def _exit_zero_after_drain() -> None:
    """uvicorn drains on SIGTERM, then re-raises it to the handler it found: make that a no-op,
    so a requested stop exits 0 instead of dying by the signal."""
    signal.signal(signal.SIGTERM, lambda signum, frame: None)


class _Supervisor:
    def __init__(self, config: ServiceConfig, sock: socket.socket, workers: int) -> None:
        self.config = config
        self.sock = sock
        self.workers = workers
        self.children: set[int] = set()
        self.stopping = False

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in (signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            _exit_zero_after_drain()
            code = 1
            try:
                host, port = self.sock.getsockname()[:2]
                server = uvicorn.Server(_uvicorn_config(self.config, host, port))
                server.run(sockets=[self.sock])
                code = 0
            finally:
                os._exit(code)
        self.children.add(pid)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
            signum = signal.SIGTERM
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                self.children.discard(pid)

    def run(self) -> int:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        for _ in range(self.workers):
            self._spawn()
        log.info("started %d workers on %s", self.workers, self.sock.getsockname())
        deadline: float | None = None
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if self.stopping and deadline is None:
                    deadline = time.monotonic() + GRACE_SECONDS + 5
                if deadline is not None and time.monotonic() > deadline:
                    for child in self.children:  # a worker that will not drain
                        os.kill(child, signal.SIGKILL)
                time.sleep(0.1)
                continue
            self.children.discard(pid)
            if not self.stopping:
                log.error("worker %d exited (status %d); starting another", pid, status)
                time.sleep(0.5)
                self._spawn()
        self.sock.close()
        return 0
