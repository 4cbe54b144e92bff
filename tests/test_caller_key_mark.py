"""Documents made for callers never pass for ones naming the enclave's own key (issue 25, item 6).

Threat model (docs/threat-model.md): under `serve --allow-caller-public-key` the parent obtains
documents naming keys of its choosing. The server marks PCR16 first (attestation.caller_keys) and
locks it; every relying party of ours that trusts a key a document names refuses a document whose
PCR16 is not untouched and locked. These tests play the parent: a relay that answers the channel's
attestation with a document the oracle made for its own key must fail, and an enclave without the
opt-in must keep working.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest._cli import main, serve_cmd
from nitro_attest.attestation.caller_keys import (
    CALLER_KEY_LABEL,
    CALLER_KEY_PCR,
    MARKED_PCR_VALUE,
    PRISTINE_PCR_VALUE,
)
from nitro_attest.attestation.report import render_text
from nitro_attest.attestation.verifier import Verifier
from nitro_attest.channel.keys import KeyPair, SuiteId
from nitro_attest.channel.messages import ChannelOfferResponse
from nitro_attest.channel.receiver import ChannelReceiver, channel_handlers
from nitro_attest.channel.sender import deliver_secret
from nitro_attest.errors import CallerKeysError, Check, ConfigurationError
from nitro_attest.nsm import open_backend
from nitro_attest.wire import client
from nitro_attest.wire.protocol import AttestationResponse, AttestRequest, Request, Response
from nitro_attest.wire.server import nsm_handlers, settle_caller_key_pcr
from tests.channel_helpers import LocalExchange
from tests.fakes import EXPECTED, MEASUREMENTS, FakeNsm, payload
from tests.relay import Frame, Relay, Upstream, relaying
from tests.serve_process import serve_process
from tests.serverkit import running_server

SECRET = b"the tls key of the service: 0123456789abcdef"
TLS_SPKI = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
)


class OwnKeyRelay(Relay):
    """Answers channel_attest with a document the enclave signed over a key the relay chose."""

    def __init__(self, upstream: str, key: bytes) -> None:
        super().__init__(upstream)
        self.key = key
        self.answers: list[str] = []

    def handle(self, request: Frame, upstream: Upstream) -> Frame:
        if request["type"] != "channel_attest":
            return upstream.call(request)
        answer = upstream.call(
            {"v": 1, "type": "attest", "nonce": request["nonce"],
             "user_data": request.get("user_data"), "public_key": self.key}
        )  # fmt: skip
        self.answers.append(answer["type"])
        return {"v": 1, "type": "channel_offer", "document": answer.get("document", b""),
                "public_key": self.key}  # fmt: skip


def _send(address: str, sim_state: Path, tmp_path: Path) -> list[str]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    root, pcr0 = str(sim_state / "root.pem"), MEASUREMENTS[0].hex()
    return ["send-secret", "--connect", address, "--file", str(secret), "--suite", "x25519",
            "--root", root, "--pcr", f"0={pcr0}"]  # fmt: skip


def test_relay_presents_a_document_for_its_own_key(
    sim_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The parent has the opted-in enclave attest its own TLS key and offers that document to
    send-secret: refused as a verification failure naming caller_keys; nothing sealed leaves."""
    with serve_process(sim_state, tmp_path / "e.sock", "--allow-caller-public-key") as server:
        relay = OwnKeyRelay(server.address, TLS_SPKI)
        with relaying(relay, tmp_path / "relay.sock") as address:
            rc = main(_send(address, sim_state, tmp_path))
        log = server.stderr()
    out = capsys.readouterr().out
    assert relay.answers == ["attestation"]  # the oracle did sign the relay's key
    assert rc == 1
    assert out.startswith("REFUSED (nothing sent): caller_keys: PCR16 carries the caller-chosen")
    assert relay.seen == ["channel_attest"] and "sealed_message" not in log
    assert "PCR16 marked and locked" in log


def test_opted_in_enclave_is_refused_even_for_its_own_channel(
    sim_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every document of an opted-in enclave carries the mark: its genuine channel documents
    are indistinguishable from the oracle's, so none is trusted."""
    with serve_process(sim_state, tmp_path / "e.sock", "--allow-caller-public-key") as server:
        rc = main(_send(server.address, sim_state, tmp_path))
        doc = client.request_attestation(server.address, nonce=os.urandom(32), public_key=TLS_SPKI)
    assert rc == 1 and "REFUSED (nothing sent): caller_keys" in capsys.readouterr().out
    assert payload(doc)["pcrs"][CALLER_KEY_PCR] == MARKED_PCR_VALUE


def test_without_the_opt_in_documents_are_pristine_and_accepted(
    sim_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_process(sim_state, tmp_path / "e.sock") as server:
        rc = main(_send(server.address, sim_state, tmp_path))
        doc = client.request_attestation(server.address, nonce=os.urandom(32))
    assert rc == 0 and capsys.readouterr().out.startswith("DELIVERED")
    assert payload(doc)["pcrs"][CALLER_KEY_PCR] == PRISTINE_PCR_VALUE  # locked, so carried


def test_a_channel_shaped_key_slipping_past_the_server_is_still_refused(sim_state: Path) -> None:
    """Defence in depth: even if the server's refusal of channel-shaped caller keys had a hole,
    a marked enclave's document naming the parent's own channel key is refused by the sender."""
    backend = open_backend("simulator", state_dir=sim_state)
    try:
        settle_caller_key_pcr(backend, allow=True)
        parent = KeyPair.generate(SuiteId.X25519)

        class Hole(LocalExchange):
            def __call__(self, request: Request) -> Response:
                if request.TYPE == "channel_attest":
                    nonce = request.to_fields()["nonce"]
                    self.requests.append((request.TYPE, request.to_fields()))
                    document = backend.attestation(nonce=nonce, public_key=parent.advertised.field)
                    return ChannelOfferResponse(document, parent.public_bytes)
                return super().__call__(request)

        exchange = Hole(ChannelReceiver(), backend, caller_keys=True)
        verifier = Verifier(root_pem=(sim_state / "root.pem").read_bytes())
        with pytest.raises(CallerKeysError) as info:
            deliver_secret(exchange, SECRET, verifier=verifier, expected_pcrs={0: MEASUREMENTS[0]},
                           suite="x25519")  # fmt: skip
        assert info.value.check is Check.CALLER_KEYS
        assert exchange.kinds() == ["channel_attest"]  # nothing sealed to the parent's key
    finally:
        backend.close()


def test_an_oracle_that_never_locked_pcr16_is_refused(sim_state: Path, tmp_path: Path) -> None:
    """A server that signs caller keys without the mark (PCR16 left unlocked, so absent from its
    documents) fails closed: absence is not pristine."""
    backend = open_backend("simulator", state_dir=sim_state)

    def oracle(request: Request) -> Response:
        assert isinstance(request, AttestRequest)
        return AttestationResponse(backend.attestation(nonce=request.nonce,
                                                       public_key=request.public_key))

    verifier = Verifier(root_pem=(sim_state / "root.pem").read_bytes())
    try:
        with running_server(f"unix://{tmp_path}/o.sock", {"attest": oracle}) as (addr, _, _l):
            doc = client.request_attestation(str(addr), nonce=b"n" * 32, public_key=TLS_SPKI)
    finally:
        backend.close()
    report = verifier.evaluate(doc, at="document", refuse_caller_keys=True)
    out = report.to_json()
    assert out["verified"] is False
    assert out["error"] == {"check": "caller_keys", "message": out["error"]["message"]}
    assert "PCR16 absent" in out["error"]["message"]
    row = next(c for c in out["checks"] if c["name"] == "caller_keys")
    assert row["ok"] is False


def test_report_shows_the_check_passing_and_not_asked(sim_state: Path) -> None:
    backend = open_backend("simulator", state_dir=sim_state)
    try:
        settle_caller_key_pcr(backend, allow=False)
        doc = backend.attestation(nonce=b"n" * 32)
    finally:
        backend.close()
    verifier = Verifier(root_pem=(sim_state / "root.pem").read_bytes())
    checks = {c.name: c for c in verifier.evaluate(doc, refuse_caller_keys=True).checks}
    assert checks["caller_keys"].ok is True and "PCR16 untouched" in checks["caller_keys"].detail
    checks = {c.name: c for c in verifier.evaluate(doc).checks}
    assert checks["caller_keys"].ok is None  # not asked: not checked
    text = render_text(verifier.evaluate(doc, refuse_caller_keys=True))
    assert "✅ Enclave's Own Keys Only (PCR16): PCR16 untouched and locked" in text


# --- settling PCR16 at start -----------------------------------------------------------------


def _pcr16(nsm: Any) -> tuple[bool, bytes]:
    d = nsm.describe_pcr(CALLER_KEY_PCR)
    return d.locked, d.data


@pytest.mark.parametrize("backend", ["simulator", "fake"])
@pytest.mark.parametrize("allow", [True, False])
def test_settle_marks_or_locks_untouched_and_is_idempotent(
    backend: str, allow: bool, sim_state: Path
) -> None:
    simulated = backend == "simulator"
    nsm: Any = open_backend("simulator", state_dir=sim_state) if simulated else FakeNsm()
    want = MARKED_PCR_VALUE if allow else PRISTINE_PCR_VALUE
    assert _pcr16(nsm) == (False, PRISTINE_PCR_VALUE)
    settle_caller_key_pcr(nsm, allow=allow)
    assert _pcr16(nsm) == (True, want)
    settle_caller_key_pcr(nsm, allow=allow)  # serve settles for nsm_handlers and the channel
    assert _pcr16(nsm) == (True, want)
    assert payload(nsm.attestation(nonce=b"x"))["pcrs"][CALLER_KEY_PCR] == want
    nsm.close()


@pytest.mark.parametrize(
    "prepare",
    ["locked untouched", "locked other", "extended other", "locked marked then allow"],
)
def test_opt_in_refuses_a_pcr16_it_cannot_mark(prepare: str) -> None:
    nsm = FakeNsm()
    if prepare == "locked other" or prepare == "extended other":
        nsm.extend_pcr(CALLER_KEY_PCR, b"someone else's measurement")
    if prepare.startswith("locked"):
        if prepare == "locked marked then allow":
            nsm.extend_pcr(CALLER_KEY_PCR, CALLER_KEY_LABEL)
        nsm.lock_pcr(CALLER_KEY_PCR)
    if prepare == "locked marked then allow":  # already marked: fine, nothing changes
        settle_caller_key_pcr(nsm, allow=True)
        assert _pcr16(nsm) == (True, MARKED_PCR_VALUE)
        return
    before = _pcr16(nsm)
    with pytest.raises(ConfigurationError, match="cannot mark its documents"):
        nsm_handlers(nsm, allow_caller_public_key=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot mark its documents"):
        channel_handlers(ChannelReceiver(), nsm, allow_caller_public_key=True)
    assert _pcr16(nsm) == before


def test_without_opt_in_a_marked_pcr16_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    nsm = FakeNsm()
    settle_caller_key_pcr(nsm, allow=True)
    handlers = nsm_handlers(nsm)  # type: ignore[arg-type]
    assert "attest" in handlers
    assert any("caller-key mark" in r.getMessage() for r in caplog.records)
    # and its documents are refused by the sender, as they must be
    exchange = LocalExchange(ChannelReceiver(), nsm)
    verifier = Verifier(root_pem=nsm.chain.root_pem)
    with pytest.raises(CallerKeysError):
        deliver_secret(exchange, SECRET, verifier=verifier, at="document", expected_pcrs=EXPECTED)


def test_serve_refuses_to_start_when_pcr16_is_locked_otherwise(
    sim_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend = open_backend("simulator", state_dir=sim_state)
    backend.lock_pcr(CALLER_KEY_PCR)  # an earlier start promised "untouched" for this boot
    monkeypatch.setattr(serve_cmd, "open_nsm", lambda kind, state: backend)
    rc = main(["serve", "--listen", f"unix://{tmp_path}/s.sock", "--nsm", "simulator",
               "--state", str(sim_state), "--allow-caller-public-key"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "PCR16 is locked with a value other than the caller-key mark" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "s.sock").exists()


def test_serve_help_says_what_the_opt_in_means(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "PCR16" in out and "refuse" in out
