"""No report vouches for a payload its signature and chain did not authenticate.

Threat model (docs/threat-model.md): the parent can hand the client any bytes as "the document".
After a failed signature or chain check the payload is whatever the parent wrote, so every check
that reads it is "not run" (➖, ``ok`` null in JSON), never ✅, in `verify`, `verify --json`,
`attest`, `send-secret` and ``Verifier.evaluate``. The documents are real AWS ones whose
payload matches every expectation given, so a check that ran on it would pass.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from nitro_attest import Verifier
from nitro_attest._cli import main
from nitro_attest.attestation.verifier import NOT_AUTHENTICATED

from . import chainfactory as cf
from .hostile_parent import parent_serving

VECTOR = "nitriding_20220804_nonce_userdata_pubkey.cbor"
PAYLOAD_CHECKS = {
    "document_kind": "Document Kind",
    "debug_mode": "Debug Mode",
    "pcrs": "PCR Values",
    "user_data": "User Data",
    "nonce": "Nonce",
    "public_key": "Public Key",
    "freshness": "Freshness",
}


@pytest.fixture(scope="module")
def entry(real_index: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(e for e in real_index["positive"] if e["file"] == VECTOR)
    return found


@pytest.fixture(scope="module")
def genuine(real_dir: Path) -> bytes:
    return (real_dir / VECTOR).read_bytes()


def flip_signature_bit(doc: bytes) -> bytes:
    # The signature is the COSE array's last item: the document's last byte is its last byte.
    return doc[:-1] + bytes([doc[-1] ^ 0x01])


def signed_at(entry: dict[str, Any]) -> str:
    """A time inside the leaf's 3 hours, so the genuine chain verifies."""
    when = dt.datetime.fromisoformat(entry["timestamp"]) + dt.timedelta(minutes=1)
    return when.isoformat()


def expectation_flags(entry: dict[str, Any]) -> list[str]:
    flags = [f"--pcr={i}={entry['pcrs'][str(i)]}" for i in (0, 1, 2)]
    for name in ("nonce", "user_data", "public_key"):
        flags.append(f"--{name.replace('_', '-')}={entry[name]}")
    return flags


def expectations(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "expected_pcrs": {i: bytes.fromhex(entry["pcrs"][str(i)]) for i in (0, 1, 2)},
        "nonce": bytes.fromhex(entry["nonce"]),
        "user_data": bytes.fromhex(entry["user_data"]),
        "public_key": bytes.fromhex(entry["public_key"]),
    }


def assert_text_not_run(out: str, module_id: str) -> None:
    for label in PAYLOAD_CHECKS.values():
        assert f"✅ {label}" not in out, out
        assert f"➖ {label}: {NOT_AUTHENTICATED}" in out, out
    assert "VERIFIED" not in out.replace("REJECTED", "")
    # What the payload claims is shown, but marked unauthenticated and never beside a ✅.
    claims = [line for line in out.splitlines() if module_id in line]
    assert any(line.lstrip().startswith("⚠ UNAUTHENTICATED claims") for line in claims), out
    assert not any(line.lstrip().startswith("✅") for line in claims), claims


def assert_json_not_run(report: dict[str, Any]) -> None:
    checks = {c["name"]: c for c in report["checks"]}
    assert set(PAYLOAD_CHECKS) <= set(checks)
    for name in PAYLOAD_CHECKS:
        assert checks[name]["ok"] is None, checks[name]
        assert checks[name]["detail"] == NOT_AUTHENTICATED
    assert report["verified"] is False and report["document"] is None
    assert report["error"]["check"] in ("cose_signature", "certificate_chain")
    assert set(report) >= {"verified", "checks", "document", "error"}


CASES = {
    # name: (tamper the signature?, extra flags, expected signature ok, expected chain ok)
    "flipped-signature": (True, ["--at", "SIGNED"], False, True),
    "flipped-signature-at-document": (True, ["--at", "document"], False, None),
    "chain-to-another-root": (False, ["--at", "SIGNED", "--root", "OTHER"], True, False),
    "chain-expired": (False, ["--max-age", "600"], True, False),
    "flipped-signature-and-expired": (True, ["--max-age", "600"], False, False),
}


@pytest.mark.parametrize("case", CASES)
def test_verify_reports_payload_checks_not_run(
    case: str,
    entry: dict[str, Any],
    genuine: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flip, extra, sig_ok, chain_ok = CASES[case]
    doc = tmp_path / "doc.cbor"
    doc.write_bytes(flip_signature_bit(genuine) if flip else genuine)
    other = tmp_path / "other-root.pem"
    other.write_bytes(cf.chain().root_pem)
    extra = [
        {"SIGNED": signed_at(entry), "OTHER": str(other)}.get(arg, arg) for arg in extra
    ]
    argv = ["verify", str(doc), *expectation_flags(entry), *extra]

    assert main(argv) == 1
    out = capsys.readouterr().out
    assert_text_not_run(out, entry["module_id"])

    assert main([*argv, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert_json_not_run(report)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["format"]["ok"] is True and entry["module_id"] not in checks["format"]["detail"]
    assert checks["cose_signature"]["ok"] is sig_ok
    assert checks["certificate_chain"]["ok"] is chain_ok


def test_genuine_document_passes_the_same_checks(
    entry: dict[str, Any], genuine: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: unaltered, the same document and expectations give ✅ for every check."""
    doc = tmp_path / "doc.cbor"
    doc.write_bytes(genuine)
    argv = ["verify", str(doc), *expectation_flags(entry), "--at", signed_at(entry)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name, label in PAYLOAD_CHECKS.items():
        assert (f"➖ {label}" if name == "freshness" else f"✅ {label}") in out, out
    assert "UNAUTHENTICATED" not in out


@pytest.mark.parametrize("flip", [True, False])
def test_evaluate_never_passes_an_unauthenticated_payload(
    flip: bool, entry: dict[str, Any], genuine: bytes
) -> None:
    signed = dt.datetime.fromisoformat(signed_at(entry))
    verifier = Verifier() if flip else Verifier(root_pem=cf.chain().root_pem)
    document = flip_signature_bit(genuine) if flip else genuine
    report = verifier.evaluate(document, at=signed, max_age=600, **expectations(entry))
    assert_json_not_run(report.to_json())
    assert report.document is None and report.claimed is not None
    assert report.claimed.module_id == entry["module_id"]
    # Control: the genuine document at that time passes every one of them, freshness included.
    good = Verifier().evaluate(genuine, at=signed, max_age=600, **expectations(entry))
    asked = [c for c in good.checks if c.name != "caller_keys"]  # not asked of a third party's
    assert good.verified and all(c.ok for c in asked), good.checks


@pytest.mark.parametrize("flip", [True, False])
def test_attest_reports_payload_checks_not_run(
    flip: bool,
    entry: dict[str, Any],
    genuine: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The parent answers attest with a real document (altered or not, expired today)."""
    document = flip_signature_bit(genuine) if flip else genuine
    with parent_serving(f"unix://{tmp_path}/p.sock", document) as parent:
        argv = ["attest", "--connect", parent.address, "--out-dir", str(tmp_path / "out"),
                *[f for f in expectation_flags(entry) if not f.startswith("--public-key")]]
        assert main(argv) == 1
        out = capsys.readouterr().out
        for label in PAYLOAD_CHECKS.values():
            assert f"✅ {label}" not in out
            assert f"➖ {label}: {NOT_AUTHENTICATED}" in out
        assert main([*argv, "--json"]) == 1
        report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    for name in PAYLOAD_CHECKS:
        assert checks[name]["ok"] is None and checks[name]["detail"] == NOT_AUTHENTICATED
    assert report["document"] is None
    # The decode attest saves beside the raw bytes says so too (docs/threat-model.md: a file a
    # later step reads must not pass the parent's payload off as the enclave's).
    saved = json.loads((tmp_path / "out" / "attestation-document-json.json").read_text())
    assert saved["authenticated"] is False and saved["module_id"] == entry["module_id"]


@pytest.mark.parametrize("flip", [True, False])
def test_send_secret_refuses_and_prints_no_pass(
    flip: bool, genuine: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = flip_signature_bit(genuine) if flip else genuine
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the parent")
    with parent_serving(f"unix://{tmp_path}/p.sock", document) as parent:
        rc = main(["send-secret", "--connect", parent.address, "--file", str(secret),
                   "--unsafe-any-enclave"])
    out = capsys.readouterr().out
    assert rc == 1
    check = "cose_signature" if flip else "certificate_chain"
    assert out.startswith(f"REFUSED (nothing sent): {check}: ")
    assert "✅" not in out and "DELIVERED" not in out
    assert parent.seen == ["channel_attest"]
