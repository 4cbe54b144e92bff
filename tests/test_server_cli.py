"""`nitro-attest attest` and `nitro-attest serve` through main(argv)."""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path

import pytest

from nitro_attest._cli import main
from tests.serverkit import running_server


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_attest_connection_refused_is_one_line_with_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = _free_port()
    argv = ["attest", "--connect", f"tcp://127.0.0.1:{port}", "--out-dir", str(tmp_path)]
    started = time.monotonic()
    rc = main([*argv, "--timeout", "0.6"])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "refused" in err and "running" in err
    # Retried (a server may be starting) within --timeout, and the error says so.
    assert f"127.0.0.1:{port}" in err and "attempts over" in err
    assert 0.3 < elapsed < 3
    assert not (tmp_path / "attestation-document.dat").exists()


def test_attest_missing_unix_socket(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["attest", "--connect", f"unix://{tmp_path}/nope.sock", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "nitro-attest serve" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--connect", "vsock://2:5005"], "CID 2 is reserved"),
        (["--connect", "carrier-pigeon"], "expected vsock://"),
        (["--connect", "tcp://127.0.0.1:1", "--nonce", "zz"], "--nonce"),
        (["--connect", "tcp://127.0.0.1:1", "--user-data", "@/no/such/file"], "no such file"),
        (["--connect", "tcp://127.0.0.1:1", "--pcr", "x"], "N=HEX"),
        (["--connect", "tcp://127.0.0.1:1", "--expected", "/no/such.json"], "cannot read"),
        (["--connect", "tcp://127.0.0.1:1", "--root", "/no/root.pem"], "no such file"),
        (["--connect", "tcp://127.0.0.1:1", "--timeout", "0"], "--timeout"),
    ],
)
def test_attest_usage_errors(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["attest", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_attest_rejects_a_bogus_document_but_saves_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "client"
    (out_dir).mkdir()
    (out_dir / "attestation-document-json.json").write_text("{}")  # stale, must go
    with running_server("tcp://127.0.0.1:0") as (addr, _, _logs):
        rc = main(["attest", "--connect", str(addr), "--out-dir", str(out_dir)])
    out = capsys.readouterr().out
    assert rc == 1
    raw = base64.b64decode((out_dir / "attestation-document.dat").read_text())
    assert raw.startswith(b"FAKE|")  # what the (fake) enclave sent, saved as received
    assert not (out_dir / "attestation-document-json.json").exists()
    assert "❌" in out and "REJECTED" in out


def test_serve_auto_without_device_points_at_simulator(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if Path("/dev/nsm").exists():
        pytest.skip("this machine has a real /dev/nsm")
    rc = main(["serve", "--listen", f"unix://{tmp_path}/s.sock"])
    err = capsys.readouterr().err
    assert rc == 2 and "--nsm simulator" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--listen", "vsock://16"], "vsock://CID:PORT"),
        (["--listen", "tcp://127.0.0.1:0", "--read-timeout", "0"], "--read-timeout"),
        (["--listen", "tcp://127.0.0.1:0", "--max-connections", "0"], "--max-connections"),
        (["--listen", "tcp://127.0.0.1:0", "--frame-deadline", "0"], "--frame-deadline"),
        (["--listen", "unix:///tmp/x.sock", "--socket-mode", "0400"], "--socket-mode"),
    ],
)
def test_serve_usage_errors(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attest", "--help"]) == 0
    text = capsys.readouterr().out
    assert "nitro-cli describe-enclaves" in text and "attestation-document.dat" in text
    assert main(["serve", "--help"]) == 0
    assert "vsock://any:5005" in capsys.readouterr().out
