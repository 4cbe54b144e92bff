"""A blocking attested HTTPS client: one connection, attested, then requests on it.

``AttestedConnection.open`` does TLS (the certificate is not checked against any CA: trust comes
from the document), then the attestation exchange on the same connection; only after
``check_document`` accepted it can ``request`` send anything. Used by ``nitro-attest https get``;
the httpx transport (``nitro_attest.https.transport``) does the same over httpcore's streams.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from nitro_attest.attestation.policy import Policy
from nitro_attest.attestation.verifier import VerifiedDocument, Verifier
from nitro_attest.codec.http import HandshakeError, find_head_end
from nitro_attest.codec.http1 import (
    ChunkedDecoder,
    Header,
    ResponseHead,
    parse_response_head,
    request_head,
)
from nitro_attest.errors import TransportError, UsageError
from nitro_attest.https.attest import Deadline, attest_connection, check_policy

MAX_RESPONSE_HEAD = 64 * 1024
PIECE = 64 * 1024


class NotListeningError(TransportError):
    """Nothing listens at the server's address (yet): no byte was sent, so retrying is safe."""


@dataclass(frozen=True, slots=True)
class Url:
    host: str
    port: int
    target: str  # path and query

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


def parse_url(text: str) -> Url:
    try:
        parts = urlsplit(text)
        port = parts.port or 443
    except ValueError as exc:
        raise UsageError(f"{text[:80]!r}: not a URL ({exc})") from None
    if parts.scheme != "https":
        raise UsageError(f"{text[:80]!r}: only https:// URLs are attested")
    if not parts.hostname:
        raise UsageError(f"{text[:80]!r}: no host")
    if not parts.hostname.isascii():
        raise UsageError(f"{text[:80]!r}: give the host name in its ASCII (xn--) form")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"{text[:80]!r}: credentials in the URL are not supported")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if any(c <= " " or c > "~" for c in target):
        raise UsageError(f"{text[:80]!r}: the path has spaces or non-ASCII characters: "
                         "percent-encode them")
    return Url(parts.hostname, port, target)


def client_context() -> ssl.SSLContext:
    """TLS 1.3 without CA checks: the certificate is trusted only once a document names its key.
    The front always speaks 1.3 (``--tls12`` only adds 1.2), so a server that settles for 1.2
    is not one; 1.3 also leaves no renegotiation to change the certificate after attestation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])
    return context


_CONTEXT: list[ssl.SSLContext] = []


def _shared_context() -> ssl.SSLContext:
    """One client context for every AttestedConnection: building one costs about as much as a
    handshake's own CPU, and a context holds no per-connection state (no session reuse)."""
    if not _CONTEXT:
        _CONTEXT.append(client_context())
    return _CONTEXT[0]


def _server_hostname(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None  # no SNI for an address


class AttestedConnection:
    def __init__(
        self, url: Url, *, verifier: Verifier, policy: Policy, timeout: float = 10.0
    ) -> None:
        self.url = url
        self._verifier = verifier
        self._policy = check_policy(policy)
        self._timeout = timeout
        self._sock: ssl.SSLSocket | None = None
        self._buffer = bytearray()
        self.verified: VerifiedDocument | None = None

    def __enter__(self) -> AttestedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _recv(self) -> bytes:
        assert self._sock is not None
        try:
            return self._sock.recv(PIECE)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"{self.url.authority}: {_error_text(exc)}") from None

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"{self.url.authority}: {_error_text(exc)}") from None

    def open(self) -> VerifiedDocument:
        """Connect, handshake and attest; raises AttestationRefused or TransportError. The
        timeout bounds the connect, the handshake, and the attestation exchange, each as a
        whole."""
        where = self.url.authority
        try:
            raw = socket.create_connection((self.url.host, self.url.port), timeout=self._timeout)
        except ConnectionRefusedError as exc:
            raise NotListeningError(f"{where}: cannot connect: {_error_text(exc)}") from None
        except OSError as exc:
            raise TransportError(f"{where}: cannot connect: {_error_text(exc)}") from None
        # The TLS Finished and the attestation request leave back to back: without NODELAY the
        # second waits for the server's delayed ACK (40 ms) when the server sends no tickets.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock = _shared_context().wrap_socket(
                raw, server_hostname=_server_hostname(self.url.host)
            )
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise TransportError(f"{where}: TLS handshake failed: {_error_text(exc)}") from None
        deadline = Deadline(self._timeout, where)
        sock = self._sock

        def recv() -> bytes:
            sock.settimeout(deadline.left())
            try:
                return self._recv()
            except TransportError:
                deadline.left()  # timed out as a whole: say so
                raise

        try:
            self.verified = attest_connection(
                self._send,
                recv,
                sock.getpeercert(binary_form=True),
                authority=where,
                verifier=self._verifier,
                policy=self._policy,
            )
        finally:
            sock.settimeout(self._timeout)
        return self.verified

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[Header] = (),
        body: bytes | None = None,
    ) -> tuple[ResponseHead, Iterator[bytes]]:
        """Send one request on the attested connection; its answer's head and body pieces."""
        if self.verified is None or self._sock is None:
            raise UsageError("request() before open() attested the connection")
        head = request_head(
            method, target, self.url.authority, headers,
            length=None if body is None else len(body),
        )
        self._send(head + (body or b""))
        response = self._read_head(method)
        return response, self._body(response)

    def _read_head(self, method: str) -> ResponseHead:
        while True:
            try:
                end = find_head_end(self._buffer, MAX_RESPONSE_HEAD)
            except HandshakeError:
                raise TransportError(f"{self.url.authority}: response head too long") from None
            if end >= 0:
                head = bytes(self._buffer[:end])
                del self._buffer[:end]
                try:
                    parsed = parse_response_head(
                        head, request_method=method, limit=MAX_RESPONSE_HEAD, max_lines=1000
                    )
                except HandshakeError as exc:
                    raise TransportError(f"{self.url.authority}: {exc.reason}") from None
                if parsed.status >= 200:
                    return parsed
                continue  # an interim answer (100, 103)
            data = self._recv()
            if not data:
                raise TransportError(f"{self.url.authority}: closed before the response")
            self._buffer += data

    def _take(self) -> bytes:
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        return self._recv()

    def _body(self, response: ResponseHead) -> Iterator[bytes]:
        if response.framing == "none":
            return
        if response.framing == "length":
            remaining = response.length
            while remaining:
                data = self._take()
                if not data:
                    raise TransportError(f"{self.url.authority}: body cut short")
                if len(data) > remaining:
                    self._buffer[:0] = data[remaining:]
                    data = data[:remaining]
                remaining -= len(data)
                yield data
            return
        decoder = ChunkedDecoder() if response.framing == "chunked" else None
        while decoder is None or not decoder.done:
            data = self._take()
            if not data:
                if decoder is None:
                    return
                raise TransportError(f"{self.url.authority}: chunked body cut short")
            if decoder is None:
                yield data
                continue
            try:
                pieces, rest = decoder.feed(data)
            except HandshakeError as exc:
                raise TransportError(f"{self.url.authority}: {exc.reason}") from None
            self._buffer[:0] = rest
            yield from (p for p in pieces if p)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def fetch(
    url: str,
    *,
    verifier: Verifier,
    policy: Policy,
    sink: Callable[[bytes], object],
    method: str = "GET",
    headers: Sequence[Header] = (),
    body: bytes | None = None,
    timeout: float = 10.0,
) -> tuple[ResponseHead, VerifiedDocument]:
    """One attested request: its answer's head, the verified document; the body goes to
    ``sink`` piece by piece."""
    parsed = parse_url(url)
    with AttestedConnection(parsed, verifier=verifier, policy=policy, timeout=timeout) as conn:
        verified = conn.open()
        response, pieces = conn.request(method, parsed.target, headers, body)
        for piece in pieces:
            sink(piece)
    return response, verified
