"""Red-team tests for the key-policy code: policies and requests where the evaluator, the
generator or the linter would let a secret out that AWS (or the image's owner) would keep in.

Each test is a finding: it failed before its fix. The parent instance holds the enclave role's
credentials, so anything that role may do without a Recipient, the parent may do."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nitro_attest.kms.keypolicy import KeyPolicyError, RequestContext, evaluate, parse_policy
from nitro_attest.kms.keypolicy.generate import enclave_key_policy
from nitro_attest.kms.keypolicy.lint import lint_policy

ACCOUNT = "111122223333"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/00000000-0000-0000-0000-000000000001"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/enclave-instance"
SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/enclave-instance/i-0123456789abcdef0"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/KMSAdmin"
IMAGE = "a0" * 48
ZEROS = "0" * 96


def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def enclave(condition: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": ROLE},
        "Action": ["kms:Decrypt"], "Resource": "*",
        "Condition": condition if condition is not None else {"StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:ImageSha384": IMAGE,
            "kms:RecipientAttestation:PCR16": ZEROS}},
    }
    statement.update(extra)
    return statement


def codes(text: str, admins: tuple[str, ...] = ()) -> list[str]:
    return sorted(f.code for f in lint_policy(parse_policy(text), admins=admins))


# -- kms policy: the enclave role must never administer the key ---------------------------------

@pytest.mark.parametrize("caller", [ROLE, SESSION])
@pytest.mark.parametrize("action", ["kms:PutKeyPolicy", "kms:ScheduleKeyDeletion",
                                    "kms:DisableKey", "kms:CreateAlias"])
def test_generated_default_policy_gives_the_enclave_role_no_administration(
    caller: str, action: str
) -> None:
    """The default admin is the account root, which (in the emulator, and on AWS whenever the
    instance role's IAM policy says kms:* as it often does) covers the enclave role itself: with
    PutKeyPolicy the parent drops the attestation condition and decrypts without Recipient."""
    policy = parse_policy(json.dumps(enclave_key_policy(image_sha384=IMAGE, principal=ROLE)))
    assert not evaluate(policy, RequestContext(action, caller, KEY, {})).allowed
    # the account's other principals still administer (AWS's default key policy delegates so)
    assert evaluate(policy, RequestContext(action, ADMIN, KEY, {})).allowed


def test_generated_policy_excludes_the_enclave_role_under_a_path() -> None:
    pathed = f"arn:aws:iam::{ACCOUNT}:role/apps/enclave-instance"
    policy = parse_policy(json.dumps(enclave_key_policy(image_sha384=IMAGE, principal=pathed)))
    for caller in (pathed, SESSION):  # a session ARN never carries the role's path
        assert not evaluate(policy, RequestContext("kms:PutKeyPolicy", caller, KEY, {})).allowed
    assert lint_policy(policy) == []


@pytest.mark.parametrize("admin", [
    f"arn:aws:iam::{ACCOUNT}:role/apps/enclave-instance",  # same role: names ignore the path
    f"arn:aws:iam::{ACCOUNT}:role/Enclave-Instance",  # same role: IAM role names ignore case
])
def test_generator_refuses_the_enclave_role_as_admin_under_another_spelling(admin: str) -> None:
    with pytest.raises(KeyPolicyError, match="administrator"):
        enclave_key_policy(image_sha384=IMAGE, principal=ROLE, admins=[admin])


# -- lint-policy: grants that let the enclave role (hence the parent) out of attestation ---------

@pytest.mark.parametrize("action", ["kms:PutKeyPolicy", "kms:ReplicateKey", "kms:*Policy"])
def test_lint_flags_policy_rewrite_by_the_attested_principal(action: str) -> None:
    """The enclave statement is perfect, but the same role may rewrite the policy (or replicate
    the key under a policy of its choosing) without any Recipient."""
    text = doc(enclave(), {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": [ROLE]},
                           "Action": [action, "kms:DescribeKey"], "Resource": "*"})
    assert "policy-rewrite" in codes(text)


def test_lint_flags_policy_rewrite_by_a_session_of_the_attested_role() -> None:
    text = doc(enclave(), {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": SESSION},
                           "Action": "kms:PutKeyPolicy", "Resource": "*"})
    assert "policy-rewrite" in codes(text)


def test_lint_flags_policy_rewrite_by_anyone() -> None:
    text = doc(enclave(), {"Sid": "Anyone", "Effect": "Allow", "Principal": "*",
                           "Action": "kms:PutKeyPolicy", "Resource": "*",
                           "Condition": {"Bool": {"aws:SecureTransport": "true"}}})
    assert "policy-rewrite" in codes(text)


def test_lint_flags_policy_rewrite_by_a_non_admin_when_admins_are_named() -> None:
    other = f"arn:aws:iam::{ACCOUNT}:role/ci"
    text = doc(enclave(), {"Sid": "CI", "Effect": "Allow", "Principal": {"AWS": other},
                           "Action": "kms:PutKeyPolicy", "Resource": "*"})
    assert "policy-rewrite" in codes(text, admins=(ADMIN,))
    assert "policy-rewrite" not in codes(text, admins=(other,))


def test_lint_admin_rewriting_the_policy_is_its_business() -> None:
    text = doc(enclave(), {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": ADMIN},
                           "Action": "kms:PutKeyPolicy", "Resource": "*"})
    assert codes(text) == []


# -- lint-policy: measurements that do not identify an image -------------------------------------

@pytest.mark.parametrize("keys", [
    ["PCR1"],  # the kernel and bootstrap: the same for every image built by one nitro-cli
    ["PCR2"],  # the application alone: runs on a kernel and init of the attacker's choosing
    ["NitroTPMPCR0"],  # firmware: the same on every instance
    ["NitroTPMPCR16"],  # debug PCR: reset and extended at will by the running OS
    ["NitroTPMPCR23"],  # application PCR: idem
])
def test_lint_measurements_that_do_not_bind_an_image(keys: list[str]) -> None:
    values = {f"kms:RecipientAttestation:{k}": IMAGE for k in keys}
    if not keys[0].startswith("NitroTPM"):
        values["kms:RecipientAttestation:PCR16"] = ZEROS
    assert "unattested-grant" in codes(doc(enclave({"StringEqualsIgnoreCase": values})))


@pytest.mark.parametrize("keys", [["PCR1", "PCR2"], ["PCR8"], ["ImageSha384"], ["PCR0"]])
def test_lint_measurements_that_bind_an_enclave_image(keys: list[str]) -> None:
    values = {f"kms:RecipientAttestation:{k}": IMAGE for k in keys}
    values["kms:RecipientAttestation:PCR16"] = ZEROS
    assert codes(doc(enclave({"StringEqualsIgnoreCase": values}))) == []


@pytest.mark.parametrize("pcr", [4, 7, 12])  # AWS: PCR4 and PCR12 (boot) or PCR7 (Secure Boot)
def test_lint_nitrotpm_measurements_aws_documents_bind(pcr: int) -> None:
    condition = {"StringEqualsIgnoreCase": {f"kms:RecipientAttestation:NitroTPMPCR{pcr}": IMAGE}}
    assert codes(doc(enclave(condition))) == []


# -- evaluate: IgnoreCase is a case comparison, not Unicode case folding -------------------------

@pytest.mark.parametrize(("policy_value", "request_value"), [
    ("strasse", "straße"),  # casefold() turns ß into ss: a different string, a different length
    ("STRASSE", "straße"),
    ("fish", "\ufb01sh"),  # the ligature fi folds to two letters
])
def test_ignore_case_does_not_fold_to_other_strings(policy_value: str, request_value: str) -> None:
    key = "kms:EncryptionContext:Department"
    allow = parse_policy(doc({
        "Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "kms:Encrypt", "Resource": "*",
        "Condition": {"StringEqualsIgnoreCase": {key: policy_value}}}))
    ctx = RequestContext("kms:Encrypt", ROLE, KEY, {key.lower(): (request_value,)})
    assert not evaluate(allow, ctx).allowed
    # and the Deny that guards the same value still applies
    deny = parse_policy(doc(
        {"Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "kms:Encrypt", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"StringNotEqualsIgnoreCase": {key: policy_value}}}))
    assert not evaluate(deny, ctx).allowed


def test_ignore_case_still_ignores_case() -> None:
    key = "kms:RecipientAttestation:ImageSha384"
    policy = parse_policy(doc(enclave({"StringEqualsIgnoreCase": {key: IMAGE.upper()}})))
    assert evaluate(policy, RequestContext("kms:Decrypt", ROLE, KEY, {key.lower(): (IMAGE,)}))\
        .allowed
    ctx = RequestContext("kms:Decrypt", ROLE, KEY, {"kms:encryptioncontext:d": ("Straße",)})
    policy = parse_policy(doc(enclave({"StringEqualsIgnoreCase": {
        "kms:EncryptionContext:d": "STRAßE"}})))
    assert evaluate(policy, ctx).allowed


# -- evaluate: an unqualified operator on a multivalued key (AWS leaves it undocumented) ---------

def _context_keys(*names: str) -> RequestContext:
    return RequestContext("kms:Encrypt", ROLE, KEY, {"kms:encryptioncontextkeys": names})


ALLOW_ENCRYPT = {"Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "kms:Encrypt",
                 "Resource": "*"}


def test_unqualified_negated_deny_on_a_multivalued_key_denies_when_any_reading_does() -> None:
    """'Deny unless the context keys are Purpose': one reading (some value is not Purpose, as
    ForAnyValue) denies {Purpose, Evil}; the other (no value is Purpose) does not. Where AWS
    says nothing, a Deny applies under either reading."""
    policy = parse_policy(doc(ALLOW_ENCRYPT, {
        "Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
        "Condition": {"StringNotEquals": {"kms:EncryptionContextKeys": "Purpose"}}}))
    assert not evaluate(policy, _context_keys("Purpose", "Evil")).allowed
    assert not evaluate(policy, _context_keys("Evil")).allowed
    assert evaluate(policy, _context_keys("Purpose")).allowed
    # absent: a negated operator holds, as AWS documents, and the Deny applies
    assert not evaluate(policy, RequestContext("kms:Encrypt", ROLE, KEY, {})).allowed


def test_unqualified_allow_on_a_multivalued_key_allows_only_when_every_reading_does() -> None:
    policy = parse_policy(doc(ALLOW_ENCRYPT | {
        "Condition": {"StringEquals": {"kms:EncryptionContextKeys": "Purpose"}}}))
    assert not evaluate(policy, _context_keys("Purpose", "Evil")).allowed
    assert evaluate(policy, _context_keys("Purpose")).allowed
    negated = parse_policy(doc(ALLOW_ENCRYPT | {
        "Condition": {"StringNotEquals": {"kms:EncryptionContextKeys": "Secret"}}}))
    assert not evaluate(negated, _context_keys("Secret", "Other")).allowed
    assert evaluate(negated, _context_keys("Other", "Another")).allowed


# -- kms policy: measurements the operator reads one way and the command another ---------------

A0, A1, A2, B0 = ("a0" * 48, "a1" * 48, "a2" * 48, "b0" * 48)
_SET = f'{{"PCR0": "{A0}", "PCR1": "{A1}", "PCR2": "{A2}"'


@pytest.mark.parametrize("text", [
    # a reviewer reads the first PCR0, json.loads keeps the last
    f'{{"Measurements": {_SET}, "PCR0": "{B0}"}}}}',
    f'{{"Measurements": {_SET}}}, "Measurements": {{"PCR0": "{B0}", "PCR1": "{A1}", '
    f'"PCR2": "{A2}"}}}}',
])
def test_policy_refuses_measurements_with_duplicate_keys(
    text: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from nitro_attest._cli import main

    path = tmp_path / "build.json"
    path.write_text(text)
    rc = main(["kms", "policy", "--measurements", str(path), "--principal", ROLE])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "b0b0" not in out
    assert "duplicate" in err and err.count("\n") == 1


@pytest.mark.parametrize("principal", [
    f"arn:aws:iam::{ACCOUNT}:role/enclave/",  # no name: the exclusion would name nobody
    f"arn:aws:iam::{ACCOUNT}:role//enclave",
    f"arn:aws:iam::{ACCOUNT}:role/\u00e9nclave",  # IAM names are ASCII
])
def test_generator_refuses_principals_iam_cannot_name(principal: str) -> None:
    with pytest.raises(KeyPolicyError, match="expected an IAM role or user ARN"):
        enclave_key_policy(image_sha384=IMAGE, principal=principal)


def test_policy_refuses_measurements_nested_too_deeply(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from nitro_attest._cli import main

    path = tmp_path / "build.json"
    path.write_text("[" * 60000)  # under the 64 KiB cap; json.loads raises RecursionError
    rc = main(["kms", "policy", "--measurements", str(path), "--principal", ROLE])
    _, err = capsys.readouterr()
    assert rc == 2 and "nested too deeply" in err and err.count("\n") == 1


# -- evaluate: keys AWS puts in every request, that the caller did not supply --------------------

GUARDS = [
    {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}},  # the key expired
    {"Bool": {"aws:SecureTransport": "false"}},  # AWS's "deny plain HTTP" statement
    {"StringEquals": {"aws:PrincipalType": "AssumedRole"}},
    {"NumericGreaterThan": {"aws:EpochTime": "1577836800"}},
    {"Null": {"aws:RequestedRegion": "false"}},
]


@pytest.mark.parametrize("condition", GUARDS)
def test_deny_on_a_key_aws_always_supplies_applies_when_the_request_lacks_it(
    condition: dict[str, Any]
) -> None:
    """AWS has these keys in every request, so this Deny would apply there; a request context
    without them must not let the Deny lapse (the key's value is unknown, not absent)."""
    policy = parse_policy(doc(ALLOW_ENCRYPT, {
        "Sid": "Guard", "Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
        "Condition": condition}))
    decision = evaluate(policy, RequestContext("kms:Encrypt", ROLE, KEY, {}))
    assert not decision.allowed and "Guard" in decision.reason


@pytest.mark.parametrize("condition", [
    {"StringNotEquals": {"aws:PrincipalType": "Root"}},
    {"DateLessThanIfExists": {"aws:CurrentTime": "2999-01-01T00:00:00Z"}},
    {"ForAllValues:StringEquals": {"aws:RequestedRegion": "us-east-1"}},
    {"Null": {"aws:SecureTransport": "true"}},
])
def test_allow_on_a_key_aws_always_supplies_needs_its_value(condition: dict[str, Any]) -> None:
    policy = parse_policy(doc(ALLOW_ENCRYPT | {"Condition": condition}))
    assert not evaluate(policy, RequestContext("kms:Encrypt", ROLE, KEY, {})).allowed


def test_keys_aws_always_supplies_are_evaluated_when_given() -> None:
    policy = parse_policy(doc(ALLOW_ENCRYPT, {
        "Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}))
    https = {"aws:securetransport": ("true",)}
    assert evaluate(policy, RequestContext("kms:Encrypt", ROLE, KEY, https)).allowed
    plain = {"aws:securetransport": ("false",)}
    assert not evaluate(policy, RequestContext("kms:Encrypt", ROLE, KEY, plain)).allowed


@pytest.mark.parametrize("pcr", ["\u00b2", "\uff18", "1\u0663", "+1", " 1"])
def test_policy_pcr_index_is_ascii_digits(pcr: str, tmp_path: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """'²'.isdigit() is True and int('²') raises: an internal error instead of a usage line;
    other Unicode digits would name a PCR the operator did not type."""
    from nitro_attest._cli import main

    path = tmp_path / "build.json"
    path.write_text(json.dumps({"Measurements": {"PCR0": A0, "PCR1": A1, "PCR2": A2}}))
    rc = main(["kms", "policy", "--measurements", str(path), "--principal", ROLE, "--pcr", pcr])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "expected N or N=HEX" in err and err.count("\n") == 1


def test_encryption_context_names_differing_in_case_refused_even_when_merged_by_the_caller(
) -> None:
    """The emulator lower-cases context names into kms:EncryptionContext:<name> itself, so
    {"Dept": "secret", "dept": "public"} reaches evaluate as one key (the last value) and the
    documented refusal never triggered; kms:EncryptionContextKeys still lists both names."""
    policy = parse_policy(doc({
        "Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "kms:Decrypt", "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:dept": "public"}}}))
    merged = {"kms:encryptioncontext:dept": ("public",),
              "kms:encryptioncontextkeys": ("Dept", "dept")}
    decision = evaluate(policy, RequestContext("kms:Decrypt", ROLE, KEY, merged))
    assert not decision.allowed and "case" in decision.reason
    single = {"kms:encryptioncontext:dept": ("public",), "kms:encryptioncontextkeys": ("dept",)}
    assert evaluate(policy, RequestContext("kms:Decrypt", ROLE, KEY, single)).allowed


# -- lint-policy: a measurement pinned to zeros measures nothing ---------------------------------

@pytest.mark.parametrize(("key", "what"), [
    ("PCR8", "unsigned"),  # every image built without a signing certificate
    ("NitroTPMPCR7", "zero"),
])
def test_lint_zero_measurement_does_not_bind(key: str, what: str) -> None:
    values = {f"kms:RecipientAttestation:{key}": ZEROS}
    if not key.startswith("NitroTPM"):
        values["kms:RecipientAttestation:PCR16"] = ZEROS
    findings = lint_policy(parse_policy(doc(enclave({"StringEqualsIgnoreCase": values}))))
    assert "unattested-grant" in [f.code for f in findings]
    assert any(f.code == "debug-image" and what in f.message for f in findings)


def test_lint_pcr1_and_pcr2_zero_are_a_debug_image() -> None:
    values = {"kms:RecipientAttestation:PCR1": ZEROS, "kms:RecipientAttestation:PCR2": ZEROS,
              "kms:RecipientAttestation:PCR16": ZEROS}
    got = codes(doc(enclave({"StringEqualsIgnoreCase": values})))
    assert "unattested-grant" in got and got.count("debug-image") == 2


def test_lint_zero_among_the_values_unbinds_the_condition() -> None:
    values = {"kms:RecipientAttestation:PCR8": [IMAGE, ZEROS],
              "kms:RecipientAttestation:PCR16": ZEROS}
    assert "unattested-grant" in codes(doc(enclave({"StringEqualsIgnoreCase": values})))
