"""HTTPS to KMS with TLS ending in the enclave: stdlib ``http.client`` and ``ssl`` over a socket
the route dials (no botocore, no httpx in the enclave).

The certificate is checked against the CA bundle the image carries (``--ca-bundle``; default
certifi's, from the ``kms`` extra), with the endpoint's host name, before a byte of the request is
written: ``connect`` completes the handshake first. One ``Connection`` is one kept-alive
connection; a request on a connection the far side has meanwhile closed is sent again once on a
fresh one. Answers are capped (``MAX_RESPONSE_BYTES``) before they are read whole.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nitro_attest.errors import ConfigurationError, TransportError
from nitro_attest.kms.route import Route

MAX_RESPONSE_BYTES = 256 * 1024  # KMS's largest answer (a key pair, base64) is ~10 KiB
DEFAULT_TIMEOUT = 10.0
# A kept-alive connection the far side closed meanwhile: the request is sent again, once, fresh.
_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
           ssl.SSLEOFError, ssl.SSLZeroReturnError)
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
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


class _Http(http.client.HTTPConnection):
    """http.client over the route's socket, TLS handshake done inside ``connect``."""

    def __init__(
        self, endpoint: Endpoint, route: Route, context: ssl.SSLContext | None, timeout: float
    ) -> None:
        super().__init__(endpoint.host, endpoint.port, timeout=timeout)
        self._route = route
        self._context = context

    def connect(self) -> None:
        sock = self._route.dial(self.host, self.port, timeout=self.timeout or DEFAULT_TIMEOUT)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._context is not None:
            try:
                sock = self._context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock


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
        self._http = _Http(endpoint, route, context if endpoint.tls else None, timeout)

    def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> Answer:
        """Send and read the whole answer. ``headers`` must hold Host (what was signed)."""
        reused = self._http.sock is not None
        try:
            return self._exchange(method, path, headers, body)
        except _CLOSED:
            self.close()
            if not reused:
                raise TransportError(f"{self.endpoint} closed the connection without answering"
                                     ) from None
        try:  # the kept-alive connection had been closed by the far side: once more, fresh
            return self._exchange(method, path, headers, body)
        except _CLOSED:
            self.close()
            raise TransportError(f"{self.endpoint} closed the connection without answering"
                                 ) from None

    def _exchange(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> Answer:
        conn = self._http
        try:
            if conn.sock is None:
                conn.connect()
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body or method in ("POST", "PUT"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            length = response.getheader("Content-Length")
            if length is not None and (not length.isdigit() or int(length) > MAX_RESPONSE_BYTES):
                raise TransportError(f"{self.endpoint}: answer of {length[:20]} bytes refused "
                                     f"(at most {MAX_RESPONSE_BYTES})")
            data = response.read(MAX_RESPONSE_BYTES + 1)
            if len(data) > MAX_RESPONSE_BYTES:
                raise TransportError(f"{self.endpoint}: answer longer than {MAX_RESPONSE_BYTES} "
                                     "bytes")
            answer = Answer(
                response.status,
                {name.lower(): value for name, value in response.getheaders()},
                data,
            )
            if response.will_close:
                self.close()
            return answer
        except _CLOSED:
            raise
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise TransportError(f"TLS to {self.endpoint}: the certificate is not trusted "
                                 f"({exc.verify_message}); nothing was sent") from None
        except ssl.SSLError as exc:
            self.close()
            raise TransportError(f"TLS to {self.endpoint}: {exc.reason or exc}") from None
        except TransportError:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise TransportError(f"{self.endpoint}: {text}") from None

    def close(self) -> None:
        self._http.close()
