"""Test helpers for the proxy: the server in a thread or the CLI in a process, and targets."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from nitro_attest.proxy import ProxyConfig, ProxyServer
from nitro_attest.wire.transport import Address, connect, listening_socket, parse_address
from tests.serverkit import LogCollector, loop_in_thread, wait_for

ENTRY = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()"]


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= want, "open-file hard limit too low"


@contextmanager
def running_proxy(
    config: ProxyConfig, **kwargs: Any
) -> Iterator[tuple[Address, ProxyServer, LogCollector]]:
    """A ProxyServer on its own loop in a thread; yields its bound address and its log lines."""
    server = ProxyServer(config, **kwargs)
    with loop_in_thread(
        server.start, lambda: server.shutdown(0), "nitro_attest.proxy", logging.INFO
    ) as (bound, logs):
        yield bound, server, logs


class ProxyProcess:
    """`nitro-attest proxy` in a child process; stderr is collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*ENTRY, "proxy", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: self.bound is not None or self.proc.poll() is not None, 20, "proxy start")
        if self.bound is None:
            raise AssertionError("proxy did not start: " + self.text())

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def connection_lines(self) -> list[str]:
        with self._lock:
            return [line for line in self.lines if " connection peer=" in line]

    @property
    def bound(self) -> Address | None:
        found = re.search(r"proxy listening on (\S+)", self.text())
        return parse_address(found.group(1)) if found else None

    @property
    def address(self) -> Address:
        assert self.bound is not None
        return self.bound

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return rc


@contextmanager
def proxy_process(*args: str) -> Iterator[ProxyProcess]:
    proc = ProxyProcess(*args)
    try:
        yield proc
    finally:
        proc.stop()


@dataclass
class Received:
    sha256: str
    size: int
    saw_eof_before_sending: bool = False


@dataclass
class ExchangeTarget:
    """Per connection: receives everything (hashing it) and sends ``reply``.

    mode "both": send and receive at once; "after-eof": send only after the client's EOF;
    "first": send and shut down first, then receive.
    """

    address: str
    reply: bytes = b""
    mode: str = "both"
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = listening_socket(parse_address(self.address, role="listen"))
        self.sock.setblocking(True)
        bound = self.sock.getsockname()
        self.bound = (
            self.address if self.address.startswith("unix") else f"tcp://127.0.0.1:{bound[1]}"
        )
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if self.mode == "first":
                _send_and_shut(conn, self.reply)
                self.received.append(Received(*_drain(conn)))
            elif self.mode == "after-eof":
                digest, size = _drain(conn)
                self.received.append(Received(digest, size, True))
                _send_and_shut(conn, self.reply)
            else:
                sender = threading.Thread(target=_send_and_shut, args=(conn, self.reply))
                sender.start()
                digest, size = _drain(conn)
                sender.join()
                self.received.append(Received(digest, size))

    def close(self) -> None:
        self.sock.close()


def _send_and_shut(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(memoryview(data))
        sock.shutdown(socket.SHUT_WR)


def _drain(sock: socket.socket) -> tuple[str, int]:
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    size = 0
    while True:
        n = sock.recv_into(buf)
        if not n:
            return digest.hexdigest(), size
        digest.update(memoryview(buf)[:n])
        size += n


def exchange(address: Address, payload: bytes, *, timeout: float = 30) -> tuple[str, int]:
    """Send ``payload`` and shut down while receiving; return what came back (hash, size)."""
    sock = connect(address, timeout=timeout)
    with sock:
        sender = threading.Thread(target=_send_and_shut, args=(sock, payload))
        sender.start()
        got = _drain(sock)
        sender.join()
    return got


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EchoTarget:
    """A one-thread selectors echo server for many connections at once."""

    def __init__(self, address: str) -> None:
        self.sock = listening_socket(parse_address(address, role="listen"), backlog=1024)
        self.address = (
            address
            if address.startswith("unix")
            else f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        )
        self.accepted = 0
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.sock:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = self.sock.accept()
                        conn.setblocking(False)
                        self.accepted += 1
                        self._sel.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionError:
                    data = b""
                if data:
                    sock.setblocking(True)
                    sock.sendall(data)
                    sock.setblocking(False)
                else:
                    self._sel.unregister(sock)
                    sock.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def no_accept(listener: socket.socket) -> bool:
    """True if nothing has connected to ``listener`` (a non-blocking accept finds nothing)."""
    listener.setblocking(False)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def proxy_kw(kw: dict[str, Any]) -> dict[str, Any]:
    """ProxyConfig keywords with limit fields (``max_connections=1``, ``handshake_timeout``...)
    gathered into its ``limits``."""
    import dataclasses

    from nitro_attest.server_limits import PROXY_LIMITS, Limits

    names = {f.name for f in dataclasses.fields(Limits)}
    renamed = {"handshake_timeout": "header_timeout"}
    limits = {renamed.get(k, k): kw.pop(k) for k in list(kw) if renamed.get(k, k) in names}
    if limits:
        kw["limits"] = dataclasses.replace(PROXY_LIMITS, **limits)
    return kw
