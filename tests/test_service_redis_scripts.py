"""RedisStore's scripts against a real redis-server: a Redis that forgot them (restarted empty,
SCRIPT FLUSH) gets them again, and a session that expires, is deleted or is lost with the whole
store between the take and the settle is not resurrected without a TTL; what a replica remembers
of the sessions it created never decides an outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import redis

from nitro_attest.service.redis_store import RedisStore
from nitro_attest.service.sessions import Session

from .servicekit import redis_port, redis_server, waiting_session

T = TypeVar("T")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-scripts")) as found:
        yield found


def _session(session_id: str, lifetime: float = 30.0) -> Session:
    return waiting_session(session_id, lifetime)


def _within(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_scripts_loaded_again_after_redis_forgot_them(url: str) -> None:
    admin = redis.Redis(port=redis_port(url))

    async def run() -> tuple[str, str]:
        store = RedisStore(url)
        try:
            admin.script_flush()  # as a Redis restarted empty
            assert await store.create(_session("f-1"))
            outcome, session = await store.take("f-1")
            assert session is not None and session.id == "f-1"
            admin.script_flush()
            return outcome, await store.settle(session.finished("complete", {}, "ear"))
        finally:
            await store.close()

    assert _within(run()) == ("waiting", "done")
    assert admin.hget("nitro-attest:session:f-1", "state") == b"complete"


def test_session_expiring_between_take_and_settle_is_not_resurrected(url: str) -> None:
    admin = redis.Redis(port=redis_port(url))

    async def run() -> tuple[str, str, Session | None]:
        store = RedisStore(url)
        try:
            assert await store.create(_session("x-1"))
            assert await store.create(_session("x-2"))
            takes = [await store.take(f"x-{i}") for i in (1, 2)]
            done = [s.finished("complete", {}, "ear") for _, s in takes if s is not None]
            assert [outcome for outcome, _ in takes] == ["waiting"] * 2 and len(done) == 2
            admin.pexpire("nitro-attest:session:x-1", 1)  # expires during the appraisal
            time.sleep(0.05)
            return await store.settle(done[0]), await store.settle(done[1]), await store.get("x-2")
        finally:
            await store.close()

    gone, kept, session = _within(run())
    assert (gone, kept) == ("missing", "done")
    assert session is not None and session.state == "complete" and session.result == "ear"
    assert admin.pttl("nitro-attest:session:x-1") == -2  # not written back without a TTL
    assert 0 < admin.pttl("nitro-attest:session:x-2") <= 30_000


def test_remembered_session_does_not_outlive_the_store(url: str) -> None:
    """The parent deletes a session through another replica, or Redis restarts empty, after the
    creating replica remembered it: the appraisal's outcome is refused (nothing written), and
    the session is not remembered twice."""
    admin = redis.Redis(port=redis_port(url))

    async def run() -> list[object]:
        creator, other = RedisStore(url), RedisStore(url)
        try:
            assert await creator.create(_session("d-1"))
            assert await creator.create(_session("d-2"))
            assert await other.delete("d-1")  # through another replica
            admin.delete("nitro-attest:session:d-2")  # as a Redis that lost it (restart, failover)
            seen: list[object] = []
            for sid in ("d-1", "d-2"):
                outcome, session = await creator.take(sid)  # remembered: not read
                assert session is not None
                seen += [outcome, await creator.settle(session.finished("complete", {}, "e"))]
                seen.append(await creator.take(sid))  # forgotten now: read from Redis
            return seen
        finally:
            await creator.close()
            await other.close()

    missing = ("missing", None)
    assert _within(run()) == ["waiting", "missing", missing, "waiting", "missing", missing]
    for sid in ("d-1", "d-2"):
        assert admin.pttl(f"nitro-attest:session:{sid}") == -2


def test_remembered_session_is_handed_out_once_and_expires(url: str) -> None:
    """A replayed submission to the creating replica is refused from Redis's record before
    any appraisal; a remembered session past its lifetime is read from Redis, and the memory of
    sessions is bounded (the oldest forgotten first, then read from Redis)."""
    now = [1000.0]

    async def run() -> list[object]:
        store, other = RedisStore(url, clock=lambda: now[0]), RedisStore(url)
        store.MAX_REMEMBERED = 2
        try:
            seen: list[object] = []
            assert await store.create(_session("o-1"))
            outcome, session = await store.take("o-1")
            assert session is not None
            seen += [outcome, await store.settle(session.finished("complete", {}, "e"))]
            seen.append(await store.take("o-1"))  # the replay: Redis says it is settled
            assert await store.create(_session("o-2", lifetime=5))
            assert await other.settle(_session("o-2").finished("complete", {}, "x")) == "done"
            now[0] += 6  # past o-2's lifetime on this replica's clock: not handed out
            seen.append(await store.take("o-2"))
            for sid in ("o-3", "o-4", "o-5"):  # o-3 is forgotten (bound 2)
                assert await store.create(_session(sid))
            seen.append(len(store._remembered))
            assert await other.settle(_session("o-3").finished("complete", {}, "x")) == "done"
            seen.append(await store.take("o-3"))  # read from Redis: settled
            seen.append((await store.take("o-5"))[0])  # remembered
            return seen
        finally:
            await store.close()
            await other.close()

    assert _within(run()) == ["waiting", "done", ("taken", None), ("taken", None), 2,
                              ("taken", None), "waiting"]  # fmt: skip


def test_session_claimed_by_an_earlier_version_is_taken(url: str) -> None:
    """A rolling upgrade: a replica of the version that claimed sessions before the appraisal
    (hash state ``processing``) holds this one; this version neither appraises it nor writes
    over it."""
    admin = redis.Redis(port=redis_port(url))

    async def run() -> tuple[object, str]:
        store, other = RedisStore(url), RedisStore(url)
        try:
            assert await store.create(_session("u-1"))
            admin.hset("nitro-attest:session:u-1", "state", "processing")  # the old claim
            done = _session("u-1").finished("complete", {}, "e")
            return await other.take("u-1"), await store.settle(done)
        finally:
            await store.close()
            await other.close()

    assert _within(run()) == (("taken", None), "taken")
    assert admin.hget("nitro-attest:session:u-1", "state") == b"processing"
