"""Writer round trips, signing with each curve, and signature / certificate failures."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest.eif import EifError, inspect_eif, measurements_from_eif
from nitro_attest.eif.writer import write_eif

from .eif_helpers import (
    cert_pcr8,
    crc_of,
    formula_pcrs,
    make_signer,
    parse,
    replace_last_section,
    write,
)

KERNEL = os.urandom(3000)
CMDLINE = b"console=ttyS0 reboot=k"
RAMDISKS = [os.urandom(1500), os.urandom(2222), os.urandom(17)]


def _build(path: Path, **kwargs: object) -> dict[str, str]:
    return write_eif(path, kernel=KERNEL, cmdline=CMDLINE, ramdisks=RAMDISKS, **kwargs)  # type: ignore[arg-type]


def test_unsigned_round_trip_matches_the_formula(tmp_path: Path) -> None:
    out = tmp_path / "a.eif"
    returned = _build(out)
    blob = out.read_bytes()
    fields, sections = parse(blob)
    assert [t for t, _, _ in sections] == [1, 2, 5, 3, 3, 3]
    assert fields[1] == 4 and crc_of(blob) == fields[-1]
    info = inspect_eif(out)
    assert info.pcrs_hex() == formula_pcrs(blob) == returned
    assert info.crc_ok and not info.signed and info.signature_ok is None
    assert info.metadata is not None and info.metadata["ImageName"] == "nitro-attest"


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_signed_round_trip_verifies(curve: ec.EllipticCurve, tmp_path: Path) -> None:
    key_pem, cert_pem = make_signer(curve)
    out = tmp_path / "s.eif"
    returned = _build(out, signing_key_pem=key_pem, signing_certificate_pem=cert_pem)
    blob = out.read_bytes()
    want = formula_pcrs(blob) | {"PCR8": cert_pcr8(cert_pem)}
    info = inspect_eif(out)
    assert info.pcrs_hex() == want == returned
    assert info.signed and info.signature_ok is True and info.crc_ok
    assert info.problems() == []
    # The signature entry is CBOR arrays of uints, not byte strings.
    _, sections = parse(blob)
    _, off, size = sections[-1]
    (entry,) = cbor2.loads(blob[off + 12 : off + 12 + size])
    assert isinstance(entry["signature"], list) and isinstance(entry["signing_certificate"], list)
    assert bytes(entry["signing_certificate"]) == cert_pem


def _signature_entry(blob: bytes) -> dict[str, list[int]]:
    _, sections = parse(blob)
    _, off, size = sections[-1]
    (entry,) = cbor2.loads(blob[off + 12 : off + 12 + size])
    return dict(entry)


def test_tampered_signature_fails(tmp_path: Path) -> None:
    key_pem, cert_pem = make_signer(ec.SECP384R1())
    good = tmp_path / "good.eif"
    _build(good, signing_key_pem=key_pem, signing_certificate_pem=cert_pem)
    blob = good.read_bytes()
    entry = _signature_entry(blob)
    protected, unprotected, payload, sig = cbor2.loads(bytes(entry["signature"]))
    bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
    entry["signature"] = list(cbor2.dumps([protected, unprotected, payload, bad_sig]))
    bad = write(tmp_path / "bad.eif", replace_last_section(blob, cbor2.dumps([entry])))
    info = inspect_eif(bad)
    assert info.crc_ok  # the CRC was fixed: only the signature is wrong
    assert info.signature_ok is False
    assert any("signature check failed" in p for p in info.problems())
    with pytest.raises(EifError, match="signature"):
        measurements_from_eif(bad)


def test_valid_signature_over_another_pcr0_fails(tmp_path: Path) -> None:
    """A correct COSE signature whose payload is not this file's PCR0 must not pass."""
    key_pem, cert_pem = make_signer(ec.SECP384R1())
    other = tmp_path / "other.eif"
    write_eif(
        other,
        kernel=b"another kernel",
        cmdline=CMDLINE,
        ramdisks=[b"x"],
        signing_key_pem=key_pem,
        signing_certificate_pem=cert_pem,
    )
    mine = tmp_path / "mine.eif"
    _build(mine, signing_key_pem=key_pem, signing_certificate_pem=cert_pem)
    foreign = _signature_entry(other.read_bytes())
    spliced = write(
        tmp_path / "spliced.eif", replace_last_section(mine.read_bytes(), cbor2.dumps([foreign]))
    )
    assert inspect_eif(other).signature_ok is True
    assert inspect_eif(spliced).signature_ok is False


def test_signature_by_another_key_fails(tmp_path: Path) -> None:
    key_pem, cert_pem = make_signer(ec.SECP384R1())
    _, other_cert = make_signer(ec.SECP384R1())
    out = tmp_path / "s.eif"
    _build(out, signing_key_pem=key_pem, signing_certificate_pem=cert_pem)
    blob = out.read_bytes()
    entry = _signature_entry(blob)
    entry["signing_certificate"] = list(other_cert)
    swapped = write(tmp_path / "swapped.eif", replace_last_section(blob, cbor2.dumps([entry])))
    info = inspect_eif(swapped)
    assert info.signature_ok is False
    assert info.pcrs_hex()["PCR8"] == cert_pcr8(other_cert)


def test_certificate_validity_is_checked_at_the_given_time(tmp_path: Path) -> None:
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    key_pem, cert_pem = make_signer(ec.SECP384R1(), not_before=start, not_after=end)
    out = tmp_path / "s.eif"
    _build(out, signing_key_pem=key_pem, signing_certificate_pem=cert_pem)
    inside = inspect_eif(out, at=dt.datetime(2030, 6, 1, tzinfo=dt.UTC))
    assert inside.signature_ok is True and inside.validity_problem is None
    early = inspect_eif(out, at=dt.datetime(2029, 12, 31, tzinfo=dt.UTC))
    assert early.validity_problem and "not valid before 2030-01-01" in early.validity_problem
    late = inspect_eif(out, at=dt.datetime(2031, 1, 2, tzinfo=dt.UTC))
    assert late.validity_problem and "expired at 2031-01-01" in late.validity_problem
    assert late.signature_ok is True  # the signature itself is still good
    assert late.problems() == [late.validity_problem]


def test_writer_refuses_mismatched_key_and_certificate(tmp_path: Path) -> None:
    key_pem, _ = make_signer(ec.SECP384R1())
    _, cert_pem = make_signer(ec.SECP384R1())
    with pytest.raises(EifError, match="does not match"):
        _build(tmp_path / "x.eif", signing_key_pem=key_pem, signing_certificate_pem=cert_pem)
    with pytest.raises(EifError, match="both"):
        _build(tmp_path / "y.eif", signing_key_pem=key_pem)


def test_writer_streams_paths(tmp_path: Path) -> None:
    rd = write(tmp_path / "rd.bin", os.urandom(3 * (1 << 20) + 5))
    out = tmp_path / "big.eif"
    pcrs = write_eif(out, kernel=KERNEL, cmdline=CMDLINE, ramdisks=[b"init", rd])
    assert pcrs == formula_pcrs(out.read_bytes()) == inspect_eif(out, chunk_size=4096).pcrs_hex()
