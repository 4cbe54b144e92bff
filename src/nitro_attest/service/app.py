"""The ASGI app: Veraison's challenge-response and discovery APIs over a session store.

Nothing here is process-local state that a replica would need from another: sessions live in the
store, the signing key and policies file are the same on every replica. The Verifier is per
process (warm certificate cache); a real-sized document is appraised on the event loop, a larger
one in one thread beside it (INLINE_APPRAISAL_MAX says why).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from nitro_attest.attestation.verifier import Verifier
from nitro_attest.errors import PolicyError
from nitro_attest.server_limits import SERVICE_LIMITS
from nitro_attest.service.api_shapes import (
    API,
    EVIDENCE_MEDIA_TYPE,
    MAX_EVIDENCE,
    NONCE_PATTERN,
    NONCE_SIZES,
    Discovery,
    DiscoveryResponse,
    Health,
    SessionBody,
    SessionResponse,
    b64url,
    b64url_decode,
    problem,
    problems,
    read_capped,
)
from nitro_attest.service.appraisal import appraise_evidence
from nitro_attest.service.ear import EarSigner, ear_claims
from nitro_attest.service.fastpath import FastPath, ServiceApp
from nitro_attest.service.metrics import Metrics
from nitro_attest.service.policies import PolicySet, load_policies
from nitro_attest.service.sessions import Session, SessionStore, StoreError, StoreFullError
from nitro_attest.version import __version__

log = logging.getLogger("nitro_attest.service")

T = TypeVar("T")
# Appraised on the event loop up to this size, in the worker's thread above it. The appraisal
# holds the GIL (cryptography keeps it during ECDSA), so for one shorter than the interpreter's
# 5 ms switch interval a thread frees the loop no sooner, and the hand-off cost about 0.1 ms of
# CPU per session: ~13 futex calls and two eventfd wake-ups (strace, bench/service.py). Every
# real document we hold is under 7.6 KiB (4 CA certificates, ~0.7 ms); a larger one can carry a
# longer chain to check, so it goes to the thread, where the loop gets the GIL every 5 ms.
INLINE_APPRAISAL_MAX = 8 * 1024
_NEW_SESSION_PARAMS = {"nonce", "nonceSize", "policy"}


@dataclass
class ServiceConfig:
    policies_path: Path
    signer: EarSigner
    store_factory: Callable[[], SessionStore]
    root_pem: bytes | None = None
    session_ttl: float = 300.0
    clock_skew: float = 60.0
    """How far the enclave's (NSM's) clock may be behind the service's: a document made before
    its session began, less this, is contraindicated (an old document, replayed)."""
    body_timeout: float = SERVICE_LIMITS.header_timeout  # the evidence body, once the head came
    handle_sighup: bool = False
    log_format: str = "text"  # or "json" (nitro_attest.logs); times in UTC either way
    policies: PolicySet | None = None
    """Policies already loaded (a supervisor's last good ones, for a worker it restarts); None:
    read ``policies_path`` at start."""

    @property
    def nonce_reuse_window(self) -> float:
        """How long a relying party's nonce is remembered. A document affirmed in a session was
        made at most session_ttl + skew after the session began (its NSM clock may run ahead by
        the skew); a later session with the same nonce accepts it only if it began at most skew
        after the document: so a reuse inside ttl + 2 * skew could take the same document again,
        and one after it cannot. Longer records would add nothing but memory."""
        return self.session_ttl + 2 * self.clock_skew


class ServiceState:
    """What one worker holds: its Verifier, the signer, the store, the current policies."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.policies: PolicySet = (
            config.policies if config.policies is not None else load_policies(config.policies_path)
        )
        self.verifier = Verifier(root_pem=config.root_pem)
        self.signer = config.signer
        self.store: SessionStore = config.store_factory()
        self.metrics = Metrics()
        # For documents too large to be a real NSM's (see INLINE_APPRAISAL_MAX): one thread per
        # worker, not the default pool's several, which fight over the GIL.
        self.appraiser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="appraisal")

    def reload(self) -> bool:
        try:
            policies = load_policies(self.config.policies_path)
        except PolicyError as exc:
            self.metrics.reloads.labels("failed").inc()
            log.error("policies reload failed, keeping the previous policies: %s", exc)
            return False
        self.policies = policies
        self.metrics.reloads.labels("ok").inc()
        log.info("policies reloaded (sha256 %s, %d policies)", policies.sha256[:16],
                 len(policies.policies))  # fmt: skip
        return True


def create_app(config: ServiceConfig) -> FastAPI:
    state = ServiceState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if config.handle_sighup:
            loop.add_signal_handler(signal.SIGHUP, state.reload)
        reason = await state.store.health()
        if reason is not None:  # named now, not first as a client's 503
            log.warning("session store not ready: %s", reason)
        try:
            yield
        finally:
            if config.handle_sighup:
                loop.remove_signal_handler(signal.SIGHUP)
            await state.store.close()
            state.appraiser.shutdown(wait=False)

    app = ServiceApp(
        title="nitro-attest verification service",
        version=__version__,
        description="Veraison challenge-response API for AWS Nitro attestation documents; "
        "results are EAR (draft-ietf-rats-ear) signed JWTs.",
        lifespan=lifespan,
    )
    app.state.service = state

    # The hot paths' series, resolved once (labels() takes a lock and builds a key per call).
    sessions_created = state.metrics.sessions
    new_session_latency = state.metrics.latency.labels("newSession")
    evidence_latency = state.metrics.latency.labels("evidence")
    results_by_status: dict[str, Any] = {}

    def result_counter(status: str) -> Any:
        child = results_by_status.get(status)
        if child is None:  # bounded: the three EAR statuses
            child = results_by_status[status] = state.metrics.results.labels(status)
        return child

    async def store_call(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except StoreError:
            state.metrics.store_errors.inc()
            raise

    @app.exception_handler(StoreError)
    async def _store_down(request: Request, exc: StoreError) -> JSONResponse:
        log.warning("session store error: %s", exc)
        # The cause goes to the log; a client learns only whether the store is full (its own
        # retry can wait) or unavailable, not the store's address or its error text.
        detail = "the session store is full" if isinstance(exc, StoreFullError) else (
            "the session store is unavailable")
        return problem(503, "Service Unavailable", detail)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem(400, "Bad Request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = problem(exc.status_code, "Error", str(exc.detail))
        if exc.status_code == 405:  # each method is its own route: Allow names them all
            methods: set[str] = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] is not Match.NONE:
                    methods |= getattr(route, "methods", None) or set()
            response.headers["Allow"] = ", ".join(sorted(methods - {"HEAD"}))
        return response

    @app.get(
        "/.well-known/veraison/verification",
        response_model=Discovery,
        response_class=DiscoveryResponse,
    )
    async def discovery() -> DiscoveryResponse:
        return DiscoveryResponse({
            "ear-verification-key": state.signer.public_jwk(),
            "media-types": [EVIDENCE_MEDIA_TYPE],
            "version": __version__,
            "state": "READY",
            "service-state": "READY",
            "api-endpoints": {
                "newChallengeResponseSession": f"{API}/newSession",
            },
        })

    @app.post(
        f"{API}/newSession",
        status_code=201,
        response_model=SessionBody,
        response_class=SessionResponse,
        responses=problems(400, 409, 503),
        openapi_extra={"parameters": [
            {"name": "nonceSize", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": NONCE_SIZES[0],
                        "maximum": NONCE_SIZES[1]}},
            {"name": "nonce", "in": "query", "required": False,
             "description": "relying-party nonce, base64url without padding (8..64 bytes)",
             "schema": {"type": "string", "minLength": 11, "maxLength": 86,
                        "pattern": NONCE_PATTERN}},
            {"name": "policy", "in": "query", "required": False, "schema": {"type": "string"}},
        ]},
    )  # fmt: skip
    async def new_session(request: Request) -> Response:
        # Query parsed by hand (documented in openapi_extra): this is a hot path, and
        # FastAPI's parameter machinery costs more here than the rest of the handler.
        started = time.perf_counter()
        # As Starlette's QueryParams parses it, without building its multidict.
        pairs = parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs) or query.keys() - _NEW_SESSION_PARAMS:
            return problem(400, "Bad Request", "repeated or unknown query parameter")
        nonce, policy, size_text = query.get("nonce"), query.get("policy"), query.get("nonceSize")
        if nonce is not None and size_text is not None:
            return problem(400, "Bad Request", "give nonce or nonceSize, not both")
        nonce_size = 32
        if size_text is not None:
            if not size_text.isascii() or not size_text.isdigit() or len(size_text) > 3:
                return problem(400, "Bad Request", "nonceSize must be an integer 8..64")
            nonce_size = int(size_text)
            if not NONCE_SIZES[0] <= nonce_size <= NONCE_SIZES[1]:
                return problem(400, "Bad Request", "nonceSize must be an integer 8..64")
        chosen = state.policies.get(policy)
        if chosen is None:
            return problem(400, "Bad Request", f"no policy named {policy!r}")
        if nonce is not None:
            raw = b64url_decode(nonce)
            if raw is None or not NONCE_SIZES[0] <= len(raw) <= NONCE_SIZES[1]:
                return problem(400, "Bad Request",
                               "nonce must be 8..64 bytes, base64url without padding")  # fmt: skip
            # A relying party's nonce must be fresh too: the same nonce twice would let an old
            # document (made for the first session) be appraised again in the second.
            digest: str | None = hashlib.sha256(raw).hexdigest()
        else:
            raw, digest = secrets.token_bytes(nonce_size), None
        now = time.time()
        session = Session(
            id=str(uuid.uuid4()),
            nonce=b64url(raw),
            expires_at=now + config.session_ttl,
            created_at=now,
            policy=chosen.name,
            accept=(EVIDENCE_MEDIA_TYPE,),
        )
        created = state.store.create(session, nonce_digest=digest,
                                     nonce_ttl=config.nonce_reuse_window)  # fmt: skip
        if not await store_call(created):
            return problem(409, "Conflict", "this nonce was already used; pick a fresh one")
        sessions_created.inc()
        new_session_latency.observe(time.perf_counter() - started)
        return SessionResponse(
            session.to_api(), status_code=201, headers={"Location": f"{API}/session/{session.id}"}
        )

    @app.get(
        f"{API}/session/{{session_id}}",
        response_model=SessionBody,
        response_class=SessionResponse,
        responses=problems(404, 503),
    )
    async def get_session(session_id: str) -> Response:
        session = await _find(session_id)
        if session is None:
            return problem(404, "Not Found", "no such session (unknown or expired)")
        return SessionResponse(session.to_api())

    @app.delete(f"{API}/session/{{session_id}}", status_code=204,
                responses=problems(404, 503))  # fmt: skip
    async def delete_session(session_id: str) -> Response:
        if len(session_id) > 64 or not await store_call(state.store.delete(session_id)):
            return problem(404, "Not Found", "no such session (unknown or expired)")
        return Response(status_code=204)

    @app.post(
        f"{API}/session/{{session_id}}",
        response_model=SessionBody,
        response_class=SessionResponse,
        responses=problems(400, 404, 408, 409, 413, 415, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {EVIDENCE_MEDIA_TYPE: {"schema": {
                    "type": "string", "format": "binary", "minLength": 1}}},
            }
        },
    )  # fmt: skip
    async def submit_evidence(session_id: str, request: Request) -> Response:
        started = time.perf_counter()
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != EVIDENCE_MEDIA_TYPE:
            return problem(415, "Unsupported Media Type", f"evidence must be {EVIDENCE_MEDIA_TYPE}")
        try:
            async with asyncio.timeout(config.body_timeout):
                body = await read_capped(request)
        except TimeoutError:  # a trickled upload must not hold a connection slot for ever
            return problem(408, "Request Timeout",
                           f"evidence not received within {config.body_timeout:g} s")  # fmt: skip
        if body is None:
            return problem(413, "Content Too Large", f"evidence over {MAX_EVIDENCE} bytes")
        if not body:
            return problem(400, "Bad Request", "empty evidence")
        if len(session_id) > 64:
            return problem(404, "Not Found", "no such session (unknown or expired)")
        # A session already settled is refused here, before any appraisal. One still waiting is
        # appraised, and the outcome is stored only if it is still waiting then (settle, one
        # atomic step in the store): of concurrent submissions, each is appraised and one wins.
        outcome, session = await store_call(state.store.take(session_id))
        if outcome == "taken":
            return problem(409, "Conflict", "this session already took its evidence")
        if session is None:
            return problem(404, "Not Found", "no such session (unknown or expired)")
        # What the result needs of the evidence, not the bytes: 64 KiB of junk per session
        # would otherwise sit in the store for the session's lifetime.
        digest = hashlib.sha256(body).hexdigest()  # once: the EAR repeats it
        evidence = {"type": EVIDENCE_MEDIA_TYPE, "sha256": digest, "size": len(body)}
        try:
            if len(body) <= INLINE_APPRAISAL_MAX:
                ear, status = _appraise_and_sign(session, body, digest)
            else:
                ear, status = await asyncio.get_running_loop().run_in_executor(
                    state.appraiser, _appraise_and_sign, session, body, digest
                )
        except Exception:
            log.exception("appraisal failed unexpectedly for session %s", session_id)
            await store_call(state.store.settle(session.finished("failed", evidence, None)))
            raise
        done = session.finished("complete", evidence, ear)
        settled = await store_call(state.store.settle(done))
        if settled == "taken":  # another submission won: this one's EAR is never shown
            return problem(409, "Conflict", "this session already took its evidence")
        if settled == "missing":
            return problem(404, "Not Found", "no such session (unknown or expired)")
        result_counter(status).inc()
        evidence_latency.observe(time.perf_counter() - started)
        return SessionResponse(done.to_api())

    def _appraise_and_sign(session: Session, body: bytes, digest: str) -> tuple[str, str]:
        started = time.perf_counter()
        policy = state.policies.get(session.policy)
        if policy is None:  # removed by a reload since the session began: fail closed
            policy_missing = {"error": f"policy {session.policy!r} no longer exists"}
            claims = ear_claims(nonce=session.nonce, status="contraindicated", vector={},
                                policy_id=f"policy:{session.policy}",
                                annotated=policy_missing)  # fmt: skip
            return state.signer.sign(claims), "contraindicated"
        nonce = b64url_decode(session.nonce) or b""
        result = appraise_evidence(state.verifier, policy, nonce, body, document_sha256=digest,
                                   not_before=session.created_at - config.clock_skew)  # fmt: skip
        claims = ear_claims(
            nonce=session.nonce,
            status=result.status,
            vector=result.vector,
            policy_id=f"policy:{policy.name}",
            annotated=result.annotated,
        )
        ear = state.signer.sign(claims)
        state.metrics.appraisal.observe(time.perf_counter() - started)
        return ear, result.status

    async def _find(session_id: str) -> Session | None:
        if len(session_id) > 64:
            return None
        return await store_call(state.store.get(session_id))

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        reason = await state.store.health()
        if reason is None:
            return JSONResponse({"status": "ready"})
        state.metrics.store_errors.inc()
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)

    text = {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}

    @app.get("/metrics", response_class=Response, responses={200: text})
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    documented: list[str] = []  # digest of the policies the cached schema lists

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None or documented != [state.policies.sha256]:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)  # fmt: skip
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)  # we answer 400, never 422
                    for param in op.get("parameters", []):
                        if param["name"] == "policy":  # the names loaded now
                            param["schema"] = {"type": "string",
                                               "enum": sorted(state.policies.policies)}  # fmt: skip
            app.openapi_schema = schema
            documented[:] = [state.policies.sha256]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.fast = FastPath(new_session, submit_evidence, _store_down)
    app.responses = state.metrics.responses
    return app


