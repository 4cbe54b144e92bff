"""run.sh / attest.sh / cleanup.sh --simulate: the same steps on the software NSM (demo path).

`nitro-attest` is a fake here (tests/nitro_fakes.py) that binds the unix socket like `serve` does;
the real serve/attest/sim commands are tested with their own modules.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .script_env import ScriptEnv, make_env


@pytest.fixture
def se(tmp_path: Path) -> Iterator[ScriptEnv]:
    env = make_env(tmp_path)
    yield env
    pidf = env.repo / ".demo/enclave.pid"
    if pidf.exists():  # never leave a background server behind
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidf.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); check its state.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_simulated_loop(se: ScriptEnv) -> None:
    demo = se.repo / ".demo"
    r = se.run("run.sh", "--simulate")
    assert r.returncode == 0, r.stderr
    calls = se.bin.calls("nitro-attest")
    assert calls[0] == ["nitro-attest", "sim", "init", "--state", str(demo / "sim")]
    assert calls[1] == [
        "nitro-attest",
        "sim",
        "measurements",
        "--state",
        str(demo / "sim"),
        "--write-expected",
        str(demo / "expected-measurements.json"),
    ]
    assert calls[2] == [
        "nitro-attest",
        "serve",
        "--listen",
        f"unix://{demo}/enclave.sock",
        "--nsm",
        "simulator",
        "--state",
        str(demo / "sim"),
    ]
    pid = int((demo / "enclave.pid").read_text())
    assert _alive(pid) and (demo / "enclave.sock").is_socket()

    again = se.run("run.sh", "--simulate")  # already running: says so, starts nothing
    assert again.returncode == 0 and "already running" in again.stdout
    assert len(se.bin.calls("nitro-attest")) == 3

    r = se.run("attest.sh", "--simulate")
    assert r.returncode == 0, r.stderr
    assert se.bin.calls("nitro-attest")[-1] == [
        "nitro-attest",
        "attest",
        "--connect",
        f"unix://{demo}/enclave.sock",
        "--nonce",
        "random",
        "--expected",
        str(demo / "expected-measurements.json"),
        "--root",
        str(demo / "sim/root.pem"),
        "--out-dir",
        str(se.repo / "client"),
    ]
    assert se.bin.calls("nitro-cli") == []  # no nitro-cli on the simulated path

    r = se.run("cleanup.sh", "--simulate")
    assert r.returncode == 0, r.stderr
    assert not _alive(pid)
    assert not (demo / "enclave.pid").exists() and not (demo / "enclave.sock").exists()
    quiet = se.run("cleanup.sh", "--simulate")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_cleanup_leaves_an_unrelated_process_with_a_stale_pid_alone(se: ScriptEnv) -> None:
    """The pid in .demo/enclave.pid now belongs to someone else's process: it must survive."""
    demo = se.repo / ".demo"
    demo.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (demo / "enclave.pid").write_text(f"{bystander.pid}\n")
        r = se.run("cleanup.sh", "--simulate")
        assert r.returncode == 0, r.stderr
        assert "stale pid file" in r.stderr and str(bystander.pid) in r.stderr
        assert "stopped" not in r.stderr
        time.sleep(0.2)
        assert bystander.poll() is None and _alive(bystander.pid)
        assert not (demo / "enclave.pid").exists()
        # run.sh does not take the bystander for a running server either: it starts one.
        r = se.run("run.sh", "--simulate")
        assert r.returncode == 0 and "already running" not in r.stdout, r.stdout + r.stderr
        assert int((demo / "enclave.pid").read_text()) != bystander.pid
        assert se.run("cleanup.sh", "--simulate").returncode == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("content", ["-1", "1; touch pwned", ""])
def test_cleanup_refuses_odd_pid_files(se: ScriptEnv, content: str) -> None:
    demo = se.repo / ".demo"
    demo.mkdir()
    (demo / "enclave.pid").write_text(content)
    r = se.run("cleanup.sh", "--simulate")
    assert r.returncode == 0, r.stderr
    assert "stale pid file" in r.stderr
    assert not (demo / "enclave.pid").exists() and not (se.repo / "pwned").exists()


def test_simulate_passes_measurements_to_sim_init(se: ScriptEnv) -> None:
    m = se.tmp / "m.json"
    m.write_text("{}")
    assert se.run("run.sh", "--simulate", "--measurements", str(m)).returncode == 0
    assert se.bin.calls("nitro-attest")[0][-2:] == ["--measurements", str(m)]


def test_simulated_server_that_dies_is_reported(se: ScriptEnv) -> None:
    (se.bin.dir / "serve-fails").touch()
    r = se.run("run.sh", "--simulate")
    assert r.returncode == 1
    assert "did not start" in r.stderr and "cannot open the NSM" in r.stderr
    assert not (se.repo / ".demo/enclave.pid").exists()


def test_attest_simulate_without_server(se: ScriptEnv) -> None:
    (se.repo / "client").mkdir()
    (se.repo / "client/expected-measurements.json").write_text("{}")
    r = se.run("attest.sh", "--simulate")
    assert r.returncode == 2 and "./run.sh --simulate" in r.stderr
    assert se.bin.calls("nitro-attest") == []


def test_simulated_loop_with_the_real_nitro_attest(se: ScriptEnv) -> None:
    """The scripts against the real CLI: run -> attest (verified) -> cleanup, nothing left."""
    import shutil
    import sys

    real = Path(sys.executable).parent / "nitro-attest"
    if not real.exists():
        found = shutil.which("nitro-attest")
        assert found, "the nitro-attest console script is not installed"
        real = Path(found)
    env = {"NITRO_ATTEST_BIN": str(real)}
    demo = se.repo / ".demo"
    r = se.run("run.sh", "--simulate", env=env)
    assert r.returncode == 0, r.stderr
    pid = int((demo / "enclave.pid").read_text())
    try:
        assert "PCR0" in (demo / "expected-measurements.json").read_text()
        r = se.run("attest.sh", "--simulate", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Result: VERIFIED" in r.stdout and "✅ PCR Values" in r.stdout
        assert (se.repo / "client/attestation-document.dat").exists()
        # A wrong expectation is a rejection (exit 1), not a setup error.
        bad = se.tmp / "bad.json"
        bad.write_text('{"Measurements": {"PCR0": "' + "11" * 48 + '"}}')
        r = se.run("attest.sh", "--simulate", "--expected", str(bad), env=env)
        assert r.returncode == 1 and "❌ PCR Values" in r.stdout
    finally:
        r = se.run("cleanup.sh", "--simulate", env=env)
    assert r.returncode == 0, r.stderr
    assert not _alive(pid) and not (demo / "enclave.sock").exists()
