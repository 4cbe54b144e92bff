"""enclave_key_policy: the key policy that binds a KMS key to one enclave image (pure).

Two statements. The administrators manage the key and never use it (no cryptographic action, no
CreateGrant: a grant would let them hand Decrypt to anyone without attestation), and are never the
enclave's principal, whatever IAM says (whoever holds its credentials, the parent, would rewrite
the policy). The enclave's
principal may call the Recipient operations only when the request carries an attestation
document whose PCR0 (``ImageSha384``) and chosen PCRs equal the image's, and whose PCR16 is all
zero: an enclave that signs public keys chosen by its callers (``serve
--allow-caller-public-key``) marks PCR16 (``attestation.caller_keys``), and a document naming a
caller's key must never release a KMS secret to that caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from nitro_attest.attestation.caller_keys import CALLER_KEY_PCR, PRISTINE_PCR_VALUE
from nitro_attest.kms.keypolicy.keys import ENCLAVE_PCRS, PCR_HEX_LENGTH
from nitro_attest.kms.keypolicy.model import KeyPolicyError

# The operations that accept Recipient, hence the only ones an attestation condition can allow.
RECIPIENT_OPERATIONS = (
    "Decrypt", "GenerateDataKey", "GenerateDataKeyPair", "GenerateRandom", "DeriveSharedSecret",
)
# DeriveSharedSecret needs an ECC key-agreement key; a SYMMETRIC_DEFAULT key does the others.
DEFAULT_OPERATIONS = ("Decrypt", "GenerateDataKey", "GenerateDataKeyPair", "GenerateRandom")

# Key administration without any cryptographic operation and without CreateGrant.
ADMIN_ACTIONS = (
    "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy", "kms:ListKeyPolicies",
    "kms:GetKeyRotationStatus", "kms:EnableKeyRotation", "kms:DisableKeyRotation",
    "kms:RotateKeyOnDemand", "kms:ListKeyRotations", "kms:EnableKey", "kms:DisableKey",
    "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:TagResource", "kms:UntagResource",
    "kms:ListResourceTags", "kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias",
    "kms:UpdateKeyDescription", "kms:ListGrants", "kms:RevokeGrant",
)

# Encrypting to the key releases nothing: data producers (the parent, a CI job) may do it.
ENCRYPT_ACTIONS = ("kms:Encrypt", "kms:GenerateDataKeyWithoutPlaintext")

ENCRYPT_SID = "Encrypt only, for data producers: nothing in this statement decrypts"
ADMIN_SID = "Key administration only, no cryptographic operation and no grants"
ENCLAVE_SID = (
    "Enclave use only with attestation of this image and PCR16 all zero, never from an enclave "
    "that signs caller-chosen keys"
)

# IAM's names and path segments: ASCII, non-empty; the name (after the last /) names the role.
_NAME = r"([A-Za-z0-9_+=,.@-]+/)*[A-Za-z0-9_+=,.@-]+"
_PRINCIPAL = re.compile(rf"arn:aws(-[a-z]+)*:iam::[0-9]{{12}}:(role|user)/{_NAME}")
_ADMIN = re.compile(rf"arn:aws(-[a-z]+)*:iam::[0-9]{{12}}:((role|user)/{_NAME}|root)")
_HEX = re.compile(f"[0-9a-f]{{{PCR_HEX_LENGTH}}}")


def account_root(principal: str) -> str:
    """``arn:P:iam::ACCOUNT:root`` of an IAM principal ARN."""
    parts = principal.split(":")
    return f"{':'.join(parts[:2])}:iam::{parts[4]}:root"


def principal_identity(arn: str) -> tuple[str, ...]:
    """What IAM tells principals apart by: partition, account, resource type (role or user) and
    the name without its path, lower-cased (IAM refuses two roles, or two users, whose names
    differ only in case or path). An STS assumed-role session is its role."""
    parts = arn.split(":", 5)
    if len(parts) != 6:
        return (arn,)
    resource = parts[5]
    if parts[2] == "sts" and resource.startswith("assumed-role/"):
        pieces = resource.split("/")
        if len(pieces) == 3:
            return (parts[1], parts[4], "role", pieces[1].lower())
    resource_type, _, rest = resource.partition("/")
    if resource_type in ("role", "user") and rest:
        return (parts[1], parts[4], resource_type, rest.rsplit("/", 1)[-1].lower())
    return (parts[1], parts[4], resource)


def _not_the_enclave(principal: str) -> dict[str, Any]:
    """The administrators' condition: never the enclave's role (nor its sessions). The default
    administrator, the account root, covers every principal of the account that IAM lets in, the
    enclave role included when its IAM policy says ``kms:*`` (and in the emulator, which has no
    IAM, always): with ``PutKeyPolicy`` whoever holds the role's credentials, the parent, would
    drop the attestation condition. ``aws:PrincipalArn`` is a role's ARN for its sessions too,
    with its path (AWS) or without it (the session ARN has none): both are listed."""
    partition, account, resource_type, _ = principal_identity(principal)
    name = principal.rsplit("/", 1)[-1]
    head = f"arn:{partition}:iam::{account}:{resource_type}/"
    values = sorted({principal, f"{head}{name}", f"{head}*/{name}"})
    return {"ArnNotLike": {"aws:PrincipalArn": values}}


def enclave_key_policy(
    *,
    image_sha384: str,
    principal: str,
    admins: Sequence[str] = (),
    pcrs: Mapping[int, str] | None = None,
    operations: Sequence[str] = DEFAULT_OPERATIONS,
    encryptors: Sequence[str] = (),
) -> dict[str, Any]:
    """The policy as a JSON-ready dict. ``image_sha384`` is PCR0 and ``pcrs`` the other pinned
    PCRs, lower-case hex; ``admins`` default to the principal's account root (the account's IAM
    then decides who administers, as in AWS's default key policy, but never who decrypts);
    ``encryptors`` may Encrypt to the key (a third statement), which reveals nothing."""
    if not _PRINCIPAL.fullmatch(principal):
        raise KeyPolicyError(f"principal {principal[:80]!r}: expected an IAM role or user ARN "
                             "(arn:aws:iam::ACCOUNT:role/NAME), the enclave instance's role")
    for role, names in (("admin", admins), ("encryptor", encryptors)):
        for name in names:
            if not _ADMIN.fullmatch(name):
                raise KeyPolicyError(f"{role} {name[:80]!r}: expected an IAM role, user or "
                                     "account root ARN")
    if any(principal_identity(a) == principal_identity(principal) for a in admins):
        raise KeyPolicyError("the enclave principal cannot also be an administrator (it could "
                             "rewrite the policy and drop the attestation condition)")
    chosen = _operations(operations)
    values = {"kms:RecipientAttestation:ImageSha384": _hex("ImageSha384 (PCR0)", image_sha384)}
    for index, value in sorted((pcrs or {}).items()):
        if index not in ENCLAVE_PCRS:
            raise KeyPolicyError(f"PCR{index}: an enclave has PCR0 to PCR31")
        if index == CALLER_KEY_PCR:
            raise KeyPolicyError(f"PCR{index} is always pinned to all zero (caller-chosen keys)")
        values[f"kms:RecipientAttestation:PCR{index}"] = _hex(f"PCR{index}", value)
    values[f"kms:RecipientAttestation:PCR{CALLER_KEY_PCR}"] = PRISTINE_PCR_VALUE.hex()
    statements: list[dict[str, Any]] = [
        {
            "Sid": ADMIN_SID,
            "Effect": "Allow",
            "Principal": {"AWS": list(admins) if admins else account_root(principal)},
            "Action": list(ADMIN_ACTIONS),
            "Resource": "*",
            "Condition": _not_the_enclave(principal),
        },
        {
            "Sid": ENCLAVE_SID,
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": [f"kms:{op}" for op in chosen],
            "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": values},
        },
    ]
    if encryptors:
        statements.append({
            "Sid": ENCRYPT_SID,
            "Effect": "Allow",
            "Principal": {"AWS": list(encryptors)},
            "Action": list(ENCRYPT_ACTIONS),
            "Resource": "*",
        })
    return {"Version": "2012-10-17", "Id": "nitro-attest-enclave-key-policy",
            "Statement": statements}


def _operations(operations: Sequence[str]) -> list[str]:
    by_name = {op.lower(): op for op in RECIPIENT_OPERATIONS}
    chosen: list[str] = []
    for raw in operations:
        name = raw.strip().removeprefix("kms:").lower()
        if name not in by_name:
            raise KeyPolicyError(
                f"operation {raw[:40]!r}: only the operations that take a Recipient can be "
                f"bound to attestation ({', '.join(RECIPIENT_OPERATIONS)})")
        if by_name[name] not in chosen:
            chosen.append(by_name[name])
    if not chosen:
        raise KeyPolicyError("no operation chosen (an empty grant is not a policy)")
    return chosen


def _hex(what: str, value: str) -> str:
    text = value.lower()
    if not _HEX.fullmatch(text):
        raise KeyPolicyError(f"{what}: expected {PCR_HEX_LENGTH} hex digits, got {value[:40]!r}")
    if what.startswith("ImageSha384") and text == "0" * PCR_HEX_LENGTH:
        raise KeyPolicyError("ImageSha384 (PCR0) is all zero: that is a debug-mode enclave, "
                             "whose documents prove nothing")
    return text
