"""An httpx transport for attested HTTPS: each new connection is attested before it carries a
request, and keeps the certificate it was attested with for its whole life.

    client = httpx.Client(transport=AttestedTransport(policy=Policy(pcr_sets=({0: pcr0},)),
                                                      root=root_pem))

httpcore opens the connections; our network backend wraps each stream so that its TLS upgrade
(``start_tls``) is followed, on that same TLS stream, by the attestation exchange and
``check_document``. httpcore sends the request only when ``start_tls`` returned, so a refused
attestation raises (``AttestationRefused``, a ``VerificationError``) with nothing sent. A pooled
connection is the TLS session that was attested; a reopened one is attested again. The verified
document is available as ``response.extensions["network_stream"].get_extra_info(
"nitro_attestation")``. Needs the ``https`` extra (httpx).
"""

from __future__ import annotations

import socket
import ssl
import typing
from collections.abc import Iterable

import httpcore
import httpx

from nitro_attest.attestation.policy import Policy
from nitro_attest.attestation.verifier import VerifiedDocument, Verifier
from nitro_attest.errors import TransportError, UsageError
from nitro_attest.https.attest import (
    Deadline,
    attestation_request,
    check_document,
    check_policy,
    new_nonce,
    read_document,
)
from nitro_attest.https.client import client_context

_SocketOption = typing.Any
_READ = 64 * 1024


class _AttestedStream(httpcore.NetworkStream):
    """A TLS stream that passed attestation; ``get_extra_info("nitro_attestation")`` tells how."""

    def __init__(self, inner: httpcore.NetworkStream, verified: VerifiedDocument) -> None:
        self._inner = inner
        self.verified = verified

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        raise UsageError("an attested stream is already TLS")

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "nitro_attestation":
            return self.verified
        return self._inner.get_extra_info(info)


class _PlainStream(httpcore.NetworkStream):
    """A connected stream whose TLS upgrade is attested."""

    def __init__(self, inner: httpcore.NetworkStream, owner: AttestedTransport) -> None:
        self._inner = inner
        self._owner = owner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        raise UsageError("attested HTTPS never sends before TLS and attestation")

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            verified = self._owner._attest(tls, server_hostname or "enclave", timeout)
        except BaseException:
            tls.close()
            raise
        return _AttestedStream(tls, verified)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, owner: AttestedTransport) -> None:
        self._owner = owner
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _PlainStream(stream, self._owner)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        return _PlainStream(stream, self._owner)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class AttestedTransport(httpx.HTTPTransport):
    """httpx transport that trusts a server only after a fresh document names its TLS key.

    ``policy`` must hold expected PCRs (``pcr_sets``) and leave ``nonce``/``public_key`` unset;
    ``root`` is a PEM root (the software NSM's) or None for the pinned AWS Nitro root. Only
    ``https://`` URLs are served.
    """

    def __init__(
        self,
        *,
        policy: Policy,
        root: bytes | None = None,
        verifier: Verifier | None = None,
        max_connections: int = 10,
        keepalive_expiry: float = 5.0,
    ) -> None:
        # httpx's default would load the CA store (tens of ms) for a pool replaced below.
        super().__init__(verify=client_context())
        self._policy = check_policy(policy)
        self._verifier = verifier if verifier is not None else Verifier(root_pem=root)
        # httpx builds its own pool in __init__; ours differs only by the network backend and the
        # TLS context (no CA check: the document is the trust). handle_request uses _pool.
        self._pool = httpcore.ConnectionPool(
            ssl_context=client_context(),
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=_Backend(self),
            # TLS Finished, the attestation request and the request itself leave back to back.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on an attested connection (attesting a new one first): nothing of it
        is sent unless the server's document verifies and names its certificate's key."""
        if request.url.scheme != "https":
            raise UsageError(f"{request.url.scheme}:// is not attested: use https://")
        return super().handle_request(request)

    def _attest(
        self, stream: httpcore.NetworkStream, host: str, timeout: float | None
    ) -> VerifiedDocument:
        ssl_object = stream.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(True) if ssl_object else None
        if not certificate:
            raise TransportError(f"{host}: the server sent no certificate")
        nonce = new_nonce()
        authority = f"[{host}]" if ":" in host else host  # httpcore names IPv6 without brackets
        stream.write(attestation_request(authority, nonce), timeout)
        # The timeout bounds the exchange as a whole, not each read a dripping parent keeps alive.
        deadline = Deadline(timeout, host)

        def recv() -> bytes:
            try:
                return stream.read(_READ, deadline.left())
            except httpcore.ReadTimeout:
                raise deadline.expired() from None

        document = read_document(recv)
        return check_document(
            document,
            certificate_der=certificate,
            nonce=nonce,
            verifier=self._verifier,
            policy=self._policy,
            where=f"https://{host}",
        )
