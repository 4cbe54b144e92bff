"""get-ca.sh against a local HTTP server on 127.0.0.1 serving zips built by the test."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .script_env import REPO, ScriptEnv, make_env

REAL_ROOT = REPO / "src/nitro_attest/attestation/roots/aws_nitro_root_g1.pem"
AWS_ZIP_SHA = "8cf60e2b2efca96c6a9e71e851d00c1b6991cc09eadbe64a6a1d1b1eb9faff7c"

Routes = dict[str, tuple[bytes, int | None]]  # path -> (body, claimed Content-Length)
Server = tuple[str, Routes]


def other_cert_pem() -> bytes:
    """A real self-signed P-384 certificate that is not the AWS root."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aws.nitro-enclaves")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def make_zip(pem: bytes, name: str = "root.pem") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, pem)
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[Routes] = {}

    def do_GET(self) -> None:
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, claimed = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(claimed if claimed is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    routes: ClassVar[Routes] = {}
    handler = type("H", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


@pytest.fixture
def se(tmp_path: Path) -> ScriptEnv:
    return make_env(tmp_path)


def _run(se: ScriptEnv, url: str, zip_bytes: bytes | None, *args: str,
         sha: str | None = None) -> tuple[int, str]:
    env = {}
    if sha is not None or zip_bytes is not None:
        env["NITRO_ATTEST_ROOT_ZIP_SHA256"] = (
            sha if sha is not None else hashlib.sha256(zip_bytes or b"").hexdigest()
        )
    r = se.run("get-ca.sh", "--url", url, *args, env=env)
    return r.returncode, r.stderr


def test_good_zip_writes_root_pem(se: ScriptEnv, server: Server) -> None:
    base, routes = server
    good = make_zip(REAL_ROOT.read_bytes())
    routes["/g.zip"] = (good, None)
    rc, err = _run(se, base + "/g.zip", good)
    assert rc == 0, err
    assert (se.repo / "client/root.pem").read_bytes() == REAL_ROOT.read_bytes()
    assert "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b" in err


def test_url_from_environment(se: ScriptEnv, server: Server) -> None:
    base, routes = server
    good = make_zip(REAL_ROOT.read_bytes(), name="AWS_NitroEnclaves_Root-G1/root.pem")
    routes["/m.zip"] = (good, None)
    r = se.run("get-ca.sh", env={"NITRO_ATTEST_ROOT_URL": base + "/m.zip",
                                 "NITRO_ATTEST_ROOT_ZIP_SHA256": hashlib.sha256(good).hexdigest()})
    assert r.returncode == 0, r.stderr
    assert (se.repo / "client/root.pem").exists()


def test_wrong_root_is_refused_even_with_matching_zip_checksum(
    se: ScriptEnv, server: Server
) -> None:
    base, routes = server
    bad = make_zip(other_cert_pem())
    routes["/bad.zip"] = (bad, None)
    rc, err = _run(se, base + "/bad.zip", bad)
    assert rc == 1 and "fingerprint mismatch" in err
    assert not (se.repo / "client/root.pem").exists()
    assert list((se.repo / "client").iterdir()) == []  # no temp file left behind


def test_wrong_zip_checksum_is_refused(se: ScriptEnv, server: Server) -> None:
    base, routes = server
    good = make_zip(REAL_ROOT.read_bytes())
    routes["/g.zip"] = (good, None)
    # Default expectation: the real AWS zip's checksum, which our locally built zip cannot match.
    r = se.run("get-ca.sh", "--url", base + "/g.zip")
    assert r.returncode == 1 and "zip SHA-256 mismatch" in r.stderr and AWS_ZIP_SHA in r.stderr
    rc, err = _run(se, base + "/g.zip", None, sha="00" * 32)
    assert rc == 1 and "zip SHA-256 mismatch" in err
    assert not (se.repo / "client/root.pem").exists()


def test_truncated_download_is_refused(se: ScriptEnv, server: Server) -> None:
    base, routes = server
    good = make_zip(REAL_ROOT.read_bytes())
    routes["/t.zip"] = (good[: len(good) // 2], len(good))
    rc, err = _run(se, base + "/t.zip", good)
    assert rc == 1 and ("truncated" in err or "download failed" in err), err
    assert not (se.repo / "client/root.pem").exists()


def test_truncated_zip_with_its_own_checksum_is_refused(
    se: ScriptEnv, server: Server
) -> None:
    base, routes = server
    cut = make_zip(REAL_ROOT.read_bytes())[:100]
    routes["/c.zip"] = (cut, None)
    rc, err = _run(se, base + "/c.zip", cut)
    assert rc == 1 and "not a valid zip" in err


def test_failure_keeps_an_existing_good_root(se: ScriptEnv, server: Server) -> None:
    base, routes = server
    (se.repo / "client").mkdir()
    (se.repo / "client/root.pem").write_bytes(REAL_ROOT.read_bytes())
    bad = make_zip(other_cert_pem())
    routes["/bad.zip"] = (bad, None)
    rc, _ = _run(se, base + "/bad.zip", bad)
    assert rc == 1
    assert (se.repo / "client/root.pem").read_bytes() == REAL_ROOT.read_bytes()


def test_http_error_and_empty_checksum(se: ScriptEnv, server: Server) -> None:
    base, _ = server
    rc, err = _run(se, base + "/missing.zip", None, sha="11" * 32)
    assert rc == 1 and "download failed" in err
    rc, err = _run(se, base + "/missing.zip", None, sha="")
    assert rc == 1 and "64 hex digits" in err


def test_zip_without_root_pem(se: ScriptEnv, server: Server) -> None:
    base, routes = server
    z = make_zip(REAL_ROOT.read_bytes(), name="other.pem")
    routes["/o.zip"] = (z, None)
    rc, err = _run(se, base + "/o.zip", z)
    assert rc == 1 and "0 root.pem" in err
