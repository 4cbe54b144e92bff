"""`nitro-attest verify DOC...`: verify attestation documents, print each check."""

from __future__ import annotations

import argparse
from typing import Any

from nitro_attest._cli.common import EXIT_OK, EXIT_REJECTED, EXIT_USAGE
from nitro_attest._cli.docinput import DOC_SUFFIXES, read_inputs
from nitro_attest._cli.expectations import (
    add_field_flags,
    add_pcr_flags,
    add_time_flags,
    add_trust_flags,
    build_policy,
    build_verifier,
    parse_at,
)
from nitro_attest.attestation.encoding import decode_document_input
from nitro_attest.attestation.report import CheckResult, Report, render_text
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.errors import VerificationError

EPILOG = """\
exit status: 0 every document verified; 1 a document was checked and rejected (malformed
included); 2 usage or I/O error (missing file, bad flag, unreadable --expected).

examples:
  nitro-attest verify client/attestation-document.dat --expected client/expected-measurements.json
  nitro-attest verify doc.cbor --at document --allow-debug          # audit an old document
  nitro-attest verify doc.cbor --root sim/root.pem --nonce 00ff... --json
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help="verify attestation documents (signature, chain, PCRs, nonce, user data)",
        description="Verify AWS Nitro attestation documents: the COSE_Sign1 ES384 signature, the "
        "certificate chain to the pinned AWS Nitro root, and every expectation given. DOC is a "
        "file of raw CBOR, base64 or hex (told apart by content), '-' for standard input, or a "
        f"directory (its {', '.join(DOC_SUFFIXES)} files).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("documents", metavar="DOC", nargs="+", help="document file, directory or '-'")
    add_trust_flags(p)
    add_pcr_flags(p)
    add_field_flags(p)
    add_time_flags(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    policy = build_policy(args)
    at = parse_at(args.at)
    verifier = build_verifier(args)
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    status = EXIT_OK
    for item in read_inputs(args.documents):
        if item.data is None:
            status = EXIT_USAGE
            results.append(
                {
                    "file": item.name,
                    "verified": False,
                    "error": {"check": "input", "message": item.problem},
                }
            )
            texts.append(escape_untrusted(f"{item.name}: ERROR {item.problem}"))
            continue
        try:
            raw = decode_document_input(item.data)
        except VerificationError as exc:
            failed = CheckResult("format", False, exc.message)
            report = Report(False, (failed,), None, exc, None)
        else:
            report = verifier.evaluate(raw, at=at, policy=policy)
        if not report.verified and status == EXIT_OK:
            status = EXIT_REJECTED
        if args.json:
            results.append({"file": item.name, **report.to_json()})
            continue
        verdict = "VERIFIED" if report.verified else "REJECTED"
        body = render_text(report).splitlines()[:-1]
        name = escape_untrusted(item.name)
        texts.append("\n".join([f"{name}: {verdict}", *("  " + line for line in body)]))
        if not report.verified and report.error is not None:
            texts[-1] += f"\n  reason: {escape_untrusted(report.error.message)}"
    if args.json:
        import json  # only for --json: the text report does not need it

        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    else:
        print("\n\n".join(texts))
    return status
