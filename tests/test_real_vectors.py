"""Every real document verifies at its own time with its own expectations; every negative fails."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nitro_attest import (
    DebugModeError,
    ExpiredError,
    MalformedDocumentError,
    SignatureError,
    Verifier,
    parse_document,
)
from nitro_attest.attestation.report import document_to_json

from .paths import REAL

_INDEX = REAL / "index.json"
if _INDEX.exists():
    import json

    INDEX: dict[str, Any] = json.loads(_INDEX.read_text())
else:  # pragma: no cover - vectors absent: the fixtures skip with a reason
    INDEX = {"positive": [], "negative": []}
POSITIVE = INDEX["positive"]
NEGATIVE_CLASSES = {
    "veraison_20221109_bad_sig_last_byte.cbor": SignatureError,
    "derived_worldcoin_sig_last_bit_flipped.cbor": SignatureError,
    "derived_worldcoin_pcr0_bit_flipped.cbor": SignatureError,
    "derived_worldcoin_trailing_f6f6f6.cbor": MalformedDocumentError,
    "blocky_selfsigned_attestation.cbor": MalformedDocumentError,
}
VERIFIER = Verifier()


def _opt(value: str | None) -> bytes | None:
    # An empty field is checked separately below: an empty expectation is refused by design.
    return bytes.fromhex(value) if value else None


def _expectations(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "expected_pcrs": {int(k): v for k, v in entry["pcrs"].items()},
        "nonce": _opt(entry["nonce"]),
        "user_data": _opt(entry["user_data"]),
        "public_key": _opt(entry["public_key"]),
        "allow_debug": entry["debug"],
    }


def _data(real_dir: Path, entry: dict[str, Any]) -> bytes:
    return (real_dir / entry["file"]).read_bytes()


@pytest.mark.parametrize("entry", POSITIVE, ids=lambda e: e["file"])
def test_positive_verifies_at_its_timestamp(real_dir: Path, entry: dict[str, Any]) -> None:
    verified = VERIFIER.verify(_data(real_dir, entry), at="document", **_expectations(entry))
    doc = verified.document
    assert doc.timestamp_ms == entry["timestamp_ms"]
    assert doc.module_id == entry["module_id"]
    assert doc.is_debug is entry["debug"]
    for name in ("nonce", "user_data", "public_key"):
        value = getattr(doc, name)
        assert (value.hex() if value is not None else None) == entry[name]
    assert all(c.ok is not False for c in verified.checks)
    unchecked = {c.name for c in verified.checks if c.ok is None}
    assert unchecked == {"freshness", "caller_keys"} | {  # caller_keys: asked by senders only
        n for n in ("nonce", "user_data", "public_key") if not entry[n]
    }


@pytest.mark.parametrize("entry", POSITIVE, ids=lambda e: e["file"])
def test_positive_json_matches_index(real_dir: Path, entry: dict[str, Any]) -> None:
    out = document_to_json(parse_document(_data(real_dir, entry)))
    assert out[entry["pcr_key"]] == entry["pcrs"]
    assert out["timestamp"] == entry["timestamp_ms"]
    assert out["debug_mode"] is entry["debug"]
    assert out["cose"]["tagged"] is False


@pytest.mark.parametrize("entry", POSITIVE, ids=lambda e: e["file"])
@pytest.mark.parametrize("edge", ["after", "before"])
def test_positive_rejected_outside_chain_window(
    real_dir: Path, entry: dict[str, Any], edge: str
) -> None:
    if edge == "after":
        at = datetime.fromisoformat(entry["chain_not_after"]) + timedelta(seconds=1)
    else:
        at = datetime.fromisoformat(entry["chain_not_before"]) - timedelta(seconds=1)
    with pytest.raises(ExpiredError, match="not valid at"):
        VERIFIER.verify(_data(real_dir, entry), at=at, **_expectations(entry))


@pytest.mark.parametrize("entry", POSITIVE, ids=lambda e: e["file"])
def test_positive_at_window_edges_verifies(real_dir: Path, entry: dict[str, Any]) -> None:
    for stamp in (entry["chain_not_before"], entry["chain_not_after"]):
        verified = VERIFIER.verify(
            _data(real_dir, entry), at=datetime.fromisoformat(stamp), **_expectations(entry)
        )
        assert verified.verified_at == datetime.fromisoformat(stamp)
        assert [c.ok for c in verified.checks if c.name == "certificate_chain"] == [True]


@pytest.mark.parametrize("entry", [e for e in POSITIVE if e["debug"]], ids=lambda e: e["file"])
def test_debug_documents_need_the_flag(real_dir: Path, entry: dict[str, Any]) -> None:
    expectations = _expectations(entry) | {"allow_debug": False}
    with pytest.raises(DebugModeError, match="debug-mode enclave"):
        VERIFIER.verify(_data(real_dir, entry), at="document", **expectations)


def test_every_real_document_is_expired_now(real_dir: Path) -> None:
    for entry in POSITIVE:
        with pytest.raises(ExpiredError):
            VERIFIER.verify(_data(real_dir, entry), allow_debug=True)


def test_negatives_are_rejected_with_the_right_class(real_dir: Path) -> None:
    files = sorted(p.name for p in (real_dir / "negative").glob("*.cbor"))
    assert files == sorted(NEGATIVE_CLASSES), "a new negative vector needs its expected class"
    for name, error in NEGATIVE_CLASSES.items():
        data = (real_dir / "negative" / name).read_bytes()
        with pytest.raises(error) as info:
            VERIFIER.verify(data, at="document", allow_debug=True)
        assert type(info.value) is error, f"{name}: {info.value!r}"


def test_trailing_bytes_named_in_the_error(real_dir: Path) -> None:
    data = (real_dir / "negative" / "derived_worldcoin_trailing_f6f6f6.cbor").read_bytes()
    with pytest.raises(MalformedDocumentError, match="3 trailing byte"):
        parse_document(data)


def test_indefinite_map_document_is_signed_as_sent(real_dir: Path) -> None:
    entry = next(e for e in POSITIVE if e["indefinite_payload_map"])
    doc = VERIFIER.verify(_data(real_dir, entry), at="document").document
    assert doc.payload[:1] == b"\xbf"


def test_tag_18_form_verifies(real_dir: Path) -> None:
    entry = POSITIVE[0] if POSITIVE else pytest.skip("no vectors")
    tagged = b"\xd2" + _data(real_dir, entry)
    result = VERIFIER.verify(tagged, at="document", **_expectations(entry))
    assert result.document.tagged


def test_pinned_root_matches_the_vectors_root(real_dir: Path) -> None:
    from nitro_attest.attestation.chain import (
        AWS_ROOT_G1_SHA256,
        aws_root_der,
        fingerprint,
        root_der_from_pem,
    )

    shared = root_der_from_pem((real_dir / "aws_nitro_root_g1.pem").read_bytes())
    assert shared == aws_root_der()
    assert fingerprint(shared) == AWS_ROOT_G1_SHA256
