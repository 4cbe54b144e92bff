"""Attested HTTPS end to end: `nitro-attest https get` -> `nitro-attest proxy` (the parent,
inbound) -> `nitro-attest https serve` (the enclave, software NSM) -> the app; bodies stream both
ways; the httpx transport pools attested connections and re-attests new ones; SIGTERM drains."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from nitro_attest._cli import main
from nitro_attest.https import AttestedTransport

from .httpskit import POLICY, App, pcr_flags, running_app, running_front, sim
from .proxykit import ENTRY, proxy_process
from .serverkit import wait_for

MIB = 1024 * 1024


class HttpsProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*ENTRY, "https", "serve", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: self.port is not None or self.proc.poll() is not None, 20, "https start")
        if self.port is None:
            raise AssertionError("https serve did not start: " + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def port(self) -> int | None:
        for line in list(self.lines):
            found = re.search(r"https listening on tcp://127\.0\.0\.1:(\d+)", line)
            if found:
                return int(found.group(1))
        return None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(5)


@contextmanager
def https_process(state: Path, app: App) -> Iterator[HttpsProcess]:
    proc = HttpsProcess(
        "--listen", "tcp://127.0.0.1:0", "--to", app.address, "--nsm", "simulator",
        "--state", str(state), "--name", "localhost",
    )
    try:
        yield proc
    finally:
        proc.stop()


def test_through_the_parents_proxy(
    sim_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The deployed path: remote client -> proxy on the parent (inbound TCP forwarding, standing
    in for TCP -> vsock) -> https serve in the enclave -> the app."""
    with running_app() as app, https_process(sim_state, app) as enclave, proxy_process(
        "--listen", "tcp://127.0.0.1:0", "--to", f"tcp://127.0.0.1:{enclave.port}"
    ) as parent:
        url = f"https://127.0.0.1:{parent.address.port}"
        out = tmp_path / "body"
        rc = main(["https", "get", url + "/orders?id=7", "--root", str(sim_state / "root.pem"),
                   *pcr_flags(), "-H", "X-Client: cli", "--output", str(out)])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert out.read_bytes() == b"hello /orders?id=7\n"
        assert "attested: PCR0" in err and "HTTP 200" in err
        rc = main(["https", "get", url + "/upload", "--root", str(sim_state / "root.pem"),
                   *pcr_flags(), "-d", "form=1"])
        assert rc == 0
        assert capsys.readouterr().out.startswith("6 ")
        assert [(s.method, s.path) for s in app.seen] == [("GET", "/orders?id=7"),
                                                          ("POST", "/upload")]
        assert app.seen[0].headers["x-client"] == "cli"
        assert app.seen[0].headers["x-forwarded-proto"] == "https"
        wait_for(lambda: len(parent.connection_lines()) == 2, 10, "proxy log lines")
        assert rc == 0
    lines = "\n".join(enclave.lines)
    assert "GET /orders status=200" in lines  # one line per request, without the query
    assert "id=7" not in lines
    assert lines.count("GET /.well-known/nitro-attestation status=200") == 2


def test_sigterm_drains_a_request_in_flight(sim_state: Path) -> None:
    with running_app() as app, https_process(sim_state, app) as enclave:
        transport = AttestedTransport(policy=POLICY, root=(sim_state / "root.pem").read_bytes())
        result: list[httpx.Response] = []
        with httpx.Client(transport=transport, timeout=20) as client:
            worker = threading.Thread(
                target=lambda: result.append(client.get(f"https://127.0.0.1:{enclave.port}/slow"))
            )
            worker.start()
            wait_for(lambda: any(s.path == "/slow" for s in app.seen), 10, "request at the app")
            enclave.proc.send_signal(signal.SIGTERM)
            worker.join(60)  # generous: a loaded machine is slow, the drain is what is tested
        assert result and result[0].status_code == 200
        assert result[0].text == "hello /slow\n"
        assert enclave.stop() == 0
        assert any("https stopped" in line for line in enclave.lines)


def test_large_bodies_stream_both_ways(sim_state: Path) -> None:
    """Upload: the app holds the first half before the client has sent the second. Download: the
    client holds the first half while the app waits to send the second. Neither body is held
    whole by the front."""
    size = 24 * MIB
    block = bytes(range(256)) * 4096  # 1 MiB
    with running_app() as app, running_front(sim(sim_state), app.address) as front:
        transport = AttestedTransport(policy=POLICY, root=(sim_state / "root.pem").read_bytes())
        streamed_up: list[bool] = []

        def upload() -> Iterator[bytes]:
            for i in range(size // MIB):
                if i == size // MIB // 2:
                    wait_for(lambda: app.received >= 4 * MIB, 20, "app receiving the upload")
                    streamed_up.append(True)
                yield block

        with httpx.Client(transport=transport, timeout=30) as client:
            r = client.post(front.url + "/upload", content=upload())
            expected = hashlib.sha256(block * (size // MIB)).hexdigest()
            assert r.text == f"{size} {expected}"
            assert streamed_up == [True]

            digest = hashlib.sha256()
            got = 0
            with client.stream("GET", front.url + f"/download?n={size}") as response:
                for piece in response.iter_bytes():
                    digest.update(piece)
                    got += len(piece)
                    if got >= 2 * MIB:
                        app.release.set()
            assert got == size
            assert app.waited is True  # the first half reached us while the app held the rest
            reference = hashlib.sha256()
            block256 = bytes(range(256)) * 256
            for start in range(0, size, len(block256)):
                reference.update(block256[: min(len(block256), size - start)])
            assert digest.hexdigest() == reference.hexdigest()


def test_pooled_connection_attested_once_and_reopened_ones_again(sim_state: Path) -> None:
    with running_app() as app, running_front(sim(sim_state), app.address) as front:
        transport = AttestedTransport(policy=POLICY, root=(sim_state / "root.pem").read_bytes())
        with httpx.Client(transport=transport) as client:
            first = [client.get(front.url + f"/{i}") for i in range(3)]
            assert [r.status_code for r in first] == [200, 200, 200]
            assert len(front.attestation_lines()) == 1  # one connection, attested once
            verified = first[0].extensions["network_stream"].get_extra_info("nitro_attestation")
            assert verified.document.public_key == front.identity.spki_der
        with httpx.Client(transport=AttestedTransport(
            policy=POLICY, root=(sim_state / "root.pem").read_bytes()
        )) as client:
            assert client.get(front.url + "/again").status_code == 200
        assert len(front.attestation_lines()) == 2
        assert len(app.seen) == 4


def test_chunked_upload_and_keep_alive_on_one_connection(sim_state: Path) -> None:
    from nitro_attest.attestation.verifier import Verifier
    from nitro_attest.https.client import AttestedConnection, parse_url

    with running_app() as app, running_front(sim(sim_state), app.address) as front:
        conn = AttestedConnection(
            parse_url(front.url), verifier=Verifier(root_pem=(sim_state / "root.pem").read_bytes()),
            policy=POLICY,
        )
        with conn:
            conn.open()
            for i in range(3):
                response, body = conn.request("GET", f"/k{i}")
                assert response.status == 200 and b"".join(body) == f"hello /k{i}\n".encode()
            # A chunked upload, written raw on the attested connection.
            assert conn._sock is not None
            conn._sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2;e=1\r\nde\r\n0\r\n\r\n"
            )
            response = conn._read_head("POST")
            assert b"".join(conn._body(response)) == (
                b"5 " + hashlib.sha256(b"abcde").hexdigest().encode()
            )
        assert len(front.attestation_lines()) == 1
        assert [s.path for s in app.seen][-1] == "/upload"


def test_app_closing_its_idle_connection_is_reopened(sim_state: Path) -> None:
    """An app that closes each connection after answering, without saying so (its keep-alive
    timeout): the front notices before reusing it and opens a new one; no request is lost."""
    import socket as socketlib

    from .httpskit import sim as open_sim

    listener = socketlib.create_server(("127.0.0.1", 0))
    served: list[bytes] = []

    def app() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                served.append(data.split(b" ")[1])
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    threading.Thread(target=app, daemon=True).start()
    address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with running_front(open_sim(sim_state), address) as front:
            transport = AttestedTransport(
                policy=POLICY, root=(sim_state / "root.pem").read_bytes()
            )
            with httpx.Client(transport=transport) as client:
                for i in range(3):
                    r = client.get(front.url + f"/r{i}")
                    assert (r.status_code, r.text) == (200, "ok")
                    wait_for(lambda n=i + 1: len(served) == n, 5, "the app's answer")
                    time.sleep(0.05)  # the app's FIN reaches the front
            assert served == [b"/r0", b"/r1", b"/r2"]
            assert len(front.attestation_lines()) == 1  # one client connection throughout
    finally:
        listener.close()
