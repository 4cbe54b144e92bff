"""The parent against the KMS client's third round of fast paths (docs/kms.md, "Red team
(rt-kms3)"): the request head from a template, the answer taken whole from its first read, and
the single deadline. Findings' tests failed before their fix; the rest hold what was attacked."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nitro_attest.errors import TransportError
from nitro_attest.kms.client import KmsClient
from nitro_attest.kms.https import Connection, Endpoint, tls_context
from nitro_attest.kms.route import parse_route
from nitro_attest.kms.sigv4 import Credentials
from nitro_attest.nsm import open_backend
from nitro_attest.nsm.backend import NsmBackend
from tests.kmsclientkit import Pki, make_pki, server_context
from tests.test_kms_fast_paths import _captured

ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\n"
          b"Content-Length: 2\r\n\r\n{}")

_RECORD = 5 + len(ANSWER) + 1 + 16  # the answer in one TLS 1.3 record


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("rogue"), label="rogue")


# --- the whole-answer path against the piecewise reader, every split ---------------------------


class _Script:
    """A far side whose reads are scripted: ``chunks`` one per read, then the end of the stream."""

    family = socket.AF_UNIX

    def close(self) -> None:
        pass


def _outcome(chunks: list[bytes]) -> tuple[Any, ...]:
    """The answer to one request whose reads return ``chunks``: status, headers, body, whether
    the connection stays open, and the bytes left after the answer (in the buffer or unread:
    where they wait does not matter, only that they are the same), or the error."""
    connection = Connection(Endpoint("http", "127.0.0.1", 9), parse_route("direct"), None,
                            timeout=5)
    script = list(chunks)
    connection._connect = _Script  # type: ignore[assignment,method-assign]
    connection._send = lambda sock, data: None  # type: ignore[method-assign]

    def recv(sock: object, *, wait_first: bool = False) -> bytes:
        return script.pop(0) if script else b""

    connection._recv = recv  # type: ignore[method-assign]
    try:
        answer = connection.send("POST", b"POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\n\r\n")
    except TransportError as exc:
        return ("refused", str(exc))
    kept = connection._sock is not None
    left = bytes(connection._buffer) + b"".join(script) if kept else b""
    return (answer.status, answer.headers, answer.body, kept, left)


_STARTS = [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 400 Bad Request\r\n", b"HTTP/1.0 200 OK\r\n",
           b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
           b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\n",
           b"HTTP/1.1 101 Switching\r\n\r\n"]
_FIELDS = [b"Content-Length: 2\r\n", b"Content-Length: 002\r\n", b"Content-Length:  2 \r\n",
           b"Content-Length: +2\r\n", b"Content-Length: 3\r\n", b"Content-Length: 0\r\n",
           b"Content-Length: 2, 2\r\n", b"Content-Length: -2\r\n",
           b"Transfer-Encoding: chunked\r\n",
           b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"X: y\r\n", b"X:\ty\r\n",
           b"Bad Name: y\r\n", b"X: a\nb\r\n"]
_BODIES = [b"", b"{}", b"{}x", b"2\r\n{}\r\n0\r\n\r\n", b"\xef\xbb\xbf{}",
           b"{}HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ninjects"]


def _answers(count: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        start = rng.choice(_STARTS)
        if start.endswith(b"\r\n\r\n"):
            yield start
            continue
        yield start + b"".join(rng.sample(_FIELDS, rng.randint(0, 3))) + b"\r\n" + rng.choice(
            _BODIES)


@pytest.mark.parametrize("seed", range(4))
def test_an_answer_split_at_every_byte_is_read_as_the_whole(seed: int) -> None:
    """The parent cannot read or forge TLS, but it decides how the bytes arrive (and KMS may
    write more than one record): the whole-answer path must decide exactly as the piecewise
    reader does, for every split into two reads and a byte per read."""
    compared = 0
    for data in _answers(120, seed):
        whole = _outcome([data])
        splits = [[data[:i], data[i:]] for i in range(1, len(data))]
        splits.append([data[i : i + 1] for i in range(len(data))])
        for chunks in splits:
            assert _outcome(chunks) == whole, (data, chunks)
            compared += 1
    assert compared > 5000


# --- the parent splits and cuts the TLS stream itself ------------------------------------------


@contextmanager
def _relay(
    target: Callable[[int], tuple[str, int]], shape: Callable[[socket.socket, bytes], None],
) -> Iterator[int]:
    """The parent: the enclave's n-th connection goes to ``target(n)``; the far side's bytes go
    down through ``shape(client, chunk)`` (which may split, delay or cut them)."""
    listener = socket.create_server(("127.0.0.1", 0))
    count = [0]

    def pump_down(server: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := server.recv(65536):
                shape(client, chunk)
            client.shutdown(socket.SHUT_WR)

    def pump_up(client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                server.sendall(chunk)
            server.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            count[0] += 1
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = socket.create_connection(target(count[0]))
            threading.Thread(target=pump_down, args=(server, client), daemon=True).start()
            threading.Thread(target=pump_up, args=(client, server), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@contextmanager
def _kms(pki: Pki, answer: Callable[[ssl.SSLSocket, int], None]) -> Iterator[int]:
    """A TLS far side: ``answer(conn, n)`` for its n-th request (one connection at a time)."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = [0]

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError, ssl.SSLError):
                conn = server_context(pki).wrap_socket(raw, server_side=True)
                with conn:
                    buffer = b""
                    while chunk := conn.recv(65536):
                        buffer += chunk
                        while b"\r\n\r\n" in buffer:
                            head, _, buffer = buffer.partition(b"\r\n\r\n")
                            length = int(head.lower().split(b"content-length: ")[1]
                                         .split(b"\r")[0])
                            buffer = buffer[length:]
                            seen[0] += 1
                            answer(conn, seen[0])

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _connection(pki: Pki, port: int, timeout: float = 5.0) -> Connection:
    return Connection(Endpoint("https", "127.0.0.1", 443), parse_route(f"tcp://127.0.0.1:{port}"),
                      tls_context(pki.ca), timeout=timeout)


def _answer_record(chunk: bytes) -> tuple[bytes, bytes]:
    """``chunk`` as (what comes before the answer's TLS record, that record or b"")."""
    if len(chunk) >= _RECORD and chunk[-_RECORD:-_RECORD + 1] == b"\x17":
        return chunk[:-_RECORD], chunk[-_RECORD:]
    return chunk, b""


def _byte_by_byte(client: socket.socket, chunk: bytes) -> None:
    for i in range(len(chunk)):
        client.sendall(chunk[i : i + 1])


def test_the_parent_splitting_tls_into_single_bytes_changes_nothing(pki: Pki) -> None:
    """Every TCP segment one byte: TLS hands the client whole records, so the answer is the same
    and still taken whole from the first read (the parent cannot steer the path)."""
    with _kms(pki, lambda conn, n: conn.sendall(ANSWER)) as kms, \
            _relay(lambda n: ("127.0.0.1", kms), _byte_by_byte) as parent:
        connection = _connection(pki, parent)
        piecewise: list[int] = []
        original = connection._head

        def head(*args: Any, **kw: Any) -> Any:
            piecewise.append(1)
            return original(*args, **kw)

        connection._head = head  # type: ignore[method-assign]
        try:
            for _ in range(3):
                answer = connection.request("POST", "/", [("Host", "kms")], b"{}")
                assert (answer.status, answer.body) == (200, b"{}")
        finally:
            connection.close()
        assert piecewise == []


def test_an_answer_record_held_past_the_deadline_times_out(pki: Pki) -> None:
    """The parent delays the answer's TLS record (whole, one read) until after the deadline:
    refused as timed out at the deadline, not read when it comes."""

    def late(client: socket.socket, chunk: bytes) -> None:
        before, record = _answer_record(chunk)
        client.sendall(before)
        if record:
            time.sleep(1.0)
            client.sendall(record)

    with _kms(pki, lambda conn, n: conn.sendall(ANSWER)) as kms, \
            _relay(lambda n: ("127.0.0.1", kms), late) as parent:
        connection = _connection(pki, parent, timeout=0.6)
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            connection.request("POST", "/", [("Host", "kms")], b"{}")
        assert time.monotonic() - started < 0.95
        assert connection._sock is None


def test_the_answer_record_cut_mid_way_is_not_an_answer(pki: Pki) -> None:
    """The parent forwards half of the answer's record, then ends the stream: no answer, on a
    fresh connection an error (on a kept-alive one it is the stale case, sent once more)."""

    def cut(client: socket.socket, chunk: bytes) -> None:
        before, record = _answer_record(chunk)
        client.sendall(before + record[: len(record) // 2])
        if record:
            client.shutdown(socket.SHUT_WR)

    with _kms(pki, lambda conn, n: conn.sendall(ANSWER)) as kms, \
            _relay(lambda n: ("127.0.0.1", kms), cut) as parent:
        connection = _connection(pki, parent)
        with pytest.raises(TransportError, match="closed the connection"):
            connection.request("POST", "/", [("Host", "kms")], b"{}")
        assert connection._sock is None


# --- findings -----------------------------------------------------------------------------------


def test_a_retry_refused_for_its_certificate_does_not_say_nothing_was_sent(
    pki: Pki, rogue: Pki
) -> None:
    """The parent closes the kept-alive connection to KMS after the request went out on it,
    then sends the retry's connection to a server of its own. The refusal said "nothing was
    sent", though the request had gone to KMS (which may have carried it out): an operator
    reading it would believe KMS never saw the call."""
    requests = [0]

    def answer(conn: ssl.SSLSocket, n: int) -> None:
        requests[0] += 1
        if n == 1:
            conn.sendall(ANSWER)
        else:  # the request reached KMS; the parent cuts before the answer comes back
            conn.close()

    with _kms(pki, answer) as kms, _kms(rogue, lambda conn, n: conn.sendall(ANSWER)) as fake, \
            _relay(lambda n: ("127.0.0.1", kms if n == 1 else fake),
                   lambda client, chunk: client.sendall(chunk)) as parent:
        connection = _connection(pki, parent)
        try:
            assert connection.request("POST", "/", [("Host", "kms")], b"{}").body == b"{}"
            with pytest.raises(TransportError, match="not trusted") as caught:
                connection.request("POST", "/", [("Host", "kms")], b"{}")
        finally:
            connection.close()
    assert requests[0] == 2  # KMS did get the second request
    assert not str(caught.value).endswith("; nothing was sent")
    assert "had been sent on the kept-alive connection" in str(caught.value)



# --- Decrypt's JSON: written as bytes, or by the encoder for the optional arguments -------------


@pytest.fixture
def nsm(sim_state: Path) -> Iterator[NsmBackend]:
    backend = open_backend("simulator", state_dir=sim_state)
    yield backend
    backend.close()


_AWKWARD = ['a"b', "a\\b", "a/b", "caf\u00e9", "\u2028\u2029", "\U0001f511", "tab\there",
            "nul\x00", "\x7f", '"},"Recipient":{"x":"', "Recipient"]


@pytest.mark.parametrize("text", _AWKWARD)
def test_decrypts_optional_arguments_are_json_as_the_encoder_writes_it(
    nsm: NsmBackend, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """KeyId and EncryptionContext with quotes, backslashes, separators, non-ASCII and a
    would-be Recipient: the bytes are json.dumps's (ASCII, escaped), read back as the same
    values, with exactly one Recipient, the client's, last."""
    blob = b"\x01\x02blob"
    payload = _captured(nsm, monkeypatch, lambda c: c.decrypt(
        blob, key_id=text, encryption_context={text: text, "k": text}))
    expected = {"CiphertextBlob": base64.b64encode(blob).decode(), "KeyId": text,
                "EncryptionContext": {text: text, "k": text}}
    prefix = json.dumps(expected, separators=(",", ":")).encode()[:-1]
    assert payload.startswith(prefix + b',"Recipient":{')
    assert payload.isascii()
    pairs = json.loads(payload, object_pairs_hook=lambda p: p)
    assert [name for name, _ in pairs] == ["CiphertextBlob", "KeyId", "EncryptionContext",
                                           "Recipient"]
    decoded = json.loads(payload)
    assert decoded["Recipient"]["AttestationDocument"] == base64.b64encode(
        b"\x84the document\xff").decode()
    del decoded["Recipient"]
    assert decoded == expected


@pytest.mark.parametrize(("call", "words"), [
    (lambda c: c.call("GenerateRandom", {"NumberOfBytes": float("nan")}), "not JSON"),
    (lambda c: c.call("GenerateRandom", {"NumberOfBytes": float("inf")}), "not JSON"),
    (lambda c: c.call("Decrypt", {"CiphertextBlob": b"raw bytes"}), "not JSON"),
    (lambda c: c.decrypt(b"blob", encryption_context={"k": {1, 2}}), "not JSON"),  # type: ignore[dict-item]
    (lambda c: c.decrypt("text, not bytes"), "bytes"),  # type: ignore[arg-type]
])
def test_a_request_json_cannot_hold_is_a_usage_error_not_a_traceback(
    nsm: NsmBackend, monkeypatch: pytest.MonkeyPatch, call: Any, words: str
) -> None:
    """Only the project's exceptions escape: a TypeError from the encoder, or NaN written as
    ``NaN`` (not JSON; ``kms proxy`` passes on what an SDK's JSON parsed to, and json.loads
    reads ``NaN``), was sent or raised as it was."""
    from nitro_attest.errors import UsageError
    client = KmsClient(region="us-east-1", nsm=nsm, credentials=Credentials("AK", "SK"),
                       endpoint="http://127.0.0.1:9", insecure_http=True)
    monkeypatch.setattr(client, "_send", lambda *a: pytest.fail("sent"))
    with pytest.raises(UsageError, match=words):
        call(client)
