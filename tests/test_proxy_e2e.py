"""End to end through the proxy, as a user deploys it.

Inbound: `attest` and `send-secret` reach `serve --nsm simulator` through `proxy` (tcp -> unix,
standing in for tcp -> vsock) and verify and deliver exactly as they do directly. Outbound: an
ordinary HTTP client in the "enclave" goes through the enclave-side bridge (tcp -> unix, standing
in for tcp -> vsock://3) and the parent's CONNECT proxy to an allowlisted host only.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_attest._cli import main

from .fakes import MEASUREMENTS
from .proxykit import proxy_process
from .serve_process import serve_process

SECRET = b"db-password: correct horse battery staple"


@pytest.fixture(scope="module")
def enclave(
    sim_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path]]:
    """`nitro-attest serve --nsm simulator` on a Unix socket; yields (socket, state dir)."""
    with serve_process(sim_state, tmp_path_factory.mktemp("px") / "enclave.sock") as served:
        yield served.socket, sim_state


def _attest(address: str, state: Path, out: Path, pcr0: bytes) -> tuple[int, dict[str, object]]:
    rc = main(
        [
            "attest", "--connect", address, "--root", str(state / "root.pem"),
            "--pcr", f"0={pcr0.hex()}", "--out-dir", str(out), "--json",
        ]
    )  # fmt: skip
    return rc, json.loads((out / "attestation-document-json.json").read_text())


def test_attest_and_send_secret_through_the_proxy(
    enclave: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock, state = enclave
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    direct = f"unix://{sock}"
    with proxy_process("--listen", "tcp://127.0.0.1:0", "--to", direct) as proxy:
        via = str(proxy.address)
        assert via.startswith("tcp://127.0.0.1:")
        results = {}
        for name, address in (("direct", direct), ("proxied", via)):
            rc, doc = _attest(address, state, tmp_path / name, MEASUREMENTS[0])
            report = json.loads(capsys.readouterr().out)
            results[name] = (rc, report["verified"], doc["pcrs"]["0"], doc["module_id"])
            send = ["send-secret", "--connect", address, "--file", str(secret)]
            trust = ["--root", str(state / "root.pem"), "--pcr", f"0={MEASUREMENTS[0].hex()}"]
            assert main([*send, *trust]) == 0
            assert "DELIVERED" in capsys.readouterr().out
        assert results["proxied"] == results["direct"]
        assert results["proxied"][:2] == (0, True)
        # The proxy changes nothing: a wrong expectation is still refused through it.
        rc, _ = _attest(via, state, tmp_path / "wrong", b"\x01" * 48)
        assert rc == 1
        capsys.readouterr()
        wait = time.monotonic() + 10
        while len(proxy.connection_lines()) < 3 and time.monotonic() < wait:
            time.sleep(0.05)
    lines = proxy.connection_lines()
    assert len(lines) == 3 and all("end=closed" in x for x in lines)
    assert SECRET.decode() not in proxy.text() and SECRET.hex() not in proxy.text()


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_enclave_app_reaches_allowlisted_host_over_connect(tmp_path: Path) -> None:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    port = web.server_address[1]
    allow = tmp_path / "vsock-proxy.yaml"
    allow.write_text(f"allowlist:\n- {{address: 127.0.0.1, port: {port}}}\n")
    parent_sock = tmp_path / "parent.sock"  # stands in for vsock://any:8000 on the parent
    parent = ["--listen", f"unix://{parent_sock}", "--to", "connect", "--allowlist", str(allow)]
    with proxy_process(*parent) as parent_proxy:
        bridge = ["--listen", "tcp://127.0.0.1:0", "--to", f"unix://{parent_sock}"]
        with proxy_process(*bridge) as enclave_bridge:  # inside the enclave: HTTPS_PROXY target
            bridge_port = enclave_bridge.address.port
            conn = http.client.HTTPConnection("127.0.0.1", bridge_port, timeout=10)
            conn.set_tunnel("127.0.0.1", port)
            conn.request("GET", "/kms")
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, b"hello from /kms")
            conn.close()
            refused = http.client.HTTPConnection("127.0.0.1", bridge_port, timeout=10)
            refused.set_tunnel("127.0.0.1", port + 1 if port < 65535 else port - 1)
            with pytest.raises(OSError, match="403"):
                refused.request("GET", "/")
            refused.close()
    web.shutdown()
    assert "end=refused 403: not on the allowlist" in parent_proxy.text()
