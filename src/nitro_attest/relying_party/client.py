"""The relying party's side: run a challenge-response session against a verification service and
check the EAR it returns with the service's key, pinned.

Standard library HTTP (urllib) and PyJWT only. The EAR is trusted only after its signature
verifies with a pinned key (``ear_key`` PEM or ``ear_jwks``; ES256/ES384 only), its profile is
EAR's, and its ``eat_nonce`` is this session's nonce: a result for some other session, or a
replayed one, is refused. The nonce is the relying party's own (fresh random bytes sent with
``newSession``), so whoever answers cannot name an old session's nonce and hand back that
session's genuine EAR. The key the service advertises is used only when the caller says so
(``trust_advertised_key``): whoever answers for the service (the parent, a DNS or proxy in the
way) would otherwise pick the key its own affirming EARs verify with. Plain ``http://`` is
refused to anything but loopback (``insecure_http`` to allow it), and a redirect or a session
``Location`` on another origin is never followed.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPMessage
from typing import IO, Any
from urllib.parse import urlencode, urljoin, urlsplit

from nitro_attest.relying_party.ear_check import (
    EAR_ALGS,
    STATUS_RANK,
    load_ear_jwks,
    load_ear_key,
    verify_ear,
)
from nitro_attest.relying_party.errors import (
    EarError,
    ServiceClientError,
    ServiceNotListeningError,
)

MAX_RESPONSE = 1024 * 1024
WELL_KNOWN = "/.well-known/veraison/verification"


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, lowercased host and port (the scheme's default when absent): what a redirect or a
    session ``Location`` must keep."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (localhost or a loopback address): where plain HTTP
    is allowed without ``insecure_http``."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within the origin it was sent to: a redirect elsewhere would
    hand the session (and the choice of service) to whoever answered."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
        headers: HTTPMessage, newurl: str,
    ) -> urllib.request.Request | None:  # fmt: skip
        if origin(newurl) != origin(req.full_url):
            raise ServiceClientError(
                f"{req.full_url}: HTTP {code} redirect to another origin ({newurl}): refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass(frozen=True, slots=True)
class Appraisal:
    """A verified EAR: its worst status, its claims, the token and the session it came from."""

    status: str
    """The worst ``ear.status`` over the submodules."""
    claims: dict[str, Any]
    ear: str
    session_url: str

    @property
    def failed_check(self) -> str | None:
        """The check the service named as failed in the EAR's annotated evidence, if any."""
        for submod in self.claims.get("submods", {}).values():
            error = submod.get("ear.veraison.annotated-evidence", {}).get("error")
            if isinstance(error, dict) and isinstance(error.get("check"), str):
                return str(error["check"])
        return None


class ServiceClient:
    """The verification service's challenge-response API over urllib: discovery, newSession and
    submission, answers size-capped, redirects kept to the service's own origin."""

    def __init__(
        self, base_url: str, *, timeout: float = 10.0, insecure_http: bool = False
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServiceClientError(f"{base_url!r}: expected http(s)://HOST:PORT")
        if parts.scheme == "http" and not insecure_http and not is_loopback(parts.hostname):
            raise ServiceClientError(
                f"{base_url}: plain http:// to another machine lets anyone on the path answer "
                "for the service; use https://, or insecure_http (--insecure-http) to allow it")
        self.base_url = base_url.rstrip("/") + "/"
        self.origin = origin(self.base_url)
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_SameOriginRedirects())

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
            with self._opener.open(request, timeout=self.timeout) as response:
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
        """The well-known discovery document; it must advertise an ES256/ES384 EAR key."""
        data, _ = self._call("GET", urljoin(self.base_url, WELL_KNOWN.lstrip("/")))
        key = data.get("ear-verification-key")
        if not isinstance(key, dict) or key.get("alg") not in EAR_ALGS:
            raise ServiceClientError("discovery: no ES256/ES384 ear-verification-key")
        return data

    def new_session(self, *, nonce: bytes | None = None, nonce_size: int = 32,
                    policy: str | None = None) -> tuple[str, dict[str, Any]]:  # fmt: skip
        """A new session (with ``nonce``, or one of ``nonce_size`` bytes the service picks): its
        URL, on the service's origin, and the session object."""
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
        session_url = urljoin(url, location)
        if origin(session_url) != self.origin:  # the document would go elsewhere
            raise ServiceClientError(
                f"newSession: session Location {session_url} is on another origin: refused")
        return session_url, body

    def submit(self, session_url: str, document: bytes, media_type: str) -> dict[str, Any]:
        """Submit the evidence; the session object with its ``result`` (an EAR) comes back."""
        body, _ = self._call("POST", session_url, body=document, content_type=media_type)
        return body


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


def request_appraisal(
    service_url: str,
    get_document: Callable[[bytes], bytes],
    *,
    policy: str | None = None,
    nonce_size: int = 32,
    timeout: float = 10.0,
    ear_key: bytes | None = None,
    ear_jwks: Mapping[str, Any] | None = None,
    trust_advertised_key: bool = False,
    insecure_http: bool = False,
) -> Appraisal:
    """Challenge-response: a nonce from the service, the document for it from ``get_document``
    (an enclave asked with that nonce), and the EAR back, verified with the pinned key.

    ``ear_key`` (PEM public key) and/or ``ear_jwks`` (a JWK set) pin the service's EAR key; one
    of them is required unless ``trust_advertised_key`` accepts whatever key the service (or
    whoever answers for it) advertises. Production relying parties pin.
    """
    pinned: list[dict[str, Any]] = []
    if ear_key is not None:
        pinned.append(load_ear_key(ear_key))
    if ear_jwks is not None:
        pinned += load_ear_jwks(ear_jwks)
    if not pinned and not trust_advertised_key:
        raise ServiceClientError(
            "no pinned EAR key: give ear_key (PEM) or ear_jwks, or trust_advertised_key=True "
            "to accept whatever key the service advertises")
    client = ServiceClient(service_url, timeout=timeout, insecure_http=insecure_http)
    discovery = _discover_when_listening(client, timeout)
    media_types = discovery.get("media-types")
    if not isinstance(media_types, list) or not media_types:
        raise ServiceClientError("discovery: no media-types")
    # Our own nonce, never the service's pick: whoever answers for the service could otherwise
    # name an old session's nonce and hand back that session's genuine EAR (signed by the pinned
    # key, eat_nonce matching), for a document it never appraised.
    if not 8 <= nonce_size <= 64:
        raise ServiceClientError(f"nonce_size {nonce_size}: must be 8..64 bytes")
    ours = secrets.token_bytes(nonce_size)
    nonce = base64.urlsafe_b64encode(ours).rstrip(b"=").decode()
    session_url, session = client.new_session(nonce=ours, policy=policy)
    if session["nonce"] != nonce:
        raise ServiceClientError(
            "newSession: the session's nonce is not the one we sent: refused (a result for it "
            "could be another session's)")
    document = get_document(ours)
    done = client.submit(session_url, document, str(media_types[0]))
    token = done.get("result")
    if done.get("state") != "complete" or not isinstance(token, str):
        raise ServiceClientError(f"session ended {done.get('state')!r} without a result")
    if pinned:
        try:
            claims = verify_ear(token, pinned, nonce)
        except EarError as exc:
            raise EarError(f"{exc} (pinned EAR key: not the key that signed this EAR)") from None
    else:
        claims = verify_ear(token, discovery["ear-verification-key"], nonce)
    status = max((s["ear.status"] for s in claims["submods"].values()), key=STATUS_RANK.__getitem__)
    return Appraisal(status, claims, token, session_url)
