"""Soak: Redis memory under sustained sessions comes back at the session TTL.

Starts a redis-server (no persistence) and `nitro-attest service --workers 2` on it; 16 keep-alive
clients run sessions back to back for --minutes (default 10), half of them with relying-party
nonces (each leaves a nonce record behind its session), each document made fresh by a simulated
NSM for its nonce. Every --every seconds it prints Redis used_memory, the number of keys and the
sessions completed; after the load it keeps printing until the keys are gone (session TTL plus
the nonce window), to show nothing lingers. Flat during the load, back to the baseline after.

Usage: python bench/service_soak.py [--minutes 10] [--session-ttl 60] [--clock-skew 30]
(needs redis-server on PATH; PYTHONPATH=src for the tree to measure)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state
from service import ENTRY, MEAS, MEDIA, RawHttp, b64url, free_port, process

CLIENTS = 16


def mib(value: int) -> str:
    return f"{value / 1024 / 1024:7.2f} MiB"


class Soak:
    def __init__(self, base: str, sim: SimulatedNsm, seconds: float) -> None:
        self.base, self.sim = base, sim
        self.stop_at = time.monotonic() + seconds
        self.done = 0
        self.statuses: dict[str, int] = {}

    async def client(self, i: int) -> None:
        with_nonce = i % 2 == 0  # half the clients pick their own nonces
        async with RawHttp(self.base) as c:
            while time.monotonic() < self.stop_at:
                query = f"nonce={b64url(os.urandom(32))}" if with_nonce else "nonceSize=32"
                status, headers, body = await c.request(
                    "POST", f"/challenge-response/v1/newSession?{query}")  # fmt: skip
                if status != 201:
                    raise SystemExit(f"newSession: {status} {body[:200]!r}")
                nonce = json.loads(body)["nonce"]
                raw = nonce + "=" * (-len(nonce) % 4)
                doc = self.sim.attestation(nonce=base64.urlsafe_b64decode(raw))
                status, _, body = await c.request("POST", headers["location"], doc, MEDIA)
                if status != 200:
                    raise SystemExit(f"evidence: {status} {body[:200]!r}")
                self.done += 1
                await asyncio.sleep(0)

    async def run(self) -> None:
        await asyncio.gather(*(self.client(i) for i in range(CLIENTS)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--session-ttl", type=float, default=60.0)
    parser.add_argument("--clock-skew", type=float, default=None,
                        help="passed to the service when given (its default otherwise)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    redis_bin = shutil.which("redis-server")
    if not redis_bin:
        print("error: redis-server not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nitro-soak-") as tmp_text:
        tmp = Path(tmp_text)
        sim = SimulatedNsm(init_state(tmp / "sim", SimulatorConfig(
            instance_id="i-0123456789abcdef0", measurements=MEAS)))  # fmt: skip
        (tmp / "root.pem").write_bytes(sim.root_pem)
        measurements = {f"PCR{i}": v.hex() for i, v in MEAS.items()}
        (tmp / "policies.json").write_text(json.dumps(
            {"default": "prod", "policies": {"prod": {"expected": [
                {"Measurements": measurements}]}}}))  # fmt: skip
        rport, sport = free_port(), free_port()
        extra = [] if args.clock_skew is None else ["--clock-skew", str(args.clock_skew)]
        with process([redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--dir", str(tmp)], None):  # fmt: skip
            time.sleep(0.3)
            r = redis.Redis(port=rport)
            baseline = int(r.info("memory")["used_memory"])
            with process([*ENTRY, "service", "--listen", f"127.0.0.1:{sport}",
                          "--policies", str(tmp / "policies.json"), "--root",
                          str(tmp / "root.pem"), "--sessions", f"redis://127.0.0.1:{rport}/0",
                          "--workers", str(args.workers), "--session-ttl",
                          str(args.session_ttl), *extra],
                         f"http://127.0.0.1:{sport}/healthz"):  # fmt: skip
                soak = Soak(f"http://127.0.0.1:{sport}", sim, args.minutes * 60)
                thread = threading.Thread(target=asyncio.run, args=(soak.run(),), daemon=True)
                t0 = time.monotonic()
                print(f"{CLIENTS} clients (half with relying-party nonces), "
                      f"{args.minutes:g} min, session TTL {args.session_ttl:g} s; "
                      f"redis baseline {mib(baseline)}")  # fmt: skip
                print(f"{'t (s)':>6} {'phase':>6} {'used_memory':>12} {'keys':>7} "
                      f"{'sessions':>9}")  # fmt: skip
                thread.start()
                peak_load, last_load = 0, 0
                drain_deadline = None
                while True:
                    time.sleep(args.every)
                    used = int(r.info("memory")["used_memory"])
                    keys = int(r.dbsize())
                    loading = thread.is_alive()
                    phase = "load" if loading else "drain"
                    print(f"{time.monotonic() - t0:6.0f} {phase:>6} {mib(used)} {keys:7d} "
                          f"{soak.done:9d}", flush=True)  # fmt: skip
                    if loading:
                        peak_load, last_load = max(peak_load, used), used
                        continue
                    if drain_deadline is None:
                        # Sessions, then nonce records (TTL + 2 skew), then Redis's expiry cycle.
                        skew = 60.0 if args.clock_skew is None else args.clock_skew
                        drain_deadline = time.monotonic() + args.session_ttl + 2 * skew + 30
                    if keys <= 1 or time.monotonic() > drain_deadline:
                        break
                print(f"sessions: {soak.done}; redis used_memory: baseline {mib(baseline)}, "
                      f"peak under load {mib(peak_load)}, at the end of the load "
                      f"{mib(last_load)}, after the drain {mib(used)} with {keys} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
