"""`nitro-attest service` and `appraise`: usage errors are one line and exit 2; appraise runs the
whole challenge-response against a service and an enclave server and exits 0 only on affirming."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nitro_attest._cli import main
from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.wire.server import nsm_handlers
from tests.serverkit import running_server

from .servicekit import ENTRY, build_enclave_json, free_port, service, write_policies


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENTRY, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def files(sim_state: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("svc")
    sim = SimulatedNsm.open(sim_state)
    (tmp / "root.pem").write_bytes(sim.root_pem)
    (tmp / "rsa.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    write_policies(tmp / "policies.json",
                   other={"expected": [build_enclave_json({0: b"\x01" * 48})]})  # fmt: skip
    return {"tmp": tmp, "sim": sim, "policies": str(tmp / "policies.json"),
            "root": str(tmp / "root.pem")}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "2"], "--sessions memory keeps sessions in one process"),
        (["--sessions", "mysql://x"], "--sessions: 'mysql://x': expected redis://HOST:PORT/DB"),
        (["--listen", "127.0.0.1:99999"], "--listen '127.0.0.1:99999': expected HOST:PORT"),
        (["--signing-key", "{tmp}/rsa.pem"], "not an unencrypted PEM private key"),
        (["--signing-key", "{tmp}/none.pem"], "no such file"),
        (["--root", "{tmp}/policies.json"], "--root"),
        (["--workers", "0"], "must be at least 1"),
        (["--clock-skew", "-1"], "--clock-skew: between 0 and 3600 seconds"),
        (["--sessions", "redis://h:1/0", "--sessions-file", "{tmp}/policies.json"], "not both"),
        (["--sessions-file", "{tmp}/none"], "no such file"),
        (["--sessions-file", "{tmp}/policies.json"],
         "--sessions-file {tmp}/policies.json: not a redis://[USER:PASSWORD@]HOST:PORT/DB URL"),
        (["--sessions", "redis://u:hunter2@h:1/0"], "a password on the command line"),
    ],
)
def test_service_usage_errors(
    files: dict[str, Any], extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = [e.format(tmp=files["tmp"]) for e in extra]
    message = message.format(tmp=files["tmp"])
    assert main(["service", "--policies", files["policies"], *extra]) == 2  # refused before serving
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and "hunter2" not in err


def test_redis_url_from_the_environment_is_checked(
    files: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NITRO_ATTEST_REDIS_URL", "mysql://u:hunter2@h/0")
    assert main(["service", "--policies", files["policies"]]) == 2
    err = capsys.readouterr().err
    assert "NITRO_ATTEST_REDIS_URL: not a redis://" in err
    assert "hunter2" not in err
    # --sessions memory wins over the environment (no Redis needed, --workers 2 is refused).
    assert main(["service", "--policies", files["policies"], "--sessions", "memory",
                 "--workers", "2"]) == 2  # fmt: skip
    assert "--sessions memory keeps sessions in one process" in capsys.readouterr().err


def test_service_refuses_a_bad_policies_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"default": "a", "policies": {"a": {"expected": []}}}')
    done = _run("service", "--policies", str(tmp_path / "p.json"))
    assert done.returncode == 2 and "--policies" in done.stderr and "non-empty list" in done.stderr


@pytest.fixture(scope="module")
def stack(files: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with service(["--policies", files["policies"], "--root", files["root"]]) as (base, proc):
        with running_server("tcp://127.0.0.1:0", nsm_handlers(files["sim"])) as (addr, _, _):
            yield base, f"tcp://{addr.host}:{addr.port}"
        proc.terminate()
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert "no --signing-key" in out  # the in-memory key warning


def test_appraise_affirming_exits_zero(stack: tuple[str, str]) -> None:
    base, enclave = stack
    done = _run("appraise", "--service", base, "--connect", enclave, "--trust-advertised-key")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "affirming"


def test_appraise_contraindicated_exits_one(stack: tuple[str, str]) -> None:
    base, enclave = stack
    done = _run("appraise", "--service", base, "--connect", enclave, "--policy", "other",
                "--trust-advertised-key")
    assert done.returncode == 1
    assert done.stdout.strip() == "contraindicated (failed check: pcrs)"


def test_appraise_unreachable_is_usage_error(stack: tuple[str, str]) -> None:
    base, enclave = stack
    trust = "--trust-advertised-key"
    done = _run("appraise", "--service", "http://127.0.0.1:9", "--connect", enclave,
                "--timeout", "1", trust)  # fmt: skip
    assert done.returncode == 2 and "cannot reach the service" in done.stderr
    done = _run("appraise", "--service", base, "--connect", "tcp://127.0.0.1:9", trust)
    assert done.returncode == 2 and "nitro-attest: error:" in done.stderr
    assert "cannot reach the service" not in done.stderr  # the enclave, not the service
    done = _run("appraise", "--service", base, "--connect", enclave, "--policy", "nope", trust)
    assert done.returncode == 2 and "HTTP 400" in done.stderr


def test_appraise_waits_for_a_service_that_is_starting(
    stack: tuple[str, str], files: dict[str, Any]
) -> None:
    """`service ... &` then `appraise` at once: appraise waits for the port within --timeout."""
    _, enclave = stack
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client = subprocess.Popen(
        [*ENTRY, "appraise", "--service", base, "--connect", enclave, "--timeout", "30",
         "--trust-advertised-key"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # appraise is up and finds nothing listening
        assert client.poll() is None, client.communicate()
        with service(["--policies", files["policies"], "--root", files["root"]], port=port):
            out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    assert out.strip() == "affirming"
