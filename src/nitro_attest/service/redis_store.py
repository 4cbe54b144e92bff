"""Sessions in Redis, shared by every replica: one hash per session, expiring with the session.

The hash holds ``state`` and ``session`` (the JSON). State changes run as Lua scripts, so the
check and the write are one atomic step on the server: two replicas racing to settle a session
cannot both see ``waiting``, and a late ``settle`` cannot resurrect an expired key without a TTL.

Two calls per session when the evidence reaches the replica that created the session (a
keep-alive client, a load balancer with affinity): that replica remembers what it stored, so
``take`` reads nothing from Redis; the settle script alone decides whether the session is still
waiting. A remembered session is handed out once, then forgotten: a second submission on this
replica reads the store, so it is refused before any appraisal.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.exceptions import RedisError

from nitro_attest.service.sessions import (
    Session,
    SettleOutcome,
    StoreError,
    StoreFullError,
    TakeOutcome,
    take_outcome,
)

PREFIX = "nitro-attest:"
HEALTH_KEY = f"{PREFIX}health"
_HEALTH_PROBE = b"\x00" * 1024

# KEYS: the session, the nonce record ('' when the service chose the nonce).
# ARGV: the session JSON, its lifetime (ms), the nonce record's lifetime (ms). Lifetimes, not
# instants: Redis counts them on its own clock, so a replica whose clock was stepped a day
# either way neither creates sessions already expired nor keeps records a day.
_CREATE = """
if KEYS[2] ~= '' then
    if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], 'state', 'waiting', 'session', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: the session. ARGV: its final state, its JSON. Writes only over a waiting session (HSET
# keeps the key's TTL); never creates the key, so an expired or deleted session stays gone.
_SETTLE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
if state ~= 'waiting' then return -1 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'session', ARGV[2])
return 1
"""


def redact_url(url: str) -> str:
    """The URL with any password replaced by '***', for messages and logs."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", url)


def check_redis_url(url: str) -> str:
    """Accept redis://HOST:PORT/DB (and rediss://); anything else is a one-line ValueError
    (which never repeats a password the URL carries)."""
    parts = urlsplit(url)
    shown = redact_url(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{shown!r}: expected redis://HOST:PORT/DB")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{shown!r}: bad port") from None
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{shown!r}: the database must be a number")
    return url


def redis_error_reason(exc: BaseException) -> str:
    """One line naming the cause: an operator must tell a wrong password from a full or a
    stopped Redis (all three used to read "did not answer")."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, rx.AuthenticationError) or "WRONGPASS" in detail or "NOAUTH" in detail:
        return f"redis refused the credentials: {detail}"
    if isinstance(exc, rx.AuthorizationError) or "NOPERM" in detail:
        return f"redis user lacks a permission: {detail}"
    if isinstance(exc, rx.OutOfMemoryError) or detail.startswith("OOM"):
        return f"redis refuses writes (maxmemory reached): {detail}"
    if isinstance(exc, rx.ReadOnlyError):
        return f"redis refuses writes (read-only replica): {detail}"
    if isinstance(exc, rx.TimeoutError | TimeoutError):
        return f"redis did not answer in time: {detail}"
    if isinstance(exc, rx.ConnectionError | OSError):
        return f"cannot reach redis: {detail}"
    if isinstance(exc, rx.ResponseError):
        return f"redis refused the command: {detail}"
    return f"redis: {detail}"


def _store_error(exc: RedisError) -> StoreError:
    message = redis_error_reason(exc)
    full = isinstance(exc, rx.OutOfMemoryError) or str(exc).startswith("OOM")
    return StoreFullError(message) if full else StoreError(message)


class RedisStore:
    MAX_REMEMBERED = 10_000
    """Sessions this replica created and still remembers (the oldest is forgotten first; a
    forgotten one is read from Redis instead)."""

    def __init__(
        self, url: str, *, password: str | None = None, timeout: float = 2.0,
        clock: Any = time.monotonic,
    ) -> None:  # fmt: skip
        """``password`` applies when the URL carries none (it comes from the environment)."""
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        if password is not None and urlsplit(url).password is None:
            options["password"] = password
        self._redis: Any = aioredis.from_url(check_redis_url(url), **options)
        self._create = self._redis.register_script(_CREATE)
        self._settle = self._redis.register_script(_SETTLE)
        # id -> (deadline on the monotonic clock, the session as stored), in creation order.
        # Only spares a read: Redis's settle script still decides whether it is waiting.
        self._remembered: OrderedDict[str, tuple[float, Session]] = OrderedDict()
        self._clock = clock

    def _remember(self, session: Session) -> None:
        now = self._clock()
        remembered = self._remembered
        while remembered:  # one lifetime per process: the expired ones are at the front
            deadline, _ = next(iter(remembered.values()))
            if deadline > now and len(remembered) < self.MAX_REMEMBERED:
                break
            remembered.popitem(last=False)
        remembered[session.id] = (now + session.lifetime, session)

    @staticmethod
    def _key(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}"

    async def create(
        self, session: Session, *, nonce_digest: str | None = None, nonce_ttl: float = 0.0
    ) -> bool:
        nonce_key = f"{PREFIX}nonce:{nonce_digest}" if nonce_digest else ""
        try:
            done = await self._create(
                keys=[self._key(session.id), nonce_key],
                args=[session.dumps(), max(1, int(session.lifetime * 1000)),
                      max(1, int(nonce_ttl * 1000))],
            )  # fmt: skip
        except RedisError as exc:
            raise _store_error(exc) from None
        if int(done) != 1:
            return False
        self._remember(session)
        return True

    async def get(self, session_id: str) -> Session | None:
        try:
            values = await self._redis.hmget(self._key(session_id), ["state", "session"])
        except RedisError as exc:
            raise _store_error(exc) from None
        state, body = values
        if state is None or body is None:
            return None
        session = Session.loads(body)
        if session.state == "waiting" and state == b"processing":  # claimed, JSON not rewritten
            session = session.processing()
        return session

    async def take(self, session_id: str) -> tuple[TakeOutcome, Session | None]:
        entry = self._remembered.pop(session_id, None)  # handed out once
        if entry is not None and entry[0] > self._clock():
            return "waiting", entry[1]
        return take_outcome(await self.get(session_id))

    async def settle(self, session: Session) -> SettleOutcome:
        try:
            done = int(await self._settle(
                keys=[self._key(session.id)], args=[session.state, session.dumps()]))  # fmt: skip
        except RedisError as exc:
            raise _store_error(exc) from None
        return "done" if done == 1 else "missing" if done == 0 else "taken"

    async def delete(self, session_id: str) -> bool:
        self._remembered.pop(session_id, None)
        try:
            return int(await self._redis.delete(self._key(session_id))) == 1
        except RedisError as exc:
            raise _store_error(exc) from None

    async def health(self) -> str | None:
        # A write, not a PING: a Redis at maxmemory (noeviction) still answers PING but refuses
        # every new session, and a replica that lost its primary is read-only. As large as a
        # session record: Redis counts the command's own bytes, so a tiny probe still fits
        # when a session no longer does.
        try:
            await self._redis.set(HEALTH_KEY, _HEALTH_PROBE, px=10_000)
        except (RedisError, OSError) as exc:
            return redis_error_reason(exc)
        return None

    async def close(self) -> None:
        self._remembered.clear()
        await self._redis.aclose()
