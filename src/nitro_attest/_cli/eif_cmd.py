"""`nitro-attest eif describe|measure|build|diff`: what nitro-cli describe-eif and build-enclave
print, from an EIF file, on any machine; building and comparing images (eif_build_cmd)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from nitro_attest._cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    CliError,
    CliRejection,
    error_json,
    file_error,
    print_error,
)
from nitro_attest._cli.eif_build_cmd import register_build, register_diff
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.eif import HASH_ALGORITHM, EifError, EifInfo, inspect_eif
from nitro_attest.eif.metadata import describe_metadata
from nitro_attest.eif.signature import certificate_info


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "eif",
        help="describe an EIF or compute its PCRs (no nitro-cli needed)",
        description="Read an Enclave Image Format file and compute the PCRs the enclave will\n"
        "report, exactly as nitro-cli does, on any machine.\n\n"
        "exit 0: the file checks out; 1: malformed EIF, CRC mismatch, bad signature,\n"
        "or signing certificate outside its validity; 2: usage or I/O error.",
        epilog="examples:\n"
        "  nitro-attest eif describe enclave.eif --json\n"
        "  nitro-attest eif measure enclave.eif --write-expected expected.json\n"
        "  nitro-attest verify attestation.cbor --expected expected.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    eif_sub = p.add_subparsers(dest="eif_command", metavar="ACTION")
    eif_sub.required = True

    d = eif_sub.add_parser(
        "describe",
        help="like `nitro-cli describe-eif`",
        description="Print the EIF version, measurements (PCR0/1/2, PCR8 when signed), CRC and "
        "signature checks, signing certificate and metadata, in nitro-cli describe-eif's JSON "
        "shape with --json.",
    )
    d.add_argument("file", metavar="FILE", help="the .eif file")
    d.add_argument("--json", action="store_true", help="print nitro-cli's JSON (2-space indent)")
    d.add_argument(
        "--at",
        metavar="TIME",
        default="now",
        help="check the signing certificate's validity at this RFC 3339 time (default: now)",
    )
    d.set_defaults(func=run_describe, json_failure={})

    m = eif_sub.add_parser(
        "measure",
        help="print PCRs like `nitro-cli build-enclave`",
        description='Print {"Measurements": {...}} as nitro-cli build-enclave does. Refuses a '
        "file whose CRC or signature does not check out. --write-expected saves the same JSON, "
        "the file `nitro-attest verify --expected` reads.",
    )
    m.add_argument("file", metavar="FILE", help="the .eif file")
    m.add_argument("--write-expected", metavar="PATH", help="also write the JSON to PATH")
    m.set_defaults(func=run_measure)
    register_build(eif_sub)
    register_diff(eif_sub)


def _inspect(path: str, at: dt.datetime | None = None) -> EifInfo:
    if Path(path).is_dir():
        raise CliError(f"{path}: is a directory")
    try:
        return inspect_eif(path, at=at)
    except OSError as exc:
        raise file_error(path, exc) from None


def parse_time(value: str) -> dt.datetime:
    if value == "now":
        return dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--at: not an RFC 3339 time: {value[:40]!r}") from None
    if when.tzinfo is None:
        raise CliError("--at: give a time zone (e.g. 2026-01-01T00:00:00Z)")
    return when


def measurements_json(info: EifInfo) -> dict[str, str]:
    return {"HashAlgorithm": HASH_ALGORITHM, **dict(sorted(info.pcrs_hex().items()))}


def describe_json(info: EifInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "EifVersion": info.header.version,
        "Measurements": measurements_json(info),
        "IsSigned": info.signed,
    }
    if info.certificate is not None:
        out["SigningCertificate"] = certificate_info(info.certificate)
    out["CheckCRC"] = info.crc_ok
    if info.signature_ok is not None:
        out["SignatureCheck"] = info.signature_ok
    if info.metadata is not None:
        out["ImageName"] = info.metadata["ImageName"]
        out["ImageVersion"] = info.metadata["ImageVersion"]
        out["Metadata"] = describe_metadata(info.metadata)
    return out


def _fail(path: str, exc: EifError) -> int:
    # Not an EIF, or a malformed one: read and refused, exit 1 (docs/cli.md); main prints it.
    raise CliRejection(f"{path}: {exc}", "eif") from None


def run_describe(args: argparse.Namespace) -> int:
    at = parse_time(args.at)
    try:
        info = _inspect(args.file, at)
    except EifError as exc:
        return _fail(args.file, exc)
    if args.json:
        out = describe_json(info)
        problems = info.problems()
        if problems:  # nitro-cli's shape, plus the contract's error member on failure
            out["error"] = error_json(f"{args.file}: {problems[0]}", "eif")
        print(json.dumps(out, indent=2))
    else:
        print(_describe_text(info))
    for problem in info.problems():
        print_error(f"{args.file}: {problem}")
    return EXIT_REJECTED if info.problems() else EXIT_OK


def _describe_text(info: EifInfo) -> str:
    h = info.header
    lines = [f"EIF version:     {h.version} ({h.arch}), {len(info.scan.layout.sections)} sections"]
    if info.metadata is not None:
        meta = info.metadata
        lines.append(f"Image:           {meta['ImageName']} {meta['ImageVersion']}")
    lines.append("Measurements (SHA-384):")
    lines += [f"  {name:<5} {value}" for name, value in info.pcrs_hex().items()]
    crc = "ok" if info.crc_ok else f"MISMATCH (header {h.crc32:08x})"
    lines.append(f"CRC32:           {crc} ({info.scan.crc_computed:08x})")
    if info.certificate is None:
        lines.append("Signed:          no")
    else:
        cert = certificate_info(info.certificate)
        names = ", ".join(f"{k}={v}" for k, v in cert["IssuerName"].items())
        lines.append(f"Signed:          yes, by {names}")
        lines.append(
            f"  valid:         {cert['NotBefore']} .. {cert['NotAfter']}"
            + (" (NOT VALID NOW)" if info.validity_problem else "")
        )
        lines.append(f"Signature check: {'ok' if info.signature_ok else 'FAILED'}")
    return "\n".join(escape_untrusted(line) for line in lines)  # names come from the EIF file


def run_measure(args: argparse.Namespace) -> int:
    try:
        info = _inspect(args.file)
    except EifError as exc:
        return _fail(args.file, exc)
    if not info.crc_ok or info.signature_ok is False:
        # Expected measurements from a corrupt or mis-signed file would be worse than none.
        raise CliRejection(f"{args.file}: {info.problems()[0]}", "eif")
    text = json.dumps({"Measurements": measurements_json(info)}, indent=2)
    if args.write_expected:
        try:
            Path(args.write_expected).write_text(text + "\n")
        except OSError as exc:
            raise CliError(f"{args.write_expected}: cannot write: {exc.strerror or exc}") from None
    print(text)
    return EXIT_OK
