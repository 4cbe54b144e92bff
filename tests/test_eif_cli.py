"""`nitro-attest eif describe|measure` and `nitro-attest pcr` output shapes and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest._cli import main
from nitro_attest.eif.writer import write_eif

from .eif_helpers import cert_pcr8, formula_pcr, make_signer

V4_PCR8 = (
    "ef692aa8e9d9f7c039f42b8ae78111c5747e43df"
    "6d26020ebd4190cc4990c8042d16ae69ee856e0e371530d720440b13"
)


def test_describe_json_matches_nitro_cli_shape(
    eif_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = ["--at", "2030-01-01T00:00:00Z"]  # inside the vector certificate's validity, any clock
    assert main(["eif", "describe", "--json", *at, str(eif_dir / "v4_signed_2rd.eif")]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert out.startswith('{\n  "EifVersion": 4,\n  "Measurements": {\n    "HashAlgorithm"')
    assert list(doc) == [
        "EifVersion",
        "Measurements",
        "IsSigned",
        "SigningCertificate",
        "CheckCRC",
        "SignatureCheck",
        "ImageName",
        "ImageVersion",
        "Metadata",
    ]
    assert list(doc["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2", "PCR8"]
    assert doc["Measurements"]["HashAlgorithm"] == "Sha384 { ... }"
    assert doc["Measurements"]["PCR8"] == V4_PCR8
    assert doc["IsSigned"] is True and doc["CheckCRC"] is True and doc["SignatureCheck"] is True
    cert = doc["SigningCertificate"]
    assert cert["IssuerName"] == {
        "commonName": "eif-vector-signer",
        "countryName": "US",
        "organizationName": "EIF Test Vectors",
    }
    assert cert["Algorithm"] == "ecdsa-with-SHA384"
    assert cert["NotBefore"] == "Nov 27 06:24:45 2026 GMT"
    assert cert["NotAfter"] == "Nov  3 06:24:45 2126 GMT"
    assert cert["Signature"].startswith("30:65:02:30:") and cert["Signature"].isupper()
    assert doc["ImageName"] == "vector" and doc["ImageVersion"] == "1.0"
    assert doc["Metadata"]["BuildTool"] == "eif_build" and doc["Metadata"]["DockerInfo"] is None


def test_describe_unsigned_has_no_signature_keys(
    eif_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eif", "describe", "--json", str(eif_dir / "v1_unsigned_2rd.eif")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["IsSigned"] is False
    assert "SignatureCheck" not in doc and "SigningCertificate" not in doc
    assert "PCR8" not in doc["Measurements"]


def test_describe_text(eif_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(eif_dir / "v7_signed_crlfpem_3rd.eif")
    assert main(["eif", "describe", "--at", "2030-01-01T00:00:00Z", path]) == 0
    out = capsys.readouterr().out
    assert (
        f"PCR8  {V4_PCR8}" in out and "Signature check: ok" in out and "CRC32:           ok" in out
    )


def test_describe_flags_certificate_outside_validity(
    eif_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(eif_dir / "v4_signed_2rd.eif")
    assert main(["eif", "describe", "--json", "--at", "2026-01-01T00:00:00Z", path]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["SignatureCheck"] is True
    assert "signing certificate is not valid before 2026-11-27" in err
    assert main(["eif", "describe", "--at", "2127-01-01T00:00:00Z", path]) == 1
    assert "expired at 2126-11-03" in capsys.readouterr().err
    assert main(["eif", "describe", "--at", "2100-01-01T00:00:00Z", path]) == 0
    assert "Signature check: ok" in capsys.readouterr().out
    assert main(["eif", "describe", "--at", "yesterday", path]) == 2
    assert "--at" in capsys.readouterr().err


def test_measure_prints_and_writes_expected(
    eif_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = json.loads((eif_dir / "expected.json").read_text())["vectors"][3]
    target = tmp_path / "expected-measurements.json"
    rc = main(["eif", "measure", str(eif_dir / expected["file"]), "--write-expected", str(target)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(target.read_text())
    assert printed == {
        "Measurements": {"HashAlgorithm": "Sha384 { ... }", **expected["measurements"]}
    }


def test_missing_and_unreadable_inputs_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["eif", "describe", str(tmp_path / "nope.eif")],
        ["eif", "measure", str(tmp_path)],
        ["pcr", "--input", str(tmp_path / "nope")],
        ["pcr", "--signing-certificate", str(tmp_path / "nope.pem")],
        ["pcr"],
        ["eif"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.strip() and "Traceback" not in err


def test_pcr_input_and_certificate(
    eif_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "blob"
    data.write_bytes(b"hello enclave" * 100000)
    assert main(["pcr", "--input", str(data)]) == 0
    assert json.loads(capsys.readouterr().out) == {"PCR": formula_pcr(data.read_bytes())}
    for pem in ("signing_cert.pem", "signing_cert_crlf.pem"):
        assert main(["pcr", "--signing-certificate", str(eif_dir / "inputs" / pem)]) == 0
        assert json.loads(capsys.readouterr().out) == {"PCR8": V4_PCR8}
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert main(["pcr", "--signing-certificate", str(junk)]) == 2
    assert "not a PEM certificate" in capsys.readouterr().err


def test_measure_of_a_signed_writer_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_pem, cert_pem = make_signer(ec.SECP256R1())
    path = tmp_path / "s.eif"
    pcrs = write_eif(
        path,
        kernel=b"k",
        cmdline="c",
        ramdisks=[b"r"],
        signing_key_pem=key_pem,
        signing_certificate_pem=cert_pem,
    )
    assert main(["eif", "measure", str(path)]) == 0
    got = json.loads(capsys.readouterr().out)["Measurements"]
    assert got["PCR8"] == cert_pcr8(cert_pem) == pcrs["PCR8"]


def test_written_expectation_is_accepted_by_the_verifier_policy(
    eif_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nitro_attest.attestation.policy import load_expected_measurements

    target = tmp_path / "expected.json"
    path = eif_dir / "v4_signed_2rd.eif"
    assert main(["eif", "measure", str(path), "--write-expected", str(target)]) == 0
    capsys.readouterr()
    (pcr_set,) = load_expected_measurements(target)
    got = {f"PCR{i}": v.hex() for i, v in pcr_set.items()}
    assert got == json.loads((eif_dir / "expected.json").read_text())["vectors"][3]["measurements"]


@pytest.mark.parametrize(
    ("exc", "what", "line"),
    [
        (FileNotFoundError(2, "No such file or directory"), "", "f: no such file"),
        (PermissionError(13, "Permission denied"), "", "f: permission denied"),
        (OSError(5, "Input/output error"), "", "f: cannot read: Input/output error"),
        (OSError(5, "Input/output error"), "key", "f: cannot read key: Input/output error"),
    ],
)
def test_every_command_says_the_same_line_for_a_file_it_cannot_read(
    exc: OSError, what: str, line: str
) -> None:
    # One mapping for read_bytes, eif describe/measure and pcr --input (root ignores file
    # modes, so an unreadable file cannot be made here to drive the commands themselves).
    from nitro_attest._cli.common import file_error

    assert file_error("f", exc, what).message == line
