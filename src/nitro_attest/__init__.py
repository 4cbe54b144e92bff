"""nitro-attest: remote attestation for AWS Nitro Enclaves."""

from nitro_attest.document import AttestationDocument, DocumentKind, parse_document
from nitro_attest.errors import (
    ChainError,
    DebugModeError,
    DocumentKindError,
    ExpiredError,
    MalformedDocumentError,
    NonceMismatchError,
    PcrMismatchError,
    PolicyError,
    PublicKeyMismatchError,
    SignatureError,
    StaleDocumentError,
    TrustRootError,
    UserDataMismatchError,
    VerificationError,
)
from nitro_attest.policy import Policy
from nitro_attest.report import CheckResult, Report
from nitro_attest.verifier import VerifiedDocument, Verifier, verify

__version__ = "0.1.0"

__all__ = [
    "AttestationDocument",
    "ChainError",
    "CheckResult",
    "DebugModeError",
    "DocumentKind",
    "DocumentKindError",
    "ExpiredError",
    "MalformedDocumentError",
    "NonceMismatchError",
    "PcrMismatchError",
    "Policy",
    "PolicyError",
    "PublicKeyMismatchError",
    "Report",
    "SignatureError",
    "StaleDocumentError",
    "TrustRootError",
    "UserDataMismatchError",
    "VerificationError",
    "VerifiedDocument",
    "Verifier",
    "__version__",
    "parse_document",
    "verify",
]
