"""Challenge-response sessions and the store interface, with the in-process (memory) store.

A session is waiting -> processing -> complete (or failed). Moving out of ``waiting`` is one atomic
compare-and-set in the store (``claim``), so one piece of evidence, on one replica, is ever
appraised per session; every later submission is a conflict. Sessions vanish at their expiry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import orjson

from nitro_attest.errors import TransportError

State = Literal["waiting", "processing", "complete", "failed"]
ClaimOutcome = Literal["claimed", "missing", "taken"]


class StoreError(TransportError):
    """The session store did not answer (network, timeout, server error)."""


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    nonce: str
    """base64url without padding, as the API shows it."""
    expires_at: float
    policy: str
    accept: tuple[str, ...]
    state: State = "waiting"
    evidence: dict[str, str] | None = None
    result: str | None = None

    @property
    def expiry(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).isoformat().replace("+00:00", "Z")

    def to_api(self) -> dict[str, Any]:
        """The body Veraison's challenge-response API returns for a session."""
        body: dict[str, Any] = {
            "nonce": self.nonce,
            "expiry": self.expiry,
            "accept": list(self.accept),
            "state": self.state,
        }
        if self.evidence is not None:
            body["evidence"] = self.evidence
        if self.result is not None:
            body["result"] = self.result
        return body

    def dumps(self) -> bytes:
        # By hand rather than dataclasses.asdict, which deep-copies the evidence and the EAR;
        # orjson, as json.dumps spent ~40 us escaping them (a Redis store writes this per step).
        return orjson.dumps({"id": self.id, "nonce": self.nonce, "expires_at": self.expires_at,
                             "policy": self.policy, "accept": self.accept, "state": self.state,
                             "evidence": self.evidence, "result": self.result})  # fmt: skip

    @classmethod
    def loads(cls, text: str | bytes) -> Session:
        data = orjson.loads(text)
        data["accept"] = tuple(data["accept"])
        return cls(**data)

    def finished(self, state: State, evidence: dict[str, str], result: str | None) -> Session:
        # Built directly: dataclasses.replace inspects the fields on every call (~10 us).
        return Session(self.id, self.nonce, self.expires_at, self.policy, self.accept, state,
                       evidence, result)  # fmt: skip

    def processing(self) -> Session:
        return Session(self.id, self.nonce, self.expires_at, self.policy, self.accept,
                       "processing", self.evidence, self.result)  # fmt: skip


class SessionStore(Protocol):
    async def create(
        self, session: Session, *, nonce_digest: str | None = None, nonce_ttl: float = 0.0
    ) -> bool:
        """Store a new session. With ``nonce_digest`` (a relying party's nonce), first record
        the nonce for ``nonce_ttl`` seconds; False, and nothing stored, when it was already used.
        """

    async def get(self, session_id: str) -> Session | None:
        """The session, or None when unknown or expired."""

    async def claim(self, session_id: str) -> tuple[ClaimOutcome, Session | None]:
        """Atomically move a waiting session to processing; the session when claimed."""

    async def finish(self, session: Session) -> bool:
        """Store a processed session's outcome; False when it expired or was deleted meanwhile."""

    async def delete(self, session_id: str) -> bool: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Sessions in this process only: one worker, no replicas (the CLI enforces it)."""

    MAX_SESSIONS = 100_000

    def __init__(self, clock: Any = time.time) -> None:
        self._sessions: dict[str, Session] = {}
        self._nonces: dict[str, float] = {}
        self._clock = clock

    def _live(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and session.expires_at <= self._clock():
            del self._sessions[session_id]
            return None
        return session

    def _sweep(self) -> None:
        now = self._clock()
        for sid in [s for s, v in self._sessions.items() if v.expires_at <= now]:
            del self._sessions[sid]
        for key in [k for k, t in self._nonces.items() if t <= now]:
            del self._nonces[key]

    async def create(
        self, session: Session, *, nonce_digest: str | None = None, nonce_ttl: float = 0.0
    ) -> bool:
        if len(self._sessions) >= self.MAX_SESSIONS or len(self._nonces) >= self.MAX_SESSIONS:
            self._sweep()
            if len(self._sessions) >= self.MAX_SESSIONS or len(self._nonces) >= self.MAX_SESSIONS:
                raise StoreError(f"memory store full ({self.MAX_SESSIONS} live entries)")
        if nonce_digest is not None:
            now = self._clock()
            if self._nonces.get(nonce_digest, 0.0) > now:
                return False
            self._nonces[nonce_digest] = now + nonce_ttl
        self._sessions[session.id] = session
        return True

    async def get(self, session_id: str) -> Session | None:
        return self._live(session_id)

    async def claim(self, session_id: str) -> tuple[ClaimOutcome, Session | None]:
        # No await between the read and the write: atomic on the event loop.
        session = self._live(session_id)
        if session is None:
            return "missing", None
        if session.state != "waiting":
            return "taken", None
        claimed = session.processing()
        self._sessions[session_id] = claimed
        return "claimed", claimed

    async def finish(self, session: Session) -> bool:
        current = self._live(session.id)
        if current is None or current.state != "processing":
            return False
        self._sessions[session.id] = session
        return True

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._sessions.clear()
