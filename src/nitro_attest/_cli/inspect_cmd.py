"""`nitro-attest inspect DOC`: decode and show a document without verifying it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cryptography import x509

from nitro_attest._cli.common import EXIT_OK, CliError, CliRejection
from nitro_attest._cli.docinput import read_inputs
from nitro_attest.attestation.document import AttestationDocument, parse_document
from nitro_attest.attestation.encoding import decode_document_input
from nitro_attest.attestation.report import document_to_json
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.errors import VerificationError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "inspect",
        help="decode and show a document without verifying it",
        description="Decode an attestation document (raw CBOR, base64 or hex) and show its fields. "
        "Nothing is verified: use 'nitro-attest verify' for that. Syntax errors are reported "
        "(exit 1). --json prints the format of client/attestation-document-json.json, with "
        '"authenticated": false (nothing was verified) and "error" (null, or why it failed).',
    )
    p.add_argument("document", metavar="DOC", help="document file or '-' for standard input")
    p.add_argument("--json", action="store_true", help="print the decoded document as JSON")
    p.set_defaults(func=run, json_failure={"authenticated": False})


def run(args: argparse.Namespace) -> int:
    [item] = read_inputs([args.document])
    if item.data is None:
        raise CliError(item.problem or "cannot read input")
    try:
        doc = parse_document(decode_document_input(item.data))
    except VerificationError as exc:
        raise CliRejection(f"{item.name}: malformed: {exc.message}", exc.check) from None
    if args.json:
        # As attest saves it: a decode is never taken for a verified document (threat model).
        fields = {**document_to_json(doc), "authenticated": False, "error": None}
        print(json.dumps(fields, indent=2))
    else:
        print(render_document(doc))
    return EXIT_OK


def render_document(doc: AttestationDocument) -> str:
    def opt(value: bytes | None) -> str:
        return "null" if value is None else f"{value.hex() or '(empty)'} ({len(value)} bytes)"

    lines = [
        "UNVERIFIED: decoded only; nothing below is authenticated (use 'nitro-attest verify')",
        f"kind:        {doc.kind.value}{' (tag 18)' if doc.tagged else ''}",
        f"module_id:   {escape_untrusted(doc.module_id)}",
        f"digest:      {escape_untrusted(doc.digest)}",
        f"timestamp:   {doc.timestamp.isoformat().replace('+00:00', 'Z')} ({doc.timestamp_ms} ms)",
        f"debug mode:  {'yes (PCR0 all zero or absent)' if doc.is_debug else 'no'}",
        f"{doc.pcr_field}:",
        *(f"  PCR{i:<2} {v.hex()}" for i, v in doc.pcrs.items()),
        f"public_key:  {opt(doc.public_key)}",
        f"user_data:   {opt(doc.user_data)}",
        f"nonce:       {opt(doc.nonce)}",
        "certificates (not verified):",
        f"  leaf         {_cert_line(doc.certificate)}",
        *(f"  cabundle[{i}]  {_cert_line(der)}" for i, der in enumerate(doc.cabundle)),
    ]
    return "\n".join(lines)


def _cert_line(der: bytes) -> str:
    try:
        cert = x509.load_der_x509_certificate(der)
        line = (
            f"{cert.subject.rfc4514_string()}  "
            f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    except Exception as exc:  # untrusted DER; inspect shows what it can
        line = f"(undecodable certificate: {exc})"
    return escape_untrusted(line)
