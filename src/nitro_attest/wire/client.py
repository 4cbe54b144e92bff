"""The parent-side client: ask an enclave for an attestation document, and save what it got.

Blocking sockets with a timeout on every operation; one connection may carry several requests.
Every failure is a ``ClientError``; ``EnclaveUnreachableError`` carries the tutorial's hint.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import TracebackType
from typing import Any

from nitro_attest.errors import TransportError
from nitro_attest.wire import protocol
from nitro_attest.wire.protocol import (
    AttestationResponse,
    AttestRequest,
    DescribeRequest,
    DescriptionResponse,
    ErrorResponse,
    ProtocolError,
    Request,
    Response,
)
from nitro_attest.wire.transport import Address, connect, parse_address

DOCUMENT_FILE = "attestation-document.dat"
DOCUMENT_JSON_FILE = "attestation-document-json.json"


class ClientError(TransportError):
    """The attestation request failed before any document could be verified."""


class EnclaveUnreachableError(ClientError):
    """Nothing answered at the address (refused, timed out, no such socket)."""


class ClientProtocolError(ClientError):
    """The enclave's answer broke the protocol."""


class EnclaveError(ClientError):
    """The enclave answered with a typed error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"enclave error {code}: {message}")
        self.code = code
        self.remote_message = message


def unreachable_hint(address: Address) -> str:
    if address.scheme == "vsock":
        return (
            "is the enclave running? check `nitro-cli describe-enclaves` (CID and state) "
            "and start it with ./run.sh"
        )
    return "is the server running? start it with `nitro-attest serve` (or ./run.sh --simulate)"


class Connection:
    """One open connection to an enclave server."""

    def __init__(self, address: str | Address, *, timeout: float = 10.0) -> None:
        if isinstance(address, str):
            address = parse_address(address, role="connect")
        self.address = address
        self._timeout = timeout
        try:
            self._sock = connect(address, timeout=timeout)
        except TimeoutError:
            raise EnclaveUnreachableError(
                f"{address}: connection timed out after {timeout:g}s; {unreachable_hint(address)}"
            ) from None
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise EnclaveUnreachableError(
                f"{address}: {reason}; {unreachable_hint(address)}"
            ) from None

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _recv_exactly(self, n: int, what: str) -> bytes:
        chunks: list[bytes] = []
        remaining = n
        while remaining:
            try:
                chunk = self._sock.recv(min(remaining, 65536))
            except TimeoutError:
                raise ClientError(
                    f"{self.address}: no answer within {self._timeout:g}s ({what})"
                ) from None
            except OSError as exc:
                raise ClientError(f"{self.address}: {exc.strerror or exc} ({what})") from None
            if not chunk:
                raise ClientProtocolError(
                    f"{self.address}: connection closed by the enclave ({what})"
                )
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def request(self, request: Request) -> Response:
        """Send one request and return the response; an ErrorResponse raises EnclaveError."""
        try:
            self._sock.sendall(request.encode())
        except TimeoutError:
            raise ClientError(f"{self.address}: sending timed out") from None
        except OSError as exc:
            raise ClientError(f"{self.address}: {exc.strerror or exc} while sending") from None
        header = self._recv_exactly(protocol.HEADER_SIZE, "waiting for the response")
        try:
            length = protocol.decode_header(header)
            body = self._recv_exactly(length, "reading the response")
            response = protocol.decode_response(body)
        except ProtocolError as exc:
            raise ClientProtocolError(f"{self.address}: bad response: {exc}") from None
        if isinstance(response, ErrorResponse):
            raise EnclaveError(response.code, response.message)
        return response

    def attest(
        self,
        *,
        nonce: bytes | None,
        user_data: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        response = self.request(
            AttestRequest(nonce=nonce, user_data=user_data, public_key=public_key)
        )
        if not isinstance(response, AttestationResponse):
            raise ClientProtocolError(
                f"{self.address}: expected an attestation, got {response.TYPE}"
            )
        return response.document

    def describe(self) -> DescriptionResponse:
        response = self.request(DescribeRequest())
        if not isinstance(response, DescriptionResponse):
            raise ClientProtocolError(f"{self.address}: expected description, got {response.TYPE}")
        return response


def request_attestation(
    address: str,
    *,
    nonce: bytes,
    user_data: bytes | None = None,
    public_key: bytes | None = None,
    timeout: float = 10.0,
) -> bytes:
    """Ask the enclave at ``address`` for a document over these fields; return its raw bytes.

    The document is not verified here: pass it to ``Verifier.verify`` with the same nonce.
    """
    if not nonce:
        raise ValueError("a non-empty nonce is required: it is what proves the document is fresh")
    with Connection(parse_address(address, role="connect"), timeout=timeout) as conn:
        return conn.attest(nonce=nonce, user_data=user_data, public_key=public_key)


def describe_enclave(address: str, *, timeout: float = 10.0) -> DescriptionResponse:
    with Connection(address, timeout=timeout) as conn:
        return conn.describe()


def save_attestation(out_dir: Path, document: bytes, document_json: dict[str, Any]) -> list[Path]:
    """Write the tutorial's two output files; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dat = out_dir / DOCUMENT_FILE
    js = out_dir / DOCUMENT_JSON_FILE
    dat.write_text(base64.b64encode(document).decode("ascii") + "\n")
    js.write_text(json.dumps(document_json, indent=2) + "\n")
    return [dat, js]
