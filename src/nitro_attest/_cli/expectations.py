"""Flags shared by every command that verifies: trust root, expectations, time, output."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from nitro_attest._cli.common import CliError, parse_hex, read_bytes
from nitro_attest.attestation.document import DocumentKind
from nitro_attest.attestation.policy import (
    PcrSet,
    Policy,
    load_expected_measurements,
    normalize_pcr_set,
)
from nitro_attest.attestation.verifier import At, Verifier
from nitro_attest.errors import PolicyError, TrustRootError
from nitro_attest.limits import NSM_FIELD_BYTES

MAX_PEM_BYTES = 64 * 1024


def add_trust_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root",
        metavar="PEM",
        help="trust this root certificate instead of the embedded AWS Nitro root G1 "
        "(for the software NSM's root.pem, or a private test hierarchy)",
    )


def add_pcr_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--expected",
        metavar="FILE",
        action="append",
        default=[],
        help="expected measurements in nitro-cli's build-enclave JSON "
        '({"Measurements": {"PCR0": hex, ...}}); repeat, or give a JSON list, to allow '
        "several releases: the document must match one set fully",
    )
    p.add_argument(
        "--pcr",
        metavar="N=HEX",
        action="append",
        default=[],
        help="require PCR N (0..31, or PCR3 / PCR4 / PCR8 ...) to equal HEX; repeatable; "
        "applies on top of every --expected set",
    )
    p.add_argument(
        "--allow-debug",
        action="store_true",
        help="accept documents from debug-mode enclaves (PCR0 all zero), or NitroTPM documents "
        "of an unmeasured boot: development only",
    )
    p.add_argument(
        "--kind",
        choices=[k.value for k in DocumentKind],
        default=DocumentKind.ENCLAVE.value,
        help="the document kind accepted: enclave (default, a Nitro Enclave's 'pcrs') or "
        "nitrotpm (an EC2 instance's NitroTPM, 'nitrotpm_pcrs'); any other kind is rejected",
    )


def add_field_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nonce", metavar="HEX", help="the document's nonce must equal HEX")
    p.add_argument("--user-data", metavar="HEX", help="the document's user_data must equal HEX")
    p.add_argument("--public-key", metavar="HEX", help="the document's public_key must equal HEX")


def add_time_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--at",
        metavar="TIME",
        default="now",
        help="when the certificates must be valid: 'now' (default), 'document' (the document's "
        "own timestamp, for audits of old documents) or an ISO 8601 time such as "
        "2025-08-29T23:20:00Z (no zone means UTC)",
    )
    p.add_argument(
        "--max-age",
        metavar="SECONDS",
        type=float,
        help="reject documents whose timestamp is older than this, measured against the "
        "present (60 s clock skew allowed); cannot be combined with --at",
    )


def load_root(path: str | None) -> bytes | None:
    if path is None:
        return None
    return read_bytes(path, limit=MAX_PEM_BYTES, what="root certificate")


def build_verifier(args: argparse.Namespace) -> Verifier:
    try:
        return Verifier(root_pem=load_root(args.root))
    except TrustRootError as exc:
        raise CliError(f"--root {args.root}: {exc}") from None


def parse_pcr_flags(values: list[str]) -> dict[int, bytes]:
    out: dict[Any, Any] = {}
    for value in values:
        index, sep, digest = value.partition("=")
        if not sep or not index.strip():
            raise CliError(f"--pcr {value!r}: expected N=HEX, e.g. --pcr 0=abcd...")
        out[index.strip()] = parse_hex(digest, f"--pcr {index.strip()}")
    try:
        return dict(normalize_pcr_set(out, "--pcr")) if out else {}
    except PolicyError as exc:
        raise CliError(str(exc)) from None


def pcr_sets(args: argparse.Namespace) -> list[PcrSet]:
    """--expected files (each one or more sets) with every --pcr value merged into each set."""
    extra = parse_pcr_flags(args.pcr)
    sets: list[PcrSet] = []
    for path in args.expected:
        try:
            sets.extend(load_expected_measurements(path))
        except PolicyError as exc:
            raise CliError(f"--expected: {exc}") from None
    if not sets:
        return [extra] if extra else []
    merged: list[PcrSet] = []
    for s in sets:
        for index, value in extra.items():
            if index in s and s[index] != value:
                raise CliError(f"--pcr {index} contradicts PCR{index} in an --expected file")
        merged.append({**s, **extra})
    return merged


def build_policy(args: argparse.Namespace, **fixed: bytes | None) -> Policy:
    """The policy from the flags; ``fixed`` supplies fields a command sets itself (the nonce)."""
    max_age = getattr(args, "max_age", None)
    at = getattr(args, "at", "now").strip()
    if max_age is not None and at != "now":
        # docs/verifier.md, "Time": an age is a replay defence only against the present.
        raise CliError(
            f"--max-age cannot be combined with --at {at}: the age would be measured against "
            "that time instead of the present (with --at document every document is 0 s old)"
        )
    fields = {}
    for name in ("nonce", "user_data", "public_key"):
        if name in fixed:
            fields[name] = fixed[name]
        else:
            text = getattr(args, name, None)
            flag = "--" + name.replace("_", "-")
            fields[name] = (
                None if text is None else parse_hex(text, flag, max_bytes=NSM_FIELD_BYTES)
            )
    try:
        return Policy(
            pcr_sets=tuple(pcr_sets(args)),
            nonce=fields["nonce"],
            user_data=fields["user_data"],
            public_key=fields["public_key"],
            max_age=max_age,
            allow_debug=args.allow_debug,
            kind=DocumentKind(args.kind),
        )
    except PolicyError as exc:
        raise CliError(str(exc)) from None


def parse_at(text: str) -> At:
    value = text.strip()
    if value in ("now", "document"):
        return value  # type: ignore[return-value]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"--at {text!r}: expected 'now', 'document' or an ISO 8601 time like "
            "2025-08-29T23:20:00Z"
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    try:  # near datetime's limits a zoned time may not exist in UTC (year 0 or 10000)
        return when.astimezone(UTC)
    except (OverflowError, ValueError):
        raise CliError(f"--at {text!r}: out of range in UTC") from None

