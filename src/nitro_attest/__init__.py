"""nitro-attest: remote attestation for AWS Nitro Enclaves."""

from nitro_attest.errors import (
    ChainError,
    DebugModeError,
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

__version__ = "0.1.0"

__all__ = [
    "ChainError",
    "DebugModeError",
    "ExpiredError",
    "MalformedDocumentError",
    "NonceMismatchError",
    "PcrMismatchError",
    "PolicyError",
    "PublicKeyMismatchError",
    "SignatureError",
    "StaleDocumentError",
    "TrustRootError",
    "UserDataMismatchError",
    "VerificationError",
    "__version__",
]
