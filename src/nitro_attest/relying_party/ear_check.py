"""The EAR a verification service returns, checked against pinned keys: the signature (ES256 or
ES384 only), EAR's profile, this session's nonce and a status on every submodule."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from nitro_attest.relying_party.errors import EarError, ServiceClientError

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
EAR_ALGS = ("ES256", "ES384")
STATUS_RANK = {"affirming": 0, "none": 1, "warning": 2, "contraindicated": 3}
"""EAR's statuses, best first: a result is as good as its worst submodule."""
_CURVE_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "P-256": "ES256", "P-384": "ES384"}
MAX_JWKS_KEYS = 64


def load_ear_key(pem: bytes, source: str = "EAR key") -> dict[str, Any]:
    """A pinned EAR key from a PEM public key (or certificate): its JWK with ``alg``."""
    try:
        if b"BEGIN CERTIFICATE" in pem:
            from cryptography import x509

            key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ServiceClientError(f"{source}: not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVE_ALGS:
        raise ServiceClientError(f"{source}: not an EC P-256 or P-384 public key")
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key))
    jwk["alg"] = _CURVE_ALGS[key.curve.name]
    return jwk


def load_ear_jwks(jwks: Mapping[str, Any], source: str = "EAR JWKS") -> list[dict[str, Any]]:
    """Pinned EAR keys from a JWK set (``{"keys": [...]}``): EC P-256/P-384 public keys."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list) or not keys or len(keys) > MAX_JWKS_KEYS:
        raise ServiceClientError(f"{source}: expected {{\"keys\": [1..{MAX_JWKS_KEYS} JWKs]}}")
    pinned: list[dict[str, Any]] = []
    for i, jwk in enumerate(keys):
        if not isinstance(jwk, dict) or jwk.get("kty") != "EC" or "d" in jwk:
            raise ServiceClientError(f"{source}: key {i} is not an EC public JWK")
        alg = _CURVE_ALGS.get(str(jwk.get("crv")))
        if alg is None or jwk.get("alg", alg) != alg:
            raise ServiceClientError(f"{source}: key {i} is not ES256 on P-256 or ES384 on P-384")
        try:
            ECAlgorithm.from_jwk(json.dumps(jwk))
        except (jwt.PyJWTError, ValueError) as exc:
            raise ServiceClientError(f"{source}: key {i}: {exc}") from None
        pinned.append({**jwk, "alg": alg})
    return pinned


def verify_ear(
    token: str, jwk: Mapping[str, Any] | Sequence[Mapping[str, Any]], nonce: str
) -> dict[str, Any]:
    """The EAR's claims, once its signature (by ``jwk``, or by one of several pinned keys),
    profile and nonce check out; EarError otherwise."""
    keys = [jwk] if isinstance(jwk, Mapping) else list(jwk)
    if not keys:
        raise EarError("no EAR verification key given")
    failure = "no key"
    for candidate in keys:
        alg = candidate.get("alg")
        if alg not in EAR_ALGS:
            raise EarError(f"verification key algorithm {alg!r} is not ES256 or ES384")
        try:
            key = ECAlgorithm.from_jwk(json.dumps(dict(candidate)))
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[str(alg)], options={"require": ["iat"]}  # type: ignore[arg-type]
            )
            break
        except (jwt.PyJWTError, ValueError) as exc:
            failure = str(exc)
    else:
        which = "the key" if len(keys) == 1 else f"any of the {len(keys)} keys"
        raise EarError(f"EAR does not verify with {which}: {failure}")
    if claims.get("eat_profile") != EAR_PROFILE:
        raise EarError(f"EAR profile is {claims.get('eat_profile')!r}, not {EAR_PROFILE}")
    if claims.get("eat_nonce") != nonce:
        raise EarError("EAR nonce is not this session's nonce (a result for another session)")
    submods = claims.get("submods")
    if not isinstance(submods, dict) or not submods:
        raise EarError("EAR has no submodules")
    for name, submod in submods.items():
        if not isinstance(submod, dict) or submod.get("ear.status") not in STATUS_RANK:
            raise EarError(f"EAR submodule {name!r} has no valid ear.status")
    return claims
