"""`nitro-attest verify` and `inspect` through main(argv): output, JSON shape, exit codes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from nitro_attest._cli import main

from . import chainfactory as cf

SIGNAL = "signal_20230524_prod.cbor"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def index_entry(real_index: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(e for e in real_index["positive"] if e["file"] == SIGNAL)
    return entry


def test_verify_real_document_with_expectations(
    capsys: pytest.CaptureFixture[str], real_dir: Path, index_entry: dict[str, Any], tmp_path: Path
) -> None:
    expected = tmp_path / "expected-measurements.json"
    pcrs = {f"PCR{i}": index_entry["pcrs"][str(i)] for i in range(3)}
    expected.write_text(json.dumps({"Measurements": {"HashAlgorithm": "Sha384 { ... }", **pcrs}}))
    rc, out, err = run(
        capsys,
        "verify",
        str(real_dir / SIGNAL),
        "--at",
        "document",
        "--expected",
        str(expected),
        "--user-data",
        index_entry["user_data"],
        "--pcr",
        f"4={index_entry['pcrs']['4']}",
    )
    assert rc == 0, err
    assert "VERIFIED" in out
    for label in ("COSE Signature", "Certificate Chain", "PCR Values", "User Data"):
        assert f"✅ {label}" in out
    assert "➖ Nonce: not checked" in out


def test_verify_now_rejects_expired(capsys: pytest.CaptureFixture[str], real_dir: Path) -> None:
    rc, out, _ = run(capsys, "verify", str(real_dir / SIGNAL))
    assert rc == 1
    assert "❌ Certificate Chain" in out and "REJECTED" in out


def test_pcr_mismatch_shows_expected_and_got(
    capsys: pytest.CaptureFixture[str], real_dir: Path, index_entry: dict[str, Any]
) -> None:
    rc, out, _ = run(
        capsys,
        "verify",
        str(real_dir / SIGNAL),
        "--at",
        "document",
        "--pcr",
        "0=" + "00" * 48,
        "--pcr",
        "PCR1=" + "11" * 48,
    )
    assert rc == 1
    assert f"PCR0: got {index_entry['pcrs']['0']}, expected {'00' * 48}" in out
    assert f"PCR1: got {index_entry['pcrs']['1']}, expected {'11' * 48}" in out


def test_json_contract(capsys: pytest.CaptureFixture[str], real_dir: Path) -> None:
    rc, out, _ = run(
        capsys, "verify", str(real_dir / SIGNAL), "--at", "document", "--json", "--nonce", "ab"
    )
    assert rc == 1
    result = json.loads(out)
    assert result["verified"] is False
    assert result["error"] == {"check": "nonce", "message": result["error"]["message"]}
    assert "carries none" in result["error"]["message"]
    names = [c["name"] for c in result["checks"]]
    assert names[:3] == ["format", "cose_signature", "certificate_chain"]
    assert all(set(c) == {"name", "ok", "detail"} for c in result["checks"])
    assert result["document"]["module_id"].startswith("i-")
    assert len(result["document"]["pcrs"]) == 16


def test_base64_hex_and_stdin_inputs(
    capsys: pytest.CaptureFixture[str],
    real_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = (real_dir / SIGNAL).read_bytes()
    b64 = tmp_path / "attestation-document.dat"
    b64.write_text(base64.b64encode(raw).decode() + "\n")
    hexfile = tmp_path / "doc.hex"
    hexfile.write_text(raw.hex())
    urlsafe = tmp_path / "doc.b64"
    urlsafe.write_text(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    rc, out, _ = run(capsys, "verify", str(b64), str(hexfile), str(urlsafe), "--at", "document")
    assert rc == 0, out
    assert out.count("VERIFIED") == 3
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    rc, out, _ = run(capsys, "verify", "-", "--at", "document")
    assert rc == 0 and "<stdin>: VERIFIED" in out


def test_directory_of_documents(capsys: pytest.CaptureFixture[str], real_dir: Path) -> None:
    rc, out, _ = run(capsys, "verify", str(real_dir), "--at", "document", "--allow-debug", "--json")
    results = [json.loads(line) for line in out.splitlines()]  # JSON Lines, one per document
    assert rc == 0
    assert len(results) == len(list(real_dir.glob("*.cbor"))) and all(
        r["verified"] for r in results
    )
    rc, out, _ = run(capsys, "verify", str(real_dir / "negative"), "--at", "document")
    assert rc == 1 and "VERIFIED" not in out


def test_inspect(
    capsys: pytest.CaptureFixture[str], real_dir: Path, index_entry: dict[str, Any]
) -> None:
    rc, out, _ = run(capsys, "inspect", str(real_dir / SIGNAL), "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["pcrs"] == index_entry["pcrs"] and doc["user_data"] == index_entry["user_data"]
    rc, out, _ = run(capsys, "inspect", str(real_dir / SIGNAL))
    assert rc == 0 and "module_id:   " + index_entry["module_id"] in out
    assert "cabundle[3]" in out


def test_custom_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    chain = cf.chain()
    doc, root = tmp_path / "doc.cbor", tmp_path / "root.pem"
    doc.write_bytes(chain.document())
    root.write_bytes(chain.root_pem)
    at = cf.T0.isoformat()
    assert run(capsys, "verify", str(doc), "--root", str(root), "--at", at)[0] == 0
    rc, out, _ = run(capsys, "verify", str(doc), "--at", at)
    assert rc == 1 and "not the trusted root" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["verify", "/no/such/file"], 2, "no such file"),
        (["verify", "{empty}"], 2, "file is empty"),
        (["verify", "{garbage}"], 1, "neither a raw COSE_Sign1"),
        (["verify", "{text}"], 1, "neither base64 nor hex"),
        (["verify", "{doc}", "--nonce", "xyz"], 2, "--nonce: not valid hex"),
        (["verify", "{doc}", "--nonce", ""], 2, "empty value"),
        (["verify", "{doc}", "--pcr", "0"], 2, "expected N=HEX"),
        (["verify", "{doc}", "--pcr", "40=" + "00" * 48], 2, "outside 0..31"),
        (["verify", "{doc}", "--expected", "{empty}"], 2, "empty file"),
        (["verify", "{doc}", "--expected", "/no/such.json"], 2, "cannot read"),
        (["verify", "{doc}", "--root", "{garbage}"], 2, "--root"),
        (["verify", "{doc}", "--at", "yesterday"], 2, "--at"),
        (["verify", "{doc}", "--max-age", "-3"], 2, "max_age"),
        (["verify", "{doc}", "--bogus"], 2, "unrecognized arguments"),
        (["verify"], 2, "required"),
        (["inspect", "{garbage}"], 1, "malformed"),
        (["inspect", "/no/such/file"], 2, "no such file"),
    ],
)
def test_bad_input_one_line_no_traceback(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    real_dir: Path,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    files = {
        "{empty}": tmp_path / "empty.cbor",
        "{garbage}": tmp_path / "garbage.bin",
        "{text}": tmp_path / "text.txt",
        "{doc}": real_dir / SIGNAL,
    }
    files["{empty}"].write_bytes(b"")
    files["{garbage}"].write_bytes(bytes(range(1, 200)))
    files["{text}"].write_text("hello, world!")
    rc, out, err = run(capsys, *[str(files.get(a, a)) for a in argv])
    assert rc == code, (out, err)
    assert message in out + err
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) <= 1
