"""evaluate: may this request use the key under this key policy? (AWS's rules; pure.)

The order AWS documents for one policy: every statement whose Principal, Action, Resource and
Condition all match the request applies; an applicable Deny decides (explicit deny wins over any
Allow); otherwise an applicable Allow decides; otherwise the request is denied (implicit deny).
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nitro_attest.kms.keypolicy.model import Condition, KeyPolicy, Principal, Statement
from nitro_attest.kms.keypolicy.parse import (
    NEGATED_OPERATORS,
    parse_date,
    parse_network,
    parse_number,
)


@dataclass(frozen=True)
class RequestContext:
    """What a KMS request brings to policy evaluation.

    ``action`` is ``kms:Decrypt``-style (compared case-insensitively); ``principal_arn`` the
    caller (an IAM user or role ARN, or an STS assumed-role session ARN); ``key_arn`` the key's
    ARN. ``condition_keys`` maps lower-cased condition key names to their values in the request
    (strings; booleans as ``"true"``/``"false"``; PCRs as lower-case hex; several values for
    multivalued keys such as ``kms:encryptioncontextkeys``). A key that is absent, or has no
    value, is not in the request (a request without Recipient has no attestation keys).
    """

    action: str
    principal_arn: str
    key_arn: str
    condition_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def evaluate(policy: KeyPolicy, request: RequestContext) -> Decision:
    """Allow or deny ``request`` under ``policy`` alone, with the statement that decided."""
    context = _context(request)
    if context is None:
        return Decision(False, "request has condition keys that differ only in case "
                        "(AWS compares key names ignoring case): refused")
    allowed_by: Statement | None = None
    for statement in policy.statements:
        if not _applies(statement, request, context):
            continue
        if statement.effect == "Deny":
            return Decision(False, f"explicit deny by {statement.label}")
        if allowed_by is None:
            allowed_by = statement
    if allowed_by is not None:
        return Decision(True, f"allowed by {allowed_by.label}")
    return Decision(False, "no statement allows")


def _context(request: RequestContext) -> dict[str, tuple[str, ...]] | None:
    """The request's condition keys, names lower-cased, empty values dropped, and the keys every
    request carries (aws:PrincipalArn, aws:PrincipalAccount, kms:CallerAccount) filled from the
    principal when the caller did not give them. None when two names differ only in case (an
    encryption context {"Dept": "a", "dept": "b"}): which one a policy sees would be a guess."""
    context: dict[str, tuple[str, ...]] = {}
    for name, values in request.condition_keys.items():
        key = name.lower()
        if key in context:
            return None
        if values:
            context[key] = tuple(values)
    parts = request.principal_arn.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn" and parts[4]:
        context.setdefault("aws:principalaccount", (parts[4],))
        context.setdefault("kms:calleraccount", (parts[4],))
        context.setdefault("aws:principalarn", (_role_of_session(parts) or request.principal_arn,))
    return context


def _role_of_session(parts: list[str]) -> str | None:
    """``arn:P:iam::A:role/NAME`` for an ``arn:P:sts::A:assumed-role/NAME/SESSION`` caller."""
    if parts[2] != "sts" or not parts[5].startswith("assumed-role/"):
        return None
    pieces = parts[5].split("/")
    if len(pieces) != 3 or not pieces[1]:
        return None
    return f"arn:{parts[1]}:iam::{parts[4]}:role/{pieces[1]}"


def _applies(statement: Statement, request: RequestContext,
             context: Mapping[str, tuple[str, ...]]) -> bool:
    if not principal_matches(statement.principal, request.principal_arn):
        return False
    named = any(_glob(a, ignore_case=True)(request.action) for a in statement.actions)
    if named == statement.not_action:
        return False
    resource = any(arn_like(r, request.key_arn) for r in statement.resources)
    if resource == statement.not_resource:
        return False
    return all(condition_holds(c, context) for c in statement.conditions)


def principal_matches(principal: Principal, arn: str) -> bool:
    """Whether the caller ``arn`` is one of the statement's principals.

    An account id or ``arn:P:iam::ACCOUNT:root`` names every principal of that account (AWS then
    also requires the account's IAM policies to allow; those are out of scope, see docs/kms.md).
    A role ARN names the role's sessions too (``arn:P:sts::A:assumed-role/NAME/...``).
    """
    if principal.any:
        return True
    if arn in principal.services:
        return True
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or not parts[4]:
        return False
    partition, account = parts[1], parts[4]
    role = _role_of_session(parts)
    for value in principal.aws:
        if value in (arn, account, f"arn:{partition}:iam::{account}:root"):
            return True
        if role is not None and _same_role(value, role):
            return True
    return False


def _same_role(value: str, role: str) -> bool:
    """A role ARN in a policy may carry a path (``role/path/NAME``); a session ARN never does."""
    if value == role:
        return True
    head, _, name = role.rpartition("/")
    prefix = head.rsplit(":", 1)[0] + ":role/"
    return value.startswith(prefix) and value.rsplit("/", 1)[-1] == name


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str, ignore_case: bool = False) -> Callable[[str], bool]:
    """IAM wildcards: ``*`` any run of characters, ``?`` one character, nothing else special.

    Not one regex: ``.*a.*a.*a...b`` backtracks exponentially on a long request value (a policy
    may hold hundreds of ``*``, an encryption context value thousands of characters). The
    pattern splits at ``*`` into fixed-length segments: the first anchored at the start, the
    last at the end, each middle one at its leftmost place after the previous (leftmost is
    never worse for globs), so matching is a few linear searches.
    """
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    parts = pattern.split("*")
    segments = [
        re.compile("".join("." if ch == "?" else re.escape(ch) for ch in part), flags)
        for part in parts
    ]
    if len(segments) == 1:
        return lambda text: segments[0].fullmatch(text) is not None
    head, middle, tail, tail_length = segments[0], segments[1:-1], segments[-1], len(parts[-1])

    def match(text: str) -> bool:
        start = head.match(text)
        end = len(text) - tail_length
        if start is None or end < start.end() or tail.fullmatch(text, end) is None:
            return False
        position = start.end()
        for segment in middle:
            found = segment.search(text, position, end)
            if found is None:
                return False
            position = found.end()
        return True

    return match


def glob_matches(pattern: str, text: str, *, ignore_case: bool = False) -> bool:
    """Whether ``text`` matches an IAM wildcard pattern (``*``, ``?``)."""
    return _glob(pattern, ignore_case)(text)


def arn_like(pattern: str, arn: str) -> bool:
    """ArnLike: each of the six colon-separated parts matched on its own, wildcards inside a
    part; a pattern that is not a six-part ARN (``*``) matches the whole string."""
    p_parts = pattern.split(":", 5)
    if len(p_parts) != 6:
        return _glob(pattern)(arn)
    a_parts = arn.split(":", 5)
    if len(a_parts) != 6:
        return False
    return all(_glob(p)(a) for p, a in zip(p_parts, a_parts, strict=True))


def _compare(base: str) -> Callable[[str, str], bool]:
    """The positive form of an operator family: (request value, policy value) -> match; the
    caller negates for the Not operators."""
    return _POSITIVE[base]


def _ordered(relation: str, convert: Callable[[str], Any]) -> Callable[[str, str], bool]:
    test = _RELATIONS[relation]

    def compare(request_value: str, policy_value: str) -> bool:
        r, p = convert(request_value), convert(policy_value)
        return r is not None and p is not None and test(r, p)

    return compare


_RELATIONS: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": operator.eq, "NotEquals": operator.eq, "LessThan": operator.lt,
    "LessThanEquals": operator.le, "GreaterThan": operator.gt, "GreaterThanEquals": operator.ge,
}


def _in_network(request_value: str, policy_value: str) -> bool:
    network = parse_network(policy_value)
    try:
        address = ipaddress.ip_address(request_value)
    except ValueError:
        return False
    return network is not None and address.version == network.version and address in network


def _same_binary(request_value: str, policy_value: str) -> bool:
    try:
        return base64.b64decode(request_value, validate=True) == base64.b64decode(
            policy_value, validate=True)
    except (binascii.Error, ValueError):
        return False


_POSITIVE: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": operator.eq,
    "StringNotEquals": operator.eq,
    "StringEqualsIgnoreCase": lambda r, p: r.casefold() == p.casefold(),
    "StringNotEqualsIgnoreCase": lambda r, p: r.casefold() == p.casefold(),
    "StringLike": lambda r, p: _glob(p)(r),
    "StringNotLike": lambda r, p: _glob(p)(r),
    "ArnEquals": lambda r, p: arn_like(p, r),
    "ArnLike": lambda r, p: arn_like(p, r),
    "ArnNotEquals": lambda r, p: arn_like(p, r),
    "ArnNotLike": lambda r, p: arn_like(p, r),
    "Bool": lambda r, p: r.lower() == p.lower(),
    "IpAddress": _in_network,
    "NotIpAddress": _in_network,
    "BinaryEquals": _same_binary,
    **{f"Numeric{rel}": _ordered(rel, parse_number) for rel in _RELATIONS},
    **{f"Date{rel}": _ordered(rel, parse_date) for rel in _RELATIONS},
}


def condition_holds(condition: Condition, context: Mapping[str, tuple[str, ...]]) -> bool:
    """One key under one operator, as AWS defines it.

    Values listed in the policy are ORed (NORed for a negated operator). A key absent from the
    request: ``Null`` tests exactly that; ``...IfExists`` holds; ``ForAllValues`` holds (the
    empty set); ``ForAnyValue`` fails; otherwise a negated operator holds and any other fails.
    A multivalued request key without a qualifier behaves as ForAnyValue for a positive operator
    and as "no value matches" for a negated one.
    """
    present = context.get(condition.key)
    if condition.base == "Null":
        absent = not present
        return any((v.lower() == "true") == absent for v in condition.values)
    negated = condition.base in NEGATED_OPERATORS
    if not present:
        if condition.if_exists or condition.qualifier == "ForAllValues":
            return True
        if condition.qualifier == "ForAnyValue":
            return False
        return negated
    compare = _compare(condition.base)

    def matches(value: str) -> bool:
        return any(compare(value, p) for p in condition.values)

    if condition.qualifier == "ForAllValues":
        return all(matches(v) != negated for v in present)
    if condition.qualifier == "ForAnyValue":
        return any(matches(v) != negated for v in present)
    hit = any(matches(v) for v in present)
    return hit != negated
