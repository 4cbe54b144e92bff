"""KMS's JSON 1.1 protocol: one signed request in, (status, JSON answer) out (served by front.py).

``POST /`` with ``X-Amz-Target: TrentService.<Operation>`` and a JSON body; the answer is JSON
with ``Content-Type: application/x-amz-json-1.1``, errors HTTP 400 ``{"__type", "message"}`` as
KMS sends them. The body is capped before it is read in full (front.py), the SigV4 check runs
on the exact bytes and headers received, and only then is the JSON parsed (strictly: no duplicate
members, no NaN). Requests are handled one at a time on the event loop: the state needs no other
lock, and the work per request is small (the largest, an RSA-4096 GenerateDataKeyPair, ~1 s).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nitro_attest.codec import strict_json
from nitro_attest.kms_emulator.auth import Authenticator, SignedRequest
from nitro_attest.kms_emulator.errors import KmsApiError
from nitro_attest.kms_emulator.operations import Emulator

MAX_BODY_BYTES = 256 * 1024  # the largest legal request (a 32 KiB policy, a document) is far less
TARGET_PREFIX = "TrentService."
CONTENT_TYPES = ("application/x-amz-json-1.1", "application/x-amz-json-1.0")

log = logging.getLogger("nitro_attest.kms_emulator")

# A \u escape of a UTF-16 surrogate: JSON lets one stand alone, and Python then holds a str that
# no UTF-8 encoder takes (a 500 wherever the value is encoded: blob.seal's context, say). Only a
# body holding one is walked (a backslash before "u" may be an escaped backslash).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body (capped before it was read) as a JSON object, read strictly."""
    if not body or body.isspace():  # (not body.strip(), without copying the body)
        return {}
    try:
        value = strict_json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        reason = str(exc)
    except strict_json.DuplicateKeyError as exc:
        reason = f"duplicate member {exc.key[:60]!r}"
    except strict_json.JsonSyntaxError as exc:
        reason = exc.detail
    except strict_json.JsonFormatError as exc:  # NaN, a number out of range, too deep
        reason = exc.message
    else:
        if not isinstance(value, dict):
            raise KmsApiError("SerializationException", "the body must be a JSON object")
        if b"\\" in body and _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(value):
            raise KmsApiError(
                "SerializationException",
                "the body is not valid JSON: a string holds a lone UTF-16 surrogate",
            )
        return value
    raise KmsApiError("SerializationException", f"the body is not valid JSON: {reason}")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string in ``value`` (keys included) cannot be encoded as UTF-8; the depth is
    bounded by strict_json."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


class KmsApp:
    """The protocol around an Emulator and its Authenticator."""

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
            return exc.status, error_body(exc.type_name, exc.message)
        except Exception:  # a bug must not take the emulator down, nor leak a traceback
            log.exception("internal error")
            return 500, error_body("KMSInternalException", "internal error (see the log)")

    def _dispatch(self, request: SignedRequest) -> dict[str, Any]:
        headers = request.header_values()
        principal = self.authenticator.authenticate(request, self.now(), headers)
        target = headers.get("x-amz-target") or ""
        if request.method != "POST" or not target.startswith(TARGET_PREFIX):
            raise KmsApiError("UnknownOperationException", "")
        content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            raise KmsApiError("SerializationException", f"Content-Type must be {CONTENT_TYPES[0]}")
        operation = target[len(TARGET_PREFIX) :]
        params = parse_json(request.body)
        response = self.emulator.call(operation, principal, params)
        log.debug("%s by %s", operation, principal.arn)
        return response


def error_body(type_name: str, message: str) -> bytes:
    """An error as KMS sends it: ``{"__type", "message"}``."""
    return json.dumps({"__type": type_name, "message": message}).encode()
