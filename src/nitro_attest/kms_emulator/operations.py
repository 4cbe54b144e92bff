"""KMS's operations over the emulator's state: one function per X-Amz-Target.

Each takes the authenticated principal and the request's JSON members and returns the response's
members, or raises KmsApiError as KMS would answer. Order inside an operation, as on AWS: find the
key, check the request, verify a Recipient document (its PCRs are condition keys), evaluate the
key policy, and only then touch key material. With a Recipient, the secret leaves only inside
CiphertextForRecipient and the plaintext field is absent.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nitro_attest.kms_emulator import access
from nitro_attest.kms_emulator.auth import Principal
from nitro_attest.kms_emulator.blob import MAX_BLOB_BYTES, BlobError, open_blob, read_header, seal
from nitro_attest.kms_emulator.envelope import seal_for_recipient
from nitro_attest.kms_emulator.errors import KmsApiError, not_found, validation
from nitro_attest.kms_emulator.recipient import Recipient, RecipientVerifier
from nitro_attest.kms_emulator.store import AliasRecord, KeyRecord, StateStore
from nitro_attest.safe_write import UnsafeFolderError

Params = Mapping[str, Any]
Response = dict[str, Any]

SYMMETRIC = "SYMMETRIC_DEFAULT"
ECC_P256 = "ECC_NIST_P256"
KEY_SPECS = {SYMMETRIC: "ENCRYPT_DECRYPT", ECC_P256: "KEY_AGREEMENT"}
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
MAX_PLAINTEXT = 4096
MAX_RANDOM = 1024
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ALIAS_NAME = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,250}$")
_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):key/(.+)$")
_ALIAS_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):(alias/.+)$")
_CURVES: dict[str, ec.EllipticCurve] = {
    "ECC_NIST_P256": ec.SECP256R1(),
    "ECC_NIST_P384": ec.SECP384R1(),
    "ECC_NIST_P521": ec.SECP521R1(),
    "ECC_SECG_P256K1": ec.SECP256K1(),
}
_RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- request members ------------------------------------------------------------------------


def _string(
    params: Params, name: str, *, required: bool = False, max_len: int = 2048
) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise validation(
                f"1 validation error detected: Value null at '{_camel(name)}' failed "
                "to satisfy constraint: Member must not be null"
            )
        return None
    if not isinstance(value, str):
        raise KmsApiError("SerializationException", f"{name} must be a string")
    if not 1 <= len(value) <= max_len:
        raise validation(
            f"1 validation error detected: Value at '{_camel(name)}' failed to "
            f"satisfy constraint: Member must have length between 1 and {max_len}"
        )
    return value


def _required(params: Params, name: str, max_len: int = 2048) -> str:
    value = _string(params, name, required=True, max_len=max_len)
    assert value is not None
    return value


def _blob(params: Params, name: str, *, max_len: int, required: bool = True) -> bytes | None:
    value = params.get(name)
    if value is None:
        if required:
            raise validation(
                f"1 validation error detected: Value null at '{_camel(name)}' failed "
                "to satisfy constraint: Member must not be null"
            )
        return None
    if not isinstance(value, str) or len(value) > (max_len + 2) // 3 * 4:
        raise KmsApiError(
            "SerializationException", f"{name} must be base64 of at most {max_len} bytes"
        )
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KmsApiError("SerializationException", f"{name} is not valid base64") from None
    if not 1 <= len(data) <= max_len:
        raise validation(
            f"1 validation error detected: Value at '{_camel(name)}' failed to "
            f"satisfy constraint: Member must have length between 1 and {max_len}"
        )
    return data


def _integer(params: Params, name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise KmsApiError("SerializationException", f"{name} must be an integer")
    if not low <= value <= high:
        raise validation(
            f"1 validation error detected: Value '{value}' at '{_camel(name)}' "
            f"failed to satisfy constraint: Member must have value between {low} "
            f"and {high}"
        )
    return value


def _context(params: Params) -> dict[str, str]:
    value = params.get("EncryptionContext")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise KmsApiError(
            "SerializationException", "EncryptionContext must be a map of strings to strings"
        )
    if any(not k for k in value):
        raise validation("EncryptionContext keys must not be empty")
    if len({k.lower() for k in value}) != len(value):
        # Condition key names are case-insensitive: two keys that differ only in case would give
        # one condition key two values. Refused rather than guessed (docs/kms.md).
        raise validation(
            "EncryptionContext has two keys that differ only in case; the emulator "
            "refuses them (its condition keys are case-insensitive)"
        )
    if sum(len(k.encode()) + len(v.encode()) for k, v in value.items()) > 8192:
        raise validation("EncryptionContext is larger than 8192 bytes")
    return dict(value)


def _enum(params: Params, name: str, allowed: Mapping[str, Any] | tuple[str, ...]) -> str | None:
    value = _string(params, name, max_len=64)
    if value is not None and value not in allowed:
        raise validation(
            f"1 validation error detected: Value '{value}' at '{_camel(name)}' "
            f"failed to satisfy constraint: Member must satisfy enum value set: "
            f"[{', '.join(allowed)}]"
        )
    return value


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


# --- the emulator ---------------------------------------------------------------------------


Handler = Callable[["Emulator", Principal, Params], Response]


@dataclass
class Emulator:
    store: StateStore
    recipients: RecipientVerifier
    region: str
    clock: Callable[[], float] = time.time
    policies: access.PolicyCache = field(default_factory=access.PolicyCache)

    def call(self, operation: str, principal: Principal, params: Params) -> Response:
        handler = OPERATIONS.get(operation)
        if handler is None:
            raise KmsApiError("UnknownOperationException", "")
        return handler(self, principal, params)

    # -- state helpers

    def _commit(self, undo: Callable[[], object]) -> None:
        try:
            self.store.save()
        except (OSError, UnsafeFolderError) as exc:  # a full disk, a folder opened to others
            undo()
            reason = exc.message if isinstance(exc, UnsafeFolderError) else exc.strerror or exc
            raise KmsApiError(
                "KMSInternalException",
                f"the emulator could not save its state: {reason}",
                status=500,
            ) from None

    def resolve(self, principal: Principal, key_id: str, *, aliases: bool = True) -> KeyRecord:
        keys = self.store.state.keys
        match = _KEY_ARN.match(key_id)
        if match:
            region, account, kid = match.groups()
            key = keys.get(kid)
            if key is None or key.account != account or key.region != region:
                raise not_found(f"Key '{key_id}' does not exist")
            return key
        alias_match = _ALIAS_ARN.match(key_id)
        if alias_match or key_id.startswith("alias/"):
            if not aliases:
                raise validation(f"'{key_id}' is an alias; this operation takes a key id or ARN")
            if alias_match:
                region, account, name = alias_match.groups()
            else:
                region, account, name = self.region, principal.account, key_id
            alias = self.store.state.aliases.get((account, region, name))
            if alias is None:
                raise not_found(f"Alias arn:aws:kms:{region}:{account}:{name} is not found.")
            return keys[alias.target]
        if not _UUID.match(key_id):
            raise not_found(f"Invalid keyId '{key_id[:64]}'")
        key = keys.get(key_id)
        if key is None or key.account != principal.account or key.region != self.region:
            raise not_found(
                f"Key 'arn:aws:kms:{self.region}:{principal.account}:key/{key_id}' does not exist"
            )
        return key

    def recipient(self, params: Params) -> Recipient | None:
        value = params.get("Recipient")
        return None if value is None else self.recipients.parse(value)

    def authorize(
        self,
        principal: Principal,
        action: str,
        key: KeyRecord,
        context: Mapping[str, str] | None = None,
        recipient: Recipient | None = None,
    ) -> None:
        keys = access.request_keys(principal, context, recipient)
        access.authorize(self.policies, principal, f"kms:{action}", key, keys)


def _dry_run(params: Params) -> None:
    if params.get("DryRun") is True:
        raise KmsApiError(
            "DryRunOperationException",
            "The request would have succeeded, but the DryRun option is set.",
        )


def _secret(
    response: Response, field_name: str, secret: bytes, recipient: Recipient | None
) -> Response:
    """Put ``secret`` in ``field_name``, or, with a Recipient, only inside the CMS envelope."""
    if recipient is None:
        response[field_name] = _b64(secret)
    else:
        envelope = seal_for_recipient(secret, recipient.public_key, ski=recipient.subject_key_id)
        response["CiphertextForRecipient"] = _b64(envelope)
    return response


def _metadata(key: KeyRecord) -> Response:
    meta: Response = {
        "AWSAccountId": key.account,
        "KeyId": key.key_id,
        "Arn": key.arn,
        "CreationDate": key.created,
        "Enabled": True,
        "Description": key.description,
        "KeyUsage": key.key_usage,
        "KeyState": "Enabled",
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": key.key_spec,
        "KeySpec": key.key_spec,
        "MultiRegion": False,
    }
    if key.key_spec == SYMMETRIC:
        meta["EncryptionAlgorithms"] = [SYMMETRIC]
    else:
        meta["KeyAgreementAlgorithms"] = ["ECDH"]
    return meta


def _symmetric(key: KeyRecord) -> KeyRecord:
    if key.key_spec != SYMMETRIC:
        raise KmsApiError(
            "InvalidKeyUsageException",
            f"{key.arn} key usage is {key.key_usage} which is not valid for this operation.",
        )
    return key


def _check_algorithm(params: Params) -> None:
    _enum(
        params,
        "EncryptionAlgorithm",
        (SYMMETRIC, "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"),
    )
    if params.get("EncryptionAlgorithm", SYMMETRIC) != SYMMETRIC:
        raise KmsApiError(
            "InvalidKeyUsageException",
            "the requested EncryptionAlgorithm is not valid for this key",
        )


# --- key management -------------------------------------------------------------------------


def create_key(kms: Emulator, principal: Principal, params: Params) -> Response:
    spec = (
        _string(params, "KeySpec", max_len=64)
        or _string(params, "CustomerMasterKeySpec", max_len=64)
        or SYMMETRIC
    )
    if spec not in KEY_SPECS:
        raise KmsApiError(
            "UnsupportedOperationException",
            f"KeySpec {spec} is not supported by the emulator (it has {', '.join(KEY_SPECS)})",
        )
    usage = _string(params, "KeyUsage", max_len=64) or "ENCRYPT_DECRYPT"
    if usage != KEY_SPECS[spec]:
        raise validation(f"KeyUsage {usage} is not compatible with KeySpec {spec}")
    if params.get("Origin", "AWS_KMS") != "AWS_KMS" or params.get("MultiRegion") is True:
        raise KmsApiError(
            "UnsupportedOperationException", "the emulator makes only single-region AWS_KMS keys"
        )
    if params.get("CustomKeyStoreId") is not None or params.get("XksKeyId") is not None:
        raise KmsApiError("UnsupportedOperationException", "custom key stores are not emulated")
    description = _string(params, "Description", max_len=8192) or ""
    policy_text = _string(params, "Policy", max_len=131072)
    key_id = str(uuid.uuid4())
    arn = f"arn:aws:kms:{kms.region}:{principal.account}:key/{key_id}"
    if policy_text is None:
        policy_text = access.default_policy(principal.account)
    else:
        policy = access.check_policy_text(policy_text)
        if params.get("BypassPolicyLockoutSafetyCheck") is not True and not access.allowed(
            policy, principal, "kms:PutKeyPolicy", arn
        ):
            raise _lockout()
    if spec == SYMMETRIC:
        material = os.urandom(32)
    else:
        material = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    key = KeyRecord(
        key_id,
        principal.account,
        kms.region,
        kms.clock(),
        description,
        spec,
        usage,
        policy_text,
        material,
    )
    kms.store.state.keys[key_id] = key
    kms._commit(lambda: kms.store.state.keys.pop(key_id, None))
    return {"KeyMetadata": _metadata(key)}


def _lockout() -> KmsApiError:
    return KmsApiError(
        "MalformedPolicyDocumentException",
        "The new key policy will not allow you to update the key policy in the future.",
    )


def describe_key(kms: Emulator, principal: Principal, params: Params) -> Response:
    key = kms.resolve(principal, _required(params, "KeyId"))
    kms.authorize(principal, "DescribeKey", key)
    return {"KeyMetadata": _metadata(key)}


def list_keys(kms: Emulator, principal: Principal, params: Params) -> Response:
    # IAM governs ListKeys on AWS; the emulator lists the caller's account's keys.
    limit = _integer(params, "Limit", 1, 1000) or 100
    marker = _string(params, "Marker", max_len=1024)
    keys = sorted(
        (
            k
            for k in kms.store.state.keys.values()
            if k.account == principal.account and k.region == kms.region
        ),
        key=lambda k: (k.created, k.key_id),
    )
    start = _marker_start(marker, [k.key_id for k in keys])
    page = keys[start : start + limit]
    response: Response = {
        "Keys": [{"KeyId": k.key_id, "KeyArn": k.arn} for k in page],
        "Truncated": start + limit < len(keys),
    }
    if response["Truncated"]:
        response["NextMarker"] = page[-1].key_id
    return response


def _marker_start(marker: str | None, ids: list[str]) -> int:
    if marker is None:
        return 0
    try:
        return ids.index(marker) + 1
    except ValueError:
        raise KmsApiError("InvalidMarkerException", "Invalid marker") from None


def get_key_policy(kms: Emulator, principal: Principal, params: Params) -> Response:
    key = kms.resolve(principal, _required(params, "KeyId"), aliases=False)
    name = _string(params, "PolicyName", max_len=128) or "default"
    kms.authorize(principal, "GetKeyPolicy", key)
    if name != "default":
        raise not_found(f"Policy {name} not found")
    return {"Policy": key.policy, "PolicyName": "default"}


def put_key_policy(kms: Emulator, principal: Principal, params: Params) -> Response:
    key = kms.resolve(principal, _required(params, "KeyId"), aliases=False)
    name = _string(params, "PolicyName", max_len=128) or "default"
    text = _required(params, "Policy", max_len=131072)
    kms.authorize(principal, "PutKeyPolicy", key)
    if name != "default":
        raise not_found(f"Policy {name} not found")
    policy = access.check_policy_text(text)
    if params.get("BypassPolicyLockoutSafetyCheck") is not True and not access.allowed(
        policy, principal, "kms:PutKeyPolicy", key.arn
    ):
        raise _lockout()
    old = key.policy
    key.policy = text

    def undo() -> None:
        key.policy = old

    kms._commit(undo)
    return {}


def create_alias(kms: Emulator, principal: Principal, params: Params) -> Response:
    name = _required(params, "AliasName", max_len=256)
    if not _ALIAS_NAME.match(name):
        raise validation(f"Alias name {name[:256]!r} must match alias/[a-zA-Z0-9/_-]+")
    if name.startswith("alias/aws/"):
        raise KmsApiError(
            "NotAuthorizedException",
            "The alias prefix alias/aws/ is reserved for AWS managed keys.",
        )
    key = kms.resolve(principal, _required(params, "TargetKeyId"), aliases=False)
    kms.authorize(principal, "CreateAlias", key)
    slot = (principal.account, kms.region, name)
    aliases = kms.store.state.aliases
    if slot in aliases:
        raise KmsApiError(
            "AlreadyExistsException",
            f"An alias with the name arn:aws:kms:{kms.region}:{principal.account}:"
            f"{name} already exists",
        )
    if key.account != principal.account:
        raise KmsApiError(
            "AccessDeniedException", "an alias must point at a key of the caller's own account"
        )
    aliases[slot] = AliasRecord(name, principal.account, kms.region, key.key_id, kms.clock())
    kms._commit(lambda: aliases.pop(slot, None))
    return {}


def list_aliases(kms: Emulator, principal: Principal, params: Params) -> Response:
    limit = _integer(params, "Limit", 1, 100) or 50
    marker = _string(params, "Marker", max_len=1024)
    key_filter = _string(params, "KeyId")
    target = kms.resolve(principal, key_filter, aliases=False).key_id if key_filter else None
    found = sorted(
        (
            a
            for a in kms.store.state.aliases.values()
            if a.account == principal.account
            and a.region == kms.region
            and (target is None or a.target == target)
        ),
        key=lambda a: a.name,
    )
    start = _marker_start(marker, [a.name for a in found])
    page = found[start : start + limit]
    response: Response = {
        "Aliases": [
            {
                "AliasName": a.name,
                "AliasArn": a.arn,
                "TargetKeyId": a.target,
                "CreationDate": a.created,
                "LastUpdatedDate": a.created,
            }
            for a in page
        ],
        "Truncated": start + limit < len(found),
    }
    if response["Truncated"]:
        response["NextMarker"] = page[-1].name
    return response


def get_public_key(kms: Emulator, principal: Principal, params: Params) -> Response:
    key = kms.resolve(principal, _required(params, "KeyId"))
    kms.authorize(principal, "GetPublicKey", key)
    if key.key_spec == SYMMETRIC:
        raise KmsApiError(
            "UnsupportedOperationException",
            f"{key.arn} key usage is ENCRYPT_DECRYPT which is not valid for GetPublicKey.",
        )
    private = _ecc_private(key)
    return {
        "KeyId": key.arn,
        "PublicKey": _b64(
            private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ),
        "CustomerMasterKeySpec": key.key_spec,
        "KeySpec": key.key_spec,
        "KeyUsage": key.key_usage,
        "KeyAgreementAlgorithms": ["ECDH"],
    }


def _ecc_private(key: KeyRecord) -> ec.EllipticCurvePrivateKey:
    private = serialization.load_der_private_key(key.material, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return private


# --- cryptographic operations ---------------------------------------------------------------


def encrypt(kms: Emulator, principal: Principal, params: Params) -> Response:
    key = _symmetric(kms.resolve(principal, _required(params, "KeyId")))
    plaintext = _blob(params, "Plaintext", max_len=MAX_PLAINTEXT)
    assert plaintext is not None
    context = _context(params)
    _check_algorithm(params)
    kms.authorize(principal, "Encrypt", key, context)
    _dry_run(params)
    return {
        "CiphertextBlob": _b64(seal(key.material, key.key_id, plaintext, context)),
        "KeyId": key.arn,
        "EncryptionAlgorithm": SYMMETRIC,
    }


def decrypt(kms: Emulator, principal: Principal, params: Params) -> Response:
    blob = _blob(params, "CiphertextBlob", max_len=MAX_BLOB_BYTES)
    assert blob is not None
    context = _context(params)
    _check_algorithm(params)
    try:
        header = read_header(blob)
    except BlobError:
        raise KmsApiError("InvalidCiphertextException", "") from None
    key = kms.store.state.keys.get(header.key_id)
    if key is None:
        raise KmsApiError("InvalidCiphertextException", "")
    requested = _string(params, "KeyId")
    if requested is not None and kms.resolve(principal, requested).key_id != key.key_id:
        raise KmsApiError(
            "IncorrectKeyException",
            "The key ID in the request does not identify a CMK that can perform this operation.",
        )
    _symmetric(key)
    recipient = kms.recipient(params)
    kms.authorize(principal, "Decrypt", key, context, recipient)
    _dry_run(params)
    try:
        plaintext = open_blob(key.material, header, context)
    except BlobError:
        raise KmsApiError("InvalidCiphertextException", "") from None
    response: Response = {"KeyId": key.arn, "EncryptionAlgorithm": SYMMETRIC}
    return _secret(response, "Plaintext", plaintext, recipient)


def _data_key_length(params: Params) -> int:
    spec = _enum(params, "KeySpec", DATA_KEY_SPECS)
    count = _integer(params, "NumberOfBytes", 1, 1024)
    if (spec is None) == (count is None):
        raise validation("Please specify either number of bytes or key spec.")
    return DATA_KEY_SPECS[spec] if spec is not None else count  # type: ignore[return-value]


def generate_data_key(kms: Emulator, principal: Principal, params: Params) -> Response:
    return _generate_data_key(kms, principal, params, "GenerateDataKey", with_plaintext=True)


def generate_data_key_without_plaintext(
    kms: Emulator, principal: Principal, params: Params
) -> Response:
    return _generate_data_key(
        kms, principal, params, "GenerateDataKeyWithoutPlaintext", with_plaintext=False
    )


def _generate_data_key(
    kms: Emulator, principal: Principal, params: Params, action: str, *, with_plaintext: bool
) -> Response:
    key = _symmetric(kms.resolve(principal, _required(params, "KeyId")))
    length = _data_key_length(params)
    context = _context(params)
    recipient = kms.recipient(params) if with_plaintext else None
    if not with_plaintext and "Recipient" in params:
        raise validation("GenerateDataKeyWithoutPlaintext takes no Recipient")
    kms.authorize(principal, action, key, context, recipient)
    _dry_run(params)
    data_key = os.urandom(length)
    response: Response = {
        "CiphertextBlob": _b64(seal(key.material, key.key_id, data_key, context)),
        "KeyId": key.arn,
    }
    return _secret(response, "Plaintext", data_key, recipient) if with_plaintext else response


def generate_data_key_pair(kms: Emulator, principal: Principal, params: Params) -> Response:
    return _generate_pair(kms, principal, params, "GenerateDataKeyPair", with_plaintext=True)


def generate_data_key_pair_without_plaintext(
    kms: Emulator, principal: Principal, params: Params
) -> Response:
    return _generate_pair(
        kms, principal, params, "GenerateDataKeyPairWithoutPlaintext", with_plaintext=False
    )


def _generate_pair(
    kms: Emulator, principal: Principal, params: Params, action: str, *, with_plaintext: bool
) -> Response:
    key = _symmetric(kms.resolve(principal, _required(params, "KeyId")))
    spec = _enum(params, "KeyPairSpec", {**_RSA_BITS, **_CURVES, "SM2": None})
    if spec is None:
        _required(params, "KeyPairSpec")
    assert spec is not None
    if spec == "SM2":
        raise KmsApiError("UnsupportedOperationException", "SM2 is only offered in China")
    context = _context(params)
    recipient = kms.recipient(params) if with_plaintext else None
    if not with_plaintext and "Recipient" in params:
        raise validation(f"{action} takes no Recipient")
    kms.authorize(principal, action, key, context, recipient)
    _dry_run(params)
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if spec in _RSA_BITS:
        private = rsa.generate_private_key(65537, _RSA_BITS[spec])
    else:
        private = ec.generate_private_key(_CURVES[spec])
    private_der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    response: Response = {
        "PrivateKeyCiphertextBlob": _b64(seal(key.material, key.key_id, private_der, context)),
        "PublicKey": _b64(public_der),
        "KeyId": key.arn,
        "KeyPairSpec": spec,
    }
    if with_plaintext:
        _secret(response, "PrivateKeyPlaintext", private_der, recipient)
    return response


def generate_random(kms: Emulator, principal: Principal, params: Params) -> Response:
    # IAM governs GenerateRandom on AWS (no key, so no key policy): the emulator, having no IAM,
    # lets every authenticated caller have random bytes (docs/kms.md).
    count = _integer(params, "NumberOfBytes", 1, MAX_RANDOM)
    if count is None:
        raise validation("NumberOfBytes is required")
    if params.get("CustomKeyStoreId") is not None:
        raise KmsApiError("UnsupportedOperationException", "custom key stores are not emulated")
    recipient = kms.recipient(params)
    return _secret({}, "Plaintext", os.urandom(count), recipient)


def derive_shared_secret(kms: Emulator, principal: Principal, params: Params) -> Response:
    key = kms.resolve(principal, _required(params, "KeyId"))
    algorithm = _required(params, "KeyAgreementAlgorithm", max_len=16)
    if algorithm != "ECDH":
        raise validation(f"KeyAgreementAlgorithm {algorithm[:16]!r} is not ECDH")
    peer_der = _blob(params, "PublicKey", max_len=8192)
    assert peer_der is not None
    if key.key_usage != "KEY_AGREEMENT":
        raise KmsApiError(
            "InvalidKeyUsageException",
            f"{key.arn} key usage is {key.key_usage} which is not valid for DeriveSharedSecret.",
        )
    try:
        peer = serialization.load_der_public_key(peer_der)
    except (ValueError, TypeError):
        raise validation("PublicKey is not a DER SubjectPublicKeyInfo") from None
    private = _ecc_private(key)
    if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != private.curve.name:
        raise validation(f"PublicKey must be an EC key on the curve of {key.key_spec}")
    recipient = kms.recipient(params)
    kms.authorize(principal, "DeriveSharedSecret", key, None, recipient)
    _dry_run(params)
    secret = private.exchange(ec.ECDH(), peer)
    response: Response = {"KeyId": key.arn, "KeyAgreementAlgorithm": "ECDH", "KeyOrigin": "AWS_KMS"}
    return _secret(response, "SharedSecret", secret, recipient)


OPERATIONS: dict[str, Handler] = {
    "CreateKey": create_key,
    "DescribeKey": describe_key,
    "ListKeys": list_keys,
    "GetKeyPolicy": get_key_policy,
    "PutKeyPolicy": put_key_policy,
    "CreateAlias": create_alias,
    "ListAliases": list_aliases,
    "GetPublicKey": get_public_key,
    "Encrypt": encrypt,
    "Decrypt": decrypt,
    "GenerateDataKey": generate_data_key,
    "GenerateDataKeyWithoutPlaintext": generate_data_key_without_plaintext,
    "GenerateDataKeyPair": generate_data_key_pair,
    "GenerateDataKeyPairWithoutPlaintext": generate_data_key_pair_without_plaintext,
    "GenerateRandom": generate_random,
    "DeriveSharedSecret": derive_shared_secret,
}
