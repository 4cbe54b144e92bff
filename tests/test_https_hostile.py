"""Hostile clients do not stop the front serving others: slow heads are cut at the header
deadline, huge heads get 431, connections beyond the limit shed the least recently active, and
TCP connections that never start TLS count and are shed too.

Threat model: anyone who reaches the port the parent exposes, and the parent itself, can open
connections and send anything (docs/https.md)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path

from nitro_attest.attestation.verifier import Verifier
from nitro_attest.https.client import fetch

from .httpskit import POLICY, Front, running_app, running_front, sim, tls_connect
from .serverkit import wait_for


def _served(front: Front, state: Path, path: str = "/ok") -> bytes:
    got: list[bytes] = []
    response, _ = fetch(
        front.url + path, verifier=Verifier(root_pem=(state / "root.pem").read_bytes()),
        policy=POLICY, sink=got.append, timeout=10,
    )
    assert response.status == 200
    return b"".join(got)


def _read_all(sock: ssl.SSLSocket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            out += data
    return out


def test_slow_head_is_cut_while_others_are_served(sim_state: Path) -> None:
    with running_app() as app, running_front(
        sim(sim_state), app.address, header_timeout=1.0
    ) as front:
        slow = tls_connect(front.address)
        slow.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        answer = b""
        slow.settimeout(0.2)
        served_meanwhile = False
        for step in range(40):  # a byte every 0.1 s: never a complete head
            try:
                slow.sendall(b"X")
            except OSError:
                break
            if step == 3:  # another client, while the slow one holds its connection
                served_meanwhile = _served(front, sim_state) == b"hello /ok\n"
            with contextlib.suppress(TimeoutError, ssl.SSLError, OSError):
                answer += slow.recv(65536)
            if answer:
                break
            time.sleep(0.1)
        assert served_meanwhile
        elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert elapsed < 6.0  # 1 s deadline, swept every 0.25 s; slack for a loaded machine
        slow.close()
        assert [s.path for s in app.seen] == ["/ok"]


def test_huge_head_gets_431(sim_state: Path) -> None:
    with running_app() as app, running_front(
        sim(sim_state), app.address, max_header_bytes=4096
    ) as front:
        big = tls_connect(front.address)
        big.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        assert _read_all(big, 5).startswith(b"HTTP/1.1 431 ")
        big.close()
        assert _served(front, sim_state) == b"hello /ok\n"
        assert app.seen and all(s.path == "/ok" for s in app.seen)


def test_many_connections_shed_the_idle_ones(sim_state: Path) -> None:
    limit = 8
    with running_app() as app, running_front(
        sim(sim_state), app.address, max_connections=limit, header_timeout=5.0
    ) as front:
        held = [tls_connect(front.address) for _ in range(3 * limit)]
        raw = [socket.create_connection((front.address.host, front.address.port))
               for _ in range(limit)]  # never start TLS
        time.sleep(0.3)
        assert front.front.active_connections <= limit
        for i in range(3):
            assert _served(front, sim_state, f"/ok{i}") == f"hello /ok{i}\n".encode()
        closed = 0
        for sock in held:
            sock.settimeout(0.5)
            try:
                if sock.recv(1) == b"":
                    closed += 1
            except (ssl.SSLError, ConnectionError):
                closed += 1
            except TimeoutError:
                pass
            sock.close()
        for s in raw:
            s.close()
        assert closed >= 2 * limit  # the older holders were shed for the newcomers
        assert [s.path for s in app.seen] == ["/ok0", "/ok1", "/ok2"]


def test_attestation_path_refuses_bad_nonces_and_methods(sim_state: Path) -> None:
    with running_app() as app, running_front(sim(sim_state), app.address) as front:
        for request, status in [
            (b"GET /.well-known/nitro-attestation HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /.well-known/nitro-attestation?nonce=abcd HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /.well-known/nitro-attestation?nonce=" + b"ab" * 65
             + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /.well-known/nitro-attestation?nonce=zz" + b"ab" * 8
             + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"POST /.well-known/nitro-attestation?nonce=" + b"ab" * 8
             + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
            (b"GET /.well-known/nitro%2Dattestation?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ]:
            sock = tls_connect(front.address)
            sock.sendall(request)
            assert _read_all(sock, 5).startswith(b"HTTP/1.1 %d " % status), request
            sock.close()
        sock = tls_connect(front.address)
        sock.sendall(b"GET /.well-known/nitro-attestation?nonce=" + b"ab" * 8
                     + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = _read_all(sock, 5)
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200 ")
        assert b"content-type: application/vnd.aws.nitro-enclaves.attestation-document+cose" in head
        assert b"cache-control: no-store" in head
        sock.close()
        assert app.seen == []


def test_smuggling_head_is_refused_and_never_reaches_the_app(sim_state: Path) -> None:
    with running_app() as app, running_front(sim(sim_state), app.address) as front:
        sock = tls_connect(front.address)
        sock.sendall(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert _read_all(sock, 5).startswith(b"HTTP/1.1 400 ")
        sock.close()
        assert app.seen == []


def test_unix_listener_serves_and_removes_its_socket_file(sim_state: Path, tmp_path: Path) -> None:

    from nitro_attest.https.front import Attester, FrontConfig, HttpsFront
    from nitro_attest.https.identity import make_identity
    from nitro_attest.wire.transport import parse_address

    from .serverkit import loop_in_thread

    path = tmp_path / "front.sock"
    with running_app() as app:
        identity = make_identity()
        front = HttpsFront(FrontConfig(app=parse_address(app.address)), identity,
                           Attester(sim(sim_state), identity.spki_der))
        listen = parse_address(f"unix://{path}", role="listen")
        with loop_in_thread(lambda: front.start(listen), lambda: front.shutdown(0.5),
                            "nitro_attest.https"):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))
            from nitro_attest.https.client import client_context

            tls = client_context().wrap_socket(sock, server_hostname=None)
            tls.sendall(b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_all(tls, 5).endswith(b"hello /u\n")
            tls.close()
            assert path.exists()
    assert not path.exists()
    assert [s.path for s in app.seen] == ["/u"]


def test_a_connection_that_never_starts_tls_is_cut(sim_state: Path) -> None:
    with running_app() as app, running_front(
        sim(sim_state), app.address, header_timeout=0.5
    ) as front:
        silent = socket.create_connection((front.address.host, front.address.port))
        silent.settimeout(3)
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the front, not by our timeout
        assert time.monotonic() - started < 5.0  # 0.5 s deadline; slack for a loaded machine
        silent.close()
        wait_for(lambda: front.front.active_connections == 0, 5, "the connection forgotten")


def test_serve_refuses_bad_flags(sim_state: Path, capsys: object) -> None:
    from nitro_attest._cli import main

    base = ["https", "serve", "--listen", "tcp://127.0.0.1:0", "--nsm", "simulator",
            "--state", str(sim_state)]
    assert main([*base, "--to", "tcp://127.0.0.1:1", "--name", "bad name!"]) == 2
    assert main([*base, "--to", "vsock://16:80"]) == 2
    assert main([*base, "--to", "tcp://127.0.0.1:1", "--max-connections", "0"]) == 2
