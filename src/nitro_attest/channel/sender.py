"""Client side of the attested channel: verify the enclave first, then seal and send.

``deliver_secret`` runs the whole exchange over any ``Exchange`` (a callable sending one typed
request of ``channel.messages`` and returning the typed response), so it is tested without
sockets; ``send_secret`` binds it to a real connection through ``ConnectionExchange``. Nothing
here imports the enclave side.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nitro_attest.attestation.document import DocumentKind
from nitro_attest.attestation.policy import PcrSpec, Policy
from nitro_attest.attestation.verifier import At, VerifiedDocument, Verifier
from nitro_attest.channel.keys import (
    ALL_SUITES,
    SuiteId,
    hybrid_unavailable,
    parse_public_key_field,
    resolve_public_key,
)
from nitro_attest.channel.messages import (
    CHANNEL_REFUSED,
    ChannelAttestRequest,
    ChannelOfferResponse,
    SealedAckResponse,
    SealedMessageRequest,
)
from nitro_attest.channel.seal import (
    ACK_KEY_BYTES,
    MAX_SECRET_BYTES,
    acknowledgement,
    channel_info,
    document_digest,
    seal,
)
from nitro_attest.channel.signing import SenderPrivateKey, key_id, sign, signed_bytes
from nitro_attest.errors import (
    ChannelError,
    ChannelFailure,
    ChannelKeyError,
    NonceMismatchError,
    PolicyError,
)
from nitro_attest.wire.client import ClientError, Connection, EnclaveError
from nitro_attest.wire.protocol import Request, Response

Exchange = Callable[[Request], Response]
NONCE_BYTES = 32
DEFAULT_SUITE = SuiteId.MLKEM768_X25519  # post-quantum by default; x25519 only when asked


@dataclass(frozen=True, slots=True)
class Sealed:
    """A secret sealed to a verified enclave, ready to send."""

    suite: SuiteId
    nonce: bytes
    sealed: bytes
    ack: bytes  # the acknowledgement the enclave must return (keyed: see seal.acknowledgement)

    def __repr__(self) -> str:
        return f"Sealed({self.suite.label}, {len(self.sealed)} bytes)"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivered secret: the enclave's verified document and the acknowledged digest."""

    verified: VerifiedDocument
    suite: SuiteId
    sha256: bytes
    size: int
    signer: bytes | None = None  # the key id the message was signed with, if any


def suite_of(suite: str | SuiteId) -> SuiteId:
    """The suite named by its label (``x25519``...) or given; ChannelError if unknown."""
    if isinstance(suite, SuiteId):
        return suite
    try:
        return SuiteId.from_label(suite)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None


def require_suite_available(suite: SuiteId) -> None:
    """Refuse the hybrid suite, before any contact, where this OpenSSL lacks ML-KEM; never fall
    back to x25519 silently."""
    if suite is SuiteId.MLKEM768_X25519 and (reason := hybrid_unavailable()) is not None:
        raise PolicyError(
            f"{reason}: the post-quantum suite mlkem768-x25519 cannot be used here; to send "
            "with X25519 alone, ask for it: --suite x25519 (suite='x25519')"
        )


def seal_for_document(
    verified: VerifiedDocument,
    secret: bytes,
    *,
    nonce: bytes,
    suite: str | SuiteId = DEFAULT_SUITE,
    offered_key: bytes | None = None,
    allowed_suites: Sequence[SuiteId] = ALL_SUITES,
) -> Sealed:
    """Seal ``secret`` to the key named in a verified document; refuse anything unexpected."""
    want = suite_of(suite)
    doc = verified.document
    if doc.nonce is None or not hmac.compare_digest(doc.nonce, nonce):
        raise NonceMismatchError("the document was not issued for this delivery's nonce")
    advertised = parse_public_key_field(doc.public_key)
    if advertised.suite not in allowed_suites:
        raise ChannelKeyError(f"the document's key suite {advertised.suite.label} is not allowed")
    if advertised.suite is not want:
        raise ChannelKeyError(
            f"the document's key is for suite {advertised.suite.label}, expected {want.label}"
        )
    key = resolve_public_key(advertised, offered_key)
    _check_secret(secret)
    ack_key = os.urandom(ACK_KEY_BYTES)
    info = channel_info(advertised, nonce, document_digest(doc.raw))
    sealed = seal(want, key, ack_key + secret, info)
    return Sealed(want, nonce, sealed, acknowledgement(ack_key, secret))


def deliver_secret(
    exchange: Exchange,
    secret: bytes,
    *,
    verifier: Verifier,
    expected_pcrs: PcrSpec | Sequence[PcrSpec] | None = None,
    allow_debug: bool = False,
    suite: str | SuiteId = DEFAULT_SUITE,
    unsafe_any_enclave: bool = False,
    max_age: float | None = None,
    at: At = None,
    user_data: bytes | None = None,
    signing_key: SenderPrivateKey | None = None,
    kind: DocumentKind | str | None = None,
    policy: Policy | None = None,
    on_send: Callable[[], None] | None = None,
) -> Receipt:
    """Request a channel document, verify it fully, seal, send, check the acknowledgement.

    The expectations are ``policy`` (PCR sets, kind, debug, max_age, user_data, which is also
    sent in the request), or the older loose keywords (``expected_pcrs``, ``allow_debug``,
    ``max_age``, ``user_data``, ``kind``; enclave when None), never both (PolicyError). Either
    way the sender adds the delivery's fresh nonce and refuses an enclave that attests
    caller-chosen keys; a policy naming a nonce or a public_key is refused (the nonce is the
    sender's, the key the channel's).

    With ``signing_key`` (Ed25519 or P-256) the message is signed for an enclave that pins the
    matching public key (docs/channel.md, "Sender authentication").

    Raises PolicyError before any contact when no PCR expectation is given (unless
    ``unsafe_any_enclave``), a VerificationError when the enclave does not verify (nothing is
    sent), ChannelError when the enclave refuses or the acknowledgement is wrong; its ``sent``
    says whether the sealed message had left (then the enclave may hold the secret: only a
    matching acknowledgement is authenticated, a refusal may be forged by whoever relays).
    ``on_send`` is called just before the sealed message goes out: from then on any way out,
    an interrupt or an unexpected error included, may leave the secret with the enclave.
    """
    expect = channel_policy(
        policy,
        expected_pcrs=expected_pcrs,
        allow_debug=allow_debug,
        max_age=max_age,
        user_data=user_data,
        kind=kind,
        unsafe_any_enclave=unsafe_any_enclave,
    )
    want = _preflight(secret, suite)
    nonce = os.urandom(NONCE_BYTES)
    offer = _expect(
        exchange(ChannelAttestRequest(nonce=nonce, suite=want.label, user_data=expect.user_data)),
        ChannelOfferResponse,
    )
    document, offered_key = offer.document, offer.public_key
    verified = verifier.verify(document, at=at, policy=expect.with_nonce(nonce))
    sealed = seal_for_document(
        verified, secret, nonce=nonce, suite=want, offered_key=offered_key
    )
    signer = signature = None
    if signing_key is not None:
        signer = key_id(signing_key.public_key())
        digest = document_digest(verified.document.raw)
        signature = sign(signing_key, signed_bytes(want, nonce, digest, signer, sealed.sealed))
    message = SealedMessageRequest(
        nonce=nonce, sealed=sealed.sealed, signer=signer, signature=signature
    )
    if on_send is not None:
        on_send()
    try:
        ack = _expect(exchange(message), SealedAckResponse)
    except ChannelError as exc:
        # Sent: whatever comes back now but the keyed acknowledgement may be the parent's.
        raise ChannelError(exc.message, reason=exc.reason, sent=True) from None
    if not hmac.compare_digest(ack.ack, sealed.ack):
        raise ChannelError(
            "the enclave's acknowledgement does not match the secret sent", reason="ack", sent=True
        )
    return Receipt(verified, want, hashlib.sha256(secret).digest(), len(secret), signer)


def channel_policy(
    policy: Policy | None,
    *,
    expected_pcrs: PcrSpec | Sequence[PcrSpec] | None = None,
    allow_debug: bool = False,
    max_age: float | None = None,
    user_data: bytes | None = None,
    kind: DocumentKind | str | None = None,
    unsafe_any_enclave: bool = False,
) -> Policy:
    """The delivery's expectations as one Policy (refusing caller-key enclaves), checked
    before the enclave is contacted: ``policy`` or the loose keywords, not both."""
    loose = (expected_pcrs, max_age, user_data, kind)
    if policy is not None:
        if not isinstance(policy, Policy):
            raise PolicyError(f"policy must be a Policy, got {type(policy).__name__}")
        if any(v is not None for v in loose) or allow_debug:
            raise PolicyError(
                "give either policy= or the individual expectations (expected_pcrs, "
                "allow_debug, max_age, user_data, kind), not both"
            )
        if policy.nonce is not None:
            raise PolicyError("the sender picks each delivery's nonce: give a policy without one")
        if policy.public_key is not None:
            raise PolicyError(
                "a channel document names the enclave's channel key: give a policy without "
                "public_key"
            )
    else:
        policy = Policy.build(
            expected_pcrs=expected_pcrs,
            user_data=user_data,
            max_age=max_age,
            allow_debug=allow_debug,
            kind=DocumentKind.ENCLAVE if kind is None else kind,
        )
    if not policy.pcr_sets and not unsafe_any_enclave:
        require_pcr_expectation(None, unsafe_any_enclave)
    # A key an oracle enclave named may be the parent's own (attestation.caller_keys).
    return policy.refusing_caller_keys()


def _preflight(secret: Any, suite: str | SuiteId) -> SuiteId:
    """The secret and the suite, refused before the enclave is contacted; the suite to use."""
    want = suite_of(suite)
    _check_secret(secret)
    require_suite_available(want)
    return want


def require_pcr_expectation(
    expected_pcrs: PcrSpec | Sequence[PcrSpec] | None, unsafe_any_enclave: bool
) -> None:
    """A secret goes to a known enclave image only, unless the caller says otherwise by name."""
    if expected_pcrs is None and not unsafe_any_enclave:
        raise PolicyError(
            "refusing to send a secret to an enclave without a PCR expectation; give "
            "expected_pcrs, or unsafe_any_enclave=True to trust any enclave the root signs for"
        )


def _check_secret(secret: Any) -> None:
    if not isinstance(secret, bytes):
        raise PolicyError(f"secret must be bytes, got {type(secret).__name__}")
    if not secret:
        raise PolicyError("secret is empty")
    if len(secret) > MAX_SECRET_BYTES:
        raise PolicyError(f"secret is {len(secret)} bytes, at most {MAX_SECRET_BYTES}")


R = TypeVar("R", bound=Response)


def _expect(response: Response, expected: type[R]) -> R:
    if not isinstance(response, expected):
        raise ChannelError(
            f"the enclave answered {response.TYPE!r}, expected {expected.TYPE!r}", reason="response"
        )
    return response


class ConnectionExchange:
    """The channel's typed requests over one protocol connection, errors as ChannelError."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def __call__(self, request: Request) -> Response:
        """Send ``request``, return the answer; an enclave error answer becomes a ChannelError."""
        try:
            return self._conn.request(request)
        except EnclaveError as exc:
            refused = exc.code == CHANNEL_REFUSED
            reason = ChannelFailure.REFUSED if refused else ChannelFailure.ENCLAVE
            raise ChannelError(
                f"the enclave refused: {exc.code}: {exc.remote_message}", reason=reason
            ) from None
        except ClientError as exc:
            raise ChannelError(str(exc), reason=ChannelFailure.TRANSPORT) from None


def send_secret(
    address: str,
    secret: bytes,
    *,
    root_pem: bytes | None = None,
    expected_pcrs: PcrSpec | Sequence[PcrSpec] | None = None,
    allow_debug: bool = False,
    suite: str | SuiteId = DEFAULT_SUITE,
    timeout: float = 10.0,
    unsafe_any_enclave: bool = False,
    max_age: float | None = None,
    user_data: bytes | None = None,
    signing_key: SenderPrivateKey | None = None,
    kind: DocumentKind | str | None = None,
    policy: Policy | None = None,
    on_send: Callable[[], None] | None = None,
) -> Receipt:
    """Deliver ``secret`` to the enclave at ``address`` only if its attestation verifies.

    ``root_pem=None`` trusts the embedded AWS Nitro root; give the simulator's root.pem to talk to
    a simulated enclave. Expectations: ``policy`` or the loose keywords, as ``deliver_secret``
    takes them; see it for what is raised.
    """
    verifier = Verifier(root_pem=root_pem)
    expect = channel_policy(  # before connecting
        policy,
        expected_pcrs=expected_pcrs,
        allow_debug=allow_debug,
        max_age=max_age,
        user_data=user_data,
        kind=kind,
        unsafe_any_enclave=unsafe_any_enclave,
    )
    want = _preflight(secret, suite)
    try:
        connection = Connection(address, timeout=timeout)
    except ClientError as exc:  # unreachable; a malformed address stays an AddressError
        raise ChannelError(str(exc), reason=ChannelFailure.TRANSPORT) from None
    with connection:
        return deliver_secret(
            ConnectionExchange(connection),
            secret,
            verifier=verifier,
            suite=want,
            unsafe_any_enclave=unsafe_any_enclave,
            signing_key=signing_key,
            policy=expect,
            on_send=on_send,
        )
