"""The client side of HTTP CONNECT: the request head the enclave sends to the parent's proxy, and
the proxy's answer read strictly.

The answer comes from the parent, so it is untrusted: capped at ``MAX_HEAD_BYTES``, a status line
``HTTP/1.x NNN reason`` and well-formed header lines, nothing else. Only 200 opens the tunnel; a
200 that claims a body (Content-Length other than 0, Transfer-Encoding) is refused, so no byte
can be read both as the proxy's answer and as the start of the tunnel (RFC 9110 9.3.6). Error
messages quote at most the status code and a bounded, escaped reason.
"""

from __future__ import annotations

import re

from nitro_attest.errors import TransportError

MAX_HEAD_BYTES = 8192
MAX_HEADER_LINES = 64
HEAD_END = b"\r\n\r\n"

_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: ([\t\x20-\x7e]*))?\Z")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
_HOST = re.compile(r"[A-Za-z0-9.\-]+\Z|\[[0-9A-Fa-f:.]+\]\Z")


class ConnectError(TransportError):
    """The proxy refused the tunnel or answered something that is not an HTTP CONNECT answer.
    ``status`` is the proxy's status code when it sent a well-formed refusal, else ``None``."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def connect_request(host: str, port: int) -> bytes:
    """``CONNECT host:port HTTP/1.1`` with its Host header; an IPv6 host goes in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if not _HOST.match(host) or not 1 <= port <= 0xFFFF:
        raise ConnectError(f"cannot CONNECT to {host[:80]!r} port {port}")
    authority = f"{host}:{port}"
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii")


def find_head_end(buffer: bytes | bytearray) -> int:
    """Length of the answer head in ``buffer`` (through the blank line), or -1 if incomplete;
    ``ConnectError`` once ``MAX_HEAD_BYTES`` arrived without its end."""
    end = buffer.find(HEAD_END, 0, MAX_HEAD_BYTES)
    if end >= 0:
        return end + len(HEAD_END)
    if len(buffer) >= MAX_HEAD_BYTES:
        raise ConnectError(f"proxy answer head longer than {MAX_HEAD_BYTES} bytes")
    return -1


def parse_connect_response(head: bytes) -> None:
    """Accept a complete answer head (ending with CRLF CRLF) that opens the tunnel; raise
    ``ConnectError`` for a refusal (with its status) or anything malformed."""
    if not head.endswith(HEAD_END) or len(head) > MAX_HEAD_BYTES:
        raise ConnectError("incomplete proxy answer")
    lines = head[: -len(HEAD_END)].split(b"\r\n")
    if any(b"\n" in line or b"\r" in line or b"\0" in line for line in lines):
        raise ConnectError("bare CR, LF or NUL in the proxy answer")
    if len(lines) - 1 > MAX_HEADER_LINES:
        raise ConnectError(f"proxy answer has more than {MAX_HEADER_LINES} header lines")
    match = _STATUS.match(lines[0])
    if match is None:
        raise ConnectError("proxy answer is not 'HTTP/1.x NNN reason'")
    status = int(match.group(1))
    body = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name) or not _FIELD_VALUE.match(value):
            raise ConnectError("malformed header line in the proxy answer")
        lowered = name.lower()
        if lowered == b"transfer-encoding" or (
            lowered == b"content-length" and value.strip() != b"0"
        ):
            body = True
    if status != 200:
        reason = (match.group(2) or b"").decode("ascii")[:80]
        raise ConnectError(f"proxy refused the tunnel: {status} {reason}".rstrip(), status=status)
    if body:
        raise ConnectError("proxy answered 200 with a body")
