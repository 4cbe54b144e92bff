"""`nitro-attest send-secret`: usage errors, refusals and delivery against a simulated enclave.

The enclave server runs in a thread (Unix socket, software NSM); "nothing sent" is read from the
server's own request log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.channel.seal import MAX_SECRET_BYTES
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state

from .channel_helpers import Enclave, serving

MEAS = {0: b"\x20" * 48, 1: b"\x21" * 48, 2: b"\x22" * 48}
SECRET = b"database password: correct horse battery staple"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "state"
    init_state(path, SimulatorConfig(instance_id="i-0aaaabbbbccccdddd", measurements=MEAS))
    return path


@pytest.fixture()
def wired(state: Path, tmp_path: Path) -> Iterator[Enclave]:
    with serving(state, f"unix://{tmp_path}/e.sock") as enclave:
        yield enclave


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
    wired: Enclave, secret_file: Path, suite: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(_argv(wired, secret_file, "--pcr", f"0={MEAS[0].hex()}", "--suite", suite))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("DELIVERED 47 bytes") and f"suite {suite}" in out
    assert wired.store.secrets == [SECRET]
    assert SECRET.decode() not in out


def test_wrong_pcr0_refused_nothing_sent(
    wired: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(_argv(wired, secret_file, "--pcr", "0=" + "ab" * 48))
    assert rc == 1
    assert "REFUSED (nothing sent): pcrs" in capsys.readouterr().out
    assert wired.requests("channel_attest") == 1
    assert wired.requests("sealed_message") == 0
    assert wired.store.secrets == []


def test_default_root_refuses_simulator(
    wired: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["send-secret", "--connect", wired.address, "--file", str(secret_file),
            "--pcr", f"0={MEAS[0].hex()}"]
    assert main(argv) == 1
    assert "certificate_chain" in capsys.readouterr().out
    assert wired.requests("sealed_message") == 0


def test_unsafe_any_enclave(
    wired: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(wired, secret_file)) == 2
    assert "no PCR expectation" in capsys.readouterr().err
    assert wired.logs.lines() == []
    assert main(_argv(wired, secret_file, "--unsafe-any-enclave")) == 0
    assert wired.store.secrets == [SECRET]


def test_expected_file(wired: Enclave, secret_file: Path, tmp_path: Path) -> None:
    expected = tmp_path / "m.json"
    expected.write_text(
        '{"Measurements": {"HashAlgorithm": "Sha384 { ... }", '
        + ", ".join(f'"PCR{i}": "{v.hex()}"' for i, v in MEAS.items()) + "}}"
    )
    assert main(_argv(wired, secret_file, "--expected", str(expected))) == 0
    assert wired.store.secrets == [SECRET]


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
    wired: Enclave, secret_file: Path, extra: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(_argv(wired, secret_file, *extra)) == 2
    assert message in capsys.readouterr().err
    assert wired.logs.lines() == []


def test_missing_root_is_usage_error(
    wired: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["send-secret", "--connect", wired.address, "--file", str(secret_file),
            "--root", "/nonexistent.pem", "--pcr", f"0={MEAS[0].hex()}"]
    assert main(argv) == 2
    assert "no such file" in capsys.readouterr().err
    assert wired.logs.lines() == []


@pytest.mark.parametrize("content", [b"", bytes(MAX_SECRET_BYTES + 1)], ids=["empty", "oversize"])
def test_secret_file_errors(
    wired: Enclave, tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    path.write_bytes(content)
    assert main(_argv(wired, path, "--pcr", f"0={MEAS[0].hex()}")) == 2
    assert "secret" in capsys.readouterr().err
    assert wired.logs.lines() == []


def test_largest_secret_delivered(wired: Enclave, tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"\xa5" * MAX_SECRET_BYTES)
    for suite in ("x25519", "mlkem768-x25519"):
        argv = _argv(wired, path, "--pcr", f"0={MEAS[0].hex()}", "--suite", suite)
        assert main(argv) == 0
    assert wired.store.secrets == [b"\xa5" * MAX_SECRET_BYTES] * 2


def test_bad_suite_and_address_are_usage_errors(
    wired: Enclave, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(wired, secret_file, "--suite", "p256")) == 2
    argv = ["send-secret", "--connect", "vsock://x:1", "--file", str(secret_file),
            "--pcr", f"0={MEAS[0].hex()}"]
    assert main(argv) == 2
    assert "vsock" in capsys.readouterr().err
