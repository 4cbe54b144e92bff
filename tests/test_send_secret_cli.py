"""`nitro-attest send-secret`: usage errors, refusals and delivery against the simulator.

The transport is replaced by an in-process exchange to a ChannelReceiver over the software NSM;
the socket path is covered by the end-to-end tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nitro_attest.channel import client as channel_client
from nitro_attest.channel.enclave import (
    REQUEST_CHANNEL_ATTEST,
    REQUEST_SEALED_MESSAGE,
    ChannelReceiver,
    InMemorySecretStore,
)
from nitro_attest.channel.seal import MAX_SECRET_BYTES
from nitro_attest.cli import main
from nitro_attest.nsm.sim_state import SimulatorConfig, init_state
from nitro_attest.nsm.simulator import SimulatedNsm

from .channel_helpers import LocalExchange

MEAS = {0: b"\x20" * 48, 1: b"\x21" * 48, 2: b"\x22" * 48}
SECRET = b"database password: correct horse battery staple"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedNsm:
    config = SimulatorConfig(instance_id="i-0aaaabbbbccccdddd", measurements=MEAS)
    return SimulatedNsm(init_state(tmp_path_factory.mktemp("sim") / "state", config))


@pytest.fixture()
def wired(
    sim: SimulatedNsm, monkeypatch: pytest.MonkeyPatch
) -> tuple[LocalExchange, InMemorySecretStore]:
    store = InMemorySecretStore()
    ex = LocalExchange(ChannelReceiver(handler=store), sim)
    monkeypatch.setattr(channel_client, "_open_exchange", lambda address, timeout: ex)
    return ex, store


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET)
    return path


def _argv(sim: SimulatedNsm, secret_file: Path, *extra: str) -> list[str]:
    root = str(sim.state.path / "root.pem")
    return ["send-secret", "--connect", "tcp://127.0.0.1:1", "--file", str(secret_file),
            "--root", root, *extra]


@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
def test_delivers(
    sim: SimulatedNsm, wired: Any, secret_file: Path, suite: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _ex, store = wired
    rc = main(_argv(sim, secret_file, "--pcr", f"0={MEAS[0].hex()}", "--suite", suite))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("DELIVERED 47 bytes") and f"suite {suite}" in out
    assert store.secrets == [SECRET]
    assert SECRET.decode() not in out


def test_wrong_pcr0_refused_nothing_sent(
    sim: SimulatedNsm, wired: Any, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ex, store = wired
    rc = main(_argv(sim, secret_file, "--pcr", "0=" + "ab" * 48))
    assert rc == 1
    assert "REFUSED (nothing sent): pcrs" in capsys.readouterr().out
    assert ex.kinds() == [REQUEST_CHANNEL_ATTEST]
    assert store.secrets == []


def test_default_root_refuses_simulator(
    sim: SimulatedNsm, wired: Any, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ex, _ = wired
    argv = ["send-secret", "--connect", "tcp://127.0.0.1:1", "--file", str(secret_file),
            "--pcr", f"0={MEAS[0].hex()}"]
    assert main(argv) == 1
    assert "certificate_chain" in capsys.readouterr().out
    assert REQUEST_SEALED_MESSAGE not in ex.kinds()


def test_unsafe_any_enclave(
    sim: SimulatedNsm, wired: Any, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(sim, secret_file)) == 2
    assert "no PCR expectation" in capsys.readouterr().err
    assert wired[0].requests == []
    assert main(_argv(sim, secret_file, "--unsafe-any-enclave")) == 0
    assert wired[1].secrets == [SECRET]


def test_expected_file(
    sim: SimulatedNsm, wired: Any, secret_file: Path, tmp_path: Path
) -> None:
    expected = tmp_path / "m.json"
    expected.write_text(
        '{"Measurements": {"HashAlgorithm": "Sha384 { ... }", '
        + ", ".join(f'"PCR{i}": "{v.hex()}"' for i, v in MEAS.items()) + "}}"
    )
    assert main(_argv(sim, secret_file, "--expected", str(expected))) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pcr", "0=zz"], "not valid hex"),
        (["--pcr", "0"], "expected N=HEX"),
        (["--expected", "/nonexistent/m.json"], "--expected"),
        (["--pcr", "0=" + "ab" * 48, "--timeout", "0"], "--timeout"),
        (["--pcr", "0=" + "ab" * 48, "--root", "/nonexistent.pem"], "no such file"),
    ],
)
def test_usage_errors(
    sim: SimulatedNsm, wired: Any, secret_file: Path, extra: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(_argv(sim, secret_file, *extra)) == 2
    assert message in capsys.readouterr().err
    assert wired[0].requests == []


@pytest.mark.parametrize("content", [b"", bytes(MAX_SECRET_BYTES + 1)], ids=["empty", "oversize"])
def test_secret_file_errors(
    sim: SimulatedNsm, wired: Any, tmp_path: Path, content: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "s"
    path.write_bytes(content)
    assert main(_argv(sim, path, "--pcr", f"0={MEAS[0].hex()}")) == 2
    assert "secret" in capsys.readouterr().err
    assert wired[0].requests == []


def test_bad_suite_is_usage_error(sim: SimulatedNsm, secret_file: Path) -> None:
    assert main(_argv(sim, secret_file, "--suite", "p256")) == 2
