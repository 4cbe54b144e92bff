"""SIGTERM answers what the enclave server already received, then closes (issue 21, item 13).

The operator stops the server (SIGTERM, a redeploy) while clients wait on answers: every request
the server had received is answered before its connection closes, within a deadline; a client
that left half a frame is cut at that deadline rather than holding the shutdown.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import cbor2

from nitro_attest.wire import protocol
from nitro_attest.wire.server import nsm_handlers, serve
from nitro_attest.wire.transport import connect, parse_address
from tests.fakes import FakeNsm
from tests.relay import read_frame

CLIENTS = 16


class SlowNsm(FakeNsm):
    """An NSM that takes 20 ms per document, as a busy device may."""

    def attestation(self, **fields: Any) -> bytes:
        time.sleep(0.02)
        return super().attestation(**fields)


@contextmanager
def served(path: Path, **options: Any) -> Iterator[tuple[str, asyncio.AbstractEventLoop,
                                                         asyncio.Event, threading.Thread]]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve(
            parse_address(f"unix://{path}", role="listen"), nsm_handlers(SlowNsm(echo=True)),
            ready=lambda _a: ready.set(), stop=stop, **options,
        ))  # fmt: skip
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"unix://{path}", loop, stop, thread
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join(20)


def _attest_frame(nonce: bytes) -> bytes:
    return protocol.encode_frame(cbor2.dumps({"v": 1, "type": "attest", "nonce": nonce}))


def test_sigterm_answers_every_request_already_received(tmp_path: Path) -> None:
    """16 clients each pipeline two requests, then the server is told to stop: all 32 are
    answered, then each connection closes cleanly."""
    with served(tmp_path / "s.sock") as (address, loop, stop, thread):
        socks = [connect(parse_address(address, role="connect"), timeout=20)
                 for _ in range(CLIENTS)]  # fmt: skip
        nonces = [(os.urandom(8), os.urandom(8)) for _ in range(CLIENTS)]
        for sock, pair in zip(socks, nonces, strict=True):
            sock.sendall(_attest_frame(pair[0]) + _attest_frame(pair[1]))
        time.sleep(0.01)
        started = time.monotonic()
        loop.call_soon_threadsafe(stop.set)  # what SIGTERM does
        answers: list[Any] = []
        for sock, pair in zip(socks, nonces, strict=True):
            for nonce in pair:
                try:
                    frame = read_frame(sock)
                except ConnectionResetError:
                    frame = "reset"
                answers.append(frame)
                if isinstance(frame, dict):
                    assert frame["document"] == b"|".join((b"FAKE", nonce, b"", b""))
            if isinstance(answers[-1], dict):
                assert sock.recv(1) == b""  # then closed cleanly, not reset
            sock.close()
        thread.join(20)
        elapsed = time.monotonic() - started
    lost = [a for a in answers if not isinstance(a, dict) or a.get("type") != "attestation"]
    assert lost == [], f"{len(lost)} of {2 * CLIENTS} requests not answered: {lost}"
    assert not thread.is_alive() and elapsed < 5


def test_drain_deadline_cuts_a_half_sent_frame(tmp_path: Path) -> None:
    with served(tmp_path / "s.sock", drain_timeout=0.5) as (address, loop, stop, thread):
        half = connect(parse_address(address, role="connect"), timeout=20)
        half.sendall(_attest_frame(b"n" * 8)[:7])
        idle = connect(parse_address(address, role="connect"), timeout=20)
        time.sleep(0.05)
        started = time.monotonic()
        loop.call_soon_threadsafe(stop.set)
        assert idle.recv(1) == b""  # an idle client is closed at once
        idle_closed = time.monotonic() - started
        thread.join(10)
        took = time.monotonic() - started
        with suppress(ConnectionResetError):
            assert half.recv(100) == b""
        half.close()
        idle.close()
    assert not thread.is_alive()
    assert idle_closed < 0.4 and 0.4 < took < 3


def test_no_new_connection_is_accepted_while_draining(tmp_path: Path) -> None:
    with served(tmp_path / "s.sock", drain_timeout=1.0) as (address, loop, stop, thread):
        half = connect(parse_address(address, role="connect"), timeout=20)
        half.sendall(b"\x00")  # keeps the drain going until its deadline
        time.sleep(0.05)
        loop.call_soon_threadsafe(stop.set)
        time.sleep(0.1)
        try:
            late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            late.settimeout(2)
            late.connect(address.removeprefix("unix://"))
        except OSError:
            pass  # the socket file is gone or refuses: either way not served
        else:
            late.sendall(_attest_frame(b"late" * 2))
            with suppress(ConnectionResetError):
                assert late.recv(100) == b""
            late.close()
        thread.join(10)
        half.close()
    assert not thread.is_alive()


def test_real_sigterm_to_a_serve_process(sim_state: Path, tmp_path: Path) -> None:
    """The same through the CLI and a real SIGTERM: 16 clients pipeline 4 requests each, the
    signal follows at once; every request is answered and the process exits 0."""
    import signal

    from tests.serve_process import serve_process

    with serve_process(sim_state, tmp_path / "e.sock", "--no-channel") as server:
        socks = [connect(parse_address(server.address, role="connect"), timeout=20)
                 for _ in range(CLIENTS)]  # fmt: skip
        for sock in socks:
            sock.sendall(b"".join(_attest_frame(os.urandom(8)) for _ in range(4)))
        server.proc.send_signal(signal.SIGTERM)
        answered = 0
        for sock in socks:
            for _ in range(4):
                try:
                    frame = read_frame(sock)
                except ConnectionResetError:
                    frame = None
                answered += isinstance(frame, dict) and frame.get("type") == "attestation"
            sock.close()
        assert server.proc.wait(20) == 0
    assert answered == 4 * CLIENTS
