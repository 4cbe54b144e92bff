"""`nitro-attest proxy` against socat, side by side in one run, tcp -> unix.

Measures, alternating the two proxies round by round:
  bulk     1 GiB from a TCP client through the proxy to a Unix-socket sink: GiB/s, and the
           proxy's CPU seconds per GiB (ours: /proc/PID/stat; socat: its rusage, one process per
           round, no fork);
  rtt      100-byte request/response round trips on one connection to a Unix echo server: p50
           and p99.
Targets: bulk >= 1.0x socat; rtt p50 <= 1.2x socat's. Best of --rounds; the spread of every
figure is (worst - best) / best over the rounds. socat is Debian's package: installed with
apt-get when missing and running as root, otherwise the script says how.

usage: python bench/proxy.py [--rounds 5] [--gib 1] [--trips 5000]
"""

from __future__ import annotations

import _bootstrap  # noqa: F401  # first: runnable as python3 bench/NAME.py from a clone

# isort: split

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ENTRY = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()"]
GIB = 1 << 30
CHUNK = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def ensure_socat() -> str:
    found = shutil.which("socat")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("socat not found; installing Debian's package with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "socat"], check=True, env=env)
        found = shutil.which("socat")
    if not found:
        sys.exit("error: socat not found; install it (sudo apt-get install -y socat) and rerun")
    return found


# -- targets, each in its own process ------------------------------------------------------------


def serve_sink(path: str) -> None:
    """Count bytes until EOF, answer the count."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    buf = bytearray(CHUNK)
    while True:
        conn, _ = listener.accept()
        total = 0
        while n := conn.recv_into(buf):
            total += n
        conn.sendall(str(total).encode())
        conn.close()


def serve_echo(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    while True:
        conn, _ = listener.accept()
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.close()


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_path(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            sys.exit(f"error: {path} did not appear")
        time.sleep(0.02)


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"error: nothing listens on port {port}")
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the two proxies -----------------------------------------------------------------------------


class Ours:
    name = "nitro-attest proxy"

    def __init__(self, target: Path) -> None:
        self.port = free_port()
        self.proc = spawn(
            *ENTRY, "proxy", "--listen", f"tcp://127.0.0.1:{self.port}", "--to", f"unix://{target}"
        )
        wait_port(self.port)  # the probe connection is logged and closed, nothing else

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def run(self, work: Callable[[int], float]) -> tuple[float, float]:
        before = self.cpu()
        result = work(self.port)
        return result, self.cpu() - before

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


class Socat:
    name = "socat"

    def __init__(self, socat: str, target: Path) -> None:
        self.socat, self.target = socat, target

    def run(self, work: Callable[[int], float]) -> tuple[float, float]:
        """One socat per round (no fork) so its own rusage is exactly this round's CPU."""
        port = free_port()
        proc = spawn(self.socat, f"TCP-LISTEN:{port},reuseaddr", f"UNIX-CONNECT:{self.target}")
        deadline = time.monotonic() + 10
        while not _listening(port):
            if time.monotonic() > deadline:
                sys.exit("error: socat did not start")
            time.sleep(0.01)
        result = work(port)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        return result, usage.ru_utime + usage.ru_stime

    def close(self) -> None:
        pass


def _listening(port: int) -> bool:
    """Check /proc/net/tcp instead of connecting, which would use up socat's single accept."""
    want = f":{port:04X} "
    text = Path("/proc/net/tcp").read_text()
    return any(want in line and line.split()[3] == "0A" for line in text.splitlines()[1:])


# -- the work ------------------------------------------------------------------------------------


def bulk(size: int) -> Callable[[int], float]:
    block = memoryview(os.urandom(CHUNK))

    def work(port: int) -> float:
        sock = socket.create_connection(("127.0.0.1", port))
        start = time.perf_counter()
        sent = 0
        while sent < size:
            sock.sendall(block)
            sent += CHUNK
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(64)
        elapsed = time.perf_counter() - start
        sock.close()
        if int(answer or b"0") != size:
            sys.exit(f"error: the sink counted {answer!r} bytes, expected {size}")
        return elapsed

    return work


def rtt(trips: int, out: list[list[float]]) -> Callable[[int], float]:
    message = b"r" * 100

    def work(port: int) -> float:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for i in range(trips + 200):
            t0 = time.perf_counter()
            sock.sendall(message)
            got = 0
            while got < len(message):
                got += len(sock.recv(4096))
            if i >= 200:  # warm-up round trips are not counted
                times.append(time.perf_counter() - t0)
        sock.close()
        times.sort()
        out.append(times)
        return times[len(times) // 2]

    return work


def spread(values: list[float], best: float) -> float:
    return (max(values) - min(values)) / best if best else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gib", type=float, default=1.0, help="bulk size in GiB (default 1)")
    ap.add_argument("--trips", type=int, default=5000)
    ap.add_argument("--serve-sink", help=argparse.SUPPRESS)
    ap.add_argument("--serve-echo", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink)
        return 0
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    socat = ensure_socat()
    size = int(args.gib * GIB) // CHUNK * CHUNK
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp:
        sink_path, echo_path = Path(tmp, "sink.sock"), Path(tmp, "echo.sock")
        targets = [
            spawn(sys.executable, __file__, "--serve-sink", str(sink_path)),
            spawn(sys.executable, __file__, "--serve-echo", str(echo_path)),
        ]
        try:
            wait_path(sink_path)
            wait_path(echo_path)
            return run_rounds(args, socat, size, sink_path, echo_path)
        finally:
            for proc in targets:
                proc.terminate()
                proc.wait(10)


def run_rounds(args: argparse.Namespace, socat: str, size: int, sink: Path, echo: Path) -> int:
    proxies_bulk = [Ours(sink), Socat(socat, sink)]
    proxies_rtt = [Ours(echo), Socat(socat, echo)]
    rate: dict[str, list[float]] = {p.name: [] for p in proxies_bulk}
    cpu: dict[str, list[float]] = {p.name: [] for p in proxies_bulk}
    p50: dict[str, list[float]] = {p.name: [] for p in proxies_bulk}
    p99: dict[str, list[float]] = {p.name: [] for p in proxies_bulk}
    gib = size / GIB
    try:
        for r in range(args.rounds):
            order = proxies_bulk if r % 2 == 0 else proxies_bulk[::-1]
            for proxy in order:
                elapsed, seconds = proxy.run(bulk(size))
                rate[proxy.name].append(gib / elapsed)
                cpu[proxy.name].append(seconds / gib)
            order = proxies_rtt if r % 2 == 0 else proxies_rtt[::-1]
            for proxy in order:
                samples: list[list[float]] = []
                proxy.run(rtt(args.trips, samples))
                times = samples[0]
                p50[proxy.name].append(times[len(times) // 2] * 1e6)
                p99[proxy.name].append(times[len(times) * 99 // 100] * 1e6)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for proxy in (*proxies_bulk, *proxies_rtt):
            proxy.close()
    ours, theirs = Ours.name, Socat.name
    print(f"tcp -> unix, {gib:g} GiB bulk, {args.trips} round trips, best of {args.rounds} rounds")
    print(
        f"{'':20}{'bulk GiB/s':>11}{'spread':>7}{'CPU s/GiB':>10}{'spread':>7}"
        f"{'p50 us':>8}{'spread':>7}{'p99 us':>8}{'spread':>7}"
    )
    for name in (ours, theirs):
        row = [(max(rate[name]), rate[name]), (min(cpu[name]), cpu[name])]
        row += [(min(p50[name]), p50[name]), (min(p99[name]), p99[name])]
        cells = "".join(
            f"{best:{w}.{d}f}{spread(values, best):7.0%}"
            for (best, values), w, d in zip(row, (11, 10, 8, 8), (2, 2, 1, 1), strict=True)
        )
        print(f"{name:20}{cells}")
    bulk_ratio = max(rate[ours]) / max(rate[theirs])
    p50_ratio = min(p50[ours]) / min(p50[theirs])
    per_round = [a / b for a, b in zip(rate[ours], rate[theirs], strict=True)]
    per_round_p50 = [a / b for a, b in zip(p50[ours], p50[theirs], strict=True)]
    print(
        f"bulk: {bulk_ratio:.2f}x socat (target >= 1.0; per round {min(per_round):.2f}-"
        f"{max(per_round):.2f}) -> {'PASS' if bulk_ratio >= 1.0 else 'FAIL'}"
    )
    print(
        f"rtt p50: {p50_ratio:.2f}x socat (target <= 1.2; per round {min(per_round_p50):.2f}-"
        f"{max(per_round_p50):.2f}) -> {'PASS' if p50_ratio <= 1.2 else 'FAIL'}"
    )
    print(f"rtt p99: {min(p99[ours]) / min(p99[theirs]):.2f}x socat (best round of each)")
    print(
        f"CPU: {min(cpu[ours]):.2f} s/GiB vs socat {min(cpu[theirs]):.2f} s/GiB "
        f"({min(cpu[ours]) / min(cpu[theirs]):.2f}x)"
    )
    return 0 if bulk_ratio >= 1.0 and p50_ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
