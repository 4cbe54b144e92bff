"""codec.http1 on the client's side: answer heads from an untrusted server (through the parent)
read strictly, every smuggling shape and oversize part refused, bodies capped; request heads
built from text parts that cannot break the framing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitro_attest.codec.http import HandshakeError, find_head_end
from nitro_attest.codec.http1 import (
    MAX_CHUNK_LINE,
    ChunkedDecoder,
    ResponseHead,
    checked_request_head,
    parse_response_head,
)

MAX_BODY = 1000


def _head(text: bytes, method: str = "POST") -> ResponseHead:
    return parse_response_head(
        text, request_method=method, limit=16384, max_lines=100, max_body=MAX_BODY
    )


def test_checked_request_head() -> None:
    head = checked_request_head(
        "POST", "/", [("Host", "kms"), ("X-Amz-Target", "T.Decrypt")], length=2
    )
    assert head == (b"POST / HTTP/1.1\r\nHost: kms\r\nX-Amz-Target: T.Decrypt\r\n"
                    b"Content-Length: 2\r\n\r\n")
    assert checked_request_head("GET", "/a?b", [("Host", "h")], length=None) == (
        b"GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n")


@pytest.mark.parametrize(("method", "target", "headers"), [
    ("POST", "/", [("X", "a\r\nEvil: 1")]),
    ("POST", "/", [("X", "a\nEvil: 1")]),
    ("POST", "/", [("X", "a\0")]),
    ("POST", "/", [("X Y", "a")]),
    ("POST", "/", [("X:Y", "a")]),
    ("POST", "/", [("", "a")]),
    ("POST", "/", [("X", "caf\u00e9")]),
    ("PO ST", "/", []),
    ("", "/", []),
    ("POST", "/ HTTP/1.0\r\n", []),
    ("POST", "/a b", []),
    ("POST", "no-slash", []),
    ("POST", "", []),
])
def test_request_parts_that_break_framing_are_refused(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(HandshakeError) as caught:
        checked_request_head(method, target, headers, length=0)
    assert caught.value.status == 400
    assert "Evil" not in caught.value.reason  # no value is quoted


def test_answer_heads() -> None:
    head = _head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert (head.status, head.framing, head.length, head.keep_alive) == (200, "length", 5, True)
    assert [v for k, v in head.headers if k == b"x-a"] == [b"1", b"2"]
    assert _head(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n").length == MAX_BODY
    assert _head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing == "chunked"
    closed = _head(b"HTTP/1.1 200 OK\r\n\r\n")
    assert closed.framing == "close" and not closed.keep_alive
    assert not _head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                     ).keep_alive
    assert not _head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive
    assert not _head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
                     ).keep_alive  # HTTP/1.0: one exchange per connection
    assert (_head(b"HTTP/1.1 204 No Content\r\n\r\n").framing,
            _head(b"HTTP/1.1 100 Continue\r\n\r\n").framing) == ("none", "none")
    # A HEAD answer's Content-Length describes the GET's body: none follows, no cap applies.
    assert _head(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", "HEAD").framing == "none"


@pytest.mark.parametrize(("text", "status"), [
    # the shapes of response smuggling and ambiguous length
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12345678901234567\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", 501),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
     501),
    (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    # over the body cap
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n", 502),
    # malformed status lines
    (b"HTTP/2 200\r\n\r\n", 502),
    (b"HTTP/1.2 200 OK\r\n\r\n", 502),
    (b"HTTP/1.1 20 OK\r\n\r\n", 502),
    (b"HTTP/1.1 2000 OK\r\n\r\n", 502),
    (b"HTTP/1.1 200OK\r\n\r\n", 502),
    (b"HTTP/1.1  200 OK\r\n\r\n", 502),
    (b"http/1.1 200 OK\r\n\r\n", 502),
    (b"HTTP/1.1 200 O\x01K\r\n\r\n", 502),
    # bare CR, LF or NUL; folded, control-character and malformed lines; too many lines
    (b"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nX: a\rY: b\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\nX: a\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\r\nX: a\r\n\r\n", 400),
    (b"HTTP/1.1 200 \0OK\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n\tcontinued\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n", 400),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", 400),  # incomplete
])
def test_bad_answer_heads(text: bytes, status: int) -> None:
    with pytest.raises(HandshakeError) as caught:
        _head(text)
    assert caught.value.status == status


def test_oversize_heads_are_refused() -> None:
    assert find_head_end(b"HTTP/1.1 200 OK\r\n\r\n", 100) == 19
    assert find_head_end(b"x" * 99, 100) == -1
    with pytest.raises(HandshakeError) as caught:
        find_head_end(b"x" * 100, 100)
    assert caught.value.status == 431
    big = b"HTTP/1.1 200 OK\r\nX: " + b"y" * 16384 + b"\r\n\r\n"
    with pytest.raises(HandshakeError):
        _head(big)


def _decode(wire: bytes, max_body: int | None = MAX_BODY) -> tuple[bytes, bytes, bool]:
    decoder = ChunkedDecoder(max_body=max_body)
    pieces, rest = decoder.feed(wire)
    return b"".join(pieces), rest, decoder.done


def test_chunked_bodies_within_the_cap() -> None:
    assert _decode(b"1a;ext=1\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n") == (b"x" * 26, b"", True)
    exact = b"%x\r\n" % MAX_BODY + b"y" * MAX_BODY + b"\r\n0\r\nTrailer: 1\r\n\r\nNEXT"
    assert _decode(exact) == (b"y" * MAX_BODY, b"NEXT", True)
    assert _decode(b"123456789\r\n", max_body=None) == (b"", b"", False)  # no cap: waits


@pytest.mark.parametrize("wire", [
    b"\r\n",  # empty size
    b"g\r\n",
    b"-1\r\n",
    b" 1\r\n",
    b"1\nx\r\n",  # bare LF ends the size line
    b"123456789\r\n",  # 4.9 GB declared: over the cap before any of it arrives
    b"%x\r\n" % (MAX_BODY + 1),
    b"200\r\n" + b"z" * 512 + b"\r\n200\r\n",  # the sizes add up past the cap
    b"5\r\nabcdeXX\r\n",  # data longer than its size (no CRLF after it)
    b"1" * (MAX_CHUNK_LINE + 3),  # chunk line too long, no end in sight
    b"1;" + b"e" * MAX_CHUNK_LINE + b"\r\n",  # too long with its end
    b"0\r\nbad trailer\r\n\r\n",
    b"0\r\nX: \x01\r\n\r\n",
    b"0\r\n" + b"X: y\r\n" * 2000,  # a trailer section without end: capped
])
def test_chunked_refusals(wire: bytes) -> None:
    with pytest.raises(HandshakeError):
        _decode(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_head_is_parsed_or_refused(raw: bytes) -> None:
    try:
        head = _head(raw + b"\r\n\r\n")
    except HandshakeError:
        return
    assert raw.startswith(b"HTTP/1.") and 100 <= head.status <= 999
    assert head.length <= MAX_BODY


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_chunked_body_is_decoded_or_refused(raw: bytes) -> None:
    try:
        body, _, _ = _decode(raw)
    except HandshakeError:
        return
    assert len(body) <= MAX_BODY
