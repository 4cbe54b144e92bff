"""Document kinds: every policy accepts one kind, enclave unless NitroTPM is asked for by name.

Threat model (docs/threat-model.md): NitroTPM documents come from any EC2 instance with a
NitroTPM and are signed under the same AWS root as enclave documents. A parent instance can hand
the client one as "the enclave's document"; it must never satisfy an enclave policy, and its
PCRs (TPM boot measurements) must never be compared with an enclave's PCR expectations.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nitro_attest import (
    DebugModeError,
    DocumentKind,
    DocumentKindError,
    Policy,
    PolicyError,
    Verifier,
)
from nitro_attest._cli import main
from nitro_attest.channel.messages import REQUEST_CHANNEL_ATTEST
from nitro_attest.channel.receiver import ChannelReceiver, channel_handlers
from nitro_attest.channel.sender import deliver_secret

from . import chainfactory as cf
from .channel_helpers import LocalExchange
from .fakes import FakeNsm
from .serverkit import running_server

CHAIN = cf.chain()
VERIFIER = Verifier(root_pem=CHAIN.root_pem)
TPM_PCRS = {i: bytes([0x40 + i]) * 48 for i in range(24)}
TPM_DOC = CHAIN.document(pcrs=cf.DROP, nitrotpm_pcrs=TPM_PCRS)
ENCLAVE_DOC = CHAIN.document()
AT = cf.T0.isoformat()
SECRET = b"tpm-test-secret"


def _checks(report_json: dict[str, Any]) -> dict[str, Any]:
    return {c["name"]: c for c in report_json["checks"]}


def test_nitrotpm_document_rejected_under_enclave_policy() -> None:
    with pytest.raises(DocumentKindError, match=r"nitrotpm document .* enclave documents only"):
        VERIFIER.verify(TPM_DOC, at=cf.T0, expected_pcrs={8: TPM_PCRS[8]})
    report = VERIFIER.evaluate(TPM_DOC, at=cf.T0, expected_pcrs={8: TPM_PCRS[8]})
    checks = {c.name: c for c in report.checks}
    assert not report.verified and report.error is not None
    assert report.error.check == "document_kind"
    assert checks["document_kind"].ok is False
    # Its PCR8 equals the expectation, yet nothing kind-bound is reported as passed.
    assert checks["pcrs"].ok is None and "not run" in checks["pcrs"].detail
    assert checks["debug_mode"].ok is None


def test_nitrotpm_document_accepted_under_nitrotpm_policy() -> None:
    for kind in (DocumentKind.NITROTPM, "nitrotpm"):
        verified = VERIFIER.verify(TPM_DOC, at=cf.T0, kind=kind, expected_pcrs={8: TPM_PCRS[8]})
        assert verified.document.kind is DocumentKind.NITROTPM
        assert verified.policy.kind is DocumentKind.NITROTPM
    policy = Policy(pcr_sets=({4: TPM_PCRS[4]},), kind=DocumentKind.NITROTPM)
    report = VERIFIER.evaluate(TPM_DOC, at=cf.T0, policy=policy)
    assert report.verified, report.checks
    assert [c.ok for c in report.checks if c.name in ("document_kind", "pcrs")] == [True, True]


def test_enclave_document_rejected_under_nitrotpm_policy() -> None:
    with pytest.raises(DocumentKindError, match=r"enclave document .* nitrotpm documents only"):
        VERIFIER.verify(ENCLAVE_DOC, at=cf.T0, kind="nitrotpm")
    # the default policy is for enclaves
    assert VERIFIER.verify(ENCLAVE_DOC, at=cf.T0).document.kind is DocumentKind.ENCLAVE


@pytest.mark.parametrize("bad", ["sgx", "", "ENCLAVE ", 3, None])
def test_unknown_kind_is_a_policy_error(bad: Any) -> None:
    if isinstance(bad, str) and bad.strip().lower() == "enclave":
        assert Policy(kind=bad).kind is DocumentKind.ENCLAVE  # text is normalised
        return
    with pytest.raises(PolicyError, match="document kind"):
        Policy(kind=bad)


def test_default_policy_is_for_enclaves() -> None:
    assert Policy().kind is DocumentKind.ENCLAVE
    assert Policy.build().kind is DocumentKind.ENCLAVE


@pytest.mark.parametrize(
    ("kind", "pcrs"),
    [
        ("nitrotpm", {**TPM_PCRS, 0: bytes(48)}),  # unmeasured boot
        ("nitrotpm", {i: v for i, v in TPM_PCRS.items() if i}),  # no PCR0 at all
        ("enclave", {i: bytes([i + 1]) * 48 for i in range(1, 16)}),  # enclave without PCR0
    ],
)
def test_debug_rule_per_kind(kind: str, pcrs: dict[int, bytes]) -> None:
    field = "pcrs" if kind == "enclave" else "nitrotpm_pcrs"
    doc = CHAIN.document(**{"pcrs": cf.DROP, field: pcrs})
    with pytest.raises(DebugModeError, match="--allow-debug"):
        VERIFIER.verify(doc, at=cf.T0, kind=kind)
    assert VERIFIER.verify(doc, at=cf.T0, kind=kind, allow_debug=True).document.is_debug


def _write(tmp_path: Path, doc: bytes) -> tuple[str, str]:
    path, root = tmp_path / "doc.cbor", tmp_path / "root.pem"
    path.write_bytes(doc)
    root.write_bytes(CHAIN.root_pem)
    return str(path), str(root)


def test_cli_verify_rejects_nitrotpm_under_enclave_pcr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc, root = _write(tmp_path, TPM_DOC)
    argv = ["verify", doc, "--root", root, "--at", AT, "--pcr", f"8={TPM_PCRS[8].hex()}"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "❌ Document Kind: nitrotpm document" in out and "--kind nitrotpm" in out
    assert "✅ PCR Values" not in out and "➖ PCR Values: not run" in out
    assert main([*argv, "--json"]) == 1
    checks = _checks(json.loads(capsys.readouterr().out))
    assert checks["document_kind"]["ok"] is False
    assert checks["pcrs"]["ok"] is None and checks["debug_mode"]["ok"] is None


def test_cli_verify_accepts_nitrotpm_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc, root = _write(tmp_path, TPM_DOC)
    argv = ["verify", doc, "--root", root, "--at", AT, "--pcr", f"8={TPM_PCRS[8].hex()}"]
    assert main([*argv, "--kind", "nitrotpm"]) == 0
    out = capsys.readouterr().out
    assert "✅ Document Kind: nitrotpm document" in out and "✅ PCR Values: PCR8 match" in out
    assert main([*argv, "--kind", "sgx"]) == 2  # argparse choices


def _chain_valid_now() -> cf.Chain:
    now = dt.datetime.now(dt.UTC)
    specs = cf.default_chain()
    for spec in specs:
        spec.not_before, spec.not_after = now - dt.timedelta(days=1), now + dt.timedelta(days=1)
    return cf.chain(specs)


class TpmNsm(FakeNsm):
    """Signs NitroTPM documents (nitrotpm_pcrs) with a test hierarchy valid today."""

    def __init__(self) -> None:
        super().__init__()
        self.chain = _chain_valid_now()

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        self.calls.append({"user_data": user_data, "nonce": nonce, "public_key": public_key})
        return self.chain.document(
            pcrs=cf.DROP, nitrotpm_pcrs=TPM_PCRS, nonce=nonce, user_data=user_data,
            public_key=public_key, timestamp=int(time.time() * 1000),
        )


def test_channel_seals_only_to_the_kind_asked_for() -> None:
    nsm = TpmNsm()
    ex = LocalExchange(ChannelReceiver(), nsm)
    verifier = Verifier(root_pem=nsm.chain.root_pem)
    with pytest.raises(DocumentKindError):
        deliver_secret(ex, SECRET, verifier=verifier, at="document", expected_pcrs={8: TPM_PCRS[8]})
    assert ex.kinds() == [REQUEST_CHANNEL_ATTEST]  # nothing sealed, nothing sent
    receipt = deliver_secret(
        ex, SECRET, verifier=verifier, at="document", expected_pcrs={8: TPM_PCRS[8]},
        kind="nitrotpm",
    )
    assert receipt.verified.document.kind is DocumentKind.NITROTPM


@pytest.fixture()
def tpm_server(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    nsm = TpmNsm()
    handlers = channel_handlers(ChannelReceiver(), nsm)
    with running_server(f"unix://{tmp_path}/tpm.sock", handlers) as (addr, _server, _logs):
        yield str(addr), nsm.chain.root_pem


def test_cli_send_secret_kind(
    tpm_server: tuple[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, root_pem = tpm_server
    secret, root = tmp_path / "secret", tmp_path / "root.pem"
    secret.write_bytes(SECRET)
    root.write_bytes(root_pem)
    argv = ["send-secret", "--connect", address, "--file", str(secret), "--root", str(root),
            "--pcr", f"8={TPM_PCRS[8].hex()}"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert out.startswith("REFUSED (nothing sent): document_kind") and "DELIVERED" not in out
    assert main([*argv, "--kind", "nitrotpm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("DELIVERED 15 bytes to nitrotpm ")
