"""Verification results as data (JSON-ready) and as the tutorial's ✅/❌ text.

A check is ✅ only when it ran and passed. Checks that read the payload are "not run" (➖, ``ok``
null in JSON) until the signature and the chain verified; the payload of a document that failed
them is reported only as unauthenticated claims (docs/threat-model.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nitro_attest.attestation.document import AttestationDocument
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.errors import Check, VerificationError

# Check names in the order they run, with the tutorial's labels.
CHECK_LABELS: dict[Check, str] = {
    Check.FORMAT: "Attestation Document (CBOR/COSE)",
    Check.COSE_SIGNATURE: "COSE Signature",
    Check.CERTIFICATE_CHAIN: "Certificate Chain",
    Check.DOCUMENT_KIND: "Document Kind",
    Check.DEBUG_MODE: "Debug Mode",
    Check.PCRS: "PCR Values",
    Check.USER_DATA: "User Data",
    Check.NONCE: "Nonce",
    Check.PUBLIC_KEY: "Public Key",
    Check.CALLER_KEYS: "Enclave's Own Keys Only (PCR16)",
    Check.FRESHNESS: "Freshness",
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome: its name (a ``Check`` value), whether it passed, and why."""

    name: Check
    ok: bool | None
    """True passed, False failed, None not run (no expectation given, or the document was not
    authenticated, or could not be read: ``detail`` says which)."""
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The JSON shape ``--json`` prints: name, ok, detail."""
        return {"name": str(self.name), "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Report:
    """Every check's outcome for one document; ``verified`` only when none failed.

    ``document`` is set only when the signature and the chain verified. ``claimed`` holds a
    document that parsed but failed them: what its sender claims, for diagnostics only.
    """

    verified: bool
    checks: tuple[CheckResult, ...]
    document: AttestationDocument | None
    error: VerificationError | None
    at: datetime | None
    claimed: AttestationDocument | None = None

    def result(self, check: Check) -> CheckResult | None:
        """The outcome of ``check``, or None when this report has no such check."""
        return next((c for c in self.checks if c.name == check), None)

    def outcome(self) -> dict[Check, bool | None]:
        """Each check's ``ok`` by its ``Check``: True passed, False failed, None not run."""
        return {Check(c.name): c.ok for c in self.checks}

    def to_json(self) -> dict[str, Any]:
        """The JSON shape ``verify --json`` prints for one document."""
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
    """The ✅/❌ lines; every string that may come from the document is escaped."""
    lines = [escape_untrusted(title)] if title else []
    for check in report.checks:
        label = CHECK_LABELS.get(check.name, check.name)
        detail = escape_untrusted(check.detail)
        # One line per PCR problem; only there, as other details may quote document text.
        split = check.ok is False and check.name is Check.PCRS
        detail_lines = detail.split("; ") if split else [detail]
        lines.append(f"{_MARK[check.ok]} {label}: {detail_lines[0]}")
        lines.extend(f"     {extra}" for extra in detail_lines[1:])
    if report.claimed is not None:
        lines.append(unauthenticated_claims(report.claimed))
    if report.verified:
        lines.append("Result: VERIFIED")
    else:
        reason = f" ({report.error.check}: {report.error.message})" if report.error else ""
        first = escape_untrusted(reason)
        lines.append(f"Result: REJECTED{first if len(first) < 200 else first[:197] + '...'}")
    return "\n".join(lines)


def unauthenticated_claims(doc: AttestationDocument) -> str:
    """One line of what a document that failed its signature or chain says about itself."""
    timestamp = doc.timestamp.isoformat().replace("+00:00", "Z")
    module_id = repr(doc.module_id)
    if len(module_id) > 120:  # the payload may hold kilobytes of it
        module_id = module_id[:117] + "..."
    return "⚠ UNAUTHENTICATED claims (signature or chain failed, nothing here is verified): " + (
        escape_untrusted(f"{doc.kind.value} document, module_id {module_id}, timestamp {timestamp}")
    )
