"""nitro-attest: remote attestation for AWS Nitro Enclaves.

This module is the library's public surface (see docs/api.md): verifying documents, policies,
results, errors, requesting a document from an enclave and sending it a secret, attested HTTPS
(``AttestedTransport``, an httpx transport), an EIF's
measurements, and the NSM for code running in an enclave. Every other module is importable but
internal and may change. Only the error tree is imported eagerly: every other name in ``_LAZY``
loads its module (the verifier and cryptography, asyncio, HPKE, EIF, NSM) on first use, so
``import nitro_attest``, and every CLI command, pays only for what it touches.
"""

from typing import TYPE_CHECKING, Any

from nitro_attest.errors import (
    ChainError,
    ChannelError,
    ChannelFailure,
    Check,
    ConfigurationError,
    DebugModeError,
    DocumentKindError,
    ExpiredError,
    FormatError,
    MalformedDocumentError,
    NitroAttestError,
    NitroCliError,
    NonceMismatchError,
    NsmError,
    PcrMismatchError,
    PolicyError,
    PublicKeyMismatchError,
    SignatureError,
    StaleDocumentError,
    TransportError,
    TrustRootError,
    UsageError,
    UserDataMismatchError,
    VerificationError,
)

if TYPE_CHECKING:
    from nitro_attest.attestation.document import AttestationDocument, DocumentKind, parse_document
    from nitro_attest.attestation.policy import Policy
    from nitro_attest.attestation.report import CheckResult, Report
    from nitro_attest.attestation.verifier import VerifiedDocument, Verifier, verify
    from nitro_attest.channel.sender import send_secret
    from nitro_attest.eif import inspect_eif, measurements_from_eif
    from nitro_attest.https.transport import AttestedTransport
    from nitro_attest.kms.client import KmsClient
    from nitro_attest.kms.envelope import open_envelope
    from nitro_attest.nsm import open_backend
    from nitro_attest.wire.client import request_attestation

from nitro_attest.version import __version__

_LAZY = {
    "AttestationDocument": "nitro_attest.attestation.document",
    "DocumentKind": "nitro_attest.attestation.document",
    "parse_document": "nitro_attest.attestation.document",
    "Policy": "nitro_attest.attestation.policy",
    "CheckResult": "nitro_attest.attestation.report",
    "Report": "nitro_attest.attestation.report",
    "VerifiedDocument": "nitro_attest.attestation.verifier",
    "Verifier": "nitro_attest.attestation.verifier",
    "verify": "nitro_attest.attestation.verifier",
    "request_attestation": "nitro_attest.wire.client",
    "send_secret": "nitro_attest.channel.sender",
    "inspect_eif": "nitro_attest.eif",
    "measurements_from_eif": "nitro_attest.eif",
    "open_backend": "nitro_attest.nsm",
    "AttestedTransport": "nitro_attest.https.transport",  # needs the https extra (httpx)
    "KmsClient": "nitro_attest.kms.client",
    "open_envelope": "nitro_attest.kms.envelope",
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


def __dir__() -> list[str]:
    # The lazy names too, so dir() and help() show the whole public API (help() then loads them).
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "AttestationDocument",
    "AttestedTransport",
    "ChainError",
    "ChannelError",
    "ChannelFailure",
    "Check",
    "CheckResult",
    "ConfigurationError",
    "DebugModeError",
    "DocumentKind",
    "DocumentKindError",
    "ExpiredError",
    "FormatError",
    "KmsClient",
    "MalformedDocumentError",
    "NitroAttestError",
    "NitroCliError",
    "NonceMismatchError",
    "NsmError",
    "PcrMismatchError",
    "Policy",
    "PolicyError",
    "PublicKeyMismatchError",
    "Report",
    "SignatureError",
    "StaleDocumentError",
    "TransportError",
    "TrustRootError",
    "UsageError",
    "UserDataMismatchError",
    "VerificationError",
    "VerifiedDocument",
    "Verifier",
    "__version__",
    "inspect_eif",
    "measurements_from_eif",
    "open_backend",
    "open_envelope",
    "parse_document",
    "request_attestation",
    "send_secret",
    "verify",
]
