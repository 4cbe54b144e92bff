"""Red team of take + settle (two Redis calls a session), against a real redis-server.

The parent (it relays the evidence, calls every endpoint of every replica) and the operator (Redis
restarts empty, sessions expire mid-appraisal, a fleet runs two versions during an upgrade):

- a model-checked fuzz of three replicas of this version and one of the version that claimed
  sessions before the appraisal, over one Redis: every answer is the model's, one outcome per
  session at most, a settle never creates a key, every session key keeps a TTL;
- the memory store against one Redis replica: the same answers for the same operations;
- the service in process, two replicas over one Redis, the Redis interfered with between the
  take and the settle (from inside the appraisal): no result shown that is not the one stored,
  no session resurrected, no second EAR.
"""

from __future__ import annotations

import asyncio
import base64
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.service.app import INLINE_APPRAISAL_MAX, ServiceConfig, create_app
from nitro_attest.service.ear import EarSigner
from nitro_attest.service.redis_store import RedisStore
from nitro_attest.service.sessions import MemoryStore, Session

from .servicekit import (
    MEDIA,
    check_ear,
    redis_port,
    redis_server,
    submod,
    waiting_session,
    write_policies,
)

NEW = "/challenge-response/v1/newSession"
KEY = "nitro-attest:session:"

# The version before take + settle (git 20812c4): it claimed a session before the appraisal.
_OLD_CLAIM = """
local v = redis.call('HMGET', KEYS[1], 'state', 'session')
if not v[1] then return 0 end
if v[1] ~= 'waiting' then return -1 end
redis.call('HSET', KEYS[1], 'state', 'processing')
return v[2]
"""
_OLD_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'processing' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'session', ARGV[2])
return 1
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redteam2")) as found:
        yield found


def _session(session_id: str, lifetime: float = 60.0) -> Session:
    return waiting_session(session_id, lifetime)


class OldReplica:
    """A replica of the earlier version: claim (waiting -> processing), then finish."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.from_url(url)
        self._claim = self._redis.register_script(_OLD_CLAIM)
        self._finish = self._redis.register_script(_OLD_FINISH)

    async def claim(self, session_id: str) -> tuple[str, Session | None]:
        out = await self._claim(keys=[KEY + session_id])
        if isinstance(out, bytes):
            return "claimed", Session.loads(out).processing()
        return ("missing", None) if int(out) == 0 else ("taken", None)

    async def finish(self, session: Session) -> bool:
        done = await self._finish(keys=[KEY + session.id], args=[session.state, session.dumps()])
        return int(done) == 1

    async def close(self) -> None:
        await self._redis.aclose()


# --- a model of the fleet over one Redis -------------------------------------------------------


class Fleet:
    """What every answer must be: the truth (Redis) and what each replica remembers."""

    def __init__(self, replicas: int) -> None:
        self.truth: dict[str, str] = {}  # id -> waiting | processing | complete | failed
        self.result: dict[str, str] = {}  # id -> the one result stored
        self.remembered: list[set[str]] = [set() for _ in range(replicas)]

    def take(self, r: int, sid: str) -> str:
        if sid in self.remembered[r]:
            self.remembered[r].discard(sid)
            return "waiting"
        state = self.truth.get(sid)
        return "missing" if state is None else "waiting" if state == "waiting" else "taken"

    def settle(self, sid: str, state: str, result: str) -> str:
        now = self.truth.get(sid)
        if now is None:
            return "missing"
        if now != "waiting":
            return "taken"
        self.truth[sid], self.result[sid] = state, result
        return "done"


def test_fleet_model_fuzz(url: str) -> None:
    """Random interleavings of creates, takes, settles, deletes, expiries, Redis emptied and an
    old-version replica's claim and finish, on three replicas: each answer is the model's."""
    admin = redis.Redis(port=redis_port(url))
    rounds, ops_per_round = 60, 40
    checked = {"ops": 0}

    async def one_round(seed: int) -> None:
        rng = random.Random(seed)
        admin.flushall()
        stores = [RedisStore(url) for _ in range(3)]
        old = OldReplica(url)
        model = Fleet(len(stores))
        ids: list[str] = []
        pending: list[tuple[int, Session]] = []  # (replica, taken copy) awaiting its settle
        old_claims: list[Session] = []
        shown: dict[str, set[str]] = {}
        try:
            for step in range(ops_per_round):
                op = rng.choices(
                    ["create", "take", "settle", "delete", "expire", "flush", "old_claim",
                     "old_finish"], weights=[6, 8, 8, 1, 1, 0.3, 2, 2])[0]  # fmt: skip
                r = rng.randrange(len(stores))
                sid = rng.choice(ids) if ids else None
                if op == "create" or sid is None:
                    sid = f"s{seed}-{step}"
                    assert await stores[r].create(_session(sid))
                    ids.append(sid)
                    model.truth[sid] = "waiting"
                    model.remembered[r].add(sid)
                elif op == "take":
                    outcome, copy = await stores[r].take(sid)
                    assert outcome == model.take(r, sid), (seed, step, op, sid)
                    if copy is not None:
                        assert copy.id == sid and copy.state == "waiting"
                        pending.append((r, copy))
                elif op == "settle" and pending:
                    r, copy = pending.pop(rng.randrange(len(pending)))
                    state = rng.choice(["complete", "complete", "failed"])
                    result = f"ear-{seed}-{step}" if state == "complete" else None
                    got = await stores[r].settle(copy.finished(state, {"n": step}, result))
                    assert got == model.settle(copy.id, state, result or ""), (seed, step, op)
                    checked[f"settle {got}"] = checked.get(f"settle {got}", 0) + 1
                    if got == "done" and result:
                        shown.setdefault(copy.id, set()).add(result)
                elif op == "delete":
                    expected = sid in model.truth
                    assert await stores[r].delete(sid) == expected, (seed, step, op)
                    model.truth.pop(sid, None)
                    model.remembered[r].discard(sid)
                elif op == "expire":  # Redis's TTL ran out; the replicas' memories did not
                    admin.pexpire(KEY + sid, 1)
                    time.sleep(0.003)
                    model.truth.pop(sid, None)
                elif op == "flush":  # restarted empty (scripts too); replicas remember
                    admin.flushall()
                    admin.script_flush()
                    model.truth.clear()
                elif op == "old_claim":
                    outcome, claimed = await old.claim(sid)
                    now = model.truth.get(sid)
                    want = "missing" if now is None else "claimed" if now == "waiting" else "taken"
                    assert outcome == want, (seed, step, op)
                    if claimed is not None:
                        model.truth[sid] = "processing"
                        old_claims.append(claimed)
                elif op == "old_finish" and old_claims:
                    claimed = old_claims.pop(0)
                    result = f"old-{seed}-{step}"
                    ok = await old.finish(claimed.finished("complete", {}, result))
                    assert ok == (model.truth.get(claimed.id) == "processing"), (seed, step, op)
                    if ok:
                        model.truth[claimed.id] = "complete"
                        model.result[claimed.id] = result
                        shown.setdefault(claimed.id, set()).add(result)
                checked["ops"] += 1
            # The store as every replica reads it, against the model; TTLs on every key.
            for sid in ids:
                stored = await stores[0].get(sid)
                want = model.truth.get(sid)
                assert (stored.state if stored else None) == want, (seed, sid)
                if want is None:
                    assert admin.pttl(KEY + sid) == -2, (seed, sid)  # never resurrected
                    continue
                assert 0 < admin.pttl(KEY + sid) <= 60_000, (seed, sid)
                if want == "complete":
                    assert stored is not None and stored.result == model.result[sid]
            for sid, results in shown.items():  # one outcome a session, flushes or not
                assert len(results) == 1, (seed, sid, results)
            for store in stores:
                assert len(store._remembered) <= store.MAX_REMEMBERED
        finally:
            for store in stores:
                await store.close()
            await old.close()

    async def run() -> None:
        for seed in range(rounds):
            await one_round(seed)

    asyncio.run(asyncio.wait_for(run(), 120))
    assert checked["ops"] == rounds * ops_per_round
    # The fuzz reached every outcome of a settle, often.
    assert min(checked.get(f"settle {x}", 0) for x in ("done", "taken", "missing")) > rounds // 2


def test_one_outcome_per_session_without_flush(url: str) -> None:
    """Without Redis losing data, every session shows at most one result, whatever the mix of
    replicas, versions, concurrency and deletes."""
    admin = redis.Redis(port=redis_port(url))
    admin.flushall()

    async def run() -> int:
        stores = [RedisStore(url) for _ in range(3)]
        old = OldReplica(url)
        rng = random.Random(7)
        winners = 0
        try:
            for n in range(150):
                sid = f"c-{n}"
                creator = rng.randrange(3)
                assert await stores[creator].create(_session(sid))

                async def new_submit(sid: str, r: int, tag: str) -> str | None:
                    _, copy = await stores[r].take(sid)
                    if copy is None:
                        return None
                    await asyncio.sleep(rng.random() / 1000)
                    got = await stores[r].settle(copy.finished("complete", {}, tag))
                    return tag if got == "done" else None

                async def old_submit(sid: str, tag: str) -> str | None:
                    _, copy = await old.claim(sid)
                    if copy is None:
                        return None
                    await asyncio.sleep(rng.random() / 1000)
                    return tag if await old.finish(copy.finished("complete", {}, tag)) else None

                news, olds = rng.randint(1, 5), rng.randint(0, 2)
                calls: list[Awaitable[str | None]] = [
                    new_submit(sid, rng.randrange(3), f"{n}-new-{i}") for i in range(news)
                ]
                calls += [old_submit(sid, f"{n}-old-{i}") for i in range(olds)]
                rng.shuffle(calls)
                shown = [x for x in await asyncio.gather(*calls) if x is not None]
                stored = await stores[rng.randrange(3)].get(sid)
                assert stored is not None
                if shown:
                    assert len(shown) == 1 and stored.result == shown[0], (n, shown)
                    winners += 1
                else:
                    raise AssertionError(f"session {n}: no submission got a result")
        finally:
            for store in stores:
                await store.close()
            await old.close()
        return winners

    assert asyncio.run(asyncio.wait_for(run(), 60)) == 150


# --- the memory store against one Redis replica ------------------------------------------------


def test_memory_and_redis_stores_answer_alike(url: str) -> None:
    """One replica (what --sessions memory is): the same operations give the same HTTP answer on
    both stores (a submission's take then settle: 200, 404 or 409; a delete: 204 or 404)."""
    admin = redis.Redis(port=redis_port(url))
    rounds, ops_per_round = 60, 30
    compared = [0]

    def answer(outcome: str, settled: str | None) -> int:
        if outcome == "missing":
            return 404
        if outcome == "taken":
            return 409
        return {"done": 200, "taken": 409, "missing": 404}[settled or ""]

    async def one_round(seed: int) -> None:
        rng = random.Random(1000 + seed)
        admin.flushall()
        clock = [0.0]
        memory = MemoryStore(clock=lambda: clock[0])
        red = RedisStore(url)
        ids: list[str] = []
        pending: list[tuple[Session, Session]] = []
        try:
            for step in range(ops_per_round):
                op = rng.choice(["create", "submit", "begin", "end", "delete", "expire", "get"])
                sid = rng.choice(ids) if ids else None
                if op == "create" or sid is None:
                    sid = f"m{seed}-{step}"
                    assert await memory.create(_session(sid))
                    assert await red.create(_session(sid))
                    ids.append(sid)
                    continue
                if op in ("submit", "begin"):
                    (mo, mc), (ro, rc) = await memory.take(sid), await red.take(sid)
                    if op == "begin" and mc is not None and rc is not None:
                        pending.append((mc, rc))
                        continue
                    ms = await memory.settle(mc.finished("complete", {}, "e")) if mc else None
                    rs = await red.settle(rc.finished("complete", {}, "e")) if rc else None
                    assert answer(mo, ms) == answer(ro, rs), (seed, step, op, mo, ms, ro, rs)
                elif op == "end" and pending:
                    mc, rc = pending.pop(0)
                    ms = await memory.settle(mc.finished("failed", {}, None))
                    rs = await red.settle(rc.finished("failed", {}, None))
                    assert ms == rs, (seed, step, op)
                elif op == "delete":
                    assert await memory.delete(sid) == await red.delete(sid), (seed, step, op)
                elif op == "expire":  # this session's lifetime ran out in both
                    _, kept = memory._sessions.get(sid, (0.0, None))
                    if kept is not None:
                        memory._sessions[sid] = (clock[0], kept)
                    red._remembered.pop(sid, None)
                    admin.pexpire(KEY + sid, 1)
                    time.sleep(0.003)
                if rng.random() < 0.5:  # not always: a read sweeps an expired session away
                    continue
                m, r = await memory.get(sid), await red.get(sid)
                assert (m and (m.state, m.result)) == (r and (r.state, r.result)), (seed, step, op)
                compared[0] += 1
        finally:
            await memory.close()
            await red.close()

    async def run() -> None:
        for seed in range(rounds):
            await one_round(seed)

    asyncio.run(asyncio.wait_for(run(), 120))
    assert compared[0] > rounds * 5


def test_deleting_an_expired_session_is_404_in_memory_too() -> None:
    """A session past its lifetime is gone: DELETE answers 404 from the memory store as from
    Redis (whose key expired), not 204 because the sweep had not reached it yet."""
    clock = [0.0]
    memory = MemoryStore(clock=lambda: clock[0])

    async def run() -> tuple[bool, bool]:
        assert await memory.create(_session("e-1", lifetime=5))
        assert await memory.create(_session("e-2", lifetime=5))
        clock[0] = 6.0
        return await memory.delete("e-1"), await memory.get("e-2") is None

    assert asyncio.run(run()) == (False, True)


# --- the service in process: two replicas over one Redis ---------------------------------------


class HookedSigner:
    """The replica's signer, calling ``hook`` first: the appraisal is done, the settle not yet
    made (the parent's or the operator's moment to interfere)."""

    def __init__(self, inner: EarSigner) -> None:
        self.inner = inner
        self.hook: Callable[[], None] | None = None

    def public_jwk(self) -> dict[str, Any]:
        return self.inner.public_jwk()

    def sign(self, claims: dict[str, Any]) -> str:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return self.inner.sign(claims)


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Replicas:
    """Two service replicas (A and B) over one Redis, one signing key, in one event loop."""

    def __init__(self, url: str, policies: Path, sim: SimulatedNsm, timeout: float) -> None:
        self.sim = sim
        signer = EarSigner.generate()
        self.apps = [create_app(ServiceConfig(policies, HookedSigner(signer),  # type: ignore[arg-type]
                                              lambda: RedisStore(url, timeout=timeout),
                                              root_pem=sim.root_pem))
                     for _ in range(2)]  # fmt: skip
        self.clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                          base_url="http://t") for app in self.apps]  # fmt: skip
        self.jwk = signer.public_jwk()
        self.shown: dict[str, set[str]] = {}  # location -> every result a POST answered with
        self.bodies: dict[str, dict[str, Any]] = {}  # location -> the 200 answer's body

    def signer(self, replica: int) -> HookedSigner:
        found: HookedSigner = self.apps[replica].state.service.signer
        return found

    def store(self, replica: int) -> RedisStore:
        found: RedisStore = self.apps[replica].state.service.store
        return found

    async def new(self, replica: int = 0, query: str = "nonceSize=32") -> tuple[str, str]:
        r = await self.clients[replica].post(f"{NEW}?{query}")
        assert r.status_code == 201, r.text
        return r.headers["location"], r.json()["nonce"]

    async def submit(self, replica: int, location: str, body: bytes) -> httpx.Response:
        r = await self.clients[replica].post(location, content=body,
                                             headers={"Content-Type": MEDIA})  # fmt: skip
        if r.status_code == 200:
            self.shown.setdefault(location, set()).add(r.json()["result"])
            self.bodies[location] = r.json()
        else:
            assert "result" not in r.json(), r.text
        return r

    async def stored(self, location: str) -> dict[str, Any] | None:
        """The session as both replicas read it (they must agree)."""
        got = [await c.get(location) for c in self.clients]
        assert got[0].status_code == got[1].status_code, location
        if got[0].status_code == 404:
            return None
        assert got[0].json() == got[1].json()
        body: dict[str, Any] = got[0].json()
        return body

    def appraisals(self, replica: int) -> float:
        metric = self.apps[replica].state.service.metrics.appraisal
        return float(metric.collect()[0].samples[-2].value)  # the _count sample

    async def check_one_result_each(self) -> None:
        for location, results in self.shown.items():
            assert len(results) == 1, location
            stored = await self.stored(location)
            assert stored == self.bodies[location], location  # what the POST answered, exactly

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()
        for replica in range(2):
            await self.store(replica).close()
            self.apps[replica].state.service.appraiser.shutdown(wait=False)


@pytest.fixture(scope="module")
def files(sim_state: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimulatedNsm]:
    tmp = tmp_path_factory.mktemp("redteam2-app")
    return write_policies(tmp / "policies.json"), SimulatedNsm.open(sim_state)


def _run(
    url: str,
    files: tuple[Path, SimulatedNsm],
    scenario: Callable[[Replicas], Awaitable[None]],
    timeout: float = 2.0,
) -> None:
    async def run() -> None:
        fleet = Replicas(url, *files, timeout)
        try:
            await scenario(fleet)
            await fleet.check_one_result_each()
        finally:
            await fleet.close()

    asyncio.run(asyncio.wait_for(run(), 60))


def test_redis_interfered_with_between_take_and_settle(
    url: str, files: tuple[Path, SimulatedNsm]
) -> None:
    """During the appraisal the session expires, is deleted through the other replica, or Redis
    is emptied (data and scripts): the submission is 404 on the replica that remembers the
    session and on the one that read it, nothing is written back, no result is shown."""
    admin = redis.Redis(port=redis_port(url))

    def expire(sid: str) -> None:
        admin.pexpire(KEY + sid, 1)
        time.sleep(0.005)

    def emptied(sid: str) -> None:
        admin.flushall()
        admin.script_flush()

    interferences: dict[str, Callable[[str], None]] = {
        "expired": expire,
        "deleted": lambda sid: admin.delete(KEY + sid),
        "emptied": emptied,
    }

    async def scenario(fleet: Replicas) -> None:
        for name, interfere in interferences.items():
            for submitter in (0, 1):  # A remembers the session, B reads it from Redis
                location, nonce = await fleet.new(0)
                sid = location.rsplit("/", 1)[1]
                doc = fleet.sim.attestation(nonce=_b64d(nonce))
                fleet.signer(submitter).hook = lambda s=sid, f=interfere: f(s)  # type: ignore[misc]
                r = await fleet.submit(submitter, location, doc)
                assert r.status_code == 404, (name, submitter, r.text)
                assert admin.pttl(KEY + sid) == -2, (name, submitter)  # not resurrected
                assert await fleet.stored(location) is None
                for replica in (0, 1):  # and it stays gone
                    assert (await fleet.submit(replica, location, doc)).status_code == 404

        # DELETE through B while A remembers: A's remembered copy is appraised, then refused.
        location, nonce = await fleet.new(0)
        assert (await fleet.clients[1].delete(location)).status_code == 204
        doc = fleet.sim.attestation(nonce=_b64d(nonce))
        assert (await fleet.submit(0, location, doc)).status_code == 404
        assert admin.pttl(KEY + location.rsplit("/", 1)[1]) == -2
        assert fleet.shown == {}

    _run(url, files, scenario)


def test_racing_across_replicas_one_result(url: str, files: tuple[Path, SimulatedNsm]) -> None:
    """A's remembered copy against B's read of Redis, each side settling first in turn (B's
    submission made while A's appraisal is held in A's thread, and the reverse); then a session
    settled on B before the evidence reaches A: A appraises its remembered copy once, 409."""
    big = b"\xa0" * (INLINE_APPRAISAL_MAX + 1)  # appraised in the replica's thread

    async def scenario(fleet: Replicas) -> None:
        loop = asyncio.get_running_loop()
        for slow in (0, 1):
            fast = 1 - slow
            location, nonce = await fleet.new(0)
            doc = fleet.sim.attestation(nonce=_b64d(nonce))
            released = threading.Event()
            fleet.signer(slow).hook = lambda e=released: e.wait(10)  # type: ignore[misc]
            held = loop.create_task(fleet.submit(slow, location, big))
            await asyncio.sleep(0.05)
            won = await fleet.submit(fast, location, doc)
            released.set()
            lost = await held
            assert (won.status_code, lost.status_code) == (200, 409), (slow, lost.text)
            stored = await fleet.stored(location)
            assert stored is not None and stored["result"] == won.json()["result"]
            claims = check_ear(stored["result"], fleet.jwk, nonce)
            assert submod(claims)["ear.status"] == "affirming"

        location, nonce = await fleet.new(0)
        doc = fleet.sim.attestation(nonce=_b64d(nonce))
        assert (await fleet.submit(1, location, doc)).status_code == 200
        before = fleet.appraisals(0)
        assert (await fleet.submit(0, location, doc)).status_code == 409  # remembered copy
        assert fleet.appraisals(0) == before + 1
        assert (await fleet.submit(0, location, doc)).status_code == 409  # now from Redis
        assert fleet.appraisals(0) == before + 1

    _run(url, files, scenario)


def test_evidence_for_another_sessions_nonce(url: str, files: tuple[Path, SimulatedNsm]) -> None:
    async def scenario(fleet: Replicas) -> None:
        first, first_nonce = await fleet.new(0)
        second, second_nonce = await fleet.new(1)
        doc = fleet.sim.attestation(nonce=_b64d(first_nonce))
        wrong = await fleet.submit(0, second, doc)
        assert wrong.status_code == 200
        sub = submod(check_ear(wrong.json()["result"], fleet.jwk, second_nonce))
        assert sub["ear.status"] == "contraindicated"
        assert sub["ear.veraison.annotated-evidence"]["error"]["check"] == "nonce"
        right = await fleet.submit(1, first, doc)
        assert submod(check_ear(right.json()["result"], fleet.jwk, first_nonce))[
            "ear.status"] == "affirming"  # fmt: skip
        for replica in (0, 1):
            for location in (first, second):
                assert (await fleet.submit(replica, location, doc)).status_code == 409

    _run(url, files, scenario)


def test_remembered_sessions_are_bounded_and_never_decide(
    url: str, files: tuple[Path, SimulatedNsm]
) -> None:
    """Many sessions on A (over its bound): A forgets the oldest, which are then read from
    Redis; every session still takes its evidence once."""

    async def scenario(fleet: Replicas) -> None:
        store = fleet.store(0)
        store.MAX_REMEMBERED = 8
        made = [await fleet.new(0) for _ in range(30)]
        assert len(store._remembered) == 8
        for location, nonce in made:
            doc = fleet.sim.attestation(nonce=_b64d(nonce))
            assert (await fleet.submit(0, location, doc)).status_code == 200
            assert (await fleet.submit(0, location, doc)).status_code == 409
            assert (await fleet.submit(1, location, doc)).status_code == 409
        assert len(store._remembered) == 0

    _run(url, files, scenario)


def test_an_old_replica_claims_during_the_appraisal(
    url: str, files: tuple[Path, SimulatedNsm]
) -> None:
    """A fleet mid-upgrade: an old replica claims the session while this one appraises it (from
    its remembered copy, or read from Redis); this one is 409, the old one's result is stored."""

    async def scenario(fleet: Replicas) -> None:
        old = OldReplica(url)
        loop = asyncio.get_running_loop()
        try:
            for submitter in (0, 1):
                location, _ = await fleet.new(0)
                sid = location.rsplit("/", 1)[1]
                claimed: list[Session] = []

                def claim(s: str = sid, claimed: list[Session] = claimed) -> None:
                    found = asyncio.run_coroutine_threadsafe(old.claim(s), loop).result(10)[1]
                    assert found is not None
                    claimed.append(found)

                fleet.signer(submitter).hook = claim
                big = b"\xa0" * (INLINE_APPRAISAL_MAX + 1)  # so the hook runs off the loop
                lost = await fleet.submit(submitter, location, big)
                assert lost.status_code == 409, lost.text
                assert await old.finish(claimed[0].finished("complete", {}, "old-ear"))
                stored = await fleet.stored(location)
                assert stored is not None and stored["result"] == "old-ear"
        finally:
            await old.close()

    _run(url, files, scenario)


def test_a_refused_settle_leaves_the_session_waiting(
    url: str, files: tuple[Path, SimulatedNsm]
) -> None:
    """Redis refuses the settle (a failover left it a read-only replica): 503, nothing written,
    the session still waiting; the evidence sent again once Redis takes writes is appraised and
    its result stored, and only that one is shown."""
    admin = redis.Redis(port=redis_port(url))

    async def scenario(fleet: Replicas) -> None:
        for submitter in (0, 1):
            location, nonce = await fleet.new(0)
            doc = fleet.sim.attestation(nonce=_b64d(nonce))
            fleet.signer(submitter).hook = lambda: admin.replicaof("127.0.0.1", "1")
            try:
                refused = await fleet.submit(submitter, location, doc)
            finally:
                admin.replicaof("NO", "ONE")
            assert refused.status_code == 503, refused.text
            stored = await fleet.stored(location)
            assert stored is not None and stored["state"] == "waiting"
            again = await fleet.submit(submitter, location, doc)
            assert again.status_code == 200
            assert (await fleet.stored(location) or {}).get("result") == again.json()["result"]

    _run(url, files, scenario)


def test_a_settle_that_times_out(url: str, files: tuple[Path, SimulatedNsm]) -> None:
    """Redis is paused (CLIENT PAUSE 1.5 s) when the settle is sent, and the replica gives up
    (0.5 s timeout): 503. Whether Redis then ran the settle is the limit of any store call (an
    answer can be lost after the write): the session is either still waiting, and the evidence
    sent again gets the one result, or complete with an EAR no POST answered with, which the GET
    shows, and sent again it is 409. Never a second result (docs/service.md says so)."""
    admin = redis.Redis(port=redis_port(url))

    async def scenario(fleet: Replicas) -> None:
        location, nonce = await fleet.new(0)
        doc = fleet.sim.attestation(nonce=_b64d(nonce))
        fleet.signer(0).hook = lambda: admin.client_pause(1500)  # every client, 1.5 s
        lost = await fleet.submit(0, location, doc)
        time.sleep(1.5)
        assert lost.status_code == 503
        stored = await fleet.stored(location)
        assert stored is not None and stored["state"] in ("waiting", "complete")
        again = [await fleet.submit(replica, location, doc) for replica in (0, 1)]
        if stored["state"] == "complete":  # written, its answer lost
            assert check_ear(stored["result"], fleet.jwk, nonce)
            assert [r.status_code for r in again] == [409, 409]
            assert location not in fleet.shown
        else:
            assert [r.status_code for r in again] == [200, 409]

    _run(url, files, scenario, timeout=0.5)


def test_an_appraisal_that_crashes(url: str, files: tuple[Path, SimulatedNsm]) -> None:
    """The appraisal raises (a bug, a signer that fails): the session is settled ``failed`` with
    no result, on the replica that remembers it and on the other; every later submission is
    409; a crash in a racing copy after another settled writes nothing over the winner."""

    def crash() -> None:
        raise RuntimeError("appraisal crashed")

    async def scenario(fleet: Replicas) -> None:
        for submitter in (0, 1):
            location, nonce = await fleet.new(0)
            doc = fleet.sim.attestation(nonce=_b64d(nonce))
            fleet.signer(submitter).hook = crash
            with pytest.raises(RuntimeError, match="appraisal crashed"):
                await fleet.submit(submitter, location, doc)
            stored = await fleet.stored(location)
            assert stored is not None and stored["state"] == "failed" and "result" not in stored
            assert [(await fleet.submit(r, location, doc)).status_code for r in (0, 1)] == [409] * 2

        location, nonce = await fleet.new(0)
        doc = fleet.sim.attestation(nonce=_b64d(nonce))
        loop = asyncio.get_running_loop()
        released = threading.Event()

        def late_crash() -> None:
            released.wait(10)
            crash()

        fleet.signer(0).hook = late_crash
        held = loop.create_task(fleet.submit(0, location, b"\xa0" * (INLINE_APPRAISAL_MAX + 1)))
        await asyncio.sleep(0.05)
        won = await fleet.submit(1, location, doc)
        released.set()
        with pytest.raises(RuntimeError, match="appraisal crashed"):
            await held
        assert won.status_code == 200
        assert await fleet.stored(location) == won.json()

    _run(url, files, scenario)


def test_new_session_query_parsed_as_starlette_parses_it() -> None:
    """newSession's query by parse_qsl, as Starlette's QueryParams: the same pairs and the same
    verdict on repeated or unknown names, over random queries of the characters that matter."""
    from urllib.parse import parse_qsl

    from starlette.datastructures import QueryParams

    rng = random.Random(5)
    parts = ["nonce", "nonceSize", "policy", "=", "&", ";", "%", "%26", "%3D", "+", "%00", "x",
             "32", "\xe9", "%C3%A9", "%ZZ", "nonce%53ize", " "]  # fmt: skip
    allowed = {"nonce", "nonceSize", "policy"}
    verdicts = set()
    for _ in range(20_000):
        raw = "".join(rng.choice(parts) for _ in range(rng.randint(0, 8))).encode("latin-1")
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        new = len(query) != len(pairs) or bool(query.keys() - allowed)
        old_params = QueryParams(raw)
        old = any(len(old_params.getlist(k)) > 1 for k in old_params) or bool(
            set(old_params) - allowed)  # fmt: skip
        assert new == old, raw
        if not new:
            assert {k: old_params.get(k) for k in allowed} == {k: query.get(k) for k in allowed}
        verdicts.add(new)
    assert verdicts == {True, False}
