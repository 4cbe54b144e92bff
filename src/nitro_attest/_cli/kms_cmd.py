"""`nitro-attest kms`: AWS KMS from inside the enclave, a local KMS, and key-policy tools.

Three groups of operations, one module each, all registered under ``kms``:
``kms_client_cmd`` (decrypt, generate-data-key, generate-data-key-pair, generate-random,
derive-shared-secret, proxy: the enclave side of the Recipient flow), ``kms_emulator_cmd``
(emulator: the local KMS) and ``kms_policy_cmd`` (policy, lint-policy: operators' tools).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

GROUPS = ("kms_client_cmd", "kms_emulator_cmd", "kms_policy_cmd")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "kms",
        help="AWS KMS with attestation (Recipient): enclave client, local KMS, key policies",
        description="AWS KMS's Recipient flow from inside an enclave: the enclave's KMS client "
        "and its in-enclave proxy for unmodified SDKs, a local KMS that checks attestation "
        "documents and key policies, and the key-policy generator and linter.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kms_sub = p.add_subparsers(dest="kms_command", metavar="OPERATION", parser_class=type(p))
    kms_sub.required = True
    for module in GROUPS:
        importlib.import_module(f"{__package__}.{module}").add_operations(kms_sub)
