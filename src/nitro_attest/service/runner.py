"""Run the app under uvicorn: one process, or N forked workers, each with a listening socket.

uvicorn's own multi-process supervisor restarts every worker on SIGHUP, which would drop the
"a failed reload keeps the old policies" promise; so with N workers this parent binds the
sockets, forks the workers, forwards SIGHUP (each worker reloads its policies itself) and SIGTERM
(each worker drains in-flight requests and stops), and restarts a worker that dies unexpectedly.

One socket per worker, bound with SO_REUSEPORT: the kernel spreads new connections across them
by their addresses. With one shared socket every idle worker waits on it and the busiest tends
to win the accept, so keep-alive connections piled onto one worker (17 of 17 in a soak). The
parent keeps every socket open, so a dead worker's queued connections wait for its replacement
instead of being reset. (Linux lets only the same user bind the port again with SO_REUSEPORT;
a plain bind first refuses a port another service of ours already listens on.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn

from nitro_attest.errors import PolicyError
from nitro_attest.logs import uvicorn_log_config
from nitro_attest.server_limits import SERVICE_LIMITS
from nitro_attest.service.app import ServiceConfig, create_app
from nitro_attest.service.http_protocol import GatheringHttpToolsProtocol
from nitro_attest.service.policies import load_policies

log = logging.getLogger("nitro_attest.service")
GRACE_SECONDS = int(SERVICE_LIMITS.drain_timeout)


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
        limit_concurrency=SERVICE_LIMITS.max_connections,
        timeout_keep_alive=int(SERVICE_LIMITS.idle_timeout),  # uvicorn's own default, said here
    )


def serve(config: ServiceConfig, host: str, port: int, workers: int = 1) -> int:
    config.handle_sighup = True
    if workers <= 1:
        server = uvicorn.Server(_uvicorn_config(config, host, port))
        _exit_zero_after_drain()
        server.run()
        return 0 if server.started else 2
    try:
        sockets = listening_sockets(host, port, workers)
    except OSError as exc:
        print(f"nitro-attest: error: cannot listen on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    return _Supervisor(config, sockets).run()


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on one address with SO_REUSEPORT (port 0: the first one's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        # SO_REUSEPORT would also let us join a service of the same user already listening
        # there (one that did not stop, a second unit): the kernel would then split relying
        # parties between its policies and key and ours. A plain bind first fails as it would
        # without SO_REUSEPORT (EADDRINUSE); closed again before our sockets bind.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _exit_zero_after_drain() -> None:
    """uvicorn drains on SIGTERM, then re-raises it to the handler it found: make that a no-op,
    so a requested stop exits 0 instead of dying by the signal."""
    signal.signal(signal.SIGTERM, lambda signum, frame: None)


class _Supervisor:
    def __init__(self, config: ServiceConfig, sockets: list[socket.socket]) -> None:
        self.config = config
        self.sockets = sockets
        self.children: dict[int, int] = {}  # pid -> index of the socket it serves
        self.stopping = False
        # The last policies that loaded, handed to every worker it forks: a worker restarted
        # after a failed reload would otherwise read the broken file, fail, and be restarted
        # for ever while its socket queues connections nobody accepts.
        self.config.policies = load_policies(config.policies_path)

    def _reload(self) -> None:
        # A failure: each worker logs it and keeps its policies; so do we.
        with contextlib.suppress(PolicyError):
            self.config.policies = load_policies(self.config.policies_path)

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in (signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            _exit_zero_after_drain()
            code = 1
            try:
                mine = self.sockets[index]
                for i, other in enumerate(self.sockets):
                    if i != index:
                        other.close()
                host, port = mine.getsockname()[:2]
                server = uvicorn.Server(_uvicorn_config(self.config, host, port))
                server.run(sockets=[mine])
                code = 0
            finally:
                os._exit(code)
        self.children[pid] = index

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload()
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
            signum = signal.SIGTERM
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                self.children.pop(pid, 0)

    def run(self) -> int:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        for index in range(len(self.sockets)):
            self._spawn(index)
        log.info("started %d workers on %s, one SO_REUSEPORT socket each", len(self.sockets),
                 self.sockets[0].getsockname())  # fmt: skip
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
            index = self.children.pop(pid, -1)
            if index >= 0 and not self.stopping:
                log.error("worker %d exited (status %d); starting another", pid, status)
                time.sleep(0.5)
                self._spawn(index)
        for sock in self.sockets:
            sock.close()
        return 0
