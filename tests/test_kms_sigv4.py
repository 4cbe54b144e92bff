"""SigV4 against every case of AWS's signing test suite (tests/vectors/sigv4), header and query
forms, intermediate results included; and the Authorization parser's refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pytest

from nitro_attest.errors import FormatError
from nitro_attest.kms.sigv4 import (
    Credentials,
    canonical_headers,
    canonical_request,
    expected_signature,
    parse_authorization,
    presign_query,
    sign_request,
    signing_key,
    string_to_sign,
)

from .paths import SIGV4_VECTORS

CASES = sorted(p.name for p in SIGV4_VECTORS.iterdir() if (p / "request.txt").exists())


class Case:
    def __init__(self, name: str) -> None:
        folder = SIGV4_VECTORS / name
        self.folder = folder
        self.context: dict[str, Any] = json.loads((folder / "context.json").read_text())
        raw = (folder / "request.txt").read_bytes().decode("utf-8")
        head, _, body = raw.partition("\n\n")
        lines = head.split("\n")
        request_line = lines[0]
        self.method, rest = request_line.split(" ", 1)
        target = rest.rsplit(" ", 1)[0]
        raw_path, _, raw_query = target.partition("?")
        self.path = unquote(raw_path)
        self.query = [
            (unquote(k), unquote(v))
            for k, _, v in (p.partition("=") for p in raw_query.split("&") if p)
        ]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            if line[:1] in (" ", "\t"):  # obs-fold: a continuation of the previous value
                name, value = self.headers[-1]
                self.headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            self.headers.append((name, value))
        self.body = body.encode("utf-8")
        creds = self.context["credentials"]
        self.credentials = Credentials(
            creds["access_key_id"], creds["secret_access_key"], creds.get("token")
        )
        self.when = datetime.strptime(self.context["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=UTC
        )

    def expected(self, name: str) -> str:
        return (self.folder / name).read_text().rstrip("\n")

    def sign_kwargs(self) -> dict[str, Any]:
        return {
            "region": self.context["region"],
            "service": self.context["service"],
            "when": self.when,
            "normalize": self.context["normalize"],
            "omit_session_token": self.context.get("omit_session_token", False),
        }


@pytest.mark.parametrize("name", CASES)
def test_header_form(name: str) -> None:
    case = Case(name)
    added = sign_request(
        case.method, case.path, case.query, case.headers, case.body, case.credentials,
        sign_body=case.context["sign_body"], **case.sign_kwargs(),
    )
    auth = dict(added)["Authorization"]
    assert auth.endswith("Signature=" + case.expected("header-signature.txt"))
    signed_request = case.expected("header-signed-request.txt")
    assert f"Authorization:{auth}" in signed_request.split("\n")
    # The intermediate steps, as the suite spells them.
    every = [*case.headers, *[h for h in added if h[0] != "Authorization"]]
    parsed = parse_authorization(auth)
    if case.context.get("omit_session_token"):
        every = [h for h in every if h[0] != "X-Amz-Security-Token"]
    payload = hashlib.sha256(case.body).hexdigest()
    request = canonical_request(
        case.method, case.path, case.query, every, parsed.signed_headers, payload,
        normalize=case.context["normalize"],
    )
    assert request == case.expected("header-canonical-request.txt")
    stamp = dict(added)["X-Amz-Date"]
    assert string_to_sign(stamp, parsed.scope, request) == case.expected(
        "header-string-to-sign.txt"
    )
    # The checking side computes the same signature from the request as received.
    check = expected_signature(
        case.method, case.path, case.query, every, case.body,
        case.credentials.secret_access_key, parsed, stamp, normalize=case.context["normalize"],
    )
    assert hmac.compare_digest(check, parsed.signature)


@pytest.mark.parametrize("name", CASES)
def test_query_form(name: str) -> None:
    case = Case(name)
    # The query form signs the body's hash without sending it as a header.
    payload = hashlib.sha256(case.body).hexdigest()
    added = presign_query(
        case.method, case.path, case.query, case.headers, case.credentials,
        expires=case.context["expiration_in_seconds"], payload_hash=payload,
        **case.sign_kwargs(),
    )
    assert dict(added)["X-Amz-Signature"] == case.expected("query-signature.txt")


def test_every_case_of_the_suite_is_here() -> None:
    assert len(CASES) == 38


def test_a_changed_body_changes_the_expected_signature() -> None:
    case = Case("post-vanilla")
    added = sign_request(
        case.method, case.path, case.query, case.headers, b"{}", case.credentials,
        sign_body=False, **case.sign_kwargs(),
    )
    parsed = parse_authorization(dict(added)["Authorization"])
    every = [*case.headers, *added[:-1]]
    stamp = dict(added)["X-Amz-Date"]
    secret = case.credentials.secret_access_key
    good = expected_signature("POST", "/", [], every, b"{}", secret, parsed, stamp)
    bad = expected_signature("POST", "/", [], every, b"{ }", secret, parsed, stamp)
    assert good == parsed.signature != bad


@pytest.mark.parametrize(
    "value",
    [
        "",
        "AWS4-HMAC-SHA1 Credential=A/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, "
        "Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=A/2015083/us-east-1/kms/aws4_request, SignedHeaders=host, "
        "Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/kms/aws4_request, "
        "SignedHeaders=x-amz-date;host, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/kms/aws4_request, "
        "SignedHeaders=x-amz-date, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, "
        "Signature=" + "0" * 63,
        "x" * 5000,
    ],
)
def test_malformed_authorization_is_a_format_error(value: str) -> None:
    with pytest.raises(FormatError):
        parse_authorization(value)


def test_credentials_repr_hides_the_secret() -> None:
    shown = repr(Credentials("AKID", "SECRET", "TOKEN"))
    assert "AKID" in shown and "SECRET" not in shown and "TOKEN" not in shown


def _derived(secret: str, date: str, region: str, service: str) -> bytes:
    """SigV4's key derivation written out, for the cached one to be held to."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def test_the_derived_key_is_kept_per_secret_day_region_and_service() -> None:
    """Derived once per (secret, day, region, service); any input changed derives afresh (a
    rotated secret, the next day, another region or service never signs with a kept key)."""
    signing_key.cache_clear()
    base = ("secret-1", "20261206", "us-east-1", "kms")
    variants = [base, ("secret-2", *base[1:]), (base[0], "20261207", *base[2:]),
                (*base[:2], "eu-west-1", base[3]), (*base[:3], "sts")]
    for _ in range(3):
        for args in variants:
            assert signing_key(*args) == _derived(*args)
    assert len({signing_key(*args) for args in variants}) == len(variants)
    info = signing_key.cache_info()
    assert info.misses == len(variants) and info.hits >= 2 * len(variants)
    assert info.maxsize is not None and info.maxsize <= 16  # a bound, not one entry per request


def test_header_values_are_trimmed_and_white_space_runs_made_one_space() -> None:
    """The canonical form of a header value: outer white space off, each inner run of it (any
    kind str.isspace knows, as the regular expression ``\\s+`` does) one space; repeated headers
    joined with commas in their order."""
    rule = re.compile(r"\s+")
    for space in (" ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003",
                  "\u3000", "  \t "):
        value = f"{space}a{space}b{space}{space}c{space}"
        want = rule.sub(" ", value.strip())
        assert canonical_headers([("X-A", value)], ["x-a"]) == f"x-a:{want}\n"
    assert canonical_headers([("X-A", " 1 "), ("Host", "h"), ("x-a", "2  3")],
                             ["host", "x-a", "x-b"]) == "host:h\nx-a:1,2 3\nx-b:\n"
