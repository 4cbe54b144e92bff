"""Where bench/server.py's CPU ratio comes from: the server's cost outside the NSM call.

Runs `nitro-attest serve --nsm simulator` twice under the same client load as bench/server.py,
each time through a wrapper around the NSM it opens:
  timed    the real simulator, each attestation call timed with thread_time() inside the server:
           what one document costs there, beside what it costs in a quiet loop (raw);
  const    one precomputed document returned for every call: the server's CPU per request is
           then everything the server does outside the NSM call (frames, CBOR, log, syscalls).
Figures are CPU microseconds per request (the server's /proc accounting), per round. The server
is pinned to its own CPU as in bench/server.py (--no-pin: everything floats).

usage: python bench/server_overhead.py [--seconds 3] [--clients 8,64] [--rounds 3]
"""

from __future__ import annotations

import _bootstrap  # noqa: F401  # first: runnable as python3 bench/NAME.py from a clone

# isort: split

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from server import Pinning, load, raw_rate, wait_for_socket  # bench/server.py

# Runs inside the server process: wraps serve's NSM, then runs the CLI as usual.
_WRAPPER = """
import atexit, sys, time
from pathlib import Path
from nitro_attest._cli import entrypoint, serve_cmd
mode, out = sys.argv.pop(1), sys.argv.pop(1)
real_open = serve_cmd.open_nsm
spent = [0.0, 0]

class Wrapped:
    def __init__(self, backend):
        self.backend = backend
        self.doc = backend.attestation(nonce=bytes(8), user_data=b"bench", public_key=bytes(40))
    def attestation(self, **fields):
        if mode == "const":
            return self.doc
        t0 = time.thread_time()
        document = self.backend.attestation(**fields)
        spent[0] += time.thread_time() - t0
        spent[1] += 1
        return document
    def __getattr__(self, name):
        return getattr(self.backend, name)

atexit.register(lambda: Path(out).write_text(f"{spent[0]} {spent[1]}"))
serve_cmd.open_nsm = lambda kind, state: Wrapped(real_open(kind, state))
sys.argv[0] = "nitro-attest"
entrypoint()
"""


def run(
    mode: str, state: Path, tmp: Path, levels: list[int], seconds: float, rounds: int, pin: Pinning
) -> None:
    sock = tmp / f"{mode}.sock"
    out = tmp / f"{mode}.out"
    cmd = [sys.executable, "-c", _WRAPPER, mode, str(out), "serve", "--listen", f"unix://{sock}"]
    cmd += ["--nsm", "simulator", "--state", str(state)]
    with (tmp / f"{mode}.log").open("wb") as log:
        server = subprocess.Popen(pin.command(cmd), stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for_socket(sock, server)
        for _ in range(rounds):
            pin.run_as_server()
            _, doc = raw_rate(state, seconds / 2)
            pin.run_as_clients()
            cells = []
            for clients in levels:
                _, _, per_request = load(f"unix://{sock}", clients, seconds, server.pid)
                cells.append(f"{clients:>3} clients {per_request * 1e6:6.1f}")
            line = ", ".join(cells)
            print(f"{mode:>5}: raw document {doc * 1e6:6.1f} us; server us/request: {line}")
    finally:
        server.terminate()
        server.wait(10)
    if mode == "timed":
        total, calls = out.read_text().split()
        each = float(total) / max(1, int(calls)) * 1e6
        print(f"timed: one document inside the server, under load: {each:.1f} us ({calls} calls)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="8,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true", help="let server and clients float")
    args = parser.parse_args()
    pin = Pinning(not args.no_pin)
    levels = [int(x) for x in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as name:
        tmp = Path(name)
        state = tmp / "sim"
        raw_rate(state, 0.2)  # creates the simulator state
        print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        for mode in ("timed", "const"):
            run(mode, state, tmp, levels, args.seconds, args.rounds, pin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
