"""The parent against the KMS client's speed changes: findings of the rt-kms2 red team.

Each test is an attack that worked before its fix (docs/kms.md, "Red team (rt-kms2)").
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from nitro_attest.attestation.document import parse_document
from nitro_attest.codec import ber
from nitro_attest.errors import ConfigurationError, TransportError
from nitro_attest.kms import envelope
from nitro_attest.kms.client import KmsClient, KmsError
from nitro_attest.kms.credentials import ImdsCredentials
from nitro_attest.kms.envelope import EnvelopeKeyError, open_envelope, parse_envelope, seal_envelope
from nitro_attest.kms.https import Connection, Endpoint, tls_context
from nitro_attest.kms.route import parse_route
from nitro_attest.kms.sigv4 import sign_request
from nitro_attest.kms_emulator.auth import Authenticator, Principal, SignedRequest
from nitro_attest.kms_emulator.errors import KmsApiError
from tests.kmsclientkit import (
    BLOB_PREFIX,
    CREDS,
    KEY_ARN,
    REGION,
    FakeKms,
    Pki,
    make_pki,
    server_context,
)
from tests.test_kms_wayout import ROLE_PATH, Imds

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextmanager
def parent(
    handle: Callable[[socket.socket, int], None], *, pki: Pki | None = None,
    before_handshake: float = 0.0, timeout: float = 1.0,
) -> Iterator[Connection]:
    """A far side the parent plays (TLS with ``pki``, after ``before_handshake`` seconds):
    ``handle(conn, n)`` runs for the n-th connection; a Connection to it with ``timeout``."""
    listener = socket.create_server(("127.0.0.1", 0))
    count = [0]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            count[0] += 1
            threading.Thread(target=run, args=(conn, count[0]), daemon=True).start()

    def run(conn: socket.socket, n: int) -> None:
        with contextlib.suppress(OSError), conn:
            time.sleep(before_handshake)
            if pki is not None:
                conn = server_context(pki).wrap_socket(conn, server_side=True)
            handle(conn, n)

    threading.Thread(target=serve, daemon=True).start()
    endpoint = Endpoint("https" if pki else "http", "127.0.0.1", listener.getsockname()[1])
    connection = Connection(endpoint, parse_route("direct"),
                            tls_context(pki.ca) if pki else None, timeout=timeout)
    try:
        yield connection
    finally:
        connection.close()
        listener.close()


def _read_request(conn: socket.socket) -> None:
    """One request head and its Content-Length body."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("closed")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r")[0])
    while len(rest) < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise OSError("closed")
        rest += chunk


def _timed(connection: Connection, body: bytes = b"{}") -> float:
    """Seconds until the request timed out (it must: before the fix each of these parents got
    its answer through, 1.2 s after the request, under a 0.9 s timeout)."""
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        connection.request("POST", "/", [("Host", "kms")], body)
    return time.monotonic() - started


# --- 1. The deadline was set again after the send -----------------------------------------------
# `--timeout` is "the whole answer within it", and docs/kms.md said the deadline bounds the whole
# exchange, sending included. But `_exchange` set a fresh deadline after the send: a parent that
# reads the request slowly and then answers slowly held the call for twice the timeout; a kept-
# alive connection held until just before the deadline and then closed got a second, fresh
# exchange (and connect) through the stale retry: up to six timeouts for one request.


def test_a_slow_read_and_a_slow_answer_share_one_deadline() -> None:
    """The parent takes 0.6 s to read the request, then 0.6 s to answer: 1.2 s in all, past
    the 0.9 s timeout, though each half fits in it."""
    def handle(conn: socket.socket, n: int) -> None:
        time.sleep(0.6)  # the 16 MiB request waits in the socket buffers meanwhile
        _read_request(conn)
        time.sleep(0.6)
        conn.sendall(ANSWER)

    with parent(handle, timeout=0.9) as connection:
        assert _timed(connection, bytes(16 * 1024 * 1024)) < 1.4


def test_the_stale_retry_shares_the_deadline() -> None:
    """A kept-alive connection: the parent holds the second request 0.6 s and closes it
    unanswered, so the client sends it again on a fresh connection, which the parent holds 0.6 s
    more before answering."""
    def handle(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        if n == 1:
            conn.sendall(ANSWER)
            _read_request(conn)
        time.sleep(0.6)
        if n == 2:
            conn.sendall(ANSWER)

    with parent(handle, timeout=0.9) as connection:
        assert connection.request("POST", "/", [("Host", "kms")], b"{}").body == b"ok"
        assert _timed(connection) < 1.4


def test_the_handshake_counts_against_the_deadline(pki: Pki) -> None:
    """The parent holds the TLS handshake 0.6 s, then the answer 0.6 s."""
    def handle(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        time.sleep(0.6)
        conn.sendall(ANSWER)

    with parent(handle, pki=pki, before_handshake=0.6, timeout=0.9) as connection:
        assert _timed(connection) < 1.4


def test_a_prompt_far_side_still_answers_within_the_deadline(pki: Pki) -> None:
    """The single deadline leaves an ordinary exchange alone: a fresh TLS connection, a stale
    one found and replaced, answers well within the timeout."""
    def handle(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        conn.sendall(ANSWER)
        if n == 1:  # then closed unannounced, as KMS does with an idle connection
            return
        _read_request(conn)
        conn.sendall(ANSWER)

    with parent(handle, pki=pki, timeout=2.0) as connection:
        for _ in range(3):
            assert connection.request("POST", "/", [("Host", "kms")], b"{}").body == b"ok"


# --- 2. A timeout poll() cannot take ------------------------------------------------------------
# The operator's `--timeout` went unchecked: since the waits became poll(), a timeout over ~24.8
# days (2**31 ms) raised OverflowError at the first wait, NaN a ValueError ("internal error"),
# infinity an OverflowError; 0 or less timed out every request without trying.


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 1e9, 0.0, -1.0])
def test_a_timeout_that_cannot_bound_a_wait_is_refused(timeout: float, sim_state: Path) -> None:
    from nitro_attest.nsm import open_backend

    endpoint = Endpoint("http", "127.0.0.1", 9)
    with pytest.raises(ConfigurationError, match="timeout"):
        Connection(endpoint, parse_route("direct"), None, timeout=timeout)
    with pytest.raises(ConfigurationError, match="timeout"):
        ImdsCredentials(parse_route("direct"), timeout=timeout)
    backend = open_backend("simulator", state_dir=sim_state)
    try:
        with pytest.raises(ConfigurationError, match="timeout"):
            KmsClient(region=REGION, nsm=backend, credentials=CREDS, timeout=timeout)
    finally:
        backend.close()


def test_a_long_timeout_still_works() -> None:
    """A day is allowed, and waits with it (poll's millisecond count stays in range)."""
    with parent(lambda conn, n: (_read_request(conn), conn.sendall(ANSWER)),
                timeout=86400.0) as connection:
        assert connection.request("POST", "/", [("Host", "kms")], b"{}").body == b"ok"


# --- Held: SigV4 with the derived key kept and values canonicalised by split/join -------------
# The emulator checks requests with the signer's own code (kms.sigv4). A request the client signed
# and then altered -- a value's case, a header repeated, a Content-Type parameter added, the date
# moved across midnight with the previous day's key kept -- is refused; white space and a header
# name's case are SigV4's own canonical form (botocore's too), accepted as AWS does.

_SIGNED_AT = datetime(2026, 12, 6, 23, 59, 59, tzinfo=UTC)


def _signed(when: datetime = _SIGNED_AT) -> list[tuple[str, str]]:
    headers = [("Host", "kms.us-east-1.amazonaws.com"),
               ("Content-Type", "application/x-amz-json-1.1"),
               ("X-Amz-Target", "TrentService.Decrypt")]
    headers += sign_request("POST", "/", [], headers, b"{}", CREDS, region=REGION,
                            service="kms", when=when)
    return headers


def _verdict(headers: list[tuple[str, str]], now: datetime) -> str:
    principal = Principal(CREDS.access_key_id, CREDS.secret_access_key,
                          "arn:aws:iam::111122223333:role/app", CREDS.session_token)
    request = SignedRequest("POST", "/", [], [(k.lower(), v) for k, v in headers], b"{}")
    try:
        Authenticator({CREDS.access_key_id: principal}, REGION).authenticate(request, now)
    except KmsApiError as exc:
        return exc.type_name
    return "accepted"


def _replace(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == name else v) for k, v in headers]


def test_altered_requests_are_refused_by_the_emulator() -> None:
    after_midnight = _SIGNED_AT + timedelta(seconds=31)
    headers = _signed()
    assert _verdict(headers, after_midnight) == "accepted"  # signed on the 6th, checked on the 7th
    bad = "InvalidSignatureException"
    target = "TrentService.Decrypt"
    assert _verdict(_replace(headers, "X-Amz-Target", target.lower()), after_midnight) == bad
    assert _verdict([*headers, ("X-Amz-Target", target)], after_midnight) == bad
    assert _verdict(_replace(headers, "Content-Type", "application/x-amz-json-1.1; charset=x"),
                    after_midnight) == bad
    # the date moved to the 7th, the scope with it: the 6th's key (kept) does not sign it
    moved = _replace(headers, "X-Amz-Date", "20261207T000001Z")
    auth = dict(headers)["Authorization"]
    assert _verdict(moved, after_midnight) == bad  # scope still the 6th: refused
    moved = _replace(moved, "Authorization", auth.replace("/20261206/", "/20261207/"))
    assert _verdict(moved, after_midnight) == bad
    # SigV4's canonical form: outer and repeated white space, a name's case
    spaced = _replace(headers, "X-Amz-Target", " TrentService.Decrypt\t")
    assert _verdict([(k.upper(), v) for k, v in spaced], after_midnight) == "accepted"
    # and the 7th's own signature, made after the 6th's key was kept, is accepted on the 7th
    assert _verdict(_signed(after_midnight), after_midnight) == "accepted"


# --- Held: the retry on ExpiredToken/UnrecognizedClient, with the parent answering IMDS --------
# The parent hands out credentials KMS refuses, then (asked again) others: the client sends the
# very same bytes once more (one Recipient, the client's key; nothing rebuilt between the sends)
# and stops there: two requests at most, whatever IMDS answers.


class _ParentImds(dict[str, tuple[int, bytes]]):
    """IMDS answers: the credentials of ``handed[i]`` for the i-th fetch (the last one after)."""

    def __init__(self, handed: list[dict[str, str]]) -> None:
        super().__init__()
        self.handed = handed
        self.fetches = 0

    def get(self, path: str, default: Any = None) -> tuple[int, bytes]:  # type: ignore[override]
        if path == "/latest/api/token":
            self.fetches += 1
            return 200, b"TOKEN"
        if path == ROLE_PATH:
            return 200, b"enclave-role"
        chosen = self.handed[min(self.fetches, len(self.handed)) - 1]
        return 200, json.dumps({"Code": "Success", "Expiration": "2999-01-01T00:00:00Z",
                                **chosen}).encode()


_PARENTS = {"AccessKeyId": "ASIAPARENT0000000001", "SecretAccessKey": "parent", "Token": "p"}
_RIGHT = {"AccessKeyId": CREDS.access_key_id, "SecretAccessKey": CREDS.secret_access_key,
          "Token": CREDS.session_token or ""}


@pytest.mark.parametrize(("handed", "works"), [([_PARENTS, _RIGHT], True),
                                               ([_PARENTS], False)])
def test_the_credentials_retry_sends_the_same_bytes_once_more(
    handed: list[dict[str, str]], works: bool, pki: Pki, sim_state: Path
) -> None:
    from nitro_attest.nsm import open_backend

    answers = _ParentImds(handed)
    imds = Imds(answers)
    backend = open_backend("simulator", state_dir=sim_state)
    try:
        source = ImdsCredentials(parse_route("direct"), host="127.0.0.1", port=imds.port)
        with FakeKms(pki) as kms, KmsClient(region=REGION, nsm=backend, credentials=source,
                                             via=f"tcp://127.0.0.1:{kms.port}",
                                             ca_bundle=pki.ca) as client:  # fmt: skip
            if works:
                assert client.decrypt(BLOB_PREFIX + b"s", key_id=KEY_ARN).secret == b"s"
            else:
                with pytest.raises(KmsError, match="UnrecognizedClientException"):
                    client.decrypt(BLOB_PREFIX + b"s", key_id=KEY_ARN)
            key = client._key
        assert answers.fetches == 2 and len(kms.seen.requests) == 2
        first, second = (seen["raw"] for seen in kms.seen.requests)
        assert first == second and first.count(b'"Recipient"') == 1
        assert [seen["headers"]["X-Amz-Security-Token"] for seen in kms.seen.requests] == [
            "p", "tok+en/=" if works else "p"]
        doc = json.loads(first)["Recipient"]["AttestationDocument"]
        assert key is not None
        assert parse_document(base64.b64decode(doc)).public_key == key.spki
    finally:
        backend.close()
        imds.close()


# --- 3. A close-delimited answer cut by the parent ----------------------------------------------
# TLS ends in the enclave, but the parent carries the TCP stream and can end it at any byte. The
# socket was wrapped with ssl's default suppress_ragged_eofs=True, so an EOF without TLS's
# close_notify read as a clean end: an answer framed by the connection's close, cut anywhere,
# came back as a whole answer. (KMS frames its answers by length; the reader accepts close
# framing, so the cut must not pass for an end.)


def test_a_close_delimited_answer_cut_without_close_notify_is_refused(pki: Pki) -> None:
    def cut(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        conn.sendall(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"Plaintext":"AAAA')
        # closed without close_notify: what the far side sees when the parent cuts the stream

    with parent(cut, pki=pki) as connection, pytest.raises(TransportError,
                                                           match="mid-answer, without TLS"):
        connection.request("POST", "/", [("Host", "kms")], b"{}")


def test_a_close_delimited_answer_ended_by_close_notify_is_whole(pki: Pki) -> None:
    def whole(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        conn.sendall(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"Plaintext":"AAAA"}')
        assert isinstance(conn, ssl.SSLSocket)
        conn.unwrap()  # close_notify: the end of the answer, said inside TLS

    with parent(whole, pki=pki) as connection:
        answer = connection.request("POST", "/", [("Host", "kms")], b"{}")
        assert answer.body == b'{"Plaintext":"AAAA"}'


# --- Held: no padding oracle on either path of the envelope reader ------------------------------


def _definite(item: ber.Tlv) -> ber.Tlv:
    """The same tree with every length definite: not KMS's byte shape, so the full reader's."""
    item.indefinite = False
    for child in item.children:
        _definite(child)
    return item


def test_wrong_key_bad_padding_and_bad_oaep_are_one_error_on_both_paths() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fast = seal_envelope(b"short", key.public_key())
    encrypted_key, iv, content = parse_envelope(fast)
    content_key = key.decrypt(encrypted_key, envelope._OAEP)
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    bad_block = encryptor.update(bytes(16)) + encryptor.finalize()
    flipped = encrypted_key[:-1] + bytes([encrypted_key[-1] ^ 1])
    errors: set[tuple[type, str]] = set()
    for shape in (fast, ber.encode(_definite(ber.decode(fast)))):
        assert (envelope._kms_shape(shape) is not None) == (shape is fast)
        assert open_envelope(shape, key) == b"short"
        for data, opener in ((shape, other), (shape.replace(content, bad_block), key),
                             (shape.replace(encrypted_key, flipped), key)):
            with pytest.raises(EnvelopeKeyError) as caught:
                open_envelope(data, opener)
            errors.add((type(caught.value), str(caught.value)))
    assert len(errors) == 1
