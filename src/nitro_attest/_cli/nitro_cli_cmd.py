"""`nitro-attest enclave build|run|describe|terminate|console`: nitro-cli, with its errors named.

The JSON nitro-cli prints goes to stdout unchanged (re-indented), so scripts can parse it. A
nitro-cli failure prints its ``[ Exx ]`` code and text and exits with nitro-cli's own status (26
for E26), which is what a user of nitro-cli expects; a missing nitro-cli is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from nitro_attest._cli.common import EXIT_OK, CliError
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.aws.nitro_cli import NitroCli, NitroCliNotFoundError
from nitro_attest.errors import NitroCliError

_EPILOG = """\
examples (on the parent instance, after ./setup-pvm.sh):
  nitro-attest enclave build --docker-uri nitro-attest-enclave:latest \\
      --output-file build/enclave.eif
  nitro-attest enclave run --eif-path build/enclave.eif --memory 512 --cpu-count 2 --enclave-cid 16
  nitro-attest enclave describe
  nitro-attest enclave terminate --all

nitro-cli failures are shown as "[ Exx ] text" and the command exits with nitro-cli's status
(for example 26 for E26: the enclave needs more memory, at least 4x the EIF size).
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "enclave",
        help="build, run, describe and terminate enclaves through nitro-cli",
        description="Thin wrappers over nitro-cli that print its JSON and name its [ Exx ] errors.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nitro-cli", default="nitro-cli", metavar="PATH",
                   help="the nitro-cli binary (default: nitro-cli on PATH)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    b = actions.add_parser("build", help="build an EIF from a Docker image (prints PCRs)")
    b.add_argument("--docker-uri", required=True, help="local Docker image, e.g. name:tag")
    b.add_argument("--output-file", required=True, help="where to write the EIF")
    b.add_argument("--docker-dir", help="build the Docker image from this directory first")
    b.add_argument("--signing-certificate", help="PEM certificate to sign the EIF (gives PCR8)")
    b.add_argument("--private-key", help="PEM private key matching --signing-certificate")

    r = actions.add_parser("run", help="start an enclave from an EIF")
    r.add_argument("--eif-path", required=True)
    r.add_argument("--memory", type=int, required=True, metavar="MIB",
                   help="enclave memory in MiB (at least 4x the EIF size)")
    cpus = r.add_mutually_exclusive_group(required=True)
    cpus.add_argument("--cpu-count", type=int, metavar="N")
    cpus.add_argument("--cpu-ids", type=int, nargs="+", metavar="ID")
    r.add_argument("--enclave-cid", type=int, metavar="CID", help="vsock CID, 4 or above")
    r.add_argument("--enclave-name")
    r.add_argument("--debug-mode", action="store_true",
                   help="console access; its attestation documents have zero PCRs and fail")

    actions.add_parser("describe", help="list running enclaves (JSON array)")

    e = actions.add_parser("describe-eif", help="show an EIF's measurements and metadata")
    e.add_argument("--eif-path", required=True)

    t = actions.add_parser("terminate", help="terminate one enclave or all of them")
    which = t.add_mutually_exclusive_group(required=True)
    which.add_argument("--enclave-id")
    which.add_argument("--all", action="store_true")

    c = actions.add_parser("console", help="attach to a debug-mode enclave's console")
    c.add_argument("--enclave-id", required=True)
    c.add_argument("--disconnect-timeout", type=int, metavar="SECONDS")

    p.set_defaults(func=run)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2))


def run(args: argparse.Namespace) -> int:
    cli = NitroCli(args.nitro_cli)
    try:
        return _dispatch(cli, args)
    except NitroCliNotFoundError as exc:
        raise CliError(exc.message) from None
    except NitroCliError as exc:
        if cli.last_stderr and exc.code is None:
            sys.stderr.write(cli.last_stderr)
        print(f"nitro-attest: error: {escape_untrusted(str(exc))}", file=sys.stderr)
        status = exc.returncode if exc.returncode and 0 < exc.returncode < 256 else 1
        return status
    except ValueError as exc:  # argument combinations the wrapper refuses
        raise CliError(str(exc)) from None


def _dispatch(cli: NitroCli, args: argparse.Namespace) -> int:
    action = args.action
    if action == "build":
        if (args.signing_certificate is None) != (args.private_key is None):
            raise CliError("--signing-certificate and --private-key go together")
        built = cli.build_enclave(
            docker_uri=args.docker_uri, output_file=args.output_file, docker_dir=args.docker_dir,
            signing_certificate=args.signing_certificate, private_key=args.private_key,
        )
        _print(built.raw)
    elif action == "run":
        started = cli.run_enclave(
            eif_path=args.eif_path, memory_mib=args.memory, cpu_count=args.cpu_count,
            cpu_ids=args.cpu_ids, enclave_cid=args.enclave_cid, debug_mode=args.debug_mode,
            enclave_name=args.enclave_name,
        )
        if args.debug_mode:
            print("warning: debug mode: attestation documents from this enclave have all-zero "
                  "PCRs and fail verification", file=sys.stderr)
        _print(started.raw)
    elif action == "describe":
        _print([e.raw for e in cli.describe_enclaves()])
    elif action == "describe-eif":
        _print(cli.describe_eif(args.eif_path).raw)
    elif action == "terminate":
        done = cli.terminate_enclave(enclave_id=args.enclave_id, all_enclaves=args.all)
        for result in done:
            _print(result.raw)
    elif action == "console":
        argv = cli.console_args(args.enclave_id, args.disconnect_timeout)
        # The console streams until the enclave stops; run it attached to our terminal.
        rc = subprocess.call(argv)
        if rc != 0:
            print(f"nitro-attest: error: nitro-cli console exited with status {rc}",
                  file=sys.stderr)
        return rc
    return EXIT_OK
