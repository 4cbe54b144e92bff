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
