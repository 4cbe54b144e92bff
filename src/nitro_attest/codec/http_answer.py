"""The client side of HTTP/1.1 for the KMS client, small and strict: a request head built from
checked parts, and an answer head and its body framing read from untrusted bytes.

Used by the enclave's KMS client, where the answer arrives through the parent: the head is capped
(``MAX_HEAD_BYTES``, ``MAX_HEADER_LINES``), every line must be well formed, and the body's length
must be unambiguous (one Content-Length, or ``Transfer-Encoding: chunked`` alone; both together is
the shape of request smuggling and refused). Measured here, http.client spent 115-140 us of CPU on
one KMS exchange where this spends ~20 us (docs/kms.md, "Speed"); it also accepts heads up to
100 lines of 64 KiB each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from nitro_attest.errors import TransportError

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
MAX_CHUNK_LINE = 1024
HEAD_END = b"\r\n\r\n"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TOKEN_B = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")
_VALUE_B = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
_TARGET = re.compile(r"/[\x21-\x7e]*\Z")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\Z")
_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,8})[ \t]*(?:;[\t\x20-\x7e]*)?\Z")

Framing = Literal["length", "chunked", "close"]


class HttpError(TransportError):
    """An answer that is not well-formed HTTP/1.1, or a request part that cannot be sent."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """An answer's status line and headers (names lower-case; repeated ones joined by ``, ``),
    and how its body is delimited: ``length`` bytes, ``chunked``, or until the connection
    closes."""

    status: int
    minor: int  # HTTP/1.minor
    headers: dict[str, str]
    framing: Framing
    length: int  # for "length"; 0 otherwise

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this answer."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.framing == "close" or "close" in tokens:
            return False
        return self.minor == 1 or "keep-alive" in tokens


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """``METHOD target HTTP/1.1`` and the header lines; a part that could break the framing
    (CR, LF, a non-token name) is an ``HttpError``."""
    if not _TOKEN.match(method) or not _TARGET.match(target):
        raise HttpError("malformed request line")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        if not _TOKEN.match(name) or not _VALUE.match(value):
            raise HttpError(f"header {name[:40]!r} cannot be sent (control character or bad "
                            "name)")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def find_head_end(buffer: bytes | bytearray) -> int:
    """Length of the answer head in ``buffer`` (through the blank line), or -1 if incomplete;
    ``HttpError`` once ``MAX_HEAD_BYTES`` arrived without its end."""
    end = buffer.find(HEAD_END, 0, MAX_HEAD_BYTES)
    if end >= 0:
        return end + len(HEAD_END)
    if len(buffer) >= MAX_HEAD_BYTES:
        raise HttpError(f"answer head longer than {MAX_HEAD_BYTES} bytes")
    return -1


def parse_response_head(head: bytes, *, max_body: int, head_request: bool = False) -> ResponseHead:
    """A complete answer head (through CRLF CRLF). ``max_body`` caps a declared Content-Length."""
    if not head.endswith(HEAD_END) or len(head) > MAX_HEAD_BYTES:
        raise HttpError("incomplete answer head")
    lines = head[: -len(HEAD_END)].split(b"\r\n")
    if any(b"\n" in line or b"\r" in line or b"\0" in line for line in lines):
        raise HttpError("bare CR, LF or NUL in the answer head")
    if len(lines) - 1 > MAX_HEADER_LINES:
        raise HttpError(f"answer head has more than {MAX_HEADER_LINES} header lines")
    match = _STATUS.match(lines[0])
    if match is None:
        raise HttpError("answer is not 'HTTP/1.x NNN reason'")
    minor, status = int(match.group(1)), int(match.group(2))
    headers: dict[str, str] = {}
    lengths: set[bytes] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN_B.match(name) or not _VALUE_B.match(value):
            raise HttpError("malformed header line in the answer")
        key = name.decode("ascii").lower()
        text = value.strip().decode("latin-1")
        if key == "content-length":
            lengths.add(value.strip())
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if head_request or status in (204, 304) or 100 <= status < 200:
        return ResponseHead(status, minor, headers, "length", 0)
    if "transfer-encoding" in headers:
        if lengths:
            raise HttpError("answer has both Transfer-Encoding and Content-Length")
        if headers["transfer-encoding"].lower() != "chunked":
            raise HttpError("answer's Transfer-Encoding is not chunked alone")
        return ResponseHead(status, minor, headers, "chunked", 0)
    if lengths:
        (declared,) = lengths if len(lengths) == 1 else (b"x",)
        if not declared.isdigit() or len(declared) > 12:
            raise HttpError("answer's Content-Length is not one number")
        length = int(declared)
        if length > max_body:
            raise HttpError(f"answer of {length} bytes refused (at most {max_body})")
        return ResponseHead(status, minor, headers, "length", length)
    return ResponseHead(status, minor, headers, "close", 0)


def parse_chunk_size(line: bytes) -> int:
    """A chunk-size line without its CRLF (extensions allowed and ignored)."""
    match = _CHUNK.match(line)
    if match is None:
        raise HttpError("malformed chunk size line")
    return int(match.group(1), 16)
