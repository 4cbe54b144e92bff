"""codec.http1: request heads from the network are parsed strictly (no smuggling ambiguity),
the forwarded head carries only the front's own Forwarded fields, chunked bodies decode in any
split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nitro_attest.codec.http import HandshakeError
from nitro_attest.codec.http1 import (
    ChunkedDecoder,
    chunk,
    forward_request_head,
    forward_response_head,
    parse_request_head,
    parse_response_head,
)
from nitro_attest.https.front import is_attestation_path

LIMIT = dict(limit=16384, max_lines=100)


def _req(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode() + b"\r\n"


def test_simple_get() -> None:
    head = parse_request_head(_req("GET /a?b=1 HTTP/1.1\nHost: x\n"), **LIMIT)
    assert (head.method, head.path, head.query, head.framing) == ("GET", "/a", "b=1", "none")
    assert head.keep_alive


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("POST / HTTP/1.1\nHost: x\nContent-Length: 3\nTransfer-Encoding: chunked\n", 400),
        ("POST / HTTP/1.1\nHost: x\nContent-Length: 3\nContent-Length: 3\n", 400),
        ("POST / HTTP/1.1\nHost: x\nContent-Length: 3, 3\n", 400),
        ("POST / HTTP/1.1\nHost: x\nContent-Length: -1\n", 400),
        ("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: gzip, chunked\n", 501),
        ("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n", 501),
        ("POST / HTTP/1.0\nTransfer-Encoding: chunked\n", 400),
        ("GET / HTTP/1.1\n", 400),  # no Host
        ("GET / HTTP/1.1\nHost: a\nHost: b\n", 400),
        ("GET http://evil/ HTTP/1.1\nHost: x\n", 400),  # absolute-form
        ("CONNECT a:1 HTTP/1.1\nHost: x\n", 405),
        ("GET / HTTP/2.0\nHost: x\n", 400),
        ("GET / HTTP/1.1\nHost: x\n Folded: y\n", 400),
        ("GET / HTTP/1.1\nHost : x\n", 400),
        ("GET / HTTP/1.1\nHost: x\nExpect: something\n", 400),
    ],
)
def test_ambiguous_or_malformed_heads_refused(text: str, status: int) -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_request_head(_req(text), **LIMIT)
    assert caught.value.status == status


def test_bare_lf_and_too_many_lines_refused() -> None:
    with pytest.raises(HandshakeError):
        parse_request_head(b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", **LIMIT)
    many = "GET / HTTP/1.1\nHost: x\n" + "".join(f"X{i}: y\n" for i in range(101))
    with pytest.raises(HandshakeError) as caught:
        parse_request_head(_req(many), **LIMIT)
    assert caught.value.status == 431


def test_forwarded_fields_are_the_fronts_own() -> None:
    """Threat model: a client (or the parent) cannot make the app believe another client address
    or an http:// origin; hop-by-hop fields stop at the front."""
    head = parse_request_head(
        _req(
            "POST /p HTTP/1.1\nHost: api\nX-Forwarded-For: 10.9.9.9\nForwarded: for=1.2.3.4\n"
            "X-Forwarded-Proto: http\nConnection: close, X-Secret\nX-Secret: s\n"
            "Keep-Alive: 5\nContent-Length: 4\nUpgrade: websocket\n"
        ),
        **LIMIT,
    )
    out = forward_request_head(head, client="203.0.113.7", host_fallback=b"e").lower()
    assert b"10.9.9.9" not in out and b"1.2.3.4" not in out
    assert b"x-forwarded-for: 203.0.113.7\r\n" in out
    assert b"x-forwarded-proto: https\r\n" in out
    assert b'forwarded: for=203.0.113.7;proto=https;host=api\r\n' in out
    for gone in (b"x-secret", b"keep-alive", b"upgrade", b"proto: http\r"):
        assert gone not in out
    assert out.count(b"content-length: 4\r\n") == 1
    assert out.endswith(b"\r\n\r\n")


def test_response_framing() -> None:
    def parse(text: str, method: str = "GET") -> tuple[str, int, bool]:
        r = parse_response_head(_req(text), request_method=method, **LIMIT)
        return r.framing, r.length, r.keep_alive

    assert parse("HTTP/1.1 200 OK\nContent-Length: 5\n") == ("length", 5, True)
    assert parse("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n") == ("chunked", 0, True)
    assert parse("HTTP/1.1 200 OK\n") == ("close", 0, False)
    assert parse("HTTP/1.1 204 No Content\n") == ("none", 0, True)
    assert parse("HTTP/1.1 200 OK\nContent-Length: 5\n", "HEAD") == ("none", 0, True)
    assert parse("HTTP/1.0 200 OK\nContent-Length: 5\n") == ("length", 5, False)
    with pytest.raises(HandshakeError):
        parse("HTTP/1.1 200 OK\nContent-Length: 5\nContent-Length: 6\n")
    r = parse_response_head(
        _req("HTTP/1.1 200 OK\nContent-Length: 5\nConnection: x-a\nX-A: 1\n"),
        request_method="GET", **LIMIT,
    )
    out = forward_response_head(r, framing="length", keep_alive=False)
    assert out.count(b"content-length: 5") == 1
    assert b"x-a" not in out.lower().replace(b"connection: close", b"")
    assert out.endswith(b"connection: close\r\n\r\n")


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20),
)
def test_chunked_decodes_in_any_split(pieces: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(chunk(p) for p in pieces) + b"0;ext=1\r\nTrailer-X: y\r\n\r\nNEXT"
    decoder = ChunkedDecoder()
    got: list[bytes] = []
    rest = b""
    pos = 0
    i = 0
    while pos < len(wire) and not decoder.done:
        step = cuts[i % len(cuts)]
        out, rest = decoder.feed(wire[pos : pos + step])
        got.extend(out)
        pos += step
        i += 1
    assert decoder.done
    assert b"".join(got) == b"".join(pieces)
    assert rest + wire[pos:] == b"NEXT"


@pytest.mark.parametrize(
    "wire",
    [b"zz\r\n", b"5\r\nabcdefg\r\n", b"1" * 2000, b"0\r\nbad trailer\r\n\r\n", b"-1\r\n"],
)
def test_chunked_refuses_malformed(wire: bytes) -> None:
    with pytest.raises(HandshakeError):
        ChunkedDecoder().feed(wire)


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/nitro-attestation",
        "/.well-known/nitro-attestation/",
        "//.well-known//nitro-attestation",
        "/.well-known/nitro%2Dattestation",
        "/%2Ewell-known/nitro-attestation",
    ],
)
def test_every_spelling_of_the_attestation_path_stays_at_the_front(path: str) -> None:
    assert is_attestation_path(path)


def test_other_paths_go_to_the_app() -> None:
    assert not is_attestation_path("/.well-known/nitro-attestation-x")
    assert not is_attestation_path("/")
