"""The parent-side client: ask an enclave for an attestation document, and save what it got.

Blocking sockets with a timeout on every operation; one connection may carry several requests.
Every failure is a ``ClientError``; ``EnclaveUnreachableError`` carries the tutorial's hint.

A server that is full, restarting or not listening yet is retried with jittered exponential
backoff until ``timeout`` (counted from the first attempt) runs out: a refused connect, a full
listen queue (EAGAIN on a Unix socket), a ``busy`` answer to the first request, or a connection
dropped while that request was being sent. Nothing else is retried: once the enclave may have
acted on a request, sending it again is the caller's choice.
"""

from __future__ import annotations

import base64
import errno
import json
import random
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from nitro_attest.errors import TransportError
from nitro_attest.safe_write import write_file
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
    """What to check when ``address`` refuses or times out (for vsock: the CID, the port, and
    whether this machine is the enclave's parent)."""
    if address.scheme == "vsock":
        return (
            "is the enclave running? check `nitro-cli describe-enclaves` (CID and state) "
            "and start it with ./run.sh"
        )
    return "is the server running? start it with `nitro-attest serve` (or ./run.sh --simulate)"


# connect() errors that mean "not now" rather than "not there": retried until the timeout.
# ENOENT is a Unix socket whose server has not bound it yet (`serve ... &` then `attest`).
RETRY_CONNECT_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EAGAIN, errno.ECONNRESET, errno.ENOENT}
)
# send() errors on a fresh connection: the server closed it (it was full) before our request.
RETRY_SEND_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET})
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
# An attempt that fails with less than this left of the deadline was cut short by it.
_LATE = 0.05


class Backoff:
    """Jittered exponential delays (half fixed, half random) within an overall deadline."""

    def __init__(self, timeout: float, *, rng: random.Random | None = None) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.attempts = 0
        self._step = BACKOFF_FIRST
        self._rng = rng or random.Random()

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it passed)."""
        return self.deadline - time.monotonic()

    def wait(self) -> bool:
        """Sleep before the next attempt; False when the deadline leaves no room for one.

        A delay that would overrun the deadline is cut short, so the last attempt comes just
        before it: the whole timeout is used, and a server that starts late still gets a chance.
        """
        delay = self._step / 2 + self._rng.uniform(0, self._step / 2)
        self._step = min(self._step * 2, BACKOFF_MAX)
        remaining = self.remaining()
        if remaining < 0.02:
            return False
        time.sleep(min(delay, remaining - 0.01))
        return True

    def tried(self) -> str:
        """How long and how many times connecting was tried, for the error message."""
        elapsed = time.monotonic() - self.started
        if self.attempts <= 1:
            return "1 attempt"
        return f"{self.attempts} attempts over {elapsed:.1f}s"


class _Retry(ClientError):
    """A first request the server never acted on; ``final`` is raised if we give up."""

    def __init__(self, final: ClientError) -> None:
        super().__init__(str(final))
        self.final = final


class Connection:
    """One open connection to an enclave server.

    ``timeout`` bounds each socket operation, and also the whole of connecting and the first
    request when the server has to be retried (see the module docstring).
    """

    def __init__(self, address: str | Address, *, timeout: float = 10.0) -> None:
        if isinstance(address, str):
            address = parse_address(address, role="connect")
        self.address = address
        self._timeout = timeout
        self._backoff: Backoff | None = Backoff(timeout)  # None once the first request answered
        self._sock = self._connect()

    def _connect(self) -> socket.socket:
        backoff = self._backoff
        assert backoff is not None
        address = self.address
        while True:
            backoff.attempts += 1
            try:
                return connect(address, timeout=max(0.01, min(self._timeout, backoff.remaining())))
            except TimeoutError:
                raise EnclaveUnreachableError(
                    f"{address}: connection timed out ({backoff.tried()}, timeout "
                    f"{self._timeout:g}s); {unreachable_hint(address)}"
                ) from None
            except OSError as exc:
                if exc.errno in RETRY_CONNECT_ERRNOS and backoff.wait():
                    continue
                reason = (exc.strerror or str(exc)).lower()
                raise EnclaveUnreachableError(
                    f"{address}: {reason} ({backoff.tried()}); {unreachable_hint(address)}"
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
        """Close the connection's socket."""
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
        frame = request.encode()
        refused: _Retry | None = None  # the last "not now" answer, while retrying
        while True:
            try:
                response = self._exchange(frame)
            except _Retry as retry:
                refused = retry
                backoff = self._backoff
                assert backoff is not None
                if not backoff.wait():
                    self._backoff = None
                    raise retry.final from None
                self._sock.close()
                try:
                    self._sock = self._connect()
                except ClientError:
                    self._backoff = None
                    if backoff.remaining() < _LATE:  # the deadline ended it: report the refusal
                        raise retry.final from None
                    raise
                continue
            except ClientError:
                # An attempt after a refusal cut short by the overall deadline (a loaded
                # server answers late): the reason to report is the refusal, not the timeout.
                self._backoff, backoff = None, self._backoff
                if refused is not None and backoff is not None and backoff.remaining() < _LATE:
                    raise refused.final from None
                raise
            except BaseException:
                self._backoff = None  # the first request is over: no retry after this
                raise
            self._backoff = None
            return response

    def _exchange(self, frame: bytes) -> Response:
        first = self._backoff is not None
        if first:  # the first request shares the connect deadline
            assert self._backoff is not None
            self._sock.settimeout(max(0.01, min(self._timeout, self._backoff.remaining())))
        try:
            self._sock.sendall(frame)
        except TimeoutError:
            raise ClientError(f"{self.address}: sending timed out") from None
        except OSError as exc:
            error = ClientError(f"{self.address}: {exc.strerror or exc} while sending")
            if first and exc.errno in RETRY_SEND_ERRNOS:
                assert self._backoff is not None
                error = ClientError(
                    f"{self.address}: the server closed the connection before our request "
                    f"({self._backoff.tried()})"
                )
                raise _Retry(error) from None
            raise error from None
        header = self._recv_exactly(protocol.HEADER_SIZE, "waiting for the response")
        try:
            length = protocol.decode_header(header)
            body = self._recv_exactly(length, "reading the response")
            response = protocol.decode_response(body)
        except ProtocolError as exc:
            raise ClientProtocolError(f"{self.address}: bad response: {exc}") from None
        if first:
            self._sock.settimeout(self._timeout)
        if isinstance(response, ErrorResponse):
            if first and response.code == "busy":
                assert self._backoff is not None
                raise _Retry(
                    EnclaveError(
                        response.code,
                        f"{response.message} ({self.address}: {self._backoff.tried()})",
                    )
                )
            raise EnclaveError(response.code, response.message)
        return response

    def attest(
        self,
        *,
        nonce: bytes | None,
        user_data: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """An attestation document for ``nonce`` (and ``user_data``; ``public_key`` only where
        the server allows caller keys), as the enclave's bytes: verify it before trusting it."""
        response = self.request(
            AttestRequest(nonce=nonce, user_data=user_data, public_key=public_key)
        )
        if not isinstance(response, AttestationResponse):
            raise ClientProtocolError(
                f"{self.address}: expected an attestation, got {response.TYPE}"
            )
        return response.document

    def describe(self) -> DescriptionResponse:
        """The enclave's ``describe`` answer: its NSM description and every PCR, locked or not."""
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
    """One ``describe`` request to the enclave at ``address`` on a connection of its own."""
    with Connection(address, timeout=timeout) as conn:
        return conn.describe()


def save_attestation(out_dir: Path, document: bytes, document_json: dict[str, Any]) -> list[Path]:
    """Write the tutorial's two output files; return their paths.

    Never through a link planted in ``out_dir``, never into a folder another user controls
    (``safe_write``: raises UnsafeFolderError, or OSError).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    dat = write_file(out_dir / DOCUMENT_FILE, base64.b64encode(document) + b"\n")
    decoded = json.dumps(document_json, indent=2).encode() + b"\n"
    js = write_file(out_dir / DOCUMENT_JSON_FILE, decoded)
    return [dat, js]
