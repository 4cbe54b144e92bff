"""`nitro-attest eif build` and `eif diff` (registered by eif_cmd): reproducible EIFs without
Docker or nitro-cli, and why two EIFs differ."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from nitro_attest._cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    CliError,
    CliRejection,
    print_error,
    read_bytes,
)
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.eif import HASH_ALGORITHM, EifError


def register_build(sub: Any) -> None:
    b: argparse.ArgumentParser = sub.add_parser(
        "build",
        help="build an EIF from an image tarball, OCI layout or rootfs dir (no nitro-cli)",
        description="Build a reproducible EIF from SOURCE: a `docker save` tarball, an OCI image\n"
        "layout (directory or tar), or a plain root filesystem directory. The same inputs give\n"
        "the same bytes on any machine; times are clamped to SOURCE_DATE_EPOCH (default 0).\n"
        "Prints nitro-cli build-enclave's JSON. See docs/eif.md for the layout.\n\n"
        "exit 0: built; 1: the image or blobs were refused (malformed, path escape,\n"
        "too large); 2: usage or I/O error.",
        epilog="examples:\n"
        "  docker save myapp:latest -o myapp.tar\n"
        "  nitro-attest eif build --image myapp.tar --output myapp.eif\n"
        "  nitro-attest eif build --image rootfs/ --cmd '/bin/app --port 5005' --env A=1 "
        "--output app.eif",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--image", required=True, metavar="SOURCE", help="tarball, OCI layout or dir")
    b.add_argument(
        "--blobs",
        metavar="DIR",
        help="nitro-cli's blobs folder (bzImage or Image, init, nsm.ko, cmdline); default "
        "$NITRO_CLI_BLOBS, else /usr/share/nitro_enclaves/blobs",
    )
    b.add_argument(
        "--cmd",
        metavar="CMD",
        help="the command instead of the image's Entrypoint+Cmd: a shell-style string, or a "
        'JSON array such as \'["/app", "--port", "5005"]\'',
    )
    b.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set or replace one variable of the image's environment (repeatable)",
    )
    b.add_argument("--signing-cert", metavar="PEM", help="sign the EIF (PCR8) with this cert")
    b.add_argument("--signing-key", metavar="PEM", help="... and this EC private key")
    b.add_argument("--output", required=True, metavar="FILE", help="the EIF to write")
    b.add_argument("--json", action="store_true", help="JSON only (the default output too)")
    b.set_defaults(func=run_build, json_failure={"Measurements": None})


def register_diff(sub: Any) -> None:
    d: argparse.ArgumentParser = sub.add_parser(
        "diff",
        help="why two EIFs differ: sections, and for ramdisks the paths and how",
        description="Compare two EIFs section by section. For ramdisks, list each path that was\n"
        "added, removed or changed, and how (content, mode, owner, link target, type, device,\n"
        "mtime). Use it when a rebuild does not reproduce PCR0.\n\n"
        "exit 0: identical; 1: they differ, or one is not a well-formed EIF; 2: usage or I/O\n"
        "error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("a", metavar="A.eif")
    d.add_argument("b", metavar="B.eif")
    d.add_argument("--json", action="store_true", help="print the differences as JSON")
    d.set_defaults(func=run_diff, json_failure={"Identical": False})


def _cmd(value: str) -> list[str]:
    if value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            raise CliError("--cmd: not a valid JSON array") from None
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise CliError("--cmd: the JSON form must be an array of strings")
        words: list[str] = parsed
    else:
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise CliError(f"--cmd: {exc}") from None
    if not words:
        raise CliError("--cmd: empty command")
    return words


def run_build(args: argparse.Namespace) -> int:
    # imported here: the builder is not needed by every nitro-attest command's start-up
    from nitro_attest.eif.build import BuildOptions, build_eif, default_blobs, source_date_epoch

    image = Path(args.image)
    if not os.path.lexists(image):
        raise CliError(f"{image}: no such file or directory")
    blobs = Path(args.blobs) if args.blobs else default_blobs(os.environ)
    if blobs is None:
        raise CliError(
            "--blobs: not given, and neither $NITRO_CLI_BLOBS nor "
            "/usr/share/nitro_enclaves/blobs exists"
        )
    if bool(args.signing_cert) != bool(args.signing_key):
        raise CliError("--signing-cert and --signing-key go together")
    cert = (
        read_bytes(args.signing_cert, limit=16384, what="certificate")
        if args.signing_cert
        else None
    )
    key = read_bytes(args.signing_key, limit=16384, what="key") if args.signing_key else None
    out = Path(args.output)
    if out.is_dir():
        raise CliError(f"{out}: is a directory")
    if not out.parent.is_dir():
        raise CliError(f"{out.parent}: no such directory")
    try:
        opts = BuildOptions(
            image=image,
            blobs=blobs,
            output=out,
            cmd=_cmd(args.cmd) if args.cmd is not None else None,
            env=list(args.env),
            signing_certificate_pem=cert,
            signing_key_pem=key,
            epoch=source_date_epoch(os.environ),
        )
        result = build_eif(opts)
    except EifError as exc:  # the image was read and refused: exit 1; main escapes the names
        raise CliRejection(str(exc), "image") from None
    except OSError as exc:
        raise CliError(f"{exc.filename or out}: {exc.strerror or exc}") from None
    if result.dropped_xattrs:
        print(
            f"nitro-attest: warning: {result.dropped_xattrs} extended attribute(s) dropped "
            "(newc cpio cannot carry them; file capabilities are among them)",
            file=sys.stderr,
        )
    measurements = {"HashAlgorithm": HASH_ALGORITHM, **dict(sorted(result.measurements.items()))}
    print(json.dumps({"Measurements": measurements}, indent=2))
    return EXIT_OK


def run_diff(args: argparse.Namespace) -> int:
    from nitro_attest.eif.diff import diff_eifs

    for path in (args.a, args.b):
        if not Path(path).is_file():
            raise CliError(f"{path}: no such file")
    try:
        report = diff_eifs(Path(args.a), Path(args.b))
    except EifError as exc:  # not an EIF, or a malformed one: exit 1, as in eif describe
        raise CliRejection(str(exc), "eif") from None
    except OSError as exc:
        raise CliError(f"{exc.filename}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:  # paths come from the images: escape control characters line by line
        lines = report.text(args.a, args.b).splitlines()
        print("\n".join(escape_untrusted(line) for line in lines))
    if not report.same:
        print_error(f"{args.a} and {args.b} differ")
    return EXIT_OK if report.same else EXIT_REJECTED
