"""Clients retry a full or not-yet-listening server within their timeout, and only then."""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.wire import client, protocol
from nitro_attest.wire.protocol import AttestationResponse, ErrorResponse

Answer = Callable[[int, bytes], bytes | None]  # (connection number, request frame) -> reply


def _read_frame(conn: socket.socket) -> bytes | None:
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


@contextmanager
def scripted_server(path: Path, answer: Answer, *, backlog: int = 16) -> Iterator[list[bytes]]:
    """A Unix-socket server answering each connection's first frame with ``answer``, then closing.

    Yields the list of request frames it received, one per connection that sent one.
    """
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(backlog)
    listener.settimeout(0.05)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        number = 0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                frame = _read_frame(conn)
                if frame is None:
                    continue
                seen.append(frame)
                reply = answer(number, frame)
                number += 1
                if reply is not None:
                    conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _busy_twice(document: bytes) -> Answer:
    def answer(number: int, frame: bytes) -> bytes:
        if number < 2:
            return ErrorResponse("busy", "too many connections, retry later").encode()
        return AttestationResponse(document=document).encode()

    return answer


def test_request_attestation_retries_busy_then_is_served(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with scripted_server(path, _busy_twice(b"the document")) as seen:
        doc = client.request_attestation(f"unix://{path}", nonce=b"fresh", timeout=5)
    assert doc == b"the document"
    assert len(seen) == 3
    assert len(set(seen)) == 1  # the same request each time: same nonce, same fields


def test_busy_until_the_timeout_names_the_address_and_the_attempts(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    busy = ErrorResponse("busy", "too many connections, retry later").encode()
    with scripted_server(path, lambda n, f: busy) as seen:
        started = time.monotonic()
        with pytest.raises(client.EnclaveError) as info:
            client.request_attestation(f"unix://{path}", nonce=b"n", timeout=0.8)
        elapsed = time.monotonic() - started
    assert info.value.code == "busy"
    message = str(info.value)
    assert f"unix://{path}" in message and f"{len(seen)} attempts over" in message
    assert len(seen) >= 3
    assert elapsed < 1.5  # inside the overall timeout, not per attempt


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    refusal = ErrorResponse("nsm_error", "InvalidArgument: no").encode()
    with (
        scripted_server(path, lambda n, f: refusal) as seen,
        pytest.raises(client.EnclaveError) as info,
    ):
        client.request_attestation(f"unix://{path}", nonce=b"n", timeout=5)
    assert info.value.code == "nsm_error"
    assert len(seen) == 1


def test_busy_on_a_later_request_is_not_retried(tmp_path: Path) -> None:
    """Only the first request of a connection is retried: later ones may carry state."""
    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(4)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            _read_frame(conn)
            conn.sendall(AttestationResponse(document=b"one").encode())
            _read_frame(conn)
            conn.sendall(ErrorResponse("busy", "later").encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client.Connection(f"unix://{path}", timeout=5) as conn:
            assert conn.attest(nonce=b"1") == b"one"
            with pytest.raises(client.EnclaveError, match="busy"):
                conn.attest(nonce=b"2")
    finally:
        thread.join(5)
        listener.close()


def test_full_listen_queue_eagain_is_retried(tmp_path: Path) -> None:
    """A Unix socket whose accept queue is full refuses connect() with EAGAIN: wait and retry."""
    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(0)
    fillers: list[socket.socket] = []
    while True:  # fill the queue: the next connect() gets EAGAIN
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError as exc:
            assert exc.errno == errno.EAGAIN
            s.close()
            break
        fillers.append(s)
        assert len(fillers) < 64

    def serve_later() -> None:
        time.sleep(0.4)  # the client meets EAGAIN meanwhile
        for s in fillers:
            s.close()
        while True:
            conn, _ = listener.accept()
            with conn:
                frame = _read_frame(conn)
                if frame is not None:
                    conn.sendall(AttestationResponse(document=b"late").encode())
                    return

    thread = threading.Thread(target=serve_later, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        assert client.request_attestation(f"unix://{path}", nonce=b"n", timeout=5) == b"late"
        assert time.monotonic() - started >= 0.35
    finally:
        thread.join(5)
        listener.close()


def test_attest_cli_retries_busy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`attest` gets past two busy answers to the document (garbage here, so rejected: exit 1)."""
    path = tmp_path / "s.sock"
    with scripted_server(path, _busy_twice(b"not a document")) as seen:
        rc = main(["attest", "--connect", f"unix://{path}", "--out-dir", str(tmp_path / "out")])
    assert rc == 1, capsys.readouterr().err
    assert len(seen) == 3


def test_send_secret_cli_retries_busy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.sock"
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret")
    refused = ErrorResponse("channel_refused", "not today").encode()

    def answer(number: int, frame: bytes) -> bytes:
        if number < 2:
            return ErrorResponse("busy", "too many connections, retry later").encode()
        return refused

    with scripted_server(path, answer) as seen:
        rc = main(
            ["send-secret", "--connect", f"unix://{path}", "--file", str(secret),
             "--unsafe-any-enclave", "--timeout", "5"]
        )  # fmt: skip
    out = capsys.readouterr()
    assert rc == 1, out.err
    assert "not today" in out.out
    assert len(seen) == 3
    assert protocol.decode_body(seen[0][4:])["type"] == "channel_attest"


def test_a_unix_socket_not_bound_yet_is_waited_for(tmp_path: Path) -> None:
    """`serve --listen unix://... &` then `attest`: the socket file appears a moment later."""
    path = tmp_path / "late.sock"
    answer: Answer = lambda n, f: AttestationResponse(document=b"late document").encode()  # noqa: E731
    result: list[bytes] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            client.request_attestation(f"unix://{path}", nonce=b"n", timeout=10)
        )
    )
    waiter.start()
    time.sleep(0.4)
    assert not path.exists() and waiter.is_alive()
    with scripted_server(path, answer):
        waiter.join(10)
    assert result == [b"late document"]


def test_a_unix_socket_that_never_appears_fails_within_the_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(client.EnclaveUnreachableError, match="no such file"):
        client.request_attestation(f"unix://{tmp_path}/never.sock", nonce=b"n", timeout=0.5)
    assert time.monotonic() - started < 1.5


def test_an_attempt_cut_short_by_the_deadline_reports_the_refusal(tmp_path: Path) -> None:
    """Busy, then a server too slow to answer again before the deadline (a loaded machine): the
    error is the busy refusal with its attempts, not a timeout that hides why."""
    path = tmp_path / "s.sock"
    busy = ErrorResponse("busy", "too many connections, retry later").encode()

    def answer(number: int, frame: bytes) -> bytes | None:
        if number > 0:
            time.sleep(1.0)  # later than the client's whole deadline, which has then gone
            return None
        return busy

    with scripted_server(path, answer), pytest.raises(client.EnclaveError) as info:
        client.request_attestation(f"unix://{path}", nonce=b"n", timeout=0.6)
    assert info.value.code == "busy"
    assert f"unix://{path}" in str(info.value)
