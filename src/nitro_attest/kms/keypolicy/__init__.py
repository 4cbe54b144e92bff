"""AWS KMS key policies: parsed strictly, evaluated as AWS documents, pure (no I/O).

``parse_policy(text) -> KeyPolicy``, ``evaluate(policy, RequestContext) -> Decision``. The local
KMS (``kms emulator``) evaluates every request with these; ``kms policy`` and ``kms lint-policy``
write and check policies. What is and is not implemented: docs/kms.md, "Key policies".
"""

from __future__ import annotations

from nitro_attest.kms.keypolicy.evaluate import Decision, RequestContext, evaluate
from nitro_attest.kms.keypolicy.model import (
    Condition,
    KeyPolicy,
    KeyPolicyError,
    Principal,
    Statement,
)
from nitro_attest.kms.keypolicy.parse import MAX_POLICY_BYTES, parse_policy

__all__ = [
    "MAX_POLICY_BYTES",
    "Condition",
    "Decision",
    "KeyPolicy",
    "KeyPolicyError",
    "Principal",
    "RequestContext",
    "Statement",
    "evaluate",
    "parse_policy",
]
