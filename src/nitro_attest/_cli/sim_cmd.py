"""`nitro-attest sim`: the software NSM from the command line (init, attest, describe)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from nitro_attest._cli.common import EXIT_OK, CliError, parse_hex, peek_bytes, read_bytes
from nitro_attest.eif import EifError, measurements_from_eif
from nitro_attest.eif.format import MAGIC as EIF_MAGIC
from nitro_attest.limits import MAX_PCRS, NSM_FIELD_BYTES
from nitro_attest.nsm.backend import NsmError
from nitro_attest.nsm.simulator.measurements import (
    MAX_MEASUREMENTS_FILE,
    MeasurementsError,
    parse_measurements,
)
from nitro_attest.nsm.simulator.nsm import SimulatedNsm, image_measurements
from nitro_attest.nsm.simulator.state import (
    SimulatorConfig,
    SimulatorStateError,
    default_state_dir,
    init_state,
    random_instance_id,
)

_EPILOG = """\
The simulator signs documents with its own CA hierarchy (root CN=aws.nitro-enclaves.SIMULATED),
kept in a state folder: verify them with `nitro-attest verify --root STATE/root.pem DOC`.
They never verify under the default AWS root.

examples:
  nitro-attest sim init --measurements build/measurements.json \\
      --role-arn arn:aws:iam::123456789012:role/app
  nitro-attest sim attest --nonce $(openssl rand -hex 32) --out doc.cbor
  nitro-attest verify --root ~/.local/share/nitro-attest/simulator/root.pem doc.cbor
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "sim",
        help="software NSM: create its CA, issue attestation documents",
        description="A software Nitro Secure Module producing documents shaped exactly like real "
        "ones, signed by a locally generated CA hierarchy.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_needs_action(p))
    actions = p.add_subparsers(dest="sim_action", metavar="ACTION")
    state_help = (
        "state folder (default: $XDG_DATA_HOME or ~/.local/share, then /nitro-attest/simulator)"
    )

    init = actions.add_parser(
        "init",
        help="create the CA hierarchy and configuration",
        description="Create the simulator's state folder: a P-384 CA hierarchy (root -> regional "
        "-> zonal -> instance) and the enclave configuration. Writes DIR/root.pem, the root to "
        "verify simulated documents with.",
    )
    init.add_argument("--state", metavar="DIR", help=state_help)
    init.add_argument(
        "--measurements",
        metavar="FILE",
        help='nitro-cli build-enclave JSON ({"Measurements": {"PCR0": ...}}) or an EIF file '
        "giving PCR0/1/2 (and PCR8); default: values derived from the installed package",
    )
    init.add_argument(
        "--debug",
        action="store_true",
        help="act as an enclave run with --debug-mode: PCR0/1/2/8 all zero",
    )
    init.add_argument("--role-arn", metavar="ARN", help="parent IAM role ARN, measured in PCR3")
    init.add_argument(
        "--instance-id",
        metavar="ID",
        help="parent instance id i-<17 hex>, measured in PCR4 (default: random)",
    )
    init.add_argument("--region", default="us-east-1", help="region in certificate names")
    init.add_argument("--force", action="store_true", help="replace an existing state folder")
    init.set_defaults(func=run_init)

    attest = actions.add_parser(
        "attest",
        help="write one attestation document",
        description="Boot a simulated enclave and write one raw attestation document (CBOR "
        "COSE_Sign1) to stdout or FILE. Creates a default state folder on first use.",
    )
    attest.add_argument("--state", metavar="DIR", help=state_help)
    attest.add_argument(
        "--nonce",
        metavar="NONCE",
        help="nonce to embed (at most 1024 bytes): hex, or base64url as a verification service's "
        "session gives it (text that is not hex is read as base64url)",
    )
    attest.add_argument("--user-data", metavar="HEX", help="user data (at most 1024 bytes)")
    attest.add_argument("--public-key", metavar="HEX", help="public key (at most 1024 bytes)")
    attest.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    attest.set_defaults(func=run_attest)

    describe = actions.add_parser(
        "describe",
        help="print the NSM description and PCRs as JSON",
        description="Print DescribeNSM and every PCR of a freshly booted simulated enclave.",
    )
    describe.add_argument("--state", metavar="DIR", help=state_help)
    describe.set_defaults(func=run_describe)

    measurements = actions.add_parser(
        "measurements",
        help="print the simulated image's PCRs as nitro-cli build-enclave prints them",
        description="Print the simulated enclave image's measurements in nitro-cli's build-enclave "
        'JSON ({"Measurements": {"HashAlgorithm", "PCR0", "PCR1", "PCR2"[, "PCR8"]}}): the '
        "expected measurements for attesting the simulator. Debug mode does not change them, as "
        "nitro-cli's own output does not change (the documents then carry zeros and fail).",
    )
    measurements.add_argument("--state", metavar="DIR", help=state_help)
    measurements.add_argument(
        "--write-expected", metavar="PATH", help="also write the JSON to PATH"
    )
    measurements.set_defaults(func=run_measurements)


def _needs_action(p: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace) -> int:
        raise CliError(
            "sim: choose an action: init, attest, describe or measurements (see `sim --help`)"
        )

    return run


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state).expanduser() if args.state else default_state_dir()


def _fingerprint(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _load_measurements(path: str) -> dict[int, bytes]:
    """A measurements JSON, or an EIF whose PCRs are computed here (no nitro-cli needed)."""
    if peek_bytes(path, 4, what="measurements") == EIF_MAGIC:
        try:
            pcrs = measurements_from_eif(path)
        except EifError as exc:
            raise CliError(f"{path}: {exc}") from None
        return {int(name.removeprefix("PCR")): bytes.fromhex(value) for name, value in pcrs.items()}
    data = read_bytes(path, limit=MAX_MEASUREMENTS_FILE, what="measurements")
    try:
        return parse_measurements(data)
    except MeasurementsError as exc:
        raise CliError(f"{path}: {exc}") from None


def run_init(args: argparse.Namespace) -> int:
    measurements = None
    if args.measurements is not None:
        measurements = _load_measurements(args.measurements)
    config = SimulatorConfig(
        region=args.region,
        instance_id=args.instance_id or random_instance_id(),
        role_arn=args.role_arn,
        debug=args.debug,
        measurements=measurements,
    )
    state_dir = _state_dir(args)
    try:
        state = init_state(state_dir, config, force=args.force)
    except SimulatorStateError as exc:
        raise CliError(str(exc)) from None
    root = state_dir / "root.pem"
    print(f"simulator state: {state_dir}")
    print(f"root certificate: {root}")
    print(f"root SHA-256 fingerprint: {_fingerprint(state.root_pem)}")
    print(f"verify with: nitro-attest verify --root {root} DOC")
    return EXIT_OK


def _open(args: argparse.Namespace) -> SimulatedNsm:
    try:
        return SimulatedNsm.open(_state_dir(args))
    except SimulatorStateError as exc:
        raise CliError(str(exc)) from None


def _hex_arg(value: str | None, what: str) -> bytes | None:
    if value is None:
        return None
    return parse_hex(value, what, max_bytes=NSM_FIELD_BYTES)


def parse_nonce(value: str) -> bytes:
    """Hex, or base64url (padded or not): the service's newSession nonce pastes as it is."""
    text = value.strip()
    try:
        return parse_hex(text, "--nonce", max_bytes=NSM_FIELD_BYTES)
    except CliError:
        if not text or text[:2].lower() == "0x":
            raise
    import base64
    import binascii

    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
    if not set(text) <= alphabet:
        raise CliError(f"--nonce: neither hex nor base64url: {value[:40]!r}")
    try:
        data = base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise CliError(f"--nonce: neither hex nor base64url: {value[:40]!r}") from None
    if not data or len(data) > NSM_FIELD_BYTES:
        raise CliError(f"--nonce: {len(data)} bytes, 1 to {NSM_FIELD_BYTES} allowed")
    return data


def run_attest(args: argparse.Namespace) -> int:
    if not args.out and sys.stdout.isatty():
        raise CliError("refusing to write a binary document to a terminal: use --out FILE or >")
    nonce = None if args.nonce is None else parse_nonce(args.nonce)
    user_data = _hex_arg(args.user_data, "--user-data")
    public_key = _hex_arg(args.public_key, "--public-key")
    nsm = _open(args)
    try:
        doc = nsm.attestation(user_data=user_data, nonce=nonce, public_key=public_key)
    except NsmError as exc:
        raise CliError(str(exc)) from None
    if args.out:
        try:
            Path(args.out).write_bytes(doc)
        except OSError as exc:
            raise CliError(f"{args.out}: cannot write: {exc.strerror or exc}") from None
        print(f"wrote {len(doc)} bytes to {args.out}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(doc)
        sys.stdout.buffer.flush()
    return EXIT_OK


def run_describe(args: argparse.Namespace) -> int:
    nsm = _open(args)
    d = nsm.describe_nsm()
    pcrs = {}
    for i in range(MAX_PCRS):
        p = nsm.describe_pcr(i)
        pcrs[str(i)] = {"locked": p.locked, "data": p.data.hex()}
    out = {
        "version": f"{d.version_major}.{d.version_minor}.{d.version_patch}",
        "module_id": d.module_id,
        "max_pcrs": d.max_pcrs,
        "locked_pcrs": list(d.locked_pcrs),
        "digest": d.digest,
        "debug": nsm.state.config.debug,
        "state": str(nsm.state.path),
        "root": str(nsm.state.path / "root.pem"),
        "pcrs": pcrs,
    }
    print(json.dumps(out, indent=2))
    return EXIT_OK


def run_measurements(args: argparse.Namespace) -> int:
    nsm = _open(args)
    try:
        pcrs = image_measurements(nsm.state.config)
    finally:
        nsm.close()
    out = {
        "Measurements": {
            "HashAlgorithm": "Sha384 { ... }",
            **{f"PCR{i}": value.hex() for i, value in sorted(pcrs.items())},
        }
    }
    text = json.dumps(out, indent=2) + "\n"
    if args.write_expected:
        path = Path(args.write_expected)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            raise CliError(f"{path}: cannot write: {exc.strerror or exc}") from None
    sys.stdout.write(text)
    return EXIT_OK
