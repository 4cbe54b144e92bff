"""The client's side of attested HTTPS, shared by ``https get`` and the httpx transport.

On a TLS connection whose certificate is not yet trusted: ask the attestation path with a fresh
nonce, read the answer (capped: one document), and accept the connection only if the document
verifies under the caller's policy, echoes the nonce, names the certificate's key
(SubjectPublicKeyInfo DER) and comes from an enclave that never signs caller-chosen keys (PCR16
pristine, ``attestation.caller_keys``). TLS proved the server holds the certificate's private
key; the document proves an enclave of the expected image made it. Nothing of the caller's
request is sent before ``check_document`` returns.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

from cryptography.exceptions import UnsupportedAlgorithm

from nitro_attest.attestation.caller_keys import CALLER_KEY_PCR, signs_caller_keys
from nitro_attest.attestation.document import DocumentKind
from nitro_attest.attestation.policy import Policy
from nitro_attest.attestation.verifier import VerifiedDocument, Verifier
from nitro_attest.codec.http import HandshakeError, find_head_end
from nitro_attest.codec.http1 import parse_response_head, request_head
from nitro_attest.errors import (
    PublicKeyMismatchError,
    TransportError,
    UsageError,
    VerificationError,
)
from nitro_attest.https.identity import spki_of
from nitro_attest.https.well_known import DOCUMENT_TYPE, WELL_KNOWN
from nitro_attest.limits import MAX_DOCUMENT_BYTES

NONCE_BYTES = 32
MAX_HEAD = 8192
CALLER_KEYS_CHECK = "caller_keys"


class CallerKeysMarkError(VerificationError):
    """The document's PCR16 is marked: that enclave signs keys chosen by its callers, so the key
    it names may be anyone's (``attestation.caller_keys``)."""

    check = CALLER_KEYS_CHECK


class AttestationRefused(VerificationError):
    """The server's attestation failed a check; nothing of the request was sent. ``check`` names
    the failed check, ``cause`` is the verifier's error."""

    def __init__(self, where: str, cause: VerificationError) -> None:
        super().__init__(
            f"{where}: attestation refused ({cause.check}): {cause.message}; nothing was sent"
        )
        self.check = cause.check
        self.cause = cause


def check_policy(policy: Policy) -> Policy:
    """The caller's policy, usable for attested HTTPS: PCRs required, nonce and key left to us."""
    if not policy.pcr_sets:
        raise UsageError(
            "attested HTTPS needs expected PCRs (a policy with pcr_sets, --expected or --pcr): "
            "without them any enclave, whatever it runs, would be trusted"
        )
    if policy.nonce is not None or policy.public_key is not None:
        raise UsageError(
            "the policy must not set nonce or public_key: each connection sets its own"
        )
    if policy.kind is not DocumentKind.ENCLAVE:
        # https serve answers from an enclave's NSM; a NitroTPM document comes from an EC2
        # host, whose PCR16 is a resettable TPM register, so the caller-key rule means nothing.
        raise UsageError("attested HTTPS accepts enclave documents only (not --kind nitrotpm)")
    return policy


class Deadline:
    """The time left for the attestation exchange, so that the timeout bounds it as a whole:
    with a timeout per read, a parent sending a byte just within each could hold the client for
    as long as it liked. (The TLS handshake before it is one call that CPython bounds as a whole
    by the socket's timeout.) ``None``: no bound."""

    def __init__(self, seconds: float | None, where: str) -> None:
        self._seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds
        self._where = where

    def left(self) -> float | None:
        """Seconds left for the next read; TransportError once none are."""
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> TransportError:
        return TransportError(
            f"{self._where}: timed out: no attestation answer within {self._seconds:g} s"
        )


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def attestation_request(host: str, nonce: bytes) -> bytes:
    return request_head("GET", f"{WELL_KNOWN}?nonce={nonce.hex()}", host, length=None)


def read_document(recv: Callable[[], bytes]) -> bytes:
    """Read the attestation answer with ``recv`` (returns b"" at EOF); its body, capped."""
    buffer = bytearray()
    while True:
        try:
            end = find_head_end(buffer, MAX_HEAD)
        except HandshakeError:
            raise TransportError("attestation answer: head too long") from None
        if end >= 0:
            break
        data = recv()
        if not data:
            raise TransportError("attestation answer: connection closed before its head")
        buffer += data
    try:
        head = parse_response_head(
            bytes(buffer[:end]), request_method="GET", limit=MAX_HEAD, max_lines=64
        )
    except HandshakeError as exc:
        raise TransportError(f"attestation answer: {exc.reason}") from None
    if head.status != 200:
        raise TransportError(f"attestation answer: HTTP status {head.status}, not 200")
    if head.framing != "length" or head.length > MAX_DOCUMENT_BYTES:
        raise TransportError(
            f"attestation answer: needs a Content-Length of at most {MAX_DOCUMENT_BYTES}"
        )
    if (head.get(b"content-type") or b"").lower() != DOCUMENT_TYPE:
        raise TransportError("attestation answer: not an attestation document (Content-Type)")
    body = buffer[end:]
    while len(body) < head.length:
        data = recv()
        if not data:
            raise TransportError("attestation answer: connection closed inside the document")
        body += data
    if len(body) != head.length:
        raise TransportError("attestation answer: bytes after the document")
    if not head.keep_alive:
        raise TransportError("attestation answer: the server closes the connection after it")
    return bytes(body)


def attest_connection(
    send: Callable[[bytes], None],
    recv: Callable[[], bytes],
    certificate_der: bytes | None,
    *,
    authority: str,
    verifier: Verifier,
    policy: Policy,
) -> VerifiedDocument:
    """The attestation step on a TLS connection just made to ``authority`` (https get's
    connection and AttestedTransport's stream alike): a fresh nonce sent, the document read with
    ``recv``, checked against this connection's certificate. Nothing else is sent before it."""
    if not certificate_der:
        raise TransportError(f"{authority}: the server sent no certificate")
    nonce = new_nonce()
    send(attestation_request(authority, nonce))
    try:
        document = read_document(recv)
    except TransportError as exc:
        named = exc.message.startswith(authority)
        raise TransportError(exc.message if named else f"{authority}: {exc.message}") from None
    return check_document(
        document,
        certificate_der=certificate_der,
        nonce=nonce,
        verifier=verifier,
        policy=policy,
        where=f"https://{authority}",
    )


def check_document(
    document: bytes,
    *,
    certificate_der: bytes,
    nonce: bytes,
    verifier: Verifier,
    policy: Policy,
    where: str,
) -> VerifiedDocument:
    """Verify ``document`` for this connection, or raise AttestationRefused naming the check."""
    try:
        spki = spki_of(certificate_der)
    except (ValueError, UnsupportedAlgorithm):
        # The server chose the certificate: OpenSSL took it, the strict DER parser did not (a
        # BER length, an unsupported key). No key, so no document can name it.
        raise AttestationRefused(
            where, PublicKeyMismatchError("the server's certificate does not parse as DER")
        ) from None
    expected = dataclasses.replace(policy, nonce=nonce, public_key=spki)
    try:
        verified = verifier.verify(document, policy=expected)
        if signs_caller_keys(verified.document.pcrs):
            raise CallerKeysMarkError(
                f"PCR{CALLER_KEY_PCR} is not pristine: this enclave signs public keys chosen by "
                "its callers, so the key this document names may be the parent's"
            )
    except VerificationError as exc:
        raise AttestationRefused(where, exc) from None
    return verified
