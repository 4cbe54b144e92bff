"""Sessions in Redis, shared by every replica: one hash per session, expiring with the session.

The hash holds ``state`` and ``session`` (the JSON). State changes run as Lua scripts, so the
check and the write are one atomic step on the server: two replicas racing to claim a session
cannot both see ``waiting``, and a late ``finish`` cannot resurrect an expired key without a TTL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from nitro_attest.service.sessions import ClaimOutcome, Session, StoreError

PREFIX = "nitro-attest:"

# KEYS: the session, the nonce record ('' when the service chose the nonce).
# ARGV: the session JSON, its expiry (ms since the epoch), the nonce record's lifetime (ms).
_CREATE = """
if KEYS[2] ~= '' then
    if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], 'state', 'waiting', 'session', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"""

_CLAIM = """
local v = redis.call('HMGET', KEYS[1], 'state', 'session')
if not v[1] then return 0 end
if v[1] ~= 'waiting' then return -1 end
redis.call('HSET', KEYS[1], 'state', 'processing')
return v[2]
"""

_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'processing' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'session', ARGV[2])
return 1
"""


def check_redis_url(url: str) -> str:
    """Accept redis://HOST:PORT/DB (and rediss://); anything else is a one-line ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{url!r}: expected redis://HOST:PORT/DB")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: bad port") from None
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{url!r}: the database must be a number")
    return url


class RedisStore:
    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self._redis: Any = aioredis.from_url(
            check_redis_url(url), socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._create = self._redis.register_script(_CREATE)
        self._claim = self._redis.register_script(_CLAIM)
        self._finish = self._redis.register_script(_FINISH)

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
                args=[session.dumps(), int(session.expires_at * 1000),
                      max(1, int(nonce_ttl * 1000))],
            )  # fmt: skip
        except RedisError as exc:
            raise StoreError(f"redis: {exc}") from None
        return int(done) == 1

    async def get(self, session_id: str) -> Session | None:
        try:
            values = await self._redis.hmget(self._key(session_id), ["state", "session"])
        except RedisError as exc:
            raise StoreError(f"redis: {exc}") from None
        state, body = values
        if state is None or body is None:
            return None
        session = Session.loads(body)
        if session.state == "waiting" and state == b"processing":  # claimed, JSON not rewritten
            session = session.processing()
        return session

    async def claim(self, session_id: str) -> tuple[ClaimOutcome, Session | None]:
        try:
            outcome = await self._claim(keys=[self._key(session_id)])
        except RedisError as exc:
            raise StoreError(f"redis: {exc}") from None
        if isinstance(outcome, bytes):
            return "claimed", Session.loads(outcome).processing()
        return ("missing", None) if int(outcome) == 0 else ("taken", None)

    async def finish(self, session: Session) -> bool:
        try:
            done = await self._finish(
                keys=[self._key(session.id)], args=[session.state, session.dumps()]
            )
        except RedisError as exc:
            raise StoreError(f"redis: {exc}") from None
        return int(done) == 1

    async def delete(self, session_id: str) -> bool:
        try:
            return int(await self._redis.delete(self._key(session_id))) == 1
        except RedisError as exc:
            raise StoreError(f"redis: {exc}") from None

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
