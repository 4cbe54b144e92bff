"""RedisStore's scripts against a real redis-server: a Redis that forgot them (restarted empty,
SCRIPT FLUSH) gets them again, and a session that expires between the claim and the finish is
not resurrected without a TTL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import redis

from nitro_attest.service.redis_store import RedisStore
from nitro_attest.service.sessions import Session

from .servicekit import MEDIA, redis_port, redis_server

T = TypeVar("T")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-scripts")) as found:
        yield found


def _session(session_id: str, lifetime: float = 30.0) -> Session:
    now = time.time()
    return Session(session_id, "bm9uY2U", now + lifetime, now, "prod", (MEDIA,))


def _within(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_scripts_loaded_again_after_redis_forgot_them(url: str) -> None:
    async def run() -> Any:
        store = RedisStore(url)
        try:
            assert await store.create(_session("f-1"))
            redis.Redis(port=redis_port(url)).script_flush()  # as a Redis restarted empty
            return await store.claim("f-1")
        finally:
            await store.close()

    outcome, session = _within(run())
    assert outcome == "claimed" and session is not None and session.id == "f-1"


def test_session_expiring_between_claim_and_finish_is_not_resurrected(url: str) -> None:
    admin = redis.Redis(port=redis_port(url))

    async def run() -> tuple[bool, bool, Session | None]:
        store = RedisStore(url)
        try:
            assert await store.create(_session("x-1"))
            assert await store.create(_session("x-2"))
            claims = [await store.claim(f"x-{i}") for i in (1, 2)]
            done = [s.finished("complete", {}, "ear") for _, s in claims if s is not None]
            assert [outcome for outcome, _ in claims] == ["claimed"] * 2 and len(done) == 2
            admin.pexpire("nitro-attest:session:x-1", 1)  # expires during the appraisal
            time.sleep(0.05)
            return await store.finish(done[0]), await store.finish(done[1]), await store.get("x-2")
        finally:
            await store.close()

    gone, kept, session = _within(run())
    assert (gone, kept) == (False, True)
    assert session is not None and session.state == "complete" and session.result == "ear"
    assert admin.pttl("nitro-attest:session:x-1") == -2  # not written back without a TTL
    assert 0 < admin.pttl("nitro-attest:session:x-2") <= 30_000
