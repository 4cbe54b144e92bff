"""build.sh --no-nitro-cli: docker build, docker save, the real `nitro-attest eif build`; the EIF
and its measurements land in build/ as on the nitro-cli path. Docker is a fake that saves a
synthetic image; nitro-cli is absent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nitro_attest.eif import inspect_eif

from .nitro_fakes import write_exe
from .oci_helpers import config_json, docker_save_files, f, layer_tar, write_blobs, write_tar
from .script_env import ScriptEnv, make_env

_FAKE_DOCKER = r'''
import json, shutil, sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
args = sys.argv[1:]
with open(HERE / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(["docker", *args]) + "\n")
if args[:1] == ["save"]:
    if (HERE / "save-fails").exists():
        sys.exit(1)
    shutil.copy(HERE / "image.tar", args[args.index("-o") + 1])
'''


@pytest.fixture
def se(tmp_path: Path) -> ScriptEnv:
    env = make_env(tmp_path)
    (env.bin.dir / "nitro-cli").unlink()
    write_exe(env.bin.dir / "docker", _FAKE_DOCKER)
    layers = [layer_tar([f("app/server.py", b"print('enclave')\n", 0o755)])]
    config = config_json(cmd=["python3", "/app/server.py"])
    write_tar(env.bin.dir / "image.tar", docker_save_files(layers, config))
    real = write_exe(
        env.bin.dir / "real-nitro-attest",
        "import sys\nfrom nitro_attest._cli import entrypoint\nsys.argv[0] = 'nitro-attest'\n"
        "entrypoint()\n",
    )
    env.env["NITRO_ATTEST_BIN"] = str(real)
    env.env["PYTHONPATH"] = str(Path(sys.modules["nitro_attest"].__file__ or "").parents[1])
    write_blobs(tmp_path / "blobs")
    return env


def test_build_without_nitro_cli_keeps_eif_and_measurements(se: ScriptEnv) -> None:
    r = se.run("build.sh", "--no-nitro-cli", "--blobs", str(se.tmp / "blobs"), "--write-expected")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    eif = se.repo / "build/enclave.eif"
    pcrs = inspect_eif(eif).pcrs_hex()
    assert {k: v for k, v in printed["Measurements"].items() if k != "HashAlgorithm"} == pcrs
    assert json.loads((se.repo / "build/measurements.json").read_text()) == printed
    assert json.loads((se.repo / "client/expected-measurements.json").read_text()) == printed
    assert (se.repo / "build/image.tar").exists()
    calls = se.bin.calls("docker")
    assert [c[1] for c in calls] == ["build", "save"]
    assert calls[1] == ["docker", "save", "-o", str(se.repo / "build/image.tar"),
                        "nitro-attest-enclave:latest"]  # fmt: skip
    meta = inspect_eif(eif).metadata
    assert meta is not None and meta["BuildMetadata"]["BuildTime"] == "2024-01-01T00:00:00+00:00"
    # a second run reproduces the same bytes
    first = eif.read_bytes()
    assert se.run("build.sh", "--no-nitro-cli", "--blobs", str(se.tmp / "blobs")).returncode == 0
    assert eif.read_bytes() == first


def test_build_without_nitro_cli_errors(se: ScriptEnv) -> None:
    r = se.run("build.sh", "--no-nitro-cli", "--blobs", str(se.tmp / "no-blobs"))
    assert r.returncode == 1
    assert "blobs" in r.stderr and "nitro-attest eif build failed" in r.stderr
    assert not (se.repo / "build/measurements.json").exists()
    (se.bin.dir / "save-fails").write_text("")
    r = se.run("build.sh", "--no-nitro-cli", "--blobs", str(se.tmp / "blobs"))
    assert r.returncode == 1 and "docker save failed" in r.stderr
    r = se.run("build.sh", "--blobs", str(se.tmp / "blobs"))
    assert r.returncode == 2 and "--blobs goes with --no-nitro-cli" in r.stderr
