"""Verification results as data (JSON-ready) and as the tutorial's ✅/❌ text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nitro_attest.attestation.document import AttestationDocument
from nitro_attest.errors import VerificationError

# Check names in the order they run, with the tutorial's labels.
CHECK_LABELS = {
    "format": "Attestation Document (CBOR/COSE)",
    "cose_signature": "COSE Signature",
    "certificate_chain": "Certificate Chain",
    "debug_mode": "Debug Mode",
    "pcrs": "PCR Values",
    "user_data": "User Data",
    "nonce": "Nonce",
    "public_key": "Public Key",
    "freshness": "Freshness",
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool | None
    """True passed, False failed, None not checked (no expectation given, or an earlier failure)."""
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Report:
    """Every check's outcome for one document; ``verified`` only when none failed."""

    verified: bool
    checks: tuple[CheckResult, ...]
    document: AttestationDocument | None
    error: VerificationError | None
    at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "checks": [c.to_json() for c in self.checks],
            "document": document_to_json(self.document) if self.document else None,
            "error": (
                {"check": self.error.check, "message": self.error.message} if self.error else None
            ),
            "verified_at": self.at.isoformat() if self.at else None,
        }


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def document_to_json(doc: AttestationDocument) -> dict[str, Any]:
    """The decoded document with bytes as hex: the shape of attestation-document-json.json."""
    return {
        "kind": doc.kind,
        "module_id": doc.module_id,
        "digest": doc.digest,
        "timestamp": doc.timestamp_ms,
        "timestamp_utc": doc.timestamp.isoformat().replace("+00:00", "Z"),
        doc.pcr_field: {str(i): v.hex() for i, v in doc.pcrs.items()},
        "certificate": doc.certificate.hex(),
        "cabundle": [c.hex() for c in doc.cabundle],
        "public_key": _hex(doc.public_key),
        "user_data": _hex(doc.user_data),
        "nonce": _hex(doc.nonce),
        "debug_mode": doc.is_debug,
        "cose": {
            "tagged": doc.tagged,
            "protected": doc.protected.hex(),
            "signature": doc.signature.hex(),
        },
    }


_MARK = {True: "✅", False: "❌", None: "➖"}


def render_text(report: Report, *, title: str | None = None) -> str:
    lines = [title] if title else []
    for check in report.checks:
        label = CHECK_LABELS.get(check.name, check.name)
        detail_lines = check.detail.split("; ") if check.ok is False else [check.detail]
        lines.append(f"{_MARK[check.ok]} {label}: {detail_lines[0]}")
        lines.extend(f"     {extra}" for extra in detail_lines[1:])
    if report.verified:
        lines.append("Result: VERIFIED")
    else:
        reason = f" ({report.error.check}: {report.error.message})" if report.error else ""
        first = reason.splitlines()[0] if reason else ""
        lines.append(f"Result: REJECTED{first if len(first) < 200 else first[:197] + '...'}")
    return "\n".join(lines)
