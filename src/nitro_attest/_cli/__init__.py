"""The `nitro-attest` command line: parse flags, build objects, call the API, print.

Each subcommand lives in its own module exposing ``register(subparsers)``; the parser it adds sets
``func`` to a ``run(args) -> int`` callable. The output contract every command keeps (exit codes,
the error line on stderr, JSON on failure) is docs/cli.md; ``main`` enforces it for every error
that escapes a command, and tests/test_cli_contract.py checks it command by command.

Only the chosen subcommand's module is imported: ``COMMANDS`` names each module and holds the
one-line help that ``--help`` lists, so listing the commands imports none of them (the server,
channel, simulator and EIF code cost more to import than verifying a document does).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import sys
from collections.abc import Collection, Sequence
from typing import Any, NoReturn

from nitro_attest import __version__
from nitro_attest._cli.common import (
    EXIT_USAGE,
    CliError,
    error_json,
    exit_code_for,
    print_error,
)
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.errors import NitroAttestError

# name -> (module in this package, its one-line help), in --help's order. tests/test_cli_lazy.py
# checks that each module registers exactly this name and help.
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": (
        "verify_cmd",
        "verify attestation documents (signature, chain, PCRs, nonce, user data)",
    ),
    "inspect": ("inspect_cmd", "decode and show a document without verifying it"),
    "eif": ("eif_cmd", "describe an EIF or compute its PCRs (no nitro-cli needed)"),
    "pcr": ("pcr_cmd", "compute a PCR value like `nitro-cli pcr`"),
    "sim": ("sim_cmd", "software NSM: create its CA, issue attestation documents"),
    "enclave": ("nitro_cli_cmd", "build, run, describe and terminate enclaves through nitro-cli"),
    "serve": (
        "serve_cmd",
        "run the enclave attestation server (real /dev/nsm or the software NSM)",
    ),
    "attest": ("attest_cmd", "request an attestation document from an enclave and verify it"),
    "send-secret": (
        "send_secret_cmd",
        "deliver a secret to an enclave whose attestation verifies (HPKE)",
    ),
    "service": (
        "service_cmd",
        "run the verification service (Veraison challenge-response API, signed EAR results)",
    ),
    "appraise": (
        "appraise_cmd",
        "attest an enclave through a verification service and check the signed EAR",
    ),
    "proxy": (
        "proxy_cmd",
        "forward connections to or from the enclave (vsock/tcp/unix), or serve HTTP CONNECT",
    ),
    "https": (
        "https_cmd",
        "attested HTTPS: TLS ending in the enclave (serve) and a client that checks it (get)",
    ),
    "kms": (
        "kms_cmd",
        "AWS KMS with attestation (Recipient): enclave client, local KMS, key policies",
    ),
}


# The width formatters get when they only check a flag or name a subparser, never lay out text.
_CHECK_WIDTH = 1000


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, pointing at --help, instead of the whole usage block.

    argparse builds a help formatter for every flag it adds (to check the metavar), and a
    formatter asks shutil for the terminal width: importing shutil (with bz2 and lzma) costs more
    than parsing. So only formatting help or usage text looks the width up.
    """

    def __init__(
        self, *, formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter, **kw: Any
    ) -> None:
        checker = functools.partial(formatter_class, width=_CHECK_WIDTH)
        super().__init__(formatter_class=checker, **kw)
        self._layout = formatter_class

    def format_usage(self) -> str:
        self.formatter_class = self._layout
        return super().format_usage()

    def format_help(self) -> str:
        self.formatter_class = self._layout
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("nitro-attest").strip()
        text = f"{command}: {message}" if command else message
        # A CliError, not SystemExit: main prints it by the contract (and as JSON for --json).
        raise CliError(f"{text} (see '{self.prog} --help')")


def build_parser(
    load: Collection[str] | None = None, *, others: bool = True
) -> argparse.ArgumentParser:
    """The whole parser, every command loaded; given ``load``, only those commands get their
    module's flags (the others are a name and a help line, enough for ``--help`` and for naming an
    unknown command, and left out with ``others=False``)."""
    if load is None:
        load = COMMANDS
    parser = _Parser(
        prog="nitro-attest",
        description="Remote attestation for AWS Nitro Enclaves: verify attestation documents, "
        "run an enclave attestation server (real /dev/nsm or a software NSM) and its client.",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show a traceback when a command fails unexpectedly"
    )
    parser.add_argument("--version", action="version", version=f"nitro-attest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, summary) in COMMANDS.items():
        if name in load:
            importlib.import_module(f"{__name__}.{module}").register(sub)
            sub.choices[name].add_argument(  # --verbose also after the command name
                "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
        elif others:  # a name and a help line, no flags: parse_args never lets argparse run it
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command argparse will run: the first argument not starting with '-' (the top-level
    options take no value; an argument that starts with '-' and is taken as the command is never a
    command's name, so argparse rejects it whatever is loaded)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """argparse's answer for ``argv``, loading only the chosen command's module."""
    command = chosen_command(argv)
    if command is not None and all(arg == "--verbose" for arg in argv[: argv.index(command)]):
        # Nothing but --verbose before it: argparse can take no other command, nor print the
        # top-level help, so the other commands are not needed at all.
        return build_parser({command}, others=False).parse_args(argv)
    parser = build_parser({command} if command else set())
    # Exits on --help and on every error outside the command's own flags, with the full parser's
    # message; if argparse picked a command the guess missed, its placeholder parsed anything.
    args, _ = parser.parse_known_args(argv)
    if args.command != command:
        parser = build_parser({args.command})
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, resume_gc: bool = False) -> int:
    """Run one command. ``resume_gc``: the cyclic collector was paused while the command's
    modules were imported (``entrypoint``); it is resumed, those modules' objects frozen, once the
    arguments are parsed, before the command runs."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except CliError as exc:  # argparse's usage errors (_Parser.error)
        print_error(str(exc))
        if "--json" in argv:  # a --json caller reads stdout: it gets the failure there too
            _print_json_failure(None, error_json(str(exc), "usage"))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version: printed, exit 0
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    finally:
        if resume_gc:
            gc.freeze()  # what the imports made lives until exit: never traversed again
            gc.enable()
    try:
        rc: int = args.func(args)
        return rc
    except NitroAttestError as exc:
        # The tree decides the exit code: a rejected document is 1, every other branch
        # (configuration, transport, NSM, nitro-cli, channel, format) is 2.
        print_error(str(exc))
        _print_json_failure(args, error_json(str(exc), getattr(exc, "check", None)))
        if args.verbose:
            _print_traceback(exc)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("nitro-attest: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_USAGE
    except Exception as exc:  # a bug, not bad input: still one line unless --verbose
        print_error(f"internal error: {exc!r}")
        _print_json_failure(args, error_json(f"internal error: {exc!r}", "internal"))
        if args.verbose:
            _print_traceback(exc)
        else:
            print("nitro-attest: run with --verbose for the traceback", file=sys.stderr)
        return EXIT_USAGE


def _print_json_failure(args: argparse.Namespace | None, error: dict[str, Any]) -> None:
    """With --json, the failure also goes to stdout in the command's own shape: its
    ``json_failure`` template (every member of a success, unknown ones null) with ``error`` set,
    one line for the commands that print JSON Lines (docs/cli.md)."""
    if args is not None and not getattr(args, "json", False):
        return
    import json  # only on a failure with --json

    template: dict[str, Any] = getattr(args, "json_failure", None) or {}
    indent = None if getattr(args, "json_lines", False) or args is None else 2
    print(json.dumps({**template, "error": error}, indent=indent), flush=True)


def _print_traceback(exc: BaseException) -> None:
    import traceback  # only on failure with --verbose

    # The frames are our code; the message may quote the enclave or a document: escape it whole.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    message = "".join(traceback.format_exception_only(exc)).rstrip("\n")
    shown = escape_untrusted(message)
    print(f"Traceback (most recent call last):\n{frames}{shown}", file=sys.stderr)


def entrypoint() -> None:
    # A command imports its modules (cryptography's among them) in a fresh process: tens of
    # thousands of objects that live until exit, which the cyclic collector would traverse some
    # 40 times while they load (about 5 ms of a `verify`, bench/cli.py). It is paused until the
    # arguments are parsed, then resumed for the command itself (servers run for days).
    gc.disable()
    sys.exit(main(resume_gc=True))
