"""The condition keys a KMS key policy may name: their canonical spelling, type and arity.

AWS compares condition key names case-insensitively, so the table is indexed by the lower-cased
name. Keys with a suffix chosen by the user (``kms:EncryptionContext:<key>``,
``aws:PrincipalTag/<tag>``) are prefixes; the attestation PCR keys are numbered families. Sources:
AWS KMS developer guide ("AWS KMS condition keys", "Condition keys for Nitro Enclaves", "Condition
keys for NitroTPM") and IAM's "AWS global condition context keys".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

KeyType = Literal["string", "arn", "bool", "numeric", "date", "ip", "binary"]


@dataclass(frozen=True)
class KnownKey:
    name: str  # canonical spelling
    type: KeyType
    multivalued: bool = False


def _table(*keys: KnownKey) -> dict[str, KnownKey]:
    return {k.name.lower(): k for k in keys}


_S: KeyType = "string"
_A: KeyType = "arn"
_B: KeyType = "bool"
_N: KeyType = "numeric"
_D: KeyType = "date"
_I: KeyType = "ip"

KNOWN_KEYS: dict[str, KnownKey] = _table(
    # AWS KMS
    KnownKey("kms:BypassPolicyLockoutSafetyCheck", _B),
    KnownKey("kms:CallerAccount", _S),
    KnownKey("kms:CustomerMasterKeySpec", _S),
    KnownKey("kms:CustomerMasterKeyUsage", _S),
    KnownKey("kms:DataKeyPairSpec", _S),
    KnownKey("kms:EncryptionAlgorithm", _S),
    KnownKey("kms:EncryptionContextKeys", _S, multivalued=True),
    KnownKey("kms:ExpirationModel", _S),
    KnownKey("kms:GrantConstraintType", _S),
    KnownKey("kms:GrantIsForAWSResource", _B),
    KnownKey("kms:GrantOperations", _S, multivalued=True),
    KnownKey("kms:GranteePrincipal", _S),
    KnownKey("kms:KeyAgreementAlgorithm", _S),
    KnownKey("kms:KeyOrigin", _S),
    KnownKey("kms:KeySpec", _S),
    KnownKey("kms:KeyUsage", _S),
    KnownKey("kms:MacAlgorithm", _S),
    KnownKey("kms:MessageType", _S),
    KnownKey("kms:MultiRegion", _B),
    KnownKey("kms:MultiRegionKeyType", _S),
    KnownKey("kms:PrimaryRegion", _S),
    KnownKey("kms:ReEncryptOnSameKey", _B),
    KnownKey("kms:ReplicaRegion", _S),
    KnownKey("kms:RequestAlias", _S),
    KnownKey("kms:ResourceAliases", _S, multivalued=True),
    KnownKey("kms:RetiringPrincipal", _S),
    KnownKey("kms:RotationPeriodInDays", _N),
    KnownKey("kms:ScheduleKeyDeletionPendingWindowInDays", _N),
    KnownKey("kms:SigningAlgorithm", _S),
    KnownKey("kms:ValidTo", _D),
    KnownKey("kms:ViaService", _S),
    KnownKey("kms:WrappingAlgorithm", _S),
    KnownKey("kms:WrappingKeySpec", _S),
    KnownKey("kms:RecipientAttestation:ImageSha384", _S),
    # global keys
    KnownKey("aws:CalledVia", _S, multivalued=True),
    KnownKey("aws:CalledViaFirst", _S),
    KnownKey("aws:CalledViaLast", _S),
    KnownKey("aws:CurrentTime", _D),
    KnownKey("aws:EpochTime", _D),
    KnownKey("aws:FederatedProvider", _S),
    KnownKey("aws:MultiFactorAuthAge", _N),
    KnownKey("aws:MultiFactorAuthPresent", _B),
    KnownKey("aws:PrincipalAccount", _S),
    KnownKey("aws:PrincipalArn", _A),
    KnownKey("aws:PrincipalIsAWSService", _B),
    KnownKey("aws:PrincipalOrgID", _S),
    KnownKey("aws:PrincipalOrgPaths", _S, multivalued=True),
    KnownKey("aws:PrincipalServiceName", _S),
    KnownKey("aws:PrincipalServiceNamesList", _S, multivalued=True),
    KnownKey("aws:PrincipalType", _S),
    KnownKey("aws:Referer", _S),
    KnownKey("aws:RequestedRegion", _S),
    KnownKey("aws:ResourceAccount", _S),
    KnownKey("aws:ResourceOrgID", _S),
    KnownKey("aws:ResourceOrgPaths", _S, multivalued=True),
    KnownKey("aws:SecureTransport", _B),
    KnownKey("aws:SourceAccount", _S),
    KnownKey("aws:SourceArn", _A),
    KnownKey("aws:SourceIdentity", _S),
    KnownKey("aws:SourceIp", _I),
    KnownKey("aws:SourceOrgID", _S),
    KnownKey("aws:SourceOrgPaths", _S, multivalued=True),
    KnownKey("aws:SourceVpc", _S),
    KnownKey("aws:SourceVpce", _S),
    KnownKey("aws:TagKeys", _S, multivalued=True),
    KnownKey("aws:TokenIssueTime", _D),
    KnownKey("aws:UserAgent", _S),
    KnownKey("aws:userid", _S),
    KnownKey("aws:username", _S),
    KnownKey("aws:ViaAWSService", _B),
    KnownKey("aws:VpcSourceIp", _I),
    KnownKey("aws:Ec2InstanceSourceVpc", _S),
    KnownKey("aws:Ec2InstanceSourcePrivateIPv4", _I),
)

# Global keys IAM documents as "always included in the request context": on AWS a policy never
# sees them absent. A request context without one (the emulator does not supply it) has an
# unknown value, which the evaluator treats as failing closed, not as absent.
ALWAYS_IN_AWS_REQUESTS = frozenset({
    "aws:currenttime", "aws:epochtime", "aws:securetransport", "aws:principaltype",
    "aws:requestedregion", "aws:userid", "aws:principalisawsservice", "aws:viaawsservice",
})

# Keys whose last part the user chooses: prefix (lower-cased) -> (canonical prefix, type).
KNOWN_PREFIXES: dict[str, tuple[str, KeyType]] = {
    "kms:encryptioncontext:": ("kms:EncryptionContext:", "string"),
    "aws:principaltag/": ("aws:PrincipalTag/", "string"),
    "aws:requesttag/": ("aws:RequestTag/", "string"),
    "aws:resourcetag/": ("aws:ResourceTag/", "string"),
}

ENCLAVE_PCR_PREFIX = "kms:recipientattestation:pcr"
TPM_PCR_PREFIX = "kms:recipientattestation:nitrotpmpcr"
ATTESTATION_PREFIX = "kms:recipientattestation:"
IMAGE_SHA384 = "kms:recipientattestation:imagesha384"
ENCLAVE_PCRS = range(32)  # an NSM has 32 PCRs
TPM_PCRS = range(24)  # a TPM 2.0 SHA-384 bank has 24
PCR_HEX_LENGTH = 96  # SHA-384, lower-case hex

_PCR_KEY = re.compile(r"kms:recipientattestation:(pcr|nitrotpmpcr)(0|[1-9][0-9]?)")


def pcr_key(key: str) -> tuple[str, int] | None:
    """``("pcr", 16)`` for ``kms:recipientattestation:pcr16`` (lower-cased), ``("nitrotpmpcr",
    4)`` for a NitroTPM one, None for any other key or a PCR index out of range."""
    m = _PCR_KEY.fullmatch(key)
    if m is None:
        return None
    index = int(m.group(2))
    limit = ENCLAVE_PCRS if m.group(1) == "pcr" else TPM_PCRS
    return (m.group(1), index) if index in limit else None


def is_attestation_value_key(key: str) -> bool:
    """Keys whose values are SHA-384 measurements (ImageSha384 and every PCR key)."""
    return key == IMAGE_SHA384 or pcr_key(key) is not None


def lookup(key: str) -> tuple[str, KeyType, bool] | None:
    """(canonical name, type, multivalued) of a lower-cased condition key, None if unknown."""
    known = KNOWN_KEYS.get(key)
    if known is not None:
        return known.name, known.type, known.multivalued
    for prefix, (canonical, ktype) in KNOWN_PREFIXES.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return canonical + key[len(prefix):], ktype, False
    pcr = pcr_key(key)
    if pcr is not None:
        bank, index = pcr
        name = "PCR" if bank == "pcr" else "NitroTPMPCR"
        return f"kms:RecipientAttestation:{name}{index}", "string", False
    return None


def all_names() -> list[str]:
    """Every fixed known key's canonical name, and one sample of each family (for suggestions)."""
    names = [k.name for k in KNOWN_KEYS.values()]
    names += [f"kms:RecipientAttestation:PCR{i}" for i in ENCLAVE_PCRS]
    names += [f"kms:RecipientAttestation:NitroTPMPCR{i}" for i in TPM_PCRS]
    return names
