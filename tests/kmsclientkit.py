"""What the KMS client's tests stand on: test CAs and certificates, a small fake KMS over real TLS
(it checks SigV4 and seals real envelopes to the document's key), and parents that attack.

The fake KMS is not the local KMS (``nitro_attest.kms_emulator``): it is the smallest server that
answers the five Recipient operations the way KMS's documentation says, so the client's TLS,
signing, envelope and error paths are exercised on their own; the end-to-end tests run the
emulator too.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nitro_attest.attestation.document import parse_document
from nitro_attest.kms.envelope import seal_envelope
from nitro_attest.kms.sigv4 import Credentials, expected_signature, parse_authorization

KMS_HOST = "kms.us-east-1.amazonaws.com"
REGION = "us-east-1"
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CREDS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "tok+en/=")
ENV = {"AWS_ACCESS_KEY_ID": CREDS.access_key_id, "AWS_SECRET_ACCESS_KEY": CREDS.secret_access_key,
       "AWS_SESSION_TOKEN": CREDS.session_token or ""}
BLOB_PREFIX = b"fake-kms-blob:"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA bundle a client trusts
    cert: Path  # the server's certificate (chain) and key
    key: Path


def make_pki(folder: Path, *, names: tuple[str, ...] = (KMS_HOST, "localhost"),
             ips: tuple[str, ...] = ("127.0.0.1",), label: str = "test") -> Pki:
    """A CA and a server certificate it signs for ``names`` and ``ips``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label} CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return pki


def server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    return context


@dataclass
class Seen:
    """What the fake KMS received (decrypted): one entry per request, and TLS failures."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    tls_errors: list[str] = field(default_factory=list)
    connections: int = 0


Tamper = Callable[[str, dict[str, Any]], dict[str, Any]]


class FakeKms:
    """A KMS over TLS (or plain HTTP) on 127.0.0.1 answering the Recipient operations."""

    def __init__(self, pki: Pki | None, *, tamper: Tamper | None = None,
                 chunk: int | None = None) -> None:
        self.seen = Seen()
        self.tamper = tamper
        self.chunk = chunk
        self.drop_after_answer = False  # close each connection after its answer, unannounced
        self._context = server_context(pki) if pki else None
        kms = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, answer = kms.answer(self, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if kms.drop_after_answer:
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, addr = self.socket.accept()
                kms.seen.connections += 1
                if kms._context is None:
                    return sock, addr
                sock.settimeout(5)
                try:
                    return kms._context.wrap_socket(sock, server_side=True), addr
                except (ssl.SSLError, OSError) as exc:
                    kms.seen.tls_errors.append(str(exc))
                    sock.close()
                    raise

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKms:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, Any]]:
        target = handler.headers["X-Amz-Target"]
        op = target.removeprefix("TrentService.")
        request = json.loads(body)
        self.seen.requests.append({"op": op, "body": request, "raw": body,
                                   "headers": dict(handler.headers)})
        auth = parse_authorization(handler.headers["Authorization"])
        headers = [(k, v) for k, v in handler.headers.items() if k.lower() in auth.signed_headers]
        want = expected_signature("POST", "/", [], headers, body, CREDS.secret_access_key, auth,
                                  handler.headers["X-Amz-Date"])
        if auth.access_key_id != CREDS.access_key_id:  # as KMS answers an unknown key id
            return 400, {"__type": "UnrecognizedClientException",
                         "message": "The security token included in the request is invalid."}
        if not hmac.compare_digest(want, auth.signature):
            return 400, {"__type": "InvalidSignatureException", "message": "bad signature"}
        if request.get("KeyId") == "missing":
            return 400, {"__type": "com.amazonaws.kms#NotFoundException",
                         "message": "Key 'missing' does not exist"}
        answer, secret = self._operation(op, request)
        if secret is not None and "Recipient" in request:
            recipient = request["Recipient"]
            assert recipient["KeyEncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"
            doc = parse_document(base64.b64decode(recipient["AttestationDocument"]))
            assert doc.public_key is not None
            public = serialization.load_der_public_key(doc.public_key)
            envelope = seal_envelope(secret, public, chunk=self.chunk)  # type: ignore[arg-type]
            answer["CiphertextForRecipient"] = base64.b64encode(envelope).decode()
        elif secret is not None:
            answer[_FIELDS[op]] = base64.b64encode(secret).decode()
        if self.tamper:
            answer = self.tamper(op, answer)
        return 200, answer

    def _operation(self, op: str, req: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        if op == "Decrypt":
            blob = base64.b64decode(req["CiphertextBlob"])
            return {"KeyId": KEY_ARN, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}, \
                blob.removeprefix(BLOB_PREFIX)
        if op == "GenerateDataKey":
            secret = os.urandom(req.get("NumberOfBytes") or 32)
            return {"CiphertextBlob": b64(BLOB_PREFIX + secret), "KeyId": KEY_ARN}, secret
        if op == "GenerateRandom":
            return {}, os.urandom(req["NumberOfBytes"])
        if op == "GenerateDataKeyPair":
            private = ec.generate_private_key(ec.SECP256R1())
            der = private.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            public = private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            return {"PrivateKeyCiphertextBlob": b64(BLOB_PREFIX + der), "PublicKey": b64(public),
                    "KeyId": KEY_ARN, "KeyPairSpec": req["KeyPairSpec"]}, der
        if op == "DeriveSharedSecret":
            return {"KeyId": KEY_ARN, "KeyAgreementAlgorithm": "ECDH",
                    "KeyOrigin": "AWS_KMS"}, b"shared:" + base64.b64decode(req["PublicKey"])[:8]
        if op == "Encrypt":
            plain = base64.b64decode(req["Plaintext"])
            return {"CiphertextBlob": b64(BLOB_PREFIX + plain), "KeyId": KEY_ARN,
                    "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}, None
        return {}, None


_FIELDS = {"Decrypt": "Plaintext", "GenerateDataKey": "Plaintext", "GenerateRandom": "Plaintext",
           "GenerateDataKeyPair": "PrivateKeyPlaintext", "DeriveSharedSecret": "SharedSecret"}


# --- parents ------------------------------------------------------------------------------------


class Recorder:
    """A parent that forwards raw TCP to ``target`` and records each connection's bytes, or, in
    ``replay`` mode, answers every new connection with the server bytes it recorded first."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up: list[bytearray] = []  # client -> server, per connection
        self.down: list[bytearray] = []  # server -> client, per connection
        self.replay: bytes | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            up, down = bytearray(), bytearray()
            self.up.append(up)
            self.down.append(down)
            if self.replay is not None:
                threading.Thread(target=self._replay, args=(client, up), daemon=True).start()
                continue
            server = socket.create_connection(self.target)
            for src, dst, log in ((client, server, up), (server, client, down)):
                threading.Thread(target=_pump, args=(src, dst, log), daemon=True).start()

    def _replay(self, client: socket.socket, up: bytearray) -> None:
        assert self.replay is not None
        client.settimeout(5)
        try:
            up += client.recv(65536)
            client.sendall(self.replay)
            while chunk := client.recv(65536):
                up += chunk
        except OSError:
            pass
        finally:
            client.close()


def _pump(src: socket.socket, dst: socket.socket, log: bytearray) -> None:
    try:
        while chunk := src.recv(65536):
            log += chunk
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@contextmanager
def env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
