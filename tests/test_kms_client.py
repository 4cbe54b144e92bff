"""KmsClient against a fake KMS over real TLS, with `nitro-attest proxy` as the parent (raw
forward as vsock-proxy does, and HTTP CONNECT), and parents that attack.

The fake KMS (tests/kmsclientkit.py) checks SigV4 and seals real envelopes to the key the
document names; the local KMS (emulator) runs in tests/test_kms_e2e.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nitro_attest.attestation.document import parse_document
from nitro_attest.errors import TransportError
from nitro_attest.kms.client import (
    KmsClient,
    KmsError,
    KmsResponseError,
    _json,
    _with_recipient,
)
from nitro_attest.kms.envelope import EnvelopeKeyError, seal_envelope
from nitro_attest.kms.sigv4 import Credentials
from nitro_attest.nsm import open_backend
from nitro_attest.nsm.backend import NsmBackend
from nitro_attest.proxy import ProxyConfig
from nitro_attest.proxy.allowlist import Allowlist
from nitro_attest.wire.transport import parse_address
from tests.kmsclientkit import (
    BLOB_PREFIX,
    CREDS,
    KEY_ARN,
    KMS_HOST,
    REGION,
    FakeKms,
    Pki,
    Recorder,
    make_pki,
)
from tests.proxykit import running_proxy


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A certificate for KMS's very name, from a CA the enclave does not trust."""
    return make_pki(tmp_path_factory.mktemp("rogue"), label="rogue")


@pytest.fixture
def nsm(sim_state: Path) -> Iterator[NsmBackend]:
    backend = open_backend("simulator", state_dir=sim_state)
    yield backend
    backend.close()


@pytest.fixture
def kms(pki: Pki) -> Iterator[FakeKms]:
    with FakeKms(pki) as server:
        yield server


def _client(nsm: NsmBackend, pki: Pki, via: str, **kw: Any) -> KmsClient:
    return KmsClient(region=REGION, nsm=nsm, credentials=CREDS, via=via, ca_bundle=pki.ca, **kw)


def _every_operation(client: KmsClient) -> None:
    peer = b"0123456789abcdef"
    result = client.decrypt(BLOB_PREFIX + b"the secret", key_id="k")
    assert result.secret == b"the secret"
    assert base64.b64decode(result.fields["Plaintext"]) == b"the secret"
    assert "CiphertextForRecipient" not in result.fields
    data_key = client.generate_data_key("k", key_spec="AES_256")
    assert len(data_key.secret or b"") == 32
    assert base64.b64decode(data_key.fields["CiphertextBlob"]) == BLOB_PREFIX + data_key.secret
    pair = client.generate_data_key_pair("k", "ECC_NIST_P256")
    private = serialization.load_der_private_key(pair.secret or b"", None)
    assert base64.b64decode(pair.fields["PrivateKeyPlaintext"]) == pair.secret
    assert private.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == base64.b64decode(pair.fields["PublicKey"])
    random = client.generate_random(48)
    assert len(random.secret or b"") == 48
    shared = client.derive_shared_secret("k", peer)
    assert shared.secret == b"shared:" + peer[:8]
    assert shared.fields["SharedSecret"] == base64.b64encode(shared.secret).decode()


def _recipients_name_the_key(kms: FakeKms, client: KmsClient, count: int) -> None:
    assert len(kms.seen.requests) == count
    assert client._key is not None
    for seen in kms.seen.requests:
        doc = base64.b64decode(seen["body"]["Recipient"]["AttestationDocument"])
        assert parse_document(doc).public_key == client._key.spki
        assert seen["headers"]["X-Amz-Security-Token"] == CREDS.session_token


def test_every_operation_through_a_raw_forwarding_parent(
    nsm: NsmBackend, pki: Pki, kms: FakeKms
) -> None:
    """`nitro-attest proxy --to tcp://KMS` plays vsock-proxy: the enclave names KMS's real host,
    the parent's forwarder picks the destination, TLS checks the name."""
    config = ProxyConfig(parse_address("tcp://127.0.0.1:0", role="listen"),
                         parse_address(f"tcp://127.0.0.1:{kms.port}"))
    with running_proxy(config) as (bound, _, _), _client(nsm, pki, str(bound)) as client:
        assert client.endpoint.host == KMS_HOST
        _every_operation(client)
    _recipients_name_the_key(kms, client, 5)
    assert kms.seen.connections == 1  # one kept-alive TLS connection for the five calls


def test_every_operation_through_a_connect_proxy(nsm: NsmBackend, pki: Pki, kms: FakeKms) -> None:
    allow = Allowlist.of([("127.0.0.1", kms.port)])
    config = ProxyConfig(parse_address("tcp://127.0.0.1:0", role="listen"), None, allowlist=allow)
    with running_proxy(config) as (bound, _, _logs):
        via = f"connect://127.0.0.1:{bound.port}"
        with _client(nsm, pki, via, endpoint=f"https://127.0.0.1:{kms.port}") as client:
            _every_operation(client)
    _recipients_name_the_key(kms, client, 5)
    assert kms.seen.connections == 1


def test_connect_refused_by_the_allowlist_is_a_transport_error(
    nsm: NsmBackend, pki: Pki, kms: FakeKms
) -> None:
    config = ProxyConfig(parse_address("tcp://127.0.0.1:0", role="listen"), None,
                         allowlist=Allowlist.of([("127.0.0.1", 1)]))
    with running_proxy(config) as (bound, _, _):
        client = _client(nsm, pki, f"connect://127.0.0.1:{bound.port}",
                         endpoint=f"https://127.0.0.1:{kms.port}")
        with pytest.raises(TransportError, match="proxy refused the tunnel: 403"):
            client.generate_random(8)
    assert kms.seen.connections == 0


def test_key_per_call_names_a_new_key_each_time(nsm: NsmBackend, pki: Pki, kms: FakeKms) -> None:
    with _client(nsm, pki, f"tcp://127.0.0.1:{kms.port}", key_per_call=True) as client:
        client.generate_random(8)
        client.generate_random(8)
    keys = {parse_document(base64.b64decode(s["body"]["Recipient"]["AttestationDocument"]))
            .public_key for s in kms.seen.requests}
    assert len(keys) == 2


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_envelopes_open(nsm: NsmBackend, pki: Pki, chunk: int) -> None:
    with FakeKms(pki, chunk=chunk) as kms, _client(nsm, pki, f"tcp://127.0.0.1:{kms.port}") as c:
        assert c.decrypt(BLOB_PREFIX + b"x" * 100).secret == b"x" * 100


def test_kms_errors_are_one_line(nsm: NsmBackend, pki: Pki, kms: FakeKms) -> None:
    with _client(nsm, pki, f"tcp://127.0.0.1:{kms.port}") as client, \
            pytest.raises(KmsError) as caught:
        client.generate_data_key("missing", key_spec="AES_256")
    assert caught.value.code == "NotFoundException"
    assert caught.value.status == 400
    assert str(caught.value) == "NotFoundException: Key 'missing' does not exist"


def test_wrong_credentials_are_refused_by_kms(nsm: NsmBackend, pki: Pki, kms: FakeKms) -> None:
    from nitro_attest.kms.sigv4 import Credentials

    client = KmsClient(region=REGION, nsm=nsm, via=f"tcp://127.0.0.1:{kms.port}",
                       ca_bundle=pki.ca,
                       credentials=Credentials(CREDS.access_key_id, "not-the-secret"))
    with pytest.raises(KmsError, match="InvalidSignatureException"):
        client.generate_random(8)


# --- the parent attacks (docs/threat-model.md) --------------------------------------------------


def test_a_fake_kms_with_another_cas_certificate_gets_no_request_byte(
    nsm: NsmBackend, pki: Pki, rogue: Pki
) -> None:
    """The parent forwards to its own server, with a certificate for KMS's name from a CA the
    enclave does not trust: the handshake fails before the request is written, so the fake
    server (which holds the key of its certificate and would read anything sent) sees nothing."""
    with FakeKms(rogue) as fake, Recorder(("127.0.0.1", fake.port)) as parent:
        client = _client(nsm, pki, f"tcp://127.0.0.1:{parent.port}")
        with pytest.raises(TransportError, match=r"certificate is not trusted.*nothing was sent"):
            client.decrypt(BLOB_PREFIX + b"s")
    assert fake.seen.requests == []
    assert any("unknown ca" in e.lower() for e in fake.seen.tls_errors), fake.seen.tls_errors
    sent = b"".join(parent.up)
    assert b"TrentService" not in sent and b"AttestationDocument" not in sent
    assert len(sent) < 2048  # a ClientHello and an alert: no request went out


def test_the_right_ca_but_another_name_is_refused(nsm: NsmBackend, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", names=("evil.example",), ips=())
    with FakeKms(other) as fake:
        client = _client(nsm, other, f"tcp://127.0.0.1:{fake.port}")
        with pytest.raises(TransportError, match="not trusted"):
            client.generate_random(8)
    assert fake.seen.requests == []


def test_replaying_an_old_kms_answer_gains_nothing(nsm: NsmBackend, pki: Pki, kms: FakeKms) -> None:
    """The parent recorded a whole TLS session with KMS and plays KMS's side back to a new
    connection: the handshake cannot complete (fresh randoms), the client reports failure."""
    with Recorder(("127.0.0.1", kms.port)) as parent:
        via = f"tcp://127.0.0.1:{parent.port}"
        with _client(nsm, pki, via) as first:
            assert first.decrypt(BLOB_PREFIX + b"old secret").secret == b"old secret"
        parent.replay = bytes(parent.down[0])
        assert len(parent.replay) > 1000
        with _client(nsm, pki, via) as second, pytest.raises(TransportError, match="TLS"):
            second.decrypt(BLOB_PREFIX + b"new")
    assert len(kms.seen.requests) == 1


def test_an_envelope_to_another_key_is_refused(nsm: NsmBackend, pki: Pki) -> None:
    """An answer whose envelope was made for another key (an older response's, or one the
    answerer made for itself) does not open: EnvelopeKeyError, no plaintext."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def swap(op: str, answer: dict[str, Any]) -> dict[str, Any]:
        env = seal_envelope(b"chosen by the attacker", other.public_key())
        return {**answer, "CiphertextForRecipient": base64.b64encode(env).decode()}

    with FakeKms(pki, tamper=swap) as kms, _client(nsm, pki, f"tcp://127.0.0.1:{kms.port}") as c, \
            pytest.raises(EnvelopeKeyError):
        c.decrypt(BLOB_PREFIX + b"s")


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (lambda op, a: {**a, "Plaintext": base64.b64encode(b"x").decode()}, "carries Plaintext"),
        (lambda op, a: {k: v for k, v in a.items() if k != "CiphertextForRecipient"},
         "no CiphertextForRecipient"),
        (lambda op, a: {**a, "CiphertextForRecipient": "***"}, "not base64"),
    ],
)
def test_answers_kms_never_gives_are_refused(
    nsm: NsmBackend, pki: Pki, tamper: Any, words: str
) -> None:
    with FakeKms(pki, tamper=tamper) as kms, \
            _client(nsm, pki, f"tcp://127.0.0.1:{kms.port}") as c, \
            pytest.raises(KmsResponseError, match=words):
        c.decrypt(BLOB_PREFIX + b"s")


@pytest.mark.parametrize("text", ["QUFB\n", "QQ==QQ==", " QUFB", "QUF", "=QUFB", "QUFB\u00e9"])
def test_an_envelope_in_loose_base64_is_refused(nsm: NsmBackend, pki: Pki, text: str) -> None:
    """The envelope's base64 is decoded in one strict pass: a newline, a space, padding out of
    place or missing, data after the padding, non-ASCII: each refused, never decoded leniently."""
    with FakeKms(pki, tamper=lambda op, a: {**a, "CiphertextForRecipient": text}) as kms, \
            _client(nsm, pki, f"tcp://127.0.0.1:{kms.port}") as c, \
            pytest.raises(KmsResponseError, match="not base64"):
        c.decrypt(BLOB_PREFIX + b"s")


def test_the_recipient_is_ours_alone(nsm: NsmBackend, pki: Pki, kms: FakeKms) -> None:
    """A Recipient the caller put in the body is replaced by the client's (one Recipient in the
    bytes sent, naming the client's key), with or without other members beside it."""
    with _client(nsm, pki, f"tcp://127.0.0.1:{kms.port}") as client:
        planted = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": "AAAA"}
        result = client.call("Decrypt", {"CiphertextBlob": base64.b64encode(
            BLOB_PREFIX + b"s").decode(), "Recipient": planted, "KeyId": "k\u00e9"})
        assert result.secret == b"s"
        assert client.call("GenerateRandom", {"Recipient": planted, "NumberOfBytes": 4}).secret
        key = client._key
    assert key is not None
    for seen in kms.seen.requests:
        assert seen["raw"].count(b'"Recipient"') == 1
        recipient = seen["body"]["Recipient"]
        assert recipient["KeyEncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"
        doc = parse_document(base64.b64decode(recipient["AttestationDocument"], validate=True))
        assert doc.public_key == key.spki
    assert kms.seen.requests[0]["body"]["KeyId"] == "k\u00e9"
    assert [r["op"] for r in kms.seen.requests] == ["Decrypt", "GenerateRandom"]
    # an empty body: the Recipient is its only member
    alone = json.loads(_with_recipient(_json({}), b"doc"))
    assert alone == {"Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                                   "AttestationDocument": base64.b64encode(b"doc").decode()}}


def test_plain_http_needs_the_explicit_flag(nsm: NsmBackend) -> None:
    from nitro_attest.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="insecure-http"):
        KmsClient(region=REGION, nsm=nsm, credentials=CREDS, endpoint="http://127.0.0.1:1")
    with FakeKms(None) as kms:
        client = KmsClient(region=REGION, nsm=nsm, credentials=CREDS, insecure_http=True,
                           endpoint=f"http://127.0.0.1:{kms.port}")
        assert client.generate_random(4).secret is not None


@pytest.mark.parametrize("endpoint", ["ftp://x", "https://h/path", "https://u:p@h",
                                      "https://h?q=1", "https://"])
def test_bad_endpoints(nsm: NsmBackend, endpoint: str) -> None:
    from nitro_attest.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        KmsClient(region=REGION, nsm=nsm, credentials=CREDS, endpoint=endpoint)


def test_bad_region(nsm: NsmBackend) -> None:
    from nitro_attest.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="region"):
        KmsClient(region="us-east-1.evil.com/", nsm=nsm, credentials=CREDS)


def test_unreachable_is_a_transport_error(nsm: NsmBackend, pki: Pki) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="cannot reach"):
        _client(nsm, pki, f"tcp://127.0.0.1:{port}").generate_random(4)


def test_a_reused_connection_closed_by_kms_is_retried_once(nsm: NsmBackend, pki: Pki) -> None:
    """KMS closes an idle kept-alive connection without saying so: the next call notices and
    is sent once more on a fresh connection."""
    with FakeKms(pki) as kms, _client(nsm, pki, f"tcp://127.0.0.1:{kms.port}") as client:
        kms.drop_after_answer = True
        client.generate_random(4)
        assert client.generate_random(4).secret is not None
        assert client.generate_random(4).secret is not None
    assert len(kms.seen.requests) == 3
    assert kms.seen.connections == 3


class _Rotating:
    """An IMDS-like source whose first credentials the role has already replaced."""

    def __init__(self) -> None:
        self.current = Credentials("ASIASTALE00000000001", "old-secret", "old-token")
        self.calls = self.invalidated = 0

    def __call__(self) -> Credentials:
        self.calls += 1
        return self.current

    def invalidate(self) -> None:
        self.invalidated += 1
        self.current = CREDS


def test_stale_instance_credentials_are_fetched_again_once(nsm: NsmBackend, pki: Pki) -> None:
    """KMS refuses the cached token (UnrecognizedClientException): the client forgets it, fetches
    fresh credentials and sends once more; the secret arrives."""
    source = _Rotating()
    with FakeKms(pki) as kms, KmsClient(region=REGION, nsm=nsm, credentials=source,
                                         via=f"tcp://127.0.0.1:{kms.port}",
                                         ca_bundle=pki.ca) as client:  # fmt: skip
        assert client.decrypt(BLOB_PREFIX + b"s3", key_id=KEY_ARN).secret == b"s3"
    assert (source.invalidated, source.calls, len(kms.seen.requests)) == (1, 2, 2)


def test_credentials_that_stay_refused_fail_after_one_retry(
    nsm: NsmBackend, pki: Pki, kms: FakeKms
) -> None:
    source = _Rotating()
    source.invalidate = lambda: None  # type: ignore[method-assign]  # IMDS keeps the old ones
    with KmsClient(region=REGION, nsm=nsm, credentials=source, via=f"tcp://127.0.0.1:{kms.port}",
                   ca_bundle=pki.ca) as client, pytest.raises(
        KmsError, match="UnrecognizedClientException"
    ):
        client.decrypt(BLOB_PREFIX + b"s3", key_id=KEY_ARN)
    assert len(kms.seen.requests) == 2


def test_fixed_credentials_refused_are_not_retried(
    nsm: NsmBackend, pki: Pki, kms: FakeKms
) -> None:
    """Credentials from the environment cannot be refreshed: one request, KMS's error."""
    wrong = Credentials("AKIAWRONG00000000001", "x", None)
    with KmsClient(region=REGION, nsm=nsm, credentials=wrong, via=f"tcp://127.0.0.1:{kms.port}",
                   ca_bundle=pki.ca) as client, pytest.raises(
        KmsError, match="UnrecognizedClientException"
    ):
        client.generate_random(4)
    assert len(kms.seen.requests) == 1
