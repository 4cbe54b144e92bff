"""Run the repo's shell scripts from a copy of the repo, with fakes on PATH and no /etc or $HOME.

Each test gets ``tmp/repo`` holding the root *.sh, scripts/ and enclave/, an allocator.yaml in
tmp, a fake HOME and a fake-bin directory first on PATH (see nitro_fakes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .nitro_fakes import FakeBin, add_fake_nitro_attest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("setup-pvm.sh", "setup-client.sh", "build.sh", "run.sh", "get-ca.sh", "attest.sh",
           "cleanup.sh")

ALLOCATOR_DEFAULT = """---
# Enclave configuration file.
memory_mib: 512
#
cpu_count: 2
"""


@dataclass
class ScriptEnv:
    tmp: Path
    repo: Path
    bin: FakeBin
    allocator: Path
    env: dict[str, str]

    def run(self, script: str, *args: str, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.repo / script), *args], cwd=self.repo, env={**self.env, **(env or {})},
            capture_output=True, text=True, timeout=timeout, check=False,
        )


def make_env(tmp: Path) -> ScriptEnv:
    repo = tmp / "repo"
    repo.mkdir()
    for name in SCRIPTS:
        shutil.copy2(REPO / name, repo / name)
    shutil.copytree(REPO / "scripts", repo / "scripts")
    shutil.copytree(REPO / "enclave", repo / "enclave")
    shutil.copy2(REPO / "pyproject.toml", repo / "pyproject.toml")
    fb = FakeBin(tmp / "bin")
    fb.recorder("docker")
    add_fake_nitro_attest(fb)
    allocator = tmp / "allocator.yaml"
    allocator.write_text(ALLOCATOR_DEFAULT)
    home = tmp / "home"
    home.mkdir()
    env = {
        "PATH": f"{fb.dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "NITRO_ATTEST_ALLOCATOR_YAML": str(allocator),
        "NITRO_ATTEST_BIN": str(fb.dir / "nitro-attest"),
        "NITRO_ATTEST_NITRO_ENV": str(tmp / "no-nitro-cli-env.sh"),
    }
    return ScriptEnv(tmp=tmp, repo=repo, bin=fb, allocator=allocator, env=env)
