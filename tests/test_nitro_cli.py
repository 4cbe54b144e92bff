"""nitro_attest.aws.nitro_cli and `nitro-attest enclave` against a fake nitro-cli on PATH."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.aws import nitro_cli as nc

from .nitro_fakes import BUILD_JSON, PCR0, FakeBin, running_enclave


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBin:
    fb = FakeBin(tmp_path / "bin")
    monkeypatch.setenv("PATH", fb.env()["PATH"])
    return fb


def test_build_enclave_parses_measurements(fake: FakeBin, tmp_path: Path) -> None:
    eif = tmp_path / "enclave.eif"
    built = nc.NitroCli().build_enclave(docker_uri="img:latest", output_file=str(eif))
    assert built.measurements.pcrs == {0: PCR0, 1: "03" * 48, 2: "25" * 48}
    assert built.measurements.hash_algorithm == "Sha384 { ... }"
    assert built.raw == BUILD_JSON
    assert fake.calls("nitro-cli")[-1] == [
        "nitro-cli", "build-enclave", "--docker-uri=img:latest", f"--output-file={eif}",
    ]


def test_build_enclave_with_signing_gives_pcr8(fake: FakeBin, tmp_path: Path) -> None:
    signed = json.loads(json.dumps(BUILD_JSON))
    signed["Measurements"]["PCR8"] = "88" * 48
    (fake.dir / "build.json").write_text(json.dumps(signed))
    built = nc.NitroCli().build_enclave(
        docker_uri="i", output_file=str(tmp_path / "e.eif"),
        signing_certificate="c.pem", private_key="k.pem",
    )
    assert built.measurements.pcrs[8] == "88" * 48
    assert fake.calls()[-1][-2:] == ["--signing-certificate=c.pem", "--private-key=k.pem"]
    with pytest.raises(ValueError):
        nc.NitroCli().build_enclave(docker_uri="i", output_file="e", signing_certificate="c")


def test_run_describe_terminate_round_trip(fake: FakeBin) -> None:
    cli = nc.NitroCli()
    assert cli.describe_enclaves() == ()
    started = cli.run_enclave(eif_path="e.eif", memory_mib=512, cpu_count=2, enclave_cid=16)
    assert (started.enclave_cid, started.memory_mib, started.cpu_ids) == (16, 512, (1, 3))
    assert started.enclave_id.startswith("i-0123456789abcdef0-enc")
    (info,) = cli.describe_enclaves()
    assert info.running and not info.debug_mode and info.enclave_cid == 16
    assert info.measurements is not None and info.measurements.pcrs[0] == PCR0
    done = cli.terminate_enclave(all_enclaves=True)
    assert [(d.enclave_id, d.terminated) for d in done] == [(started.enclave_id, True)]
    assert cli.describe_enclaves() == ()
    assert cli.terminate_enclave(all_enclaves=True) == ()


def test_run_enclave_debug_flag_and_cpu_ids(fake: FakeBin) -> None:
    cli = nc.NitroCli()
    cli.run_enclave(eif_path="e.eif", memory_mib=1024, cpu_ids=[1, 3], debug_mode=True)
    assert fake.calls()[-1] == [
        "nitro-cli", "run-enclave", "--eif-path=e.eif", "--memory=1024",
        "--cpu-ids=1", "--cpu-ids=3", "--debug-mode",
    ]
    assert cli.describe_enclaves()[0].debug_mode
    with pytest.raises(ValueError):
        cli.run_enclave(eif_path="e", memory_mib=1, cpu_count=2, cpu_ids=[1])


def test_describe_eif(fake: FakeBin) -> None:
    d = nc.NitroCli().describe_eif("e.eif")
    assert d.eif_version == 4 and not d.is_signed and d.check_crc
    assert d.signature_check is None and d.image_name == "nitro-attest-enclave"
    assert d.measurements.pcrs[2] == "25" * 48
    assert d.metadata == {"BuildTool": "nitro-cli"}


@pytest.mark.parametrize("code", [26, 27, 11])
def test_failure_carries_code_text_and_status(fake: FakeBin, code: int) -> None:
    fake.fail("run-enclave", code)
    with pytest.raises(nc.NitroCliError) as ei:
        nc.NitroCli().run_enclave(eif_path="e", memory_mib=512, cpu_count=2)
    err = ei.value
    assert err.code == f"E{code}"
    assert err.returncode == code
    assert f"[ E{code} ]" in str(err) and f"exit status {code}" in str(err)
    assert "cli-errors.html" in err.stderr


def test_missing_binary_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(nc.NitroCliNotFoundError, match=r"setup-pvm\.sh"):
        nc.NitroCli().describe_enclaves()


def test_non_json_output_is_an_output_error(fake: FakeBin) -> None:
    (fake.dir / "nitro-cli").write_text("#!/bin/sh\necho 'not json'\n")
    with pytest.raises(nc.NitroCliOutputError, match="not JSON"):
        nc.NitroCli().describe_enclaves()


def test_parse_error_without_code() -> None:
    assert nc.parse_error("Start...\n[ E26 ] Insufficient memory\nFor more") == (
        "E26", "Insufficient memory",
    )
    assert nc.parse_error("something broke\n") == (None, "something broke")


@pytest.mark.parametrize(
    "value",
    [
        {"Measurements": {"HashAlgorithm": "x"}},  # no PCRs
        {"Measurements": {"PCR0": "zz"}},
        {"Measurements": {"PCR0": "00" * 10}},
        {"Measurements": {"PCR0": 5}},
        ["not", "an", "object"],
    ],
)
def test_parse_build_rejects_bad_shapes(value: object) -> None:
    with pytest.raises(nc.NitroCliOutputError):
        nc.parse_build(value)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("EnclaveCID"),
        lambda e: e.update(EnclaveCID="16"),
        lambda e: e.update(EnclaveCID=True),
        lambda e: e.update(CPUIDs="1,3"),
        lambda e: e.update(State=None),
    ],
)
def test_parse_describe_rejects_bad_fields(mutate: object) -> None:
    enc = running_enclave()
    mutate(enc)  # type: ignore[operator]
    with pytest.raises(nc.NitroCliOutputError):
        nc.parse_describe_enclaves([enc])
    with pytest.raises(nc.NitroCliOutputError):
        nc.parse_describe_enclaves({"not": "a list"})


def test_parse_terminate() -> None:
    r = nc.parse_terminate({"EnclaveName": "n", "EnclaveID": "i-1-enc2", "Terminated": True})
    assert r.terminated and r.enclave_id == "i-1-enc2"
    with pytest.raises(nc.NitroCliOutputError):
        nc.parse_terminate({"EnclaveName": "n", "EnclaveID": "i", "Terminated": "yes"})


def test_results_are_frozen(fake: FakeBin) -> None:
    info = nc.parse_describe_enclaves([running_enclave()])[0]
    with pytest.raises(AttributeError):
        info.state = "EMPTY"  # type: ignore[misc]


# --- the `nitro-attest enclave` command line ---------------------------------------------------


def test_cli_describe_passes_json_through(
    fake: FakeBin, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.set_state([running_enclave(cid=20)])
    assert main(["enclave", "describe"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["EnclaveCID"] == 20 and out[0]["State"] == "RUNNING"


def test_cli_build_run_terminate(
    fake: FakeBin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eif = tmp_path / "e.eif"
    assert main(["enclave", "build", "--docker-uri", "i:1", "--output-file", str(eif)]) == 0
    assert json.loads(capsys.readouterr().out) == BUILD_JSON
    assert main(["enclave", "run", "--eif-path", str(eif), "--memory", "512", "--cpu-count",
                 "2", "--enclave-cid", "16", "--debug-mode"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["EnclaveCID"] == 16
    assert "debug mode" in cap.err
    assert main(["enclave", "terminate", "--all"]) == 0
    assert json.loads(capsys.readouterr().out)["Terminated"] is True


def test_cli_surfaces_error_code_and_status(
    fake: FakeBin, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.fail("run-enclave", 26)
    rc = main(["enclave", "run", "--eif-path", "e", "--memory", "512", "--cpu-count", "2"])
    assert rc == 26
    err = capsys.readouterr().err
    assert "[ E26 ]" in err and "Insufficient memory requested" in err
    assert "Traceback" not in err


def test_cli_missing_nitro_cli_is_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["enclave", "describe"]) == 2
    assert "nitro-cli not found" in capsys.readouterr().err


def test_cli_console_runs_attached(fake: FakeBin, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enclave", "console", "--enclave-id", "i-1-enc2"]) == 3  # fake: unknown cmd
    assert fake.calls()[-1] == ["nitro-cli", "console", "--enclave-id=i-1-enc2"]
    assert "status 3" in capsys.readouterr().err


def test_values_starting_with_a_dash_are_never_read_as_flags(
    fake: FakeBin, tmp_path: Path
) -> None:
    """Every value goes as --opt=VALUE: nitro-cli (clap) would read '--opt -x' as a missing
    value, and a value such as '--debug-mode' as the flag itself."""
    cli = nc.NitroCli()
    cli.build_enclave(docker_uri="-img:1", output_file=str(tmp_path / "-o.eif"))
    assert fake.calls()[-1][1:] == [
        "build-enclave", "--docker-uri=-img:1", f"--output-file={tmp_path / '-o.eif'}",
    ]
    cli.run_enclave(eif_path="--debug-mode", memory_mib=512, cpu_count=2, enclave_name="-n")
    call = fake.calls()[-1]
    assert "--eif-path=--debug-mode" in call and "--enclave-name=-n" in call
    assert "--debug-mode" not in call and not cli.describe_enclaves()[0].debug_mode
    assert cli.describe_eif("-e.eif").eif_version == 4
    assert fake.calls()[-1][1:] == ["describe-eif", "--eif-path=-e.eif"]
    with pytest.raises(nc.NitroCliError, match="E11"):
        cli.terminate_enclave(enclave_id="-i-1")
    assert fake.calls()[-1][1:] == ["terminate-enclave", "--enclave-id=-i-1"]
    assert cli.console_args("-i", disconnect_timeout=5)[1:] == [
        "console", "--enclave-id=-i", "--disconnect-timeout=5",
    ]
