"""A real `nitro-attest serve` process on a Unix socket over the software NSM, for attack tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENTRY = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()"]


@dataclass
class ServeProcess:
    socket: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def _accepts(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


@contextmanager
def serve_process(state: Path, sock: Path, *flags: str) -> Iterator[ServeProcess]:
    """Start `serve` with ``flags``; yield once its socket exists; stop it with SIGTERM."""
    log = sock.with_suffix(".log")
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*ENTRY, "serve", "--listen", f"unix://{sock}", "--nsm", "simulator",
             "--state", str(state), *flags],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _accepts(sock) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the socket file appears at bind(), before listen(): try a connect
        assert _accepts(sock), f"serve did not start: {log.read_text(errors='replace')}"
        yield ServeProcess(sock, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
