"""lint_policy: the mistakes that let a key release secrets without attestation (pure).

Each finding names the statement (Sid or index), a stable code and one line. What is checked
(docs/kms.md, "Key policies"): a Recipient operation granted to a principal other than an
administrator without an attestation condition (the mistake of aws-nitro-enclaves-sdk-c#157),
``Principal: *`` without a condition, wildcard or case-sensitive attestation values, unknown
condition keys, conditions that can never match, an attested statement granting every action,
attestation conditions that a request without attestation passes, and a missing PCR16 pin.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from nitro_attest.attestation.caller_keys import CALLER_KEY_PCR, PRISTINE_PCR_VALUE
from nitro_attest.kms.keypolicy.evaluate import glob_matches
from nitro_attest.kms.keypolicy.keys import (
    ATTESTATION_PREFIX,
    IMAGE_SHA384,
    PCR_HEX_LENGTH,
    all_names,
    is_attestation_value_key,
    lookup,
)
from nitro_attest.kms.keypolicy.model import Condition, KeyPolicy, Statement
from nitro_attest.kms.keypolicy.parse import (
    ARN_OPERATORS,
    DATE_OPERATORS,
    NEGATED_OPERATORS,
    NUMERIC_OPERATORS,
    STRING_OPERATORS,
)

Severity = Literal["error", "warning"]

# The operations that return key material or randomness and accept Recipient.
RECIPIENT_ACTIONS = (
    "kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair", "kms:GenerateRandom",
    "kms:DeriveSharedSecret",
)
# Operations that take no Recipient yet hand out what Decrypt would: never for a non-admin.
_DECRYPT_EQUIVALENT = ("kms:ReEncryptFrom", "kms:CreateGrant")
_RECIPIENT_LOWER = frozenset(a.lower() for a in RECIPIENT_ACTIONS)
_PCR16 = f"{ATTESTATION_PREFIX}pcr{CALLER_KEY_PCR}"
# Measurements that identify the enclave's code or its signer (PCR3/4 name the parent, PCR16 and
# up are set by the enclave itself): a grant is bound to an image only through one of these.
_IMAGE_KEYS = frozenset({IMAGE_SHA384} | {f"{ATTESTATION_PREFIX}pcr{i}" for i in (0, 1, 2, 8)})
_TPM = f"{ATTESTATION_PREFIX}nitrotpmpcr"
_HEX = re.compile(f"[0-9a-fA-F]{{{PCR_HEX_LENGTH}}}")
_ACCOUNT = re.compile(r"[0-9]{12}|arn:aws[a-z-]*:iam::[0-9]{12}:root")
_EQUALITY = frozenset({"StringEquals", "StringEqualsIgnoreCase"})
_OPERATOR_TYPES = {  # which key types each operator family can compare
    **{op: ("string", "arn") for op in STRING_OPERATORS},  # AWS compares ARNs as text too
    **{op: ("arn", "string") for op in ARN_OPERATORS},
    **{op: ("numeric",) for op in NUMERIC_OPERATORS},
    **{op: ("date",) for op in DATE_OPERATORS},
    "Bool": ("bool",), "IpAddress": ("ip",), "NotIpAddress": ("ip",), "BinaryEquals": ("binary",),
}


@dataclass(frozen=True)
class Finding:
    statement: str  # the statement's label: Sid "..." or Statement[i]
    index: int
    code: str
    severity: Severity
    message: str

    def line(self) -> str:
        return f"{self.statement}: {self.severity} {self.code}: {self.message}"


def lint_policy(policy: KeyPolicy, admins: Sequence[str] = ()) -> list[Finding]:
    """Every finding, statement by statement. ``admins`` are principals trusted to use the key
    without attestation (besides account roots, which delegate to IAM and get a warning)."""
    findings: list[Finding] = []
    for statement in policy.statements:
        findings += _lint_statement(statement, frozenset(admins))
    return findings


def _lint_statement(st: Statement, admins: frozenset[str]) -> Iterable[Finding]:
    def finding(code: str, severity: Severity, message: str) -> Finding:
        return Finding(st.label, st.index, code, severity, message)

    for condition in st.conditions:
        yield from (finding(*f) for f in _lint_condition(st, condition))
    yield from (finding(*f) for f in _contradictions(st))
    if st.effect != "Allow":
        return
    granted = [a for a in RECIPIENT_ACTIONS if _covers(st, a)]
    attested = any(_pins_attestation(c) for c in st.conditions)
    pins = [c.key for c in st.conditions if _pins_attestation(c)]
    bound = any(k in _IMAGE_KEYS or k.startswith(_TPM) for k in pins)
    enclave = any(not k.startswith(_TPM) for k in pins)  # NitroTPM has no PCR16 mark
    if (st.principal.any or "*" in st.principal.aws) and not st.conditions:
        yield finding("principal-star", "error",
                      "Principal \"*\" without any Condition: every AWS account may use the key")
    if granted and not bound:
        named = ", ".join(a.removeprefix("kms:") for a in granted)
        if st.principal.any:
            yield finding("unattested-grant", "error",
                          f"grants {named} to any principal without a "
                          "kms:RecipientAttestation condition on the image")
        others = [p for p in st.principal.aws if p not in admins and not _ACCOUNT.fullmatch(p)]
        others += list(st.principal.services)
        roots = [p for p in st.principal.aws if p not in admins and _ACCOUNT.fullmatch(p)]
        if others:
            yield finding("unattested-grant", "error",
                          f"grants {named} to {others[0]} without a kms:RecipientAttestation "
                          "condition on the image (ImageSha384, PCR0-2 or PCR8): the secret "
                          "leaves KMS to whoever holds those credentials (sdk-c#157)")
        if roots:
            yield finding("root-delegation", "warning",
                          f"grants {named} to account {roots[0]} without attestation: any "
                          "principal an IAM policy allows may decrypt outside the enclave "
                          "(grant key administration only, as `kms policy` does)")
    # an attestation condition already stops them: no request for them carries attestation
    escalations = [a for a in _DECRYPT_EQUIVALENT if _covers(st, a)] if not attested else []
    if escalations:
        outsiders = ["*"] if st.principal.any else []
        outsiders += [p for p in st.principal.aws if p not in admins and not _ACCOUNT.fullmatch(p)]
        outsiders += list(st.principal.services)
        if outsiders:
            yield finding("decrypt-equivalent", "error",
                          f"grants {', '.join(a.removeprefix('kms:') for a in escalations)} to "
                          f"{outsiders[0]}: re-encrypting this key's ciphertext to a key of the "
                          "caller's choosing, or granting itself Decrypt, needs no attestation")
    if attested:
        if _covers_everything(st):
            yield finding("enclave-all-actions", "error",
                          "an attested statement grants every KMS action (kms:* or NotAction): "
                          "list the Recipient operations (loosen the condition later and "
                          "PutKeyPolicy or ScheduleKeyDeletion go with it)")
        else:
            extra = [a for a in st.actions if not any(ch in a for ch in "*?")
                     and a.lower() not in _RECIPIENT_LOWER]
            if extra:
                yield finding("never-matches", "warning",
                              f"{extra[0]} takes no Recipient, so no request for it carries "
                              "attestation: this statement never allows it")
        if enclave and not _pins_pcr16(st):
            yield finding("pcr16-pin", "warning",
                          f"no kms:RecipientAttestation:PCR{CALLER_KEY_PCR} pinned to "
                          f"{PCR_HEX_LENGTH} zeros: documents of an enclave that signs "
                          "caller-chosen keys (PCR16 marked) would be accepted")


def _lint_condition(st: Statement, c: Condition) -> Iterable[tuple[str, Severity, str]]:
    known = lookup(c.key)
    where = f"{c.operator} {c.key_as_written}"
    if known is None:
        names = {n.lower(): n for n in all_names()}
        close = difflib.get_close_matches(c.key, list(names), n=1, cutoff=0.8)
        hint = f" (did you mean {names[close[0]]}?)" if close else ""
        yield ("unknown-key", "error", f"{where}: unknown condition key{hint}; an unknown key "
               "is absent from every request")
        return
    name, ktype, multivalued = known
    if c.base != "Null" and ktype not in _OPERATOR_TYPES.get(c.base, ()):
        yield ("never-matches", "error", f"{where}: {c.base} cannot compare {name}, a {ktype} "
               "key")
    if c.qualifier and not multivalued:
        if c.qualifier == "ForAllValues" and st.effect == "Allow":
            yield ("set-operator", "error",
                   f"{where}: ForAllValues on the single-valued {name} holds when the request "
                   "lacks the key")
        else:
            yield ("set-operator", "warning",
                   f"{where}: {c.qualifier} on the single-valued {name}: drop the qualifier")
    if multivalued and not c.qualifier and c.base != "Null":
        yield ("set-operator", "warning",
               f"{where}: {name} is multivalued: say ForAnyValue or ForAllValues")
    if is_attestation_value_key(c.key) and c.base != "Null":
        yield from _lint_attestation_values(st, c, name, where)


def _lint_attestation_values(st: Statement, c: Condition, name: str,
                             where: str) -> Iterable[tuple[str, Severity, str]]:
    if c.base in ("StringLike", "StringNotLike") and any("*" in v or "?" in v for v in c.values):
        yield ("pcr-wildcard", "error",
               f"{where}: a wildcard in a measurement accepts other images; give the exact value")
    if c.base in ("StringEquals", "StringNotEquals", "StringLike", "StringNotLike"):
        if any(v != v.lower() for v in c.values):
            yield ("never-matches", "error",
                   f"{where}: {c.base} is case-sensitive and KMS gives {name} in lower-case hex; "
                   "use StringEqualsIgnoreCase")
        else:
            yield ("pcr-case-sensitive", "warning",
                   f"{where}: {c.base} is case-sensitive; AWS documents StringEqualsIgnoreCase "
                   "for measurements")
    if c.key in (IMAGE_SHA384, f"{ATTESTATION_PREFIX}pcr0") and st.effect == "Allow" and any(
        v.strip("0") == "" for v in c.values
    ) and c.base in _EQUALITY | {"StringLike"}:
        yield ("debug-image", "error",
               f"{where}: PCR0 all zero is every debug-mode enclave, whose memory the parent reads")
    if c.base in STRING_OPERATORS:
        bad = [v for v in c.values if not _HEX.fullmatch(v) and "*" not in v and "?" not in v]
        if bad:
            yield ("never-matches", "error",
                   f"{where}: {bad[0][:24]!r} is not {PCR_HEX_LENGTH} hex digits (a SHA-384 "
                   "measurement); no document carries it")
    if st.effect == "Allow" and c.if_exists:
        yield ("attestation-optional", "error",
               f"{where}: ...IfExists holds when the request carries no attestation document")


def _contradictions(st: Statement) -> Iterable[tuple[str, Severity, str]]:
    """A key required absent (Null true) and present by another operator, or a single-valued key
    that two equality conditions require with no value in common."""
    absent = {c.key for c in st.conditions if c.base == "Null" and c.values == ("true",)}
    for c in st.conditions:
        if (c.key in absent and c.base != "Null" and not c.if_exists and not c.qualifier
                and c.base not in NEGATED_OPERATORS):
            yield ("never-matches", "error",
                   f"{c.operator} {c.key_as_written}: Null requires the key absent and "
                   f"{c.operator} requires it present; the statement never applies")
    by_key: dict[str, list[Condition]] = {}
    for c in st.conditions:
        if c.base in _EQUALITY and not c.qualifier and not c.if_exists:
            known = lookup(c.key)
            if known is not None and not known[2]:
                by_key.setdefault(c.key, []).append(c)
    for conditions in by_key.values():
        if len(conditions) < 2:
            continue
        candidates = list(conditions[0].values)
        for other in conditions[1:]:
            candidates = [v for v in candidates if any(_equal(other, v, p) for p in other.values)]
        if not candidates:
            c = conditions[0]
            yield ("never-matches", "error",
                   f"{c.key_as_written}: required by {len(conditions)} operators with no value "
                   "in common; the statement never applies")


def _equal(condition: Condition, value: str, policy_value: str) -> bool:
    if condition.base == "StringEqualsIgnoreCase":
        return value.casefold() == policy_value.casefold()
    return value == policy_value


def _covers(st: Statement, action: str) -> bool:
    named = any(glob_matches(a, action, ignore_case=True) for a in st.actions)
    return named != st.not_action


def _covers_everything(st: Statement) -> bool:
    return st.not_action or any(a.lower() in ("*", "kms:*") for a in st.actions)


def _pins_attestation(c: Condition) -> bool:
    """A condition a request without attestation fails, and that names a measurement."""
    return (
        is_attestation_value_key(c.key)
        and c.base in ("StringEquals", "StringEqualsIgnoreCase", "StringLike")
        and c.qualifier != "ForAllValues"
        and not c.if_exists
    )


def _pins_pcr16(st: Statement) -> bool:
    zero = PRISTINE_PCR_VALUE.hex()
    return any(
        c.key == _PCR16 and _pins_attestation(c) and all(v.lower() == zero for v in c.values)
        for c in st.conditions
    )
