"""The license the package declares is in the repository and in the wheel, as the standard text."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from .paths import REPO, SIGV4_VECTORS

# MD5 of the Apache License 2.0 text as apache.org publishes it (LICENSE-2.0.txt): the file must be
# that text unchanged, the one the SigV4 vectors' upstream also carries.
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_license_file_is_the_standard_apache_text() -> None:
    text = (REPO / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == APACHE_2_MD5
    assert text == (SIGV4_VECTORS / "LICENSE").read_bytes()


def test_pyproject_declares_it() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]


def test_wheel_carries_the_license(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = out.glob("nitro_attest-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        licenses = [n for n in zf.namelist() if n.endswith("/LICENSE")]
        assert len(licenses) == 1, zf.namelist()
        assert hashlib.md5(zf.read(licenses[0])).hexdigest() == APACHE_2_MD5
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text
    assert "License-File: LICENSE" in text


def test_both_images_copy_it_for_the_wheel_build() -> None:
    """pyproject's license-files must exist where each image builds the package."""
    for dockerfile in ("enclave/Dockerfile", "deploy/service/Dockerfile"):
        text = (REPO / dockerfile).read_text()
        copies = [line for line in text.splitlines() if line.startswith("COPY pyproject.toml")]
        assert copies and all("LICENSE" in line.split() for line in copies), dockerfile
    assert "!LICENSE" in (REPO / ".dockerignore").read_text().splitlines()
