"""Trust anchors and certificate-chain validation for Nitro attestation documents.

Genuine leaves carry no Authority Key Identifier and older instance CAs no key identifiers at all,
so a strict RFC 5280 path builder rejects every real document. The chain is fixed instead:
leaf <- cabundle[-1] <- ... <- cabundle[1] <- cabundle[0] == the pinned root, each link checked by
issuer/subject name and signature, with basicConstraints, keyUsage and pathLen checked here.

Parsed certificates and verified links are cached by DER bytes: a signature verified once stays
verified, so documents that share intermediates (all from one instance do) cost one ECDSA check.
Validity periods are still checked on every call, against the caller's time; a whole path that
validated is remembered with the window in which all its certificates are valid.
"""

from __future__ import annotations

import functools
import hashlib
from _thread import allocate_lock  # threading's Lock, without importing threading
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from nitro_attest.errors import ChainError, ExpiredError, MalformedDocumentError, TrustRootError

AWS_ROOT_G1_URL = "https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip"
AWS_ROOT_G1_ZIP_SHA256 = "8cf60e2b2efca96c6a9e71e851d00c1b6991cc09eadbe64a6a1d1b1eb9faff7c"
AWS_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
_AWS_ROOT_RESOURCE = "aws_nitro_root_g1.pem"
_MAX_ROOT_PEM = 64 * 1024
_CACHE_LIMIT = 4096
# The bytes the remembered paths may hold (keys are whole bundles): a real path is about 3.5 KB,
# but the parent can mint any number of distinct valid ones from one genuine document (the root
# repeated above the regional CA, ECDSA-malleated copies of a certificate), each up to a whole
# document, so the entry count alone would let it pin 4096 x 16 KiB.
_PATH_BYTES = 2 * 1024 * 1024


def fingerprint(der: bytes) -> str:
    """The SHA-256 of a DER certificate, lower-case hex (how roots are named and pinned)."""
    return hashlib.sha256(der).hexdigest()


@functools.cache
def aws_root_der() -> bytes:
    """The embedded AWS Nitro root G1 as DER, after checking its pinned fingerprint."""
    # A plain file read: importlib.resources costs more to import than the read itself.
    pem = (Path(__file__).parent / "roots" / _AWS_ROOT_RESOURCE).read_bytes()
    der = root_der_from_pem(pem)
    if fingerprint(der) != AWS_ROOT_G1_SHA256:
        raise TrustRootError(
            f"embedded AWS root fingerprint is {fingerprint(der)}, expected {AWS_ROOT_G1_SHA256}; "
            "the installation is damaged"
        )
    return der


def root_der_from_pem(pem: bytes) -> bytes:
    """Exactly one PEM certificate, returned as DER; a CA certificate is required."""
    if len(pem) > _MAX_ROOT_PEM:
        raise TrustRootError(f"root PEM is larger than {_MAX_ROOT_PEM} bytes")
    count = pem.count(b"-----BEGIN CERTIFICATE-----")
    if count != 1:
        raise TrustRootError(f"root PEM must hold exactly one certificate, found {count}")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise TrustRootError(f"root PEM is not a valid certificate: {exc}") from None
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        raise TrustRootError("root certificate has no basicConstraints: it is not a CA") from None
    if not bc.ca:
        raise TrustRootError("root certificate is not a CA (basicConstraints CA=false)")
    return cert.public_bytes(serialization.Encoding.DER)


# Bound once: CertInfo reads them for every extension of every certificate.
_BASIC_CONSTRAINTS = x509.BasicConstraints
_KEY_USAGE = x509.KeyUsage
_ECDSA_WITH_SHA384 = SignatureAlgorithmOID.ECDSA_WITH_SHA384
_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())  # holds no state: one for every link


class CertInfo:
    """A parsed certificate and the facts the chain check needs, computed once per DER.

    Names and keys are decoded lazily: building Python Name objects costs more than the rest
    of the parse, and the happy path needs neither (the link check compares names itself).
    """

    __slots__ = (
        "_key",
        "_key_is_p384",
        "_label",
        "_names",
        "ca_problem",
        "cert",
        "der",
        "leaf_problem",
        "not_after",
        "not_before",
        "path_len",
        "sig_problem",
    )

    def __init__(self, der: bytes) -> None:
        try:
            cert = x509.load_der_x509_certificate(der)
            not_before = cert.not_valid_before_utc.timestamp()
            not_after = cert.not_valid_after_utc.timestamp()
            extensions = cert.extensions
            sig_oid = cert.signature_algorithm_oid
        except Exception as exc:  # untrusted DER: cryptography raises several unrelated types
            raise MalformedDocumentError(f"certificate is not valid DER X.509: {exc}") from None
        self.der = der
        self.cert = cert
        self.not_before = not_before
        self.not_after = not_after
        self._key: ec.EllipticCurvePublicKey | bool | None = False  # False: not loaded yet
        self._key_is_p384: bool | None = None  # None: not decided yet
        self._label: str | None = None
        self._names: tuple[bytes, bytes, bool] | bool | None = False  # False: not read yet

        basic: x509.BasicConstraints | None = None
        basic_critical = False
        usage: x509.KeyUsage | None = None
        unhandled: list[str] = []
        for ext in extensions:
            # Exact types, not isinstance: cryptography builds these very classes from their OIDs,
            # and an isinstance check against its abstract base costs more than the rest here.
            value = ext.value
            ext_type = type(value)
            if ext_type is _BASIC_CONSTRAINTS:
                basic, basic_critical = value, ext.critical
            elif ext_type is _KEY_USAGE:
                usage = value
            elif ext.critical:  # any critical extension but those two is not understood here
                unhandled.append(ext.oid.dotted_string)
        self.path_len = basic.path_length if basic is not None else None

        common: str | None = None
        if unhandled:
            common = f"unsupported critical extension(s) {', '.join(unhandled)}"
        # Checked for every certificate but the pinned root, whose own signature is never used.
        self.sig_problem: str | None = None
        if sig_oid != _ECDSA_WITH_SHA384:
            self.sig_problem = f"signed with {sig_oid.dotted_string}, not ecdsa-with-SHA384"

        ca_problem = common
        if ca_problem is None:
            if basic is None or not basic.ca:
                ca_problem = "basicConstraints CA flag is not set"
            elif not basic_critical:
                ca_problem = "basicConstraints is not marked critical"
            elif usage is None or not usage.key_cert_sign:
                ca_problem = "keyUsage lacks keyCertSign"
        self.ca_problem = ca_problem

        leaf_problem = common
        if leaf_problem is None:
            if basic is not None and (basic.ca or basic.path_length is not None):
                leaf_problem = "leaf must not be a CA nor carry a pathLen"
            elif usage is None or not usage.digital_signature:
                leaf_problem = "keyUsage lacks digitalSignature"
        self.leaf_problem = leaf_problem

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey | None:
        """The EC public key, or None for any other key type."""
        if self._key is False:
            try:
                key = self.cert.public_key()
            except Exception:  # an unsupported key type is simply not an EC key
                key = None
            self._key = key if isinstance(key, ec.EllipticCurvePublicKey) else None
        return self._key if isinstance(self._key, ec.EllipticCurvePublicKey) else None

    @property
    def p384_key(self) -> ec.EllipticCurvePublicKey | None:
        """The public key if it is ECDSA P-384 (what ES384 needs), else None; decided once per
        certificate, not once per document (``key.curve`` builds a new object on every read)."""
        key = self.public_key
        if self._key_is_p384 is None:
            self._key_is_p384 = key is not None and isinstance(key.curve, ec.SECP384R1)
        return key if self._key_is_p384 else None

    @property
    def names(self) -> tuple[bytes, bytes, bool] | None:
        """(issuer, subject, same_algorithm), read once (see ``_names``)."""
        if self._names is False:
            self._names = _names(self.der)
        return self._names if isinstance(self._names, tuple) else None

    @property
    def label(self) -> str:
        """The certificate's subject (RFC 4514), read once; a placeholder if it cannot be read."""
        if self._label is None:
            try:
                self._label = self.cert.subject.rfc4514_string() or "(empty subject)"
            except Exception:
                self._label = "(undecodable subject)"
        return self._label


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name(depth: int, top: int) -> str:
    """How the document names the certificate ``depth`` steps above the leaf (``top`` is the
    length of its cabundle); built only for an error message."""
    return "leaf certificate" if depth == 0 else f"cabundle[{top - depth}]"


def _names_differ(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        return bool(child.issuer != issuer.subject)
    except Exception:
        return True


def _issuer_label(cert: x509.Certificate) -> str:
    try:
        return cert.issuer.rfc4514_string()
    except Exception:
        return "(undecodable issuer)"


def _tbs(der: bytes) -> bytes:
    """The tbsCertificate of a certificate cryptography already parsed (so well-formed DER):
    sliced from the bytes, because cryptography's tbs_certificate_bytes re-encodes it (~5 us)."""
    at = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)  # past the outer SEQUENCE's head
    size = der[at + 1]
    if size & 0x80:
        width = size & 0x7F
        size = 2 + width + int.from_bytes(der[at + 2 : at + 2 + width], "big")
    else:
        size += 2
    return der[at : at + size]


def _element(der: bytes, at: int) -> int:
    """Where the DER element (one-byte tag) starting at ``at`` ends."""
    size = der[at + 1]
    if size & 0x80:
        width = size & 0x7F
        return at + 2 + width + int.from_bytes(der[at + 2 : at + 2 + width], "big")
    return at + 2 + size


def _names(der: bytes) -> tuple[bytes, bytes, bool] | None:
    """(issuer, subject, same_algorithm) of a certificate cryptography already parsed: the two
    names as their DER bytes, and whether the tbsCertificate's signature algorithm is the
    certificate's (RFC 5280 4.1.1.2, as verify_directly_issued_by checks it); None if the
    layout is not the one expected (the link check then falls back to cryptography's own).
    Comparing these bytes is what linking needs: DER is canonical, so equal names are equal
    bytes; reading them as x509.Name objects costs ~6 us each on a certificate seen for the
    first time."""
    try:
        return _read_names(der)
    except IndexError:  # a layout misread runs off the end: not one this reader knows
        return None


def _read_names(der: bytes) -> tuple[bytes, bytes, bool] | None:
    tbs = _tbs(der)
    at = 2 + (tbs[1] & 0x7F if tbs[1] & 0x80 else 0)  # past the tbsCertificate's head
    if tbs[at] == 0xA0:  # [0] version
        at = _element(tbs, at)
    if tbs[at] != 0x02:  # serialNumber
        return None
    at = _element(tbs, at)
    if tbs[at] != 0x30:  # signature AlgorithmIdentifier
        return None
    inner_end = _element(tbs, at)
    outer_at = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0) + len(tbs)
    same_algorithm = tbs[at:inner_end] == der[outer_at : _element(der, outer_at)]
    at = inner_end
    issuer_end = _element(tbs, at)
    if tbs[at] != 0x30 or tbs[issuer_end] != 0x30:  # issuer Name, validity
        return None
    subject_at = _element(tbs, issuer_end)
    if tbs[subject_at] != 0x30:  # subject Name
        return None
    return tbs[at:issuer_end], tbs[subject_at : _element(tbs, subject_at)], same_algorithm


def _check_link_by_cryptography(
    child: CertInfo, issuer: CertInfo, child_name: str, issuer_name: str
) -> None:
    """verify_directly_issued_by (inner/outer algorithm, encoded names, signature), as every
    link was checked before the DER slicer; ChainError on any failure."""
    try:
        child.cert.verify_directly_issued_by(issuer.cert)
    except Exception as exc:  # InvalidSignature, ValueError, UnsupportedAlgorithm, ...
        if _names_differ(child.cert, issuer.cert):
            raise ChainError(
                f"{child_name} names issuer {_issuer_label(child.cert)}, but the "
                f"next certificate up ({issuer_name}) is {issuer.label}"
            ) from None
        detail = str(exc) or "signature does not verify"
        raise ChainError(
            f"{child_name} ({child.label}) is not signed by {issuer_name}: {detail}"
        ) from None


def _refuse_repeated_certificates(chain: list[CertInfo], top: int) -> None:
    """No certificate appears twice on the path, not even with its signature re-encoded. The
    pinned root repeated above the regional CA, or a copy of it whose signature has s replaced by
    n - s (ECDSA malleability), still links (it issued itself), but lets the parent mint any
    number of distinct valid paths from one genuine document; AWS's chain never repeats one.
    Run only on a path not yet remembered; the leaf cannot be a CA, so only CAs are compared."""
    seen: set[bytes] = set()
    for depth in range(1, len(chain)):
        tbs = _tbs(chain[depth].der)
        if tbs in seen:
            name = _name(depth, top) if depth < len(chain) - 1 else "the trusted root"
            raise ChainError(
                f"{name} ({chain[depth].label}) appears twice on the path (the same "
                "certificate, however its signature is encoded, may appear once)"
            )
        seen.add(tbs)


def _immutable_bundle(cabundle: tuple[object, ...]) -> tuple[bytes, ...]:
    copies = []
    for i, der in enumerate(cabundle):
        if not isinstance(der, (bytes, bytearray, memoryview)):
            raise ChainError(f"cabundle[{i}] must be bytes, got {type(der).__name__}")
        copies.append(bytes(der))
    return tuple(copies)


class Anchor(NamedTuple):  # not a dataclass: one costs about 1 ms to define on Python 3.11
    """A pinned root, parsed once per process: its facts never change."""

    info: CertInfo
    sha256: str
    label: str


@functools.lru_cache(maxsize=16)
def _anchor(der: bytes) -> Anchor:
    info = CertInfo(der)
    return Anchor(info, fingerprint(der), info.label)


class ChainValidator:
    """Validates leaf + cabundle against one pinned root; caches parsed certs and verified links."""

    def __init__(self, root_der: bytes) -> None:
        self.root_der = root_der
        self.root = _anchor(root_der)
        self.root_sha256 = self.root.sha256
        self._certs: dict[bytes, CertInfo] = {root_der: self.root.info}
        self._links: set[tuple[bytes, bytes]] = set()
        # Whole paths that validated: leaf -> (its cabundle, the window in which every
        # certificate on the path is valid). Every other check depends on those bytes and the
        # root alone, so a path seen before costs one lookup (documents from one enclave share
        # leaf and bundle). Keyed by the leaf, whose hash the leaf_key lookup already computed,
        # and the bundle compared byte for byte: hashing the bundle (2.7 KB) cost more.
        self._paths: dict[bytes, tuple[tuple[bytes, ...], float, float]] = {}
        self._path_bytes = 0  # what _paths holds (leaves and bundles), bounded by _PATH_BYTES
        self._lock = allocate_lock()

    def cert_info(self, der: bytes) -> CertInfo:
        """The parsed certificate for ``der``, from the cache or parsed once and kept."""
        info = self._certs.get(der)
        if info is None:
            info = CertInfo(der)
            with self._lock:
                if len(self._certs) >= _CACHE_LIMIT:
                    self._certs.clear()
                self._certs[der] = info
        return info

    def leaf_key(self, leaf_der: bytes) -> ec.EllipticCurvePublicKey:
        """The public key that must have signed the document; raises ChainError if unusable."""
        leaf = self.cert_info(leaf_der)
        if leaf.leaf_problem is not None:
            raise ChainError(f"leaf certificate {leaf.label}: {leaf.leaf_problem}")
        key = leaf.p384_key
        if key is None:
            raise ChainError(f"leaf certificate {leaf.label}: key is not ECDSA P-384 (ES384)")
        return key

    def validate(self, leaf_der: bytes, cabundle: tuple[bytes, ...], at: float) -> None:
        """Raise ChainError (ExpiredError for time) unless leaf chains to the root at ``at``."""
        cabundle = tuple(cabundle)
        known = self._paths.get(leaf_der)
        if known is not None and known[0] == cabundle and known[1] <= at <= known[2]:
            return
        if not cabundle:  # parse_document refuses it first; a direct caller gets a ChainError
            raise ChainError("cabundle is empty: no path to the trusted root")
        # What is validated and remembered is an immutable copy, never the caller's objects: a
        # bytearray (or a view of one) rewritten after this call would otherwise make a later
        # cache hit vouch for bytes that were never validated. Documents carry bytes already.
        if not all(type(der) is bytes for der in cabundle):
            cabundle = _immutable_bundle(cabundle)
        if cabundle[0] != self.root_der:
            first = self._label_or_hex(cabundle[0])
            raise ChainError(
                f"cabundle[0] is not the trusted root: got {first} "
                f"(sha256 {fingerprint(cabundle[0])[:16]}...), expected {self.root.label} "
                f"(sha256 {self.root_sha256[:16]}...)"
            )
        top = len(cabundle)
        chain = [self.cert_info(leaf_der)] + [self.cert_info(c) for c in reversed(cabundle[1:])]
        chain.append(self.root.info)

        leaf = chain[0]
        if leaf.leaf_problem is not None:
            raise ChainError(f"leaf certificate {leaf.label}: {leaf.leaf_problem}")
        for depth, info in enumerate(chain[:-1]):
            if info.sig_problem is not None:
                raise ChainError(f"{_name(depth, top)} ({info.label}) is {info.sig_problem}")
        for depth, info in enumerate(chain):
            if not info.not_before <= at <= info.not_after:
                raise ExpiredError(
                    f"{_name(depth, top)} ({info.label}) is not valid at {_utc(at)}: "
                    f"valid from {_utc(info.not_before)} to {_utc(info.not_after)}"
                )
            if depth == 0:
                continue
            if info.ca_problem is not None:
                raise ChainError(
                    f"{_name(depth, top)} ({info.label}) cannot act as a CA: {info.ca_problem}"
                )
            # depth - 1 CA certificates sit below this one on the path to the leaf.
            if info.path_len is not None and info.path_len < depth - 1:
                raise ChainError(
                    f"{_name(depth, top)} ({info.label}) has pathLen {info.path_len} but "
                    f"{depth - 1} CA certificate(s) below it"
                )
        for depth in range(len(chain) - 1):
            self._check_link(chain[depth], chain[depth + 1], depth, top)
        _refuse_repeated_certificates(chain, top)
        valid_from = max(info.not_before for info in chain)
        valid_to = min(info.not_after for info in chain)
        cost = len(leaf_der) + sum(map(len, cabundle))
        with self._lock:
            old = self._paths.pop(leaf_der, None)
            if old is not None:  # the same leaf with another bundle: the newest is kept
                self._path_bytes -= len(leaf_der) + sum(map(len, old[0]))
            if len(self._paths) >= _CACHE_LIMIT or self._path_bytes + cost > _PATH_BYTES:
                self._paths.clear()
                self._path_bytes = 0
            if cost <= _PATH_BYTES:
                self._paths[leaf_der] = (cabundle, valid_from, valid_to)
                self._path_bytes += cost

    def _check_link(self, child: CertInfo, issuer: CertInfo, depth: int, top: int) -> None:
        key = (issuer.der, child.der)
        if key in self._links:
            return
        # What verify_directly_issued_by checks (issuer name == issuer's subject, then the
        # signature), done here with the issuer's key parsed once per certificate and the signed
        # bytes as they stand in the DER: verify_directly_issued_by parses the issuer's key again
        # and re-encodes the tbsCertificate on every call, ~17 us a link (bench/verify.py, cold).
        # The child's algorithm is ecdsa-with-SHA384, checked in validate() before any link.
        child_name, issuer_name = _name(depth, top), _name(depth + 1, top)
        child_names, issuer_names = child.names, issuer.names
        if child_names is None or issuer_names is None:
            # A layout the slicer does not read: cryptography's own check, whole. Not x509.Name
            # equality, which ignores the string type, and not without the inner/outer check.
            _check_link_by_cryptography(child, issuer, child_name, issuer_name)
        else:
            if not child_names[2]:
                raise ChainError(
                    f"{child_name} ({child.label}) is not signed by {issuer_name}: its "
                    "tbsCertificate names another signature algorithm than the certificate"
                )
            if child_names[0] != issuer_names[1]:
                raise ChainError(
                    f"{child_name} names issuer {_issuer_label(child.cert)}, but the "
                    f"next certificate up ({issuer_name}) is {issuer.label}"
                )
            issuer_key = issuer.public_key
            if issuer_key is None:
                raise ChainError(
                    f"{child_name} ({child.label}) is not signed by {issuer_name}: "
                    f"{issuer_name} does not hold an EC key"
                )
            try:
                issuer_key.verify(child.cert.signature, _tbs(child.der), _ECDSA_SHA384)
            except Exception as exc:  # InvalidSignature, ValueError, ...
                detail = str(exc) or "signature does not verify"
                raise ChainError(
                    f"{child_name} ({child.label}) is not signed by {issuer_name}: {detail}"
                ) from None
        with self._lock:
            if len(self._links) >= _CACHE_LIMIT:
                self._links.clear()
            self._links.add(key)

    def _label_or_hex(self, der: bytes) -> str:
        try:
            return self.cert_info(der).label
        except MalformedDocumentError:
            return "an undecodable certificate"


__all__ = [
    "AWS_ROOT_G1_SHA256",
    "AWS_ROOT_G1_URL",
    "AWS_ROOT_G1_ZIP_SHA256",
    "CertInfo",
    "ChainValidator",
    "aws_root_der",
    "fingerprint",
    "root_der_from_pem",
]
