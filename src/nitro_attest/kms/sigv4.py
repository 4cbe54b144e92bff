"""AWS Signature Version 4: sign a request (header or presigned-query form) and check one.

About a hundred lines of hmac and hashlib instead of botocore (~90 MB inside an enclave image).
Checked against every case of AWS's signing test suite (tests/vectors/sigv4).

Paths and query parameters are passed *decoded*; this module percent-encodes them once, as the
canonical request wants (RFC 3986 unreserved characters stay as they are). ``normalize`` removes
dot segments and repeated slashes from the path, as every service but S3 expects.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from nitro_attest.errors import FormatError

ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/([0-9]{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,"
    r"\s*SignedHeaders=([a-z0-9\-;]+),\s*Signature=([0-9a-f]{64})\Z"
)
MAX_AUTHORIZATION = 2048

Header = tuple[str, str]


class SigV4Error(FormatError):
    """An Authorization header that is not a well-formed SigV4 header."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key; ``repr`` never shows the secret or the token."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(access_key_id={self.access_key_id!r}, secret=..., token=...)"


@dataclass(frozen=True, slots=True)
class Authorization:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    access_key_id: str
    date: str  # YYYYMMDD of the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        """The credential scope: ``date/region/service/aws4_request``."""
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def amz_date(when: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ`` in UTC, the form X-Amz-Date takes."""
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def canonical_path(path: str, *, normalize: bool = True) -> str:
    """The canonical URI: ``path`` (decoded) normalized if asked, each segment encoded once."""
    if path == "/":  # every JSON-protocol request (KMS's): nothing to normalize or encode
        return path
    if normalize:
        segments: list[str] = []
        for segment in path.split("/"):
            if segment in ("", "."):
                continue
            if segment == "..":
                if segments:
                    segments.pop()
                continue
            segments.append(segment)
        trailing = "/" if path.endswith("/") and segments else ""
        path = "/" + "/".join(segments) + trailing
    return "/".join(_encode(segment) for segment in path.split("/")) or "/"


def canonical_query(query: Sequence[Header]) -> str:
    """The canonical query string: decoded pairs encoded, sorted, joined with ``&``."""
    if not query:
        return ""
    return "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in query))


def canonical_headers(headers: Sequence[Header], signed: Sequence[str]) -> str:
    """The canonical headers block for the ``signed`` names (lower-case, sorted): values
    trimmed, inner spaces collapsed, repeated headers joined with commas."""
    values = _header_values(headers)
    return "".join([f"{name}:{values.get(name, '')}\n" for name in signed])


def _header_values(headers: Sequence[Header]) -> dict[str, str]:
    """Each header's canonical value by lower-case name, repeated ones joined with commas."""
    values: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        value = " ".join(value.split())  # trimmed, runs of white space made one space
        values[key] = f"{values[key]},{value}" if key in values else value
    return values


def canonical_request(
    method: str,
    path: str,
    query: Sequence[Header],
    headers: Sequence[Header],
    signed: Sequence[str],
    payload_hash: str,
    *,
    normalize: bool = True,
) -> str:
    """The canonical request: method, path, query, headers, signed header names, payload hash."""
    return "\n".join(
        (
            method.upper(),
            canonical_path(path, normalize=normalize),
            canonical_query(query),
            canonical_headers(headers, signed),
            ";".join(signed),
            payload_hash,
        )
    )


def string_to_sign(date_time: str, scope: str, request: str) -> str:
    """The string to sign: algorithm, date, scope and the canonical request's SHA-256."""
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{date_time}\n{scope}\n{digest}"


@functools.lru_cache(maxsize=16)
def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """The key derived for one day, region and service (the HMAC chain of SigV4). Kept for the
    few last (secret, day, region, service): a signer asks for the same one all day, four HMACs
    saved a request; keyed on every input, so a new secret or day derives afresh."""
    key = ("AWS4" + secret_access_key).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode("utf-8"), "sha256")
    return key


def _signature(key: bytes, text: str) -> str:
    return hmac.digest(key, text.encode("utf-8"), "sha256").hex()


def sign_request(
    method: str,
    path: str,
    query: Sequence[Header],
    headers: Sequence[Header],
    body: bytes,
    credentials: Credentials,
    *,
    region: str,
    service: str,
    when: datetime,
    sign_body: bool = False,
    normalize: bool = True,
    omit_session_token: bool = False,
) -> list[Header]:
    """The headers to add for the Authorization-header form: X-Amz-Date, X-Amz-Security-Token when
    there is a token (signed unless ``omit_session_token``), X-Amz-Content-Sha256 when
    ``sign_body``, then Authorization. ``headers`` must already hold Host."""
    stamp = amz_date(when)
    payload_hash = hashlib.sha256(body).hexdigest()
    added: list[Header] = [("X-Amz-Date", stamp)]
    if sign_body:
        added.append(("X-Amz-Content-Sha256", payload_hash))
    token = credentials.session_token
    if token and not omit_session_token:
        added.append(("X-Amz-Security-Token", token))
    values = _header_values([*headers, *added])  # every header signed
    signed = sorted(values)
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    request = "\n".join((  # canonical_request, the header names lowered and sorted once
        method.upper(),
        canonical_path(path, normalize=normalize),
        canonical_query(query),
        "".join([f"{name}:{values[name]}\n" for name in signed]),
        ";".join(signed),
        payload_hash,
    ))
    key = signing_key(credentials.secret_access_key, stamp[:8], region, service)
    signature = _signature(key, string_to_sign(stamp, scope, request))
    if token and omit_session_token:
        added.append(("X-Amz-Security-Token", token))
    added.append(
        (
            "Authorization",
            f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={signature}",
        )
    )
    return added


def presign_query(
    method: str,
    path: str,
    query: Sequence[Header],
    headers: Sequence[Header],
    credentials: Credentials,
    *,
    region: str,
    service: str,
    when: datetime,
    expires: int,
    payload_hash: str = hashlib.sha256(b"").hexdigest(),
    normalize: bool = True,
    omit_session_token: bool = False,
) -> list[Header]:
    """The query parameters to add for the presigned-URL form, X-Amz-Signature last."""
    stamp = amz_date(when)
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    signed = sorted({name.lower() for name, _ in headers})
    added: list[Header] = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{credentials.access_key_id}/{scope}"),
        ("X-Amz-Date", stamp),
        ("X-Amz-SignedHeaders", ";".join(signed)),
        ("X-Amz-Expires", str(expires)),
    ]
    token = credentials.session_token
    if token and not omit_session_token:
        added.append(("X-Amz-Security-Token", token))
    request = canonical_request(
        method, path, [*query, *added], headers, signed, payload_hash, normalize=normalize
    )
    key = signing_key(credentials.secret_access_key, stamp[:8], region, service)
    if token and omit_session_token:
        added.append(("X-Amz-Security-Token", token))
    added.append(("X-Amz-Signature", _signature(key, string_to_sign(stamp, scope, request))))
    return added


def parse_authorization(value: str) -> Authorization:
    """Read an Authorization header; anything but SigV4's exact shape is a ``SigV4Error``."""
    if len(value) > MAX_AUTHORIZATION:
        raise SigV4Error("Authorization header too long")
    match = _AUTH.match(value.strip())
    if match is None:
        raise SigV4Error("Authorization header is not AWS4-HMAC-SHA256 Credential=..., "
                         "SignedHeaders=..., Signature=...")
    key_id, date, region, service, signed, signature = match.groups()
    names = tuple(signed.split(";"))
    if list(names) != sorted(set(names)) or "host" not in names:
        raise SigV4Error("SignedHeaders must be sorted, unique and include host")
    return Authorization(key_id, date, region, service, names, signature)


def expected_signature(
    method: str,
    path: str,
    query: Sequence[Header],
    headers: Sequence[Header],
    body: bytes,
    secret_access_key: str,
    auth: Authorization,
    date_time: str,
    *,
    normalize: bool = True,
) -> str:
    """The signature a request with these parts must carry (compare with
    ``hmac.compare_digest``). ``date_time`` is the request's X-Amz-Date; the caller checks that it
    starts with ``auth.date`` and is recent."""
    payload_hash = hashlib.sha256(body).hexdigest()
    request = canonical_request(
        method, path, query, headers, auth.signed_headers, payload_hash, normalize=normalize
    )
    key = signing_key(secret_access_key, auth.date, auth.region, auth.service)
    return _signature(key, string_to_sign(date_time, auth.scope, request))
