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


def _malleated(der: bytes) -> bytes:
    """The same certificate with its ECDSA signature's s replaced by n - s: another DER that
    verifies under the same issuer key (ECDSA signatures are malleable), as a parent can make."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )

    n384 = int(
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
        "581a0db248b0a77aecec196accc52973",
        16,
    )
    cert = x509.load_der_x509_certificate(der)
    r, s = decode_dss_signature(cert.signature)
    old, new = cert.signature, encode_dss_signature(r, n384 - s)
    # The signature is the last element: its BIT STRING, then the outer SEQUENCE, change length.
    tbs = cert.tbs_certificate_bytes
    alg = der[der.index(tbs) + len(tbs) : der.rindex(old)]  # AlgorithmIdentifier + BIT STRING head
    bits = b"\x00" + new
    alg = alg[: alg.rindex(b"\x03")] + b"\x03" + _der_len(len(bits)) + bits
    body = tbs + alg
    out = b"\x30" + _der_len(len(body)) + body
    assert x509.load_der_x509_certificate(out).signature == new
    return out


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def test_remembered_paths_hold_a_bounded_number_of_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # The entry count is capped, so the bytes those paths hold must be too: a path's key is a
    # whole bundle, up to a whole document (no memory amplification by many distinct paths).
    from nitro_attest.attestation import chain as chain_mod

    monkeypatch.setattr(chain_mod, "_PATH_BYTES", 64 * 1024)
    specs = cf.default_chain()
    c = cf.chain(specs)
    root = c.ders[0]
    validator = ChainValidator(root)
    at = cf.T0.timestamp()
    size = 0
    for _ in range(64):  # same leaf key, a fresh serial each: distinct valid paths
        leaf = cf.make_cert(specs[4], specs[3])
        validator.validate(leaf, tuple(c.ders[:-1]), at)
        size += len(leaf) + sum(map(len, c.ders[:-1]))
    assert size > 2 * chain_mod._PATH_BYTES  # more than twice the budget was sent
    held = sum(len(lf) + sum(map(len, known[0])) for lf, known in validator._paths.items())
    assert 0 < held <= chain_mod._PATH_BYTES
    assert held == validator._path_bytes
    assert validator._paths[leaf][0] == tuple(c.ders[:-1])  # the latest is still remembered


def test_a_certificate_may_not_appear_twice_on_the_path() -> None:
    # The parent repeats the pinned root above the regional CA, or a copy of it whose
    # self-signature has s replaced by n - s (ECDSA malleability): each links, and each would
    # mint another distinct valid path from one genuine document. AWS's chain never repeats one.
    c = cf.chain()
    root, *middle, leaf = c.ders
    twin = _malleated(root)
    validator = ChainValidator(root)
    at = cf.T0.timestamp()
    validator.validate(leaf, (root, *middle), at)
    for bundle in ((root, root, *middle), (root, twin, *middle), (root, twin, root, *middle)):
        with pytest.raises(ChainError, match="appears twice"):
            validator.validate(leaf, bundle, at)
        with pytest.raises(ChainError, match="appears twice"):  # and never remembered as good
            validator.validate(leaf, bundle, at)
    assert len(validator._paths) == 1


def test_tbs_slice_is_cryptographys_tbs_certificate() -> None:
    from cryptography import x509

    from nitro_attest.attestation.chain import _tbs

    from .paths import REAL

    ders = [*cf.chain().ders, _malleated(cf.chain().ders[0])]
    for path in sorted(REAL.glob("*.cbor")):
        payload = cbor2.loads(cbor2.loads(path.read_bytes().removeprefix(b"\xd2"))[2])
        ders += [payload["certificate"], *payload["cabundle"]]
    for der in ders:
        assert _tbs(der) == x509.load_der_x509_certificate(der).tbs_certificate_bytes


def test_threads_racing_through_cache_clears_never_pass_a_bad_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tiny caches: every few calls one thread clears what another just read. A good path at a good
    # time always passes; a bad one (expired intermediate, or a pathLen violation) never does.
    import threading

    from nitro_attest.attestation import chain as chain_mod

    monkeypatch.setattr(chain_mod, "_CACHE_LIMIT", 2)
    monkeypatch.setattr(chain_mod, "_PATH_BYTES", 4 * 1024)  # one path fits
    specs = cf.default_chain()
    good = cf.chain(specs)
    narrow = cf.make_cert(replace(specs[2], not_after=cf.T0 + dt.timedelta(minutes=30)), specs[1])
    badlen = cf.make_cert(replace(specs[2], path_len=0), specs[1])  # zonal CA, same key
    short = cf.Chain(specs, [*good.ders[:2], narrow, *good.ders[3:]])
    bad = cf.Chain(specs, [*good.ders[:2], badlen, *good.ders[3:]])
    validator = ChainValidator(good.ders[0])
    t0, late = cf.T0.timestamp(), cf.T0.timestamp() + 3600
    cases = [
        (good, t0, True),
        (good, late, True),
        (short, t0, True),
        (short, late, False),  # zonal CA expired 30 minutes after T0
        (bad, t0, False),
    ]
    wrong: list[str] = []

    def work(offset: int) -> None:
        for i in range(150):
            c, at, ok = cases[(i + offset) % len(cases)]
            try:
                validator.validate(c.ders[-1], tuple(c.ders[:-1]), at)
                passed = True
            except ChainError:
                passed = False
            if passed != ok:
                wrong.append(f"{(i + offset) % len(cases)}: {passed}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_cached_path_window_is_the_narrowest_ca_not_the_leaf() -> None:
    # The zonal CA lives T0-30s..T0+30min, inside the leaf's T0-1min..T0+3h: once the path is
    # remembered at T0, either side of the CA's window is still refused, naming the CA.
    specs = cf.default_chain()
    good = cf.chain(specs)
    zonal = replace(
        specs[2],
        not_before=cf.T0 - dt.timedelta(seconds=30),
        not_after=cf.T0 + dt.timedelta(minutes=30),
    )
    ders = [*good.ders[:2], cf.make_cert(zonal, specs[1]), *good.ders[3:]]
    validator = ChainValidator(ders[0])
    leaf, bundle = ders[-1], tuple(ders[:-1])
    validator.validate(leaf, bundle, cf.T0.timestamp())
    assert validator._paths[leaf][0] == bundle
    validator.validate(leaf, bundle, (cf.T0 + dt.timedelta(minutes=30)).timestamp())  # inclusive
    for outside in (dt.timedelta(seconds=-31), dt.timedelta(minutes=30, seconds=1)):
        with pytest.raises(ExpiredError, match=r"cabundle\[2\]"):
            validator.validate(leaf, bundle, (cf.T0 + outside).timestamp())


def test_an_empty_cabundle_is_a_chain_error_not_an_index_error() -> None:
    validator = ChainValidator(cf.chain().ders[0])
    with pytest.raises(ChainError, match="cabundle is empty"):
        validator.validate(cf.chain().ders[-1], (), cf.T0.timestamp())


def test_a_remembered_path_holds_its_own_copy_of_a_mutable_bundle() -> None:
    # A direct caller of ChainValidator.validate may hand the bundle's certificates as
    # bytearrays (a reused read buffer). The path cache must remember the bytes that validated,
    # not the caller's buffer: rewriting the buffer afterwards must not turn a cache hit into a
    # pass for bytes that were never validated.
    chain = cf.chain()
    validator = ChainValidator(chain.ders[0])
    at = cf.T0.timestamp()
    buffer = bytearray(chain.ders[0])
    bundle = (buffer, *chain.ders[1:4])
    validator.validate(chain.ders[4], bundle, at)  # type: ignore[arg-type]
    buffer[:] = cf.chain().ders[0]  # another root: the bundle no longer starts at the trusted one
    with pytest.raises(ChainError, match="not the trusted root"):
        validator.validate(chain.ders[4], bundle, at)  # type: ignore[arg-type]
    validator.validate(chain.ders[4], tuple(chain.ders[:4]), at)  # the genuine path still passes


def _every_test_certificate() -> list[bytes]:
    from .paths import REAL

    ders = [*cf.chain().ders, _malleated(cf.chain().ders[0])]
    for path in sorted(REAL.glob("*.cbor")):
        payload = cbor2.loads(cbor2.loads(path.read_bytes().removeprefix(b"\xd2"))[2])
        ders += [payload["certificate"], *payload["cabundle"]]
    return ders


def test_name_slices_are_cryptographys_issuer_and_subject() -> None:
    from cryptography import x509

    from nitro_attest.attestation.chain import _names

    for der in _every_test_certificate():
        cert = x509.load_der_x509_certificate(der)
        assert _names(der) == (cert.issuer.public_bytes(), cert.subject.public_bytes(), True)


def test_link_check_agrees_with_verify_directly_issued_by_on_mutated_certificates() -> None:
    # The link check reads the names and the signed bytes from the DER itself; on any
    # certificate cryptography still parses, it must accept exactly what
    # verify_directly_issued_by accepts. Every byte of the child flipped in turn (a bounded
    # sample of positions), the issuer kept, and the reverse.
    import random

    from cryptography import x509

    from nitro_attest.attestation.chain import CertInfo

    ders = cf.chain().ders  # [root, regional, zonal, instance, leaf]
    validator = ChainValidator(root_der=ders[0])
    rng = random.Random(24)
    checked = 0
    for child_at in range(1, 5):
        child, issuer = ders[child_at], ders[child_at - 1]
        positions = rng.sample(range(len(child)), 60)
        for at in positions:
            mutated = bytearray(child)
            mutated[at] ^= 1 << rng.randrange(8)
            try:
                info = CertInfo(bytes(mutated))
            except Exception:
                continue  # cryptography refuses it: never reaches a link
            if info.sig_problem is not None:
                continue  # validate() refuses it before any link
            try:
                info.cert.verify_directly_issued_by(x509.load_der_x509_certificate(issuer))
                expected = True
            except Exception:
                expected = False
            try:
                validator._check_link(info, CertInfo(issuer), 0, 4)
                got = True
            except ChainError:
                got = False
            assert got is expected, (child_at, at)
            checked += 1
    assert checked > 100  # most single-bit edits still parse


def test_an_issuer_without_an_ec_key_breaks_the_link() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from nitro_attest.attestation.chain import CertInfo

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ders = cf.chain().ders
    regional = x509.load_der_x509_certificate(ders[1])
    swapped = (
        x509.CertificateBuilder()
        .subject_name(regional.subject)
        .issuer_name(regional.issuer)
        .public_key(rsa_key.public_key())
        .serial_number(regional.serial_number)
        .not_valid_before(regional.not_valid_before_utc)
        .not_valid_after(regional.not_valid_after_utc)
        .sign(cf.key("test-root.nitro-enclaves"), hashes.SHA384())
        .public_bytes(serialization.Encoding.DER)
    )
    validator = ChainValidator(root_der=ders[0])
    with pytest.raises(ChainError, match="does not hold an EC key"):
        validator._check_link(CertInfo(ders[2]), CertInfo(swapped), 1, 4)


def test_a_tbs_naming_another_algorithm_breaks_the_link_even_when_signed() -> None:
    # A CA could sign a tbsCertificate whose inner signature algorithm (ecdsa-with-SHA256) is
    # not the certificate's outer one (ecdsa-with-SHA384). verify_directly_issued_by refuses it
    # (RFC 5280 4.1.1.2); so must the link check that replaced it.
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec as ec_

    from nitro_attest.attestation.chain import CertInfo, _tbs

    ders = cf.chain().ders
    zonal = ders[2]
    sha384_oid = bytes.fromhex("06082a8648ce3d040303")
    tbs = _tbs(zonal)
    inner = tbs.replace(sha384_oid, bytes.fromhex("06082a8648ce3d040302"), 1)
    assert inner != tbs
    signature = cf.key("regional.test.aws.nitro-enclaves").sign(inner, ec_.ECDSA(hashes.SHA384()))
    outer_alg = b"\x30\x0a" + sha384_oid
    bits = b"\x00" + signature
    body = inner + outer_alg + b"\x03" + _der_len(len(bits)) + bits
    forged = b"\x30" + _der_len(len(body)) + body
    cert = x509.load_der_x509_certificate(forged)
    with pytest.raises(ValueError, match="Inner and outer"):
        cert.verify_directly_issued_by(x509.load_der_x509_certificate(ders[1]))
    info = CertInfo(forged)
    assert info.sig_problem is None  # the outer algorithm is the expected one
    validator = ChainValidator(root_der=ders[0])
    with pytest.raises(ChainError, match="another signature algorithm"):
        validator._check_link(info, CertInfo(ders[1]), 2, 4)
