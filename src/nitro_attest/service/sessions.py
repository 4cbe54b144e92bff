"""Challenge-response sessions and the store interface, with the in-process (memory) store.

A session is waiting -> complete (or failed). Leaving ``waiting`` is one atomic compare-and-set
in the store (``settle``) made with the appraisal's outcome, so one piece of evidence, on one
replica, ever gets a result per session; every other submission is a conflict (a concurrent one
is appraised first and then refused; a later one is refused by ``take`` before any appraisal).
Sessions vanish at their expiry.

A session records when it began (``created_at``): the appraisal refuses a document made before
that, less the stated clock skew, so an old document fails even after the store lost every
record. Nonce records (relying parties' nonces, against reuse) are only needed that long.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import orjson

from nitro_attest.errors import TransportError

State = Literal["waiting", "processing", "complete", "failed"]
"""``processing`` is only read (a record a replica of an earlier version claimed): the stores
here go from waiting straight to the outcome."""
TakeOutcome = Literal["waiting", "missing", "taken"]
SettleOutcome = Literal["done", "missing", "taken"]


class StoreError(TransportError):
    """The session store did not answer (network, timeout, server error) or refused."""


class StoreFullError(StoreError):
    """The store is at its bound (memory store cap, Redis maxmemory): no new session now."""


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    nonce: str
    """base64url without padding, as the API shows it."""
    expires_at: float
    created_at: float
    """When the session began (service clock): documents made before it, less the skew, fail."""
    policy: str
    accept: tuple[str, ...]
    state: State = "waiting"
    evidence: dict[str, Any] | None = None
    """``{type, sha256, size}`` of what was submitted: the digest, never the bytes."""
    result: str | None = None

    @property
    def lifetime(self) -> float:
        """Seconds from creation to expiry: what a store counts on its own clock (both ends
        come from one reading of the service's clock, so a stepped clock does not change it)."""
        return self.expires_at - self.created_at

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
                             "created_at": self.created_at, "policy": self.policy,
                             "accept": self.accept, "state": self.state,
                             "evidence": self.evidence, "result": self.result})  # fmt: skip

    @classmethod
    def loads(cls, text: str | bytes) -> Session:
        data = orjson.loads(text)
        data["accept"] = tuple(data["accept"])
        # A record written before sessions carried their start: the strictest reading (only a
        # document made in the session's last skew seconds passes), never "no bound".
        data.setdefault("created_at", data["expires_at"])
        return cls(**data)

    def finished(self, state: State, evidence: dict[str, Any], result: str | None) -> Session:
        # Built directly: dataclasses.replace inspects the fields on every call (~10 us).
        return Session(self.id, self.nonce, self.expires_at, self.created_at, self.policy,
                       self.accept, state, evidence, result)  # fmt: skip

    def processing(self) -> Session:
        return Session(self.id, self.nonce, self.expires_at, self.created_at, self.policy,
                       self.accept, "processing", self.evidence, self.result)  # fmt: skip


def take_outcome(session: Session | None) -> tuple[TakeOutcome, Session | None]:
    """What ``take`` answers for a session as the store holds it."""
    if session is None:
        return "missing", None
    if session.state != "waiting":
        return "taken", None
    return "waiting", session


class SessionStore(Protocol):
    async def create(
        self, session: Session, *, nonce_digest: str | None = None, nonce_ttl: float = 0.0
    ) -> bool:
        """Store a new session. With ``nonce_digest`` (a relying party's nonce), first record
        the nonce for ``nonce_ttl`` seconds; False, and nothing stored, when it was already used.
        """

    async def get(self, session_id: str) -> Session | None:
        """The session, or None when unknown or expired."""

    async def take(self, session_id: str) -> tuple[TakeOutcome, Session | None]:
        """The session to appraise evidence for, when it is still waiting; changes nothing (the
        outcome is written by ``settle``, which alone decides). ``missing``: unknown or
        expired; ``taken``: it already has its outcome."""

    async def settle(self, session: Session) -> SettleOutcome:
        """Store an appraised session's outcome, atomically, only if the session is still
        waiting: ``done``; ``taken`` when another submission settled it first; ``missing`` when
        it expired or was deleted (nothing is written then)."""

    async def delete(self, session_id: str) -> bool: ...

    async def health(self) -> str | None:
        """None when the store can take a new session now; otherwise why not, in one line."""

    async def close(self) -> None: ...


class MemoryStore:
    """Sessions in this process only: one worker, no replicas (the CLI enforces it).

    Two separate bounds: ``max_sessions`` counts live sessions (a deleted or expired one frees
    its slot at once), ``max_nonces`` the relying parties' nonce records, which outlive their
    session by the reuse window. When the nonce records are full, a session with a relying-party
    nonce is refused (503: forgetting a record would reopen a replay) while sessions with a
    service-chosen nonce are still created.

    Both expire by ``clock``, monotonic by default: a session lives its ``lifetime`` from when it
    was stored, so a wall clock stepped forward (then corrected) does not keep what was made
    meanwhile alive, and the store full, for as long as the step.
    """

    MAX_SESSIONS = 100_000
    MAX_NONCES = 100_000
    _FULL_SWEEP_INTERVAL = 1.0

    def __init__(
        self, clock: Any = time.monotonic, *, max_sessions: int = MAX_SESSIONS,
        max_nonces: int = MAX_NONCES,
    ) -> None:  # fmt: skip
        # OrderedDicts: the sweep pops from the front, which a plain dict makes O(n) (its
        # iteration skips every deleted slot until the next resize).
        self._sessions: OrderedDict[str, tuple[float, Session]] = OrderedDict()  # (deadline, _)
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._clock = clock
        self.max_sessions = max_sessions
        self.max_nonces = max_nonces
        self._last_full_sweep = -math.inf

    def _live(self, session_id: str) -> Session | None:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._sessions[session_id]
            return None
        return entry[1]

    def _sweep(self, now: float) -> None:
        # Both are in insertion order and every entry of one kind lives as long as the
        # others (one TTL per process), so the expired ones are at the front: O(expired), not
        # O(n). Should the clock not be monotonic (one given by a test), a full sweep, at most
        # once a second and only when a bound is reached, catches what the front sweep missed.
        sessions, nonces = self._sessions, self._nonces
        while sessions:
            sid, (deadline, _) = next(iter(sessions.items()))
            if deadline > now:
                break
            sessions.popitem(last=False)
        while nonces:
            key, until = next(iter(nonces.items()))
            if until > now:
                break
            nonces.popitem(last=False)
        full = len(sessions) >= self.max_sessions or len(nonces) >= self.max_nonces
        if full and now - self._last_full_sweep >= self._FULL_SWEEP_INTERVAL:
            self._last_full_sweep = now
            for sid in [s for s, (deadline, _) in sessions.items() if deadline <= now]:
                del sessions[sid]
            for key in [k for k, t in nonces.items() if t <= now]:
                del nonces[key]

    async def create(
        self, session: Session, *, nonce_digest: str | None = None, nonce_ttl: float = 0.0
    ) -> bool:
        now = self._clock()
        self._sweep(now)
        if len(self._sessions) >= self.max_sessions:
            raise StoreFullError(f"memory store full ({self.max_sessions} live sessions)")
        if nonce_digest is not None:
            if self._nonces.get(nonce_digest, 0.0) > now:
                return False
            if len(self._nonces) >= self.max_nonces:
                raise StoreFullError(f"memory store full ({self.max_nonces} nonce records)")
            self._nonces[nonce_digest] = now + nonce_ttl
        self._sessions[session.id] = (now + session.lifetime, session)
        return True

    async def get(self, session_id: str) -> Session | None:
        return self._live(session_id)

    async def take(self, session_id: str) -> tuple[TakeOutcome, Session | None]:
        return take_outcome(self._live(session_id))

    async def settle(self, session: Session) -> SettleOutcome:
        # No await between the read and the write: atomic on the event loop.
        current = self._live(session.id)
        if current is None:
            return "missing"
        if current.state != "waiting":
            return "taken"
        self._sessions[session.id] = (self._sessions[session.id][0], session)
        return "done"

    async def delete(self, session_id: str) -> bool:
        # One past its lifetime is already gone (404, as Redis's expired key), swept or not.
        if self._live(session_id) is None:
            return False
        del self._sessions[session_id]
        return True

    async def health(self) -> str | None:
        self._sweep(self._clock())
        if len(self._sessions) >= self.max_sessions:
            return f"memory store full ({len(self._sessions)} live sessions)"
        if len(self._nonces) >= self.max_nonces:  # every relying-party nonce gets 503 now
            return f"memory store full ({len(self._nonces)} nonce records)"
        return None

    async def close(self) -> None:
        self._sessions.clear()
