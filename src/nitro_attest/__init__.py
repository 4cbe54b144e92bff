"""nitro-attest: remote attestation for AWS Nitro Enclaves.

This module is the library's public surface (see docs/api.md): verifying documents, policies,
results, errors, requesting a document from an enclave and sending it a secret. Every other module
is importable but internal and may change. ``request_attestation`` and ``send_secret`` load the
wire and channel code on first use, so ``import nitro_attest`` stays light for the verifier.
"""

from typing import TYPE_CHECKING, Any

from nitro_attest.attestation.document import AttestationDocument, parse_document
from nitro_attest.attestation.policy import Policy
from nitro_attest.attestation.report import CheckResult, Report
from nitro_attest.attestation.verifier import VerifiedDocument, Verifier, verify
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

if TYPE_CHECKING:
    from nitro_attest.channel.sender import send_secret
    from nitro_attest.wire.client import request_attestation

__version__ = "0.1.0"

_LAZY = {
    "request_attestation": "nitro_attest.wire.client",
    "send_secret": "nitro_attest.channel.sender",
}


def __getattr__(name: str) -> Any:
    # PEP 562: the wire and channel modules (asyncio, HPKE) load only when a caller asks for them.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nitro_attest' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "AttestationDocument",
    "ChainError",
    "CheckResult",
    "DebugModeError",
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
    "request_attestation",
    "send_secret",
    "verify",
]
