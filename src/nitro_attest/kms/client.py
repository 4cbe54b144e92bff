"""``KmsClient``: AWS KMS called from inside the enclave, with a Recipient.

For Decrypt, GenerateDataKey, GenerateDataKeyPair, GenerateRandom and DeriveSharedSecret the
client asks the NSM for a document naming its own RSA-2048 key (made in this process, per client
or per call; its SubjectPublicKeyInfo goes into the document's ``public_key`` by this code, not
through the server's caller-key path; PCR16 locked first so the document shows the enclave signs
no caller-chosen keys, ``lock_caller_key_pcr``), sends it as ``Recipient``, and opens the
``CiphertextForRecipient`` KMS returns. The request is KMS's JSON 1.1 protocol signed with SigV4;
it travels through the route over TLS that ends here (``kms.https``). A Recipient answer that
carries a plaintext field itself, or lacks the envelope, is refused: KMS never sends one.

Results are ``KmsResult``: ``fields`` is the JSON KMS would have answered without a Recipient
(binary fields base64, the plaintext field filled from the envelope), what the AWS CLI prints;
``secret`` is the raw plaintext.
"""

from __future__ import annotations

import binascii
import ipaddress
import json
import re
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nitro_attest.attestation.caller_keys import CALLER_KEY_PCR
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.errors import ConfigurationError, TransportError, UsageError
from nitro_attest.kms.credentials import CredentialSource, ImdsCredentials
from nitro_attest.kms.envelope import open_envelope
from nitro_attest.kms.https import (
    DEFAULT_TIMEOUT,
    Answer,
    Connection,
    HeadTemplate,
    check_timeout,
    default_endpoint,
    parse_endpoint,
    tls_context,
)
from nitro_attest.kms.route import Route, parse_route
from nitro_attest.kms.sigv4 import Credentials, sign_request
from nitro_attest.nsm.backend import NsmBackend

# The operations that take a Recipient, and the field its envelope stands for.
RECIPIENT_OPERATIONS: dict[str, str] = {
    "Decrypt": "Plaintext",
    "GenerateDataKey": "Plaintext",
    "GenerateDataKeyPair": "PrivateKeyPlaintext",
    "GenerateRandom": "Plaintext",
    "DeriveSharedSecret": "SharedSecret",
}
# Each answer's fields in the order of KMS's output shape (the API model), which is the order
# the AWS CLI prints them in whatever order the JSON came: our output matches it text for text.
OUTPUT_ORDER: dict[str, tuple[str, ...]] = {
    "Decrypt": ("KeyId", "Plaintext", "EncryptionAlgorithm", "KeyMaterialId"),
    "GenerateDataKey": ("CiphertextBlob", "Plaintext", "KeyId", "KeyMaterialId"),
    "GenerateDataKeyPair": ("PrivateKeyCiphertextBlob", "PrivateKeyPlaintext", "PublicKey",
                            "KeyId", "KeyPairSpec", "KeyMaterialId"),
    "GenerateRandom": ("Plaintext",),
    "DeriveSharedSecret": ("KeyId", "SharedSecret", "KeyAgreementAlgorithm", "KeyOrigin"),
}
KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
MAX_REQUEST_BYTES = 64 * 1024
MAX_IDLE_CONNECTIONS = 4
MAX_TEMPLATES = 32  # request heads' fixed parts kept per client, one per operation name
_REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+){1,4}\Z")
# Operations that name a key; with require_key_arn they must name it by full key ARN.
KEYED_OPERATIONS = frozenset({"Decrypt", "GenerateDataKey", "GenerateDataKeyPair",
                              "DeriveSharedSecret"})
_KEY_FIELDS = ("KeyId", "SourceKeyId", "DestinationKeyId")
_LOOPBACK_NAMES = ("localhost", "localhost.")
_OPERATION = re.compile(r"[A-Z][A-Za-z]{1,63}\Z")


# KMS's answers that fresh credentials from IMDS may cure (the client retries once).
STALE_CREDENTIALS = frozenset({"ExpiredTokenException", "UnrecognizedClientException"})


class KmsError(TransportError):
    """KMS answered with an error: ``code`` is its ``__type`` (without a namespace), ``status``
    the HTTP status. ``str()`` is one line: ``code: message``."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.kms_message = message
        self.status = status


class KmsResponseError(TransportError):
    """An answer that is not what KMS sends (not JSON, no envelope, a plaintext beside one)."""


@dataclass(frozen=True, slots=True)
class KmsResult:
    """One call's answer: ``fields`` as KMS would have sent them without a Recipient (binary
    fields base64, the plaintext field filled in), what the AWS CLI prints; ``secret`` the raw
    plaintext (``None`` for operations without one)."""

    operation: str
    fields: dict[str, Any]
    secret: bytes | None = None

    def __repr__(self) -> str:
        """Without the plaintext: a result logged or shown in a traceback leaks no secret."""
        hidden = RECIPIENT_OPERATIONS.get(self.operation)
        shown = {k: ("..." if k == hidden else v) for k, v in self.fields.items()}
        secret = "None" if self.secret is None else f"<{len(self.secret)} bytes>"
        return f"KmsResult(operation={self.operation!r}, fields={shown!r}, secret={secret})"


class RecipientKey:
    """An RSA-2048 key made in this process; the private half never leaves it."""

    __slots__ = ("private_key", "spki")

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.spki = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class KmsClient:
    """AWS KMS with attestation, from the enclave. Thread-safe; keeps connections alive."""

    def __init__(
        self,
        *,
        region: str,
        nsm: NsmBackend,
        credentials: Credentials | CredentialSource,
        endpoint: str | None = None,
        via: Route | str | None = None,
        ca_bundle: str | Path | None = None,
        tls: ssl.SSLContext | None = None,
        insecure_http: bool = False,
        key_per_call: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], datetime] | None = None,
        require_key_arn: bool | None = None,
    ) -> None:
        if not _REGION.match(region):
            raise ConfigurationError(f"--region {region[:40]!r}: not an AWS region name")
        timeout = check_timeout(timeout)  # here, not at the first call's connection
        self.region = region
        self.endpoint = parse_endpoint(endpoint or default_endpoint(region),
                                       insecure_http=insecure_http)
        self.route = via if isinstance(via, Route) else parse_route(via)
        self._host_header = self.endpoint.host_header  # what every request names and signs
        if not self.endpoint.tls:
            _check_plain_http(self.endpoint.host, self.route)
        # Credentials from IMDS are the parent's to choose (it answers IMDS): they may be of an
        # account it owns, where an alias or bare key id resolves to its key, and a Decrypt
        # without KeyId opens a blob it made. So every key is then named by full ARN.
        self.require_key_arn = (
            isinstance(credentials, ImdsCredentials) if require_key_arn is None
            else require_key_arn
        )
        self._key_arn = re.compile(
            rf"arn:aws[a-z-]*:kms:{re.escape(region)}:[0-9]{{12}}:key/[A-Za-z0-9-]{{1,128}}\Z")
        self._context = None
        if self.endpoint.tls:
            if tls is not None and (tls.verify_mode != ssl.CERT_REQUIRED or not tls.check_hostname):
                raise ConfigurationError(
                    "the TLS context does not verify KMS's certificate and host name: the parent "
                    "could answer in KMS's place (use kms.https.tls_context or a default one)")
            self._context = tls if tls is not None else tls_context(ca_bundle)
        self._nsm = nsm
        lock_caller_key_pcr(nsm)
        self._credentials: CredentialSource = (
            (lambda: credentials) if isinstance(credentials, Credentials) else credentials
        )
        self._key_per_call = key_per_call
        self._key = None if key_per_call else RecipientKey()
        self._timeout = timeout
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._nsm_lock = threading.Lock()
        self._idle: list[Connection] = []
        self._templates: dict[str, HeadTemplate] = {}

    # --- the five Recipient operations, shaped like boto3's ------------------------------------

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
        encryption_algorithm: str | None = None,
        grant_tokens: list[str] | None = None,
    ) -> KmsResult:
        """Decrypt; ``secret`` is the Plaintext, opened from the envelope to this key."""
        try:
            blob = binascii.b2a_base64(ciphertext_blob, newline=False)
        except TypeError:
            raise UsageError("decrypt: the ciphertext blob must be bytes") from None
        if (key_id is None and encryption_context is None and encryption_algorithm is None
                and grant_tokens is None):  # the commonest call: its JSON written as bytes
            return self._call("Decrypt", {"CiphertextBlob": blob.decode("ascii")},
                              b'{"CiphertextBlob":"' + blob + b'"}')
        body: dict[str, Any] = {"CiphertextBlob": blob.decode("ascii")}
        _put(body, "KeyId", key_id)
        _put(body, "EncryptionContext", dict(encryption_context) if encryption_context else None)
        _put(body, "EncryptionAlgorithm", encryption_algorithm)
        _put(body, "GrantTokens", grant_tokens)
        return self.call("Decrypt", body)

    def generate_data_key(
        self,
        key_id: str,
        *,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> KmsResult:
        """GenerateDataKey (``key_spec`` or ``number_of_bytes``); ``secret`` is the Plaintext,
        ``fields["CiphertextBlob"]`` its encrypted copy."""
        if (key_spec is None) == (number_of_bytes is None):
            raise UsageError("generate_data_key needs exactly one of key_spec, number_of_bytes")
        body: dict[str, Any] = {"KeyId": key_id}
        _put(body, "KeySpec", key_spec)
        _put(body, "NumberOfBytes", number_of_bytes)
        _put(body, "EncryptionContext", dict(encryption_context) if encryption_context else None)
        return self.call("GenerateDataKey", body)

    def generate_data_key_pair(
        self,
        key_id: str,
        key_pair_spec: str,
        *,
        encryption_context: Mapping[str, str] | None = None,
    ) -> KmsResult:
        """GenerateDataKeyPair; ``secret`` is the PrivateKeyPlaintext (PKCS#8 DER)."""
        body: dict[str, Any] = {"KeyId": key_id, "KeyPairSpec": key_pair_spec}
        _put(body, "EncryptionContext", dict(encryption_context) if encryption_context else None)
        return self.call("GenerateDataKeyPair", body)

    def generate_random(self, number_of_bytes: int) -> KmsResult:
        """GenerateRandom; ``secret`` holds the bytes."""
        return self.call("GenerateRandom", {"NumberOfBytes": number_of_bytes})

    def derive_shared_secret(
        self, key_id: str, public_key: bytes, *, key_agreement_algorithm: str = "ECDH"
    ) -> KmsResult:
        """DeriveSharedSecret with the peer's ``public_key`` (SubjectPublicKeyInfo DER);
        ``secret`` is the SharedSecret."""
        return self.call("DeriveSharedSecret", {
            "KeyId": key_id, "KeyAgreementAlgorithm": key_agreement_algorithm,
            "PublicKey": _b64(public_key),
        })

    # --- any operation -------------------------------------------------------------------------

    def call(self, operation: str, body: Mapping[str, Any]) -> KmsResult:
        """Send ``operation`` with ``body`` (KMS's JSON, binary fields base64). For the five
        Recipient operations a Recipient is added (replacing any given) and the envelope opened;
        other operations go as they are, signed."""
        if operation not in RECIPIENT_OPERATIONS and not _OPERATION.match(operation):
            raise UsageError(f"{operation[:64]!r} is not a KMS operation name")
        request = dict(body)
        if operation in RECIPIENT_OPERATIONS:
            request.pop("Recipient", None)  # replaced by ours
        return self._call(operation, request, _json(request))

    def _call(self, operation: str, request: Mapping[str, Any], payload: bytes) -> KmsResult:
        """``call`` once ``payload`` is ``request`` as JSON (without the Recipient)."""
        if self.require_key_arn:
            self._check_key_arns(operation, request)
        field = RECIPIENT_OPERATIONS.get(operation)
        key = None
        if field is not None:
            key = self._key or RecipientKey()
            payload = _with_recipient(payload, self._document(key))
        if len(payload) > MAX_REQUEST_BYTES:
            raise UsageError(f"{operation} request of {len(payload)} bytes, more than "
                             f"{MAX_REQUEST_BYTES}")
        answer = self._send(operation, payload)
        try:
            fields = _answer_fields(answer)
        except KmsError as exc:
            # Only KMS can say this (TLS ends here): the cached IMDS credentials were replaced
            # or the clock kept them too long. Fetch them again and send once more.
            invalidate = getattr(self._credentials, "invalidate", None)
            if exc.code not in STALE_CREDENTIALS or invalidate is None:
                raise
            invalidate()
            fields = _answer_fields(self._send(operation, payload))
        asked = request.get("KeyId")
        if self.require_key_arn and operation in KEYED_OPERATIONS and (
            fields.get("KeyId") != asked
        ):
            raise KmsResponseError(f"{operation}: the answer's KeyId is not the key asked for "
                                   f"({escape_untrusted(str(fields.get('KeyId'))[:200])})")
        if key is None or field is None:
            return KmsResult(operation, fields)
        return self._open(operation, field, fields, key)

    def _check_key_arns(self, operation: str, request: Mapping[str, Any]) -> None:
        """Every key the request names is a full key ARN of this region (not an alias, a bare
        key id, an alias ARN); a keyed operation names one (a Decrypt too)."""
        for name in _KEY_FIELDS:
            value = request.get(name)
            if value is None and not (name == "KeyId" and operation in KEYED_OPERATIONS):
                continue
            if not isinstance(value, str) or not self._key_arn.match(value):
                shown = "none" if value is None else repr(str(value)[:100])
                raise UsageError(
                    f"{operation}: {name} {shown} is not a full key ARN "
                    f"(arn:aws:kms:{self.region}:ACCOUNT:key/ID); with credentials the parent "
                    "hands out (IMDS) an alias, a bare key id or no KeyId could mean a key of "
                    "the parent's own account")

    def _document(self, key: RecipientKey) -> bytes:
        with self._nsm_lock:  # one NSM (one /dev/nsm descriptor) for every thread
            return self._nsm.attestation(public_key=key.spki)

    def _template(self, operation: str) -> HeadTemplate:
        """The request head's fixed part for ``operation`` (request line, Host, Content-Type,
        X-Amz-Target), checked once and kept (for the first few operations a client calls)."""
        template = self._templates.get(operation)
        if template is None:
            template = HeadTemplate("POST", "/", (
                ("Host", self._host_header),
                ("Content-Type", "application/x-amz-json-1.1"),
                ("X-Amz-Target", f"TrentService.{operation}"),
            ))
            if len(self._templates) < MAX_TEMPLATES:
                self._templates[operation] = template
        return template

    def _send(self, operation: str, payload: bytes) -> Answer:
        template = self._template(operation)
        signature = sign_request(
            "POST", "/", [], template.fields, payload, self._credentials(),
            region=self.region, service="kms", when=self._clock(),
        )
        head = template.head(signature, length=len(payload))
        connection = self._acquire()
        try:
            answer = connection.send("POST", head, payload)
        except BaseException:
            connection.close()
            raise
        self._release(connection)
        return answer

    def _open(
        self, operation: str, field: str, fields: dict[str, Any], key: RecipientKey
    ) -> KmsResult:
        envelope_text = fields.pop("CiphertextForRecipient", None)
        if fields.get(field) is not None:
            raise KmsResponseError(f"{operation}: the answer to a Recipient request carries "
                                   f"{field} itself; KMS never does (refused)")
        if not isinstance(envelope_text, str) or not envelope_text:
            raise KmsResponseError(f"{operation}: the answer has no CiphertextForRecipient")
        try:  # one pass: the alphabet, the padding and nothing after it checked as it decodes
            envelope = binascii.a2b_base64(envelope_text, strict_mode=True)
        except (binascii.Error, ValueError):
            raise KmsResponseError(f"{operation}: CiphertextForRecipient is not base64") from None
        secret = open_envelope(envelope, key.private_key)
        fields[field] = _b64(secret)
        # KMS's output order, then any other field as it came
        ordered = {name: fields.pop(name) for name in OUTPUT_ORDER[operation] if name in fields}
        ordered.update(fields)
        return KmsResult(operation, ordered, secret)

    # --- connections ---------------------------------------------------------------------------

    def _acquire(self) -> Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Connection(self.endpoint, self.route, self._context, timeout=self._timeout)

    def _release(self, connection: Connection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the kept-alive connections (the NSM stays open: it is the caller's)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def __enter__(self) -> KmsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lock_caller_key_pcr(nsm: NsmBackend) -> None:
    """Lock PCR16 (``caller_keys.CALLER_KEY_PCR``) as it stands, so every document names it.

    Key policies from ``kms policy`` pin it to all zero: the enclave never let callers choose the
    keys it attests. Locked already (by ``serve``, marked or not) it stays as it is; unlocked, it
    is locked now, pristine unless something extended it, and a later
    ``serve --allow-caller-public-key`` in this enclave can no longer mark it: fail closed.
    """
    if not nsm.describe_pcr(CALLER_KEY_PCR).locked:
        nsm.lock_pcr(CALLER_KEY_PCR)


def _check_plain_http(host: str, route: Route) -> None:
    """Plain HTTP only to a KMS on this machine's loopback, dialled directly: any route is the
    parent, which would read the document in the request and answer with an envelope to its key
    holding a plaintext of its choosing."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower() in _LOOPBACK_NAMES
    if not loopback or route.mode != "direct":
        raise ConfigurationError(
            f"--insecure-http to {host[:80]} via {route}: plain HTTP is only for a local KMS on "
            "loopback reached directly (through a route, the parent reads and answers it)")


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


# Made once: json.dumps with options makes a new encoder every call. NaN and infinities are not
# JSON (the encoder would write them as Python's words).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


_DECODER = json.JSONDecoder()


def _json(body: Mapping[str, Any]) -> bytes:
    try:
        return _ENCODER.encode(body).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # bytes, a set, NaN, a cycle...
        raise UsageError(f"the request is not JSON: {str(exc)[:100]}") from None


# The Recipient member as bytes around the document's base64 (which JSON needs no escape for):
# the document, ~6 KiB of base64, is written once, not scanned again by the JSON encoder.
_RECIPIENT_HEAD = _json({"KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM,
                         "AttestationDocument": ""})[:-2]


def _with_recipient(payload: bytes, document: bytes) -> bytes:
    """``payload`` (a JSON object without a Recipient, as ``_json`` writes it) with
    ``"Recipient":{...}`` naming ``document`` as its last member."""
    return b"".join((payload[:-1], b"," if payload != b"{}" else b"", b'"Recipient":',
                     _RECIPIENT_HEAD, binascii.b2a_base64(document, newline=False), b'"}}'))


def _put(body: dict[str, Any], name: str, value: Any) -> None:
    if value is not None:
        body[name] = value


def _answer_fields(answer: Answer) -> dict[str, Any]:
    """The JSON object of a 200 answer; a ``KmsError`` for KMS's error answers."""
    try:  # UTF-8 only (RFC 8259 8.1), as KMS writes it
        decoded = _DECODER.decode(answer.body.decode("utf-8")) if answer.body else None
    except (ValueError, RecursionError):
        decoded = None
    if answer.status != 200:
        raise _error(answer.status, decoded)
    if not isinstance(decoded, dict):
        raise KmsResponseError("KMS's answer is not a JSON object")
    return decoded


def _error(status: int, decoded: Any) -> KmsError:
    """KMS's ``{"__type": ..., "message": ...}`` (botocore also reads ``Message``), one line."""
    code = message = ""
    if isinstance(decoded, dict):
        raw_type = decoded.get("__type")
        raw_message = decoded.get("message", decoded.get("Message"))
        code = raw_type.rpartition("#")[2] if isinstance(raw_type, str) else ""
        message = raw_message if isinstance(raw_message, str) else ""
    code = escape_untrusted(code[:128]) or f"HTTP{status}"
    return KmsError(code, escape_untrusted(message[:500]), status)


__all__ = [
    "KEYED_OPERATIONS",
    "RECIPIENT_OPERATIONS",
    "KmsClient",
    "KmsError",
    "KmsResponseError",
    "KmsResult",
    "RecipientKey",
]
