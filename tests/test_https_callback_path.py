"""The front's callback path (a body-less request and its whole answer relayed from the
transports' callbacks, no coroutine woken) answers as the coroutine does, and passes every
other case back to it at the step it reached: answers not all there at once, chunked, interim,
closing, or followed by stray bytes; bodies, the attestation path and bad heads after requests
it served; pipelined requests in order; the header deadline after it served requests.

Threat model: anyone who reaches the port, the parent included, sends anything (pipelined heads,
a smuggling attempt right behind a plain request, slow heads); the app is trusted but answers in
every legal shape."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from .httpskit import Front, running_front, sim, tls_connect

ANSWERS = {
    b"/plain": [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nplain\n"],
    # head and body apart: the callbacks see the head first, and pass the rest on
    b"/split": [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", b"split\n"],
    b"/chunked": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n"],
    b"/interim": [b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninterim\n"],
    b"/close": [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 6\r\n\r\nclose\n"],
    b"/stray": [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstray\nHTTP/1.1 200 OK\r\n"
                b"Content-Length: 6\r\n\r\nWRONG\n"],
    b"/head": [b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"],
    b"/big": [b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"B" * 200000],
    b"/kb": [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"k" * 1000],
    b"/big-then-idle-close": [b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n"
                              + b"B" * 200000],
}


@dataclass
class RawApp:
    """An HTTP/1.1 app answering each path with fixed bytes, written as given (one write per
    piece); POST bodies are read by Content-Length and answered with their size."""

    heads: list[bytes] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock, contextlib.suppress(OSError):  # the front may cut it (a client gone)
            self._answer_all(sock)

    def _answer_all(self, sock: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            self.heads.append(head)
            method, path = head.split(b" ")[:2]
            if method == b"POST":
                length = int(head.lower().partition(b"content-length: ")[2].split(b"\r")[0])
                while len(buffer) < length:
                    buffer += sock.recv(65536)
                buffer = buffer[length:]
                body = b"%d" % length
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                             + body)
                continue
            pieces = ANSWERS.get(path, [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                        % (len(path) + 1) + path + b"\n"])
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(0.05)
                sock.sendall(piece)
            if path in (b"/close", b"/big-then-idle-close"):
                if path == b"/big-then-idle-close":
                    time.sleep(0.1)  # the app's keep-alive timeout, shortened
                return

    def close(self) -> None:
        self.listener.close()


@contextmanager
def raw_app() -> Iterator[RawApp]:
    app = RawApp()
    try:
        yield app
    finally:
        app.close()


def _served(front: Front) -> int:
    return sum(conn.served for conn in list(front.front._connections))


def _answer(sock: ssl.SSLSocket, buffer: bytearray, *, head_request: bool = False
            ) -> tuple[bytes, bytes]:
    """One whole answer (head, body) from ``sock``: Content-Length or chunked bodies."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, bytes(buffer)
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while not buffer.endswith(b"0\r\n\r\n"):
            buffer += sock.recv(65536)
        body = bytes(buffer)
        buffer.clear()
        return head, body
    length = int(lower.partition(b"content-length: ")[2].split(b"\r")[0] or b"0")
    if head_request:
        length = 0
    while len(buffer) < length:
        data = sock.recv(65536)
        assert data
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return head, body


def _get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: app.example\r\n\r\n"


@contextmanager
def _front(sim_state: Path, loop: str, **config: object) -> Iterator[tuple[RawApp, Front]]:
    new_loop = uvloop.new_event_loop if loop == "uvloop" else None
    extra = {"new_loop": new_loop} if new_loop else {}
    with raw_app() as app, running_front(sim(sim_state), app.address, **extra,
                                         **config) as front:  # type: ignore[arg-type]
        yield app, front


LOOPS = ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop", LOOPS)
def test_keep_alive_requests_are_answered_by_the_callbacks(sim_state: Path, loop: str) -> None:
    with _front(sim_state, loop) as (app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        buffer = bytearray()
        for _ in range(4):
            conn.sendall(_get(b"/plain"))
            head, body = _answer(conn, buffer)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"plain\n"
            assert b"content-length: 6\r\n" in head and b"content-type: text/plain" in head
        assert _served(front) == 3  # the first opened the app connection: the coroutine's
        assert app.connections == 1
        # the same forwarded head as the coroutine's: Host first, the front's own fields
        assert len(set(app.heads)) == 1
        assert app.heads[0].startswith(b"GET /plain HTTP/1.1\r\nhost: app.example\r\n")
        assert b"x-forwarded-for: 127.0.0.1" in app.heads[0]
    assert sum("GET /plain status=200" in line for line in front.logs.lines()) == 4


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_requests_are_answered_in_order(sim_state: Path, loop: str) -> None:
    with _front(sim_state, loop) as (_app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        buffer = bytearray()
        conn.sendall(_get(b"/warm"))
        _answer(conn, buffer)
        paths = [b"/a", b"/split", b"/b", b"/chunked", b"/c", b"/interim", b"/d"]
        conn.sendall(b"".join(_get(p) for p in paths))
        bodies = [_answer(conn, buffer)[1] for _ in paths]
        assert bodies[0] == b"/a\n" and bodies[2] == b"/b\n" and bodies[4] == b"/c\n"
        assert bodies[1] == b"split\n" and bodies[5] == b"interim\n" and bodies[6] == b"/d\n"
        assert bodies[3] == b"4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n"
        # /a by the callbacks; the coroutine takes over at /split and serves what it finds
        # already buffered behind it
        assert _served(front) >= 1


@pytest.mark.parametrize("loop", LOOPS)
def test_answers_not_whole_at_once_are_passed_to_the_coroutine(sim_state: Path,
                                                               loop: str) -> None:
    with _front(sim_state, loop) as (app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        buffer = bytearray()
        conn.sendall(_get(b"/warm"))
        _answer(conn, buffer)
        for path, want in ((b"/split", b"split\n"), (b"/interim", b"interim\n"),
                           (b"/plain", b"plain\n")):
            conn.sendall(_get(path))
            head, body = _answer(conn, buffer)
            assert body == want and b" 103 " not in head, path
        conn.sendall(b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = _answer(conn, buffer, head_request=True)
        assert b"content-length: 99" in head and body == b""  # the GET's length, no body
        # stray bytes after an answer: the app connection is not used again
        before = app.connections
        conn.sendall(_get(b"/stray"))
        assert _answer(conn, buffer)[1] == b"stray\n"
        conn.sendall(_get(b"/after"))
        assert _answer(conn, buffer)[1] == b"/after\n"
        assert app.connections == before + 1
        # an app that closes: the client gets the answer, then the close
        conn.sendall(_get(b"/close"))
        head, body = _answer(conn, buffer)
        assert body == b"close\n" and b"connection: close" in head
        conn.settimeout(5)
        with contextlib.suppress(ssl.SSLError, OSError):
            assert conn.recv(65536) == b""


@pytest.mark.parametrize("loop", LOOPS)
def test_a_bad_head_right_behind_a_served_request_is_refused(sim_state: Path,
                                                             loop: str) -> None:
    """The parent's smuggling attempt: a plain request, and in the same bytes one with both
    Content-Length and Transfer-Encoding. The first is answered, the second refused (400) and
    the connection closed; the app never sees it."""
    with _front(sim_state, loop) as (app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        buffer = bytearray()
        conn.sendall(_get(b"/warm"))
        _answer(conn, buffer)
        conn.sendall(_get(b"/a") + b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n"
                     b"Host: x\r\n\r\n")
        assert _answer(conn, buffer)[1] == b"/a\n"
        head, _ = _answer(conn, buffer)
        assert head.startswith(b"HTTP/1.1 400 ")
        conn.settimeout(5)
        with contextlib.suppress(ssl.SSLError, OSError):
            while conn.recv(65536):
                pass
    assert not any(b"/smuggled" in h or h.startswith(b"POST") for h in app.heads)


@pytest.mark.parametrize("loop", LOOPS)
def test_bodies_and_attestation_after_served_requests(sim_state: Path, loop: str) -> None:
    with _front(sim_state, loop) as (_app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        buffer = bytearray()
        for _ in range(2):
            conn.sendall(_get(b"/plain"))
            _answer(conn, buffer)
        conn.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"
                     + b"b" * 70000)
        assert _answer(conn, buffer)[1] == b"70000"
        conn.sendall(_get(b"/.well-known/nitro-attestation?nonce=" + b"ab" * 16))
        head, body = _answer(conn, buffer)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"attestation-document+cose" in head and len(body) > 1000
        # The attestation answer is written as the document comes back, a turn of the loop
        # before the coroutine waits for the next head: a request sent right after it may be
        # the coroutine's; the one after that is the callbacks' again.
        for _ in range(2):
            conn.sendall(_get(b"/plain"))
            assert _answer(conn, buffer)[1] == b"plain\n"
        assert _served(front) >= 2


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_head_after_served_requests_still_gets_408(sim_state: Path, loop: str) -> None:
    with _front(sim_state, loop, header_timeout=0.5) as (_app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        buffer = bytearray()
        for _ in range(3):
            conn.sendall(_get(b"/plain"))
            _answer(conn, buffer)
        assert _served(front) == 2
        conn.sendall(b"GET /never HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        head, _ = _answer(conn, buffer)
        assert head.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_gone_while_its_answer_is_awaited_is_dropped(sim_state: Path,
                                                              loop: str) -> None:
    with _front(sim_state, loop) as (_app, front):
        conn = tls_connect(front.address)
        buffer = bytearray()
        conn.sendall(_get(b"/warm"))
        _answer(conn, buffer)
        conn.sendall(_get(b"/split"))  # its body comes 50 ms after its head
        conn.close()
        deadline = time.monotonic() + 5
        while front.front.active_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert front.front.active_connections == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_more_than_a_buffer_of_pipelined_requests_and_big_answers_keep_flowing(
    sim_state: Path, loop: str
) -> None:
    """Reading pauses once 64 KiB wait in a buffer; the callback path must resume it when it
    empties the buffer, or the connection would stall (client side: 80 KiB of pipelined heads;
    app side: an answer larger than the buffer, arriving at once or not)."""
    with _front(sim_state, loop) as (_app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        buffer = bytearray()
        conn.settimeout(10)
        for _ in range(2):
            conn.sendall(_get(b"/big"))
            assert _answer(conn, buffer)[1] == b"B" * 200000
            conn.sendall(_get(b"/plain"))
            assert _answer(conn, buffer)[1] == b"plain\n"
        burst = _get(b"/p")
        count = 80 * 1024 // len(burst) + 1
        # All sent before any is read (one thread: an SSL socket takes no concurrent read and
        # write); the answers, 150 KB, fit the kernel's buffers and the front's.
        conn.sendall(burst * count)
        for _ in range(count):
            assert _answer(conn, buffer)[1] == b"/p\n"
        conn.sendall(_get(b"/plain"))
        assert _answer(conn, buffer)[1] == b"plain\n"


@pytest.mark.parametrize("loop", LOOPS)
def test_an_app_closing_its_kept_connection_after_a_big_answer_is_not_reused(
    sim_state: Path, loop: str
) -> None:
    """After an answer larger than the buffer the app connection must still be read, so the
    app's idle close is seen and the next request goes on a new connection, not to a dead one
    (a 502)."""
    with _front(sim_state, loop) as (app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        buffer = bytearray()
        conn.settimeout(10)
        conn.sendall(_get(b"/big-then-idle-close"))
        assert len(_answer(conn, buffer)[1]) == 200000
        time.sleep(0.5)
        conn.sendall(_get(b"/plain"))
        head, body = _answer(conn, buffer)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"plain\n"
        assert app.connections == 2


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_does_not_read_its_answers_is_held_to_the_write_buffer(
    sim_state: Path, loop: str
) -> None:
    """The parent pipelines requests and never reads: the front must stop taking requests once
    its write buffer toward that client is full (as the coroutine's send does), not buffer
    every answer (its deadlines then cut it, as for a coroutine's send)."""
    with _front(sim_state, loop) as (_app, front):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(10)
        raw.connect((front.address.host, front.address.port))
        from nitro_attest.https.client import client_context

        conn = client_context().wrap_socket(raw, server_hostname=None)
        buffer = bytearray()
        conn.sendall(_get(b"/warm"))
        _answer(conn, buffer)
        burst = _get(b"/kb") * 10000  # 10 MB of answers asked for
        threading.Thread(target=_send_quietly, args=(conn, burst), daemon=True).start()
        most = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for c in list(front.front._connections):
                if c.client is not None and c.client.transport is not None:
                    most = max(most, c.client.transport.get_write_buffer_size())
            time.sleep(0.02)
        assert most < 1 << 20, most
        with contextlib.closing(tls_connect(front.address)) as other:  # others still served
            other.sendall(_get(b"/plain"))
            assert _answer(other, bytearray())[1] == b"plain\n"
        conn.close()


def _send_quietly(conn: ssl.SSLSocket, data: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):
        conn.sendall(data)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_request_with_a_body_right_behind_a_served_one_is_answered(sim_state: Path,
                                                                     loop: str) -> None:
    """The callbacks answer the first request, find the next one is not theirs (a body) and
    wake the coroutine for what is already buffered: no new bytes came, and that is no EOF."""
    with _front(sim_state, loop) as (_app, front), contextlib.closing(
        tls_connect(front.address)
    ) as conn:
        buffer = bytearray()
        conn.settimeout(10)
        conn.sendall(_get(b"/warm"))
        _answer(conn, buffer)
        conn.sendall(_get(b"/a") + b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert _answer(conn, buffer)[1] == b"/a\n"
        assert _answer(conn, buffer)[1] == b"3"
        assert _served(front) == 1


class _FakeTransport:
    """Delivers data from within resume_reading, as uvloop's TLS transport may."""

    def __init__(self) -> None:
        self.stream: object = None

    def pause_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def resume_reading(self) -> None:
        self.stream.data_received(b"more")  # type: ignore[attr-defined]

    def is_closing(self) -> bool:
        return False


def test_fill_tells_data_a_poke_and_the_end_apart() -> None:
    """Bytes delivered within resume_reading are new data (not an EOF once the wait ends); a
    poke (buffered bytes left to the coroutine) is not an EOF; the end of the stream is."""
    from nitro_attest.https.front import _Closed, _Connection, _Stream

    async def scenario() -> None:
        conn = _Connection("peer", None)
        stream = _Stream(conn)
        transport = _FakeTransport()
        transport.stream = stream
        stream.connection_made(transport)  # type: ignore[arg-type]
        stream.paused = True
        await asyncio.wait_for(stream.fill(1.0), 1.0)
        assert stream.buffer == b"more" and not stream.paused
        waiting = asyncio.ensure_future(stream.fill(1.0))
        await asyncio.sleep(0)
        stream.poke()
        await asyncio.wait_for(waiting, 1.0)  # no _Closed
        waiting = asyncio.ensure_future(stream.fill(1.0))
        await asyncio.sleep(0)
        stream.eof_received()
        with pytest.raises(_Closed):
            await asyncio.wait_for(waiting, 1.0)

    for new_loop in (asyncio.new_event_loop, uvloop.new_event_loop):
        loop = new_loop()
        try:
            loop.run_until_complete(scenario())
        finally:
            loop.close()



class _SlowNsm:
    """The software NSM, 50 ms per document: requests arrive while the front waits for one."""

    def __init__(self, state: Path) -> None:
        self.inner = sim(state)

    def attestation(self, **fields: object) -> bytes:
        time.sleep(0.05)
        return self.inner.attestation(**fields)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("loop", LOOPS)
def test_requests_arriving_during_an_attestation_are_answered_after_it(sim_state: Path,
                                                                       loop: str) -> None:
    """The attestation answer is written from the NSM's callback, not by the coroutine: a plain
    request arriving while the document is made (which the callbacks could answer at once on
    the kept app connection) must be answered after it, and each attestation answer names its
    own nonce."""
    from nitro_attest.attestation.document import parse_document

    new_loop = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with raw_app() as app, running_front(_SlowNsm(sim_state), app.address,  # type: ignore[arg-type]
                                         new_loop=new_loop) as front, \
            contextlib.closing(tls_connect(front.address)) as conn:
        buffer = bytearray()
        conn.settimeout(10)
        conn.sendall(_get(b"/warm"))
        _answer(conn, buffer)
        for i in range(1, 4):
            nonce = bytes([i]) * 16
            conn.sendall(_get(b"/.well-known/nitro-attestation?nonce=" + nonce.hex().encode()))
            time.sleep(0.01)  # the front is in the NSM call
            conn.sendall(_get(b"/p"))
            head, body = _answer(conn, buffer)
            assert b"attestation-document+cose" in head, head[:60]
            assert parse_document(body).nonce == nonce
            assert _answer(conn, buffer)[1] == b"/p\n"
            # and pipelined in one write
            conn.sendall(_get(b"/.well-known/nitro-attestation?nonce=" + nonce.hex().encode())
                         + _get(b"/q"))
            head, body = _answer(conn, buffer)
            assert parse_document(body).nonce == nonce
            assert _answer(conn, buffer)[1] == b"/q\n"
