"""RedisStore's script calls against a real redis-server: calls made in one event-loop iteration
share one pipeline, and each keeps its own outcome; a Redis that forgot the scripts (restarted
empty, SCRIPT FLUSH) gets them again; a session that expires between the claim and the finish is
not resurrected; a batch that fails as a whole (connection lost, leader cancelled) fails every
call it carried instead of leaving one waiting for ever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from nitro_attest.service.redis_store import RedisStore
from nitro_attest.service.sessions import Session, StoreError

from .servicekit import MEDIA, free_port, redis_port, redis_server

T = TypeVar("T")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-batch")) as found:
        yield found


def _session(session_id: str, lifetime: float = 30.0) -> Session:
    now = time.time()
    return Session(session_id, "bm9uY2U", now + lifetime, now, "prod", (MEDIA,))


def _spy_batches(store: RedisStore) -> list[int]:
    """The sizes of the pipelines ``store`` sends (a single call sends none)."""
    sizes: list[int] = []
    original = store._pipeline

    async def spy(batch: list[Any]) -> list[Any]:
        sizes.append(len(batch))
        return await original(batch)

    store._pipeline = spy  # type: ignore[method-assign]
    return sizes


def _within(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``, failing (not hanging) if some call never gets its answer."""
    return asyncio.run(asyncio.wait_for(coro, 30))


def _admin(url: str) -> redis.Redis:
    return redis.Redis(port=redis_port(url))


def test_one_iteration_one_pipeline_each_call_its_own_outcome(url: str) -> None:
    async def run() -> tuple[list[Any], list[int], Session | None]:
        store = RedisStore(url)
        sizes = _spy_batches(store)
        try:
            assert await store.create(_session("b-1"), nonce_digest="b-n1", nonce_ttl=30)
            assert await store.create(_session("b-2"))
            assert sizes == []  # one call at a time: no pipeline
            outcomes = await asyncio.gather(
                store.claim("b-1"), store.claim("b-1"), store.claim("b-unknown"),
                store.finish(_session("b-2").finished("complete", {}, "ear")),  # not claimed
                store.create(_session("b-3"), nonce_digest="b-n1", nonce_ttl=30),  # reused
                store.create(_session("b-4"), nonce_digest="b-n4", nonce_ttl=30),
            )  # fmt: skip
            return list(outcomes), sizes, await store.get("b-2")
        finally:
            await store.close()

    outcomes, sizes, waiting = _within(run())
    assert sizes == [6]
    (first, a), (second, b), (third, c), finished, reused, fresh = outcomes
    assert first == "claimed" and a is not None and a.state == "processing" and a.id == "b-1"
    assert (second, b) == ("taken", None)
    assert (third, c) == ("missing", None)
    assert finished is False  # a finish needs a claimed session
    assert waiting is not None and waiting.state == "waiting"
    assert reused is False and fresh is True
    assert not _admin(url).exists("nitro-attest:session:b-3")


def test_one_call_failing_in_a_batch_fails_alone(url: str) -> None:
    _admin(url).set("nitro-attest:session:b-wrongtype", "not a hash")

    async def run() -> list[Any]:
        store = RedisStore(url)
        try:
            assert await store.create(_session("b-5"))
            return list(await asyncio.gather(store.claim("b-wrongtype"), store.claim("b-5"),
                                             return_exceptions=True))  # fmt: skip
        finally:
            await store.close()

    wrong, right = _within(run())
    assert isinstance(wrong, StoreError) and "WRONGTYPE" in str(wrong)
    assert right[0] == "claimed"


@pytest.mark.parametrize("batched", [False, True])
def test_scripts_loaded_again_after_redis_forgot_them(url: str, batched: bool) -> None:
    async def run() -> list[Any]:
        store = RedisStore(url)
        sizes = _spy_batches(store)
        try:
            assert await store.create(_session(f"f-{batched}-1"))
            _admin(url).script_flush()  # as a Redis restarted empty would have
            outcomes: list[Any] = []
            if batched:
                outcomes.extend(await asyncio.gather(
                    store.claim(f"f-{batched}-1"), store.create(_session(f"f-{batched}-2"))))
            else:
                outcomes.append(await store.claim(f"f-{batched}-1"))
            assert sizes == ([2] if batched else [])
            return outcomes
        finally:
            await store.close()

    outcomes = _within(run())
    assert outcomes[0][0] == "claimed"
    if batched:
        assert outcomes[1] is True


def test_session_expiring_between_claim_and_finish_is_not_resurrected(url: str) -> None:
    admin = _admin(url)

    async def run() -> tuple[bool, bool, bool, Session | None]:
        store = RedisStore(url)
        try:
            assert await store.create(_session("x-1"))
            assert await store.create(_session("x-2"))
            assert await store.create(_session("x-3"))
            claims = await asyncio.gather(*(store.claim(f"x-{i}") for i in (1, 2, 3)))
            done = [s.finished("complete", {}, "ear") for _, s in claims if s is not None]
            assert len(done) == 3 and [outcome for outcome, _ in claims] == ["claimed"] * 3
            admin.pexpire("nitro-attest:session:x-1", 1)  # expires during the appraisal
            admin.pexpire("nitro-attest:session:x-3", 1)
            time.sleep(0.05)
            alone = await store.finish(done[0])  # a call of its own
            two, three = await asyncio.gather(store.finish(done[1]), store.finish(done[2]))
            return alone, two, three, await store.get("x-2")
        finally:
            await store.close()

    alone, two, three, done = _within(run())
    assert (alone, two, three) == (False, True, False)
    assert done is not None and done.state == "complete" and done.result == "ear"
    assert admin.pttl("nitro-attest:session:x-1") == -2  # gone, not written back without a TTL
    assert admin.pttl("nitro-attest:session:x-3") == -2
    assert 0 < admin.pttl("nitro-attest:session:x-2") <= 30_000


def test_lost_connection_fails_every_call_of_the_batch() -> None:
    async def run() -> list[Any]:
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)  # nobody there
        try:
            calls = [store.claim("s-1"), store.claim("s-2"), store.create(_session("s-3"))]
            async with asyncio.timeout(30):  # an unanswered follower would hang here
                return list(await asyncio.gather(*calls, return_exceptions=True))
        finally:
            await store.close()

    outcomes = _within(run())
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert isinstance(outcome, StoreError), outcome
        assert "cannot reach redis" in str(outcome)


def test_cancelled_leader_still_answers_its_followers(url: str) -> None:
    async def run() -> tuple[bool, Any]:
        store = RedisStore(url)
        try:
            assert await store.create(_session("c-1"))
            leader = asyncio.create_task(store.claim("c-1"))
            follower = asyncio.create_task(store.claim("c-1"))
            await asyncio.sleep(0)  # both have started: the second joined the first's batch
            leader.cancel()
            async with asyncio.timeout(10):
                outcome = await asyncio.gather(follower, return_exceptions=True)
            return leader.cancelled(), outcome[0]
        finally:
            await store.close()

    cancelled, outcome = _within(run())
    assert cancelled
    assert isinstance(outcome, StoreError)  # an answer (503), not a wait for ever


def test_batched_creates_on_a_fresh_redis_take_a_nonce_once(tmp_path: Path) -> None:
    """A fresh Redis has no scripts: a batched create loads them and still records the nonce
    once. (After the restart the record is gone and the nonce is taken again; what refuses an
    old document then is the session's start time, test_service_redis_faults end to end.)"""
    port = free_port()

    async def create(session_id: str) -> bool:
        store = RedisStore(f"redis://127.0.0.1:{port}/0")
        try:
            outcomes = await asyncio.gather(
                store.create(_session(session_id), nonce_digest="r-n", nonce_ttl=30),
                store.create(_session(f"{session_id}-b"), nonce_digest="r-n", nonce_ttl=30))
            return sorted(outcomes) == [False, True]  # one of two takes the nonce, in one batch
        finally:
            await store.close()

    with redis_server(tmp_path, port=port):
        assert _within(create("r-1"))
    with redis_server(tmp_path, port=port):
        assert _within(create("r-2"))
