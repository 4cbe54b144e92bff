"""AWS credentials for the enclave's KMS calls: from the environment, or from the instance's
metadata service (IMDSv2) through the way out. Never from a command line (visible in ``ps``).

IMDS answers come from the parent (it is the instance and carries every byte), so they are input:
capped and checked before use. A parent that hands out other credentials gains nothing from KMS
but failures, or answers for a key of its own account: name keys by full ARN (docs/kms.md).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from nitro_attest.errors import ConfigurationError, TransportError
from nitro_attest.kms.https import Connection, Endpoint
from nitro_attest.kms.route import Route
from nitro_attest.kms.sigv4 import Credentials

CredentialSource = Callable[[], Credentials]

IMDS_HOST = "169.254.169.254"
IMDS_PORT = 80
TOKEN_TTL_SECONDS = 21600
REFRESH_BEFORE_SECONDS = 300  # fetch new credentials this long before the old ones expire
# Kept at most this long by the monotonic clock too: the expiry is wall-clock time from IMDS, and
# a wall clock stepped back would otherwise keep credentials the role has already replaced.
MAX_CACHE_SECONDS = 900
MAX_IMDS_ANSWER = 16 * 1024

_KEY_ID = re.compile(r"[A-Z0-9]{16,128}\Z")
_SECRET = re.compile(r"[\x21-\x7e]{1,256}\Z")
_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}\Z")  # header-safe: no space, no control
_ROLE = re.compile(r"[\w+=,.@-]{1,128}\Z")
_IMDS_TOKEN = re.compile(r"[\x21-\x7e]{1,512}\Z")


class CredentialsError(ConfigurationError):
    """No usable credentials: missing, malformed, or the metadata service failed."""


def checked(access_key_id: str, secret: str, token: str | None, where: str) -> Credentials:
    """Credentials whose every part fits a header (no CR/LF can reach a request)."""
    if not _KEY_ID.match(access_key_id):
        raise CredentialsError(f"{where}: the access key id is not an AWS access key id")
    if not _SECRET.match(secret):
        raise CredentialsError(f"{where}: the secret access key is malformed")
    if token is not None and not _TOKEN.match(token):
        raise CredentialsError(f"{where}: the session token is malformed")
    return Credentials(access_key_id, secret, token)


def from_environment(environ: Mapping[str, str] | None = None) -> Credentials:
    """AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, when set, AWS_SESSION_TOKEN."""
    env = os.environ if environ is None else environ
    key_id = env.get("AWS_ACCESS_KEY_ID", "")
    secret = env.get("AWS_SECRET_ACCESS_KEY", "")
    if not key_id or not secret:
        raise CredentialsError(
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
            "AWS_SESSION_TOKEN), or use --credentials-from imds"
        )
    return checked(key_id, secret, env.get("AWS_SESSION_TOKEN") or None, "environment")


class ImdsCredentials:
    """The instance role's credentials from IMDSv2 (token PUT, then GET), kept until shortly
    before they expire and at most MAX_CACHE_SECONDS, or until ``invalidate()`` (the client calls
    it when KMS says the token expired or is unknown). Callable: a ``CredentialSource``.
    Thread-safe."""

    def __init__(
        self, route: Route, *, host: str = IMDS_HOST, port: int = IMDS_PORT,
        timeout: float = 2.0, clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = Connection(Endpoint("http", host, port), route, None, timeout=timeout)
        self._host = host if port == 80 else f"{host}:{port}"
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: tuple[Credentials, float, float] | None = None  # wall and monotonic ends

    def __call__(self) -> Credentials:
        with self._lock:
            cached = self._cached
            if (cached is not None and self._clock() < cached[1]
                    and self._monotonic() < cached[2]):  # fmt: skip
                return cached[0]
            self._cached = None
            credentials, expires = self._fetch()
            self._cached = (credentials, expires - REFRESH_BEFORE_SECONDS,
                            self._monotonic() + MAX_CACHE_SECONDS)  # fmt: skip
            self._connection.close()
            return credentials

    def invalidate(self) -> None:
        """Forget the cached credentials: the next call fetches from IMDS again."""
        with self._lock:
            self._cached = None

    def _get(self, method: str, path: str, headers: list[tuple[str, str]]) -> str:
        try:
            answer = self._connection.request(method, path, [("Host", self._host), *headers])
        except TransportError as exc:
            raise CredentialsError(f"instance metadata service: {exc}") from None
        if answer.status != 200:
            raise CredentialsError(f"instance metadata service answered {answer.status} to "
                                   f"{method} {path}")
        if len(answer.body) > MAX_IMDS_ANSWER:
            raise CredentialsError("instance metadata answer too long")
        try:
            return answer.body.decode("ascii")
        except UnicodeDecodeError:
            raise CredentialsError("instance metadata answer is not ASCII") from None

    def _fetch(self) -> tuple[Credentials, float]:
        token = self._get("PUT", "/latest/api/token",
                          [("X-aws-ec2-metadata-token-ttl-seconds", str(TOKEN_TTL_SECONDS))])
        if not _IMDS_TOKEN.match(token):
            raise CredentialsError("instance metadata token is malformed")
        auth = [("X-aws-ec2-metadata-token", token)]
        base = "/latest/meta-data/iam/security-credentials/"
        roles = self._get("GET", base, auth).split()
        if len(roles) != 1 or not _ROLE.match(roles[0]):
            raise CredentialsError("instance metadata: expected exactly one instance role")
        try:
            doc = json.loads(self._get("GET", base + roles[0], auth))
        except ValueError:
            raise CredentialsError("instance metadata credentials are not JSON") from None
        if not isinstance(doc, dict) or doc.get("Code", "Success") != "Success":
            raise CredentialsError("instance metadata did not return credentials")
        parts = [doc.get(k) for k in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")]
        if not all(isinstance(p, str) for p in parts):
            raise CredentialsError("instance metadata credentials lack a field")
        key_id, secret, token_, expiration = (str(p) for p in parts)
        try:
            when = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        except ValueError:
            raise CredentialsError("instance metadata credentials: bad Expiration") from None
        expires = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        return checked(key_id, secret, token_, "instance metadata"), expires
