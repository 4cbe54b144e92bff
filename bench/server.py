"""Enclave server throughput and latency over a Unix socket against the software NSM.

Measures, in one run:
  raw      documents per second from the simulator called directly (no server, no socket);
  served   requests per second, p50 and p99 latency with 1, 8 and 64 concurrent clients, each
           client one persistent connection sending requests back to back.
The server runs in its own process (`nitro-attest serve --nsm simulator`), so client work does
not share its interpreter lock. Target: served/raw >= 0.8 at 8 clients.

usage: python bench/server.py [--seconds 3] [--clients 1,8,64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from nitro_attest.nsm import open_backend
from nitro_attest.wire.client import Connection


def raw_rate(state: Path, seconds: float) -> float:
    backend = open_backend("simulator", state_dir=state)
    try:
        backend.attestation(nonce=b"warm-up")
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            backend.attestation(nonce=n.to_bytes(8, "big"), user_data=b"bench")
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        backend.close()


def load(address: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[BaseException] = []
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        try:
            with Connection(address, timeout=30) as conn:
                conn.attest(nonce=b"warm-up")
                start_gate.wait()
                n = 0
                while True:
                    t0 = time.perf_counter()
                    if t0 >= stop_at[0]:
                        break
                    conn.attest(nonce=(i << 32 | n).to_bytes(8, "big"), user_data=b"bench")
                    latencies[i].append(time.perf_counter() - t0)
                    n += 1
        except BaseException as exc:
            failures.append(exc)
            start_gate.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = float("inf")
    start_gate.wait()
    begin = time.perf_counter()
    stop_at[0] = begin + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    if failures:
        raise RuntimeError(f"{len(failures)} client(s) failed: {failures[0]!r}")
    flat = [x for per in latencies for x in per]
    return len(flat) / elapsed, flat


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        if path.exists():
            return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,8,64")
    args = parser.parse_args()
    levels = [int(x) for x in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        state = Path(tmp) / "sim"
        sock = Path(tmp) / "enclave.sock"
        raw_before = raw_rate(state, args.seconds)  # also creates the simulator state
        cmd = [
            sys.executable,
            "-c",
            "from nitro_attest._cli import entrypoint; entrypoint()",
            "serve",
            "--listen",
            f"unix://{sock}",
            "--nsm",
            "simulator",
            "--state",
            str(state),
            "--max-connections",
            str(max(levels) + 8),
        ]
        log = (Path(tmp) / "server.log").open("wb")  # a pipe nobody reads would fill and block
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for_socket(sock, server)
            print(f"cpus: {os.cpu_count()}, {args.seconds:g}s per level, server in its own process")
            rows = []
            for clients in levels:
                rps, lat = load(f"unix://{sock}", clients, args.seconds)
                lat.sort()
                p50 = statistics.median(lat) * 1000
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
                rows.append((clients, rps, p50, p99))
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
            lines = (Path(tmp) / "server.log").read_text().splitlines()
        # The raw rate is measured before and after the served runs (the machine is shared, so it
        # drifts); ratios use their mean.
        raw_after = raw_rate(state, args.seconds)
        raw = (raw_before + raw_after) / 2
        print(
            f"simulator raw: {raw:8.1f} documents/s ({1000 / raw:.2f} ms each; "
            f"{raw_before:.0f} before, {raw_after:.0f} after the served runs)"
        )
        print(f"{'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}")
        for clients, rps, p50, p99 in rows:
            print(f"{clients:>7} {rps:>9.1f} {p50:>8.2f} {p99:>8.2f} {rps / raw:>6.2f}")
        print("target: ratio >= 0.80 at 8 clients")
        print(f"server log lines: {len(lines)} (one per request)")
        print(f"socket removed on SIGTERM: {not sock.exists()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
