"""Policy: each expectation's mismatch has its own class; bad expectations fail closed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from nitro_attest import (
    DebugModeError,
    NonceMismatchError,
    PcrMismatchError,
    Policy,
    PolicyError,
    PublicKeyMismatchError,
    StaleDocumentError,
    UserDataMismatchError,
    Verifier,
)
from nitro_attest.attestation.policy import load_expected_measurements, parse_expected_measurements

from . import chainfactory as cf

CHAIN = cf.chain()
VERIFIER = Verifier(root_pem=CHAIN.root_pem)
PCR0 = bytes([1]) * 48
DOC = CHAIN.document(nonce=b"n" * 32, user_data=b"hello", public_key=b"k" * 65)


def check(**kw: Any) -> set[str]:
    """Verify DOC against ``kw``; the names of the checks that ran and passed."""
    verified = VERIFIER.verify(DOC, at=kw.pop("at", cf.T0), **kw)
    return {c.name for c in verified.checks if c.ok}


def test_all_expectations_met() -> None:
    passed = check(
        expected_pcrs={0: PCR0},
        nonce=b"n" * 32,
        user_data=b"hello",
        public_key=b"k" * 65,
        max_age=60,
    )
    assert passed >= {"pcrs", "nonce", "user_data", "public_key", "freshness"}


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"expected_pcrs": {0: bytes(48)}}, PcrMismatchError, "PCR0: got 0101"),
        ({"expected_pcrs": {20: bytes(48)}}, PcrMismatchError, "PCR20: absent"),
        ({"expected_pcrs": {0: PCR0, 1: bytes(48)}}, PcrMismatchError, "PCR1: got"),
        ({"expected_pcrs": {0: PCR0[:32]}}, PcrMismatchError, "PCR0: got"),
        ({"nonce": b"m" * 32}, NonceMismatchError, "nonce: got 6e6e"),
        ({"user_data": b"hellO"}, UserDataMismatchError, "expected 68656c6c4f"),
        ({"public_key": b"k" * 64}, PublicKeyMismatchError, "public_key"),
    ],
)
def test_each_mismatch_has_its_class(
    kw: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        check(**kw)


def test_expected_field_absent_from_document() -> None:
    doc = CHAIN.document()
    for field, error in (
        ("nonce", NonceMismatchError),
        ("user_data", UserDataMismatchError),
        ("public_key", PublicKeyMismatchError),
    ):
        with pytest.raises(error, match="carries none"):
            VERIFIER.verify(doc, at=cf.T0, **{field: b"x"})


def test_pcr_mismatch_lists_expected_and_got_per_index() -> None:
    report = VERIFIER.evaluate(DOC, at=cf.T0, expected_pcrs={0: bytes(48), 2: bytes(48)})
    pcr = next(c for c in report.checks if c.name == "pcrs")
    assert pcr.ok is False
    assert f"PCR0: got {PCR0.hex()}, expected {bytes(48).hex()}" in pcr.detail
    assert "PCR2: got" in pcr.detail


def test_several_allowed_sets() -> None:
    assert "pcrs" in check(expected_pcrs=[{0: bytes(48)}, {0: PCR0}])
    with pytest.raises(PcrMismatchError, match="none of the 2 allowed sets"):
        check(expected_pcrs=[{0: bytes(48)}, {1: bytes(48)}])


def test_pcr_sets_accept_names_and_hex() -> None:
    assert "pcrs" in check(expected_pcrs={"PCR0": PCR0.hex(), "1": bytes([2]) * 48})


def test_debug_document_needs_the_flag() -> None:
    debug = CHAIN.document(pcrs={i: bytes(48) if i != 4 else b"\x04" * 48 for i in range(16)})
    with pytest.raises(DebugModeError):
        VERIFIER.verify(debug, at=cf.T0)
    assert VERIFIER.verify(debug, at=cf.T0, allow_debug=True).document.is_debug


def test_freshness() -> None:
    assert "freshness" in check(max_age=10, at=cf.T0 + dt.timedelta(seconds=65))  # + skew
    with pytest.raises(StaleDocumentError, match="old"):
        check(max_age=10, at=cf.T0 + dt.timedelta(seconds=75))
    later = CHAIN.document(timestamp=int(cf.T0.timestamp() * 1000) + 600_000)
    with pytest.raises(StaleDocumentError, match="future"):
        VERIFIER.verify(later, at=cf.T0 + dt.timedelta(seconds=600 - 61), max_age=10)
    within = VERIFIER.verify(
        DOC, at=cf.T0 + dt.timedelta(seconds=30), policy=Policy(max_age=10, clock_skew=25)
    )
    assert next(c for c in within.checks if c.name == "freshness").ok is True
    with pytest.raises(StaleDocumentError):
        VERIFIER.verify(
            DOC, at=cf.T0 + dt.timedelta(seconds=36), policy=Policy(max_age=10, clock_skew=25)
        )


@pytest.mark.parametrize(
    "kw",
    [
        {"expected_pcrs": {}},
        {"expected_pcrs": []},
        {"expected_pcrs": [{}]},
        {"expected_pcrs": {0: ""}},
        {"expected_pcrs": {0: "zz" * 48}},
        {"expected_pcrs": {0: b"\x00" * 47}},
        {"expected_pcrs": {32: PCR0}},
        {"expected_pcrs": {"PRC0": PCR0}},
        {"expected_pcrs": {True: PCR0}},
        {"nonce": b""},
        {"user_data": b""},
        {"public_key": b""},
        {"nonce": "abcd"},
        {"nonce": b"x" * 1025},
        {"max_age": 0},
        {"max_age": -1},
    ],
)
def test_bad_expectations_fail_closed(kw: dict[str, Any]) -> None:
    with pytest.raises(PolicyError):
        check(**kw)


def test_policy_and_loose_kwargs_are_exclusive() -> None:
    with pytest.raises(PolicyError, match="either"):
        VERIFIER.verify(DOC, at=cf.T0, policy=Policy(), nonce=b"x")


def test_naive_time_refused() -> None:
    with pytest.raises(PolicyError, match="timezone-aware"):
        VERIFIER.verify(DOC, at=dt.datetime(2025, 1, 1))


MEASUREMENTS = {
    "Measurements": {
        "HashAlgorithm": "Sha384 { ... }",
        "PCR0": PCR0.hex(),
        "PCR1": (bytes([2]) * 48).hex(),
        "PCR2": (bytes([3]) * 48).hex(),
    }
}


def test_nitro_cli_measurements_file(tmp_path: Path) -> None:
    path = tmp_path / "expected-measurements.json"
    path.write_text(json.dumps(MEASUREMENTS, indent=2))
    sets = load_expected_measurements(path)
    assert sets == [{0: PCR0, 1: bytes([2]) * 48, 2: bytes([3]) * 48}]
    assert "pcrs" in check(expected_pcrs=sets)


def test_measurement_list_and_bare_forms() -> None:
    bare = {"PCR0": PCR0.hex()}
    assert len(parse_expected_measurements(json.dumps([MEASUREMENTS, bare]))) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[]", "empty list"),
        ("{}", "no PCR values"),
        ('{"Measurements": {}}', "no PCR values"),
        ('{"Measurements": {"HashAlgorithm": "Sha384 { ... }"}}', "no PCR values"),
        ('{"Measurements": []}', "must be a JSON object"),
        ('{"Measurements": {"PCR0": "abc"}}', "not valid hex"),
        ('{"Measurements": {"PCR0": "00"}}', "1 bytes"),
        ('{"Measurements": {"PRC0": "' + "00" * 48 + '"}}', "unexpected key 'PRC0'"),
        ('{"Measurements": {"HashAlgorithm": "Sha256", "PCR0": "' + "00" * 48 + '"}}', "Sha384"),
        ('"PCR0"', "expected a JSON object"),
        ('{"Measurements": {"PCR0": 5}}', "expected hex text"),
    ],
)
def test_malformed_measurements(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_expected_measurements(text)


def test_unreadable_or_empty_measurement_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_expected_measurements(tmp_path / "missing.json")
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(PolicyError, match="empty file"):
        load_expected_measurements(empty)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(PolicyError, match="larger than"):
        load_expected_measurements(big)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("expected_pcrs", {0: bytes(48)}),
        ("nonce", b"n"),
        ("user_data", b"u"),
        ("public_key", b"k"),
        ("max_age", 60.0),
        ("kind", "enclave"),
        ("kind", "nitrotpm"),
    ],
)
def test_each_loose_expectation_counts_as_given(name: str, value: Any) -> None:
    # verifier._policy's "any given?" test (one map over the six): any one of them given must
    # build a policy that carries it, never fall back to the shared no-expectation policy, and
    # must not be combined with policy=.
    from nitro_attest.attestation import verifier as verifier_module

    built = verifier_module._policy(**{name: value})
    assert built is not verifier_module._NO_EXPECTATIONS[False]
    if name == "expected_pcrs":
        assert built.pcr_sets
    elif name == "kind":
        assert built.kind == value
    else:
        assert getattr(built, name) == value
    with pytest.raises(PolicyError, match="either policy="):
        verifier_module._policy(policy=built, **{name: value})
    assert verifier_module._policy() is verifier_module._NO_EXPECTATIONS[False]
    assert verifier_module._policy(allow_debug=True) is verifier_module._NO_EXPECTATIONS[True]
