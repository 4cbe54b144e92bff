"""The project's one exception tree.

Every error nitro-attest raises on purpose derives from ``NitroAttestError``; its branches say
what kind of failure it is, and the CLI maps branches to exit codes (``VerificationError`` -> 1,
every other branch -> 2):

- ``VerificationError``: a document was checked and rejected; one subclass per check, named by
  ``check`` (a ``Check``), with messages that give the field, what was found and what was expected.
- ``ConfigurationError``: an expectation, trust root, address, state folder or flag is unusable;
  nothing was checked.
- ``FormatError``: bytes that are not what they claim to be (CBOR, COSE, EIF), outside a verdict
  on a document.
- ``TransportError``: the connection or the peer failed (unreachable, broken protocol, an error
  answer).
- ``NsmError``: the NSM (device or simulator) refused or failed.
- ``NitroCliError``: nitro-cli failed or printed something unexpected.
- ``ChannelError``: the attested channel failed; ``reason`` is a ``ChannelFailure``.

No error raised for untrusted input subclasses ``ValueError``: callers catch this tree, not
built-in exceptions.
"""

from __future__ import annotations

from enum import StrEnum


class NitroAttestError(Exception):
    """The root of every error nitro-attest raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Check(StrEnum):
    """The checks a verification runs, by the name reports and ``--json`` give them."""

    DOCUMENT = "document"
    FORMAT = "format"
    COSE_SIGNATURE = "cose_signature"
    CERTIFICATE_CHAIN = "certificate_chain"
    DOCUMENT_KIND = "document_kind"
    PCRS = "pcrs"
    NONCE = "nonce"
    USER_DATA = "user_data"
    PUBLIC_KEY = "public_key"
    DEBUG_MODE = "debug_mode"
    FRESHNESS = "freshness"
    CHANNEL_KEY = "channel_key"
    CALLER_KEYS = "caller_keys"
    # The verification service's own two, after the verifier's (service.appraisal).
    SESSION_TIME = "session_time"
    CALLER_KEY_MARK = "caller_key_mark"


class VerificationError(NitroAttestError):
    """The document was checked and rejected."""

    check: str = Check.DOCUMENT


class MalformedDocumentError(VerificationError):
    """The bytes are not a well-formed Nitro attestation document."""

    check = Check.FORMAT


class SignatureError(VerificationError):
    """The COSE_Sign1 signature does not verify with the leaf certificate's key."""

    check = Check.COSE_SIGNATURE


class ChainError(VerificationError):
    """The chain does not lead to the trusted root, or a certificate's profile is wrong."""

    check = Check.CERTIFICATE_CHAIN


class ExpiredError(ChainError):
    """A certificate of the chain is not valid at the verification time."""


class DocumentKindError(VerificationError):
    """The document is of another kind (enclave or NitroTPM) than the policy accepts."""

    check = Check.DOCUMENT_KIND


class PcrMismatchError(VerificationError):
    """A PCR differs from every allowed set, or is absent."""

    check = Check.PCRS


class NonceMismatchError(VerificationError):
    """The nonce is absent or not the one expected (a replayed or stale document)."""

    check = Check.NONCE


class UserDataMismatchError(VerificationError):
    """The user data is absent or not the bytes expected."""

    check = Check.USER_DATA


class PublicKeyMismatchError(VerificationError):
    """The public key is absent or not the one expected."""

    check = Check.PUBLIC_KEY


class DebugModeError(VerificationError):
    """The document comes from an enclave started in debug mode (PCR0 all zero)."""

    check = Check.DEBUG_MODE


class StaleDocumentError(VerificationError):
    """The document's timestamp is older than the allowed age, or in the future."""

    check = Check.FRESHNESS


class ConfigurationError(NitroAttestError):
    """A flag, expectation, trust root, address or state folder is unusable: nothing was checked."""


class UsageError(ConfigurationError):
    """The command line or the library was called in a way that cannot work."""


class FormatError(NitroAttestError):
    """Bytes that are not what they claim to be (CBOR, COSE, an EIF), outside a document verdict."""


class TransportError(NitroAttestError):
    """The connection or the peer failed: unreachable, a broken protocol, an error answer."""


class NsmError(NitroAttestError):
    """The NSM answered with an error, or could not be reached.

    ``code`` is the NSM API ErrorCode name (``InvalidIndex``, ``ReadOnlyIndex``, ``InputTooLarge``,
    ...) when the NSM itself reported the failure, else ``InternalError``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class NitroCliError(NitroAttestError):
    """nitro-cli failed. ``code`` is its error code ("E26") when it printed one."""

    def __init__(
        self, message: str, *, code: str | None = None, returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.returncode = returncode
        self.stderr = stderr

    def __str__(self) -> str:
        prefix = f"[ {self.code} ] " if self.code else ""
        status = f" (exit status {self.returncode})" if self.returncode is not None else ""
        return f"{prefix}{self.message}{status}"


class PolicyError(ConfigurationError):
    """An expectation given to the verifier is empty, unreadable or malformed.

    This is a configuration error, not a verdict on a document: verification never starts.
    """


class TrustRootError(ConfigurationError):
    """The trust root given to the verifier is unusable."""


class ChannelKeyError(VerificationError):
    """The document's public_key does not name a usable attested-channel key."""

    check = Check.CHANNEL_KEY


class CallerKeysError(VerificationError):
    """The enclave that signed the document attests keys its callers choose (its PCR16 is not
    untouched and locked: ``serve --allow-caller-public-key``), so the key it names may be the
    parent's; refused wherever a key the document names is trusted (attestation.caller_keys)."""

    check = Check.CALLER_KEYS


class ChannelFailure(StrEnum):
    """Why the attested channel failed (``ChannelError.reason``)."""

    CHANNEL = "channel"
    REQUEST = "request"
    RESPONSE = "response"
    TRANSPORT = "transport"
    SUITE = "suite"
    SIZE = "size"
    OPEN = "open"
    REPLAY = "replay"
    UNKNOWN_NONCE = "unknown_nonce"
    ACK = "ack"
    REFUSED = "refused"  # the enclave answered channel_refused
    ENCLAVE = "enclave"  # the enclave answered another typed error
    SENDER = "sender"  # unsigned, or not signed by a pinned sender key (docs/channel.md)
    STORE_FULL = "store_full"  # the enclave's handler had no room for this sender's secret


class ChannelError(NitroAttestError):
    """The attested channel failed: refused by the enclave, a bad acknowledgement, or transport.

    ``sent`` is true when the sealed message had already left the client: only a matching
    acknowledgement is authenticated, so a refusal, a wrong acknowledgement or a lost answer
    after that point may be the parent's, and the enclave may hold the secret.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: ChannelFailure | str = ChannelFailure.CHANNEL,
        sent: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = ChannelFailure(reason)  # an unknown reason is a bug: fail loudly
        self.sent = sent
