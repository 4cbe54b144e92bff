"""The HTTP CONNECT request the enclave sends, parsed strictly, and the proxy's short answers.

The enclave side is untrusted input: the head is capped (``MAX_HEAD_BYTES``), must arrive within
a deadline (enforced by the server), and must be exactly ``CONNECT host:port HTTP/1.x`` followed
by well-formed header lines. Headers are checked for syntax and otherwise ignored; a CONNECT that
claims a body (Content-Length other than 0, Transfer-Encoding) is refused, so no byte can be read
as both request and tunnel data. Error messages never quote the request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nitro_attest.codec.hosts import Host, HostSyntaxError, parse_host
from nitro_attest.errors import TransportError

MAX_HEAD_BYTES = 8192
MAX_HEADER_LINES = 64
HEAD_END = b"\r\n\r\n"

_NAME = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110 token
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"  # no CR, LF, NUL or other control character
_TOKEN = re.compile(_NAME + rb"\Z")
_FIELD_VALUE = re.compile(_VALUE + rb"\Z")
# A whole header block, each line NAME:VALUE CRLF: one C-level pass instead of one per line.
FIELD_LINES = rb"(?:" + _NAME + rb":" + _VALUE + rb"\r\n)*"
_FIELD_BLOCK = re.compile(FIELD_LINES + rb"\Z")
_FIELD_LINE = re.compile(rb"(" + _NAME + rb"):(" + _VALUE + rb")\r\n")
_PORT = re.compile(r"[0-9]{1,5}\Z")

REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class HandshakeError(TransportError):
    """A request head (CONNECT here, any request in ``codec.http1``) is refused with ``status``;
    ``reason`` is safe to log: it never quotes the request."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """The target a CONNECT request asks for: a validated host and a port."""

    host: Host
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def find_head_end(buffer: bytes | bytearray, limit: int = MAX_HEAD_BYTES) -> int:
    """Length of the request head in ``buffer`` (through the blank line), or -1 if incomplete.

    Raises 431 once ``limit`` bytes have arrived without the end of the head.
    """
    end = buffer.find(HEAD_END, 0, limit)
    if end >= 0:
        return end + len(HEAD_END)
    if len(buffer) >= limit:
        raise HandshakeError(431, f"request head longer than {limit} bytes")
    return -1


def split_fields(
    head: bytes, *, limit: int = MAX_HEAD_BYTES, max_lines: int = MAX_HEADER_LINES
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A complete head's start line and its fields as (name lowercased, value without surrounding
    blanks), refusing bare CR, LF, NUL, malformed lines (obs-fold and 'Name :' included) and more
    than ``max_lines`` fields."""
    if not head.endswith(HEAD_END) or len(head) > limit:
        raise HandshakeError(400, "incomplete request head")
    first = head.find(b"\r\n")
    start = head[:first]
    block = head[first + 2 : -2]
    if b"\n" in start or b"\r" in start or b"\0" in start:
        raise HandshakeError(400, "bare CR, LF or NUL in the request head")
    if block.count(b"\r\n") > max_lines:
        raise HandshakeError(431, f"more than {max_lines} header lines")
    if _FIELD_BLOCK.match(block) is None:
        raise HandshakeError(400, "malformed header line, or a bare CR, LF or control character")
    fields = [(n.lower(), v.strip(b" \t")) for n, v in _FIELD_LINE.findall(block)]
    return start, fields


def header_field(line: bytes) -> tuple[bytes, bytes]:
    """One header line as (name lowercased, value without surrounding blanks), strictly checked."""
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.match(name):
        raise HandshakeError(400, "malformed header line")  # obs-fold and 'Name :' included
    if not _FIELD_VALUE.match(value):
        raise HandshakeError(400, "control character in a header value")
    return name.lower(), value.strip(b" \t")


def is_token(value: bytes) -> bool:
    """Whether ``value`` is an HTTP token (RFC 9110): a method or a header name."""
    return _TOKEN.match(value) is not None


def is_field_value(value: bytes) -> bool:
    """Whether ``value`` can be sent as a header value: no CR, LF, NUL or other control
    character but tab."""
    return _FIELD_VALUE.match(value) is not None


def parse_connect(head: bytes) -> ConnectRequest:
    """Parse a complete head (ending with CRLF CRLF) into the target it asks for."""
    start, fields = split_fields(head)
    request = _parse_request_line(start)
    for name, value in fields:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            raise HandshakeError(400, "a CONNECT request has no body")
    return request


def _parse_request_line(line: bytes) -> ConnectRequest:
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HandshakeError(400, "request line is not 'METHOD TARGET HTTP/1.x'")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HandshakeError(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HandshakeError(400, "not HTTP/1.0 or HTTP/1.1")
    if method != b"CONNECT":
        raise HandshakeError(405, "only CONNECT is served")
    if not target.isascii():
        raise HandshakeError(400, "non-ASCII request target")
    return _parse_authority(target.decode("ascii"))


def _parse_authority(text: str) -> ConnectRequest:
    if "@" in text or "/" in text:
        raise HandshakeError(400, "request target must be host:port")
    if text.startswith("["):
        host_text, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":") or ":" not in host_text:
            raise HandshakeError(400, "malformed [IPv6]:port")
        port_text = rest[1:]
    else:
        host_text, colon, port_text = text.rpartition(":")
        if not colon:
            raise HandshakeError(400, "request target has no :port")
        if ":" in host_text:
            raise HandshakeError(400, "IPv6 host must be in brackets")
    if not _PORT.match(port_text) or not 1 <= int(port_text) <= 0xFFFF:
        raise HandshakeError(400, "port must be a number from 1 to 65535")
    try:
        host = parse_host(host_text)
    except HostSyntaxError as exc:
        raise HandshakeError(400, f"bad host: {exc}") from None
    if text.startswith("[") and (host.ip is None or host.ip.version != 6):
        raise HandshakeError(400, "brackets hold an IPv6 address only")
    return ConnectRequest(host, int(port_text))


def response(status: int) -> bytes:
    """The proxy's whole answer: a status line, and for errors an empty body and a close."""
    line = f"HTTP/1.1 {status} {REASONS[status]}\r\n"
    if status == 200:
        return (line + "\r\n").encode("ascii")
    return (line + "Content-Length: 0\r\nConnection: close\r\n\r\n").encode("ascii")
