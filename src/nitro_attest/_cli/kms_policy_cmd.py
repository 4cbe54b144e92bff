"""`nitro-attest kms policy` and `kms lint-policy`: key policies bound to an image, and checked.

Thin: flags -> ``nitro_attest.kms.keypolicy`` -> print. The policy code, the EIF reader and the
measurements parser are imported inside run(), so `nitro-attest kms --help` stays cheap.
"""

from __future__ import annotations

import argparse
from typing import Any

_POLICY_EPILOG = """\
The enclave statement allows the chosen operations only when the request carries an attestation
document (Recipient) whose PCR0 (kms:RecipientAttestation:ImageSha384), and each --pcr, equal the
image's, and whose PCR16 is all zero: an enclave that signs caller-chosen public keys
(serve --allow-caller-public-key) marks PCR16, and its documents must never release a KMS secret.
A request without Recipient is therefore denied, as on AWS. The administrators get key management
only: no cryptographic operation, no CreateGrant. Each --encryptor may Encrypt to the key (and
GenerateDataKeyWithoutPlaintext), which reveals nothing.

examples:
  nitro-cli build-enclave --docker-uri app:latest --output-file app.eif > build.json
  nitro-attest kms policy --measurements build.json \\
      --principal arn:aws:iam::111122223333:role/enclave-instance \\
      --admin arn:aws:iam::111122223333:role/KMSAdmin --pcr 8 \
      --encryptor arn:aws:iam::111122223333:role/parent > policy.json
  nitro-attest kms policy --eif app.eif --principal arn:aws:iam::111122223333:role/app \\
      --operations Decrypt
  aws kms put-key-policy --key-id KEY --policy-name default --policy file://policy.json
"""

_LINT_EPILOG = """\
Findings (each with the statement's Sid or index and one line):
  unattested-grant     Decrypt, GenerateDataKey*, GenerateRandom or DeriveSharedSecret granted
                       without a kms:RecipientAttestation condition that names the image:
                       ImageSha384, PCR8, PCR1 with PCR2, NitroTPMPCR4/7/12 (sdk-c#157)
  root-delegation      the same granted to an account root: IAM policies then decide (warning)
  decrypt-equivalent   ReEncryptFrom or CreateGrant granted to a principal other than an admin:
                       re-encrypting to the caller's key, or granting Decrypt, needs no Recipient
  policy-rewrite       PutKeyPolicy or ReplicateKey granted to "*", to the principal of an
                       attested statement (the enclave role), or to a non-admin (with --admin)
  principal-star       Principal "*" without any Condition
  pcr-wildcard         a wildcard in a measurement value
  pcr-case-sensitive   StringEquals/StringLike on a measurement (warning)
  unknown-key          a condition key KMS does not know (a typo: it never matches)
  never-matches        a condition no request can satisfy (a value that is not 96 hex digits,
                       an operator of the wrong type, contradicting conditions), or an action
                       without Recipient in an attested statement (warning)
  set-operator         ForAllValues/ForAnyValue misused (ForAllValues on a single-valued key
                       holds when the key is absent)
  attestation-optional ...IfExists on an attestation key: a request without attestation passes
  enclave-all-actions  an attested statement that grants kms:* or uses NotAction
  debug-image          a measurement pinned to zeros: any debug-mode enclave (PCR0-2), any
                       unsigned image (PCR8)
  pcr16-pin            an attested statement without PCR16 pinned to zeros (warning)

Exit status: 0 no finding, 1 findings (warnings included), 2 unreadable or malformed policy.

examples:
  nitro-attest kms lint-policy policy.json
  aws kms get-key-policy --key-id KEY --policy-name default --output text > p.json
  nitro-attest kms lint-policy --json --admin arn:aws:iam::111122223333:role/KMSAdmin p.json
"""


def add_operations(kms_sub: Any) -> None:
    """Add ``policy`` and ``lint-policy`` to ``nitro-attest kms``."""
    p: argparse.ArgumentParser = kms_sub.add_parser(
        "policy",
        help="print a key policy that lets only the attested enclave image use the key",
        description="Print a complete KMS key policy (JSON) binding the key to one enclave "
        "image: an administration statement and an enclave statement conditioned on the image's "
        "measurements, read from nitro-cli build-enclave output or measured from the EIF.",
        epilog=_POLICY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--measurements", metavar="FILE",
                        help="nitro-cli build-enclave (or describe-eif) JSON output")
    source.add_argument("--eif", metavar="FILE", help="an enclave image file, measured here")
    p.add_argument("--principal", metavar="ARN", required=True,
                   help="the enclave instance's IAM role (the caller KMS sees)")
    p.add_argument("--admin", metavar="ARN", action="append", default=[],
                   help="key administrator (repeatable; default: the principal's account root)")
    p.add_argument("--encryptor", metavar="ARN", action="append", default=[],
                   help="a data producer allowed to Encrypt to the key (never to decrypt); "
                   "repeatable")
    p.add_argument("--pcr", metavar="N[=HEX]", action="append", default=[],
                   help="also pin PCR N: 1, 2 or 8 from the image, or any PCR with its value "
                   "(e.g. 3=HEX for the parent's role); repeatable. PCR0 is always pinned (as "
                   "ImageSha384), PCR16 always to zeros")
    p.add_argument("--operations", metavar="OP", nargs="+", default=None,
                   help="operations the enclave may call (default: Decrypt GenerateDataKey "
                   "GenerateDataKeyPair GenerateRandom; DeriveSharedSecret for a key-agreement "
                   "key)")
    p.set_defaults(func=run_policy)

    lint: argparse.ArgumentParser = kms_sub.add_parser(
        "lint-policy",
        help="check a key policy for grants that bypass attestation and conditions that misfire",
        description="Check a KMS key policy: every grant of a Recipient operation must be bound "
        "to attestation, and every condition must be able to match.",
        epilog=_LINT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lint.add_argument("file", metavar="FILE", help="the key policy JSON ('-' for stdin)")
    lint.add_argument("--admin", metavar="ARN", action="append", default=[],
                      help="a principal allowed to use the key without attestation (repeatable)")
    lint.add_argument("--json", action="store_true",
                      help="print one JSON object (also when the file is unreadable)")
    lint.set_defaults(func=run_lint)


def _pcr_choices(args: argparse.Namespace, image: dict[int, bytes]) -> dict[int, str]:
    import re

    from nitro_attest._cli.common import CliError, parse_hex

    pinned: dict[int, str] = {}
    for item in args.pcr:
        index_text, sep, value = item.partition("=")
        if not re.fullmatch(r"[0-9]{1,2}", index_text) or int(index_text) > 31:
            raise CliError(f"--pcr {item[:40]!r}: expected N or N=HEX with N from 0 to 31")
        index = int(index_text)
        if index == 16:
            raise CliError("--pcr 16: PCR16 is always pinned to all zero (an enclave that signs "
                           "caller-chosen keys marks it)")
        if index in pinned or index == 0:
            if index == 0:
                continue  # PCR0 is ImageSha384, always pinned
            raise CliError(f"--pcr {index} given twice")
        if sep:
            pinned[index] = parse_hex(value, f"--pcr {index}", max_bytes=48).hex()
        elif index in image:
            pinned[index] = image[index].hex()
        else:
            measured = ", ".join(str(i) for i in sorted(image))
            raise CliError(f"--pcr {index}: the image measures PCR {measured} only; give "
                           f"{index}=HEX for a PCR set by the platform")
    return pinned


def _one_reading(data: bytes, path: str) -> None:
    """Refuse a measurements file that reads two ways: a key given twice (a reviewer sees the
    first PCR0, json.loads keeps the last, and the policy would pin an image nobody reviewed),
    or nesting too deep to parse. Other defects are left to the parser, which names them."""
    from nitro_attest._cli.common import CliError
    from nitro_attest.codec import strict_json

    try:
        strict_json.loads(data)
    except strict_json.DuplicateKeyError as exc:
        raise CliError(f"{path}: duplicate JSON key {exc.key[:40]!r}: which value counts "
                       "would be a guess") from None
    except strict_json.TooDeepError:
        raise CliError(f"{path}: measurements JSON nested too deeply") from None
    except strict_json.JsonFormatError:  # not JSON, NaN, ...: parse_measurements says so
        pass


def _image(args: argparse.Namespace) -> dict[int, bytes]:
    from nitro_attest._cli.common import CliError, peek_bytes, read_bytes

    if args.eif is not None:
        from nitro_attest.eif import EifError, measurements_from_eif

        peek_bytes(args.eif, 1, what="EIF")  # one-line error for a missing or unreadable file
        try:
            named = measurements_from_eif(args.eif)
        except EifError as exc:
            raise CliError(f"{args.eif}: {exc}") from None
        return {int(k.removeprefix("PCR")): bytes.fromhex(v) for k, v in named.items()}
    from nitro_attest.nsm.simulator.measurements import (
        MAX_MEASUREMENTS_FILE,
        MeasurementsError,
        parse_measurements,
    )

    data = read_bytes(args.measurements, limit=MAX_MEASUREMENTS_FILE, what="measurements")
    _one_reading(data, args.measurements)
    try:
        return parse_measurements(data)
    except MeasurementsError as exc:
        raise CliError(f"{args.measurements}: {exc}") from None


def run_policy(args: argparse.Namespace) -> int:
    import json

    from nitro_attest._cli.common import EXIT_OK, CliError
    from nitro_attest.kms.keypolicy import KeyPolicyError
    from nitro_attest.kms.keypolicy.generate import DEFAULT_OPERATIONS, enclave_key_policy

    image = _image(args)
    pcrs = _pcr_choices(args, image)
    operations = DEFAULT_OPERATIONS
    if args.operations is not None:
        operations = tuple(op for item in args.operations for op in item.split(",") if op)
    try:
        policy = enclave_key_policy(image_sha384=image[0].hex(), principal=args.principal,
                                    admins=args.admin, pcrs=pcrs, operations=operations,
                                    encryptors=args.encryptor)
    except KeyPolicyError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(policy, indent=2))
    return EXIT_OK


def run_lint(args: argparse.Namespace) -> int:
    import json

    from nitro_attest._cli.common import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, read_bytes
    from nitro_attest.errors import NitroAttestError
    from nitro_attest.kms.keypolicy import MAX_POLICY_BYTES, parse_policy
    from nitro_attest.kms.keypolicy.lint import lint_policy

    try:
        data = read_bytes(args.file, limit=MAX_POLICY_BYTES, what="key policy")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            from nitro_attest.kms.keypolicy import KeyPolicyError

            raise KeyPolicyError("key policy: not UTF-8") from None
        findings = lint_policy(parse_policy(text), admins=args.admin)
    except NitroAttestError as exc:
        if not args.json:
            raise
        print(json.dumps({"file": args.file, "error": str(exc)}))
        return EXIT_USAGE
    if args.json:
        print(json.dumps({
            "file": args.file,
            "clean": not findings,
            "findings": [
                {"statement": f.statement, "index": f.index, "code": f.code,
                 "severity": f.severity, "message": f.message}
                for f in findings
            ],
        }, indent=2))
    elif findings:
        from nitro_attest.attestation.untrusted_text import escape_untrusted

        for f in findings:  # keys and values come from the file: escaped for the terminal
            print(escape_untrusted(f.line()))
    else:
        print(f"{args.file}: no findings")
    return EXIT_REJECTED if findings else EXIT_OK
