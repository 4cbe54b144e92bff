"""`nitro-attest inspect` (being written)."""

from __future__ import annotations

import argparse
from typing import Any

from nitro_attest.cli.common import CliError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("inspect", help="inspect attestation documents")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise CliError("inspect: not available yet")
