"""`nitro-attest https serve` against Debian's nginx as the TLS reverse proxy, side by side.

Measures, alternating the two fronts round by round, both in front of the same trivial app (an
asyncio responder in its own process) on 127.0.0.1:
  throughput  requests/s over TLS 1.3, keep-alive, 16 connections (wrk -t2 -c16), one worker
              process each (ours is one process; nginx gets worker_processes 1), a log line per
              request each (nginx's access_log to a file, ours to /dev/null via stderr); and each
              front's CPU per request (/proc: user + system, nginx's master and worker);
  setup       one attested connection (TCP, TLS handshake, the attestation request on it, the
              NSM document made by the software NSM, its verification, the key and PCR16 checks)
              against its parts measured alone: one plain TLS handshake to the same front plus
              one verification of a document. Median of --setups each, per round. Also printed:
              the NSM's document counted as a part, and the attestation exchange alone on the
              plain connection (request, the front's document, answer read): handshake, exchange
              and verification one after the other are the floor of this protocol.
Targets: throughput >= 0.5x nginx's; setup <= 1.2x its parts. Best of --rounds, and the spread
(worst - best) / best over the rounds. nginx-light and wrk are Debian's packages: installed
with apt-get when missing and running as root (the script says so first), otherwise it says how.

--baseline SRC also runs the `https serve` of another source tree (e.g. a checkout's src/) in the
same rotation, for before/after CPU per request side by side (whole runs move too much on a
shared machine to resolve 10%).

usage: python bench/https.py [--rounds 3] [--seconds 5] [--setups 60] [--baseline SRC]
"""

from __future__ import annotations

import _bootstrap  # noqa: F401  # first: runnable as python3 bench/NAME.py from a clone

# isort: split

import argparse
import functools
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENTRY = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()"]

APP = r"""
import asyncio, sys
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
class App(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport; self.buf = b""
    def data_received(self, data):
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.t.write(ANSWER * n)
async def main():
    server = await asyncio.get_running_loop().create_server(App, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
asyncio.run(main())
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{ server 127.0.0.1:{app}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        ssl_protocols TLSv1.3;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"""


def ensure(tool: str, package: str) -> str:
    found = shutil.which(tool) or (shutil.which(tool, path="/usr/sbin") if tool == "nginx"
                                   else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"{tool} not found; installing Debian's {package} with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)
        found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin")
    if not found:
        sys.exit(f"error: {tool} not found; install it (sudo apt-get install -y {package})")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: {what} exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"error: {what} did not listen")


def write_tls(folder: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from nitro_attest.https.identity import _certificate  # the front's own kind of certificate

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(key, ["localhost"])
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its direct children (nginx's workers), from /proc."""
    def own(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    total = own(pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    total += own(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(
    wrk_bin: str, port: int, seconds: float, pid: int, app_pid: int
) -> tuple[float, float, float, float]:
    """Requests/s; the front's CPU per request in us (steadier than requests/s when other
    work shares the cores: it does not count the time the front waited for a CPU); and wrk's
    and the app's CPU per request in us, to show what the load generator and the app take of
    the same two cores."""
    before, app_before, wrk_before = cpu_seconds(pid), cpu_seconds(app_pid), _children_cpu()
    out = subprocess.run(
        [wrk_bin, "-t2", "-c16", f"-d{seconds:g}s", f"https://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    used = cpu_seconds(pid) - before
    app_used = cpu_seconds(app_pid) - app_before
    wrk_used = _children_cpu() - wrk_before
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  wrk reported: {errors.group(0)}", file=sys.stderr)
    found = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not found or not total:
        sys.exit("error: no Requests/sec in wrk's output:\n" + out)
    count = max(1, int(total.group(1)))
    return (float(found.group(1)), used / count * 1e6, wrk_used / count * 1e6,
            app_used / count * 1e6)


def setup_costs(port: int, state: Path, n: int) -> tuple[float, float, float, float, float]:
    """Medians, in ms: attested connection; plain TLS handshake; one document verification;
    one document from the software NSM (the enclave's share, not among the target's parts);
    and the attestation exchange alone on the plain connection just made (request sent, the
    front's NSM document, the answer read: no checks), which no attested connection under
    this protocol can skip."""
    from nitro_attest.attestation.document import parse_document
    from nitro_attest.attestation.policy import Policy
    from nitro_attest.attestation.verifier import Verifier
    from nitro_attest.https.attest import attestation_request, read_document
    from nitro_attest.https.client import AttestedConnection, client_context, parse_url
    from nitro_attest.nsm.simulator.nsm import SimulatedNsm

    root = (state / "root.pem").read_bytes()
    verifier = Verifier(root_pem=root)
    nsm = SimulatedNsm.open(state)
    sample = nsm.attestation(nonce=os.urandom(32), public_key=os.urandom(91))
    pcrs = parse_document(sample).pcrs
    policy = Policy(pcr_sets=({i: pcrs[i] for i in (0, 1, 2)},))
    url = parse_url(f"https://127.0.0.1:{port}/")
    context = client_context()

    attested, plain, verify, signing, exchange = [], [], [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        with AttestedConnection(url, verifier=verifier, policy=policy) as conn:
            conn.open()
            attested.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        raw = socket.create_connection(("127.0.0.1", port))
        # As the attested client does: the handshake sends the same either way, and without it
        # the exchange after it waits for the delayed ACK of the Finished (40 ms; no tickets).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = context.wrap_socket(raw, server_hostname=None)
        tls.getpeercert(binary_form=True)
        plain.append(time.perf_counter() - t0)
        request = attestation_request(url.authority, os.urandom(32))
        t0 = time.perf_counter()
        tls.sendall(request)
        read_document(functools.partial(tls.recv, 65536))
        exchange.append(time.perf_counter() - t0)
        tls.close()
        nonce = os.urandom(32)
        key = os.urandom(91)
        t0 = time.perf_counter()
        document = nsm.attestation(nonce=nonce, public_key=key)
        signing.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        verifier.verify(document, policy=Policy(pcr_sets=policy.pcr_sets, nonce=nonce,
                                                public_key=key))
        verify.append(time.perf_counter() - t0)
    return tuple(  # type: ignore[return-value]
        statistics.median(v) * 1000 for v in (attested, plain, verify, signing, exchange)
    )


def spread(values: list[float], best: float) -> float:
    worst = min(values) if best == max(values) else max(values)
    return abs(worst - best) / best * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--setups", type=int, default=60)
    parser.add_argument("--baseline", metavar="SRC", type=Path,
                        help="also run this source tree's https serve, side by side")
    args = parser.parse_args()
    nginx = ensure("nginx", "nginx-light")
    wrk_bin = ensure("wrk", "wrk")

    with tempfile.TemporaryDirectory(prefix="bench-https-") as tmp:
        folder = Path(tmp)
        app_port, ours_port, nginx_port = free_port(), free_port(), free_port()
        procs: list[subprocess.Popen[bytes]] = []
        # Our log line per request goes to a file, as nginx's access_log does.
        ours_log = (folder / "https.log").open("wb")  # closed in finally
        try:
            app = subprocess.Popen([sys.executable, "-c", APP, str(app_port)])
            procs.append(app)
            wait_port(app_port, app, "the app")
            state = folder / "sim"
            subprocess.run([*ENTRY, "sim", "init", "--state", str(state)], check=True,
                           stdout=subprocess.DEVNULL)
            ours = subprocess.Popen(
                [*ENTRY, "https", "serve", "--listen", f"tcp://127.0.0.1:{ours_port}",
                 "--to", f"tcp://127.0.0.1:{app_port}", "--nsm", "simulator",
                 "--state", str(state)],
                stderr=ours_log,
            )
            procs.append(ours)
            wait_port(ours_port, ours, "https serve")
            fronts = [("ours", ours_port, ours.pid)]
            if args.baseline is not None:
                base_port = free_port()
                env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
                base = subprocess.Popen(
                    [*ENTRY, "https", "serve", "--listen", f"tcp://127.0.0.1:{base_port}",
                     "--to", f"tcp://127.0.0.1:{app_port}", "--nsm", "simulator",
                     "--state", str(state)],
                    stderr=ours_log, env=env,
                )
                procs.append(base)
                wait_port(base_port, base, "the baseline's https serve")
                fronts.append(("baseline", base_port, base.pid))
            write_tls(folder)
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (folder / sub).mkdir()
            conf = folder / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=folder, app=app_port, port=nginx_port))
            web = subprocess.Popen([nginx, "-c", str(conf), "-e", str(folder / "error.log")])
            procs.append(web)
            wait_port(nginx_port, web, "nginx")

            rps: dict[str, list[float]] = {"ours": [], "nginx": [], "baseline": []}
            cpu: dict[str, list[float]] = {"ours": [], "nginx": [], "baseline": []}
            others: dict[str, list[tuple[float, float]]] = {"ours": [], "nginx": [],
                                                            "baseline": []}
            setups: list[tuple[float, float, float, float, float]] = []
            for r in range(args.rounds):
                for name, port, pid in (*fronts, ("nginx", nginx_port, web.pid)):
                    got, us, wrk_us, app_us = wrk(wrk_bin, port, args.seconds, pid, app.pid)
                    rps[name].append(got)
                    cpu[name].append(us)
                    others[name].append((wrk_us, app_us))
                setups.append(setup_costs(ours_port, state, args.setups))
                print(f"round {r + 1}: ours {rps['ours'][-1]:.0f} req/s ({cpu['ours'][-1]:.0f} "
                      f"us CPU/req; wrk {others['ours'][-1][0]:.0f}, app "
                      f"{others['ours'][-1][1]:.0f}), nginx {rps['nginx'][-1]:.0f} req/s "
                      f"({cpu['nginx'][-1]:.0f} us CPU/req; wrk {others['nginx'][-1][0]:.0f}, "
                      f"app {others['nginx'][-1][1]:.0f}); setup {setups[-1][0]:.2f} ms vs TLS "
                      f"{setups[-1][1]:.2f} + verify {setups[-1][2]:.2f} ms (NSM document "
                      f"{setups[-1][3]:.2f} ms; the exchange alone {setups[-1][4]:.2f} ms)",
                      file=sys.stderr)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            ours_log.close()

    best_ours, best_nginx = max(rps["ours"]), max(rps["nginx"])
    ratio = best_ours / best_nginx
    for label, best_rps, values in (("https serve", best_ours, rps["ours"]),
                                    ("nginx      ", best_nginx, rps["nginx"])):
        print(f"throughput  {label} {best_rps:8.0f} req/s (spread {spread(values, best_rps):.0f}%)")
    print(f"            ratio {ratio:.2f}x  target >= 0.5x  {'MET' if ratio >= 0.5 else 'MISSED'}")
    least_ours, least_nginx = min(cpu["ours"]), min(cpu["nginx"])
    print(f"CPU/request https serve {least_ours:.1f} us "
          f"(spread {spread(cpu['ours'], least_ours):.0f}%), "
          f"nginx {least_nginx:.1f} us (spread {spread(cpu['nginx'], least_nginx):.0f}%): "
          f"nginx's CPU is {least_nginx / least_ours:.2f}x ours (the req/s ratio an unshared "
          "core would give)")
    for label, name in (("https serve", "ours"), ("nginx", "nginx")):
        wrk_us = min(w for w, _ in others[name])
        app_us = min(a for _, a in others[name])
        print(f"            with {label}: wrk {wrk_us:.1f} us and the app {app_us:.1f} us CPU per "
              "request (the same two cores)")
    if rps["baseline"]:
        least_base = min(cpu["baseline"])
        print(f"baseline    {args.baseline}: {max(rps['baseline']):.0f} req/s, CPU/request "
              f"{least_base:.1f} us (spread {spread(cpu['baseline'], least_base):.0f}%): ours "
              f"is {least_ours / least_base:.2f}x its CPU per request")
    ratios = [a / (t + v) for a, t, v, _, _ in setups]
    best = min(ratios)
    a, t, v, g, x = setups[ratios.index(best)]
    print(f"setup       attested {a:.2f} ms; parts: TLS handshake {t:.2f} ms + verification "
          f"{v:.2f} ms = {t + v:.2f} ms")
    print(f"            ratio {best:.2f}x (spread {spread(ratios, best):.0f}%)  target <= 1.2x  "
          f"{'MET' if best <= 1.2 else 'MISSED'}")
    with_nsm = [a / (t + v + g) for a, t, v, g, _ in setups]
    print(f"            the NSM's document ({g:.2f} ms, software NSM) counted as a part too: "
          f"{min(with_nsm):.2f}x (spread {spread(with_nsm, min(with_nsm)):.0f}%)")
    # The protocol's own floor: an attested connection is a handshake, then an exchange on it
    # (a round trip to the front and its NSM document), then a verification, one after the
    # other. Each measured alone; what the attested connection pays beyond their sum is the
    # client's and the front's own work around them.
    floors = [(t + x + v) / (t + v) for a, t, v, _, x in setups]
    print(f"            the exchange alone on an open TLS connection {x:.2f} ms (NSM document "
          f"included): handshake + exchange + verification, one after the other, are "
          f"{min(floors):.2f}x the parts (the floor under this protocol; spread "
          f"{spread(floors, min(floors)):.0f}%); the attested connection costs "
          f"{a - (t + x + v):+.2f} ms beyond them (the best round's)")


if __name__ == "__main__":
    main()
