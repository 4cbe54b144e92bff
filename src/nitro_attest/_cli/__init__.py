"""The `nitro-attest` command line: parse flags, build objects, call the API, print.

Each subcommand lives in its own module exposing ``register(subparsers)``; the parser it adds sets
``func`` to a ``run(args) -> int`` callable. Exit codes everywhere: 0 success, 1 checked and
rejected, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from nitro_attest._cli import (
    appraise_cmd,
    attest_cmd,
    eif_cmd,
    inspect_cmd,
    nitro_cli_cmd,
    pcr_cmd,
    proxy_cmd,
    send_secret_cmd,
    serve_cmd,
    service_cmd,
    sim_cmd,
    verify_cmd,
)
from nitro_attest._cli.common import EXIT_USAGE, escape_text, exit_code_for
from nitro_attest.errors import NitroAttestError

_COMMAND_MODULES = (
    verify_cmd,
    inspect_cmd,
    eif_cmd,
    pcr_cmd,
    sim_cmd,
    nitro_cli_cmd,
    serve_cmd,
    attest_cmd,
    send_secret_cmd,
    service_cmd,
    appraise_cmd,
    proxy_cmd,
)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, pointing at --help, instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nitro-attest",
        description="Remote attestation for AWS Nitro Enclaves: verify attestation documents, "
        "run an enclave attestation server (real /dev/nsm or a software NSM) and its client.",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show a traceback when a command fails unexpectedly"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in _COMMAND_MODULES:
        module.register(sub)
    for command in set(sub.choices.values()):  # --verbose also after the command name
        command.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        rc: int = args.func(args)
        return rc
    except NitroAttestError as exc:
        # The tree decides the exit code: a rejected document is 1, every other branch
        # (configuration, transport, NSM, nitro-cli, channel, format) is 2.
        print(f"nitro-attest: error: {escape_text(str(exc))}", file=sys.stderr)
        if args.verbose:
            _print_traceback(exc)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("nitro-attest: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_USAGE
    except Exception as exc:  # a bug, not bad input: still one line unless --verbose
        print(f"nitro-attest: internal error: {escape_text(repr(exc))}", file=sys.stderr)
        if args.verbose:
            _print_traceback(exc)
        else:
            print("nitro-attest: run with --verbose for the traceback", file=sys.stderr)
        return EXIT_USAGE


def _print_traceback(exc: BaseException) -> None:
    # The frames are our code; the message may quote the enclave or a document: escape it whole.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    message = "".join(traceback.format_exception_only(exc)).rstrip("\n")
    print(f"Traceback (most recent call last):\n{frames}{escape_text(message)}", file=sys.stderr)


def entrypoint() -> None:
    sys.exit(main())
