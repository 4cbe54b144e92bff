"""Certificate chain rules on synthetic chains: every profile violation is a ChainError."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest import ChainError, ExpiredError, TrustRootError, Verifier
from nitro_attest.attestation.chain import ChainValidator, root_der_from_pem

from . import chainfactory as cf


def _verify(chain: cf.Chain, at: dt.datetime = cf.T0) -> None:
    Verifier(root_pem=chain.root_pem).verify(chain.document(), at=at)


def _mutated(level: int, **changes: object) -> cf.Chain:
    specs = cf.default_chain()
    specs[level] = replace(specs[level], **changes)  # type: ignore[arg-type]
    return cf.chain(specs)


def test_default_chain_verifies() -> None:
    _verify(cf.chain())


@pytest.mark.parametrize(
    ("level", "changes", "message"),
    [
        (2, {"path_len": 0}, "pathLen 0 but 1 CA"),
        (1, {"path_len": 1}, "pathLen 1 but 2 CA"),
        (0, {"path_len": 2}, "pathLen 2 but 3 CA"),
        (3, {"ca": False, "path_len": None}, "CA flag is not set"),
        (3, {"include_bc": False, "path_len": None}, "CA flag is not set"),
        (2, {"bc_critical": False}, "not marked critical"),
        (1, {"key_cert_sign": False}, "keyCertSign"),
        (2, {"extra_critical": True}, "unsupported critical extension"),
        (4, {"extra_critical": True}, "unsupported critical extension"),
        (4, {"ca": True, "path_len": None}, "must not be a CA"),
        (4, {"digital_signature": False}, "digitalSignature"),
        (3, {"hash_alg": hashes.SHA256()}, "not ecdsa-with-SHA384"),
        (4, {"hash_alg": hashes.SHA512()}, "not ecdsa-with-SHA384"),
        (4, {"issuer_name": "someone-else"}, "names issuer"),
        (2, {"signing_key": "attacker"}, "not signed by"),
        (4, {"signing_key": "attacker"}, "not signed by"),
    ],
)
def test_profile_violations(level: int, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ChainError, match=message):
        _verify(_mutated(level, **changes))


def test_leaf_key_must_be_p384() -> None:
    specs = cf.default_chain()
    specs[4] = replace(specs[4], cn="p256-leaf", curve=ec.SECP256R1())
    chain = cf.chain(specs)
    item = cbor2.loads(chain.document())
    item[3] = item[3] + bytes(32)  # ES256's 64-byte signature padded to pass the syntax check
    verifier = Verifier(root_pem=chain.root_pem)
    for _ in range(2):  # and again, with the leaf's parsed certificate (and key verdict) cached
        with pytest.raises(ChainError, match="P-384"):
            verifier.verify(cbor2.dumps(item), at=cf.T0)


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_every_certificate_validity_is_checked(level: int) -> None:
    chain = _mutated(level, not_after=cf.T0 - dt.timedelta(seconds=1))
    with pytest.raises(ExpiredError, match="not valid at"):
        _verify(chain)
    chain = _mutated(level, not_before=cf.T0 + dt.timedelta(seconds=1))
    with pytest.raises(ExpiredError, match="not valid at"):
        _verify(chain)


def test_cabundle_must_start_with_the_trusted_root() -> None:
    chain = cf.chain()
    other = cf.chain([replace(s, cn="other-" + s.cn) for s in cf.default_chain()])
    with pytest.raises(ChainError, match="cabundle\\[0\\] is not the trusted root"):
        Verifier(root_pem=other.root_pem).verify(chain.document(), at=cf.T0)


def test_simulated_chain_fails_under_the_aws_root() -> None:
    with pytest.raises(ChainError, match="not the trusted root"):
        Verifier().verify(cf.chain().document(), at=cf.T0)


def test_missing_intermediate_breaks_the_chain() -> None:
    chain = cf.chain()
    data = cf.sign_document(
        cbor2.dumps(
            cf.payload_map(chain.ders, cabundle=[chain.ders[0], chain.ders[1], chain.ders[3]])
        ),
        chain.leaf_key,
    )
    with pytest.raises(ChainError):
        Verifier(root_pem=chain.root_pem).verify(data, at=cf.T0)


def test_link_cache_makes_shared_intermediates_free() -> None:
    specs = cf.default_chain()
    chain = cf.chain(specs)
    verifier = Verifier(root_pem=chain.root_pem)
    verifier.verify(chain.document(), at=cf.T0)
    links = verifier._chain._links  # the cache is the point of this test
    assert len(links) == 4
    # A second leaf under the same instance CA adds exactly one link.
    second_leaf = replace(specs[4], cn="i-0123456789abcdef0-enc0000000000000002.test.aws")
    leaf_der = cf.make_cert(second_leaf, specs[3])
    data = cf.sign_document(
        cbor2.dumps(cf.payload_map([*chain.ders[:4], leaf_der])),
        cf.key(second_leaf.cn),
    )
    verifier.verify(data, at=cf.T0)
    assert len(links) == 5


def test_cached_link_still_checks_validity_time() -> None:
    chain = cf.chain()
    verifier = Verifier(root_pem=chain.root_pem)
    verifier.verify(chain.document(), at=cf.T0)
    with pytest.raises(ExpiredError):
        verifier.verify(chain.document(), at=cf.T0 + dt.timedelta(days=2))


def test_cached_path_is_valid_only_where_every_certificate_is() -> None:
    # The leaf lives T0-1min..T0+3h inside longer-lived CAs: a path that validated at T0 is
    # remembered with that window and no wider, on both sides.
    chain = cf.chain()
    verifier = Verifier(root_pem=chain.root_pem)
    verifier.verify(chain.document(), at=cf.T0)
    assert len(verifier._chain._paths) == 1  # the cache is the point of this test
    verifier.verify(chain.document(), at=cf.T0 + dt.timedelta(hours=2, minutes=59))
    for outside in (cf.T0 - dt.timedelta(minutes=2), cf.T0 + dt.timedelta(hours=3, minutes=1)):
        with pytest.raises(ExpiredError, match="leaf certificate"):
            verifier.verify(chain.document(), at=outside)


def test_cached_path_does_not_vouch_for_another_bundle_with_the_same_leaf() -> None:
    # The parent replays a good document's leaf with an intermediate dropped: the remembered path
    # is keyed on the whole bundle, so this one is validated in full and refused.
    chain = cf.chain()
    verifier = Verifier(root_pem=chain.root_pem)
    verifier.verify(chain.document(), at=cf.T0)
    data = cf.sign_document(
        cbor2.dumps(
            cf.payload_map(chain.ders, cabundle=[chain.ders[0], chain.ders[1], chain.ders[3]])
        ),
        chain.leaf_key,
    )
    with pytest.raises(ChainError):
        verifier.verify(data, at=cf.T0)
    # A different trust root never sees the first validator's paths.
    other = cf.chain()
    with pytest.raises(ChainError):
        Verifier(root_pem=other.root_pem).verify(chain.document(), at=cf.T0)


def test_cached_path_does_not_vouch_for_a_bundle_one_byte_apart() -> None:
    # The remembered path compares the bundle byte for byte: an intermediate with its last byte
    # (inside its signature) changed, same length, same leaf, is validated in full and refused;
    # the good path still verifies afterwards.
    chain = cf.chain()
    verifier = Verifier(root_pem=chain.root_pem)
    verifier.verify(chain.document(), at=cf.T0)
    bundle = list(chain.ders[:4])
    bundle[2] = bundle[2][:-1] + bytes((bundle[2][-1] ^ 1,))
    data = cf.sign_document(
        cbor2.dumps(cf.payload_map(chain.ders, cabundle=bundle)), chain.leaf_key
    )
    with pytest.raises(ChainError, match="not signed by"):
        verifier.verify(data, at=cf.T0)
    verifier.verify(chain.document(), at=cf.T0)


def test_root_pem_rules() -> None:
    chain = cf.chain()
    with pytest.raises(TrustRootError, match="exactly one"):
        root_der_from_pem(chain.root_pem * 2)
    with pytest.raises(TrustRootError, match="exactly one"):
        root_der_from_pem(b"not a pem")
    with pytest.raises(TrustRootError, match="not a CA"):
        root_der_from_pem(cf.root_pem(chain.ders[-1]))
    bad = chain.root_pem.replace(b"MII", b"MIX", 1)
    with pytest.raises(TrustRootError):
        root_der_from_pem(bad)


def test_chain_validator_reports_undecodable_cabundle_root() -> None:
    validator = ChainValidator(cf.chain().ders[0])
    with pytest.raises(ChainError, match="undecodable"):
        validator.validate(cf.chain().ders[-1], (b"\x30\x03\x02\x01\x00",), cf.T0.timestamp())


def test_pinned_root_may_be_self_signed_with_another_hash() -> None:
    # The root is pinned by its bytes; its own self-signature is never relied upon.
    chain = _mutated(0, hash_alg=hashes.SHA512())
    _verify(chain)
