"""The CONNECT request parser: what the enclave side may send, and what it gets refused with."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitro_attest.codec.http import (
    MAX_HEAD_BYTES,
    HandshakeError,
    find_head_end,
    parse_connect,
    response,
)
from nitro_attest.proxy.hosts import Host


def head(line: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([line, *headers]) + b"\r\n\r\n"


def test_valid_requests() -> None:
    r = parse_connect(head(b"CONNECT kms.us-east-1.amazonaws.com:443 HTTP/1.1", b"Host: x"))
    assert (r.host, r.port) == (Host(name="kms.us-east-1.amazonaws.com"), 443)
    r = parse_connect(head(b"CONNECT 10.0.0.1:8443 HTTP/1.0"))
    assert r.host.ip == ipaddress.ip_address("10.0.0.1") and r.port == 8443
    r = parse_connect(head(b"CONNECT [2600:1f18::1]:443 HTTP/1.1", b"Proxy-Connection: keep-alive"))
    assert r.host.ip == ipaddress.ip_address("2600:1f18::1")
    assert str(r) == "[2600:1f18::1]:443"
    r = parse_connect(head(b"CONNECT a.b:1 HTTP/1.1", b"Content-Length: 0", b"X-Empty:"))
    assert r.port == 1


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (head(b"GET http://a.com/ HTTP/1.1"), 405),
        (head(b"connect a.com:443 HTTP/1.1"), 405),
        (head(b"CONNECT a.com:443"), 400),
        (head(b"CONNECT  a.com:443 HTTP/1.1"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1 "), 400),
        (head(b"CONNECT\ta.com:443 HTTP/1.1"), 400),
        (head(b"CONNECT a.com:443 HTTP/2.0"), 400),
        (head(b"CONNECT a.com:443 http/1.1"), 400),
        (head(b"CONNECT a.com HTTP/1.1"), 400),
        (head(b"CONNECT a.com: HTTP/1.1"), 400),
        (head(b"CONNECT a.com:0 HTTP/1.1"), 400),
        (head(b"CONNECT a.com:65536 HTTP/1.1"), 400),
        (head(b"CONNECT a.com:+443 HTTP/1.1"), 400),
        (head(b"CONNECT a.com:0443 HTTP/1.1"), 200),  # leading zero in a port is still 443
        (head(b"CONNECT a.com:443443 HTTP/1.1"), 400),
        (head(b"CONNECT :443 HTTP/1.1"), 400),
        (head(b"CONNECT http://a.com:443 HTTP/1.1"), 400),
        (head(b"CONNECT user@a.com:443 HTTP/1.1"), 400),
        (head(b"CONNECT a.com:443/x HTTP/1.1"), 400),
        (head(b"CONNECT ::1:443 HTTP/1.1"), 400),
        (head(b"CONNECT [::1:443 HTTP/1.1"), 400),
        (head(b"CONNECT [10.0.0.1]:443 HTTP/1.1"), 400),
        (head(b"CONNECT [fe80::1%25eth0]:443 HTTP/1.1"), 400),
        (head(b"CONNECT 2130706433:443 HTTP/1.1"), 400),
        (head(b"CONNECT 0x7f.1:443 HTTP/1.1"), 400),
        (head(b"CONNECT a_b.com:443 HTTP/1.1"), 400),
        (head(b"CONNECT \xc3\xa9.com:443 HTTP/1.1"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", b"NoColon"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", b"Name : v"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", b"A: b", b" folded"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", b"A: b\x00c"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", b"A: b\x7f"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", b"A: b\nB: c"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", b"A: b\rB: c"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", b"Content-Length: 5"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", b"Transfer-Encoding: chunked"), 400),
        (head(b"CONNECT a.com:443 HTTP/1.1", *[b"A: b"] * 65), 431),
        (b"CONNECT a.com:443 HTTP/1.1\n\n", 400),
        (b"\r\n\r\n", 400),
    ],
)
def test_refusals(raw: bytes, status: int) -> None:
    if status == 200:
        assert parse_connect(raw).port == 443
        return
    with pytest.raises(HandshakeError) as e:
        parse_connect(raw)
    assert e.value.status == status
    assert "a.com" not in e.value.reason  # reasons never quote the request


def test_head_end_and_cap() -> None:
    assert find_head_end(b"CONNECT a:1 HTTP/1.1\r\n") == -1
    raw = head(b"CONNECT a.com:1 HTTP/1.1") + b"early tunnel bytes"
    assert find_head_end(raw) == len(raw) - len(b"early tunnel bytes")
    with pytest.raises(HandshakeError) as e:
        find_head_end(b"A" * MAX_HEAD_BYTES)
    assert e.value.status == 431
    late = b"X" * (MAX_HEAD_BYTES - 2) + b"\r\n\r\n"  # the end lies past the cap
    with pytest.raises(HandshakeError):
        find_head_end(late)


def test_responses() -> None:
    assert response(200) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert response(403).startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert response(403).endswith(b"Connection: close\r\n\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_only_handshake_errors(data: bytes) -> None:
    raw = data if data.endswith(b"\r\n\r\n") else data + b"\r\n\r\n"
    try:
        parse_connect(raw)
    except HandshakeError as exc:
        assert exc.status in (400, 405, 431)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.[]:@%x", max_size=40))
def test_fuzz_authority(target: str) -> None:
    raw = head(b"CONNECT " + target.encode() + b" HTTP/1.1")
    try:
        request = parse_connect(raw)
    except HandshakeError as exc:
        assert exc.status == 400
        return
    assert 1 <= request.port <= 65535
    assert (request.host.ip is None) != (request.host.name == "")
