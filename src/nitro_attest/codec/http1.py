"""HTTP/1.1 messages for the attested HTTPS front and its client, and the enclave's KMS client:
heads, framing, body caps, chunked bodies.

Pure: bytes in, parsed heads and encoded bytes out. Request heads come from the network (through
the parent): they are capped, checked line by line with ``codec.http``'s header rules, and every
ambiguity a request smuggler relies on is refused (Content-Length with Transfer-Encoding, two
Content-Lengths, a coding other than ``chunked``, a missing or doubled Host). Response heads come
from the app (trusted) or, on a client, from a server through the parent (an attested server
before it is attested, KMS behind TLS); both are capped (``max_body`` included) and strictly
framed too. Error messages never quote the message.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal

from nitro_attest.codec.http import (
    FIELD_LINES,
    HandshakeError,
    header_field,
    is_field_value,
    is_token,
    split_fields,
)

Header = tuple[bytes, bytes]  # (name lowercased, value)
Framing = Literal["none", "length", "chunked", "close"]

MAX_CONTENT_LENGTH = 1 << 53
MAX_CHUNK_LINE = 1024  # a chunk-size line, extensions included
MAX_TRAILER_BYTES = 8192

# Connection-specific fields (RFC 9110 7.6.1): never forwarded by an intermediary.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    )
)
# What the front says about the client: set by the front alone, never passed on from the client.
FORWARDED = frozenset(
    (b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip")
)
# Names the front owns or frames by. A client's field that spells one with underscores is dropped
# (CGI and WSGI map "X_Forwarded_For" and "X-Forwarded-For" to the same HTTP_X_FORWARDED_FOR,
# which is why nginx and Apache drop such names), and so is every other X-Forwarded-* (Port,
# Prefix, Ssl...: proxy-fix middlewares read them as the front's word).
_FRONT_OWNED = FORWARDED | HOP_BY_HOP | {b"host", b"content-length", b"expect"}

_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
_STATUS = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?\Z")
_DIGITS = re.compile(rb"[0-9]{1,16}\Z")
# uri-host [":" port], narrowed: a reg-name of unreserved characters (no sub-delims: a comma would
# read as a list in X-Forwarded-Host, ";" and "=" as Forwarded syntax) or a bracketed IPv6.
_HOST = re.compile(rb"(?:[A-Za-z0-9._~-]+|\[([0-9A-Fa-f:.]+)\])(?::([0-9]{1,5}))?\Z")
# The common heads, each checked whole in one C-level match: a method of capitals, an origin-form
# target and HTTP/1.1 (a request); HTTP/1.1 and a status (a response); then well-formed field
# lines. What passes meets every check of the general path's line and field rules (split_fields,
# the request or status line), so only the checks on the fields' meaning remain; anything else
# takes the general path, which says what is wrong.
_COMMON_REQUEST = re.compile(
    rb"([A-Z]{1,20}) (/[\x21-\x7e]*) HTTP/1\.1\r\n(" + FIELD_LINES + rb")\r\n\Z"
)
_COMMON_RESPONSE = re.compile(
    rb"HTTP/1\.1 ([1-9][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?\r\n(" + FIELD_LINES + rb")\r\n\Z"
)
_FIELD_LINE = re.compile(rb"([^:]+):([^\r]*)\r\n")  # on lines already checked by FIELD_LINES
# A chunk-size line (RFC 9112 7.1.1), extensions read by their grammar though ignored: one holding
# CR, NUL or another control byte is where two parsers read a size line differently. Trailing
# blanks after the size are tolerated, as before. Each repetition consumes a ";": linear.
_TOKEN_RE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_RE = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x20-\x7e\x80-\xff])*"'
_CHUNK_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[ \t]*" + _TOKEN_RE
    + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN_RE + rb"|" + _QUOTED_RE + rb"))?)*[ \t]*\Z"
)


# Not frozen: a frozen dataclass sets each field through object.__setattr__, a good part of the
# cost of parsing a small head. Nothing mutates a parsed head.
@dataclass(slots=True)
class RequestHead:
    """A parsed request head: its line, headers, and how its body is framed."""

    method: str
    target: str  # origin-form: path and query as sent
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: tuple[Header, ...]
    framing: Framing  # "none", "length" or "chunked"
    length: int  # for "length"
    keep_alive: bool
    expect_continue: bool

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        """The target's query, without the ``?``."""
        return self.target.partition("?")[2]

    def get(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (lower-case), or None."""
        return _get(self.headers, name)


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head: status, headers, and how its body is framed."""

    status: int
    version: str
    headers: tuple[Header, ...]
    framing: Framing  # "none", "length", "chunked" or "close" (read to the end)
    length: int
    keep_alive: bool

    def get(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (lower-case), or None."""
        return _get(self.headers, name)


def _get(headers: Iterable[Header], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _tokens(headers: Iterable[Header], name: bytes) -> set[bytes]:
    """The comma-separated tokens of every ``name`` field, lowercased."""
    return _split_tokens(v for k, v in headers if k == name)


def _split_tokens(values: Iterable[bytes]) -> set[bytes]:
    out: set[bytes] = set()
    for value in values:
        out.update(t.strip(b" \t").lower() for t in value.split(b","))
    out.discard(b"")
    return out


# The fields that decide framing and the connection's fate: gathered in one pass over a head.
_FRAMING_FIELDS = frozenset(
    (b"host", b"transfer-encoding", b"content-length", b"connection", b"expect")
)


def _gather(fields: Iterable[Header]) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        if name in _FRAMING_FIELDS:
            found.setdefault(name, []).append(value)
    return found


def _body_framing(found: dict[bytes, list[bytes]], version: str) -> tuple[Framing, int] | None:
    """Framing from Transfer-Encoding / Content-Length; None when neither is present."""
    codings = found.get(b"transfer-encoding")
    lengths = found.get(b"content-length")
    if codings:
        if lengths:
            raise HandshakeError(400, "both Transfer-Encoding and Content-Length")
        if version != "HTTP/1.1":
            raise HandshakeError(400, "Transfer-Encoding in an HTTP/1.0 message")
        if len(codings) != 1 or codings[0].lower() != b"chunked":
            raise HandshakeError(501, "only Transfer-Encoding: chunked is supported")
        return "chunked", 0
    if lengths:
        if len(lengths) != 1 or not _DIGITS.match(lengths[0]):
            raise HandshakeError(400, "Content-Length is not one decimal number")
        length = int(lengths[0])
        if length > MAX_CONTENT_LENGTH:
            raise HandshakeError(413, "Content-Length too large")
        return "length", length
    return None


def _fields(block: bytes) -> list[Header]:
    """Checked field lines as (name lowercased, value without surrounding blanks)."""
    return [(n.lower(), v.strip(b" \t")) for n, v in _FIELD_LINE.findall(block)]


def parse_request_head(head: bytes, *, limit: int, max_lines: int) -> RequestHead:
    """A complete request head (through CRLF CRLF) of at most ``limit`` bytes and ``max_lines``
    header lines, or HandshakeError with the status to answer."""
    common = _COMMON_REQUEST.match(head) if len(head) <= limit else None
    # k field lines: the request line's CRLF, k CRLFs, the blank line's.
    if common is not None and head.count(b"\r\n") - 2 <= max_lines:
        method, target, block = common.groups()
        if method != b"CONNECT":
            fields = _fields(block)
            # The commonest meaning too: one valid Host and no other framing field, so no body,
            # kept alive, nothing expected. Anything else: _request checks it all.
            host = None
            for name, value in fields:
                if name in _FRAMING_FIELDS:
                    if name != b"host" or host is not None:
                        break
                    host = value
            else:
                if host is not None and _valid_host(host):
                    return RequestHead(method.decode("ascii"), target.decode("ascii"),
                                       "HTTP/1.1", tuple(fields), "none", 0, True, False)
            return _request(method, target, b"HTTP/1.1", fields)
    start, fields = split_fields(head, limit=limit, max_lines=max_lines)
    parts = start.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HandshakeError(400, "request line is not 'METHOD TARGET HTTP/1.x'")
    method, target, version = parts
    if not is_token(method):
        raise HandshakeError(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HandshakeError(400, "not HTTP/1.0 or HTTP/1.1")
    if method == b"CONNECT":
        raise HandshakeError(405, "CONNECT is not served")
    if not _TARGET.match(target) and not (target == b"*" and method == b"OPTIONS"):
        raise HandshakeError(400, "request target must be a path (origin-form)")
    return _request(method, target, version, fields)


def _request(method: bytes, target: bytes, version: bytes, fields: list[Header]) -> RequestHead:
    """The request head from its checked line and fields: what the fields mean, checked."""
    found = _gather(fields)
    hosts = found.get(b"host", ())
    if version == b"HTTP/1.1" and len(hosts) != 1:
        raise HandshakeError(400, "an HTTP/1.1 request needs exactly one Host")
    if len(hosts) > 1:
        raise HandshakeError(400, "more than one Host")
    if hosts and not _valid_host(hosts[0]):
        raise HandshakeError(400, "malformed Host")
    text_version = version.decode("ascii")
    framing = _body_framing(found, text_version) or ("none", 0)
    # HTTP/1.0: one request per connection, keep-alive asked or not.
    keep_alive = text_version == "HTTP/1.1" and (
        b"connection" not in found or b"close" not in _split_tokens(found[b"connection"])
    )
    expects = found.get(b"expect")
    if expects is not None and (len(expects) != 1 or expects[0].lower() != b"100-continue"):
        raise HandshakeError(400, "unsupported Expect")  # 417 is not worth its own code here
    return RequestHead(
        method=method.decode("ascii"),
        target=target.decode("ascii"),
        version=text_version,
        headers=tuple(fields),
        framing=framing[0],
        length=framing[1],
        keep_alive=keep_alive,
        expect_continue=expects is not None and version == b"HTTP/1.1",
    )


def _valid_host(value: bytes) -> bool:
    if not value:  # RFC 9112 3.2: empty when the target URI has no authority
        return True
    found = _HOST.match(value)
    if found is None:
        return False
    literal, port = found.groups()
    if port is not None and int(port) > 0xFFFF:
        return False
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return False
    return True


def parse_response_head(
    head: bytes, *, request_method: str, limit: int, max_lines: int, max_body: int | None = None
) -> ResponseHead:
    """A complete response head to a ``request_method`` request; its body's framing follows the
    RFC 9112 6.3 order (HEAD, 1xx, 204 and 304 have none; chunked; Content-Length; to close).
    ``max_body`` refuses a declared Content-Length above it (a chunked or read-to-close body is
    capped by its reader: ``ChunkedDecoder(max_body=...)``)."""
    common = _COMMON_RESPONSE.match(head) if len(head) <= limit else None
    if common is not None and head.count(b"\r\n") - 2 <= max_lines:
        status = int(common.group(1))
        fields = _fields(common.group(2))
        # The commonest meaning too: a final status with a body of one Content-Length and no
        # other framing field. Anything else: _response checks it all.
        length = None
        for name, value in fields:
            if name in _FRAMING_FIELDS:
                if name != b"content-length" or length is not None:
                    break
                length = value
        else:
            if (length is not None and _DIGITS.match(length) and request_method != "HEAD"
                    and status >= 200 and status not in (204, 304)):
                size = int(length)
                if size <= MAX_CONTENT_LENGTH and (max_body is None or size <= max_body):
                    return ResponseHead(status, "HTTP/1.1", tuple(fields), "length", size, True)
        return _response(status, "HTTP/1.1", fields, request_method, max_body)
    start, fields = split_fields(head, limit=limit, max_lines=max_lines)
    status_match = _STATUS.match(start)
    if status_match is None:
        raise HandshakeError(502, "malformed status line")
    status = int(status_match.group(1))
    version = start[:8].decode("ascii")
    return _response(status, version, fields, request_method, max_body)


def _response(
    status: int, version: str, fields: list[Header], request_method: str, max_body: int | None
) -> ResponseHead:
    """The response head from its checked status line and fields: framing and keep-alive."""
    headers = tuple(fields)
    found = _gather(fields)
    keep_alive = version == "HTTP/1.1" and (
        b"connection" not in found or b"close" not in _split_tokens(found[b"connection"])
    )
    framing: tuple[Framing, int]
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        framing = ("none", 0)
    else:
        framed = _body_framing(found, version)
        framing = framed if framed is not None else ("close", 0)
        if max_body is not None and framing[1] > max_body:
            raise HandshakeError(502, f"a body of {framing[1]} bytes, more than {max_body}")
    if framing[0] == "close":
        keep_alive = False
    return ResponseHead(status, version, headers, framing[0], framing[1], keep_alive)


# --- encoding -----------------------------------------------------------------------------------


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _join(start: bytes, headers: Iterable[Header]) -> bytes:
    out = [start]
    for name, value in headers:
        out.append(name + b": " + value)
    out.append(b"\r\n")
    return b"\r\n".join(out)


def _connection_listed(headers: Sequence[Header]) -> set[bytes]:
    for name, _ in headers:
        if name == b"connection":
            return _tokens(headers, b"connection")
    return set()  # the common case: no Connection field, nothing to split


def end_to_end(headers: Sequence[Header]) -> list[Header]:
    """``headers`` without hop-by-hop fields, those the Connection field names, and the framing
    (Content-Length: each hop frames the body itself)."""
    listed = _connection_listed(headers)
    return [
        (k, v)
        for k, v in headers
        if k not in HOP_BY_HOP and k not in listed and k != b"content-length"
    ]


@functools.lru_cache(maxsize=1024)
def _forwarded_for(client: str) -> tuple[bytes, bytes]:
    """The Forwarded field's start and the X-Forwarded-For line for ``client``: the same for
    every request of a connection, so made once (bounded: one entry per recent client)."""
    quoted = f'"[{client}]"' if ":" in client else client
    return (
        f"forwarded: for={quoted};proto=https;host=".encode(),
        b"x-forwarded-for: " + client.encode("ascii"),
    )


def forward_request_head(
    request: RequestHead, *, client: str, host_fallback: bytes, keep_alive: bool = True
) -> bytes:
    """The head sent to the app: end-to-end fields, the client's Forwarded fields replaced by the
    front's own, ``Expect`` answered by the front (dropped), the body re-framed the same way.
    One pass over the fields, straight to the lines (it runs for every relayed request)."""
    # Host first and always: a client's "Connection: host" must not take it away from the app.
    host = request.get(b"host") or host_fallback
    fields = request.headers
    listed = _connection_listed(fields)
    out = [f"{request.method} {request.target} HTTP/1.1".encode("ascii"), b"host: " + host]
    # _front_owned covers what end_to_end drops too (hop-by-hop, Content-Length).
    out.extend(
        name + b": " + value
        for name, value in fields
        if name not in listed and not _front_owned(name)
    )
    forwarded, forwarded_for = _forwarded_for(client)
    out.append(forwarded + _quote(host))
    out.append(forwarded_for)
    out.append(b"x-forwarded-proto: https")
    out.append(b"x-forwarded-host: " + host)
    if request.framing == "chunked":
        out.append(b"transfer-encoding: chunked")
    elif request.framing == "length":
        out.append(b"content-length: %d" % request.length)
    if not keep_alive:
        out.append(b"connection: close")
    out.append(b"\r\n")
    return b"\r\n".join(out)


_OWNED: dict[bytes, bool] = {}  # header names seen, and whether the front owns each
_OWNED_MAX = 4096  # names are the client's choice: the memo stops growing here
# ... and each can be a whole head long: only names of a real name's length are kept, so the
# memo holds at most some 400 KB (4096 names of 16 KiB held 64 MiB for the process's life).
_OWNED_NAME_MAX = 64


def _front_owned(name: bytes) -> bool:
    owned = _OWNED.get(name)
    if owned is None:
        dashed = name.replace(b"_", b"-")
        owned = dashed in _FRONT_OWNED or dashed.startswith(b"x-forwarded-")
        if len(_OWNED) < _OWNED_MAX and len(name) <= _OWNED_NAME_MAX:
            _OWNED[name] = owned
    return owned


def _quote(value: bytes) -> bytes:
    if is_token(value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# What an intermediary never passes on from a response: hop-by-hop and the framing.
_NOT_RELAYED = HOP_BY_HOP | {b"content-length"}


@functools.lru_cache(maxsize=1000)
def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {_reason(status)}".rstrip().encode("ascii")


def forward_response_head(
    response: ResponseHead, *, framing: Framing, keep_alive: bool
) -> bytes:
    """The head sent to the client for the app's ``response``, relayed with ``framing``."""
    fields = response.headers
    listed = _connection_listed(fields)
    out = [_status_line(response.status)]
    out.extend(
        name + b": " + value
        for name, value in fields
        if name not in _NOT_RELAYED and name not in listed
    )
    if framing == "chunked":
        out.append(b"transfer-encoding: chunked")
    elif framing == "length":
        out.append(b"content-length: %d" % response.length)
    elif response.status >= 200 and response.status not in (204, 304) and framing == "none":
        # A HEAD answer keeps the app's Content-Length: it describes the GET's body.
        length = response.get(b"content-length")
        if length is not None:
            out.append(b"content-length: " + length)
    if not keep_alive:
        out.append(b"connection: close")
    out.append(b"\r\n")
    return b"\r\n".join(out)


def simple_response(
    status: int,
    body: bytes = b"",
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: Sequence[Header] = (),
    close: bool = False,
) -> bytes:
    """A whole response the front writes itself (errors, the attestation document)."""
    headers: list[Header] = [(b"content-type", content_type), *extra]
    headers.append((b"content-length", str(len(body)).encode()))
    if close:
        headers.append((b"connection", b"close"))
    start = f"HTTP/1.1 {status} {_reason(status)}".rstrip().encode("ascii")
    return _join(start, headers) + body


def request_head(
    method: str, target: str, host: str, headers: Sequence[Header] = (), *, length: int | None
) -> bytes:
    """A client's request head; ``length`` None means no body."""
    fields: list[Header] = [(b"host", host.encode("ascii"))]
    fields.extend(headers)
    if length is not None:
        fields.append((b"content-length", str(length).encode()))
    return _join(f"{method} {target} HTTP/1.1".encode("ascii"), fields)


def checked_request_head(
    method: str, target: str, headers: Sequence[tuple[str, str]], *, length: int | None
) -> bytes:
    """A client's request head from text parts sent as given (Host among ``headers``: a signed
    request carries exactly what was signed); ``length`` None means no body. A part that could
    break the framing (a method or name that is not a token, a target not in origin-form, CR, LF
    or another control character, non-ASCII) is HandshakeError(400), naming no value."""
    try:
        method_b, target_b = method.encode("ascii"), target.encode("ascii")
        fields = [(name.encode("ascii"), value.encode("ascii")) for name, value in headers]
    except UnicodeEncodeError:
        raise HandshakeError(400, "non-ASCII request part") from None
    if not is_token(method_b) or not _TARGET.match(target_b):
        raise HandshakeError(400, "malformed request line")
    for name, value in fields:
        if not is_token(name) or not is_field_value(value):
            raise HandshakeError(400, "a header that cannot be sent (bad name or control "
                                 "character)")
    if length is not None:
        fields.append((b"Content-Length", str(length).encode()))
    return _join(method_b + b" " + target_b + b" HTTP/1.1", fields)


def chunk(data: bytes | memoryview) -> bytes:
    """One chunk of a chunked body (never empty: the empty chunk ends the body)."""
    return b"%x\r\n" % len(data) + bytes(data) + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


# --- chunked decoding ---------------------------------------------------------------------------


class ChunkedDecoder:
    """Incremental decoder of a chunked body: ``feed`` bytes, get payload pieces back.

    ``done`` once the last chunk and the trailer section were read; ``feed`` then returns the
    bytes past the body's end as ``rest`` (the next message's, on a kept-alive connection).
    Trailer fields are checked for syntax and dropped. Raises HandshakeError(400) when malformed,
    (413) once the chunk sizes add up to more than ``max_body`` (checked at each size line,
    before the data arrives).
    """

    __slots__ = ("_line", "_max_body", "_need", "_state", "_total", "_trailer", "done")

    def __init__(self, *, max_body: int | None = None) -> None:
        self._state = "size"  # size, data, data_end, trailer
        self._need = 0
        self._line = bytearray()
        self._trailer = 0
        self._max_body = max_body
        self._total = 0
        self.done = False

    def feed(self, data: bytes | memoryview) -> tuple[list[bytes], bytes]:
        """Decode what ``data`` holds: (the body's chunks so far, bytes past the body's end)."""
        view = memoryview(data)
        out: list[bytes] = []
        pos = 0
        while pos < len(view) and not self.done:
            if self._state == "data":
                take = min(self._need, len(view) - pos)
                out.append(bytes(view[pos : pos + take]))
                pos += take
                self._need -= take
                if self._need == 0:
                    self._state = "data_end"
                continue
            end = bytes(view[pos : pos + MAX_CHUNK_LINE + 2]).find(b"\n")
            if end < 0:
                self._line += view[pos:]
                pos = len(view)
                if len(self._line) > MAX_CHUNK_LINE + 2:
                    raise HandshakeError(400, "chunk line too long")
                continue
            self._line += view[pos : pos + end + 1]
            pos += end + 1
            line = bytes(self._line)
            self._line.clear()
            self._line_done(line)
        return out, bytes(view[pos:])

    def _line_done(self, line: bytes) -> None:
        if len(line) > MAX_CHUNK_LINE + 2 or not line.endswith(b"\r\n"):
            raise HandshakeError(400, "malformed chunk line")
        text = line[:-2]
        if self._state == "data_end":
            if text:
                raise HandshakeError(400, "chunk data longer than its size")
            self._state = "size"
        elif self._state == "size":
            size_line = _CHUNK_SIZE_LINE.match(text)
            if size_line is None:
                raise HandshakeError(400, "malformed chunk size or extension")
            self._need = int(size_line.group(1), 16)
            self._total += self._need
            if self._max_body is not None and self._total > self._max_body:
                raise HandshakeError(413, f"chunked body longer than {self._max_body} bytes")
            self._state = "data" if self._need else "trailer"
        else:  # trailer
            if not text:
                self.done = True
                return
            self._trailer += len(line)
            if self._trailer > MAX_TRAILER_BYTES:
                raise HandshakeError(431, "trailer section too large")
            header_field(text)
