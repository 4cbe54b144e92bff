"""build.sh, run.sh, attest.sh and cleanup.sh against fake docker / nitro-cli / nitro-attest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .nitro_fakes import BUILD_JSON, running_enclave
from .script_env import ScriptEnv, make_env


@pytest.fixture
def se(tmp_path: Path) -> ScriptEnv:
    return make_env(tmp_path)


@pytest.mark.parametrize(
    "script", ["setup-pvm.sh", "setup-client.sh", "build.sh", "run.sh", "get-ca.sh",
               "attest.sh", "cleanup.sh"],
)
def test_every_script_has_help(se: ScriptEnv, script: str) -> None:
    r = se.run(script, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:")
    bad = se.run(script, "--no-such-option")
    assert bad.returncode == 2 and "unknown option" in bad.stderr


# --- build.sh ---------------------------------------------------------------------------------


def test_build_runs_docker_then_nitro_cli_and_keeps_measurements(se: ScriptEnv) -> None:
    r = se.run("build.sh")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == BUILD_JSON
    assert json.loads((se.repo / "build/measurements.json").read_text()) == BUILD_JSON
    assert (se.repo / "build/enclave.eif").exists()
    assert not (se.repo / "client/expected-measurements.json").exists()
    (docker,) = se.bin.calls("docker")
    assert docker[1] == "build" and "SOURCE_DATE_EPOCH=1704067200" in docker
    assert docker[docker.index("-f") + 1] == str(se.repo / "enclave/Dockerfile")
    assert docker[-1] == str(se.repo) and docker[docker.index("-t") + 1] == (
        "nitro-attest-enclave:latest"
    )
    (nc,) = se.bin.calls("nitro-cli")
    assert nc == ["nitro-cli", "build-enclave", "--docker-uri=nitro-attest-enclave:latest",
                  f"--output-file={se.repo / 'build/enclave.eif'}"]
    assert "needs at least 1 MiB" in r.stderr  # 4 KiB fake EIF


def test_build_write_expected(se: ScriptEnv) -> None:
    r = se.run("build.sh", "--write-expected")
    assert r.returncode == 0, r.stderr
    assert json.loads((se.repo / "client/expected-measurements.json").read_text()) == BUILD_JSON


def test_build_warns_when_allocator_memory_below_4x_eif(se: ScriptEnv) -> None:
    se.bin.set_eif_size(200 * 1024 * 1024)  # 200 MiB EIF -> needs 800 MiB
    r = se.run("build.sh")
    assert r.returncode == 0, r.stderr
    assert "needs at least 800 MiB" in r.stderr
    assert "memory_mib: 512" in r.stderr and "E26" in r.stderr


def test_build_surfaces_nitro_cli_error(se: ScriptEnv) -> None:
    se.bin.fail("build-enclave", 48, "EifBuilding: could not build the EIF")
    r = se.run("build.sh")
    assert r.returncode == 48
    assert "[ E48 ]" in r.stderr and "failed with [ E48 ]" in r.stderr
    assert not (se.repo / "build/measurements.json").exists()


def test_build_docker_failure(se: ScriptEnv) -> None:
    se.bin.set_rc("docker", 1)
    r = se.run("build.sh")
    assert r.returncode == 1 and "docker build failed" in r.stderr
    assert se.bin.calls("nitro-cli") == []


def test_build_without_nitro_cli(se: ScriptEnv) -> None:
    (se.bin.dir / "nitro-cli").unlink()
    r = se.run("build.sh")
    assert r.returncode == 2 and "nitro-cli not found" in r.stderr


# --- run.sh -----------------------------------------------------------------------------------


def _built(se: ScriptEnv) -> None:
    assert se.run("build.sh").returncode == 0


def test_run_uses_allocator_settings_and_cid_16(se: ScriptEnv) -> None:
    _built(se)
    r = se.run("run.sh")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["EnclaveCID"] == 16
    run_call = se.bin.calls("nitro-cli")[-1]
    assert run_call == ["nitro-cli", "run-enclave",
                        f"--eif-path={se.repo / 'build/enclave.eif'}", "--memory=512",
                        "--cpu-count=2", "--enclave-cid=16"]


def test_run_cid_override_cpu_pool_and_debug(se: ScriptEnv) -> None:
    _built(se)
    se.allocator.write_text("memory_mib: 1024  # more\ncpu_pool: \"2,3,6-9\"\n")
    r = se.run("run.sh", "--cid", "21", "--debug")
    assert r.returncode == 0, r.stderr
    call = se.bin.calls("nitro-cli")[-1]
    assert "--memory=1024" in call and "--cpu-count=6" in call and "--enclave-cid=21" in call
    assert call[-1] == "--debug-mode"
    assert "debug mode" in r.stderr and "fail verification" in r.stderr


@pytest.mark.parametrize("code", [26, 27, 11])
def test_run_surfaces_error_codes(se: ScriptEnv, code: int) -> None:
    _built(se)
    se.bin.fail("run-enclave", code)
    r = se.run("run.sh")
    assert r.returncode == code
    assert f"[ E{code} ]" in r.stderr and "hint:" in r.stderr


def test_run_refuses_before_e26_when_memory_too_small(se: ScriptEnv) -> None:
    se.bin.set_eif_size(130 * 1024 * 1024)
    _built(se)
    r = se.run("run.sh")
    assert r.returncode == 1
    assert "at least 520 MiB" in r.stderr and "E26" in r.stderr
    assert se.bin.calls("nitro-cli")[-1][1] == "build-enclave"  # run-enclave never called


def test_run_without_eif_or_with_bad_cid(se: ScriptEnv) -> None:
    r = se.run("run.sh")
    assert r.returncode == 1 and "run ./build.sh first" in r.stderr
    _built(se)
    for cid in ("3", "x"):
        r = se.run("run.sh", "--cid", cid)
        assert r.returncode == 2 and "4 or above" in r.stderr


def test_run_refuses_when_an_enclave_already_runs(se: ScriptEnv) -> None:
    _built(se)
    se.bin.set_state([running_enclave(cid=18)])
    r = se.run("run.sh")
    assert r.returncode == 1 and "already running (CID 18)" in r.stderr


def test_run_without_allocator_settings_needs_flags(se: ScriptEnv) -> None:
    _built(se)
    se.allocator.unlink()
    r = se.run("run.sh")
    assert r.returncode == 2 and "--memory" in r.stderr
    r = se.run("run.sh", "--memory", "600", "--cpu-count", "2")
    assert r.returncode == 0, r.stderr


# --- attest.sh --------------------------------------------------------------------------------


def _ready_to_attest(se: ScriptEnv) -> None:
    assert se.run("build.sh", "--write-expected").returncode == 0
    (se.repo / "client/root.pem").write_text("ROOT\n")


def test_attest_connects_to_the_running_enclave_cid(se: ScriptEnv) -> None:
    _ready_to_attest(se)
    se.bin.set_state([running_enclave(cid=23)])
    r = se.run("attest.sh")
    assert r.returncode == 0, r.stderr
    (call,) = se.bin.calls("nitro-attest")
    client = se.repo / "client"
    assert call == ["nitro-attest", "attest", "--connect", "vsock://23:5005", "--nonce", "random",
                    "--expected", str(client / "expected-measurements.json"),
                    "--root", str(client / "root.pem"), "--out-dir", str(client)]
    assert "attestation verified" in r.stderr


def test_attest_passes_extra_options_and_reports_rejection(se: ScriptEnv) -> None:
    _ready_to_attest(se)
    se.bin.set_state([running_enclave()])
    se.bin.set_rc("nitro-attest", 1)
    r = se.run("attest.sh", "--", "--user-data", "abcd")
    assert r.returncode == 1 and "REJECTED" in r.stderr
    assert se.bin.calls("nitro-attest")[-1][-2:] == ["--user-data", "abcd"]


def test_attest_with_no_enclave_running(se: ScriptEnv) -> None:
    _ready_to_attest(se)
    r = se.run("attest.sh")
    assert r.returncode == 2 and "no enclave is running" in r.stderr
    se.bin.set_state([running_enclave(state="TERMINATING")])
    assert "no enclave is running" in se.run("attest.sh").stderr
    assert se.bin.calls("nitro-attest") == []


def test_attest_warns_on_debug_enclave(se: ScriptEnv) -> None:
    _ready_to_attest(se)
    se.bin.set_state([running_enclave(flags="DEBUG_MODE")])
    se.bin.set_rc("nitro-attest", 1)
    r = se.run("attest.sh")
    assert r.returncode == 1 and "debug mode" in r.stderr


def test_attest_needs_root_and_expected(se: ScriptEnv) -> None:
    se.bin.set_state([running_enclave()])
    r = se.run("attest.sh")
    assert r.returncode == 2 and "expected-measurements.json" in r.stderr
    assert se.run("build.sh", "--write-expected").returncode == 0
    r = se.run("attest.sh")
    assert r.returncode == 2 and "./get-ca.sh" in r.stderr


def test_attest_describe_failure_surfaces_code(se: ScriptEnv) -> None:
    _ready_to_attest(se)
    se.bin.fail("describe-enclaves", 11)
    r = se.run("attest.sh")
    assert r.returncode == 11 and "[ E11 ]" in r.stderr


def test_attest_cid_flag_skips_describe(se: ScriptEnv) -> None:
    _ready_to_attest(se)
    calls_before = len(se.bin.calls("nitro-cli"))
    r = se.run("attest.sh", "--cid", "30")
    assert r.returncode == 0, r.stderr
    assert len(se.bin.calls("nitro-cli")) == calls_before
    assert "vsock://30:5005" in se.bin.calls("nitro-attest")[-1]


# --- cleanup.sh -------------------------------------------------------------------------------


def test_cleanup_terminates_and_is_quiet_when_none(se: ScriptEnv) -> None:
    se.bin.set_state([running_enclave()])
    r = se.run("cleanup.sh")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Terminated"] is True
    assert se.bin.calls("nitro-cli")[-1] == ["nitro-cli", "terminate-enclave", "--all"]
    assert se.bin.state() == []
    again = se.run("cleanup.sh")
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
    assert se.bin.calls("nitro-cli")[-1] == ["nitro-cli", "describe-enclaves"]


def test_cleanup_by_id_and_failure(se: ScriptEnv) -> None:
    enc = running_enclave()
    se.bin.set_state([enc])
    r = se.run("cleanup.sh", "--enclave-id", "i-nope")
    assert r.returncode == 11 and "[ E11 ]" in r.stderr
    # a value starting with '-' reaches nitro-cli as the value, never as a flag
    r = se.run("cleanup.sh", "--enclave-id", "-i-nope")
    assert r.returncode == 11 and "[ E11 ]" in r.stderr, r.stderr
    assert se.bin.calls("nitro-cli")[-1][1:] == ["terminate-enclave", "--enclave-id=-i-nope"]
    r = se.run("cleanup.sh", "--enclave-id", enc["EnclaveID"])
    assert r.returncode == 0, r.stderr
    assert se.bin.state() == []


def test_full_tutorial_sequence(se: ScriptEnv) -> None:
    """build -> run -> attest -> cleanup, in the README's order, against the fakes."""
    assert se.run("build.sh", "--write-expected").returncode == 0
    assert se.run("run.sh").returncode == 0
    (se.repo / "client/root.pem").write_text("ROOT\n")
    assert se.run("attest.sh").returncode == 0
    assert se.bin.calls("nitro-attest")[-1][3] == "vsock://16:5005"
    assert se.run("cleanup.sh").returncode == 0
    assert se.bin.state() == []


def test_garbled_describe_output_is_a_clear_error(se: ScriptEnv) -> None:
    _ready_to_attest(se)
    (se.bin.dir / "state.json").write_text('{"not": "a list"}')
    r = se.run("attest.sh")
    assert r.returncode != 0
    assert "unexpected output from nitro-cli describe-enclaves" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_cpu_pool_is_reported(se: ScriptEnv) -> None:
    _built(se)
    se.allocator.write_text("memory_mib: 512\ncpu_pool: two\n")
    r = se.run("run.sh")
    assert r.returncode != 0 and "cannot read cpu_pool" in r.stderr
    assert se.bin.calls("nitro-cli")[-1][1] == "build-enclave"
