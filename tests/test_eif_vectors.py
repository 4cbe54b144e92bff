"""Every reference vector in tests/vectors/eif gives its expected PCRs, CRC and signature
results; PCRs are also recomputed here from the formula and from the raw inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from nitro_attest.eif import inspect_eif, measurements_from_eif
from nitro_attest.eif.writer import write_eif

from .eif_helpers import crc_of, formula_pcr, formula_pcrs, parse

VECTOR_NAMES = [
    "v1_unsigned_2rd",
    "v2_unsigned_3rd",
    "v3_unsigned_1rd",
    "v4_signed_2rd",
    "v5_aarch64_flag_2rd",
    "v6_boundary_shift_2rd",
    "v7_signed_crlfpem_3rd",
    "v8_unsigned_emptyrd1",
    "v9_ramdisk_boundary_shift",
]


@pytest.fixture(scope="module")
def expected(eif_dir: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((eif_dir / "expected.json").read_text())
    return {v["name"]: v for v in data["vectors"]}


def test_every_vector_is_listed(expected: dict[str, dict[str, Any]]) -> None:
    assert sorted(expected) == sorted(VECTOR_NAMES)


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_results(name: str, eif_dir: Path, expected: dict[str, dict[str, Any]]) -> None:
    vec = expected[name]
    path = eif_dir / vec["file"]
    blob = path.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == vec["sha256"]

    info = inspect_eif(path)
    assert info.pcrs_hex() == vec["measurements"]
    assert info.crc_ok is vec["describe"]["IsCrcValid"]
    assert info.signature_ok is vec["describe"]["SignatureCheck"]
    assert info.header.version == vec["header"]["version"]
    assert info.header.flags == vec["header"]["flags"]
    assert f"{info.header.crc32:08x}" == vec["header"]["eif_crc32"]
    assert f"{info.scan.crc_computed:08x}" == vec["header"]["crc32_recomputed"]
    got_sections = [
        (s.type, s.header_offset, s.data_offset, s.size) for s in info.scan.layout.sections
    ]
    want_sections = [
        (s["type"], s["header_offset"], s["data_offset"], s["size"]) for s in vec["sections"]
    ]
    assert got_sections == want_sections
    assert measurements_from_eif(path) == vec["measurements"]


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_pcrs_match_the_formula(
    name: str, eif_dir: Path, expected: dict[str, dict[str, Any]]
) -> None:
    """Independent of the module: parse offsets here, hash with hashlib, and rebuild the stream
    from the raw input files too."""
    vec = expected[name]
    blob = (eif_dir / vec["file"]).read_bytes()
    fields, _ = parse(blob)
    assert crc_of(blob) == fields[-1]
    pcrs = formula_pcrs(blob)
    inputs = eif_dir / "inputs"
    kernel = (inputs / vec["inputs"]["kernel"]).read_bytes()
    cmdline = (inputs / vec["inputs"]["cmdline"]).read_bytes()
    ramdisks = [(inputs / r).read_bytes() for r in vec["inputs"]["ramdisks"]]
    assert pcrs["PCR0"] == formula_pcr(kernel + cmdline + b"".join(ramdisks))
    assert pcrs["PCR1"] == formula_pcr(kernel + cmdline + ramdisks[0])
    assert pcrs["PCR2"] == formula_pcr(b"".join(ramdisks[1:]))
    want = dict(vec["measurements"])
    if vec["inputs"]["signing_certificate"]:
        der = (inputs / "signing_cert.der").read_bytes()
        pcrs["PCR8"] = formula_pcr(der)
    assert pcrs == want


@pytest.mark.parametrize("name", [n for n in VECTOR_NAMES if "signed" not in n or "unsigned" in n])
def test_writer_reproduces_unsigned_vectors_byte_for_byte(
    name: str, eif_dir: Path, expected: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    vec = expected[name]
    assert vec["byte_reproducible"] is True
    blob = (eif_dir / vec["file"]).read_bytes()
    meta = next(s for s in vec["sections"] if s["type"] == 5)
    metadata = blob[meta["data_offset"] : meta["data_offset"] + meta["size"]]
    inputs = eif_dir / "inputs"
    out = tmp_path / "rebuilt.eif"
    pcrs = write_eif(
        out,
        kernel=inputs / vec["inputs"]["kernel"],
        cmdline=(inputs / vec["inputs"]["cmdline"]).read_bytes(),
        ramdisks=[inputs / r for r in vec["inputs"]["ramdisks"]],
        metadata=metadata,
        aarch64=bool(vec["header"]["flags"] & 1),
    )
    assert hashlib.sha256(out.read_bytes()).hexdigest() == vec["sha256"]
    assert pcrs == vec["measurements"]
