"""Who is calling: the credentials file and the SigV4 check of every request.

``--credentials FILE`` is a JSON list of ``{"AccessKeyId", "SecretAccessKey", "Arn"}`` (and
optionally ``"SessionToken"``). A request is accepted only when its Authorization header names a
known access key id, its credential scope is this region and service ``kms``, its X-Amz-Date is
within 5 minutes of the emulator's clock, the session token matches the credential's (or both
are absent), and the signature recomputed over the exact bytes received matches. The signer's
Arn is the principal key policies are evaluated for.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nitro_attest.errors import ConfigurationError, FormatError
from nitro_attest.kms.sigv4 import expected_signature, parse_authorization
from nitro_attest.kms_emulator.errors import KmsApiError

MAX_SKEW = timedelta(minutes=5)
SERVICE = "kms"
_ARN = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::(\d{12}):[\x21-\x7e]{1,2000}$")
_ASSUMED_ROLE = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/[^/]+$")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AMZ_DATE_SHAPE = re.compile(r"[0-9]{8}T[0-9]{6}Z\Z")

BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
BAD_TOKEN = "The security token included in the request is invalid."


class CredentialsError(ConfigurationError):
    """The credentials file is unusable."""


@dataclass(frozen=True, slots=True)
class Principal:
    access_key_id: str
    secret_access_key: str
    arn: str  # as the file gives it
    session_token: str | None

    @property
    def account(self) -> str:
        return self.arn.split(":")[4]

    @property
    def principal_arn(self) -> str:
        """aws:PrincipalArn: for an assumed-role session, the role's ARN (as AWS gives it,
        without the role's path, which the session ARN does not carry)."""
        match = _ASSUMED_ROLE.match(self.arn)
        if match:
            partition, account, role = match.groups()
            return f"arn:{partition}:iam::{account}:role/{role}"
        return self.arn


def load_credentials(text: str) -> dict[str, Principal]:
    """Parse the credentials file (JSON list); raises CredentialsError naming the bad entry."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CredentialsError(f"not valid JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise CredentialsError(
            'expected a non-empty JSON list of {"AccessKeyId", "SecretAccessKey", "Arn"} objects'
        )
    out: dict[str, Principal] = {}
    for index, item in enumerate(data):
        principal = _principal(index, item)
        if principal.access_key_id in out:
            raise CredentialsError(
                f"entry {index}: AccessKeyId {principal.access_key_id} appears twice"
            )
        out[principal.access_key_id] = principal
    return out


def _principal(index: int, item: Any) -> Principal:
    if not isinstance(item, dict):
        raise CredentialsError(f"entry {index}: expected an object")
    unknown = set(item) - {"AccessKeyId", "SecretAccessKey", "Arn", "SessionToken"}
    if unknown:
        raise CredentialsError(f"entry {index}: unknown fields {sorted(unknown)}")
    fields = {}
    for name in ("AccessKeyId", "SecretAccessKey", "Arn"):
        value = item.get(name)
        if not isinstance(value, str) or not value:
            raise CredentialsError(f"entry {index}: {name} must be a non-empty string")
        fields[name] = value
    token = item.get("SessionToken")
    if token is not None and (not isinstance(token, str) or not token):
        raise CredentialsError(f"entry {index}: SessionToken must be a non-empty string")
    if not re.fullmatch(r"[A-Z0-9]{16,128}", fields["AccessKeyId"]):
        raise CredentialsError(
            f"entry {index}: AccessKeyId must be 16-128 upper-case letters and digits"
        )
    if not _ARN.match(fields["Arn"]):
        raise CredentialsError(
            f"entry {index}: Arn {fields['Arn'][:80]!r} is not an IAM or STS "
            "principal ARN (arn:aws:iam::123456789012:role/NAME)"
        )
    return Principal(fields["AccessKeyId"], fields["SecretAccessKey"], fields["Arn"], token)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What the SigV4 check needs: the request exactly as received."""

    method: str
    path: str  # decoded, as SigV4's canonical form wants it
    query: Sequence[tuple[str, str]]  # decoded pairs
    headers: Sequence[tuple[str, str]]  # names lower-case, in arrival order
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None

    def header_values(self) -> dict[str, str]:
        """Every header's value by name, repeated ones joined with commas as ``header`` joins
        them: one pass for the handful of lookups a request needs (made anew on each call)."""
        values: dict[str, str] = {}
        for name, value in self.headers:
            values[name] = f"{values[name]},{value}" if name in values else value
        return values


class Authenticator:
    def __init__(self, principals: dict[str, Principal], region: str) -> None:
        self._principals = principals
        self._region = region
        self._last_date: tuple[str | None, datetime | None] = (None, None)

    def authenticate(
        self, request: SignedRequest, now: datetime, headers: Mapping[str, str] | None = None
    ) -> Principal:
        """The signer of ``request``, or KmsApiError. ``headers``: ``request.header_values()``
        when the caller has made it already."""
        if headers is None:
            headers = request.header_values()
        value = headers.get("authorization")
        if value is None:
            raise KmsApiError("MissingAuthenticationTokenException", "Missing Authentication Token")
        try:
            auth = parse_authorization(value)
        except FormatError as exc:
            raise KmsApiError("IncompleteSignatureException", exc.message) from None
        principal = self._principals.get(auth.access_key_id)
        if principal is None:
            raise KmsApiError("UnrecognizedClientException", BAD_TOKEN)
        token = headers.get("x-amz-security-token")
        if (token is None) != (principal.session_token is None) or (
            token is not None
            and principal.session_token is not None
            and not hmac.compare_digest(token.encode(), principal.session_token.encode())
        ):
            raise KmsApiError("UnrecognizedClientException", BAD_TOKEN)
        if auth.service != SERVICE:
            raise KmsApiError(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{SERVICE}'.",
            )
        if auth.region != self._region:
            raise KmsApiError(
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region, not '{auth.region[:32]}'.",
            )
        signed = auth.signed_headers  # sorted and unique (parse_authorization): a few names
        if "host" not in signed:
            raise KmsApiError(
                "InvalidSignatureException",
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            )
        if token is not None and "x-amz-security-token" not in signed:
            raise KmsApiError("InvalidSignatureException", BAD_SIGNATURE)
        amz_date = headers.get("x-amz-date")
        # the last X-Amz-Date read, kept by its exact text (a signer's requests share a second)
        last_text, when = self._last_date
        if amz_date is None or amz_date != last_text:
            when = _parse_amz_date(amz_date)
            self._last_date = (amz_date, when)
        if amz_date is None or when is None or "x-amz-date" not in signed:
            raise KmsApiError(
                "IncompleteSignatureException",
                "Authorization header requires existence of a signed 'X-Amz-Date' header.",
            )
        if auth.date != amz_date[:8]:
            raise KmsApiError(
                "InvalidSignatureException",
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                f"version of date from HTTP: '{auth.date[:8]}' != "
                f"'{amz_date[:8]}', from '{amz_date}'.",
            )
        if when < now - MAX_SKEW:
            raise KmsApiError(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than "
                f"{(now - MAX_SKEW).strftime(_AMZ_DATE)} ({now.strftime(_AMZ_DATE)}"
                " - 5 min.)",
            )
        if when > now + MAX_SKEW:
            raise KmsApiError(
                "InvalidSignatureException",
                f"Signature not yet current: {amz_date} is still later than "
                f"{(now + MAX_SKEW).strftime(_AMZ_DATE)} ({now.strftime(_AMZ_DATE)}"
                " + 5 min.)",
            )
        expected = expected_signature(
            request.method,
            request.path,
            request.query,
            request.headers,
            request.body,
            principal.secret_access_key,
            auth,
            amz_date,
        )
        if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
            raise KmsApiError("InvalidSignatureException", BAD_SIGNATURE)
        return principal


def _parse_amz_date(value: str | None) -> datetime | None:
    """``YYYYMMDDTHHMMSSZ`` exactly (ASCII digits), or None. Read by hand: strptime cost some
    15 us a request, and accepted one-digit fields besides."""
    if value is None or not _AMZ_DATE_SHAPE.match(value):
        return None
    try:
        return datetime(
            int(value[0:4]), int(value[4:6]), int(value[6:8]),
            int(value[9:11]), int(value[11:13]), int(value[13:15]), tzinfo=UTC,
        )
    except ValueError:  # a 13th month, a 61st second
        return None
