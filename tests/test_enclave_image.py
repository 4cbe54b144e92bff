"""Static checks of the enclave image definition (no Docker engine here to build it)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "enclave/Dockerfile").read_text()


def _requirements(name: str) -> dict[str, tuple[str, list[str]]]:
    text = (REPO / "enclave" / name).read_text().replace("\\\n", " ")
    reqs = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        assert m, f"not pinned by version and hash: {line!r}"
        reqs[m.group(1).lower()] = (m.group(2), re.findall(r"sha256:([0-9a-f]{64})", m.group(3)))
    return reqs


def test_base_pinned_by_digest_and_serves_on_vsock_with_device_nsm() -> None:
    assert re.search(r"^ARG BASE=python:3\.12-alpine@sha256:[0-9a-f]{64}$", DOCKERFILE, re.M)
    assert "FROM ${BASE} AS build" in DOCKERFILE and "FROM scratch" in DOCKERFILE
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert cmd is not None
    assert cmd.group(1) == ('["/opt/nitro-attest/bin/nitro-attest", "serve", "--listen", '
                            '"vsock://any:5005", "--nsm", "device"]')


def test_every_pip_install_is_hash_pinned_or_the_local_project() -> None:
    installs = re.findall(r"pip install[^&\n]*", DOCKERFILE.replace("\\\n", " "))
    assert len(installs) == 3
    for cmd in installs:
        assert "--no-compile" in cmd and "--no-deps" in cmd
        assert ("--require-hashes" in cmd and "--only-binary=:all:" in cmd) or (
            cmd.rstrip().endswith("./project") and "--no-build-isolation" in cmd
        )
    assert "PYTHONDONTWRITEBYTECODE=1" in DOCKERFILE and "PIP_NO_CACHE_DIR=1" in DOCKERFILE
    assert "SOURCE_DATE_EPOCH" in DOCKERFILE and "os.utime" in DOCKERFILE


def test_runtime_requirements_match_pyproject() -> None:
    reqs = _requirements("requirements.txt")
    assert set(reqs) == {"cbor2", "cryptography", "cffi", "pycparser", "certifi"}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = dict(re.fullmatch(r"([a-z0-9]+)>=([\d.]+)", d).groups() for d in deps)  # type: ignore[union-attr]
    for name, floor in floors.items():
        version = tuple(int(x) for x in reqs[name][0].split("."))
        assert version >= tuple(int(x) for x in floor.split(".")), name
    for name in ("cbor2", "cryptography", "cffi"):  # one wheel per architecture (x86_64, arm64)
        assert len(set(reqs[name][1])) == 2, name
    assert set(_requirements("build-requirements.txt")) == {"setuptools"}


def test_the_image_carries_the_kms_clients_default_ca_bundle() -> None:
    """TLS to KMS ends in the enclave: the default --ca-bundle (certifi's) must be in the image,
    at a version the kms extra accepts."""
    version = _requirements("requirements.txt")["certifi"][0]
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    floor = next(d for d in extra["kms"] if d.startswith("certifi>="))[len("certifi>="):]
    release = tuple(int(x) for x in version.split(".")[:3])
    assert release >= tuple(int(x) for x in floor.split(".")), version


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    assert allowed == {"enclave/requirements.txt", "enclave/build-requirements.txt",
                       "pyproject.toml", "README.md", "LICENSE", "src/"}
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M):
        for src in copied.split():
            assert src in allowed or src + "/" in allowed, src
