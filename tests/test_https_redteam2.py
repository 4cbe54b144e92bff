"""Red team of the rewritten front (asyncio protocols, the callback path, the codec's fast path,
the header-name memo): each test failed before its fix.

Threat model: the parent and any client send anything, pipelined and timed as they like (the
front's loop is busy when others load it, so events of several connections come in one batch);
the app is trusted but answers in every legal shape."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from nitro_attest.codec import http1

from .httpskit import Front, running_front, sim, tls_connect

LOOPS = ["asyncio", "uvloop"]


class HeldApp:
    """An app whose one connection the test drives by hand: read a head, write an answer."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sock: socket.socket | None = None
        self.buffer = b""

    def accept(self) -> None:
        self.sock, _ = self.listener.accept()
        self.sock.settimeout(10)

    def head(self) -> bytes:
        assert self.sock is not None
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "the front closed the app connection"
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def answer(self, body: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.listener.close()


@contextmanager
def _held(sim_state: Path, loop: str, **config: Any) -> Iterator[tuple[HeldApp, Front]]:
    app = HeldApp()
    new_loop = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    try:
        with running_front(sim(sim_state), app.address, new_loop=new_loop,
                           **config) as front:
            yield app, front
    finally:
        app.close()


def _answers(conn: ssl.SSLSocket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` whole answers (Content-Length bodies) from ``conn``."""
    buffer = b""
    out: list[tuple[bytes, bytes]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in buffer:
            data = conn.recv(65536)
            assert data, out
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        length = int(head.lower().partition(b"content-length: ")[2].split(b"\r")[0])
        while len(buffer) < length:
            data = conn.recv(65536)
            assert data, out
            buffer += data
        out.append((head, buffer[:length]))
        buffer = buffer[length:]
    return out


def _in_one_batch(front: Front, *events: tuple[str, bytes]) -> None:
    """Deliver ``events`` (("app" or "client", bytes)) to the front's only connection in one
    turn of its loop, in that order: what a busy loop (other connections' work) sees when
    both sockets became readable meanwhile. Returns once they were handled."""
    loop = front.front._loop
    assert loop is not None
    (conn,) = list(front.front._connections)
    done = threading.Event()

    def deliver() -> None:
        try:
            for side, data in events:
                stream = conn.upstream if side == "app" else conn.client
                assert stream is not None
                stream.data_received(data)
        finally:
            done.set()

    loop.call_soon_threadsafe(deliver)
    assert done.wait(5)


@pytest.mark.parametrize("loop", LOOPS)
def test_answers_stay_in_order_when_an_answer_and_the_next_heads_arrive_together(
    sim_state: Path, loop: str
) -> None:
    """The callbacks answer request 1 and find request 2's head begun: they wake the coroutine.
    In the same batch of events the rest of request 2 arrives, with request 3 behind it. The
    callbacks must not relay request 2 while the coroutine, woken, takes request 3: request 3
    (here the attestation path, answered at once) would be answered before request 2, and a
    pipelining client would read each answer as the other's."""
    with _held(sim_state, loop) as (app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        conn.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")  # opens the kept app connection
        app.accept()
        assert app.head().startswith(b"GET /warm ")
        app.answer(b"warm")
        assert _answers(conn, 1)[0][1] == b"warm"
        conn.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n")
        assert app.head().startswith(b"GET /one ")
        time.sleep(0.1)  # the front holds request 2's beginning
        _in_one_batch(
            front,
            ("app", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"),
            ("client", b"\r\nGET /.well-known/nitro-attestation?nonce=" + b"ab" * 16
             + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        assert app.head().startswith(b"GET /two ")
        time.sleep(0.2)
        app.answer(b"two")
        answers = _answers(conn, 3)
        assert answers[0][1] == b"one"
        assert answers[1][1] == b"two", answers[1][0]
        assert b"attestation-document+cose" in answers[2][0]


@pytest.mark.parametrize("loop", LOOPS)
def test_nothing_behind_a_request_in_flight_is_relayed_when_the_client_input_ends(
    sim_state: Path, loop: str
) -> None:
    """Request 2 goes out from the callbacks; request 3 and the end of the client's input
    come in one read (TLS close_notify right behind it). The end wakes the coroutine while
    request 2 is in flight: it must not take request 3 (sent to the app beside request 2,
    answered in any order), but drop the connection, whose answers can no longer be sent."""
    with _held(sim_state, loop) as (app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        conn.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
        app.accept()
        assert app.head().startswith(b"GET /warm ")
        app.answer(b"warm")
        assert _answers(conn, 1)[0][1] == b"warm"
        conn.sendall(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        assert app.head().startswith(b"GET /two ")
        loop_ = front.front._loop
        assert loop_ is not None
        (held,) = list(front.front._connections)
        client = held.client
        assert client is not None
        done = threading.Event()

        def deliver() -> None:
            client.data_received(b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n")
            client.eof_received()
            done.set()

        loop_.call_soon_threadsafe(deliver)
        assert done.wait(5)
        assert app.sock is not None
        app.sock.settimeout(1)
        with contextlib.suppress(TimeoutError, OSError):
            while data := app.sock.recv(65536):
                app.buffer += data
        assert b"/three" not in app.buffer


def test_the_header_name_memo_holds_little_whatever_names_clients_send() -> None:
    """The memo of which header names the front owns is capped by count (4096), and names are
    the client's choice, each up to a whole head (16 KiB): 4096 long names pinned 64 MiB of
    enclave memory for the process's life. Names past a real name's length are not kept."""
    saved = dict(http1._OWNED)
    http1._OWNED.clear()
    try:
        for i in range(http1._OWNED_MAX):
            name = b"X-%05d-" % i + b"n" * 16000
            request = http1.parse_request_head(
                b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": v\r\nX_Forwarded_For: 6\r\n\r\n",
                limit=16384, max_lines=100,
            )
            forwarded = http1.forward_request_head(request, client="1.2.3.4", host_fallback=b"e")
            assert name.lower() in forwarded and b"x_forwarded_for" not in forwarded
        held = sum(len(name) for name in http1._OWNED)
        assert held < 1 << 20, held
        assert http1._front_owned(b"x_forwarded_" + b"f" * 16000)  # still judged, not kept
    finally:
        http1._OWNED.clear()
        http1._OWNED.update(saved)


@pytest.mark.parametrize("loop", LOOPS)
def test_expect_on_a_request_without_body_is_answered_alike_on_either_path(
    sim_state: Path, loop: str
) -> None:
    """The callback path is to answer as the coroutine does (docs/https.md: Expect is the
    coroutine's): a body-less request with Expect: 100-continue gets the same bytes whether
    it opens the app connection (the coroutine) or reuses it (the callbacks' case)."""
    request = b"GET /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n"
    with _held(sim_state, loop) as (app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        conn.sendall(request)
        app.accept()
        app.head()
        app.answer(b"e")
        conn.settimeout(5)
        first = b""
        while not first.endswith(b"\r\n\r\ne"):
            first += conn.recv(65536)
        conn.sendall(request)
        app.head()
        app.answer(b"e")
        second = b""
        while not second.endswith(b"\r\n\r\ne"):
            second += conn.recv(65536)
    assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert second == first


@pytest.mark.parametrize(
    "target",
    [
        "/.well-known/nitro-attestation#x",
        "/.well-known/nitro-attestation#?nonce=" + "ab" * 16,
        "/.well-known/nitro-attestation/#/x",
        "/.WELL-KNOWN/nitro-attestation;p#x",
    ],
)
def test_a_fragment_does_not_take_the_attestation_path_to_the_app(target: str) -> None:
    """'#' has no place in a request target, and the servers apps run on drop what follows it
    (werkzeug's and wsgiref's urlsplit, uvicorn's httptools): the app would route this target
    as the attestation path, which only the front answers."""
    from urllib.parse import urlsplit

    from nitro_attest.https.front import is_attestation_path

    assert urlsplit(target).path.rstrip("/").lower().partition(";")[0] == (
        "/.well-known/nitro-attestation"
    )
    head = http1.parse_request_head(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target.encode(),
                                    limit=16384, max_lines=100)
    assert is_attestation_path(head.path)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    "first, answer",
    [
        # two answers to one request
        (b"GET /one", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\noneHTTP/1.1 200 OK\r\n"
                      b"Content-Length: 6\r\n\r\nFORGED"),
        # a body on a HEAD answer, and on a 204 and a 304
        (b"HEAD /one", b"HTTP/1.1 200 OK\r\nContent-Length: 38\r\n\r\nHTTP/1.1 200 OK\r\n"
                       b"Content-Length: 6\r\n\r\nFORGED"),
        (b"GET /one", b"HTTP/1.1 204 No Content\r\nContent-Length: 38\r\n\r\nHTTP/1.1 200 OK\r\n"
                      b"Content-Length: 6\r\n\r\nFORGED"),
        (b"GET /one", b"HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\n"
                      b"Content-Length: 6\r\n\r\nFORGED"),
        # a Content-Length shorter than the body
        (b"GET /one", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\noneFORGED"),
    ],
)
def test_an_answer_with_stray_bytes_is_not_read_as_the_next_requests(
    sim_state: Path, loop: str, first: bytes, answer: bytes
) -> None:
    """The app's answer to request 1 comes with more than it frames, while request 2 is
    buffered behind it: the callbacks relay answer 1 and must not send request 2 on that app
    connection (the stray bytes would be its answer), but on a new one."""
    with _held(sim_state, loop) as (app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        conn.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
        app.accept()
        app.head()
        app.answer(b"warm")
        assert _answers(conn, 1)[0][1] == b"warm"
        conn.sendall(first + b" HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        assert app.head().startswith(first + b" ")
        time.sleep(0.1)
        old = app.sock
        _in_one_batch(front, ("app", answer))
        app.accept()  # request 2 comes on a new app connection
        assert app.sock is not old and old is not None
        old.close()
        app.buffer = b""
        assert app.head().startswith(b"GET /two ")
        app.answer(b"two")
        conn.settimeout(5)
        data = b""
        while not data.endswith(b"two"):
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
        assert b"FORGED" not in data
        assert data.count(b"HTTP/1.1 ") == 2


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_client_that_does_not_read_holds_little_of_an_endless_answer(
    sim_state: Path, loop: str, framing: str
) -> None:
    """A client (or the parent, for as many connections as --max-connections allows) asks for
    a big answer and reads nothing. The TLS transport's own write limit decides what the front
    holds for it: the loop's default (512 KiB before pausing, plus the write that crossed it:
    about 750 KB a connection, 750 MB for 1024 of them) rather than the relay's 64 KiB pieces."""
    with _held(sim_state, loop) as (app, front):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(10)
        raw.connect((front.address.host, front.address.port))
        from nitro_attest.https.client import client_context

        conn = client_context().wrap_socket(raw, server_hostname=None)
        conn.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        app.accept()
        app.head()
        sock = app.sock
        assert sock is not None

        def endless() -> None:
            with contextlib.suppress(OSError):
                if framing == "length":
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
                    while True:
                        sock.sendall(b"z" * 65536)
                sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                while True:
                    sock.sendall(b"10000\r\n" + b"z" * 65536 + b"\r\n")

        threading.Thread(target=endless, daemon=True).start()
        most = _most_on_loop(front, 1.5)
        conn.close()
        assert 0 < most < 512 * 1024, most


def _most_on_loop(front: Front, seconds: float) -> int:
    """The largest write buffer toward a client over ``seconds``, sampled between the loop's
    callbacks (read from another thread, a TLS transport's size can count a write twice)."""
    loop = front.front._loop
    assert loop is not None
    most = [0]
    stop = time.monotonic() + seconds
    done = threading.Event()

    def sample() -> None:
        for c in list(front.front._connections):
            if c.client is not None and c.client.transport is not None:
                most[0] = max(most[0], c.client.transport.get_write_buffer_size())
        if time.monotonic() < stop:
            loop.call_later(0.002, sample)
        else:
            done.set()

    loop.call_soon_threadsafe(sample)
    assert done.wait(seconds + 5)
    return most[0]
