"""The relying party's side: run a challenge-response session against a verification service and
check the EAR it returns with the key the service publishes.

Standard library HTTP (urllib) and PyJWT only. The EAR is trusted only after its signature
verifies with the discovered key (ES256/ES384 only), its profile is EAR's, and its ``eat_nonce``
is this session's nonce: a result for some other session, or a replayed one, is refused.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import jwt
from jwt.algorithms import ECAlgorithm

from nitro_attest.errors import TransportError
from nitro_attest.service.ear import EAR_PROFILE

MAX_RESPONSE = 1024 * 1024
EAR_ALGS = ("ES256", "ES384")
WELL_KNOWN = "/.well-known/veraison/verification"
_RANK = {"affirming": 0, "none": 1, "warning": 2, "contraindicated": 3}


class ServiceClientError(TransportError):
    """The service could not be reached, answered with an error, or sent something unusable."""


class EarError(ServiceClientError):
    """The EAR did not verify: bad signature, wrong profile, or another session's nonce."""


@dataclass(frozen=True, slots=True)
class Appraisal:
    status: str
    """The worst ``ear.status`` over the submodules."""
    claims: dict[str, Any]
    ear: str
    session_url: str

    @property
    def failed_check(self) -> str | None:
        for submod in self.claims.get("submods", {}).values():
            error = submod.get("ear.veraison.annotated-evidence", {}).get("error")
            if isinstance(error, dict) and isinstance(error.get("check"), str):
                return str(error["check"])
        return None


class ServiceNotListeningError(ServiceClientError):
    """The service's address refused the connection: not listening (yet)."""


class ServiceClient:
    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ServiceClientError(f"{base_url!r}: expected http(s)://HOST:PORT")
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout

    def _call(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        expect: int = 200,
    ) -> tuple[dict[str, Any], str]:
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read(MAX_RESPONSE + 1)
                status, location = response.status, response.headers.get("Location", "")
        except urllib.error.HTTPError as exc:
            detail = exc.read(4096).decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("detail", detail)
            raise ServiceClientError(f"{method} {url}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            error = (
                ServiceNotListeningError
                if isinstance(reason, ConnectionRefusedError)
                else ServiceClientError
            )
            raise error(f"{url}: cannot reach the service: {reason}") from None
        if status != expect:
            raise ServiceClientError(f"{method} {url}: HTTP {status}, expected {expect}")
        if len(raw) > MAX_RESPONSE:
            raise ServiceClientError(f"{url}: response larger than {MAX_RESPONSE} bytes")
        try:
            data = json.loads(raw)
        except ValueError:
            raise ServiceClientError(f"{url}: response is not JSON") from None
        if not isinstance(data, dict):
            raise ServiceClientError(f"{url}: response is not a JSON object")
        return data, location

    def discover(self) -> dict[str, Any]:
        data, _ = self._call("GET", urljoin(self.base_url, WELL_KNOWN.lstrip("/")))
        key = data.get("ear-verification-key")
        if not isinstance(key, dict) or key.get("alg") not in EAR_ALGS:
            raise ServiceClientError("discovery: no ES256/ES384 ear-verification-key")
        return data

    def new_session(self, *, nonce: bytes | None = None, nonce_size: int = 32,
                    policy: str | None = None) -> tuple[str, dict[str, Any]]:  # fmt: skip
        query: dict[str, str] = {}
        if nonce is not None:
            query["nonce"] = base64.urlsafe_b64encode(nonce).rstrip(b"=").decode()
        else:
            query["nonceSize"] = str(nonce_size)
        if policy:
            query["policy"] = policy
        url = urljoin(self.base_url, f"challenge-response/v1/newSession?{urlencode(query)}")
        body, location = self._call("POST", url, expect=201)
        if not location or not isinstance(body.get("nonce"), str):
            raise ServiceClientError("newSession: no Location or nonce in the answer")
        return urljoin(url, location), body

    def submit(self, session_url: str, document: bytes, media_type: str) -> dict[str, Any]:
        body, _ = self._call("POST", session_url, body=document, content_type=media_type)
        return body


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_ear(token: str, jwk: dict[str, Any], nonce: str) -> dict[str, Any]:
    """The EAR's claims, once its signature, profile and nonce check out; EarError otherwise."""
    alg = jwk.get("alg")
    if alg not in EAR_ALGS:
        raise EarError(f"verification key algorithm {alg!r} is not ES256 or ES384")
    try:
        key = ECAlgorithm.from_jwk(json.dumps(jwk))
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[str(alg)], options={"require": ["iat"]}  # type: ignore[arg-type]
        )
    except (jwt.PyJWTError, ValueError) as exc:
        raise EarError(f"EAR does not verify: {exc}") from None
    if claims.get("eat_profile") != EAR_PROFILE:
        raise EarError(f"EAR profile is {claims.get('eat_profile')!r}, not {EAR_PROFILE}")
    if claims.get("eat_nonce") != nonce:
        raise EarError("EAR nonce is not this session's nonce (a result for another session)")
    submods = claims.get("submods")
    if not isinstance(submods, dict) or not submods:
        raise EarError("EAR has no submodules")
    for name, submod in submods.items():
        if not isinstance(submod, dict) or submod.get("ear.status") not in _RANK:
            raise EarError(f"EAR submodule {name!r} has no valid ear.status")
    return claims


def _discover_when_listening(client: ServiceClient, timeout: float) -> dict[str, Any]:
    """Discovery, waiting within ``timeout`` for a service that is starting (connection refused,
    as right after `nitro-attest service ... &`); any other failure ends at once."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return client.discover()
        except ServiceNotListeningError:
            if time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def appraise(
    service_url: str,
    get_document: Callable[[bytes], bytes],
    *,
    policy: str | None = None,
    nonce_size: int = 32,
    timeout: float = 10.0,
) -> Appraisal:
    """Challenge-response: a nonce from the service, the document for it from ``get_document``
    (an enclave asked with that nonce), and the EAR back, verified."""
    client = ServiceClient(service_url, timeout=timeout)
    discovery = _discover_when_listening(client, timeout)
    media_types = discovery.get("media-types")
    if not isinstance(media_types, list) or not media_types:
        raise ServiceClientError("discovery: no media-types")
    session_url, session = client.new_session(nonce_size=nonce_size, policy=policy)
    nonce = session["nonce"]
    document = get_document(b64url_decode(nonce))
    done = client.submit(session_url, document, str(media_types[0]))
    token = done.get("result")
    if done.get("state") != "complete" or not isinstance(token, str):
        raise ServiceClientError(f"session ended {done.get('state')!r} without a result")
    claims = verify_ear(token, discovery["ear-verification-key"], nonce)
    status = max((s["ear.status"] for s in claims["submods"].values()), key=_RANK.__getitem__)
    return Appraisal(status, claims, token, session_url)
