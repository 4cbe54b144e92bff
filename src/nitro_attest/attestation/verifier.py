"""The verifier: bytes, a trust root and a time in; a VerifiedDocument out, or an exception.

Order of checks, as the tutorial lists them: parse (CBOR/COSE), COSE signature, certificate chain,
then the policy (document kind, debug mode, PCRs, user data, nonce, public key, freshness).
``verify`` stops at the first failure; ``evaluate`` runs every check it can and reports each, for
humans and --json. A check that reads the payload runs only once the signature and the chain
verified: before that the payload is whatever the sender chose (docs/threat-model.md).
No file, socket or clock is touched here except reading the clock once when ``at`` is None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import is_not
from typing import Literal, TypedDict, Unpack

from nitro_attest.attestation.chain import ChainValidator, aws_root_der, root_der_from_pem
from nitro_attest.attestation.document import AttestationDocument, DocumentKind, parse_document
from nitro_attest.attestation.policy import (
    PcrSpec,
    Policy,
    check_caller_keys,
    check_debug,
    check_freshness,
    check_kind,
    check_nonce,
    check_pcrs,
    check_public_key,
    check_user_data,
)
from nitro_attest.attestation.report import CheckResult, Report
from nitro_attest.codec.cose import ES384, sig_structure, verify_ecdsa
from nitro_attest.errors import Check, PolicyError, SignatureError, VerificationError

At = datetime | Literal["document", "now"] | None


class Expectations(TypedDict, total=False):
    """What ``verify`` and ``evaluate`` take besides the document and the time.

    Either ``policy`` or the individual fields (which build a Policy); None means not checked.
    """

    policy: Policy | None
    expected_pcrs: PcrSpec | Sequence[PcrSpec] | None
    nonce: bytes | None
    user_data: bytes | None
    public_key: bytes | None
    max_age: float | None
    allow_debug: bool
    kind: DocumentKind | str
    refuse_caller_keys: bool


@dataclass(frozen=True, slots=True)
class VerifiedDocument:
    """A document that passed every check, with what it was checked against (for audit)."""

    document: AttestationDocument
    verified_at: datetime
    root_sha256: str
    policy: Policy
    checks: tuple[CheckResult, ...]

    @property
    def raw(self) -> bytes:
        """The document exactly as received (COSE_Sign1 bytes)."""
        return self.document.raw


_Step = Callable[["Verifier", AttestationDocument, Policy, float], "str | None"]

NOT_AUTHENTICATED = "not run: document not authenticated"
# Checks whose meaning depends on the document kind: not run on a document of another kind.
_KIND_BOUND = frozenset(("debug_mode", "pcrs"))


class Verifier:
    """Reusable verifier bound to one trust root; owns the certificate/link cache.

    ``root_pem=None`` pins the embedded AWS Nitro root G1 (fingerprint checked at load).
    """

    def __init__(self, *, root_pem: bytes | None = None) -> None:
        root_der = aws_root_der() if root_pem is None else root_der_from_pem(root_pem)
        self._chain = ChainValidator(root_der)

    @property
    def root_sha256(self) -> str:
        """The SHA-256 of the trusted root certificate, hex."""
        return self._chain.root_sha256

    def verify(
        self, document: bytes, *, at: At = None, **expectations: Unpack[Expectations]
    ) -> VerifiedDocument:
        """Verify ``document`` (raw COSE_Sign1 bytes) or raise a VerificationError subclass."""
        policy = _policy(**expectations)
        _check_time_policy(at, policy)
        doc = parse_document(document)
        when = _resolve_at(at, doc)
        ts = when.timestamp()
        # The steps of _STEPS, written out (a tuple's items are evaluated left to right, so each
        # runs only after the ones before it passed): no loop and no lambda frame per step.
        # tests/test_verify_steps.py holds this to _STEPS' order and to evaluate's results.
        results = (
            CheckResult(Check.FORMAT, True, _format_detail(doc)),
            _result(Check.COSE_SIGNATURE, self._check_signature(doc, policy, ts)),
            _result(Check.CERTIFICATE_CHAIN, self._check_chain(doc, policy, ts)),
            _result(Check.DOCUMENT_KIND, check_kind(doc, policy)),
            _result(Check.DEBUG_MODE, check_debug(doc, policy)),
            _result(Check.PCRS, check_pcrs(doc, policy)),
            _result(Check.USER_DATA, check_user_data(doc, policy)),
            _result(Check.NONCE, check_nonce(doc, policy)),
            _result(Check.PUBLIC_KEY, check_public_key(doc, policy)),
            _result(Check.CALLER_KEYS, check_caller_keys(doc, policy)),
            _result(Check.FRESHNESS, check_freshness(doc, policy, ts)),
        )
        return VerifiedDocument(doc, when, self._chain.root_sha256, policy, results)

    def evaluate(
        self, document: bytes, *, at: At = None, **expectations: Unpack[Expectations]
    ) -> Report:
        """Run every check that can run and report each; never raises VerificationError.

        Payload checks run only after the signature and the chain verified; otherwise each is
        reported as not run (``ok`` None), and the parsed payload is kept as ``Report.claimed``,
        never as ``Report.document``.
        """
        policy = _policy(**expectations)
        _check_time_policy(at, policy)
        try:
            doc = parse_document(document)
        except VerificationError as exc:
            skipped = tuple(CheckResult(n, None, "not run: document unreadable") for n, _ in _STEPS)
            return Report(
                False, (CheckResult(Check.FORMAT, False, exc.message), *skipped), None, exc, None
            )
        when = _resolve_at(at, doc)
        ts = when.timestamp()
        results: list[CheckResult] = []
        errors: list[VerificationError] = []
        for name, step in _AUTH_STEPS:
            if errors and at == "document":  # the time itself came from the unsigned payload
                results.append(CheckResult(name, None, f"{NOT_AUTHENTICATED} (--at document)"))
                continue
            outcome = _run(name, step, self, doc, policy, ts)
            results.append(outcome[0])
            errors.extend(outcome[1:])
        if errors:
            results.extend(CheckResult(n, None, NOT_AUTHENTICATED) for n, _ in _PAYLOAD_STEPS)
            format_ok = CheckResult(Check.FORMAT, True, _format_detail(doc, authenticated=False))
            reported_at = None if at == "document" else when  # not a time the payload sets
            return Report(False, (format_ok, *results), None, errors[0], reported_at, claimed=doc)
        for name, step in _PAYLOAD_STEPS:
            if name in _KIND_BOUND and doc.kind is not policy.kind:
                detail = f"not run: {doc.kind.value} document, policy for {policy.kind.value}"
                results.append(CheckResult(name, None, detail))
                continue
            outcome = _run(name, step, self, doc, policy, ts)
            results.append(outcome[0])
            errors.extend(outcome[1:])
        format_ok = CheckResult(Check.FORMAT, True, _format_detail(doc))
        first = errors[0] if errors else None
        return Report(first is None, (format_ok, *results), doc, first, when)

    def _check_signature(self, doc: AttestationDocument, policy: Policy, at: float) -> str:
        key = self._chain.leaf_key(doc.certificate)
        if not verify_ecdsa(key, ES384, sig_structure(doc.protected, doc.payload), doc.signature):
            raise SignatureError(
                "COSE_Sign1 signature does not verify with the leaf certificate's P-384 key "
                "(payload or signature altered)"
            )
        return "ECDSA P-384 / SHA-384 (ES384) signature verified with the leaf certificate"

    def _check_chain(self, doc: AttestationDocument, policy: Policy, at: float) -> str:
        chain = self._chain
        chain.validate(doc.certificate, doc.cabundle, at)
        key = (chain.root_sha256, len(doc.cabundle))
        detail = _CHAIN_DETAILS.get(key)
        if detail is None:  # one string per root and bundle length, not one per document
            detail = (
                f"leaf -> {len(doc.cabundle) - 1} intermediate(s) -> root {chain.root.label} "
                f"(sha256 {chain.root_sha256[:16]}...), each valid at the verification time"
            )
            if len(_CHAIN_DETAILS) < _PASSED_MAX:
                _CHAIN_DETAILS[key] = detail
        return detail


# The checks after parsing, in order: signature and chain authenticate the payload, every later
# step reads it. Module-level rather than built per Verifier: a fresh Verifier per document (the
# one-shot path) then costs one object, and holds no reference cycle.
_AUTH_STEPS: tuple[tuple[Check, _Step], ...] = (
    (Check.COSE_SIGNATURE, Verifier._check_signature),
    (Check.CERTIFICATE_CHAIN, Verifier._check_chain),
)
_PAYLOAD_STEPS: tuple[tuple[Check, _Step], ...] = (
    (Check.DOCUMENT_KIND, lambda v, d, p, at: check_kind(d, p)),
    (Check.DEBUG_MODE, lambda v, d, p, at: check_debug(d, p)),
    (Check.PCRS, lambda v, d, p, at: check_pcrs(d, p)),
    (Check.USER_DATA, lambda v, d, p, at: check_user_data(d, p)),
    (Check.NONCE, lambda v, d, p, at: check_nonce(d, p)),
    (Check.PUBLIC_KEY, lambda v, d, p, at: check_public_key(d, p)),
    (Check.CALLER_KEYS, lambda v, d, p, at: check_caller_keys(d, p)),
    (Check.FRESHNESS, lambda v, d, p, at: check_freshness(d, p, at)),
)
_STEPS = _AUTH_STEPS + _PAYLOAD_STEPS


def verify(
    document: bytes,
    *,
    root_pem: bytes | None = None,
    at: At = None,
    **expectations: Unpack[Expectations],
) -> VerifiedDocument:
    """One-off verification; build a Verifier to reuse its certificate cache across documents."""
    return Verifier(root_pem=root_pem).verify(document, at=at, **expectations)


def _policy(
    policy: Policy | None = None,
    expected_pcrs: PcrSpec | Sequence[PcrSpec] | None = None,
    nonce: bytes | None = None,
    user_data: bytes | None = None,
    public_key: bytes | None = None,
    max_age: float | None = None,
    allow_debug: bool = False,
    kind: DocumentKind | str | None = None,
    refuse_caller_keys: bool = False,
) -> Policy:
    # Whether any of these is given: map(is_not) is the `is not None` test without a generator.
    loose = any(map(is_not, (expected_pcrs, nonce, user_data, public_key, max_age, kind), _NONES))
    if policy is not None:
        if loose or allow_debug or refuse_caller_keys:
            raise PolicyError("give either policy= or the individual expectations, not both")
        return policy
    if isinstance(allow_debug, bool) and not refuse_caller_keys and not loose:
        return _NO_EXPECTATIONS[allow_debug]
    return Policy.build(
        expected_pcrs=expected_pcrs,
        nonce=nonce,
        user_data=user_data,
        public_key=public_key,
        max_age=max_age,
        allow_debug=allow_debug,
        kind=DocumentKind.ENCLAVE if kind is None else kind,
        refuse_caller_keys=bool(refuse_caller_keys),
    )


_NONES = (None,) * 6
# Policies are immutable: the two without expectations are built once, not per document.
_NO_EXPECTATIONS = {
    debug: Policy.build(allow_debug=debug, kind=DocumentKind.ENCLAVE) for debug in (False, True)
}


def _check_time_policy(at: At, policy: Policy) -> None:
    # max_age guards against replay, which only the present can judge: at the document's own
    # timestamp every document is 0 s old (docs/verifier.md, "Time").
    if at == "document" and policy.max_age is not None:
        raise PolicyError(
            "max_age cannot be combined with at='document': the age would be measured against "
            "the document's own timestamp, so every document would be 0 s old"
        )


def _run(
    name: Check,
    step: _Step,
    verifier: Verifier,
    doc: AttestationDocument,
    policy: Policy,
    ts: float,
) -> tuple[CheckResult] | tuple[CheckResult, VerificationError]:
    try:
        return (_result(name, step(verifier, doc, policy, ts)),)
    except VerificationError as exc:
        return CheckResult(name, False, exc.message), exc


def _resolve_at(at: At, doc: AttestationDocument) -> datetime:
    if at is None or at == "now":
        return datetime.now(UTC)
    if at == "document":
        return doc.timestamp
    if not isinstance(at, datetime):
        raise PolicyError(f"at must be a datetime, 'document' or 'now', got {at!r}")
    if at.tzinfo is None:
        raise PolicyError("at must be timezone-aware (e.g. datetime.now(timezone.utc))")
    try:  # a time near datetime's limits may not exist in UTC (year 0 or 10000)
        return at.astimezone(UTC)
    except (OverflowError, ValueError):
        raise PolicyError(f"at {at.isoformat()} is out of range in UTC") from None


def _result(name: Check, detail: str | None) -> CheckResult:
    if detail is None:
        return _NOT_CHECKED[name]
    key = (name, detail)
    result = _PASSED.get(key)
    if result is None:
        result = CheckResult(name, True, detail)
        if len(_PASSED) < _PASSED_MAX:
            _PASSED[key] = result
    return result


# Passed results repeat from document to document (the same signature, chain and policy
# details), and are immutable: shared, as a bounded table filled on first use (~3 us per
# document less than building ten).
_PASSED: dict[tuple[Check, str], CheckResult] = {}
_PASSED_MAX = 4096
# The chain check's detail by (root fingerprint, bundle length): shared by every Verifier, so a
# fresh one (the one-shot path) does not format it again. The label is the root's, which its
# fingerprint names.
_CHAIN_DETAILS: dict[tuple[str, int], str] = {}


# Results are immutable: the "not checked" ones, most of a one-shot report, are built once.
_NOT_CHECKED = {
    name: CheckResult(name, None, "not checked: no expectation given") for name, _ in _STEPS
}


def _format_detail(doc: AttestationDocument, *, authenticated: bool = True) -> str:
    if not authenticated:  # structure only: nothing the payload claims
        return (
            f"{'tagged' if doc.tagged else 'untagged'} COSE_Sign1 with a well-formed payload "
            "(its contents are not authenticated)"
        )
    return (
        f"{'tagged' if doc.tagged else 'untagged'} COSE_Sign1, {doc.kind} document from "
        f"{doc.module_id}, {len(doc.pcrs)} PCRs, timestamp "
        f"{doc.timestamp.isoformat().replace('+00:00', 'Z')}"
    )
