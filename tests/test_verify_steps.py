"""Verifier.verify runs its checks written out (not a loop over _STEPS): the same checks, in
_STEPS' order, with the same results evaluate reports, and the first failure in that order is
the one raised."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nitro_attest.attestation import verifier as verifier_module
from nitro_attest.attestation.verifier import _STEPS, Verifier
from nitro_attest.errors import (
    CallerKeysError,
    ChainError,
    Check,
    DebugModeError,
    DocumentKindError,
    NonceMismatchError,
    PcrMismatchError,
    PublicKeyMismatchError,
    StaleDocumentError,
    UserDataMismatchError,
    VerificationError,
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


# Each step of _STEPS, made to fail on demand: the module-level name verify and evaluate both
# call (payload checks), or what the auth steps call (the ECDSA check, the chain validator).
_PAYLOAD_NAMES = {
    Check.DOCUMENT_KIND: ("check_kind", DocumentKindError),
    Check.DEBUG_MODE: ("check_debug", DebugModeError),
    Check.PCRS: ("check_pcrs", PcrMismatchError),
    Check.USER_DATA: ("check_user_data", UserDataMismatchError),
    Check.NONCE: ("check_nonce", NonceMismatchError),
    Check.PUBLIC_KEY: ("check_public_key", PublicKeyMismatchError),
    Check.CALLER_KEYS: ("check_caller_keys", CallerKeysError),
    Check.FRESHNESS: ("check_freshness", StaleDocumentError),
}


def test_every_combination_of_failing_steps_raises_evaluates_first_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # For every subset of the ten steps made to fail, verify raises the failure of the first
    # failing step in _STEPS' order (evaluate's first error, same class and message), after
    # calling exactly the steps before it, in order; with none failing, every step ran once.
    data = _read(INDEX[0])
    verifier = Verifier()
    chain = verifier._chain  # the validator's cache and the ECDSA check are what is replaced
    failing: set[Check] = set()
    calls: list[Check] = []

    def wrap(name: Check, real: Any, error: type[Exception]) -> Any:
        def step(*args: Any) -> Any:
            calls.append(name)
            if name in failing:
                raise error(f"{name} failed on purpose")
            return real(*args)

        return step

    for name, (attr, error) in _PAYLOAD_NAMES.items():
        real = getattr(verifier_module, attr)
        monkeypatch.setattr(verifier_module, attr, wrap(name, real, error))
    real_ecdsa = verifier_module.verify_ecdsa

    def ecdsa(*args: Any) -> bool:
        calls.append(Check.COSE_SIGNATURE)
        return Check.COSE_SIGNATURE not in failing and bool(real_ecdsa(*args))

    monkeypatch.setattr(verifier_module, "verify_ecdsa", ecdsa)
    monkeypatch.setattr(
        chain, "validate", wrap(Check.CERTIFICATE_CHAIN, chain.validate, ChainError)
    )
    steps = [name for name, _ in _STEPS]
    for mask in range(1 << len(steps)):
        failing.clear()
        failing.update(name for i, name in enumerate(steps) if mask >> i & 1)
        calls.clear()
        report = verifier.evaluate(data, at="document", allow_debug=True)
        calls.clear()
        if not failing:
            verified = verifier.verify(data, at="document", allow_debug=True)
            assert calls == steps
            assert verified.checks == report.checks
            continue
        first = next(name for name in steps if name in failing)
        with pytest.raises(VerificationError) as raised:
            verifier.verify(data, at="document", allow_debug=True)
        assert calls == steps[: steps.index(first) + 1]
        assert report.error is not None
        assert type(raised.value) is type(report.error)
        assert raised.value.message == report.error.message
