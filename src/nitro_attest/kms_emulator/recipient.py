"""The Recipient parameter: verify its attestation document, take its RSA key and its PCRs.

The document is verified with the project's verifier under the emulator's roots, at the present
(no age limit: KMS documents none, and a replayed document names a key only the enclave holds).
Debug-mode documents pass as on KMS, which exposes their all-zero PCRs to the key policy, where
they match no real image. A NitroTPM document exposes ``NitroTPMPCR<n>`` and no ImageSha384.
Every failure raises a KmsApiError naming its reason; nothing is returned for a document that did
not verify, so no condition key can come from unauthenticated bytes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from nitro_attest.attestation.document import DocumentKind
from nitro_attest.attestation.verifier import VerifiedDocument, Verifier
from nitro_attest.errors import (
    ChainError,
    DocumentKindError,
    ExpiredError,
    VerificationError,
)
from nitro_attest.kms.envelope import subject_key_identifier
from nitro_attest.kms_emulator.errors import KmsApiError, validation
from nitro_attest.limits import MAX_DOCUMENT_BYTES

KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
MIN_RSA_BITS = 2048
MAX_KEYS = 256  # recipient keys remembered (by their exact DER bytes); all forgotten when full


@dataclass(frozen=True, slots=True)
class Recipient:
    """A verified recipient: the key to encrypt to and the condition keys its document gives."""

    public_key: rsa.RSAPublicKey
    condition_keys: Mapping[str, tuple[str, ...]]
    document: VerifiedDocument
    subject_key_id: bytes  # SHA-256 of the key's SubjectPublicKeyInfo, the envelope's rid


def invalid_document(reason: str) -> KmsApiError:
    # What KMS answers for an unusable attestation document is not documented; ValidationException
    # with the reason is the emulator's choice (docs/kms.md, "unconfirmed").
    return validation(f"Recipient.AttestationDocument is not valid: {reason}")


class RecipientVerifier:
    """Verifies Recipient documents under one or more roots (``None`` = the AWS root)."""

    def __init__(self, roots: Sequence[bytes | None]) -> None:
        if not roots:
            raise ValueError("at least one root is needed")
        self._verifiers = tuple(Verifier(root_pem=root) for root in roots)
        # A document's public_key bytes -> the RSA key they load as and its identifier: the
        # load and the checks below are a function of those bytes alone, and only a key that
        # passed them is kept. The document itself is verified on every request.
        self._keys: dict[bytes, tuple[rsa.RSAPublicKey, bytes]] = {}
        # A verified document's kind and PCRs (index, value) -> its condition keys, read-only:
        # condition_keys is a function of those alone. The same strs every request also keep
        # their hashes for the policy decision cache.
        self._condition_keys: dict[object, Mapping[str, tuple[str, ...]]] = {}

    def parse(self, value: Any) -> Recipient:
        """Check the request's ``Recipient`` member and its document; raise KmsApiError."""
        if not isinstance(value, dict):
            raise KmsApiError("SerializationException", "Recipient must be a structure")
        unknown = set(value) - {"KeyEncryptionAlgorithm", "AttestationDocument"}
        if unknown:
            raise KmsApiError(
                "SerializationException", f"Recipient has unknown members {sorted(unknown)}"
            )
        algorithm = value.get("KeyEncryptionAlgorithm", KEY_ENCRYPTION_ALGORITHM)
        if algorithm != KEY_ENCRYPTION_ALGORITHM:
            raise validation(
                f"1 validation error detected: Value '{str(algorithm)[:64]}' at "
                "'recipient.keyEncryptionAlgorithm' failed to satisfy constraint: Member must "
                f"satisfy enum value set: [{KEY_ENCRYPTION_ALGORITHM}]"
            )
        encoded = value.get("AttestationDocument")
        if not isinstance(encoded, str) or not encoded:
            raise validation("Recipient.AttestationDocument is required")
        if len(encoded) > (MAX_DOCUMENT_BYTES + 2) // 3 * 4:
            raise invalid_document(f"larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise KmsApiError(
                "SerializationException", "Recipient.AttestationDocument is not valid base64"
            ) from None
        return self.verify(document)

    def verify(self, document: bytes) -> Recipient:
        verified = self._verify_any_root(document)
        doc = verified.document
        if doc.public_key is None:
            raise invalid_document("it carries no public_key to encrypt the response to")
        key, ski = self._recipient_key(doc.public_key)
        slot = (doc.kind, tuple(doc.pcrs.items()))
        keys = self._condition_keys.get(slot)
        if keys is None:
            keys = MappingProxyType(condition_keys(verified))
            if len(self._condition_keys) >= MAX_KEYS:
                self._condition_keys.clear()
            self._condition_keys[slot] = keys
        return Recipient(key, keys, verified, ski)

    def _recipient_key(self, spki: bytes) -> tuple[rsa.RSAPublicKey, bytes]:
        """The RSA key (at least MIN_RSA_BITS) of a verified document's ``public_key`` and its
        subjectKeyIdentifier; raise KmsApiError naming what is wrong."""
        known = self._keys.get(spki)
        if known is not None:
            return known
        try:
            key = load_der_public_key(spki)
        except (ValueError, TypeError):
            raise invalid_document("its public_key is not a DER SubjectPublicKeyInfo") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise invalid_document(
                f"its public_key is a {type(key).__name__.lstrip('_')}, not an RSA key"
            )
        if key.key_size < MIN_RSA_BITS:
            raise invalid_document(
                f"its public_key is RSA-{key.key_size}; at least {MIN_RSA_BITS} bits are required"
            )
        known = (key, subject_key_identifier(key))
        if len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        self._keys[bytes(spki)] = known
        return known

    def _verify_any_root(self, document: bytes) -> VerifiedDocument:
        chain_errors: list[ChainError] = []
        for verifier in self._verifiers:
            try:
                try:
                    return verifier.verify(document, allow_debug=True)
                except DocumentKindError:
                    return verifier.verify(document, allow_debug=True, kind=DocumentKind.NITROTPM)
            except ChainError as exc:  # another root may be the one
                chain_errors.append(exc)
            except VerificationError as exc:
                raise invalid_document(f"{exc.check}: {exc.message}") from None
        # A chain that reached a root but has a certificate out of date says so; otherwise the
        # document chains to none of the roots (the first one's reason is given).
        expired = [e for e in chain_errors if isinstance(e, ExpiredError)]
        if expired or len(chain_errors) == 1:
            first = (expired or chain_errors)[0]
            raise invalid_document(f"{first.check}: {first.message}")
        raise invalid_document(
            f"{chain_errors[0].check}: does not chain to any of the {len(chain_errors)} trusted "
            f"roots: {chain_errors[0].message}"
        )


class _Names(dict[int, str]):
    """Condition key names by PCR index, each made once (the same str every request, its hash
    kept: the policy decision cache hashes them)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, index: int) -> str:
        name = f"{self.prefix}{index}"
        if len(self) < 64:  # an enclave has 32 PCRs, a NitroTPM 24
            self[index] = name
        return name


_PCR = _Names("kms:recipientattestation:pcr")
_NITROTPM_PCR = _Names("kms:recipientattestation:nitrotpmpcr")


def condition_keys(verified: VerifiedDocument) -> dict[str, tuple[str, ...]]:
    """KMS's RecipientAttestation condition keys (lower-cased names, lower-case hex values)."""
    doc = verified.document
    keys: dict[str, tuple[str, ...]] = {}
    if doc.kind is DocumentKind.ENCLAVE:
        pcr0 = doc.pcrs.get(0)
        if pcr0 is not None:
            keys["kms:recipientattestation:imagesha384"] = (pcr0.hex(),)
        names = _PCR
    else:
        names = _NITROTPM_PCR
    for index, value in doc.pcrs.items():
        keys[names[index]] = (value.hex(),)
    return keys
