"""`nitro-attest verify DOC` wall time against a plain cbor2 + cryptography script, in one run.

Each round starts, as fresh processes and in alternating order:
  python   `python -c pass`: the interpreter's own start, the floor under both
  plain    bench/plain_verify.py DOC ROOT: five signature checks written plainly
  cli      `nitro-attest verify DOC --at document`: the same checks and every strict one, the
           report printed
  help     `nitro-attest --help` (no command module imported)
Wall time: best of the rounds, and median; CPU time (user + sys): best. Target (issue 24):
cli / plain <= 1.1 in wall time, median against median (was best against best <= 1.3, issue 12).
The children may write bytecode (PYTHONDONTWRITEBYTECODE is dropped for them), so after the
warm-up every module loads from its .pyc, as from any installed copy.

usage: python bench/cli.py [--rounds N] [--doc FILE]
"""

from __future__ import annotations

import _bootstrap  # first: runnable as python3 bench/NAME.py from a clone

# isort: split

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REAL = HERE.parent / "tests" / "vectors" / "real"
ROOT_PEM = HERE.parent / "src" / "nitro_attest" / "attestation" / "roots" / "aws_nitro_root_g1.pem"
CLI = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()"]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def commands(doc: Path) -> dict[str, list[str]]:
    return {
        "python": [sys.executable, "-c", "pass"],
        "plain": [sys.executable, str(HERE / "plain_verify.py"), str(doc), str(ROOT_PEM)],
        "cli": [*CLI, "verify", str(doc), "--at", "document"],
        "help": [*CLI, "--help"],
    }


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} exited with {proc.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--doc", type=Path, default=REAL / "signal_20230524_prod.cbor")
    args = parser.parse_args()
    _bootstrap.need_file(args.doc, "the document to verify: --doc")
    _bootstrap.need_file(ROOT_PEM, "the AWS root for the plain script")
    cmds = commands(args.doc)
    for name in ("plain", "cli"):  # warm-up, and proof that both verify the document
        out = subprocess.run(
            cmds[name], capture_output=True, text=True, check=True, env=ENV
        ).stdout
        if "VERIFIED" not in out:
            raise SystemExit(f"{name} did not verify {args.doc}: {out!r}")
    walls: dict[str, list[float]] = {name: [] for name in cmds}
    cpus: dict[str, list[float]] = {name: [] for name in cmds}
    order = list(cmds)
    for i in range(args.rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            w, c = run(cmds[name])
            walls[name].append(w)
            cpus[name].append(c)
    best = {name: min(s) for name, s in walls.items()}
    median = {name: statistics.median(s) for name, s in walls.items()}
    cpu = {name: min(s) for name, s in cpus.items()}
    print(f"{args.doc.name}, {args.rounds} rounds, per process: wall best (median), cpu best")
    for name in cmds:
        print(
            f"  {name:6s} {best[name] * 1e3:6.1f} ms ({median[name] * 1e3:6.1f})"
            f"   cpu {cpu[name] * 1e3:6.1f} ms"
        )
    ratio = median["cli"] / median["plain"]
    verdict = "OK" if ratio <= 1.1 else "MISSED"
    print(
        f"cli / plain = {ratio:.2f} wall median ({best['cli'] / best['plain']:.2f} best, "
        f"{cpu['cli'] / cpu['plain']:.2f} cpu)  (target <= 1.10 wall median) {verdict}"
    )
    print(f"help / python = {best['help'] / best['python']:.2f} best")


if __name__ == "__main__":
    main()
