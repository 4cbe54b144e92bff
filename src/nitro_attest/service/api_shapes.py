"""The HTTP API's names and shapes: media types, paths and limits, the models FastAPI documents
in /openapi.json, RFC 9457 problem details, and the size-capped body reader."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

EVIDENCE_MEDIA_TYPE = "application/vnd.aws.nitro-enclaves.attestation-document+cose"
"""The raw COSE_Sign1 attestation document, exactly as the NSM returns it (tagged or not)."""
SESSION_MEDIA_TYPE = "application/vnd.veraison.challenge-response-session+json"
DISCOVERY_MEDIA_TYPE = "application/vnd.veraison.discovery+json"
PROBLEM_MEDIA_TYPE = "application/problem+json"
API = "/challenge-response/v1"
MAX_EVIDENCE = 64 * 1024
NONCE_SIZES = (8, 64)
B64URL_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# base64url without padding of 8..64 bytes: 11..86 characters, never 1 mod 4.
NONCE_PATTERN = r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$"
SESSION_PREFIX = f"{API}/session/"


class Evidence(BaseModel):
    type: str
    sha256: str = Field(description="SHA-256 of the submitted bytes, hex (the bytes are not kept)")
    size: int = Field(description="their length in bytes")


class SessionBody(BaseModel):
    nonce: str = Field(description="base64url without padding")
    expiry: str
    accept: list[str]
    state: Literal["waiting", "processing", "complete", "failed"]
    evidence: Evidence | None = None
    result: str | None = Field(None, description="the EAR, a compact JWS")


class Discovery(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    ear_verification_key: dict[str, Any] = Field(alias="ear-verification-key")
    media_types: list[str] = Field(alias="media-types")
    version: str
    state: Literal["READY"]
    service_state: Literal["READY"] = Field(alias="service-state")
    api_endpoints: dict[str, str] = Field(alias="api-endpoints")


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str


class Health(BaseModel):
    status: Literal["ready", "unavailable"]
    reason: str | None = Field(None, description="why the store cannot take a session now")


class SessionResponse(JSONResponse):
    media_type = SESSION_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        # The same compact UTF-8 bytes as Starlette's json.dumps, which spent ~50 us escaping
        # the base64 evidence and the EAR of every completed session (bench/service.py).
        return orjson.dumps(content)


class DiscoveryResponse(JSONResponse):
    media_type = DISCOVERY_MEDIA_TYPE


def problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for c in codes}


async def read_capped(request: Request) -> bytes | None:
    """The body, or None past MAX_EVIDENCE (the declared length is not trusted)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_EVIDENCE:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_EVIDENCE:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes | None:
    if not B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
