"""EAR attestation results (draft-ietf-rats-ear): the claims set, signed as a compact JWS.

The signing key is EC P-256 (ES256) or P-384 (ES384). Relying parties fetch its public JWK from
``/.well-known/veraison/verification`` and check the signature, ``eat_nonce`` and ``ear.status``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from nitro_attest.errors import ConfigurationError
from nitro_attest.relying_party.ear_check import EAR_PROFILE
from nitro_attest.version import __version__

EAR_MEDIA_TYPE = 'application/eat+jwt; eat_profile="tag:github.com,2023:veraison/ear"'
SUBMOD = "aws-nitro"
VERIFIER_ID = {"developer": "nitro-attest", "build": f"nitro-attest {__version__}"}
_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384"}
MAX_KEY_FILE = 64 * 1024


class SigningKeyError(ConfigurationError):
    """The signing key file is unreadable, not an EC private key, or on an unsupported curve."""


@dataclass(frozen=True)
class EarSigner:
    key: ec.EllipticCurvePrivateKey
    alg: str
    kid: str

    @classmethod
    def from_key(cls, key: ec.EllipticCurvePrivateKey) -> EarSigner:
        alg = _ALGS.get(key.curve.name)
        if alg is None:
            raise SigningKeyError(f"signing key is on {key.curve.name}; use P-256 or P-384")
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(key, alg, hashlib.sha256(spki).hexdigest()[:16])

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "signing key") -> EarSigner:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{source}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SigningKeyError(f"{source}: not an EC key; use P-256 (ES256) or P-384 (ES384)")
        return cls.from_key(key)

    @classmethod
    def generate(cls) -> EarSigner:
        return cls.from_key(ec.generate_private_key(ec.SECP256R1()))

    def private_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"alg": self.alg, "kid": self.kid, "use": "sig"})
        return jwk

    def sign(self, claims: dict[str, Any]) -> str:
        # The claims as orjson's compact UTF-8 JSON, signed by PyJWT's JWS layer (the same
        # header, {"alg", "kid", "typ": "JWT"}, that jwt.encode writes): json.dumps cost ~30 us
        # per EAR. Non-ASCII text is UTF-8 rather than \u-escaped; both are the same JSON.
        try:
            payload = orjson.dumps(claims)
        except TypeError:  # what orjson cannot encode (a >64-bit int...): the standard library
            payload = json.dumps(claims, separators=(",", ":")).encode()
        return jwt.api_jws.encode(payload, self.key, algorithm=self.alg,
                                  headers={"kid": self.kid})  # fmt: skip


def ear_claims(
    *,
    nonce: str,
    status: str,
    vector: dict[str, int],
    policy_id: str,
    annotated: dict[str, Any],
    iat: int | None = None,
) -> dict[str, Any]:
    submod: dict[str, Any] = {
        "ear.status": status,
        "ear.appraisal-policy-id": policy_id,
        "ear.veraison.annotated-evidence": annotated,
    }
    if vector:
        submod["ear.trustworthiness-vector"] = vector
    return {
        "eat_profile": EAR_PROFILE,
        "iat": int(time.time()) if iat is None else iat,
        "ear.verifier-id": VERIFIER_ID,
        "eat_nonce": nonce,
        "submods": {SUBMOD: submod},
    }
