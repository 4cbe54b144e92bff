"""End to end: the enclave server on the software NSM, the client, the verifier (TCP and Unix)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.attestation.verifier import Verifier
from nitro_attest.errors import (
    ChainError,
    DebugModeError,
    NonceMismatchError,
    PcrMismatchError,
    SignatureError,
    UserDataMismatchError,
)
from nitro_attest.nsm import open_backend
from nitro_attest.wire import client
from nitro_attest.wire.server import nsm_handlers
from nitro_attest.wire.transport import Address
from tests.fakes import MEASUREMENTS, payload
from tests.serverkit import running_server

NONCE = bytes(range(32))
USER_DATA = b"hello enclave"


@pytest.fixture(params=["tcp", "unix"])
def enclave(
    request: pytest.FixtureRequest, sim_state: Path, tmp_path: Path
) -> Iterator[Address]:
    yield from _serve(sim_state, "tcp://127.0.0.1:0" if request.param == "tcp"
                      else f"unix://{tmp_path / 'enclave.sock'}")  # fmt: skip


def _serve(state: Path, listen: str) -> Iterator[Address]:
    backend = open_backend("simulator", state_dir=state)
    try:
        with running_server(listen, nsm_handlers(backend)) as (addr, _, _logs):
            yield addr
    finally:
        backend.close()


@pytest.fixture
def verifier(sim_state: Path) -> Verifier:
    return Verifier(root_pem=(sim_state / "root.pem").read_bytes())


def _attest(addr: Address) -> bytes:
    return client.request_attestation(str(addr), nonce=NONCE, user_data=USER_DATA)


def test_verified(enclave: Address, verifier: Verifier) -> None:
    doc = _attest(enclave)
    verified = verifier.verify(doc, nonce=NONCE, user_data=USER_DATA, expected_pcrs=MEASUREMENTS)
    assert verified.document.nonce == NONCE
    assert verified.document.user_data == USER_DATA
    assert verified.document.pcrs[0] == MEASUREMENTS[0]


def test_wrong_nonce_rejected(enclave: Address, verifier: Verifier) -> None:
    doc = _attest(enclave)
    with pytest.raises(NonceMismatchError):
        verifier.verify(doc, nonce=b"\x00" * 32, user_data=USER_DATA, expected_pcrs=MEASUREMENTS)


def test_altered_user_data_rejected(enclave: Address, verifier: Verifier) -> None:
    doc = _attest(enclave)
    with pytest.raises(UserDataMismatchError):
        verifier.verify(doc, nonce=NONCE, user_data=b"hello enclavE", expected_pcrs=MEASUREMENTS)
    tampered = doc.replace(USER_DATA, b"jello enclave")  # changed in transit
    assert tampered != doc
    with pytest.raises(SignatureError):
        verifier.verify(
            tampered, nonce=NONCE, user_data=b"jello enclave", expected_pcrs=MEASUREMENTS
        )


def test_pcr_mismatch_rejected(enclave: Address, verifier: Verifier) -> None:
    doc = _attest(enclave)
    with pytest.raises(PcrMismatchError):
        verifier.verify(
            doc, nonce=NONCE, user_data=USER_DATA, expected_pcrs={**MEASUREMENTS, 2: b"\x01" * 48}
        )


def test_simulated_document_fails_against_aws_root(enclave: Address) -> None:
    with pytest.raises(ChainError):
        Verifier().verify(_attest(enclave), nonce=NONCE, user_data=USER_DATA)


def test_debug_enclave_rejected(sim_debug_state: Path, tmp_path: Path) -> None:
    root = (sim_debug_state / "root.pem").read_bytes()
    for addr in _serve(sim_debug_state, f"unix://{tmp_path / 'debug.sock'}"):
        doc = _attest(addr)
        with pytest.raises(DebugModeError):
            Verifier(root_pem=root).verify(doc, nonce=NONCE, user_data=USER_DATA)
        allowed = Verifier(root_pem=root).verify(
            doc, nonce=NONCE, user_data=USER_DATA, allow_debug=True
        )
        assert allowed.document.pcrs[0] == b"\x00" * 48


def test_attest_cli_end_to_end(
    enclave: Address, sim_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = tmp_path / "expected-measurements.json"
    pcrs = {f"PCR{i}": v.hex() for i, v in MEASUREMENTS.items()}
    expected.write_text(json.dumps({"Measurements": pcrs}))
    out_dir = tmp_path / "client"
    argv = ["attest", "--connect", str(enclave), "--expected", str(expected),
            "--root", str(sim_state / "root.pem"), "--out-dir", str(out_dir)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    for label in ("COSE Signature", "Certificate Chain", "PCR Values", "User Data", "Nonce"):
        assert f"✅ {label}" in out
    assert "Result: VERIFIED" in out
    raw = base64.b64decode((out_dir / "attestation-document.dat").read_text())
    decoded = json.loads((out_dir / "attestation-document-json.json").read_text())
    assert raw[:1] == b"\x84"
    assert decoded["pcrs"]["0"] == MEASUREMENTS[0].hex() and decoded["authenticated"] is True
    assert len(bytes.fromhex(decoded["nonce"])) == 32  # the random nonce the client sent

    # PCR mismatch through the CLI: exit 1 and the PCR line fails.
    wrong = ["attest", "--connect", str(enclave), "--root", str(sim_state / "root.pem"),
             "--out-dir", str(out_dir), "--pcr", "1=" + "00" * 48, "--json"]  # fmt: skip
    assert main(wrong) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is False and report["error"]["check"] == "pcrs"


def test_attest_cli_debug_enclave(
    sim_debug_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(sim_debug_state / "root.pem")
    for addr in _serve(sim_debug_state, f"unix://{tmp_path / 'd.sock'}"):
        base = ["attest", "--connect", str(addr), "--root", root, "--out-dir", str(tmp_path / "c")]
        assert main(base) == 1
        assert "❌ Debug Mode" in capsys.readouterr().out
        assert main([*base, "--allow-debug"]) == 0
        out = capsys.readouterr().out
        assert "✅ Debug Mode" in out and "❌" not in out


def test_describe_over_the_wire(enclave: Address) -> None:
    desc = client.describe_enclave(str(enclave))
    assert desc.nsm.max_pcrs == 32 and desc.nsm.digest == "SHA384"
    assert desc.pcrs[0].data == MEASUREMENTS[0] and desc.pcrs[0].locked


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_process_shuts_down_cleanly(
    signum: signal.Signals, sim_state: Path, tmp_path: Path
) -> None:
    sock = tmp_path / "served.sock"
    cmd = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()",
           "serve", "--listen", f"unix://{sock}", "--nsm", "simulator",
           "--state", str(sim_state)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert sock.exists(), proc.stderr.read().decode() if proc.poll() is not None else ""
        for _ in range(3):
            doc = client.request_attestation(f"unix://{sock}", nonce=NONCE, user_data=USER_DATA)
            assert payload(doc)["nonce"] == NONCE and payload(doc)["user_data"] == USER_DATA
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert not sock.exists()
    text = err.decode()
    assert "Traceback" not in text
    request_lines = [line for line in text.splitlines() if " attest " in line]
    assert len(request_lines) == 3
    assert all("nonce=32B user_data=13B" in line for line in request_lines)
    assert NONCE.hex() not in text and USER_DATA.decode() not in text
    assert "shutting down after 3 request(s)" in text
