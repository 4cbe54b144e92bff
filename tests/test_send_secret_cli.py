"""`nitro-attest send-secret`: usage errors, refusals and delivery against a simulated enclave.

The enclave server runs in a thread (Unix socket, software NSM); "nothing sent" is read from the
server's own request log.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.channel.seal import MAX_SECRET_BYTES

from .channel_helpers import Enclave
from .fakes import MEASUREMENTS

SECRET = b"database password: correct horse battery staple"


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET)
    return path


def _argv(enclave: Enclave, secret_file: Path, *extra: str) -> list[str]:
    root = secret_file.parent / "root.pem"
    root.write_bytes(enclave.root)
    return ["send-secret", "--connect", enclave.address, "--file", str(secret_file),
            "--root", str(root), *extra]


@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
def test_delivers(
    sim_server: Enclave, secret_file: Path, suite: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pcr0 = f"0={MEASUREMENTS[0].hex()}"
    rc = main(_argv(sim_server, secret_file, "--pcr", pcr0, "--suite", suite))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("DELIVERED 47 bytes") and f"suite {suite}" in out
    assert sim_server.store.secrets == [SECRET]
    assert SECRET.decode() not in out
    # no digest of the secret: a log reader could test guesses of a low-entropy one
    digest = hashlib.sha256(SECRET).hexdigest()
    assert digest[:8] not in out and "sha256" not in out


def test_wrong_pcr0_refused_nothing_sent(
    sim_server: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(_argv(sim_server, secret_file, "--pcr", "0=" + "ab" * 48))
    assert rc == 1
    assert "REFUSED (nothing sent): pcrs" in capsys.readouterr().out
    assert sim_server.requests("channel_attest") == 1
    assert sim_server.requests("sealed_message") == 0
    assert sim_server.store.secrets == []


def test_default_root_refuses_simulator(
    sim_server: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["send-secret", "--connect", sim_server.address, "--file", str(secret_file),
            "--pcr", f"0={MEASUREMENTS[0].hex()}"]
    assert main(argv) == 1
    assert "certificate_chain" in capsys.readouterr().out
    assert sim_server.requests("sealed_message") == 0


def test_unsafe_any_enclave(
    sim_server: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(sim_server, secret_file)) == 2
    assert "no PCR expectation" in capsys.readouterr().err
    assert sim_server.logs.lines() == []
    assert main(_argv(sim_server, secret_file, "--unsafe-any-enclave")) == 0
    assert capsys.readouterr().out.startswith("DELIVERED 47 bytes")
    assert sim_server.store.secrets == [SECRET]


def test_expected_file(sim_server: Enclave, secret_file: Path, tmp_path: Path) -> None:
    expected = tmp_path / "m.json"
    expected.write_text(
        '{"Measurements": {"HashAlgorithm": "Sha384 { ... }", '
        + ", ".join(f'"PCR{i}": "{v.hex()}"' for i, v in MEASUREMENTS.items()) + "}}"
    )
    assert main(_argv(sim_server, secret_file, "--expected", str(expected))) == 0
    assert sim_server.store.secrets == [SECRET]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pcr", "0=zz"], "not valid hex"),
        (["--pcr", "0"], "expected N=HEX"),
        (["--expected", "/nonexistent/m.json"], "--expected"),
        (["--pcr", "0=" + "ab" * 48, "--timeout", "0"], "--timeout"),
    ],
)
def test_usage_errors(
    sim_server: Enclave, secret_file: Path, extra: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(_argv(sim_server, secret_file, *extra)) == 2
    assert message in capsys.readouterr().err
    assert sim_server.logs.lines() == []


def test_missing_root_is_usage_error(
    sim_server: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["send-secret", "--connect", sim_server.address, "--file", str(secret_file),
            "--root", "/nonexistent.pem", "--pcr", f"0={MEASUREMENTS[0].hex()}"]
    assert main(argv) == 2
    assert "no such file" in capsys.readouterr().err
    assert sim_server.logs.lines() == []


@pytest.mark.parametrize("content", [b"", bytes(MAX_SECRET_BYTES + 1)], ids=["empty", "oversize"])
def test_secret_file_errors(
    sim_server: Enclave, tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    path.write_bytes(content)
    assert main(_argv(sim_server, path, "--pcr", f"0={MEASUREMENTS[0].hex()}")) == 2
    assert "secret" in capsys.readouterr().err
    assert sim_server.logs.lines() == []


def test_largest_secret_delivered(sim_server: Enclave, tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"\xa5" * MAX_SECRET_BYTES)
    for suite in ("x25519", "mlkem768-x25519"):
        argv = _argv(sim_server, path, "--pcr", f"0={MEASUREMENTS[0].hex()}", "--suite", suite)
        assert main(argv) == 0
    assert sim_server.store.secrets == [b"\xa5" * MAX_SECRET_BYTES] * 2


def test_bad_suite_and_address_are_usage_errors(
    sim_server: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(sim_server, secret_file, "--suite", "p256")) == 2
    argv = ["send-secret", "--connect", "vsock://x:1", "--file", str(secret_file),
            "--pcr", f"0={MEASUREMENTS[0].hex()}"]
    assert main(argv) == 2
    assert "vsock" in capsys.readouterr().err
