"""How `service --workers N` spreads keep-alive connections across its workers.

Starts a redis-server and `nitro-attest service --workers N` on it, opens C keep-alive
connections (each makes one request, then stays open, as a load balancer's pool would), and
counts with `ss -tnp` which worker process holds each accepted connection. Several rounds, each
with fresh connections; prints the count per worker, sorted, and the largest share.

Usage: python bench/service_workers.py [--workers 4] [--connections 17] [--rounds 5]
(needs redis-server and ss on PATH; run from the tree whose service you want to measure:
PYTHONPATH=src)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state
from service import ENTRY, MEAS, free_port, process


def holders(port: int) -> Counter[int]:
    """pid -> established server-side connections on ``port``."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return Counter(int(m) for m in re.findall(r"pid=(\d+)", out))


def one_round(port: int, connections: int) -> list[int]:
    socks = []
    try:
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        for s in socks:  # every connection accepted and answered by some worker
            if not s.recv(4096).startswith(b"HTTP/1.1 200"):
                raise SystemExit("healthz did not answer 200")
        time.sleep(0.2)
        return sorted(holders(port).values(), reverse=True)
    finally:
        for s in socks:
            s.close()
        time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=17)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    redis_bin = shutil.which("redis-server")
    if not redis_bin or not shutil.which("ss"):
        print("error: needs redis-server and ss on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nitro-bench-") as tmp_text:
        tmp = Path(tmp_text)
        sim = SimulatedNsm(init_state(tmp / "sim", SimulatorConfig(
            instance_id="i-0123456789abcdef0", measurements=MEAS)))  # fmt: skip
        (tmp / "root.pem").write_bytes(sim.root_pem)
        measurements = {f"PCR{i}": v.hex() for i, v in MEAS.items()}
        (tmp / "policies.json").write_text(json.dumps(
            {"default": "prod", "policies": {"prod": {"expected": [
                {"Measurements": measurements}]}}}))  # fmt: skip
        rport, sport = free_port(), free_port()
        with process([redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--dir", str(tmp)], None):  # fmt: skip
            time.sleep(0.3)
            with process([*ENTRY, "service", "--listen", f"127.0.0.1:{sport}",
                          "--policies", str(tmp / "policies.json"), "--root",
                          str(tmp / "root.pem"), "--sessions", f"redis://127.0.0.1:{rport}/0",
                          "--workers", str(args.workers)],
                         f"http://127.0.0.1:{sport}/healthz"):  # fmt: skip
                time.sleep(1.0)  # every worker up, not only the first
                print(f"{args.workers} workers, {args.connections} keep-alive connections "
                      f"per round")  # fmt: skip
                shares = []
                for i in range(args.rounds):
                    counts = one_round(sport, args.connections)
                    shares.append(counts[0] / args.connections)
                    print(f"  round {i + 1}: connections per worker {counts} "
                          f"({len(counts)} of {args.workers} workers used)")  # fmt: skip
                print(f"largest share on one worker: best {min(shares):.0%}, "
                      f"worst {max(shares):.0%} (even: {1 / args.workers:.0%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
