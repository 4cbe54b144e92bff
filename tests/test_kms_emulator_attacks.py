"""Red-team tests of the local KMS: what a hostile client on the port, or the parent relaying every
byte, does to the HTTP front (kms_emulator/front.py), the JSON reader (app.py) and the state
folder (store.py). Each test was written to fail against the code before its fix."""

from __future__ import annotations

import logging
import os
import resource
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from nitro_attest.codec.http import HandshakeError
from nitro_attest.codec.http1 import ChunkedDecoder
from nitro_attest.kms_emulator.app import parse_json
from nitro_attest.kms_emulator.errors import KmsApiError
from nitro_attest.kms_emulator.store import KeyRecord, StateError, StateStore
from nitro_attest.server_limits import Limits

from . import kmsemukit as kit
from .test_kms_emulator_front import closed, connect, read_answer, request, serving

CHUNKED = request(extra=b"Transfer-Encoding: chunked\r\n", length=False).removesuffix(b"{}")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"2\n{}\r\n0\r\n\r\n", b"400"),  # a bare LF ends the size line
        (b"fffffffffffffff\r\n", b"413"),  # over the body cap
        (b"2\r\n{}\r\n0\r\nno colon\r\n\r\n", b"400"),  # a malformed trailer
    ],
)
def test_refused_chunked_body_answered_then_lingers_without_an_error(
    body: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """The chunked decoder refuses while reading a view of the connection's buffer; the refusal
    must still drop input for a while (front._linger) rather than end in an exception that
    resets the connection (a BufferError: the buffer could not be cleared while viewed)."""
    caplog.set_level(logging.ERROR)
    with serving() as (_, app, port), connect(port) as conn:
        conn.sendall(CHUNKED + body)
        answer, headers, _ = read_answer(conn, bytearray())
        assert answer.startswith(b"HTTP/1.1 " + status) and headers[b"connection"] == b"close"
        time.sleep(0.2)
        for _ in range(3):  # still read and dropped: no reset
            conn.sendall(b"x" * 1000)
            time.sleep(0.05)
        assert closed(conn)
        assert not app.requests
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.parametrize(
    "body",
    [
        b'{"EncryptionContext": {"\\ud800": "x"}}',  # a lone high surrogate, as a key
        b'{"Description": "a\\uDFFFb"}',  # a lone low one, upper-case hex
        b'{"Tags": [{"TagKey": "k", "TagValue": "\\ude00\\ud83d"}]}',  # a pair in reverse order
    ],
)
def test_lone_surrogate_is_a_serialization_exception(body: bytes) -> None:
    """JSON's \\u escapes can spell half of a UTF-16 pair, which Python keeps as a str no UTF-8
    encoder takes: Encrypt with such an EncryptionContext key answered 500 with a traceback in
    the log (blob.seal encodes the context). Refused when read, as malformed input."""
    with pytest.raises(KmsApiError) as info:
        parse_json(body)
    assert info.value.type_name == "SerializationException"
    assert "surrogate" in info.value.message


def test_surrogate_pairs_and_escaped_backslashes_still_read() -> None:
    assert parse_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    assert parse_json(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}  # a backslash, then text


@pytest.mark.parametrize(
    "line",
    [
        b"2;a\rb",  # a bare CR: a line end to some parsers, part of the extension to this one
        b"2;a\x00b",
        b"2;\x01\x7f",
        b"2;",  # an extension without a name
        b"2;a=",
        b'2;a="unterminated',
        b"2;a=b c",
        b"2;a b",
    ],
)
def test_chunk_extension_outside_the_grammar_refused(line: bytes) -> None:
    """RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ]).
    Extensions are ignored, but one holding CR, NUL or other control bytes is how chunk-size
    lines are read differently by two parsers: refused, as the head's fields are."""
    with pytest.raises(HandshakeError) as info:
        ChunkedDecoder(max_body=1024).feed(line + b"\r\n{}\r\n0\r\n\r\n")
    assert info.value.status == 400


@pytest.mark.parametrize(
    "line",
    [b"2", b"2 \t", b"2;a", b"2 ; a = b", b'2;a="q \\" s";b=c', b"2;a=\"\x80\"", b"002;x-y=1"],
)
def test_chunk_extensions_in_the_grammar_read(line: bytes) -> None:
    decoder = ChunkedDecoder(max_body=1024)
    pieces, rest = decoder.feed(line + b"\r\n{}\r\n0\r\n\r\nNEXT")
    assert (b"".join(pieces), rest, decoder.done) == (b"{}", b"NEXT", True)


def test_front_refuses_a_bare_cr_in_a_chunk_extension() -> None:
    with serving() as (_, app, port), connect(port) as conn:
        conn.sendall(CHUNKED + b"2;a\rb\r\n{}\r\n0\r\n\r\n")
        assert read_answer(conn, bytearray())[0].startswith(b"HTTP/1.1 400")
        assert closed(conn) and not app.requests


def _state_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    return folder


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink", "deep", "not utf-8"])
def test_state_file_that_is_not_a_state_file_refused(tmp_path: Path, kind: str) -> None:
    """Whoever can write the folder (a previous run, a restore, another tool): state.json that is
    a directory (an OSError escaped), a FIFO (the emulator hung at start), a symbolic link, JSON
    nested past Python's recursion limit (a RecursionError escaped). Each a StateError."""
    folder = _state_folder(tmp_path)
    file = folder / "state.json"
    if kind == "directory":
        file.mkdir()
    elif kind == "fifo":
        os.mkfifo(file, 0o600)
    elif kind == "symlink":
        (tmp_path / "elsewhere.json").write_text('{"format": 1, "keys": [], "aliases": []}')
        file.symlink_to(tmp_path / "elsewhere.json")
    elif kind == "deep":
        file.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    else:
        file.write_bytes(b'{"format": 1, "keys": ["\xff"], "aliases": []}')
    started = time.monotonic()
    with pytest.raises(StateError) as info:
        StateStore(folder)
    assert time.monotonic() - started < 5
    assert str(file) in str(info.value) and "\n" not in str(info.value)
    StateStore(folder.parent / "fresh").close()  # the lock was released: nothing held open


def test_lock_file_that_is_a_symlink_refused(tmp_path: Path) -> None:
    folder = _state_folder(tmp_path)
    (folder / ".lock").symlink_to(tmp_path / "lock-elsewhere")
    with pytest.raises(StateError, match="lock file"):
        StateStore(folder)
    assert not (tmp_path / "lock-elsewhere").exists()


def test_store_whose_folder_was_swapped_does_not_write_into_the_new_one(tmp_path: Path) -> None:
    """The folder moved aside and a new one made at its path (a restore, a test harness): a second
    emulator locks the new folder; the first one's saves went by path into that same folder, the
    two overwriting each other's keys, the lock notwithstanding. Its saves now fail (the
    operation answers 500, undone) until it runs on the folder it locked."""
    folder = _state_folder(tmp_path)
    first = StateStore(folder)
    try:
        first.save()
        folder.rename(tmp_path / "moved")
        second = StateStore(folder)
        try:
            second.state.keys["k"] = KeyRecord(
                "k", "111122223333", "us-east-1", 0.0, "", "SYMMETRIC_DEFAULT",
                "ENCRYPT_DECRYPT", "{}", b"\0" * 32,
            )
            second.save()
            kept = (folder / "state.json").read_bytes()
            with pytest.raises(OSError, match="moved or replaced"):
                first.save()
            assert (folder / "state.json").read_bytes() == kept
        finally:
            second.close()
    finally:
        first.close()


def test_connections_beyond_the_open_file_limit_are_shed_not_locking_others_out(
    tmp_path: Path,
) -> None:
    """With an open-file limit below what --max-connections needs (1024 by default, the usual
    soft limit too), idle connections used up the descriptors before the table was full: accept
    failed and every newcomer was reset, shedding never ran. The cap now fits the limit."""
    creds = kit.write_credentials(tmp_path / "creds.json")
    port = kit.free_port()

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))

    proc = subprocess.Popen(
        [*kit.ENTRY, "kms", "emulator", "--listen", f"127.0.0.1:{port}",
         "--state", str(tmp_path / "state"), "--credentials", str(creds),
         "--idle-timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=low_limit,
    )
    hogs: list[socket.socket] = []
    try:
        kit.wait_listening(proc, port)
        for _ in range(420):
            hogs.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        with connect(port) as conn:
            conn.sendall(request())
            status, _, body = read_answer(conn, bytearray())
            assert status == b"HTTP/1.1 400 Bad Request"  # unsigned: KMS's own refusal
            assert b"MissingAuthenticationTokenException" in body
    finally:
        for hog in hogs:
            hog.close()
        out = kit.stop(proc)
    assert "--max-connections lowered to" in out and "Traceback" not in out


def test_tls_handshakes_that_never_finish_are_under_max_connections(tmp_path: Path) -> None:
    """Connections that open TCP and never send a ClientHello held a descriptor each for the
    whole handshake timeout, outside the table (asyncio hands a TLS connection to the protocol
    only once the handshake is done): any number of them, never shed, and past the open-file
    limit every newcomer was reset. They now count from the accept, and are shed first."""
    cert, key, ca = kit.make_tls(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(ca))
    limits = Limits(max_connections=4, header_timeout=30.0, idle_timeout=30.0)
    with serving(limits, tls=server_tls) as (front, app, port):
        squatters = [connect(port) for _ in range(30)]
        try:
            time.sleep(0.3)
            assert front.active_connections <= 4
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client_tls.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.sendall(request())
                assert read_answer(conn, bytearray())[0] == b"HTTP/1.1 200 OK"
            assert sum(closed(s, 0.5) for s in squatters) >= 26
            assert len(app.requests) == 1
        finally:
            for s in squatters:
                s.close()
