"""The local KMS's HTTP/1.1 front (kms_emulator/front.py): framing, caps and limits, as the parent
(or any client on the port) would push them. The app behind it is a recorder: what reaches it,
and what never does, is the point. boto3 against the whole emulator: test_kms_emulator.py."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nitro_attest.kms_emulator.app import MAX_BODY_BYTES
from nitro_attest.kms_emulator.auth import SignedRequest
from nitro_attest.kms_emulator.front import EmulatorFront
from nitro_attest.server_limits import EMULATOR_LIMITS, Limits

from . import kmsemukit as kit


class Recorder:
    """The app: answers 200 with the request's number and body length, and keeps the request."""

    def __init__(self) -> None:
        self.requests: list[SignedRequest] = []

    def handle(self, request: SignedRequest) -> tuple[int, bytes]:
        self.requests.append(request)
        return 200, json.dumps({"n": len(self.requests), "size": len(request.body)}).encode()


@contextmanager
def serving(
    limits: Limits = EMULATOR_LIMITS, *, tls: ssl.SSLContext | None = None
) -> Iterator[tuple[EmulatorFront, Recorder, int]]:
    app = Recorder()
    front = EmulatorFront(app, limits)
    loop = asyncio.new_event_loop()
    sock = socket.create_server(("127.0.0.1", 0))
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(front.start(sock, tls))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield front, app, sock.getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(front.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def connect(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    return conn


def request(body: bytes = b"{}", *, extra: bytes = b"", length: bool = True) -> bytes:
    head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: TrentService.ListKeys\r\n" + extra
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def read_answer(
    conn: socket.socket, pending: bytearray | None = None
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One answer: (status line, headers, body), read by its Content-Length. Bytes past it stay
    in ``pending`` (pipelined answers); without ``pending`` there must be none."""
    data = pending if pending is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"closed before an answer: {bytes(data)!r}"
        data += chunk
    end = data.index(b"\r\n\r\n")
    status, *lines = bytes(data[:end]).split(b"\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    size = int(headers[b"content-length"])
    while len(data) < end + 4 + size:
        chunk = conn.recv(65536)
        assert chunk
        data += chunk
    body = bytes(data[end + 4 : end + 4 + size])
    del data[: end + 4 + size]
    assert pending is not None or not data, "bytes after the answer"
    return status, headers, body


def closed(conn: socket.socket, within: float = 5.0) -> bool:
    conn.settimeout(within)
    try:
        while True:
            if not conn.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_kept_alive_answers_in_kms_shape_and_one_piece() -> None:
    with serving() as (_, app, port), connect(port) as conn:
        for n in (1, 2):
            conn.sendall(request(b'{"a": 1}'))
            status, headers, body = read_answer(conn)
            assert status == b"HTTP/1.1 200 OK"
            assert headers[b"content-type"] == b"application/x-amz-json-1.1"
            assert len(headers[b"x-amzn-requestid"]) == 36 and b"date" in headers
            assert json.loads(body) == {"n": n, "size": 8}
        seen = app.requests[0]
        assert (seen.method, seen.path, seen.body) == ("POST", "/", b'{"a": 1}')
        assert seen.header("x-amz-target") == "TrentService.ListKeys"  # names lower-cased


def test_pipelined_requests_answered_in_order() -> None:
    with serving() as (_, app, port), connect(port) as conn:
        conn.sendall(request(b"1") + request(b"22") + request(b"333"))
        pending = bytearray()
        sizes = [json.loads(read_answer(conn, pending)[2])["size"] for _ in range(3)]
        assert not pending
        assert sizes == [1, 2, 3]
        assert [r.body for r in app.requests] == [b"1", b"22", b"333"]


def test_chunked_body_joined_and_next_request_kept() -> None:
    with serving() as (_, app, port), connect(port) as conn:
        chunked = request(extra=b"Transfer-Encoding: chunked\r\n", length=False)
        body = b'3\r\n{"a\r\n3\r\n": \r\n2\r\n1}\r\n0\r\n\r\n'
        conn.sendall(chunked.removesuffix(b"{}") + body)
        conn.sendall(request(b"{}"))
        pending = bytearray()
        assert json.loads(read_answer(conn, pending)[2]) == {"n": 1, "size": 8}
        assert json.loads(read_answer(conn, pending)[2]) == {"n": 2, "size": 2}
        assert not pending
        assert app.requests[0].body == b'{"a": 1}'


def test_expect_continue_answered_before_the_body() -> None:
    with serving() as (_, app, port), connect(port) as conn:
        whole = request(b'{"x": 2}', extra=b"Expect: 100-continue\r\n")
        head = whole[: whole.index(b"\r\n\r\n") + 4]
        conn.sendall(head)
        conn.settimeout(5)
        assert conn.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert not app.requests
        conn.sendall(b'{"x": 2}')
        assert read_answer(conn)[0] == b"HTTP/1.1 200 OK"


def test_body_over_the_cap_refused_before_it_is_read() -> None:
    with serving() as (_, app, port):
        with connect(port) as conn:
            too_long = b"Content-Length: %d\r\n" % (MAX_BODY_BYTES + 1)
            head = request(b"", length=False, extra=too_long)
            conn.sendall(head)  # the body is never sent: the refusal must not wait for it
            status, headers, body = read_answer(conn)
            assert status.startswith(b"HTTP/1.1 413")
            assert json.loads(body)["__type"] == "SerializationException"
            assert headers[b"connection"] == b"close" and closed(conn)
        with connect(port) as conn:
            chunked = request(extra=b"Transfer-Encoding: chunked\r\n", length=False)
            conn.sendall(chunked.removesuffix(b"{}") + b"%x\r\n" % (MAX_BODY_BYTES + 1))
            assert read_answer(conn)[0].startswith(b"HTTP/1.1 413") and closed(conn)
        assert not app.requests


def test_refusal_reaches_a_client_still_sending_its_body() -> None:
    """The 413 comes after the head while the client is still writing its 300 KiB body and a
    second request: the client reads the whole answer, then the end, and nothing after the
    refusal reaches the app. (Why the front drops input for a second before closing, rather than
    closing at once: front._linger. Linux's loopback keeps a reset's received data readable, so
    this test cannot tell the two apart here.)"""
    body = b" " * (300 * 1024)
    with serving() as (_, app, port):
        for _ in range(5):
            with connect(port) as conn:
                conn.sendall(request(body) + request(b"{}"))
                status, headers, answer = read_answer(conn)
                assert status.startswith(b"HTTP/1.1 413") and headers[b"connection"] == b"close"
                assert json.loads(answer)["__type"] == "SerializationException"
                assert closed(conn)
        assert not app.requests


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 2000 + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 12 + b"\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", b"400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"POST http://x/ HTTP/1.1\r\nHost: a\r\n\r\n", b"400"),
        (b"POST / HTTP/2.0\r\nHost: a\r\n\r\n", b"400"),
    ],
)
def test_malformed_or_oversized_heads_refused_and_closed(wire: bytes, status: bytes) -> None:
    limits = Limits(max_header_bytes=1024, max_header_lines=10)
    with serving(limits) as (_, app, port), connect(port) as conn:
        conn.sendall(wire)
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 " + status), data
        assert b"connection: close" in data.lower()
        assert not app.requests


def test_http10_answered_then_closed() -> None:
    with serving() as (_, _app, port), connect(port) as conn:
        conn.sendall(request(b"{}").replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        status, headers, _ = read_answer(conn)
        assert status == b"HTTP/1.1 200 OK" and headers[b"connection"] == b"close"
        assert closed(conn)


def test_slow_request_cut_at_the_header_timeout() -> None:
    limits = Limits(header_timeout=0.4, idle_timeout=30.0)
    with serving(limits) as (_, app, port), connect(port) as conn:
        started = time.monotonic()
        conn.sendall(b"POST / HTTP/1.1\r\nHost: a\r\n")  # a head begun, never finished
        conn.settimeout(5)
        data = conn.recv(65536)
        assert data.startswith(b"HTTP/1.1 408"), data
        assert time.monotonic() - started < 3
        assert closed(conn)
        # a body that trickles is under the same clock as its head
    with serving(limits) as (_, app, port), connect(port) as conn:
        conn.sendall(request(b"{}" * 100)[:-150])  # 150 bytes short: never done in time
        started = time.monotonic()
        with pytest.raises(OSError):  # cut: a byte now and then does not reset the deadline
            for _ in range(60):  # 408 at 0.4 s, input dropped for a second, then the close
                time.sleep(0.1)
                conn.sendall(b" ")
        assert time.monotonic() - started < 4.5
        assert not app.requests


def test_idle_connection_closed_at_the_idle_timeout() -> None:
    limits = Limits(idle_timeout=0.4)
    with serving(limits) as (front, _, port), connect(port) as conn:
        conn.sendall(request())
        read_answer(conn)
        started = time.monotonic()
        assert closed(conn)
        assert 0.3 < time.monotonic() - started < 3
        assert front.active_connections == 0


def test_full_table_sheds_the_least_recently_active() -> None:
    with serving(Limits(max_connections=2)) as (front, _app, port):
        first, second = connect(port), connect(port)
        try:
            second.sendall(request())  # first is now the least recently active
            read_answer(second)
            third = connect(port)
            with third:
                third.sendall(request())
                assert read_answer(third)[0] == b"HTTP/1.1 200 OK"
                assert closed(first)
                second.sendall(request())
                assert read_answer(second)[0] == b"HTTP/1.1 200 OK"
                assert front.shed == 1 and front.active_connections == 2
        finally:
            first.close()
            second.close()


def test_full_table_sheds_an_idle_connection_before_one_mid_request() -> None:
    with serving(Limits(max_connections=2)) as (front, app, port):
        busy = connect(port)
        busy.sendall(request(b'{"k": 1}')[:30])  # a request under way, the least recent
        time.sleep(0.2)
        idle = connect(port)
        time.sleep(0.2)
        with busy, idle, connect(port) as third:
            assert closed(idle)
            busy.sendall(request(b'{"k": 1}')[30:])
            assert json.loads(read_answer(busy)[2]) == {"n": 1, "size": 8}
            third.sendall(request())
            assert read_answer(third)[0] == b"HTTP/1.1 200 OK"
            assert front.shed == 1 and len(app.requests) == 2


def test_stop_closes_connections() -> None:
    with serving() as (_front, _, port):
        conn = connect(port)
        conn.sendall(request())
        read_answer(conn)
    assert closed(conn)
    conn.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--idle-timeout", "0"], "--idle-timeout must be a positive number of seconds"),
        (["--max-header-bytes", "10"], "--max-header-bytes must be 1024..1048576"),
    ],
)
def test_limit_flags_checked_by_limits(tmp_path: Path, flags: list[str], message: str) -> None:
    creds = kit.write_credentials(tmp_path / "creds.json")
    proc = kit.start(["--state", str(tmp_path / "state"), "--credentials", str(creds), *flags],
                     kit.free_port())
    assert proc.wait(30) == 2
    out = kit.stop(proc)
    assert message in out and "Traceback" not in out
    assert not (tmp_path / "state").exists()  # refused before anything was made
