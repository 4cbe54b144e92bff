"""The HTTP face: KMS's JSON 1.1 protocol as a small ASGI app (run by uvicorn, runner.py).

``POST /`` with ``X-Amz-Target: TrentService.<Operation>`` and a JSON body; the answer is JSON
with ``Content-Type: application/x-amz-json-1.1``, errors HTTP 400 ``{"__type", "message"}`` as
KMS sends them. The body is capped before it is read in full, the SigV4 check runs on the exact
bytes and headers received, and only then is the JSON parsed (strictly: no duplicate members, no
NaN). Requests are handled one at a time on the event loop: the state needs no other lock, and
the work per request is small (the largest, an RSA-4096 GenerateDataKeyPair, is ~1 s).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from nitro_attest.kms_emulator.auth import Authenticator, SignedRequest
from nitro_attest.kms_emulator.errors import KmsApiError
from nitro_attest.kms_emulator.operations import Emulator

MAX_BODY_BYTES = 256 * 1024  # the largest legal request (a 32 KiB policy, a document) is far less
TARGET_PREFIX = "TrentService."
CONTENT_TYPES = ("application/x-amz-json-1.1", "application/x-amz-json-1.0")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("nitro_attest.kms_emulator")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = (
            json.loads(
                body.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_reject_constant,
            )
            if body.strip()
            else {}
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise KmsApiError("SerializationException", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise KmsApiError("SerializationException", "the body must be a JSON object")
    return value


class KmsApp:
    """An ASGI application around an Emulator and its Authenticator."""

    def __init__(
        self,
        emulator: Emulator,
        authenticator: Authenticator,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.emulator = emulator
        self.authenticator = authenticator
        self.now = now

    def handle(self, request: SignedRequest) -> tuple[int, bytes]:
        """One request in, (status, JSON body) out; never raises."""
        try:
            return 200, json.dumps(self._dispatch(request)).encode()
        except KmsApiError as exc:
            if exc.type_name != "AccessDeniedException":  # logged with its reason by access
                log.info("%s: %s", exc.type_name, exc.message)
            return exc.status, json.dumps(
                {"__type": exc.type_name, "message": exc.message}
            ).encode()
        except Exception:  # a bug must not take the emulator down, nor leak a traceback
            log.exception("internal error")
            body = {"__type": "KMSInternalException", "message": "internal error (see the log)"}
            return 500, json.dumps(body).encode()

    def _dispatch(self, request: SignedRequest) -> dict[str, Any]:
        principal = self.authenticator.authenticate(request, self.now())
        target = request.header("x-amz-target") or ""
        if request.method != "POST" or not target.startswith(TARGET_PREFIX):
            raise KmsApiError("UnknownOperationException", "")
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            raise KmsApiError("SerializationException", f"Content-Type must be {CONTENT_TYPES[0]}")
        operation = target[len(TARGET_PREFIX) :]
        params = parse_json(request.body)
        response = self.emulator.call(operation, principal, params)
        log.debug("%s by %s", operation, principal.arn)
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            body = await _read_body(scope, receive)
        except KmsApiError as exc:
            status = exc.status
            payload = json.dumps({"__type": exc.type_name, "message": exc.message}).encode()
        else:
            request = SignedRequest(
                method=scope["method"],
                path=scope["path"],
                query=parse_qsl(
                    scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
                ),
                headers=[
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
                ],
                body=body,
            )
            status, payload = self.handle(request)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/x-amz-json-1.1"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-amzn-requestid", str(uuid.uuid4()).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _too_large() -> KmsApiError:
    return KmsApiError(
        "SerializationException", f"request body larger than {MAX_BODY_BYTES} bytes", status=413
    )


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length" and (
            not value.isdigit() or int(value) > MAX_BODY_BYTES
        ):
            raise _too_large()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
