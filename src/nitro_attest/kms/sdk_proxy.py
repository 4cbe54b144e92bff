"""``nitro-attest kms proxy``: an in-enclave endpoint for unmodified SDKs (boto3, the AWS
Encryption SDK) that adds the Recipient.

An SDK pointed at ``http://127.0.0.1:PORT`` with any credentials sends plain KMS JSON; for the
five Recipient operations the proxy sends the same body through ``KmsClient`` (a Recipient added,
replacing any the SDK put there; signed with the real credentials; TLS to KMS), opens the envelope
and answers as KMS would without a Recipient, the plaintext filled in. Every other operation is
refused with ``UnsupportedOperationException`` unless named with ``--pass-through`` (then sent
re-signed, without a Recipient): an allowlist, because whoever reaches the port uses the
enclave's credentials, and an operator should say which calls that may be.

It listens on loopback only: the port is for processes inside the enclave. The incoming signature
is not checked (the SDK's credentials are placeholders).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nitro_attest.errors import ConfigurationError, NitroAttestError, TransportError
from nitro_attest.kms.client import (
    MAX_REQUEST_BYTES,
    RECIPIENT_OPERATIONS,
    KmsClient,
    KmsError,
)

LOG = logging.getLogger("nitro_attest.kms.proxy")
_TARGET_PREFIX = "TrentService."
_CONTENT_TYPE = "application/x-amz-json-1.1"


def loopback_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:PORT`` or ``[::1]:PORT`` (``tcp://`` optional); anything off loopback is a
    ConfigurationError."""
    value = text.strip().removeprefix("tcp://")
    host, colon, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
        port = int(port_text)
    except ValueError:
        raise ConfigurationError(f"--listen {text[:60]!r}: expected 127.0.0.1:PORT") from None
    if not colon or not address.is_loopback or not 0 <= port <= 0xFFFF:
        raise ConfigurationError(f"--listen {text[:60]!r}: the KMS proxy listens on loopback "
                                 "only (127.0.0.1:PORT or [::1]:PORT)")
    return str(address), port


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    client: KmsClient
    allowed: frozenset[str]


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive for the SDK
    timeout = 60  # a client silent this long (mid-request or idle between requests) is dropped
    server_version = "nitro-attest-kms-proxy"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is logged by do_POST, without values

    def do_POST(self) -> None:
        started = time.monotonic()
        operation, status = "-", 500
        try:
            operation, body = self._request()
            status, answer = self._forward(operation, body)
        except _Refusal as refusal:
            status, answer = refusal.status, refusal.answer
        self._answer(status, answer)
        LOG.info("kms proxy op=%s status=%d ms=%.1f", operation, status,
                 (time.monotonic() - started) * 1000)

    def _request(self) -> tuple[str, dict[str, Any]]:
        if self.path != "/":
            raise _Refusal(404, "UnknownOperationException", "KMS's JSON protocol posts to /")
        target = self.headers.get("X-Amz-Target", "")
        if not target.startswith(_TARGET_PREFIX):
            raise _Refusal(400, "UnknownOperationException", "no X-Amz-Target: TrentService.*")
        operation = target[len(_TARGET_PREFIX):]
        length_text = self.headers.get("Content-Length", "")
        if "Transfer-Encoding" in self.headers or not length_text.isdigit():
            raise _Refusal(411, "ValidationException", "a Content-Length is required")
        length = int(length_text)
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True
            raise _Refusal(413, "ValidationException", f"request larger than {MAX_REQUEST_BYTES}")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise _Refusal(400, "SerializationException", "the body is not a JSON object")
        return operation, body

    def _forward(self, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if operation not in RECIPIENT_OPERATIONS and operation not in self.server.allowed:
            raise _Refusal(400, "UnsupportedOperationException",
                           f"the enclave's KMS proxy does not forward {operation[:64]} "
                           "(only Recipient operations and --pass-through ones)")
        try:
            result = self.server.client.call(operation, body)
        except KmsError as exc:
            raise _Refusal(exc.status, exc.code, exc.kms_message) from None
        except TransportError as exc:
            raise _Refusal(502, "EnclaveProxyTransportException", str(exc)) from None
        except NitroAttestError as exc:
            raise _Refusal(500, "EnclaveProxyException", str(exc)) from None
        return 200, result.fields

    def _answer(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", _CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class _Refusal(TransportError):
    """The answer the proxy gives instead of KMS's (internal: turned into a JSON error)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.answer = {"__type": code, "message": message}


class KmsProxy:
    """The proxy's HTTP server; ``start`` serves in a thread, ``close`` stops it."""

    def __init__(
        self, client: KmsClient, listen: tuple[str, int], *, pass_through: Iterable[str] = ()
    ) -> None:
        host, port = listen
        if not _is_loopback(host):
            raise ConfigurationError(f"the KMS proxy listens on loopback only, not {host}")
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigurationError(f"--listen {host}:{port}: {exc.strerror or exc}") from None
        self._server.client = client
        self._server.allowed = frozenset(pass_through)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                        name="kms-proxy")
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
