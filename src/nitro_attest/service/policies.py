"""The service's policies file: named appraisal policies, one of them the default.

``{"default": NAME, "policies": {NAME: {"expected": [...], "kind": "enclave",
"allow_debug": false, "max_age": SECONDS}}}``. ``expected`` is a list of nitro-cli build-enclave
JSON objects (one per allowed release), the format ``verify --expected`` reads. Everything is
checked at load: an unknown field, an empty list or a bad PCR is an error, never "no constraint".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nitro_attest.attestation.policy import (
    PcrSet,
    Policy,
    document_kind,
    parse_expected_measurements,
)
from nitro_attest.codec import strict_json
from nitro_attest.errors import PolicyError

MAX_POLICIES_FILE = 1024 * 1024
KINDS = ("enclave", "nitrotpm")
_FIELDS = {"expected", "kind", "allow_debug", "max_age"}


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    name: str
    pcr_sets: tuple[PcrSet, ...]
    kind: str = "enclave"
    allow_debug: bool = False
    max_age: float | None = None

    def with_nonce(self, nonce: bytes) -> Policy:
        """The verifier's Policy for one session: this policy plus the session nonce."""
        return Policy(self.pcr_sets, nonce=nonce, max_age=self.max_age,
                      allow_debug=self.allow_debug, kind=document_kind(self.kind))  # fmt: skip


@dataclass(frozen=True, slots=True)
class PolicySet:
    default: str
    policies: dict[str, NamedPolicy]
    sha256: str
    """Digest of the file's bytes, logged at (re)load so operators can tell versions apart."""

    def get(self, name: str | None) -> NamedPolicy | None:
        return self.policies.get(self.default if name is None else name)


def load_policies(path: str | Path) -> PolicySet:
    """Read and check a policies file; every problem is a one-line PolicyError."""
    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(MAX_POLICIES_FILE + 1)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policies: {exc.strerror or exc}") from None
    if len(raw) > MAX_POLICIES_FILE:
        raise PolicyError(f"{path}: larger than {MAX_POLICIES_FILE} bytes")
    return parse_policies(raw, str(path))


def parse_policies(raw: bytes, source: str = "policies") -> PolicySet:
    try:  # strict: a duplicate key, NaN or deep nesting is refused, never half-read
        data = strict_json.loads(raw)
    except strict_json.JsonFormatError as exc:
        raise PolicyError(f"{source}: {exc.message}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a JSON object")
    unknown = set(data) - {"default", "policies"}
    if unknown:
        raise PolicyError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}")
    policies = data.get("policies")
    if not isinstance(policies, dict) or not policies:
        raise PolicyError(f"{source}: 'policies' must be a non-empty object of named policies")
    default = data.get("default")
    if not isinstance(default, str) or default not in policies:
        raise PolicyError(f"{source}: 'default' must name one of the policies, got {default!r}")
    parsed = {name: _policy(name, body, f"{source}: policy {name!r}")
              for name, body in policies.items()}  # fmt: skip
    return PolicySet(default, parsed, hashlib.sha256(raw).hexdigest())


def _policy(name: str, body: Any, where: str) -> NamedPolicy:
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise PolicyError(f"{where}: a name is 1..64 letters, digits, '-' or '_'")
    if not isinstance(body, dict):
        raise PolicyError(f"{where}: expected a JSON object")
    unknown = set(body) - _FIELDS
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    expected = body.get("expected")
    if not isinstance(expected, list) or not expected:
        raise PolicyError(f"{where}: 'expected' must be a non-empty list of build-enclave JSON")
    sets = tuple(parse_expected_measurements(json.dumps(expected), f"{where}: expected"))
    kind = body.get("kind", "enclave")
    if kind not in KINDS:
        raise PolicyError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    allow_debug = body.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise PolicyError(f"{where}: 'allow_debug' must be true or false")
    max_age = body.get("max_age")
    if max_age is not None:
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or not max_age > 0:
            raise PolicyError(f"{where}: 'max_age' must be a positive number of seconds")
        try:  # 10**400 is a positive JSON integer, and beyond a float's range
            max_age = float(max_age)
        except OverflowError:
            raise PolicyError(f"{where}: 'max_age' is beyond any number of seconds") from None
    policy = NamedPolicy(name, sets, kind, allow_debug, max_age)
    policy.with_nonce(b"\x00" * 8)  # let Policy's own validation run now, not per request
    return policy
