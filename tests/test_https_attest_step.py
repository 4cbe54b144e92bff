"""https.attest.attest_connection: the one attestation step of https get's connection and of
AttestedTransport. The parent answers the attestation request: whatever it sends instead of a
document is a TransportError naming the server, and nothing but the request was sent."""

from __future__ import annotations

import pytest

from nitro_attest.attestation.verifier import Verifier
from nitro_attest.errors import TransportError
from nitro_attest.https.attest import (
    WELL_KNOWN,
    AttestationRefused,
    attest_connection,
)
from nitro_attest.https.well_known import DOCUMENT_TYPE

from .httpskit import POLICY


def test_no_certificate_is_refused_before_anything_is_sent() -> None:
    sent: list[bytes] = []
    with pytest.raises(TransportError, match=r"^enclave\.example:8443: the server sent no cert"):
        attest_connection(sent.append, lambda: b"", None, authority="enclave.example:8443",
                          verifier=Verifier(), policy=POLICY)
    assert sent == []


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", "HTTP status 500, not 200"),
        (b"", "connection closed before its head"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1\r\n\r\nx",
         "not an attestation document"),
    ],
)
def test_a_bad_answer_names_the_server(answer: bytes, message: str) -> None:
    sent: list[bytes] = []
    pieces = iter([answer, b""])
    with pytest.raises(TransportError) as info:
        attest_connection(sent.append, lambda: next(pieces), b"cert",
                          authority="enclave.example:8443", verifier=Verifier(), policy=POLICY)
    assert info.value.message.startswith("enclave.example:8443: attestation answer: ")
    assert message in info.value.message
    (request,) = sent  # the attestation request only, for this authority, with a fresh nonce
    assert request.startswith(f"GET {WELL_KNOWN}?nonce=".encode())
    assert b"\r\nhost: enclave.example:8443\r\n" in request


def test_a_certificate_without_a_key_is_refused_once_the_answer_is_in() -> None:
    """A certificate without a readable key is refused (public_key) once a well-formed answer
    is in, with only the attestation request sent."""
    sent: list[bytes] = []
    body = b"\x84" + b"x" * 40  # never verified: the certificate has no key to expect
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: " + DOCUMENT_TYPE + b"\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    pieces = iter([answer, b""])
    with pytest.raises(AttestationRefused) as info:
        attest_connection(sent.append, lambda: next(pieces), b"not DER",
                          authority="enclave.example:8443", verifier=Verifier(), policy=POLICY)
    assert info.value.check == "public_key"
    assert "does not parse as DER" in info.value.message
    assert next(pieces) == b""  # the answer was read first
    (request,) = sent
    assert request.startswith(f"GET {WELL_KNOWN}?nonce=".encode())

