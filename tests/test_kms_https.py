"""The KMS client's HTTP exchange (kms.https over codec.http1): answers from the parent's side of
the wire read strictly (smuggling shapes, caps), bodies by length, chunks or close, kept-alive
reuse, unsolicited bytes refused. The codec's own refusals: test_http1_answers.py."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from nitro_attest.errors import TransportError
from nitro_attest.kms.https import (
    MAX_ANSWER_HEAD,
    MAX_RESPONSE_BYTES,
    Connection,
    Endpoint,
    tls_context,
)
from nitro_attest.kms.route import parse_route
from tests.kmsclientkit import Pki, make_pki, server_context


@contextmanager
def server(
    answer: Callable[[socket.socket, int], None], *, pki: Pki | None = None,
    before_reading: float = 0.0,
) -> Iterator[Connection]:
    """A raw TCP server (TLS with ``pki``): ``answer(conn, n)`` for the n-th request head
    received; ``before_reading`` seconds pass before it reads a connection at all."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[int] = [0]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
                if pki is not None:
                    conn = server_context(pki).wrap_socket(conn, server_side=True)
            except OSError:
                return
            time.sleep(before_reading)
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
    endpoint = Endpoint("https" if pki else "http", "127.0.0.1", port)
    connection = Connection(endpoint, parse_route("direct"), tls_context(pki.ca) if pki else None,
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
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX\r\n",
     "chunk data longer than its size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX", "mid-answer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "mid-answer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nEXTRA", "unsolicited"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000, "chunk line"),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (MAX_RESPONSE_BYTES + 70000), "longer than"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 1),
     f"more than {MAX_RESPONSE_BYTES}"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_RESPONSE_BYTES + 1),
     f"chunked body longer than {MAX_RESPONSE_BYTES}"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     "malformed answer: both Transfer-Encoding and Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
     "malformed answer: Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "malformed answer: only"),
    (b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 0\r\n\r\n", "malformed answer"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_ANSWER_HEAD, "answer head longer than"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"Content-Length: 0\r\n\r\n",
     "more than 100 header lines"),
    (b"ICY 200 OK\r\n\r\n", "malformed status line"),
    # trailer lines without end: the reader stops at 8 KiB instead of reading on for ever
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"X: y\r\n" * 5000,
     "trailer section too large"),
])
def test_broken_answers_are_transport_errors(data: bytes, words: str) -> None:
    def answer(conn: socket.socket, n: int) -> None:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client may hang up first (it refuses an answer over the cap)

    with server(answer) as connection, pytest.raises(TransportError, match=words) as caught:
        _post(connection)
        _post(connection)
    assert "127.0.0.1" in str(caught.value)


def test_a_request_part_that_would_break_framing_is_not_sent() -> None:
    with server(lambda conn, n: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                ) as connection:
        for headers in ([("Host", "kms\r\nX-Evil: 1")], [("Bad Name", "v")]):
            with pytest.raises(TransportError, match="cannot be sent"):
                connection.request("POST", "/", headers, b"{}")
        assert connection._sock is None  # refused before a connection was even opened
        assert _post(connection) == b""


def test_a_server_that_never_answers_times_out() -> None:
    with server(lambda conn, n: None) as connection:
        connection._timeout = 0.3
        with pytest.raises(TransportError, match="timed out"):
            _post(connection)


# --- the non-blocking socket: every wait one poll within the deadline ---------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _echo_length(conn: socket.socket, n: int) -> None:
    body = f"answer {n}".encode()
    with contextlib.suppress(OSError):  # the client gave up first (the test where it times out)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_request_larger_than_the_socket_buffers_waits_and_is_sent_whole(
    tls: bool, pki: Pki
) -> None:
    """The far side reads late: the send fills the buffers, waits for room (not an error, not a
    partial request) and the answer comes back for the whole body, twice on one connection."""
    body = bytes(range(256)) * (24 * 1024)  # 6 MiB, more than loopback's buffers hold
    with server(_echo_length, pki=pki if tls else None, before_reading=0.3) as connection:
        for n in (1, 2):
            answer = connection.request("POST", "/", [("Host", "kms")], body)
            assert answer.body == f"answer {n}".encode()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_far_side_that_never_reads_times_out_the_send(tls: bool, pki: Pki) -> None:
    with server(_echo_length, pki=pki if tls else None, before_reading=3) as connection:
        connection._timeout = 0.5
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            connection.request("POST", "/", [("Host", "kms")], bytes(16 * 1024 * 1024))
        assert time.monotonic() - started < 5


def test_a_tls_answer_in_one_byte_records(pki: Pki) -> None:
    """Every byte its own TLS record (and the head and body apart): each read takes what is there
    and the reader waits for the rest, on a kept-alive connection."""
    def answer(conn: socket.socket, n: int) -> None:
        body = f"answer {n}".encode()
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body):
            conn.sendall(bytes([byte]))

    with server(answer, pki=pki) as connection:
        assert [_post(connection) for _ in range(3)] == [b"answer 1", b"answer 2", b"answer 3"]


def test_a_tls_server_that_never_answers_times_out(pki: Pki) -> None:
    with server(lambda conn, n: None, pki=pki) as connection:
        connection._timeout = 0.3
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            _post(connection)
        assert time.monotonic() - started < 3


def test_a_tls_trickle_is_bounded_by_the_deadline(pki: Pki) -> None:
    """A byte every 50 ms: each arrives in time, the whole answer does not."""
    def answer(conn: socket.socket, n: int) -> None:
        try:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
                conn.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass

    with server(answer, pki=pki) as connection:
        connection._timeout = 0.5
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            _post(connection)
        assert time.monotonic() - started < 3
