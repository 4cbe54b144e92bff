"""Key-policy decisions for a request: build KMS's request context, evaluate, deny as AWS words it.

The condition keys come from three places only: the authenticated signer (``aws:PrincipalArn``,
``kms:CallerAccount``), the request's encryption context, and a Recipient document that verified
(``kms:RecipientAttestation:*``). A key absent from the request stays absent, and the policy
evaluator fails its condition, as on AWS. The emulator has no IAM: a key policy statement for the
account root (``arn:aws:iam::ACCOUNT:root``) stands for "IAM allows it" (docs/kms.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from itertools import chain
from operator import itemgetter
from threading import Lock

from nitro_attest.kms.keypolicy import (
    Decision,
    KeyPolicy,
    KeyPolicyError,
    RequestContext,
    evaluate,
    parse_policy,
)
from nitro_attest.kms_emulator.auth import Principal
from nitro_attest.kms_emulator.errors import KmsApiError
from nitro_attest.kms_emulator.recipient import Recipient
from nitro_attest.kms_emulator.store import KeyRecord

log = logging.getLogger("nitro_attest.kms_emulator")


def default_policy(account: str) -> str:
    """The key policy AWS gives a key created without one."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )


def check_policy_text(text: str) -> KeyPolicy:
    """Parse a key policy given in a request; MalformedPolicyDocumentException if unusable."""
    try:
        return parse_policy(text)
    except KeyPolicyError as exc:
        raise KmsApiError("MalformedPolicyDocumentException", exc.message) from None


def request_keys(
    principal: Principal,
    context: Mapping[str, str] | None = None,
    recipient: Recipient | None = None,
) -> dict[str, tuple[str, ...]]:
    keys: dict[str, tuple[str, ...]] = {
        "aws:principalarn": (principal.principal_arn,),
        "kms:calleraccount": (principal.account,),
    }
    if context:
        for name, value in context.items():
            keys[f"kms:encryptioncontext:{name.lower()}"] = (value,)
        keys["kms:encryptioncontextkeys"] = tuple(context)
    if recipient is not None:
        keys.update(recipient.condition_keys)
    return keys


DecisionKey = tuple[object, str, str, str, tuple[tuple[str, tuple[str, ...]], ...]]
MAX_DECISIONS = 1024  # remembered decisions; all forgotten at once when full
# What remembered decisions may hold: a caller's request is kept with its decision, and an
# 8 KiB EncryptionContext of 4,096 short names is ~790 KiB of Python objects (1,024 of them:
# ~790 MiB). A decision whose inputs weigh more than MAX_SLOT_BYTES is made every time (a
# typical one with a Recipient weighs ~9 KiB by _weight); past MAX_DECISION_BYTES together,
# all are forgotten at once.
MAX_SLOT_BYTES = 64 * 1024
MAX_DECISION_BYTES = 16 * 1024 * 1024
_SLOT_OVERHEAD = 1024  # the slot's own tuple, the Decision, the dict's entry
_name_of, _values_of = itemgetter(0), itemgetter(1)


def _weight(slot: DecisionKey, decision: Decision) -> int:
    """An upper estimate of the bytes ``slot`` and its decision keep alive, from lengths (a
    third of the time of sys.getsizeof on each object): per condition key its pair and values
    tuples (56 + 40 + 8 a value, say 120), per string a header and a pointer to it (at most
    76 + 8) and per character 1 byte, 4 if any string is not ASCII."""
    items = slot[4]
    values = tuple(chain.from_iterable(map(_values_of, items)))
    strings = (*map(_name_of, items), *values, slot[1], slot[2], slot[3], decision.reason)
    per_char = 1 if all(map(str.isascii, strings)) else 4
    return _SLOT_OVERHEAD + 120 * len(items) + 88 * len(strings) + per_char * sum(
        map(len, strings))


class PolicyCache:
    """Parsed key policies, by key id and text; a stored policy that no longer parses denies.

    Also the decisions ``evaluate`` gave, keyed on every input it reads: the policy (the token
    of its parse, a fresh object for each text a key holds), the action, the caller's ARN, the
    key's ARN and every condition key of the request with its values, in the request's order
    (another order is only a miss). ``evaluate`` is pure (no clock, no state: kms.keypolicy), so
    a remembered decision is the one it would give again; a changed policy text (PutKeyPolicy)
    is another parse, another token. The token rather than the text: a decision must not keep a
    replaced 32 KiB policy alive. About 8 us a request hot, 20 served (docs/kms.md, "Speed")."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[str, KeyPolicy | KeyPolicyError, object]] = {}
        self._decisions: dict[DecisionKey, Decision] = {}
        self._weight = 0  # of the remembered decisions (_weight)
        self._lock = Lock()

    def get(self, key: KeyRecord) -> KeyPolicy | KeyPolicyError:
        return self._parse(key.key_id, key.policy)[1]

    def decide(
        self,
        key: KeyRecord,
        action: str,
        principal_arn: str,
        condition_keys: Mapping[str, tuple[str, ...]],
    ) -> Decision | KeyPolicyError:
        """``evaluate`` of ``key``'s policy for this request (its ``RequestContext`` made only
        when the decision is not remembered), or the KeyPolicyError of an unreadable policy."""
        # key.policy is the text the decision is for: read once, so that a policy replaced
        # meanwhile cannot pair one text's token with another text's decision
        text = key.policy
        parsed = self._parsed.get(key.key_id)  # (text, parse, token): one immutable tuple
        if parsed is None or parsed[0] != text:
            parsed = self._parse(key.key_id, text)
        _, policy, token = parsed
        if isinstance(policy, KeyPolicyError):
            return policy
        key_arn = key.arn
        slot = (token, action, principal_arn, key_arn, tuple(condition_keys.items()))
        decision = self._decisions.get(slot)
        if decision is not None:
            return decision
        decision = evaluate(
            policy,
            RequestContext(
                action=action,
                principal_arn=principal_arn,
                key_arn=key_arn,
                condition_keys=condition_keys,
            ),
        )
        weight = _weight(slot, decision)
        if weight <= MAX_SLOT_BYTES:
            with self._lock:
                if (len(self._decisions) >= MAX_DECISIONS
                        or self._weight + weight > MAX_DECISION_BYTES):
                    self._decisions.clear()
                    self._weight = 0
                if slot not in self._decisions:
                    self._decisions[slot] = decision
                    self._weight += weight
        return decision

    def _parse(self, key_id: str, text: str) -> tuple[str, KeyPolicy | KeyPolicyError, object]:
        with self._lock:
            cached = self._parsed.get(key_id)
            if cached is not None and cached[0] == text:
                return cached
        parsed: KeyPolicy | KeyPolicyError
        try:
            parsed = parse_policy(text)
        except KeyPolicyError as exc:
            parsed = exc
        entry = (text, parsed, object())
        with self._lock:
            self._parsed[key_id] = entry
        return entry


def authorize(
    policies: PolicyCache,
    principal: Principal,
    action: str,
    key: KeyRecord,
    keys: Mapping[str, tuple[str, ...]],
) -> None:
    """Raise AccessDeniedException unless ``key``'s policy allows ``action`` in this context."""
    decision = policies.decide(key, action, principal.arn, keys)
    if isinstance(decision, KeyPolicyError):  # fail closed on a stored policy we cannot read
        log.warning(
            "key %s: stored policy unreadable, every request denied: %s",
            key.key_id, decision.message,
        )
        raise access_denied(principal, action, key, explicit=False)
    if not decision.allowed:
        log.info("%s by %s on %s denied: %s", action, principal.arn, key.key_id, decision.reason)
        raise access_denied(principal, action, key, explicit="explicit" in decision.reason.lower())


def allowed(policy: KeyPolicy, principal: Principal, action: str, key_arn: str) -> bool:
    """Whether ``policy`` lets ``principal`` perform ``action`` (the lockout safety check)."""
    context = RequestContext(
        action=action,
        principal_arn=principal.arn,
        key_arn=key_arn,
        condition_keys=request_keys(principal),
    )
    return evaluate(policy, context).allowed


def access_denied(
    principal: Principal, action: str, key: KeyRecord, *, explicit: bool
) -> KmsApiError:
    why = (
        "with an explicit deny in a resource-based policy"
        if explicit
        else f"because no resource-based policy allows the {action} action"
    )
    return KmsApiError(
        "AccessDeniedException",
        f"User: {principal.arn} is not authorized to perform: {action} on resource: {key.arn} "
        f"{why}",
    )
