"""The common-head fast path of codec.http1's parsers gives exactly what the general path gives:
the same head, or the same refusal (status and reason), on random heads built to hit every rule
near the fast path's edges (methods, targets, versions, field names, values, framing fields,
CONNECT, sizes and line counts at their limits).

Threat model: request heads come from anyone through the parent; a head the fast path accepted
but the general path would refuse (or read otherwise) is a smuggling or bypass hole."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from nitro_attest.codec import http1
from nitro_attest.codec.http import HandshakeError

_NEVER = re.compile(rb"(?!)")

METHODS = [b"GET", b"POST", b"HEAD", b"OPTIONS", b"CONNECT", b"PUT", b"get", b"G-T", b"GE T",
           b"", b"A" * 21, b"PROPFIND", b"M\x00"]
TARGETS = [b"/", b"/a?b=c", b"*", b"http://x/", b"/\x7f", b"/a b", b"/\xc3\xa9", b"//x", b"",
           b"/.well-known/nitro-attestation?nonce=00"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"http/1.1", b"HTTP/2"]
NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"Transfer-Encoding", b"Connection",
         b"Expect", b"X-Forwarded-For", b"X_Forwarded_For", b"Accept", b"Bad Name", b"",
         b"N\xc3", b"Keep-Alive", b"TE", b"Upgrade"]
VALUES = [b"x", b"example.com", b"127.0.0.1:8443", b"[::1]:443", b"a,b", b" 12 ", b"12",
          b"0", b"-1", b"99999999999999999", b"chunked", b"gzip, chunked", b"close",
          b"keep-alive, Host", b"100-continue", b"\tv\t", b"v\x00", b"v\rx", b"\xff\x80",
          b"", b"host:70000", b"a" * 40]
STATUSES = [b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 304", b"HTTP/1.1 101 S",
            b"HTTP/1.1 100 Continue", b"HTTP/1.0 200 OK", b"HTTP/1.1 099 x", b"HTTP/1.1 2000",
            b"HTTP/1.1 200 \x00", b"HTTP/1.1 200 O\tK\xff", b"HTTP/1.1  200"]


def _fields(rng: random.Random) -> list[bytes]:
    lines = []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 5))):
        name, value = rng.choice(NAMES), rng.choice(VALUES)
        sep = rng.choice((b": ", b":", b": ", b" : ", b":  "))
        lines.append(name + sep + value)
    if rng.random() < 0.05:
        lines.append(b" folded")
    return lines


def _head(start: bytes, lines: list[bytes], rng: random.Random) -> bytes:
    end = rng.choice((b"\r\n\r\n",) * 8 + (b"\n\n", b"\r\n\r\nextra", b"\r\n"))
    eol = rng.choice((b"\r\n",) * 12 + (b"\n",))
    return eol.join([start, *lines]) + end if lines else start + end


def _outcome(parse: Callable[[], object]) -> object:
    try:
        return parse()
    except HandshakeError as exc:
        return ("refused", exc.status, exc.reason)


@contextmanager
def _general_only() -> Iterator[None]:
    saved = http1._COMMON_REQUEST, http1._COMMON_RESPONSE
    http1._COMMON_REQUEST = http1._COMMON_RESPONSE = _NEVER
    try:
        yield
    finally:
        http1._COMMON_REQUEST, http1._COMMON_RESPONSE = saved


def test_the_fast_path_is_taken_for_common_heads() -> None:
    """Not vacuous: the common heads do match the fast patterns."""
    assert http1._COMMON_REQUEST.match(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert http1._COMMON_RESPONSE.match(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")


@pytest.mark.parametrize("seed", range(4))
def test_request_heads_parse_as_the_general_path_does(seed: int) -> None:
    rng = random.Random(seed)
    heads = []
    for _ in range(5000):
        if rng.random() < 0.5:  # mostly well formed: one field or piece off at most
            start = b" ".join((rng.choice(METHODS[:4]), rng.choice(TARGETS[:2]),
                               rng.choice(VERSIONS[:2])))
            lines = [b"Host: " + rng.choice(VALUES[1:4]), *_fields(rng)[:1]]
            rng.shuffle(lines)
            heads.append(_head(start, lines, rng))
            continue
        start = b" ".join((rng.choice(METHODS), rng.choice(TARGETS), rng.choice(VERSIONS)))
        heads.append(_head(start, _fields(rng), rng))
    limits = [(rng.choice((16384, 16384, 40, 60)), rng.choice((100, 100, 0, 1, 2)))
              for _ in heads]
    fast = [_outcome(lambda h=h, lm=lm: http1.parse_request_head(h, limit=lm[0],
                                                                   max_lines=lm[1]))
            for h, lm in zip(heads, limits, strict=True)]
    with _general_only():
        general = [_outcome(lambda h=h, lm=lm: http1.parse_request_head(h, limit=lm[0],
                                                                          max_lines=lm[1]))
                   for h, lm in zip(heads, limits, strict=True)]
    for head, a, b in zip(heads, fast, general, strict=True):
        assert a == b, head
    assert sum(not isinstance(o, tuple) for o in fast) > 300  # many heads were accepted


@pytest.mark.parametrize("seed", range(4))
def test_response_heads_parse_as_the_general_path_does(seed: int) -> None:
    rng = random.Random(100 + seed)
    cases = []
    for _ in range(5000):
        head = _head(rng.choice(STATUSES), _fields(rng), rng)
        cases.append((head, rng.choice(("GET", "HEAD")), rng.choice((None, 5)),
                      rng.choice((65536, 50)), rng.choice((1000, 1))))

    def run() -> list[object]:
        return [_outcome(lambda c=c: http1.parse_response_head(
            c[0], request_method=c[1], max_body=c[2], limit=c[3], max_lines=c[4]))
            for c in cases]

    fast = run()
    with _general_only():
        general = run()
    for case, a, b in zip(cases, fast, general, strict=True):
        assert a == b, case
    assert sum(not isinstance(o, tuple) for o in fast) > 300


def test_the_front_owned_memo_is_bounded_and_answers_the_same_past_its_bound() -> None:
    """Header names are the client's choice: the memo of which the front owns stops growing,
    and names past its bound are still judged (X_Forwarded_For never reaches the app)."""
    for i in range(http1._OWNED_MAX + 100):
        assert not http1._front_owned(b"x-filler-%d" % i)
    assert len(http1._OWNED) <= http1._OWNED_MAX
    assert http1._front_owned(b"x_forwarded_for") and http1._front_owned(b"x-forwarded-zzz")
    request = http1.parse_request_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX-Keep: 1\r\n\r\n",
        limit=16384, max_lines=100,
    )
    forwarded = http1.forward_request_head(request, client="10.0.0.1", host_fallback=b"e")
    assert b"6.6.6.6" not in forwarded and b"x-keep: 1" in forwarded


# The forwarding functions as they were before their fast paths (the _connection_listed
# shortcut, the _front_owned memo): the reference the current ones must match byte for byte.
def _ref_tokens(headers: tuple[tuple[bytes, bytes], ...], name: bytes) -> set[bytes]:
    out: set[bytes] = set()
    for value in (v for k, v in headers if k == name):
        out.update(t.strip(b" \t").lower() for t in value.split(b","))
    out.discard(b"")
    return out


def _ref_owned(name: bytes) -> bool:
    dashed = name.replace(b"_", b"-")
    return dashed in http1._FRONT_OWNED or dashed.startswith(b"x-forwarded-")


def _ref_forward_request(request: http1.RequestHead, client: str, keep_alive: bool) -> bytes:
    host = request.get(b"host") or b"fallback"
    listed = _ref_tokens(request.headers, b"connection")
    out = [f"{request.method} {request.target} HTTP/1.1".encode("ascii"), b"host: " + host]
    out.extend(n + b": " + v for n, v in request.headers
               if n not in listed and not _ref_owned(n))
    forwarded, forwarded_for = http1._forwarded_for(client)
    out += [forwarded + http1._quote(host), forwarded_for, b"x-forwarded-proto: https",
            b"x-forwarded-host: " + host]
    if request.framing == "chunked":
        out.append(b"transfer-encoding: chunked")
    elif request.framing == "length":
        out.append(b"content-length: %d" % request.length)
    if not keep_alive:
        out.append(b"connection: close")
    out.append(b"\r\n")
    return b"\r\n".join(out)


def _ref_forward_response(response: http1.ResponseHead, framing: str, keep: bool) -> bytes:
    listed = _ref_tokens(response.headers, b"connection")
    out = [http1._status_line(response.status)]
    out.extend(n + b": " + v for n, v in response.headers
               if n not in http1._NOT_RELAYED and n not in listed)
    if framing == "chunked":
        out.append(b"transfer-encoding: chunked")
    elif framing == "length":
        out.append(b"content-length: %d" % response.length)
    elif response.status >= 200 and response.status not in (204, 304) and framing == "none":
        length = response.get(b"content-length")
        if length is not None:
            out.append(b"content-length: " + length)
    if not keep:
        out.append(b"connection: close")
    out.append(b"\r\n")
    return b"\r\n".join(out)


@pytest.mark.parametrize("seed", range(3))
def test_forwarded_heads_are_the_reference_bytes(seed: int) -> None:
    rng = random.Random(200 + seed)
    requests = responses = 0
    for _ in range(4000):
        start = b" ".join((rng.choice(METHODS[:4]), rng.choice(TARGETS[:2]), b"HTTP/1.1"))
        lines = [b"Host: " + rng.choice(VALUES[1:4]), *_fields(rng)]
        rng.shuffle(lines)
        try:
            request = http1.parse_request_head(_head(start, lines, rng), limit=16384,
                                               max_lines=100)
        except HandshakeError:
            pass
        else:
            requests += 1
            keep = rng.random() < 0.8
            client = rng.choice(("10.0.0.1", "::1"))
            assert http1.forward_request_head(
                request, client=client, host_fallback=b"fallback", keep_alive=keep
            ) == _ref_forward_request(request, client, keep)
        try:
            response = http1.parse_response_head(
                _head(rng.choice(STATUSES), _fields(rng), rng),
                request_method=rng.choice(("GET", "HEAD")), limit=65536, max_lines=1000)
        except HandshakeError:
            continue
        responses += 1
        framing = rng.choice(("length", "chunked", "none", "close"))
        keep = rng.random() < 0.8
        assert http1.forward_response_head(response, framing=framing, keep_alive=keep) == (
            _ref_forward_response(response, framing, keep))
    assert requests > 500 and responses > 500
