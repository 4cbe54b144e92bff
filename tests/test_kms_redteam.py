"""The parent instance against the enclave's KMS client: findings of the rt-kms red team.

Each test is an attack that worked before its fix (docs/kms.md, "Red team").
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nitro_attest.errors import ConfigurationError, UsageError
from nitro_attest.kms.client import KmsClient, KmsResponseError
from nitro_attest.kms.credentials import ImdsCredentials
from nitro_attest.kms.route import parse_route
from nitro_attest.nsm import open_backend
from nitro_attest.nsm.backend import NsmBackend
from tests.kmsclientkit import BLOB_PREFIX, CREDS, KEY_ARN, REGION, FakeKms, Pki, make_pki

OTHER_ACCOUNT_ARN = KEY_ARN.replace("111122223333", "444455556666")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def nsm(sim_state: Path) -> Iterator[NsmBackend]:
    backend = open_backend("simulator", state_dir=sim_state)
    yield backend
    backend.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _imds_client(nsm: NsmBackend, pki: Pki, **kw: Any) -> KmsClient:
    """Credentials from IMDS, which the parent answers: nothing listens here, so a call that
    reached for credentials would fail with a CredentialsError, not the refusal expected."""
    source = ImdsCredentials(parse_route("direct"), host="127.0.0.1", port=_closed_port(),
                             timeout=1)
    return KmsClient(region=REGION, nsm=nsm, credentials=source, ca_bundle=pki.ca,
                     via="tcp://127.0.0.1:1", **kw)


# --- 1. IMDS credentials of the parent's own account, and keys not named by full ARN ---------
# The parent answers IMDS with credentials of an account it owns. An alias or bare key id then
# resolves in that account; a Decrypt without KeyId opens whatever blob the parent put in the
# enclave's storage, made under a key the parent owns. Either way the enclave gets a plaintext
# the parent chose or can decrypt itself; an Encrypt passed through encrypts the enclave's
# secret to the parent's key.

@pytest.mark.parametrize("call", [
    lambda c: c.decrypt(BLOB_PREFIX + b"x"),
    lambda c: c.decrypt(BLOB_PREFIX + b"x", key_id="alias/app"),
    lambda c: c.generate_data_key("alias/app", key_spec="AES_256"),
    lambda c: c.generate_data_key("1234abcd-12ab-34cd-56ef-1234567890ab", key_spec="AES_256"),
    lambda c: c.generate_data_key(KEY_ARN.replace("us-east-1", "eu-west-1"), key_spec="AES_256"),
    lambda c: c.generate_data_key_pair("arn:aws:kms:us-east-1:111122223333:alias/app",
                                       "ECC_NIST_P256"),
    lambda c: c.derive_shared_secret("alias/app", b"peer"),
    lambda c: c.call("Encrypt", {"KeyId": "alias/app", "Plaintext": "c2VjcmV0"}),
    lambda c: c.call("ReEncrypt", {"CiphertextBlob": "eA==", "DestinationKeyId": "alias/app"}),
])
def test_imds_credentials_need_every_key_named_by_full_arn(
    nsm: NsmBackend, pki: Pki, call: Any
) -> None:
    with _imds_client(nsm, pki) as client, pytest.raises(UsageError, match="full key ARN"):
        call(client)


def test_require_key_arn_refuses_an_answer_for_another_key(
    nsm: NsmBackend, pki: Pki
) -> None:
    with FakeKms(pki) as kms, KmsClient(
        region=REGION, nsm=nsm, credentials=CREDS, ca_bundle=pki.ca,
        via=f"tcp://127.0.0.1:{kms.port}", require_key_arn=True,
    ) as client:
        assert client.decrypt(BLOB_PREFIX + b"ok", key_id=KEY_ARN).secret == b"ok"
        # the fake KMS answers with KEY_ARN whatever was asked: a key the request did not name
        with pytest.raises(KmsResponseError, match="KeyId"):
            client.generate_data_key(OTHER_ACCOUNT_ARN, key_spec="AES_256")
        with pytest.raises(UsageError, match="full key ARN"):
            client.decrypt(BLOB_PREFIX + b"x")


def test_cli_imds_decrypt_without_key_arn_is_refused(
    capsys: pytest.CaptureFixture[str], sim_state: Path, tmp_path: Path, pki: Pki
) -> None:
    from nitro_attest._cli import main

    blob = tmp_path / "blob.bin"
    blob.write_bytes(BLOB_PREFIX + b"x")
    rc = main(["kms", "decrypt", "--ciphertext-blob", str(blob), "--region", REGION,
               "--credentials-from", "imds", "--via", "direct", "--ca-bundle", str(pki.ca),
               "--endpoint", "https://127.0.0.1:1", "--nsm", "simulator", "--state",
               str(sim_state), "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "full key ARN" in err, err


# --- 2. --insecure-http through the parent ---------------------------------------------------
# Plain HTTP is for a local KMS on loopback; to any other host, or through a route (every route
# is the parent), the parent reads the document in the request and answers with an envelope to
# its key holding a plaintext of its choice.

@pytest.mark.parametrize(("endpoint", "via"), [
    ("http://kms.us-east-1.amazonaws.com", None),
    ("http://10.0.0.1:8080", None),
    ("http://127.0.0.1:4566", "vsock://3:8000"),
    ("http://127.0.0.1:4566", "tcp://127.0.0.1:8000"),
    ("http://localhost:4566", "connect://127.0.0.1:3128"),
])
def test_insecure_http_only_to_a_loopback_kms_without_a_route(
    nsm: NsmBackend, endpoint: str, via: str | None
) -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        KmsClient(region=REGION, nsm=nsm, credentials=CREDS, endpoint=endpoint, via=via,
                  insecure_http=True)


def test_insecure_http_to_a_loopback_kms_still_works(nsm: NsmBackend) -> None:
    with FakeKms(None) as kms, KmsClient(
        region=REGION, nsm=nsm, credentials=CREDS, insecure_http=True,
        endpoint=f"http://localhost:{kms.port}",
    ) as client:
        assert len(client.generate_random(4).secret or b"") == 4


# --- 3. A parent that never stops answering: endless 100 Continue, a trickled body or CONNECT ----
# The timeout bounded each recv, not the answer: IMDS (the parent) sending "100 Continue" heads
# forever, or a body a byte at a time, or a CONNECT proxy trickling its answer, held the client
# (and the credentials lock every thread waits on) for hours. Now the whole answer must arrive
# within the timeout.

class _Trickler:
    """A TCP server that answers every connection with ``pieces``, one per ``gap`` seconds,
    for at most ``limit`` seconds, then closes."""

    def __init__(self, pieces: Any, gap: float, limit: float = 12.0) -> None:
        import threading

        self._pieces, self._gap, self._limit = pieces, gap, limit
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import time

        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                    end = time.monotonic() + self._limit
                    for piece in self._pieces():
                        if self._stop.is_set() or time.monotonic() > end:
                            break
                        conn.sendall(piece)
                        time.sleep(self._gap)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


def _endless_continue() -> Iterator[bytes]:
    while True:
        yield b"HTTP/1.1 100 Continue\r\n\r\n"


def _trickled_body() -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    while True:
        yield b"x"


def _trickled_connect_answer() -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\n"
    while True:
        yield b"X-Pad: x\r\n"


@pytest.mark.parametrize("pieces", [_endless_continue, _trickled_body])
def test_imds_that_never_finishes_its_answer_times_out(pieces: Any) -> None:
    import time

    from nitro_attest.kms.credentials import CredentialsError

    server = _Trickler(pieces, gap=0.2)
    try:
        source = ImdsCredentials(parse_route("direct"), host="127.0.0.1", port=server.port,
                                 timeout=1)
        started = time.monotonic()
        with pytest.raises(CredentialsError, match=r"timed out|interim"):
            source()
        assert time.monotonic() - started < 4
    finally:
        server.close()


def test_connect_proxy_that_trickles_its_answer_times_out() -> None:
    import time

    from nitro_attest.errors import TransportError

    server = _Trickler(_trickled_connect_answer, gap=0.2)
    try:
        route = parse_route(f"connect://127.0.0.1:{server.port}")
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            route.dial("kms.us-east-1.amazonaws.com", 443, timeout=1)
        assert time.monotonic() - started < 4
    finally:
        server.close()


# --- 4. The plaintext in a repr ----------------------------------------------------------------
# KmsResult's default repr printed the secret and the base64 plaintext field: one
# log.debug("%r", result), an assertion message or a traceback with locals put the data key in
# a log the parent collects (Credentials already hid its secret the same way).

def test_kms_result_repr_shows_no_plaintext(nsm: NsmBackend, pki: Pki) -> None:
    import base64

    with FakeKms(pki) as kms, KmsClient(
        region=REGION, nsm=nsm, credentials=CREDS, ca_bundle=pki.ca,
        via=f"tcp://127.0.0.1:{kms.port}",
    ) as client:
        result = client.decrypt(BLOB_PREFIX + b"TOPSECRET-data-key", key_id=KEY_ARN)
    assert result.secret == b"TOPSECRET-data-key"
    shown = repr(result) + str(result)
    assert "TOPSECRET" not in shown
    assert base64.b64encode(b"TOPSECRET-data-key").decode() not in shown
    assert "Decrypt" in shown and KEY_ARN in shown  # the rest is still there to debug with


# --- 5. A TLS context that checks nothing ------------------------------------------------------
# KmsClient(tls=...) took any context: one made with ssl._create_unverified_context() (or
# check_hostname off) let the parent answer in KMS's place with a certificate of its own, and
# choose the plaintext. A context that does not verify the certificate and the name is refused.

def test_a_tls_context_that_does_not_verify_is_refused(nsm: NsmBackend) -> None:
    import ssl

    unverified = ssl._create_unverified_context()
    no_name = ssl.create_default_context()
    no_name.check_hostname = False
    for context in (unverified, no_name):
        with pytest.raises(ConfigurationError, match="verif"):
            KmsClient(region=REGION, nsm=nsm, credentials=CREDS, tls=context)


def test_kms_proxy_answers_a_key_arn_refusal_as_a_validation_error(
    nsm: NsmBackend, pki: Pki
) -> None:
    """An SDK's Decrypt without KeyId, through `kms proxy` with IMDS credentials: refused as the
    caller's mistake (400 ValidationException, which SDKs do not retry), not a 500."""
    import json
    import urllib.request

    from nitro_attest.kms.sdk_proxy import KmsProxy

    client = _imds_client(nsm, pki)
    proxy = KmsProxy(client, ("127.0.0.1", 0))
    proxy.start()
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{proxy.address[1]}/", method="POST",
            data=json.dumps({"CiphertextBlob": "eA=="}).encode(),
            headers={"X-Amz-Target": "TrentService.Decrypt",
                     "Content-Type": "application/x-amz-json-1.1"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        answer = json.loads(caught.value.read())
        assert caught.value.code == 400
        assert answer["__type"] == "ValidationException" and "full key ARN" in answer["message"]
    finally:
        proxy.close()
        client.close()
