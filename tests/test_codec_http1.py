"""codec.http1 and the KMS client's HTTP exchange: answer heads from the parent's side of the wire
read strictly (smuggling shapes, caps), bodies by length, chunks or close, kept-alive reuse."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitro_attest.codec import http1
from nitro_attest.errors import TransportError
from nitro_attest.kms.https import MAX_RESPONSE_BYTES, Connection, Endpoint
from nitro_attest.kms.route import parse_route


def _head(text: bytes, max_body: int = 1000) -> http1.ResponseHead:
    return http1.parse_response_head(text, max_body=max_body)


def test_request_head() -> None:
    head = http1.request_head("POST", "/", [("Host", "kms"), ("X-Amz-Target", "T.Decrypt")])
    assert head == b"POST / HTTP/1.1\r\nHost: kms\r\nX-Amz-Target: T.Decrypt\r\n\r\n"


@pytest.mark.parametrize(("method", "target", "headers"), [
    ("POST", "/", [("X", "a\r\nEvil: 1")]),
    ("POST", "/", [("X Y", "a")]),
    ("PO ST", "/", []),
    ("POST", "/ HTTP/1.0\r\n", []),
    ("POST", "no-slash", []),
])
def test_request_parts_that_break_framing_are_refused(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(http1.HttpError):
        http1.request_head(method, target, headers)


def test_answer_heads() -> None:
    head = _head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert (head.status, head.framing, head.length, head.keep_alive) == (200, "length", 5, True)
    assert head.headers["x-a"] == "1, 2"
    assert _head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing == "chunked"
    closed = _head(b"HTTP/1.1 200 OK\r\n\r\n")
    assert closed.framing == "close" and not closed.keep_alive
    assert not _head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                     ).keep_alive
    assert not _head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive
    assert _head(b"HTTP/1.1 204 No Content\r\n\r\n").length == 0
    assert _head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").length == 3


@pytest.mark.parametrize(("text", "words"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "not one number"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not one number"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n", "refused"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "not chunked alone"),
    (b"HTTP/2 200\r\n\r\n", "not 'HTTP/1.x"),
    (b"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n", "bare CR"),
    (b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n", "malformed header"),
    (b"HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n", "malformed header"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100"),
])
def test_bad_answer_heads(text: bytes, words: str) -> None:
    with pytest.raises(http1.HttpError, match=words):
        _head(text)


def test_head_and_chunk_caps() -> None:
    with pytest.raises(http1.HttpError, match="longer than"):
        http1.find_head_end(b"x" * http1.MAX_HEAD_BYTES)
    assert http1.parse_chunk_size(b"1a;ext=1") == 26
    for bad in (b"", b"g", b"123456789", b"-1"):
        with pytest.raises(http1.HttpError):
            http1.parse_chunk_size(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_head_is_parsed_or_refused(raw: bytes) -> None:
    try:
        head = _head(raw + b"\r\n\r\n")
    except http1.HttpError:
        return
    assert raw.startswith(b"HTTP/1.") and 100 <= head.status <= 599


# --- the exchange over a socket -------------------------------------------------------------


@contextmanager
def server(answer: Callable[[socket.socket, int], None]) -> Iterator[Connection]:
    """A raw TCP server: ``answer(conn, n)`` for the n-th request head received."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[int] = [0]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                buffer = b""
                while True:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    buffer += chunk
                    while b"\r\n\r\n" in buffer:
                        head, _, buffer = buffer.partition(b"\r\n\r\n")
                        length = int(head.lower().split(b"content-length: ")[1].split(b"\r")[0])
                        buffer = buffer[length:]
                        seen[0] += 1
                        answer(conn, seen[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    connection = Connection(Endpoint("http", "127.0.0.1", port), parse_route("direct"), None,
                            timeout=5)
    try:
        yield connection
    finally:
        connection.close()
        listener.close()


def _post(connection: Connection) -> bytes:
    answer = connection.request("POST", "/", [("Host", "kms")], b"{}")
    assert answer.status == 200
    return answer.body


def test_chunked_interim_and_close_delimited_bodies() -> None:
    def answer(conn: socket.socket, n: int) -> None:
        if n == 1:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n"
                         b"Trailer: 1\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
            conn.shutdown(socket.SHUT_WR)

    with server(answer) as connection:
        assert _post(connection) == b"abcde"
        assert _post(connection) == b"until close"  # same connection, kept alive after chunks


def test_answers_in_pieces_and_keep_alive() -> None:
    def answer(conn: socket.socket, n: int) -> None:
        body = f"answer {n}".encode()
        data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])

    with server(answer) as connection:
        assert [_post(connection) for _ in range(3)] == [b"answer 1", b"answer 2", b"answer 3"]


@pytest.mark.parametrize(("data", "words"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "mid-answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nEXTRA", "unsolicited"),
    (b"HTTP/1.1 101 Switching\r\n\r\n", "switches"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX", "CRLF"),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (MAX_RESPONSE_BYTES + 70000), "longer than"),
])
def test_broken_answers_are_transport_errors(data: bytes, words: str) -> None:
    def answer(conn: socket.socket, n: int) -> None:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client may hang up first (it refuses an answer over the cap)

    with server(answer) as connection, pytest.raises(TransportError, match=words):
        _post(connection)
        _post(connection)


def test_a_server_that_never_answers_times_out() -> None:
    with server(lambda conn, n: None) as connection:
        connection._timeout = 0.3
        with pytest.raises(TransportError, match="timed out"):
            _post(connection)
