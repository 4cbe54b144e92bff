"""One appraisal: a document, a named policy and the session nonce in; EAR status, AR4SI vector
and the annotated evidence out. Synchronous and CPU-bound: the app runs it off the event loop.

The status is ``affirming`` only when every required check passed: format, COSE signature,
certificate chain, document kind, debug mode, PCRs (one allowed release), nonce (the session's),
and freshness when the policy sets max_age; then the service's own two: ``session_time`` (the
document was made no earlier than the session began, less the clock skew: an old document fails
even when the store forgot every record) and ``caller_key_mark`` (PCR16 not marked: an enclave
that signs keys its callers chose never has a document affirmed). A debug document the policy
allows is a ``warning``. Anything else is ``contraindicated``, naming the first failed check.
The checks are the verifier's report as ``verify --json`` gives them, then the service's two (a
check not run after a failed signature or chain is ``ok: null``); an unauthenticated payload
is never repeated in the signed result.
docs/service.md gives the trustworthiness-vector mapping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nitro_attest.attestation.caller_keys import CALLER_KEY_PCR, signs_caller_keys
from nitro_attest.attestation.document import AttestationDocument
from nitro_attest.attestation.report import CheckResult
from nitro_attest.attestation.verifier import Verifier
from nitro_attest.errors import Check
from nitro_attest.service.policies import NamedPolicy

REQUIRED = (
    Check.FORMAT, Check.COSE_SIGNATURE, Check.CERTIFICATE_CHAIN, Check.DOCUMENT_KIND,
    Check.DEBUG_MODE, Check.PCRS, Check.NONCE, Check.SESSION_TIME, Check.CALLER_KEY_MARK,
)  # fmt: skip
NOT_AUTHENTICATED = "not run: document not authenticated"

# AR4SI values (draft-ietf-rats-ar4si) as Veraison's EAR library names them.
UNEXPECTED_EVIDENCE = 1
CRYPTO_VALIDATION_FAILED = 99
TRUSTWORTHY_INSTANCE = 2
UNRECOGNIZED_INSTANCE = 97
GENUINE_HARDWARE = 2
UNRECOGNIZED_HARDWARE = 97
APPROVED_CONFIG = 2
UNSAFE_CONFIG = 32
UNSUPPORTABLE_CONFIG = 96
APPROVED_RUNTIME = 2
UNRECOGNIZED_RUNTIME = 33
ISOLATED_MEMORY = 3


@dataclass(frozen=True, slots=True)
class Appraisal:
    status: str
    vector: dict[str, int]
    annotated: dict[str, Any]
    failed: str | None
    """Name of the first failed (or missing) required check; None when affirming or warning."""


def appraise_evidence(
    verifier: Verifier, policy: NamedPolicy, nonce: bytes, document: bytes, *, not_before: float,
    document_sha256: str | None = None,
) -> Appraisal:
    """``not_before``: the session's start less the clock skew (seconds since the epoch).
    ``document_sha256``: the hex SHA-256 of ``document`` when the caller already computed it
    (the service records it with the session), so a session hashes its evidence once."""
    report = verifier.evaluate(document, policy=policy.with_nonce(nonce))
    results = (*report.checks, *service_checks(report.document, not_before))
    required = (*REQUIRED, Check.FRESHNESS) if policy.max_age is not None else REQUIRED
    outcome = {Check(c.name): c.ok for c in results}
    failed = next((c.name for c in results if c.ok is False), None)
    if failed is None:
        failed = next((name for name in required if outcome.get(name) is not True), None)
    doc = report.document  # None unless the signature and the chain verified
    debug = doc is not None and doc.is_debug
    if failed is not None:
        status = "contraindicated"
    elif debug:
        status = "warning"
    else:
        status = "affirming"
    if report.error is not None:
        error: dict[str, str] | None = {"check": report.error.check,
                                        "message": report.error.message}  # fmt: skip
    elif failed is not None:
        detail = next((c.detail for c in results if c.name == failed), "not checked")
        error = {"check": str(failed), "message": detail}
    else:
        error = None
    annotated: dict[str, Any] = {
        "module_id": doc.module_id if doc else None,
        "kind": doc.kind.value if doc else None,
        "timestamp": doc.timestamp.isoformat().replace("+00:00", "Z") if doc else None,
        "pcrs": {str(i): v.hex() for i, v in doc.pcrs.items()} if doc else None,
        "document_sha256": document_sha256 or hashlib.sha256(document).hexdigest(),
        "checks": [c.to_json() for c in results],
        "error": error,
        "verified_at": report.at.isoformat() if report.at else None,
    }
    failed_name = None if failed is None else str(failed)
    return Appraisal(status, trust_vector(outcome, debug, policy), annotated, failed_name)


def trust_vector(
    outcome: Mapping[Check, bool | None], debug: bool, policy: NamedPolicy
) -> dict[str, int]:
    """AR4SI claims for what a Nitro document proves; categories it says nothing about are left
    out. Claims read from the payload count only once the signature and chain hold."""
    if outcome.get(Check.FORMAT) is not True:
        return {"instance-identity": UNEXPECTED_EVIDENCE, "hardware": UNEXPECTED_EVIDENCE}
    if outcome.get(Check.COSE_SIGNATURE) is False:
        return {"instance-identity": CRYPTO_VALIDATION_FAILED,
                "hardware": CRYPTO_VALIDATION_FAILED}  # fmt: skip
    authentic = (outcome.get(Check.CERTIFICATE_CHAIN), outcome.get(Check.COSE_SIGNATURE))
    if authentic != (True, True):
        return {"instance-identity": UNRECOGNIZED_INSTANCE, "hardware": UNRECOGNIZED_HARDWARE}
    vector = {"instance-identity": TRUSTWORTHY_INSTANCE, "hardware": GENUINE_HARDWARE}
    if outcome.get(Check.DEBUG_MODE) is False or outcome.get(Check.CALLER_KEY_MARK) is False:
        vector["configuration"] = UNSUPPORTABLE_CONFIG
    elif debug:
        vector["configuration"] = UNSAFE_CONFIG
    elif outcome.get(Check.DEBUG_MODE) is True:
        vector["configuration"] = APPROVED_CONFIG
    if outcome.get(Check.PCRS) is True and not debug:
        vector["executables"] = APPROVED_RUNTIME
    elif outcome.get(Check.PCRS) is False or debug:
        vector["executables"] = UNRECOGNIZED_RUNTIME
    if outcome.get(Check.DOCUMENT_KIND) is True and policy.kind == "enclave" and not debug:
        vector["runtime-opaque"] = ISOLATED_MEMORY
    return vector


def service_checks(doc: AttestationDocument | None, not_before: float) -> list[CheckResult]:
    """The service's checks beyond the verifier's, as the report's results; not run (``ok``
    None) on a document whose signature or chain failed."""
    if doc is None:
        return [CheckResult(name, None, NOT_AUTHENTICATED)
                for name in (Check.SESSION_TIME, Check.CALLER_KEY_MARK)]  # fmt: skip
    made = doc.timestamp_ms / 1000
    if made < not_before:
        time_check = CheckResult(Check.SESSION_TIME, False, (
            f"document made at {_utc(made)}, before the session began (less the clock skew, "
            f"{_utc(not_before)}): an old document"))  # fmt: skip
    else:
        time_check = CheckResult(Check.SESSION_TIME, True,
                                 f"made at {_utc(made)}, after the session began (less the skew)")
    if CALLER_KEY_PCR not in doc.pcrs:
        # Unlocked, so absent: an enclave that signs caller-chosen keys locks it marked before
        # the opt-in takes effect (attestation/caller_keys.py), and the image that would do so
        # is the one PCR0 measures: absence says this image never opted in.
        mark = CheckResult(Check.CALLER_KEY_MARK, True,
                           f"PCR{CALLER_KEY_PCR} not locked: no caller-key mark")
    elif signs_caller_keys(doc.pcrs):  # marked, or any value but the pristine one
        mark = CheckResult(Check.CALLER_KEY_MARK, False, (
            f"PCR{CALLER_KEY_PCR} is not pristine: the enclave may sign public keys its callers "
            "chose (serve --allow-caller-public-key), so no key it names is the enclave's"))
    else:
        mark = CheckResult(Check.CALLER_KEY_MARK, True,
                           f"PCR{CALLER_KEY_PCR} pristine: no caller-key mark")
    return [time_check, mark]


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
