"""Every way a document can be rejected, under one base class.

Each subclass names the check that failed (``check``), so callers and the CLI can say which step
rejected a document. Messages name the field and give what was found and what was expected.
"""

from __future__ import annotations


class VerificationError(Exception):
    """The document was checked and rejected."""

    check = "document"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedDocumentError(VerificationError):
    """The bytes are not a well-formed Nitro attestation document."""

    check = "format"


class SignatureError(VerificationError):
    """The COSE_Sign1 signature does not verify with the leaf certificate's key."""

    check = "cose_signature"


class ChainError(VerificationError):
    """The chain does not lead to the trusted root, or a certificate's profile is wrong."""

    check = "certificate_chain"


class ExpiredError(ChainError):
    """A certificate of the chain is not valid at the verification time."""


class DocumentKindError(VerificationError):
    """The document is of another kind (enclave or NitroTPM) than the policy accepts."""

    check = "document_kind"


class PcrMismatchError(VerificationError):
    check = "pcrs"


class NonceMismatchError(VerificationError):
    check = "nonce"


class UserDataMismatchError(VerificationError):
    check = "user_data"


class PublicKeyMismatchError(VerificationError):
    check = "public_key"


class DebugModeError(VerificationError):
    """The document comes from an enclave started in debug mode (PCR0 all zero)."""

    check = "debug_mode"


class StaleDocumentError(VerificationError):
    """The document's timestamp is older than the allowed age, or in the future."""

    check = "freshness"


class PolicyError(ValueError):
    """An expectation given to the verifier is empty, unreadable or malformed.

    This is a configuration error, not a verdict on a document: verification never starts.
    """


class TrustRootError(ValueError):
    """The trust root given to the verifier is unusable."""


class ChannelKeyError(VerificationError):
    """The document's public_key does not name a usable attested-channel key."""

    check = "channel_key"


class ChannelError(Exception):
    """The attested channel failed: refused by the enclave, a bad acknowledgement, or transport."""

    def __init__(self, message: str, *, reason: str = "channel") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
