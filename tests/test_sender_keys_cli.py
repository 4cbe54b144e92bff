"""`serve --sender-key` and `send-secret --sign-with` against a real `serve` process, with a relay.

Threat model (docs/threat-model.md): the parent relays the delivery and tries to get a secret of
its own accepted, with no signature, its own key, or the client's signature copied onto its own
sealed message. Also: the default suite is the post-quantum hybrid, and the success line survives
every document kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, rsa

from nitro_attest._cli import main
from nitro_attest.attestation.document import parse_document
from nitro_attest.attestation.policy import Policy
from nitro_attest.attestation.verifier import VerifiedDocument
from nitro_attest.channel import sender as channel_client
from nitro_attest.channel.keys import SuiteId, parse_public_key_field, resolve_public_key
from nitro_attest.channel.receiver import ChannelReceiver, InMemorySecretStore, channel_handlers
from nitro_attest.channel.seal import channel_info, document_digest, seal
from nitro_attest.channel.sender import send_secret
from nitro_attest.errors import ChannelError
from nitro_attest.nsm import open_backend
from tests import chainfactory as cf
from tests.fakes import MEASUREMENTS
from tests.relay import Frame, Relay, Upstream, relaying
from tests.serve_process import ServeProcess, serve_process
from tests.serverkit import running_server

SECRET = b"tls private key of the enclave's service"
JUNK = b"a secret the parent wants the enclave to use"


def _write_pair(folder: Path, name: str, key: object) -> tuple[Path, Path]:
    assert isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
                      | rsa.RSAPrivateKey)  # fmt: skip
    private = folder / f"{name}.key"
    public = folder / f"{name}.pub"
    pem = serialization.Encoding.PEM
    private.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public.write_bytes(key.public_key().public_bytes(pem, spki))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    return {
        "ed25519": _write_pair(folder, "ed25519", ed25519.Ed25519PrivateKey.generate()),
        "p256": _write_pair(folder, "p256", ec.generate_private_key(ec.SECP256R1())),
        "unpinned": _write_pair(folder, "unpinned", ed25519.Ed25519PrivateKey.generate()),
        "p384": _write_pair(folder, "p384", ec.generate_private_key(ec.SECP384R1())),
        "rsa": _write_pair(folder, "rsa", rsa.generate_private_key(65537, 2048)),
    }


@pytest.fixture(scope="module")
def pinned(
    sim_state: Path, keys: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    sock = tmp_path_factory.mktemp("srv") / "pinned.sock"
    with serve_process(sim_state, sock, "--sender-key", str(keys["ed25519"][1]),
                       "--sender-key", str(keys["p256"][1])) as proc:  # fmt: skip
        yield proc


def _argv(address: str, sim_state: Path, tmp_path: Path, *extra: str) -> list[str]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    return ["send-secret", "--connect", address, "--file", str(secret),
            "--root", str(sim_state / "root.pem"),
            "--pcr", f"0={MEASUREMENTS[0].hex()}", *extra]  # fmt: skip


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
def test_signed_delivery_succeeds(
    pinned: ServeProcess, sim_state: Path, keys: dict[str, tuple[Path, Path]], kind: str,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    rc = main(_argv(pinned.address, sim_state, tmp_path, "--sign-with", str(keys[kind][0])))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("DELIVERED") and "suite mlkem768-x25519" in out and "signed by" in out


@pytest.mark.parametrize("sign_with", [None, "unpinned"])
def test_unsigned_or_unpinned_refused(
    pinned: ServeProcess, sim_state: Path, keys: dict[str, tuple[Path, Path]],
    sign_with: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Threat: the parent (or anyone reaching the port) delivers a secret without a pinned key."""
    extra = ["--sign-with", str(keys[sign_with][0])] if sign_with else []
    rc = main(_argv(pinned.address, sim_state, tmp_path, *extra))
    out = capsys.readouterr().out
    # Sent, then refused: a refusal is not authenticated, so the client cannot say more.
    assert rc == 3 and out.startswith("NOT CONFIRMED") and "DELIVERED" not in out
    assert "channel_refused" in out
    assert ("unsigned" if sign_with is None else "does not pin") in out


class CopyingRelay(Relay):
    """Relays honestly, but first sends the enclave a sealed message of its own for the client's
    nonce and document, carrying the client's signer and signature."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.offer: Frame = {}
        self.forged_answers: list[Frame] = []

    def handle(self, request: Frame, upstream: Upstream) -> Frame:
        if request["type"] == "sealed_message":
            document = self.offer["document"]
            advertised = parse_public_key_field(parse_document(document).public_key)
            key = resolve_public_key(advertised, self.offer["public_key"])
            info = channel_info(advertised, request["nonce"], document_digest(document))
            own = seal(advertised.suite, key, bytes(32) + JUNK, info)
            self.forged_answers.append(upstream.call({**request, "sealed": own}))
        answer = upstream.call(request)
        if request["type"] == "channel_attest":
            self.offer = answer
        return answer


def test_copied_signature_refused_and_genuine_delivery_survives(
    pinned: ServeProcess, sim_state: Path, keys: dict[str, tuple[Path, Path]],
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Threat: the relaying parent puts the client's signature on its own sealed message for the
    same nonce and document, ahead of the client's. Refused; the client's message still lands."""
    relay = CopyingRelay(pinned.address)
    with relaying(relay, tmp_path / "relay.sock") as address:
        rc = main(_argv(address, sim_state, tmp_path, "--sign-with", str(keys["ed25519"][0])))
    assert rc == 0 and "DELIVERED" in capsys.readouterr().out
    (forged,) = relay.forged_answers
    assert forged["type"] == "error" and forged["code"] == "channel_refused"
    assert "signature does not verify" in forged["message"]
    log = pinned.stderr()
    assert "the sender signature does not verify" in log


def test_serve_logs_unauthenticated_mode(
    sim_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_process(sim_state, tmp_path / "open.sock") as proc:
        assert main(_argv(proc.address, sim_state, tmp_path)) == 0
        assert "unsigned" in capsys.readouterr().out
    log = proc.stderr()
    assert "every sealed message is accepted from an unauthenticated sender" in log
    assert "sender=unauthenticated" in log


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--sender-key", "{missing}"], "no such file"),
        (["--sender-key", "{p384}"], "secp384r1; use Ed25519 or P-256"),
        (["--sender-key", "{rsa}"], "use Ed25519 or P-256"),
        (["--sender-key", "{secret}"], "not a PEM public key"),
        (["--sender-key", "{ed25519}", "--no-channel"], "drop --no-channel"),
    ],
)
def test_serve_sender_key_usage_errors(
    keys: dict[str, tuple[Path, Path]], tmp_path: Path, flags: list[str], needle: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (tmp_path / "secret").write_bytes(b"not a key")
    names = {k: str(v[1]) for k, v in keys.items()}
    names |= {"missing": str(tmp_path / "none.pem"), "secret": str(tmp_path / "secret")}
    argv = ["serve", "--listen", f"unix://{tmp_path}/x.sock", "--nsm", "simulator",
            "--state", str(tmp_path / "st"), *[f.format(**names) for f in flags]]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.sock").exists()


@pytest.mark.parametrize("which", ["p384", "rsa", "public"])
def test_sign_with_bad_key_is_usage_error(
    keys: dict[str, tuple[Path, Path]], sim_state: Path, tmp_path: Path, which: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = keys["ed25519"][1] if which == "public" else keys[which][0]
    rc = main(_argv(f"unix://{tmp_path}/none.sock", sim_state, tmp_path, "--sign-with", str(path)))
    assert rc == 2 and "--sign-with" in capsys.readouterr().err


def test_mlkem_unavailable_says_so_before_contact(
    sim_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def unsupported() -> None:
        raise UnsupportedAlgorithm("ML-KEM is not supported by this backend")

    monkeypatch.setattr(mlkem.MLKEM768PrivateKey, "generate", staticmethod(unsupported))
    rc = main(_argv(f"unix://{tmp_path}/none.sock", sim_state, tmp_path))  # nothing listens there
    err = capsys.readouterr().err
    assert rc == 2
    assert "ML-KEM-768 is not available" in err and "--suite x25519" in err
    assert "none.sock" not in err  # refused before any connection attempt


def test_default_suite_is_post_quantum(capsys: pytest.CaptureFixture[str]) -> None:
    assert channel_client.DEFAULT_SUITE is SuiteId.MLKEM768_X25519
    assert main(["send-secret", "--help"]) == 0
    assert "mlkem768-x25519 (default: post-quantum" in " ".join(capsys.readouterr().out.split())


def test_delivery_to_a_nitrotpm_document_is_reported_delivered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 6: the success line once raised KeyError(0) on a document without PCR0 (a
    NitroTPM one) after the secret was delivered. Whether such a document is accepted is the
    verifier's policy; once a delivery happened it is reported as delivered."""
    chain = cf.chain()
    raw = chain.document(pcrs=cf.DROP, nitrotpm_pcrs={4: bytes([4]) * 48, 7: bytes(48)})
    doc = parse_document(raw)
    assert doc.kind == "nitrotpm" and 0 not in doc.pcrs
    verified = VerifiedDocument(doc, datetime.now(UTC), "00", Policy(), ())
    receipt = channel_client.Receipt(verified, SuiteId.MLKEM768_X25519, bytes(32), 5)
    monkeypatch.setattr(channel_client, "send_secret", lambda *a, **k: receipt)
    secret = tmp_path / "s"
    secret.write_bytes(b"hello")
    rc = main(["send-secret", "--connect", "unix:///nowhere", "--file", str(secret),
               "--unsafe-any-enclave"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("DELIVERED 5 bytes to nitrotpm") and "2 PCRs" in out


def test_store_full_refusal_reaches_the_sender(sim_state: Path, tmp_path: Path) -> None:
    """Over the wire: a full store refuses with channel_refused and says why; nothing evicted."""
    backend = open_backend("simulator", state_dir=sim_state)
    store = InMemorySecretStore(per_sender=1)
    handlers = channel_handlers(ChannelReceiver(handler=store), backend)
    root = (sim_state / "root.pem").read_bytes()
    try:
        with running_server(f"unix://{tmp_path}/full.sock", handlers) as (addr, _, _logs):
            send_secret(str(addr), SECRET, root_pem=root, expected_pcrs={0: MEASUREMENTS[0]})
            with pytest.raises(ChannelError, match="secret store is full") as info:
                send_secret(str(addr), JUNK, root_pem=root, expected_pcrs={0: MEASUREMENTS[0]})
    finally:
        backend.close()
    assert info.value.reason == "refused"
    assert store.secrets == [SECRET]
