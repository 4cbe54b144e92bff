"""`nitro-attest verify DOC...`: verify attestation documents, print each check."""

from __future__ import annotations

import argparse
from typing import Any

from nitro_attest._cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    error_json,
    print_error,
)
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
from nitro_attest.errors import Check, VerificationError

EPILOG = """\
exit status: 0 every document verified; 1 a document was checked and rejected (malformed
included); 2 usage or I/O error (missing file, bad flag, unreadable --expected). Each failure
also prints a line 'nitro-attest: error: ...' on stderr (docs/cli.md).

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
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per document, one per line (JSON Lines)",
    )
    p.set_defaults(func=run, json_failure=JSON_FAILURE, json_lines=True)


# docs/cli.md: one JSON object per input, one per line (JSON Lines), whatever the count.
JSON_FAILURE: dict[str, Any] = {
    "file": None, "verified": False, "checks": [], "document": None, "verified_at": None,
}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    policy = build_policy(args)
    at = parse_at(args.at)
    verifier = build_verifier(args)
    status = EXIT_OK
    separator = ""  # a blank line between two documents' text reports
    for item in read_inputs(args.documents):
        if item.data is None:
            status = EXIT_USAGE
            problem = item.problem or f"{item.name}: cannot read"
            print_error(problem)
            if args.json:
                error = error_json(problem, "input")
                _print_json({**JSON_FAILURE, "file": item.name, "error": error})
            continue
        try:
            raw = decode_document_input(item.data)
        except VerificationError as exc:
            failed = CheckResult(Check.FORMAT, False, exc.message)
            report = Report(False, (failed,), None, exc, None)
        else:
            report = verifier.evaluate(raw, at=at, policy=policy)
        if not report.verified:
            if status == EXIT_OK:
                status = EXIT_REJECTED
            failure = report.error
            why = f"{failure.check}: {failure.message}" if failure else "not verified"
            print_error(f"{item.name}: rejected: {why}")
        if args.json:
            _print_json({"file": item.name, **report.to_json()})
            continue
        verdict = "VERIFIED" if report.verified else "REJECTED"
        body = render_text(report).splitlines()[:-1]
        name = escape_untrusted(item.name)
        text = "\n".join([f"{name}: {verdict}", *("  " + line for line in body)])
        if not report.verified and report.error is not None:
            text += f"\n  reason: {escape_untrusted(report.error.message)}"
        print(separator + text, flush=True)
        separator = "\n"
    return status


def _print_json(obj: dict[str, Any]) -> None:
    import json  # only for --json: the text report does not need it

    print(json.dumps(obj), flush=True)
