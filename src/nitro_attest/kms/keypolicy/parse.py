"""parse_policy: a key policy's JSON text to a checked ``KeyPolicy`` (strict; no I/O).

Strict where AWS is strict, and stricter where being lenient could widen access: duplicate JSON
keys are refused at every level (Python's json keeps the last one silently, AWS's parser
another), the document is capped at AWS's 32 KiB, and constructs this evaluator does not
implement (``NotPrincipal``, policy variables, federated principals) are refused rather than
half-understood.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from nitro_attest.codec import strict_json
from nitro_attest.kms.keypolicy.model import (
    Condition,
    Effect,
    KeyPolicy,
    KeyPolicyError,
    Principal,
    Qualifier,
    Statement,
)

MAX_POLICY_BYTES = 32 * 1024  # AWS KMS's key policy size limit
VERSION = "2012-10-17"

STRING_OPERATORS = frozenset({
    "StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
    "StringLike", "StringNotLike",
})
ARN_OPERATORS = frozenset({"ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike"})
NUMERIC_OPERATORS = frozenset({
    "NumericEquals", "NumericNotEquals", "NumericLessThan", "NumericLessThanEquals",
    "NumericGreaterThan", "NumericGreaterThanEquals",
})
DATE_OPERATORS = frozenset({
    "DateEquals", "DateNotEquals", "DateLessThan", "DateLessThanEquals", "DateGreaterThan",
    "DateGreaterThanEquals",
})
BASE_OPERATORS = (
    STRING_OPERATORS | ARN_OPERATORS | NUMERIC_OPERATORS | DATE_OPERATORS
    | {"Bool", "Null", "IpAddress", "NotIpAddress", "BinaryEquals"}
)
NEGATED_OPERATORS = frozenset({
    "StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals",
    "ArnNotLike", "NumericNotEquals", "DateNotEquals", "NotIpAddress",
})

_STATEMENT_ELEMENTS = frozenset({
    "Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource",
    "NotResource", "Condition",
})
_ACTION = re.compile(r"\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+")
_ACCOUNT = re.compile(r"[0-9]{12}")
_SID = re.compile(r"[^\x00-\x1f\x7f-\x9f]{0,256}")  # printable: reasons and findings quote it
_MAX_TEXT = 40  # how much of an offending value an error message quotes


def _quote(value: object) -> str:
    return repr(value) if len(repr(value)) <= _MAX_TEXT else repr(value)[:_MAX_TEXT] + "..."


def parse_policy(text: str) -> KeyPolicy:
    """Parse a key policy document; ``KeyPolicyError`` (one line) says what is wrong."""
    if not isinstance(text, str):
        raise KeyPolicyError("key policy: expected text")
    size = len(text) if len(text) > MAX_POLICY_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_POLICY_BYTES:
        raise KeyPolicyError(f"key policy: larger than {MAX_POLICY_BYTES} bytes (AWS's limit)")
    try:  # strict: duplicate keys at every level, NaN, deep nesting (codec.strict_json)
        doc = strict_json.loads(text)
    except strict_json.DuplicateKeyError as exc:
        raise KeyPolicyError(f"key policy: duplicate JSON key {_quote(exc.key)}") from None
    except strict_json.ConstantError as exc:
        raise KeyPolicyError(f"key policy: {exc.name} is not valid JSON") from None
    except strict_json.TooDeepError:
        raise KeyPolicyError("key policy: JSON nested too deeply") from None
    except strict_json.JsonSyntaxError as exc:
        where = "" if exc.line is None else f" at line {exc.line} column {exc.column}"
        raise KeyPolicyError(f"key policy: invalid JSON: {exc.reason[:80]}{where}") from None
    except strict_json.JsonFormatError as exc:  # a number too long or out of range
        raise KeyPolicyError(f"key policy: invalid JSON: {exc.message}") from None
    if not isinstance(doc, dict):
        raise KeyPolicyError("key policy: expected a JSON object")
    unknown = set(doc) - {"Version", "Id", "Statement"}
    if unknown:
        raise KeyPolicyError(f"key policy: unknown top-level element {_quote(sorted(unknown)[0])}")
    version = doc.get("Version")
    if version != VERSION:
        raise KeyPolicyError(f"key policy: Version must be {VERSION!r}, found {_quote(version)}")
    policy_id = doc.get("Id")
    if policy_id is not None and not isinstance(policy_id, str):
        raise KeyPolicyError("key policy: Id must be a string")
    raw = doc.get("Statement")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise KeyPolicyError("key policy: Statement must be an object or a non-empty list")
    statements = tuple(_statement(i, s) for i, s in enumerate(raw))
    seen: set[str] = set()
    for st in statements:
        if st.sid:
            if st.sid in seen:
                raise KeyPolicyError(f"key policy: {st.label} appears twice (Sids must be unique)")
            seen.add(st.sid)
    return KeyPolicy(version=VERSION, id=policy_id, statements=statements)


def _statement(index: int, raw: Any) -> Statement:
    where = f"Statement[{index}]"
    if not isinstance(raw, dict):
        raise KeyPolicyError(f"key policy: {where} must be an object")
    unknown = set(raw) - _STATEMENT_ELEMENTS
    if unknown:
        raise KeyPolicyError(f"key policy: {where}: unknown element {_quote(sorted(unknown)[0])}")
    sid = raw.get("Sid")
    if sid is not None:
        if not isinstance(sid, str) or not _SID.fullmatch(sid):
            raise KeyPolicyError(f"key policy: {where}: Sid must be a string of at most 256 "
                                 "printable characters")
        where = f'Sid "{sid}"' if sid else where
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise KeyPolicyError(f"key policy: {where}: Effect must be \"Allow\" or \"Deny\", "
                             f"found {_quote(effect)}")
    if "NotPrincipal" in raw:
        raise KeyPolicyError(f"key policy: {where}: NotPrincipal is not supported")
    if "Principal" not in raw:
        raise KeyPolicyError(f"key policy: {where}: a key policy statement needs a Principal")
    principal = _principal(where, raw["Principal"])
    actions, not_action = _either(where, raw, "Action", "NotAction")
    for action in actions:
        if not _ACTION.fullmatch(action):
            raise KeyPolicyError(f"key policy: {where}: {_quote(action)} is not an action "
                                 "(service:Name, with * or ? wildcards)")
    resources, not_resource = _either(where, raw, "Resource", "NotResource")
    for resource in resources:
        if resource != "*" and not resource.startswith("arn:"):
            raise KeyPolicyError(f"key policy: {where}: Resource {_quote(resource)} is neither "
                                 "\"*\" nor an ARN")
        _no_variables(where, resource)
    conditions = _conditions(where, raw.get("Condition", {}))
    return Statement(
        index=index, sid=sid or None, effect=cast(Effect, effect), principal=principal,
        actions=actions, not_action=not_action, resources=resources, not_resource=not_resource,
        conditions=conditions,
    )


def _strings(where: str, element: str, value: Any) -> tuple[str, ...]:
    """A string or a non-empty list of strings."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise KeyPolicyError(f"key policy: {where}: {element} must be a non-empty string or a "
                             "non-empty list of non-empty strings")
    return tuple(items)


def _either(
    where: str, raw: dict[str, Any], name: str, negated: str
) -> tuple[tuple[str, ...], bool]:
    if (name in raw) == (negated in raw):
        raise KeyPolicyError(f"key policy: {where}: needs exactly one of {name} and {negated}")
    if name in raw:
        return _strings(where, name, raw[name]), False
    return _strings(where, negated, raw[negated]), True


def _principal(where: str, raw: Any) -> Principal:
    if raw == "*":
        return Principal(any=True)
    if not isinstance(raw, dict) or not raw:
        raise KeyPolicyError(f"key policy: {where}: Principal must be \"*\" or an object with AWS "
                             "or Service")
    unknown = set(raw) - {"AWS", "Service"}
    if unknown:
        raise KeyPolicyError(f"key policy: {where}: Principal type {_quote(sorted(unknown)[0])} "
                             "is not supported (AWS, Service)")
    aws = _strings(where, "Principal.AWS", raw["AWS"]) if "AWS" in raw else ()
    services = _strings(where, "Principal.Service", raw["Service"]) if "Service" in raw else ()
    for value in aws:
        if value == "*":
            continue
        if _ACCOUNT.fullmatch(value):
            continue
        parts = value.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn" or parts[2] not in ("iam", "sts"):
            raise KeyPolicyError(f"key policy: {where}: Principal.AWS {_quote(value)} is not "
                                 "\"*\", an account id or an IAM/STS ARN")
        if "*" in value or "?" in value:
            raise KeyPolicyError(f"key policy: {where}: Principal.AWS {_quote(value)}: wildcards "
                                 "are not allowed in a principal ARN (use aws:PrincipalArn)")
    any_aws = "*" in aws
    return Principal(any=any_aws, aws=tuple(v for v in aws if v != "*"), services=services)


def _no_variables(where: str, value: str) -> None:
    if "${" in value:
        raise KeyPolicyError(f"key policy: {where}: policy variables ({_quote(value)}) are not "
                             "supported")


def split_operator(operator: str) -> tuple[Qualifier | None, str, bool] | None:
    """(qualifier, base, if_exists) of an operator name, or None if it is not one."""
    qualifier: Qualifier | None = None
    rest = operator
    qualifiers: tuple[Qualifier, ...] = ("ForAnyValue", "ForAllValues")
    for q in qualifiers:
        if rest.startswith(q + ":"):
            qualifier, rest = q, rest[len(q) + 1:]
            break
    if_exists = rest.endswith("IfExists")
    base = rest[: -len("IfExists")] if if_exists else rest
    if base not in BASE_OPERATORS:
        return None
    if base == "Null" and (if_exists or qualifier):
        return None  # Null tests existence itself; AWS has no qualified or IfExists form
    return qualifier, base, if_exists


def _value_text(where: str, key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    raise KeyPolicyError(f"key policy: {where}: condition {key}: values must be strings, "
                         "numbers or booleans")


def _conditions(where: str, raw: Any) -> tuple[Condition, ...]:
    if not isinstance(raw, dict):
        raise KeyPolicyError(f"key policy: {where}: Condition must be an object")
    out: list[Condition] = []
    for operator, block in raw.items():
        parts = split_operator(operator)
        if parts is None:
            raise KeyPolicyError(f"key policy: {where}: unknown condition operator "
                                 f"{_quote(operator)}")
        qualifier, base, if_exists = parts
        if not isinstance(block, dict) or not block:
            raise KeyPolicyError(f"key policy: {where}: {operator} must map condition keys to "
                                 "values")
        seen: set[str] = set()
        for key, value in block.items():
            lowered = key.lower()
            if not key or lowered in seen:
                raise KeyPolicyError(f"key policy: {where}: {operator}: condition key "
                                     f"{_quote(key)} empty or repeated (names ignore case)")
            seen.add(lowered)
            items = value if isinstance(value, list) else [value]
            if not items:
                raise KeyPolicyError(f"key policy: {where}: {operator} {key}: empty value list")
            values = tuple(_value_text(where, key, v) for v in items)
            for v in values:
                _no_variables(where, v)
                _check_value(where, operator, base, key, v)
            out.append(Condition(operator=operator, base=base, qualifier=qualifier,
                                 if_exists=if_exists, key=lowered, key_as_written=key,
                                 values=values))
    return tuple(out)


def _check_value(where: str, operator: str, base: str, key: str, value: str) -> None:
    """Values an operator cannot compare make the policy malformed, not silently false."""
    problem = None
    if base in ("Bool", "Null") and value.lower() not in ("true", "false"):
        problem = "must be true or false"
    elif base in NUMERIC_OPERATORS and parse_number(value) is None:
        problem = "is not a number"
    elif base in DATE_OPERATORS and parse_date(value) is None:
        problem = "is not an ISO 8601 date or epoch seconds"
    elif base in ("IpAddress", "NotIpAddress") and parse_network(value) is None:
        problem = "is not an IP address or CIDR range"
    if problem:
        raise KeyPolicyError(f"key policy: {where}: {operator} {key}: {_quote(value)} {problem}")


def parse_number(text: str) -> Decimal | None:
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def parse_date(text: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 date/time (UTC if no offset) or of epoch seconds."""
    if re.fullmatch(r"[0-9]{1,12}", text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
