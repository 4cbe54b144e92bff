"""HTTPS to KMS with TLS ending in the enclave: stdlib ``ssl`` and a strict HTTP/1.1 exchange
(``codec.http1``) over a socket the route dials (no botocore, no httpx in the enclave; not
http.client either, which cost 5-6x the CPU per exchange: docs/kms.md, "Speed").

The certificate is checked against the CA bundle the image carries (``--ca-bundle``; default
certifi's, from the ``kms`` extra), with the endpoint's host name, before a byte of the request is
written: ``connect`` completes the handshake first. One ``Connection`` is one kept-alive
connection; a request on a connection the far side has meanwhile closed is sent again once on a
fresh one. Answers are capped before they are read whole: the head (``MAX_ANSWER_HEAD``,
``MAX_ANSWER_LINES``) and the body (``MAX_RESPONSE_BYTES``, declared or chunked).

One deadline, ``timeout`` after ``request`` is called, bounds the whole request: the dial, the
handshake, the send, every read of the answer, and the one retry on a fresh connection. A parent
that slows each step (or holds a kept-alive connection, then closes it unanswered) gets no fresh
timeout for the next one. After the handshake the socket is non-blocking and every wait is one
``poll`` bounded by that deadline: a socket timeout would cost a mode switch per ``settimeout``
and a poll before every send and every read (nine system calls an exchange instead of four;
docs/kms.md, "Speed").
Per request, the head's fixed part comes from a ``HeadTemplate`` checked once, and an answer
that arrives whole in the first read (KMS writes one TLS record) is parsed from that read without
the piecewise reader; either way the same codec parse and checks decide it.
"""

from __future__ import annotations

import math
import re
import select
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nitro_attest.codec.http import HandshakeError, find_head_end, is_field_value, is_token
from nitro_attest.codec.http1 import (
    ChunkedDecoder,
    Header,
    ResponseHead,
    checked_request_head,
    parse_response_head,
)
from nitro_attest.errors import ConfigurationError, TransportError
from nitro_attest.kms.route import Route

MAX_RESPONSE_BYTES = 256 * 1024  # KMS's largest answer (a key pair, base64) is ~10 KiB
MAX_ANSWER_HEAD = 16 * 1024
MAX_ANSWER_LINES = 100
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 86400.0  # a day; poll() takes at most 2**31 - 1 ms (~24.8 days)
MAX_TEMPLATE_NAMES = 16  # field names a HeadTemplate remembers as checked
MAX_INTERIM_ANSWERS = 8  # 100 Continue, 103 Early Hints: a few, not an endless stream
# A kept-alive connection the far side closed meanwhile: the request is sent again, once, fresh.
_CLOSED = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?\Z")


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str  # https, or http with --insecure-http
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}"


def check_timeout(timeout: float) -> float:
    """``timeout`` if it can bound a wait: a number of seconds above 0, at most ``MAX_TIMEOUT``
    (NaN, infinity or a huge value would break poll(), 0 or less time out every request)."""
    if not (isinstance(timeout, int | float) and 0 < timeout <= MAX_TIMEOUT):
        raise ConfigurationError(f"--timeout {timeout!r}: expected seconds above 0, at most "
                                 f"{MAX_TIMEOUT:g}")
    return float(timeout)


def default_endpoint(region: str) -> str:
    return f"https://kms.{region}.amazonaws.com"


def parse_endpoint(url: str, *, insecure_http: bool = False) -> Endpoint:
    """``https://HOST[:PORT]`` (or ``http://`` only with ``insecure_http``); no path, query,
    user or fragment: KMS's JSON protocol posts to ``/``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"--endpoint {url[:100]!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ConfigurationError(f"--endpoint {url[:100]!r}: expected https://HOST[:PORT]")
    if scheme == "http" and not insecure_http:
        raise ConfigurationError(
            f"--endpoint {url[:100]!r}: plain HTTP lets the parent read and answer every request "
            "(it could hand the enclave a plaintext of its choosing); pass --insecure-http only "
            "for a local KMS on loopback")
    host = parts.hostname or ""
    if not host or not (_HOST.match(host) or ":" in host) or parts.username or parts.password:
        raise ConfigurationError(f"--endpoint {url[:100]!r}: bad host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(f"--endpoint {url[:100]!r}: no path, query or fragment")
    return Endpoint(scheme, host, port or (443 if scheme == "https" else 80))


def tls_context(ca_bundle: str | Path | None) -> ssl.SSLContext:
    """A client context that trusts only ``ca_bundle`` (default certifi's), checks the host name,
    and speaks TLS 1.2 or later."""
    if ca_bundle is None:
        try:
            import certifi
        except ImportError:
            raise ConfigurationError(
                "no CA bundle: pass --ca-bundle PEM or install nitro-attest[kms] (certifi)"
            ) from None
        ca_bundle = certifi.where()
    try:
        context = ssl.create_default_context(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"--ca-bundle {ca_bundle}: cannot load: {exc}") from None
    if not context.get_ca_certs():
        raise ConfigurationError(f"--ca-bundle {ca_bundle}: holds no CA certificate")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: tuple[Header, ...]  # (name lowercased, value), as received
    body: bytes


def _unsendable() -> HandshakeError:
    return HandshakeError(400, "a header that cannot be sent (bad name or control character)")


class HeadTemplate:
    """A request head whose request line and first fields are the same for every request (the
    KMS client's ``POST /``, Host, Content-Type, X-Amz-Target): those are checked and encoded
    once, by ``codec.http1.checked_request_head`` itself; ``head`` checks only the fields added
    per request (the signature's, whose values may come from the parent through IMDS) with the
    same rules, and gives the bytes ``checked_request_head`` gives for all of them together."""

    __slots__ = ("_names", "_prefix", "fields", "method")

    def __init__(self, method: str, path: str, fields: Sequence[tuple[str, str]]) -> None:
        self.method = method
        self.fields = tuple(fields)
        # without its blank line: the per-request fields follow
        self._prefix = checked_request_head(method, path, self.fields, length=None)[:-2]
        self._names: dict[str, bytes] = {}  # added names checked already: "Name: " as bytes

    def head(self, added: Sequence[tuple[str, str]], *, length: int | None) -> bytes:
        """The whole head: the fixed part, ``added`` (each checked), Content-Length if
        ``length`` is not None, the blank line. HandshakeError(400) as ``checked_request_head``."""
        lines = [self._prefix]
        for name, value in added:
            start = self._names.get(name)
            try:
                if start is None:  # a name not seen yet (the signature adds the same few)
                    start = self._name(name)
                data = value.encode("ascii")
            except UnicodeEncodeError:
                raise HandshakeError(400, "non-ASCII request part") from None
            if not is_field_value(data):
                raise _unsendable()
            lines.append(start + data + b"\r\n")
        if length is not None:
            lines.append(b"Content-Length: %d\r\n" % length)
        lines.append(b"\r\n")
        return b"".join(lines)

    def _name(self, name: str) -> bytes:
        data = name.encode("ascii")
        if not is_token(data):
            raise _unsendable()
        if len(self._names) < MAX_TEMPLATE_NAMES:
            self._names[name] = data + b": "
        return data + b": "


class _Stale(TransportError):
    """The far side closed the connection before any byte of the answer (a kept-alive
    connection it had meanwhile dropped). Internal: ``request`` retries once or reports it."""

    def __init__(self) -> None:
        super().__init__("connection closed before the answer")


class Connection:
    """One kept-alive HTTP/1.1 connection through the route (not thread-safe: one per thread)."""

    def __init__(
        self,
        endpoint: Endpoint,
        route: Route,
        context: ssl.SSLContext | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if endpoint.tls and context is None:
            raise ConfigurationError("an https endpoint needs a TLS context")
        self.endpoint = endpoint
        self._route = route
        self._context = context if endpoint.tls else None
        self._timeout = check_timeout(timeout)
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._deadline = 0.0  # the whole request must be done by then (monotonic clock)
        self._resending = False  # the one retry on a fresh connection is under way
        self._readable = select.poll()
        self._writable = select.poll()

    def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> Answer:
        """Send and read the whole answer, all within ``timeout``. ``headers`` must hold Host
        (what was signed)."""
        length = len(body) if body or method in ("POST", "PUT") else None
        return self.send(method, checked_request_head(method, path, headers, length=length), body)

    def send(self, method: str, head: bytes, body: bytes = b"") -> Answer:
        """``request`` with its head already made and checked (``HeadTemplate.head``, or
        ``checked_request_head``): never a head from elsewhere. All within ``timeout``."""
        data = head + body
        # One deadline for everything below, the retry included: a step the parent slows, or a
        # kept-alive connection it holds and then closes, gets no fresh timeout after it.
        self._deadline = time.monotonic() + self._timeout
        reused = self._sock is not None
        try:
            return self._exchange(method, data)
        except _Stale:
            self.close()
            if not reused:
                raise TransportError(f"{self.endpoint} closed the connection without answering"
                                     ) from None
        self._resending = True  # the request went out on the closed one: KMS may have it
        try:  # the kept-alive connection had been closed by the far side: once more, fresh
            return self._exchange(method, data)
        except _Stale:
            self.close()
            raise TransportError(f"{self.endpoint} closed the connection without answering"
                                 ) from None
        finally:
            self._resending = False

    def _connect(self) -> socket.socket:
        sock = self._route.dial(self.endpoint.host, self.endpoint.port, timeout=self._remaining())
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:  # the handshake completes here, before any request
                sock.settimeout(self._remaining())  # the whole handshake (ssl keeps a deadline)
                # An EOF without close_notify is the parent cutting the stream, not an end: not
                # suppressed, it cannot pass for the end of an answer framed by the close.
                sock = self._context.wrap_socket(sock, server_hostname=self.endpoint.host,
                                                 suppress_ragged_eofs=False)
            sock.settimeout(0.0)  # from here on our own waits, each bounded by the deadline
        except BaseException:
            sock.close()
            raise
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock, select.POLLOUT)
        return sock

    def _exchange(self, method: str, data: bytes) -> Answer:
        try:
            if self._sock is None:
                self._sock = self._connect()
                self._buffer.clear()
            elif self._buffer:  # bytes beyond the last answer: the far side is not speaking HTTP
                raise TransportError(f"{self.endpoint}: unsolicited bytes after the previous "
                                     "answer")
            sock = self._sock
            try:
                self._send(sock, data)
            except _CLOSED:
                raise _Stale() from None
            # the deadline bounds the whole answer, not each recv: a far side sending a byte at
            # a time, or interim answers without end, would otherwise hold the caller for hours
            whole = self._whole_answer(sock, method)
            if whole is not None:
                return whole
            head = self._head(sock, method)
            interim = 0
            while head.status < 200:  # interim answers (100, 103): the real one follows
                if head.status == 101:
                    raise TransportError(f"{self.endpoint}: the answer switches protocols")
                interim += 1
                if interim > MAX_INTERIM_ANSWERS:
                    raise TransportError(f"{self.endpoint}: more than {MAX_INTERIM_ANSWERS} "
                                         "interim answers")
                head = self._head(sock, method)
            body = self._body(sock, head)
            if not head.keep_alive:
                self.close()
            return Answer(head.status, head.headers, body)
        except _Stale:
            raise
        except HandshakeError as exc:  # the codec's refusal of the answer: the reason only
            self.close()
            raise TransportError(f"{self.endpoint}: malformed answer: {exc.reason}") from None
        except ssl.SSLCertVerificationError as exc:
            self.close()
            sent = ("nothing was sent on this connection, but the request had been sent on the "
                    "kept-alive connection, which closed unanswered" if self._resending
                    else "nothing was sent")
            raise TransportError(f"TLS to {self.endpoint}: the certificate is not trusted "
                                 f"({exc.verify_message}); {sent}") from None
        except ssl.SSLEOFError as exc:
            answering = self._sock is not None  # connected: the handshake was done
            self.close()
            if not answering:
                raise TransportError(f"TLS to {self.endpoint}: {exc.reason or exc}") from None
            raise TransportError(f"{self.endpoint} closed the connection mid-answer, without "
                                 "TLS's close_notify (cut on the way?)") from None
        except ssl.SSLError as exc:
            self.close()
            raise TransportError(f"TLS to {self.endpoint}: {exc.reason or exc}") from None
        except TransportError:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise TransportError(f"{self.endpoint}: timed out after {self._timeout:g} s"
                                 ) from None
        except OSError as exc:
            self.close()
            raise TransportError(f"{self.endpoint}: {exc.strerror or exc}") from None

    def _remaining(self) -> float:
        """Seconds left before the deadline; ``TimeoutError`` once it has passed."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    def _wait(self, poller: select.poll) -> None:
        """Until the socket is ready (``poller`` says for what) or the deadline passes."""
        poller.poll(math.ceil(self._remaining() * 1000))  # nothing ready: the next try waits

    def _send(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)  # TLS: all of it, or "want" and retried with the same bytes
            except (ssl.SSLWantWriteError, BlockingIOError):
                self._wait(self._writable)
                continue
            except ssl.SSLWantReadError:
                self._wait(self._readable)
                continue
            view = view[sent:]

    def _recv(self, sock: socket.socket, *, wait_first: bool = False) -> bytes:
        """Some bytes (``b""`` at the end of the stream). ``wait_first``: the answer has just
        been asked for, so it cannot be there yet unless TLS holds decrypted bytes already; one
        poll instead of a read that would fail first."""
        if wait_first and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            self._wait(self._readable)
        while True:
            if time.monotonic() >= self._deadline:
                raise TimeoutError
            try:
                return sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                self._wait(self._readable)
            except ssl.SSLWantWriteError:
                self._wait(self._writable)

    def _fill(self, sock: socket.socket, *, stale_if_empty: bool = False) -> None:
        chunk = self._recv(sock, wait_first=stale_if_empty and not self._buffer)
        if not chunk:
            if stale_if_empty and not self._buffer:
                raise _Stale()
            raise TransportError(f"{self.endpoint} closed the connection mid-answer")
        self._buffer += chunk

    def _whole_answer(self, sock: socket.socket, method: str) -> Answer | None:
        """The answer's first read; the answer itself when that read holds exactly one final
        answer framed by Content-Length (KMS writes its answer in one TLS record), else None with
        the bytes left in the buffer for ``_head`` and ``_body``, which then read as if they had
        read them themselves (the same head parse, the same checks, whichever path)."""
        try:
            chunk = self._recv(sock, wait_first=True)
        except _CLOSED:
            raise _Stale() from None
        if not chunk:
            raise _Stale()
        end = chunk.find(b"\r\n\r\n", 0, MAX_ANSWER_HEAD) + 4  # as find_head_end looks
        if end >= 4:
            head = parse_response_head(chunk[:end], request_method=method, limit=MAX_ANSWER_HEAD,
                                       max_lines=MAX_ANSWER_LINES, max_body=MAX_RESPONSE_BYTES)
            if (head.status >= 200 and head.framing == "length" and head.keep_alive
                    and len(chunk) - end == head.length):
                return Answer(head.status, head.headers, chunk[end:])
        self._buffer += chunk
        return None

    def _head(self, sock: socket.socket, method: str) -> ResponseHead:
        first = True
        while (end := self._head_end()) < 0:
            try:
                self._fill(sock, stale_if_empty=first)
            except _CLOSED:
                if first and not self._buffer:
                    raise _Stale() from None
                raise
            first = False
        head = bytes(self._buffer[:end])
        del self._buffer[:end]
        return parse_response_head(head, request_method=method, limit=MAX_ANSWER_HEAD,
                                   max_lines=MAX_ANSWER_LINES, max_body=MAX_RESPONSE_BYTES)

    def _head_end(self) -> int:
        try:
            return find_head_end(self._buffer, MAX_ANSWER_HEAD)
        except HandshakeError:  # its reason speaks of a request head
            raise TransportError(f"{self.endpoint}: answer head longer than {MAX_ANSWER_HEAD} "
                                 "bytes") from None

    def _body(self, sock: socket.socket, head: ResponseHead) -> bytes:
        if head.framing == "length":
            while len(self._buffer) < head.length:
                self._fill(sock)
            return self._take(head.length)
        if head.framing == "close":
            while True:
                if len(self._buffer) > MAX_RESPONSE_BYTES:
                    raise TransportError(f"{self.endpoint}: answer longer than "
                                         f"{MAX_RESPONSE_BYTES} bytes")
                chunk = self._recv(sock)
                if not chunk:
                    return self._take(len(self._buffer))
                self._buffer += chunk
        if head.framing == "none":
            return b""
        decoder = ChunkedDecoder(max_body=MAX_RESPONSE_BYTES)
        parts: list[bytes] = []
        while not decoder.done:
            if not self._buffer:
                self._fill(sock)
            data = bytes(self._buffer)
            self._buffer.clear()
            pieces, rest = decoder.feed(data)
            parts.extend(pieces)
            self._buffer += rest  # bytes past the body: refused as unsolicited next time
        return b"".join(parts)

    def _take(self, count: int) -> bytes:
        taken = bytes(self._buffer[:count])
        del self._buffer[:count]
        return taken

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        sock, self._sock = self._sock, None
        self._buffer.clear()
        if sock is not None:
            sock.close()
