"""Attested HTTPS against the parent: every document a parent could put in front of the client is
refused before any byte of the request leaves, and the app never sees a request.

Threat model: the parent relays, replays and injects every byte between client and enclave, and
may terminate TLS itself with a key of its own (docs/https.md, docs/threat-model.md).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from nitro_attest._cli import main
from nitro_attest.attestation.caller_keys import (
    CALLER_KEY_LABEL,
    CALLER_KEY_PCR,
    PRISTINE_PCR_VALUE,
)
from nitro_attest.attestation.document import parse_document
from nitro_attest.attestation.policy import Policy
from nitro_attest.attestation.verifier import Verifier
from nitro_attest.errors import ConfigurationError, UsageError
from nitro_attest.https import AttestedTransport
from nitro_attest.https.attest import AttestationRefused
from nitro_attest.https.client import AttestedConnection, fetch, parse_url
from nitro_attest.https.front import seal_caller_key_pcr
from nitro_attest.https.identity import make_identity

from .fakes import MEASUREMENTS
from .httpskit import (
    POLICY,
    OtherKeyNsm,
    ReplayingNsm,
    pcr_flags,
    relaying_parent,
    running_app,
    running_front,
    sim,
)


def _get(url: str, state: Path, *extra: str) -> int:
    return main(["https", "get", url, "--root", str(state / "root.pem"), *pcr_flags(), *extra])


def test_relay_with_the_parents_own_certificate_is_refused(
    sim_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Threat model: the parent terminates TLS with its own key and relays every byte, the
    attestation path included, to the real front; the document names the enclave's key, not the
    parent's, so the client refuses and the app sees nothing."""
    with running_app() as app, running_front(sim(sim_state), app.address) as front, \
            relaying_parent(front.address) as (url, _own, relayed):
        rc = _get(url + "/secret-endpoint", sim_state)
        err = capsys.readouterr().err
        assert rc == 1
        assert "attestation refused (public_key)" in err
        assert "nothing was sent" in err
        # The relay did reach the real front, which answered with a genuine document...
        assert relayed[0] > 0
        assert len(front.attestation_lines()) == 1
        # ...but the request never left the client.
        assert app.seen == []
        assert not any("secret-endpoint" in line for line in front.logs.lines())


def test_relay_refused_by_the_httpx_transport_too(sim_state: Path) -> None:
    with running_app() as app, running_front(sim(sim_state), app.address) as front, \
            relaying_parent(front.address) as (url, _own, _relayed):
        transport = AttestedTransport(policy=POLICY, root=(sim_state / "root.pem").read_bytes())
        with httpx.Client(transport=transport) as client, \
                pytest.raises(AttestationRefused) as caught:
            client.post(url + "/pay", content=b"amount=100")
        assert caught.value.check == "public_key"
        assert app.seen == []


def test_direct_connection_is_accepted(sim_state: Path) -> None:
    """The control for the refusals below: the same client and front, nothing altered."""
    with running_app() as app, running_front(sim(sim_state), app.address) as front:
        got: list[bytes] = []
        response, verified = fetch(
            front.url + "/ok", verifier=Verifier(root_pem=(sim_state / "root.pem").read_bytes()),
            policy=POLICY, sink=got.append,
        )
        assert response.status == 200
        assert b"".join(got) == b"hello /ok\n"
        assert verified.document.public_key == front.identity.spki_der
        assert verified.document.pcrs[CALLER_KEY_PCR] == PRISTINE_PCR_VALUE
        assert [s.path for s in app.seen] == ["/ok"]


@pytest.mark.parametrize(
    ("flags", "check"),
    [
        (["--pcr", "0=" + "ee" * 48], "pcrs"),
        (["--pcr", "3=" + "00" * 48, "--pcr", "4=" + "11" * 48], "pcrs"),
    ],
)
def test_wrong_pcr_refused_before_sending(
    sim_state: Path, capsys: pytest.CaptureFixture[str], flags: list[str], check: str
) -> None:
    with running_app() as app, running_front(sim(sim_state), app.address) as front:
        rc = main(["https", "get", front.url + "/x", "--root", str(sim_state / "root.pem"),
                   *flags])
        assert rc == 1
        assert f"attestation refused ({check})" in capsys.readouterr().err
        assert app.seen == []


def test_debug_enclave_refused(sim_debug_state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_app() as app, running_front(sim(sim_debug_state), app.address) as front:
        rc = _get(front.url + "/x", sim_debug_state)
        assert rc == 1
        assert "attestation refused (debug_mode)" in capsys.readouterr().err
        assert app.seen == []


def test_replayed_document_refused(sim_state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Threat model: a document obtained earlier (for another nonce) is played back; it names the
    right key and PCRs, and still fails the nonce."""
    with running_app() as app, running_front(ReplayingNsm(sim(sim_state)), app.address) as front:
        assert _get(front.url + "/first", sim_state) == 0  # the document, fresh once
        capsys.readouterr()
        rc = _get(front.url + "/second", sim_state)
        assert rc == 1
        assert "attestation refused (nonce)" in capsys.readouterr().err
        assert [s.path for s in app.seen] == ["/first"]


def test_document_naming_another_key_refused(
    sim_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_identity().spki_der
    with running_app() as app, \
            running_front(OtherKeyNsm(sim(sim_state), other), app.address) as front:
        rc = _get(front.url + "/x", sim_state)
        assert rc == 1
        assert "attestation refused (public_key)" in capsys.readouterr().err
        assert app.seen == []


def test_document_with_the_caller_keys_mark_refused(
    sim_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Threat model: an enclave that attests caller-chosen keys would give the parent a document
    for its own TLS key; such an enclave marks PCR16, and the client refuses the mark."""
    backend = sim(sim_state)
    backend.extend_pcr(CALLER_KEY_PCR, CALLER_KEY_LABEL)
    backend.lock_pcr(CALLER_KEY_PCR)
    with running_app() as app, running_front(backend, app.address, seal=False) as front:
        rc = _get(front.url + "/x", sim_state)
        assert rc == 1
        assert "attestation refused (caller_keys)" in capsys.readouterr().err
        assert app.seen == []


def test_document_without_pcr16_refused(
    sim_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unlocked PCR16 is absent from the document: nothing proves it pristine (fails closed)."""
    with running_app() as app, running_front(sim(sim_state), app.address, seal=False) as front:
        rc = _get(front.url + "/x", sim_state)
        assert rc == 1
        assert "attestation refused (caller_keys)" in capsys.readouterr().err
        assert app.seen == []


def test_front_locks_pcr16_pristine_and_refuses_a_marked_enclave(sim_state: Path) -> None:
    backend = sim(sim_state)
    seal_caller_key_pcr(backend)
    assert backend.describe_pcr(CALLER_KEY_PCR).locked
    assert parse_document(backend.attestation()).pcrs[CALLER_KEY_PCR] == PRISTINE_PCR_VALUE
    seal_caller_key_pcr(backend)  # already sealed: fine
    marked = sim(sim_state)
    marked.extend_pcr(CALLER_KEY_PCR, CALLER_KEY_LABEL)
    with pytest.raises(ConfigurationError, match="PCR16 is marked"):
        seal_caller_key_pcr(marked)


def test_empty_expectations_are_refused(
    sim_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError, match="needs expected PCRs"):
        AttestedTransport(policy=Policy())
    with pytest.raises(UsageError, match="must not set nonce"):
        AttestedConnection(parse_url("https://h/"), verifier=Verifier(),
                           policy=Policy(pcr_sets=({0: MEASUREMENTS[0]},), nonce=b"x" * 8))
    rc = main(["https", "get", "https://127.0.0.1:1/", "--root", str(sim_state / "root.pem")])
    assert rc == 2
    assert "--expected" in capsys.readouterr().err


def test_plain_http_is_not_attested() -> None:
    transport = AttestedTransport(policy=POLICY)
    with httpx.Client(transport=transport) as client, pytest.raises(UsageError, match="https"):
        client.get("http://127.0.0.1:1/")
    with pytest.raises(UsageError, match="only https"):
        parse_url("http://example.com/")
