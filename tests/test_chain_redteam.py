"""Red team of the link check that replaced ``verify_directly_issued_by`` (attestation.chain).

The parent controls every byte of the certificates it relays and can sign with any key it owns.
The link check reads names and signed bytes straight from the DER; these tests hold it to what
``verify_directly_issued_by`` decides, over structured re-encodings (not only bit flips), and
check that nothing but the project's exceptions escapes.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from nitro_attest.attestation import chain as chain_mod
from nitro_attest.attestation.chain import CertInfo, ChainValidator
from nitro_attest.errors import ChainError, NitroAttestError

from . import chainfactory as cf
from .paths import REAL

_FUZZ_SECONDS = 20.0  # the whole differential run stays well under a minute


# --- a tiny DER tree: parse, mutate, write back ------------------------------------------------


@dataclass
class _Node:
    tag: int
    content: bytes = b""
    children: list[_Node] | None = None
    lenform: str = "min"  # min | long (non-minimal long form) | pad (leading zero) | indef
    extra: bytes = field(default=b"")  # bytes appended after the element's content


def _len(n: int, form: str) -> bytes:
    if form == "indef":
        return b"\x80"
    raw = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    if form == "min":
        return bytes((n,)) if n < 0x80 else bytes((0x80 | len(raw),)) + raw
    if form == "pad":
        raw = b"\x00" + raw
    return bytes((0x80 | len(raw),)) + raw


def _parse(b: bytes, at: int = 0) -> tuple[_Node, int]:
    tag, n = b[at], b[at + 1]
    at += 2
    if n & 0x80:
        w = n & 0x7F
        n = int.from_bytes(b[at : at + w], "big")
        at += w
    body = b[at : at + n]
    node = _Node(tag)
    if tag & 0x20:
        node.children = []
        i = 0
        while i < len(body):
            child, i = _parse(body, i)
            node.children.append(child)
    else:
        node.content = body
    return node, at + n


def _load(b: bytes) -> _Node:
    return _parse(b)[0]


def _dump(node: _Node) -> bytes:
    body = b"".join(_dump(c) for c in node.children) if node.children is not None else node.content
    body += node.extra
    if node.lenform == "indef":
        return bytes((node.tag,)) + b"\x80" + body + b"\x00\x00"
    return bytes((node.tag,)) + _len(len(body), node.lenform) + body


def _walk(node: _Node, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], _Node]]:
    out = [(path, node)]
    for i, child in enumerate(node.children or ()):
        out += _walk(child, (*path, i))
    return out


def _at(node: _Node, path: tuple[int, ...]) -> _Node:
    for i in path:
        assert node.children is not None
        node = node.children[i]
    return node


# --- the two decisions compared -----------------------------------------------------------------


def _old_accepts(child: bytes, issuer: bytes) -> bool:
    """What the chain decided before: CertInfo parses both, validate()'s ecdsa-with-SHA384 gate,
    then verify_directly_issued_by."""
    try:
        info = CertInfo(child)
        CertInfo(issuer)
    except NitroAttestError:
        return False
    if info.sig_problem is not None:
        return False
    try:
        x509.load_der_x509_certificate(child).verify_directly_issued_by(
            x509.load_der_x509_certificate(issuer)
        )
    except Exception:
        return False
    return True


def _new_accepts(validator: ChainValidator, child: bytes, issuer: bytes) -> bool:
    """The link check as validate() runs it; anything but the project's errors fails the test."""
    try:
        info, up = validator.cert_info(child), validator.cert_info(issuer)
    except NitroAttestError:
        return False
    if info.sig_problem is not None:
        return False
    try:
        validator._check_link(info, up, 1, 4)
    except ChainError:
        return False
    return True


# --- mutations ----------------------------------------------------------------------------------

_STRING_TAGS = (0x0C, 0x13, 0x14, 0x16, 0x1E, 0x1C, 0x04, 0x1A, 0x12)
_ALG_IDS = [
    bytes.fromhex("300a06082a8648ce3d040303"),  # ecdsa-with-SHA384
    bytes.fromhex("300a06082a8648ce3d040302"),  # ecdsa-with-SHA256
    bytes.fromhex("300a06082a8648ce3d040304"),  # ecdsa-with-SHA512
    bytes.fromhex("300c06082a8648ce3d0403030500"),  # SHA384 with NULL parameters
    bytes.fromhex("300d06092a864886f70d01010c0500"),  # sha384WithRSAEncryption
    bytes.fromhex("300506032b6570"),  # Ed25519
]
_N384 = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
    "581a0db248b0a77aecec196accc52973",
    16,
)


def _mutate_tree(rng: random.Random, tree: _Node, other_names: list[bytes]) -> str:
    """One structured edit of a certificate's tbsCertificate, in place; returns its name."""
    tbs = tree.children[0]  # type: ignore[index]
    nodes = _walk(tbs, (0,))
    kind = rng.choice(
        [
            "len",
            "tag",
            "str",
            "flip",
            "insert",
            "delete",
            "dup",
            "swap",
            "name",
            "alg",
            "version",
            "extra",
            "trunc",
            "rdnset",
        ]
    )
    path, node = rng.choice(nodes)
    if kind == "len":
        node.lenform = rng.choice(["long", "pad", "indef"])
    elif kind == "tag":
        node.tag = rng.choice(
            [
                0x02,
                0x04,
                0x05,
                0x06,
                0x0C,
                0x13,
                0x30,
                0x31,
                0xA0,
                0xA3,
                0x1F,
                0x3F,
                0x9F,
                0xBF,
                node.tag ^ 0x20,
            ]
        )
        if node.tag & 0x20 and node.children is None:
            node.children = [] if not node.content else None
            if node.children is None:
                node.tag &= ~0x20
        elif not node.tag & 0x20 and node.children is not None:
            node.content, node.children = b"".join(_dump(c) for c in node.children), None
    elif kind == "str":
        strings = [(p, n) for p, n in nodes if n.tag in _STRING_TAGS]
        path, node = rng.choice(strings)
        new = rng.choice(_STRING_TAGS)
        if new == 0x1E:
            node.content = b"".join(b"\x00" + bytes((c,)) for c in node.content)
        elif new == 0x1C:
            node.content = b"".join(b"\x00\x00\x00" + bytes((c,)) for c in node.content)
        node.tag = new
    elif kind == "flip" and node.children is None and node.content:
        data = bytearray(node.content)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        node.content = bytes(data)
    elif kind == "insert" and node.children is not None:
        node.children.insert(
            rng.randrange(len(node.children) + 1),
            rng.choice(
                [
                    _Node(0x05),
                    _Node(0x02, b"\x01"),
                    _Node(0x30, children=[]),
                    _Node(0x81, b"\x00\x01"),
                    _Node(0x82, b"\x00\x01"),
                    copy.deepcopy(rng.choice(tbs.children)),
                ]
            ),  # type: ignore[arg-type]
        )
    elif kind == "delete" and node.children:
        del node.children[rng.randrange(len(node.children))]
    elif kind == "dup" and node.children:
        i = rng.randrange(len(node.children))
        node.children.insert(i, copy.deepcopy(node.children[i]))
    elif kind == "swap" and node.children and len(node.children) > 1:
        i, j = rng.sample(range(len(node.children)), 2)
        node.children[i], node.children[j] = node.children[j], node.children[i]
    elif kind == "name":
        at = 2 if tbs.children[0].tag == 0xA0 else 1  # type: ignore[index]  # the algorithm
        which = rng.choice([at + 1, at + 3])  # issuer or subject
        tbs.children[which] = _load(rng.choice(other_names))  # type: ignore[index]
    elif kind == "alg":
        at = 2 if tbs.children[0].tag == 0xA0 else 1  # type: ignore[index]
        tbs.children[at] = _load(rng.choice(_ALG_IDS))  # type: ignore[index]
    elif kind == "version":
        first = tbs.children[0]  # type: ignore[index]
        if first.tag == 0xA0:
            if rng.random() < 0.5:
                del tbs.children[0]  # type: ignore[union-attr]
            else:
                first.children = [_Node(0x02, bytes((rng.choice([0, 1, 2, 3, 0x80]),)))]
        else:
            tbs.children.insert(0, _Node(0xA0, children=[_Node(0x02, b"\x02")]))  # type: ignore[union-attr]
    elif kind == "extra":
        node.extra = rng.choice([b"\x00", b"\x00\x00", b"\x05\x00", b"\x30\x00"])
    elif kind == "trunc" and node.children is None and node.content:
        node.content = node.content[:-1]
    elif kind == "rdnset":
        names = [(p, n) for p, n in nodes if n.tag == 0x31 and n.children]
        if names:
            path, rdn = rng.choice(names)
            donor = rng.choice([n for _, n in nodes if n.tag == 0x31 and n.children])
            rdn.children = rdn.children + copy.deepcopy(donor.children)  # type: ignore[operator]
            if rng.random() < 0.5:
                rdn.children.reverse()  # type: ignore[union-attr]
    return f"{kind}@{path}"


def _signed(tree: _Node, signer: ec.EllipticCurvePrivateKey | None) -> bytes:
    """The certificate with its tbs re-signed by ``signer`` (a key the parent owns), or with its
    old signature kept."""
    if signer is not None:
        sig = signer.sign(_dump(tree.children[0]), ec.ECDSA(hashes.SHA384()))  # type: ignore[index]
        tree.children[2] = _Node(0x03, b"\x00" + sig)  # type: ignore[index]
    return _dump(tree)


def _signature_variants(der: bytes) -> list[bytes]:
    """The certificate with its signature re-encoded the ways a parent can: high s, padded
    integers, trailing bytes, swapped r and s, unused bits."""
    tree = _load(der)
    bits = tree.children[2]  # type: ignore[index]
    r, s = decode_dss_signature(bits.content[1:])
    seq = _load(bits.content[1:])
    variants = [
        encode_dss_signature(r, _N384 - s),
        encode_dss_signature(s, r),
        bits.content[1:] + b"\x00",
        b"",
        b"\x30\x00",
    ]
    padded = copy.deepcopy(seq)
    padded.children[0].content = b"\x00" + padded.children[0].content  # type: ignore[index]
    variants.append(_dump(padded))
    longform = copy.deepcopy(seq)
    longform.lenform = "long"
    variants.append(_dump(longform))
    out = []
    for sig in variants:
        t = copy.deepcopy(tree)
        t.children[2] = _Node(0x03, b"\x00" + sig)  # type: ignore[index]
        out.append(_dump(t))
    t = copy.deepcopy(tree)
    t.children[2].content = b"\x01" + bits.content[1:]  # type: ignore[index]
    out.append(_dump(t))
    for alg in _ALG_IDS:  # the outer algorithm alone changed
        t = copy.deepcopy(tree)
        t.children[1] = _load(alg)  # type: ignore[index]
        out.append(_dump(t))
    return out


def _real_links() -> list[tuple[bytes, bytes]]:
    links = []
    for path in sorted(REAL.glob("*.cbor")):
        payload = cbor2.loads(cbor2.loads(path.read_bytes().removeprefix(b"\xd2"))[2])
        ders = [*payload["cabundle"], payload["certificate"]]
        links += [(ders[i + 1], ders[i]) for i in range(len(ders) - 1)]
    return links


def _foreign_issuers(issuer: bytes) -> list[bytes]:
    """The issuer with the same subject but another key: other curves, RSA, Ed25519."""
    old = x509.load_der_x509_certificate(issuer)
    keys = [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        ec.generate_private_key(ec.SECP256K1()).public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ]
    out = []
    for pub in keys:
        builder = (
            x509.CertificateBuilder()
            .subject_name(old.subject)
            .issuer_name(old.issuer)
            .public_key(pub)
            .serial_number(old.serial_number)
            .not_valid_before(old.not_valid_before_utc)
            .not_valid_after(old.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        )
        out.append(
            builder.sign(cf.key("test-root.nitro-enclaves"), hashes.SHA384()).public_bytes(
                serialization.Encoding.DER
            )
        )
    return out


def _expected_slices(der: bytes) -> tuple[bytes, bytes, bool]:
    """(issuer, subject, inner == outer algorithm) by an independent reading of the tree."""
    tree = _load(der)
    tbs = tree.children[0].children  # type: ignore[index, union-attr]
    at = 1 if tbs[0].tag == 0xA0 else 0
    return (
        _dump(tbs[at + 2]),
        _dump(tbs[at + 4]),
        _dump(tbs[at + 1])
        == _dump(
            tree.children[1]  # type: ignore[index]
        ),
    )


def test_link_check_agrees_with_verify_directly_issued_by_on_structured_mutations() -> None:
    """Differential fuzz, bounded in time: re-encoded, re-tagged, re-ordered, re-named and
    re-signed children and issuers, factory and real chains; the new link check must decide
    exactly as verify_directly_issued_by, and raise nothing but ChainError."""
    rng = random.Random(5280)
    ders = cf.chain().ders  # [root, regional, zonal, instance, leaf]
    signers = [cf.key(spec.cn) for spec in cf.default_chain()]
    attacker = cf.key("parent-owned")
    names = [_expected_slices(d)[1] for d in ders] + [_expected_slices(d)[0] for d in ders]
    real = _real_links()
    checked = accepted = 0

    def compare(child: bytes, issuer: bytes, what: str) -> None:
        nonlocal checked, accepted
        validator = ChainValidator(root_der=ders[0])
        old = _old_accepts(child, issuer)
        new = _new_accepts(validator, child, issuer)
        assert new is old, (what, child.hex(), issuer.hex())
        if new:  # a second time from the link cache: the same answer
            assert _new_accepts(validator, child, issuer)
        try:
            cert = x509.load_der_x509_certificate(child)
        except Exception:  # ValueError, InvalidVersion: cryptography refuses it
            pass
        else:  # the bytes the signature is checked over are the ones cryptography parsed
            assert chain_mod._tbs(child) == cert.tbs_certificate_bytes, what
            assert chain_mod._names(child) == _expected_slices(child), what
        checked += 1
        accepted += new

    # Fixed cases first: every signature re-encoding, every foreign issuer key.
    for i in range(1, 5):
        for variant in _signature_variants(ders[i]):
            compare(variant, ders[i - 1], f"signature variant of {i}")
        for foreign in _foreign_issuers(ders[i - 1]):
            compare(ders[i], foreign, f"foreign issuer key for {i}")
    for child, issuer in real:
        compare(child, issuer, "real link")
        for variant in _signature_variants(child):
            compare(variant, issuer, "real signature variant")
    assert accepted >= len(real) + 4  # the genuine links and the high-s copies pass

    deadline = time.monotonic() + _FUZZ_SECONDS
    while time.monotonic() < deadline:
        i = rng.randrange(1, 5)
        side = rng.random()
        if side < 0.7:  # the child edited, then signed by its issuer, the parent, or not at all
            tree = _load(ders[i])
            what = _mutate_tree(rng, tree, names)
            signer = rng.choice([signers[i - 1], signers[i - 1], attacker, None])
            compare(_signed(tree, signer), ders[i - 1], f"child {i} {what}")
        elif side < 0.9:  # the issuer edited (its own signature is not this link's concern)
            tree = _load(ders[i - 1])
            what = _mutate_tree(rng, tree, names)
            compare(ders[i], _signed(tree, None), f"issuer of {i} {what}")
        else:  # a real link, the child edited (AWS's signature kept) or a real issuer swapped
            child, issuer = rng.choice(real)
            if rng.random() < 0.5:
                tree = _load(child)
                what = _mutate_tree(rng, tree, names)
                compare(_signed(tree, rng.choice([None, attacker])), issuer, f"real {what}")
            else:
                compare(child, rng.choice(real)[1], "real issuer swapped")
    assert checked > 1000, checked


# --- the fallback when the DER slicer cannot read a layout -------------------------------------


def _reissued_zonal(**edits: bytes) -> bytes:
    """The factory's zonal CA with tbs edits (issuer=..., inner_alg=...), signed by the genuine
    regional key: what a CA (or a parent owning a CA key under a custom root) could produce."""
    ders = cf.chain().ders
    tree = _load(ders[2])
    tbs = tree.children[0].children  # type: ignore[index, union-attr]
    if "issuer" in edits:
        tbs[3] = _load(edits["issuer"])
    if "inner_alg" in edits:
        tbs[2] = _load(edits["inner_alg"])
    return _signed(tree, cf.key("regional.test.aws.nitro-enclaves"))


def _with_string_type(name_der: bytes, tag: int) -> bytes:
    """The Name with every attribute value's string type replaced by ``tag`` (same text)."""
    tree = _load(name_der)
    for _, node in _walk(tree):
        if node.tag in _STRING_TAGS:
            node.tag = tag
    return _dump(tree)


@pytest.fixture
def slicer_blind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slicer reads no certificate (a layout it does not know, say from a future
    cryptography that parses more): every link takes the fallback path."""
    monkeypatch.setattr(chain_mod, "_names", lambda der: None)


def test_fallback_refuses_an_issuer_name_equal_only_as_python_objects(slicer_blind: None) -> None:
    # x509.Name equality ignores the string type (PrintableString "US" == UTF8String "US");
    # verify_directly_issued_by compares the encoded names and refuses. The fallback must too.
    ders = cf.chain().ders
    regional_subject = _expected_slices(ders[1])[1]
    renamed = _with_string_type(regional_subject, 0x0C)
    assert renamed != regional_subject
    child = _reissued_zonal(issuer=renamed)
    assert (
        x509.load_der_x509_certificate(child).issuer
        == x509.load_der_x509_certificate(ders[1]).subject
    )  # equal as Python objects
    assert not _old_accepts(child, ders[1])
    validator = ChainValidator(root_der=ders[0])
    with pytest.raises(ChainError, match=r"names issuer|subject does not match"):
        validator._check_link(CertInfo(child), CertInfo(ders[1]), 1, 4)


def test_fallback_still_refuses_another_inner_algorithm(slicer_blind: None) -> None:
    ders = cf.chain().ders
    child = _reissued_zonal(inner_alg=_ALG_IDS[1])  # ecdsa-with-SHA256 inside, SHA384 outside
    assert not _old_accepts(child, ders[1])
    info = CertInfo(child)
    assert info.sig_problem is None
    validator = ChainValidator(root_der=ders[0])
    with pytest.raises(ChainError, match="not signed by"):
        validator._check_link(info, CertInfo(ders[1]), 1, 4)


def test_fallback_accepts_the_genuine_links(slicer_blind: None) -> None:
    ders = cf.chain().ders
    validator = ChainValidator(root_der=ders[0])
    validator.validate(ders[4], tuple(ders[:4]), cf.T0.timestamp())
    for child, issuer in _real_links():
        validator._check_link(CertInfo(child), CertInfo(issuer), 1, 4)


def test_the_slicer_never_raises_on_any_prefix_or_garbage() -> None:
    # It runs on DER cryptography parsed, but an IndexError from a misread would escape the
    # verifier as a traceback: on any bytes it returns slices or None (the fallback's signal).
    rng = random.Random(4)
    samples = [d for pair in _real_links()[:4] for d in pair] + cf.chain().ders
    for der in samples:
        for cut in range(0, len(der), 7):
            result = chain_mod._names(der[:cut])
            assert result is None or isinstance(result, tuple)
        for _ in range(200):
            junk = bytearray(der)
            for _ in range(3):
                junk[rng.randrange(len(junk))] = rng.randrange(256)
            result = chain_mod._names(bytes(junk))
            assert result is None or isinstance(result, tuple)


def _old_link(
    self: ChainValidator, child: CertInfo, issuer: CertInfo, depth: int, top: int
) -> None:
    try:
        child.cert.verify_directly_issued_by(issuer.cert)
    except Exception:
        raise ChainError("refused by verify_directly_issued_by") from None


def test_verifier_decides_as_before_on_documents_with_edited_certificates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whole documents, signed by the leaf key the parent holds, with one certificate of the
    path edited (and re-signed by its issuer's key, the parent's, or not at all): Verifier.verify
    raises the same error class as with verify_directly_issued_by, and nothing but the project's
    errors escapes."""
    from nitro_attest import Verifier

    rng = random.Random(384)
    base = cf.chain()
    ders = base.ders
    signers = [cf.key(spec.cn) for spec in cf.default_chain()]
    names = [_expected_slices(d)[1] for d in ders] + [_expected_slices(d)[0] for d in ders]
    at = cf.T0
    cases = []
    for _ in range(800):
        i = rng.randrange(1, 5)
        tree = _load(ders[i])
        _mutate_tree(rng, tree, names)
        edited = _signed(tree, rng.choice([signers[i - 1], cf.key("parent-owned"), None]))
        path = [*ders[:i], edited, *ders[i + 1 :]]
        cases.append(base.document(certificate=path[-1], cabundle=path[:-1]))

    def outcomes() -> list[str]:
        verifier = Verifier(root_pem=base.root_pem)
        out = []
        for doc in cases:
            try:
                verifier.verify(doc, at=at)
                out.append("ok")
            except NitroAttestError as exc:
                out.append(type(exc).__name__)
        return out

    new = outcomes()
    monkeypatch.setattr(ChainValidator, "_check_link", _old_link)
    old = outcomes()
    assert new == old
    assert new.count("ok") > 50 and new.count("ChainError") > 50, new
