"""Verifier.verify runs its checks written out (not a loop over _STEPS): the same checks, in
_STEPS' order, with the same results evaluate reports, and the first failure in that order is
the one raised."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nitro_attest.attestation.verifier import _STEPS, Verifier
from nitro_attest.errors import (
    CallerKeysError,
    Check,
    DebugModeError,
    DocumentKindError,
    NonceMismatchError,
    PcrMismatchError,
    PublicKeyMismatchError,
    UserDataMismatchError,
)

from .paths import REAL

INDEX = json.loads((REAL / "index.json").read_text())["positive"]
ORDER = [Check.FORMAT, *(name for name, _ in _STEPS)]


def _read(entry: dict[str, Any]) -> bytes:
    return (REAL / entry["file"]).read_bytes()


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: e["file"])
def test_verify_runs_every_step_in_order_with_evaluates_results(entry: dict[str, Any]) -> None:
    data = _read(entry)
    verifier = Verifier()
    expectations: dict[str, Any] = {"allow_debug": bool(entry["debug"])}
    if entry["nonce"]:  # null or empty in some: then not expected
        expectations["nonce"] = bytes.fromhex(entry["nonce"])
    pcr0 = bytes.fromhex(entry["pcrs"]["0"])
    for more in ({}, {"expected_pcrs": {0: pcr0}}, {"refuse_caller_keys": True}):
        try:
            verified = verifier.verify(data, at="document", **expectations, **more)
        except CallerKeysError:
            assert more == {"refuse_caller_keys": True}  # real enclaves do not lock PCR16
            continue
        assert [c.name for c in verified.checks] == ORDER
        report = verifier.evaluate(data, at="document", **expectations, **more)
        assert report.verified
        assert verified.checks == report.checks


def test_the_first_failure_in_order_is_the_one_raised() -> None:
    debug = next(e for e in INDEX if e["debug"])
    data = _read(debug)
    wrong = b"\x01" * 32
    everything_wrong = {
        "expected_pcrs": {1: b"\x02" * 48},
        "user_data": wrong,
        "nonce": wrong,
        "public_key": wrong,
        "refuse_caller_keys": True,
    }
    verifier = Verifier()
    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"kind": "nitrotpm"}, DocumentKindError),  # before debug
        ({}, DebugModeError),  # before the PCRs
        ({"allow_debug": True}, PcrMismatchError),
        ({"allow_debug": True, "expected_pcrs": None}, UserDataMismatchError),
        ({"allow_debug": True, "expected_pcrs": None, "user_data": None}, NonceMismatchError),
        (
            {"allow_debug": True, "expected_pcrs": None, "user_data": None, "nonce": None},
            PublicKeyMismatchError,
        ),
        (
            {
                "allow_debug": True,
                "expected_pcrs": None,
                "user_data": None,
                "nonce": None,
                "public_key": None,
            },
            CallerKeysError,
        ),
    ]
    for changes, error in cases:
        expectations = {**everything_wrong, **changes}
        with pytest.raises(error):
            verifier.verify(data, at="document", **expectations)
