"""Key-policy evaluation (nitro_attest.kms.keypolicy): AWS's documented examples as a table,
the parser's refusals, and the property that a Deny never turns a denial into an allow."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitro_attest.errors import FormatError
from nitro_attest.kms.keypolicy import (
    MAX_POLICY_BYTES,
    KeyPolicyError,
    RequestContext,
    evaluate,
    parse_policy,
)

ACCOUNT = "111122223333"
KEY = f"arn:aws:kms:us-east-2:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/data-processing"
SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/data-processing/i-0123456789"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/KMSAdmin"
OTHER = "arn:aws:iam::444455556666:role/data-processing"
IMAGE = "9fedcba8abcdef7a" * 6  # 96 lower-case hex digits, like AWS's example value
OTHER_IMAGE = "0" * 95 + "1"
PCR1 = "ab" * 48
ZEROS = "0" * 96


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def enclave_statement(**extra: Any) -> dict[str, Any]:
    """AWS's "Enable enclave data processing" example (Condition keys for Nitro Enclaves)."""
    statement: dict[str, Any] = {
        "Sid": "Enable enclave data processing",
        "Effect": "Allow",
        "Principal": {"AWS": ROLE},
        "Action": ["kms:Decrypt", "kms:DeriveSharedSecret", "kms:GenerateDataKey",
                   "kms:GenerateDataKeyPair", "kms:GenerateRandom"],
        "Resource": "*",
        "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": IMAGE}},
    }
    statement.update(extra)
    return statement


ROOT_STATEMENT = {
    "Sid": "Enable IAM User Permissions", "Effect": "Allow",
    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*",
}


def request(action: str = "kms:Decrypt", principal: str = ROLE, **keys: Any) -> RequestContext:
    return RequestContext(
        action=action, principal_arn=principal, key_arn=KEY,
        condition_keys={k.replace("__", ":").lower(): v if isinstance(v, tuple) else (v,)
                        for k, v in keys.items()},
    )


def attested(image: str = IMAGE, **pcrs: str) -> dict[str, Any]:
    keys = {"kms__recipientattestation__imagesha384": image}
    keys.update({f"kms__recipientattestation__{k}": v for k, v in pcrs.items()})
    return keys


# (name, policy text, request, allowed, reason fragment)
CASES: list[tuple[str, str, RequestContext, bool, str]] = [
    ("attested enclave allowed", policy(enclave_statement()), request(**attested()), True,
     'Sid "Enable enclave data processing"'),
    ("role session is the role", policy(enclave_statement()),
     request(principal=SESSION, **attested()), True, "allowed"),
    ("missing attestation denied", policy(enclave_statement()), request(), False,
     "no statement allows"),
    ("wrong ImageSha384 denied", policy(enclave_statement()),
     request(**attested(OTHER_IMAGE)), False, "no statement allows"),
    ("IgnoreCase accepts upper-case hex", policy(enclave_statement()),
     request(**attested(IMAGE.upper())), True, "allowed"),
    ("StringEquals is case-sensitive", policy(enclave_statement(Condition={
        "StringEquals": {"kms:RecipientAttestation:ImageSha384": IMAGE}})),
     request(**attested(IMAGE.upper())), False, "no statement allows"),
    ("condition key names ignore case", policy(enclave_statement(Condition={
        "StringEqualsIgnoreCase": {"KMS:RECIPIENTATTESTATION:IMAGESHA384": IMAGE}})),
     request(**attested()), True, "allowed"),
    ("action not listed denied", policy(enclave_statement()),
     request("kms:Encrypt", **attested()), False, "no statement allows"),
    ("action names ignore case", policy(enclave_statement()),
     request("KMS:decrypt", **attested()), True, "allowed"),
    ("other principal denied", policy(enclave_statement()),
     request(principal=OTHER, **attested()), False, "no statement allows"),
    ("PCR pin matches", policy(enclave_statement(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": IMAGE,
        "kms:RecipientAttestation:PCR1": PCR1}})),
     request(**attested(pcr1=PCR1)), True, "allowed"),
    ("wrong PCR denied (keys AND)", policy(enclave_statement(Condition={
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": IMAGE,
                                   "kms:RecipientAttestation:PCR1": PCR1}})),
     request(**attested(pcr1=ZEROS)), False, "no statement allows"),
    ("pinned PCR missing denied", policy(enclave_statement(Condition={
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": IMAGE,
                                   "kms:RecipientAttestation:PCR16": ZEROS}})),
     request(**attested()), False, "no statement allows"),
    ("values OR", policy(enclave_statement(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": [OTHER_IMAGE, IMAGE]}})),
     request(**attested()), True, "allowed"),
    ("explicit deny beats allow", policy(
        ROOT_STATEMENT, enclave_statement(),
        {"Sid": "DenyUnattested", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
         "Resource": "*", "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}}),
     request(), False, 'explicit deny by Sid "DenyUnattested"'),
    ("deny with Null false leaves attested allowed", policy(
        enclave_statement(),
        {"Sid": "DenyUnattested", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
         "Resource": "*", "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}}),
     request(**attested()), True, "allowed"),
    ("account root allows every principal of the account", policy(ROOT_STATEMENT),
     request("kms:Encrypt", principal=ADMIN), True, 'Sid "Enable IAM User Permissions"'),
    ("account id principal", policy({**ROOT_STATEMENT, "Principal": {"AWS": ACCOUNT}}),
     request("kms:Encrypt", principal=SESSION), True, "allowed"),
    ("account root does not allow another account", policy(ROOT_STATEMENT),
     request("kms:Encrypt", principal=OTHER), False, "no statement allows"),
    ("wildcard action kms:Generate*", policy(enclave_statement(Action="kms:Generate*")),
     request("kms:GenerateDataKeyPairWithoutPlaintext", **attested()), True, "allowed"),
    ("wildcard ? in action", policy(enclave_statement(Action="kms:?ecrypt")),
     request("kms:Decrypt", **attested()), True, "allowed"),
    ("NotAction excludes Decrypt", policy({"Sid": "AllButDecrypt", "Effect": "Allow",
                                           "Principal": {"AWS": ROLE}, "NotAction": "kms:Decrypt",
                                           "Resource": "*"}),
     request("kms:Decrypt"), False, "no statement allows"),
    ("NotAction allows the rest", policy({"Sid": "AllButDecrypt", "Effect": "Allow",
                                          "Principal": {"AWS": ROLE}, "NotAction": "kms:Decrypt",
                                          "Resource": "*"}),
     request("kms:Encrypt"), True, 'Sid "AllButDecrypt"'),
    ("resource is the key ARN", policy(enclave_statement(Resource=KEY)),
     request(**attested()), True, "allowed"),
    ("resource of another key", policy(enclave_statement(Resource=KEY[:-1] + "c")),
     request(**attested()), False, "no statement allows"),
    ("encryption context matches", policy(enclave_statement(Condition={
        "StringEquals": {"kms:EncryptionContext:Department": "IT"}})),
     request(kms__encryptioncontext__department="IT"), True, "allowed"),
    ("encryption context differs", policy(enclave_statement(Condition={
        "StringEquals": {"kms:EncryptionContext:Department": "IT"}})),
     request(kms__encryptioncontext__department="it"), False, "no statement allows"),
    ("encryption context absent", policy(enclave_statement(Condition={
        "StringEquals": {"kms:EncryptionContext:Department": "IT"}})),
     request(), False, "no statement allows"),
    ("ForAllValues context keys subset", policy(enclave_statement(Condition={
        "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Purpose", "Department"]}})),
     request(kms__encryptioncontextkeys=("Department",)), True, "allowed"),
    ("ForAllValues extra context key", policy(enclave_statement(Condition={
        "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Purpose", "Department"]}})),
     request(kms__encryptioncontextkeys=("Department", "Project")), False, "no statement allows"),
    ("ForAllValues holds with no context (AWS's caveat)", policy(enclave_statement(Condition={
        "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Purpose"]}})),
     request(), True, "allowed"),
    ("ForAnyValue needs one", policy(enclave_statement(Condition={
        "ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "Purpose"}})),
     request(kms__encryptioncontextkeys=("Project", "Purpose")), True, "allowed"),
    ("ForAnyValue fails with no context", policy(enclave_statement(Condition={
        "ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "Purpose"}})),
     request(), False, "no statement allows"),
    ("IfExists holds when absent", policy(enclave_statement(Condition={
        "StringEqualsIfExists": {"kms:EncryptionContext:Department": "IT"}})),
     request(), True, "allowed"),
    ("IfExists checks when present", policy(enclave_statement(Condition={
        "StringEqualsIfExists": {"kms:EncryptionContext:Department": "IT"}})),
     request(kms__encryptioncontext__department="HR"), False, "no statement allows"),
    ("Null false requires the key", policy(enclave_statement(Condition={
        "Null": {"kms:RecipientAttestation:ImageSha384": "false"}})),
     request(), False, "no statement allows"),
    ("StringNotEquals NOR of values", policy({**ROOT_STATEMENT, "Principal": "*",
                                              "Condition": {"StringNotEquals": {
                                                  "kms:ViaService": ["s3.us-east-2.amazonaws.com",
                                                                     "ec2.us-east-2.amazonaws.com"]}}}),
     request(kms__viaservice="ec2.us-east-2.amazonaws.com"), False, "no statement allows"),
    ("StringNotEquals absent key is true", policy({**ROOT_STATEMENT, "Principal": "*",
                                                   "Condition": {"StringNotEquals": {
                                                       "kms:ViaService": "s3.amazonaws.com"}}}),
     request(), True, "allowed"),
    ("StringLike wildcard", policy(enclave_statement(Condition={
        "StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}})),
     request(kms__viaservice="s3.eu-west-1.amazonaws.com"), True, "allowed"),
    ("Bool", policy(enclave_statement(Condition={
        "Bool": {"kms:GrantIsForAWSResource": True}})),
     request(kms__grantisforawsresource="true"), True, "allowed"),
    ("Bool false does not match true", policy(enclave_statement(Condition={
        "Bool": {"kms:GrantIsForAWSResource": "false"}})),
     request(kms__grantisforawsresource="true"), False, "no statement allows"),
    ("kms:CallerAccount filled from the principal", policy({**ROOT_STATEMENT, "Principal": "*",
                                                            "Condition": {"StringEquals": {
                                                                "kms:CallerAccount": ACCOUNT}}}),
     request("kms:Encrypt", principal=ADMIN), True, "allowed"),
    ("aws:PrincipalArn of a session is its role", policy({**ROOT_STATEMENT, "Principal": "*",
                                                          "Condition": {"ArnLike": {
                                                              "aws:PrincipalArn":
                                                              f"arn:aws:iam::{ACCOUNT}:role/data-*"}}}),
     request("kms:Encrypt", principal=SESSION), True, "allowed"),
    ("NitroTPM PCR", policy(enclave_statement(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:NitroTPMPCR4": PCR1}})),
     request(kms__recipientattestation__nitrotpmpcr4=PCR1), True, "allowed"),
    ("principal * with attestation", policy(enclave_statement(Principal="*")),
     request(principal=OTHER, **attested()), True, "allowed"),
]


@pytest.mark.parametrize(("name", "text", "req", "allowed", "reason"), CASES,
                         ids=[c[0] for c in CASES])
def test_documented_cases(name: str, text: str, req: RequestContext, allowed: bool,
                          reason: str) -> None:
    decision = evaluate(parse_policy(text), req)
    assert decision.allowed is allowed, decision.reason
    assert reason in decision.reason


def test_reason_names_index_without_sid() -> None:
    statement = enclave_statement()
    del statement["Sid"]
    decision = evaluate(parse_policy(policy(ROOT_STATEMENT | {"Sid": "A"}, statement)),
                        request(**attested()))
    assert decision.allowed and decision.reason == 'allowed by Sid "A"'
    decision = evaluate(parse_policy(policy(statement)), request(**attested()))
    assert decision.reason == "allowed by Statement[0]"


def test_statement_may_be_an_object() -> None:
    text = json.dumps({"Version": "2012-10-17", "Statement": enclave_statement()})
    assert evaluate(parse_policy(text), request(**attested())).allowed


MALFORMED = [
    ("not json", "{", "invalid JSON"),
    ("top-level duplicate", '{"Version":"2012-10-17","Version":"2012-10-17","Statement":[]}',
     "duplicate JSON key 'Version'"),
    ("nested duplicate", policy(enclave_statement()).replace('"Effect": "Allow"',
                                                            '"Effect": "Allow", "Effect": "Deny"'),
     "duplicate JSON key 'Effect'"),
    ("condition duplicate", policy(enclave_statement()).replace(
        '"StringEqualsIgnoreCase": {', '"StringEqualsIgnoreCase": {"kms:ViaService": "a", '
        '"kms:ViaService": "b", '), "duplicate JSON key"),
    ("condition keys equal ignoring case", policy(enclave_statement(Condition={"StringEquals": {
        "kms:ViaService": "a", "KMS:VIASERVICE": "b"}})), "repeated"),
    ("old version", json.dumps({"Version": "2008-10-17", "Statement": [enclave_statement()]}),
     "Version must be '2012-10-17'"),
    ("no version", json.dumps({"Statement": [enclave_statement()]}), "Version"),
    ("no statement", json.dumps({"Version": "2012-10-17", "Statement": []}), "Statement"),
    ("bad effect", policy(enclave_statement(Effect="allow")), "Effect"),
    ("no principal", policy({k: v for k, v in enclave_statement().items() if k != "Principal"}),
     "needs a Principal"),
    ("NotPrincipal", policy(enclave_statement(NotPrincipal={"AWS": ROLE})), "NotPrincipal"),
    ("wildcard principal ARN",
     policy(enclave_statement(Principal={"AWS": "arn:aws:iam::1:role/*"})),
     "wildcards"),
    ("both Action and NotAction", policy(enclave_statement(NotAction="kms:Encrypt")),
     "exactly one of Action and NotAction"),
    ("no resource", policy({k: v for k, v in enclave_statement().items() if k != "Resource"}),
     "exactly one of Resource"),
    ("bad action", policy(enclave_statement(Action="Decrypt")), "is not an action"),
    ("unknown operator",
     policy(enclave_statement(Condition={"StringEqual": {"kms:ViaService": "x"}})),
     "unknown condition operator 'StringEqual'"),
    ("Null IfExists",
     policy(enclave_statement(Condition={"NullIfExists": {"kms:ViaService": "true"}})),
     "unknown condition operator"),
    ("Bool value", policy(enclave_statement(Condition={"Bool": {"aws:SecureTransport": "yes"}})),
     "must be true or false"),
    ("empty values", policy(enclave_statement(Condition={"StringEquals": {"kms:ViaService": []}})),
     "empty value list"),
    ("object value", policy(enclave_statement(Condition={"StringEquals": {"kms:ViaService": {}}})),
     "values must be strings"),
    ("policy variable", policy(enclave_statement(Condition={"StringEquals": {
        "aws:PrincipalArn": "${aws:username}"}})), "policy variables"),
    ("unknown element", policy(enclave_statement(Actions="kms:Decrypt")), "unknown element"),
    ("duplicate Sid", policy(enclave_statement(), enclave_statement()), "appears twice"),
    ("NaN", '{"Version":"2012-10-17","Statement":[NaN]}', "NaN is not valid JSON"),
    ("too deep", "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("huge", policy(enclave_statement(Sid="x" * MAX_POLICY_BYTES)), "larger than 32768 bytes"),
]


@pytest.mark.parametrize(("name", "text", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_policies_are_refused_in_one_line(name: str, text: str, message: str) -> None:
    with pytest.raises(KeyPolicyError) as info:
        parse_policy(text)
    assert isinstance(info.value, FormatError)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_size_cap_counts_bytes_not_characters() -> None:
    # 11,000 three-byte characters: under the cap in characters, over it in UTF-8 bytes
    text = json.dumps({"Version": "2012-10-17", "Id": "\u20ac" * 11000,
                       "Statement": [enclave_statement()]}, ensure_ascii=False)
    assert len(text) < MAX_POLICY_BYTES < len(text.encode())
    with pytest.raises(KeyPolicyError, match="larger than"):
        parse_policy(text)


# -- property: a Deny never turns a denial into an allow ----------------------------------------

_actions = st.sampled_from(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:*",
                            "kms:Gen*", "*"])
_principals = st.sampled_from(["*", {"AWS": ROLE}, {"AWS": ACCOUNT}, {"AWS": OTHER},
                               {"AWS": [ROLE, ADMIN]}])
_conditions = st.sampled_from([
    {}, {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": IMAGE}},
    {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}},
    {"StringNotEquals": {"kms:CallerAccount": ACCOUNT}},
    {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": "Purpose"}},
    {"StringLikeIfExists": {"kms:EncryptionContext:Department": "I*"}},
])
_statements = st.builds(
    lambda effect, principal, action, not_action, condition: {
        "Effect": effect, "Principal": principal,
        ("NotAction" if not_action else "Action"): action, "Resource": "*",
        "Condition": condition},
    st.sampled_from(["Allow", "Deny"]), _principals, _actions, st.booleans(), _conditions)
_requests = st.builds(
    lambda action, principal, image, context: request(
        action, principal,
        **({"kms__recipientattestation__imagesha384": image} if image else {}),
        **({"kms__encryptioncontextkeys": context} if context else {})),
    st.sampled_from(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:Sign"]),
    st.sampled_from([ROLE, SESSION, ADMIN, OTHER]),
    st.sampled_from([None, IMAGE, OTHER_IMAGE]),
    st.sampled_from([(), ("Purpose",), ("Purpose", "Other")]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_statements, min_size=1, max_size=4), _statements, _requests, st.integers(0, 4))
def test_adding_a_deny_never_allows(statements: list[dict[str, Any]], extra: dict[str, Any],
                                    req: RequestContext, where: int) -> None:
    before = evaluate(parse_policy(policy(*statements)), req)
    deny = extra | {"Effect": "Deny"}
    after = evaluate(parse_policy(policy(*statements[:where], deny, *statements[where:])), req)
    if not before.allowed:
        assert not after.allowed
    if after.allowed:
        assert before.allowed


@settings(max_examples=200, deadline=None)
@given(st.lists(_statements, min_size=1, max_size=4), _requests, st.randoms())
def test_statement_order_does_not_change_the_verdict(statements: list[dict[str, Any]],
                                                     req: RequestContext, rnd: Any) -> None:
    shuffled = list(statements)
    rnd.shuffle(shuffled)
    first = evaluate(parse_policy(policy(*statements)), req)
    second = evaluate(parse_policy(policy(*shuffled)), req)
    assert first.allowed == second.allowed


def test_request_key_names_ignore_case() -> None:
    req = RequestContext("kms:Decrypt", ROLE, KEY,
                         {"KMS:RecipientAttestation:ImageSha384": (IMAGE,)})
    assert evaluate(parse_policy(policy(enclave_statement())), req).allowed


def test_request_keys_differing_only_in_case_are_refused() -> None:
    """A parent crafting {"Department": "IT", "department": "HR"}: whichever one the policy saw
    would be a guess, so neither is chosen."""
    text = policy(enclave_statement(Condition={
        "StringEquals": {"kms:EncryptionContext:Department": "IT"}}))
    req = RequestContext("kms:Decrypt", ROLE, KEY, {
        "kms:encryptioncontext:department": ("IT",), "kms:EncryptionContext:Department": ("HR",)})
    decision = evaluate(parse_policy(text), req)
    assert not decision.allowed and "differ only in case" in decision.reason


def test_sid_with_control_characters_refused() -> None:
    with pytest.raises(KeyPolicyError, match="printable"):
        parse_policy(policy(enclave_statement(Sid="a\u001b[2Jb")))


OTHER_OPERATORS = [
    ({"NumericLessThanEquals": {"kms:ScheduleKeyDeletionPendingWindowInDays": "30"}},
     {"kms:schedulekeydeletionpendingwindowindays": "7"}, True),
    ({"NumericLessThanEquals": {"kms:ScheduleKeyDeletionPendingWindowInDays": 30}},
     {"kms:schedulekeydeletionpendingwindowindays": "31"}, False),
    ({"NumericNotEquals": {"kms:RotationPeriodInDays": ["90", "180"]}},
     {"kms:rotationperiodindays": "180"}, False),
    ({"DateLessThan": {"aws:CurrentTime": "2027-01-01T00:00:00Z"}},
     {"aws:currenttime": "2026-12-06T07:00:00Z"}, True),
    ({"DateGreaterThan": {"aws:CurrentTime": "2027-01-01T00:00:00Z"}},
     {"aws:currenttime": "2026-12-06T07:00:00Z"}, False),
    ({"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}, {"aws:sourceip": "203.0.113.9"}, True),
    ({"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}, {"aws:sourceip": "198.51.100.1"}, False),
    ({"NotIpAddress": {"aws:SourceIp": "203.0.113.0/24"}}, {}, True),
    ({"ArnNotLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/data-*"}}, {}, False),
    ({"BinaryEquals": {"aws:userid": "QUJD"}}, {"aws:userid": "QUJD"}, True),
]


@pytest.mark.parametrize(("condition", "keys", "allowed"), OTHER_OPERATORS)
def test_numeric_date_ip_arn_binary_operators(condition: dict[str, Any], keys: dict[str, str],
                                              allowed: bool) -> None:
    req = RequestContext("kms:Decrypt", ROLE, KEY, {k: (v,) for k, v in keys.items()})
    assert evaluate(parse_policy(policy(enclave_statement(Condition=condition))),
                    req).allowed is allowed


@pytest.mark.parametrize(("condition", "message"), [
    ({"NumericEquals": {"kms:RotationPeriodInDays": "ninety"}}, "is not a number"),
    ({"DateLessThan": {"aws:CurrentTime": "tomorrow"}}, "is not an ISO 8601 date"),
    ({"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}, "is not an IP address"),
])
def test_values_an_operator_cannot_compare_are_malformed(condition: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(KeyPolicyError, match=message):
        parse_policy(policy(enclave_statement(Condition=condition)))


@pytest.mark.parametrize(("pattern", "text", "matches"), [
    ("*", "", True), ("a*", "a", True), ("*a", "ba", True), ("a*a", "a", False),
    ("a*b*c", "aXbYc", True), ("a*b*c", "acb", False), ("a?c", "abc", True), ("a?c", "ac", False),
    ("*.amazonaws.com", "s3.amazonaws.com", True), ("a.b", "axb", False),
    ("*ab*ab*", "abab", True), ("*ab*ab*", "aba", False), ("**", "x", True),
    ("a*" * 12 + "b", "a" * 30, False),  # exponential for a backtracking regex
    ("*a" * 200 + "*b", "a" * 8000 + "b", True),
])
def test_string_like_wildcards(pattern: str, text: str, matches: bool) -> None:
    text_policy = policy(enclave_statement(Condition={"StringLike": {"kms:ViaService": pattern}}))
    req = RequestContext("kms:Decrypt", ROLE, KEY, {"kms:viaservice": (text,)})
    assert evaluate(parse_policy(text_policy), req).allowed is matches


# -- hostile input: only KeyPolicyError escapes the parser, nothing escapes evaluate ------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False)
    | st.sampled_from(["*", "Allow", "Deny", "kms:Decrypt", "kms:*", "2012-10-17", ROLE, ACCOUNT,
                       "StringEquals", "kms:RecipientAttestation:ImageSha384", IMAGE, "", "a*?"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["Version", "Statement", "Effect", "Principal", "AWS", "Service",
                         "Action", "NotAction", "Resource", "NotResource", "Condition", "Sid",
                         "StringEquals", "ForAllValues:StringLike", "NullIfExists", "Null",
                         "BoolIfExists", "kms:ViaService", "NumericLessThan", "DateEquals",
                         "IpAddress"]),
        children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json, _requests)
def test_parser_and_evaluator_on_arbitrary_documents(value: Any, req: RequestContext) -> None:
    if isinstance(value, dict):
        value = {"Version": "2012-10-17", **value}
    try:
        parsed = parse_policy(json.dumps(value))
    except KeyPolicyError as exc:
        assert "\n" not in str(exc)
        return
    evaluate(parsed, req)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parser_on_arbitrary_text(text: str) -> None:
    try:
        parse_policy(text)
    except KeyPolicyError as exc:
        assert "\n" not in str(exc)
