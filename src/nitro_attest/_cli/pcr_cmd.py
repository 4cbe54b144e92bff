"""`nitro-attest pcr`: nitro-cli pcr, the PCR a file or a signing certificate produces."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from nitro_attest._cli.common import EXIT_OK, CliError, file_error, read_bytes
from nitro_attest.attestation.pcr import extend_zero
from nitro_attest.eif import EifError
from nitro_attest.eif.measure import CHUNK_SIZE
from nitro_attest.eif.signature import MAX_CERTIFICATE_SIZE, load_certificate, pcr8


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "pcr",
        help="compute a PCR value like `nitro-cli pcr`",
        description="PCR = SHA-384(48 zero bytes || SHA-384(data)). --input hashes a file's "
        'bytes and prints {"PCR": hex}; --signing-certificate hashes a PEM certificate\'s DER and '
        'prints {"PCR8": hex}, the PCR8 of an EIF signed with it.',
    )
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--input", metavar="FILE", help="any file (streamed)")
    group.add_argument("--signing-certificate", metavar="PEM", help="a PEM certificate")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.signing_certificate:
        pem = read_bytes(args.signing_certificate, limit=MAX_CERTIFICATE_SIZE, what="certificate")
        try:
            value = pcr8(load_certificate(pem))
        except EifError:
            raise CliError(f"{args.signing_certificate}: not a PEM certificate") from None
        print(json.dumps({"PCR8": value.hex()}, indent=2))
        return EXIT_OK
    path = Path(args.input)
    h = hashlib.sha384()
    try:
        if path.is_dir():
            raise CliError(f"{args.input}: is a directory")
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK_SIZE):
                h.update(chunk)
    except OSError as exc:
        raise file_error(args.input, exc) from None
    print(json.dumps({"PCR": extend_zero(h.digest()).hex()}, indent=2))
    return EXIT_OK
