"""The benches run from a plain clone with python3: they say what they install before installing
it, use the clone's sources when the dependencies are there, and a missing file is one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .paths import REPO

BENCHES = sorted(p.name for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("name", [b for b in BENCHES if b != "plain_verify.py"])
def test_every_bench_bootstraps_first(name: str) -> None:
    lines = (REPO / "bench" / name).read_text().splitlines()
    code = [ln for ln in lines if ln.startswith(("import ", "from ")) and "__future__" not in ln]
    assert code[0].startswith("import _bootstrap"), name


def _clone(tmp_path: Path, *, vectors: bool = True) -> Path:
    clone = tmp_path / "clone"
    for folder in ("bench", "src", "scripts"):
        shutil.copytree(REPO / folder, clone / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    if vectors:
        shutil.copytree(REPO / "tests" / "vectors" / "real", clone / "tests" / "vectors" / "real")
    return clone


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NITRO_ATTEST"))}
    return {**env, **extra}


def test_without_dependencies_it_says_what_it_installs_then_runs_in_the_venv(
    tmp_path: Path,
) -> None:
    clone = _clone(tmp_path)
    # A stand-in for scripts/venv.sh: records its call and makes .venv/bin/python this
    # interpreter (which has the dependencies), so nothing is downloaded here.
    (clone / "scripts" / "venv.sh").write_text(
        "nitro_attest_ensure_venv() {\n"
        '    echo "ensure_venv $1 extras=[$2]" >> "$1/calls.log"\n'
        '    mkdir -p "$1/.venv/bin"\n'
        f"    printf '#!/bin/sh\\nexec {sys.executable} \"$@\"\\n' > \"$1/.venv/bin/python\"\n"
        '    chmod +x "$1/.venv/bin/python"\n'
        "}\n"
    )
    done = subprocess.run(  # -S: no site-packages, so cbor2 and cryptography are missing
        [sys.executable, "-S", str(clone / "bench" / "simulator.py"), "--help"],
        capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("simulator.py: cbor2, cryptography not importable: installing")
    assert f"into {clone / '.venv'}" in first
    assert (clone / "calls.log").read_text() == f"ensure_venv {clone} extras=[]\n"
    assert "usage:" in done.stdout  # then it ran, under .venv/bin/python
    assert "Traceback" not in done.stderr


def test_without_dependencies_and_no_install_it_is_one_line(tmp_path: Path) -> None:
    clone = _clone(tmp_path)
    done = subprocess.run(
        [sys.executable, "-S", str(clone / "bench" / "service.py")],
        capture_output=True, text=True, timeout=60,
        env=_env(NITRO_ATTEST_BENCH_NO_INSTALL="1"),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("service.py: error: cbor2, cryptography, fastapi")
    assert "pip install -e '.[dev]'" in done.stderr
    assert done.stderr.count("\n") == 1 and not (clone / ".venv").exists()


def test_with_dependencies_it_uses_the_clone_sources(tmp_path: Path) -> None:
    """Dependencies installed but not nitro-attest: the clone's src/ is used, children included."""
    clone = _clone(tmp_path)
    marker = "bench-bootstrap-marker"
    (clone / "src" / "nitro_attest" / "_marker.py").write_text(f"MARK = {marker!r}\n")
    probe = clone / "bench" / "probe.py"
    probe.write_text(
        "import _bootstrap  # noqa: F401\n"
        "import subprocess, sys\n"
        "from nitro_attest._marker import MARK\n"
        "print(MARK)\n"
        "subprocess.run([sys.executable, '-S', '-c', 'from nitro_attest._marker import MARK; "
        "print(MARK)'], check=True)\n"
    )
    # -S with site-packages on PYTHONPATH: cbor2 and cryptography import, but .pth files (the
    # editable install of nitro-attest in this venv) are not read: a clone with its deps only.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    done = subprocess.run(
        [sys.executable, "-S", str(probe)], capture_output=True, text=True, timeout=60,
        env=_env(PYTHONPATH=site), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [marker, marker]
    assert done.stderr == ""  # nothing installed, nothing said


def test_a_missing_vector_file_is_one_line(tmp_path: Path) -> None:
    clone = _clone(tmp_path, vectors=False)
    done = subprocess.run(
        [sys.executable, str(clone / "bench" / "verify.py"), "--rounds", "1"],
        capture_output=True, text=True, timeout=60, env=_env(PYTHONPATH=str(REPO / "src")),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"verify.py: error: {clone / 'tests/vectors/real/index.json'}: no such file "
        "(the vectors' index)\n"
    )
