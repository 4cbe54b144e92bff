"""kms.envelope: KMS's CiphertextForRecipient opened; OpenSSL's envelopes; hostile envelopes.

OpenSSL (a real component, run here) makes envelopes with ``cms -encrypt``, streamed and not;
``seal_envelope`` makes KMS's own shape. Malformed bytes must give a FormatError, a well-formed
envelope the key cannot open one EnvelopeKeyError whatever failed inside (no padding oracle).
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nitro_attest import FormatError, NitroAttestError, VerificationError
from nitro_attest.codec import ber
from nitro_attest.kms import envelope
from nitro_attest.kms.envelope import (
    EnvelopeFormatError,
    EnvelopeKeyError,
    open_envelope,
    parse_envelope,
    seal_envelope,
)
from tests.paths import KMS_VECTORS

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
REAL = ("kms-response-chunked.ber", "kms-response-primitive.ber")
OAEP_FLAGS = ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
              "-keyopt", "rsa_mgf1_md:sha256"]


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(key: rsa.RSAPrivateKey, path: Path) -> Path:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _openssl_encrypt(
    tmp_path: Path, plaintext: bytes, certs: list[Path], *extra: str, oaep: bool = True,
    cipher: str = "-aes256",
) -> bytes:
    src = tmp_path / "plain.bin"
    out = tmp_path / "env.der"
    src.write_bytes(plaintext)
    recips = [arg for cert in certs for arg in ("-recip", str(cert))]
    cmd = [OPENSSL or "openssl", "cms", "-encrypt", "-binary", "-in", str(src), *recips,
           *(OAEP_FLAGS if oaep else []), cipher, "-outform", "DER", "-out", str(out), *extra]
    subprocess.run(cmd, check=True, capture_output=True)
    return out.read_bytes()


@needs_openssl
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("keyid", [True, False])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 32, 4096, 5000])
def test_openssl_envelopes_open(
    tmp_path: Path, key: rsa.RSAPrivateKey, stream: bool, keyid: bool, size: int
) -> None:
    cert = _cert(key, tmp_path / "c.pem")
    plaintext = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    extra = (["-stream"] if stream else []) + (["-keyid"] if keyid else [])
    data = _openssl_encrypt(tmp_path, plaintext, [cert], *extra)
    assert (data[1] == 0x80) == stream  # the streamed form really is indefinite-length BER
    assert open_envelope(data, key) == plaintext


@pytest.mark.parametrize("name", REAL)
def test_real_responses_parse_to_the_expected_parts(name: str) -> None:
    want = json.loads((KMS_VECTORS / "expected.json").read_text())[name]
    encrypted_key, iv, content = parse_envelope((KMS_VECTORS / name).read_bytes())
    assert (encrypted_key.hex(), iv.hex(), content.hex()) == (
        want["encrypted_key"], want["iv"], want["ciphertext"])


@pytest.mark.parametrize("name", REAL)
def test_a_real_response_to_someone_else_is_a_key_error(name: str, key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(EnvelopeKeyError, match="does not open with this key"):
        open_envelope((KMS_VECTORS / name).read_bytes(), key)


@pytest.mark.parametrize("chunk", [None, 1, 16, 1000])
def test_sealed_kms_shape_opens_and_asn1crypto_reads_it(
    key: rsa.RSAPrivateKey, chunk: int | None
) -> None:
    plaintext = b"k" * 4096
    data = seal_envelope(plaintext, key.public_key(), chunk=chunk)
    assert data.startswith(b"\x30\x80")
    assert open_envelope(data, key) == plaintext
    info = asn1_cms.ContentInfo.load(data)
    eci = info["content"]["encrypted_content_info"]
    assert len(eci["encrypted_content"].native) == 4096 + 16
    ktri = info["content"]["recipient_infos"][0].chosen
    assert ktri["rid"].name == "subject_key_identifier"
    assert ktri["key_encryption_algorithm"]["parameters"]["hash_algorithm"]["algorithm"].native \
        == "sha256"


def test_the_same_shape_as_kms(key: rsa.RSAPrivateKey) -> None:
    """seal_envelope's skeleton is the real response's, item for item, lengths aside."""
    real = ber.decode((KMS_VECTORS / "kms-response-primitive.ber").read_bytes())
    ours = ber.decode(seal_envelope(b"x" * 10, key.public_key()))

    def skeleton(item: ber.Tlv) -> object:
        return (item.cls, item.tag, item.constructed, item.indefinite,
                item.content if item.is_(ber.OBJECT_IDENTIFIER) else len(item.content) > 0,
                tuple(skeleton(c) for c in item.children))

    assert skeleton(ours) == skeleton(real)


def test_wrong_key_and_bad_padding_give_the_same_error(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    good = seal_envelope(b"short", key.public_key())
    with pytest.raises(EnvelopeKeyError) as wrong_key:
        open_envelope(good, other_key)
    # Same content key and IV, but the one block decrypts to bytes that are not PKCS#7 padding.
    encrypted_key, iv, content = parse_envelope(good)
    content_key = key.decrypt(encrypted_key, envelope._OAEP)
    enc = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    bad_block = enc.update(b"\x00" * 16) + enc.finalize()
    assert good.count(content) == 1
    bad_padding = good.replace(content, bad_block)
    with pytest.raises(EnvelopeKeyError) as padding_error:
        open_envelope(bad_padding, key)
    # An altered encrypted key (OAEP fails) as well.
    bad_oaep = good.replace(encrypted_key, encrypted_key[:-1] + bytes([encrypted_key[-1] ^ 1]))
    with pytest.raises(EnvelopeKeyError) as oaep_error:
        open_envelope(bad_oaep, key)
    messages = {str(e.value) for e in (wrong_key, padding_error, oaep_error)}
    assert len(messages) == 1
    assert type(wrong_key.value) is type(padding_error.value) is type(oaep_error.value)
    assert not isinstance(wrong_key.value, FormatError)
    assert isinstance(wrong_key.value, VerificationError)


@needs_openssl
@pytest.mark.parametrize(
    ("what", "words"),
    [
        ("two-recipients", "exactly one recipient"),
        ("pkcs1v15", "rsaesOaep"),
        ("oaep-sha1", "SHA-256 and MGF1-SHA-256 required"),
        ("aes128", "aes256-CBC"),
    ],
)
def test_other_algorithms_and_recipients_are_format_errors(
    tmp_path: Path, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, what: str, words: str,
) -> None:
    cert = _cert(key, tmp_path / "c.pem")
    if what == "two-recipients":
        data = _openssl_encrypt(tmp_path, b"x", [cert, _cert(other_key, tmp_path / "o.pem")])
    elif what == "pkcs1v15":
        data = _openssl_encrypt(tmp_path, b"x", [cert], oaep=False)
    elif what == "oaep-sha1":
        data = _openssl_encrypt(tmp_path, b"x", [cert], "-keyopt", "rsa_padding_mode:oaep",
                                oaep=False)
    else:
        data = _openssl_encrypt(tmp_path, b"x", [cert], cipher="-aes128")
    with pytest.raises(EnvelopeFormatError, match=words):
        open_envelope(data, key)


def test_size_cap_before_parsing(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(EnvelopeFormatError, match="more than the"):
        open_envelope(b"\x30\x80" + b"\x00" * envelope.MAX_ENVELOPE_BYTES, key)


def test_a_short_iv_and_partial_blocks_are_format_errors(key: rsa.RSAPrivateKey) -> None:
    good = seal_envelope(b"x", key.public_key())
    _, iv, content = parse_envelope(good)
    aes = ber.encode_oid(envelope.AES256_CBC)
    short_iv = good.replace(b"\x30\x1d" + aes + b"\x04\x10" + iv,
                            b"\x30\x15" + aes + b"\x04\x08" + iv[:8])
    assert short_iv != good
    with pytest.raises(EnvelopeFormatError, match="IV of 8 bytes"):
        open_envelope(short_iv, key)
    partial = good.replace(b"\x80\x10" + content, b"\x80\x0f" + content[:15])
    assert partial != good
    with pytest.raises(EnvelopeFormatError, match="not whole AES blocks"):
        open_envelope(partial, key)


def test_not_an_rsa_key_is_a_usage_error() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(NitroAttestError, match="RSA private key"):
        open_envelope(b"", ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", REAL)
def test_every_truncation_is_a_format_error(name: str, key: rsa.RSAPrivateKey) -> None:
    data = (KMS_VECTORS / name).read_bytes()
    for cut in range(len(data)):
        with pytest.raises(EnvelopeFormatError):
            open_envelope(data[:cut], key)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_envelopes_never_escape_the_tree(
    key: rsa.RSAPrivateKey, data: st.DataObject
) -> None:
    raw = bytearray((KMS_VECTORS / data.draw(st.sampled_from(REAL))).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with pytest.raises((EnvelopeFormatError, EnvelopeKeyError)):
        open_envelope(bytes(raw), key)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_are_format_errors(raw: bytes) -> None:
    with pytest.raises(EnvelopeFormatError):
        parse_envelope(raw)


# --- the fast path for KMS's exact shape (envelope._kms_shape) ----------------------------------


def _full_reader(data: bytes) -> tuple[bytes, bytes, bytes]:
    """The general BER reader and walk, without the fast path."""
    return envelope._walk(ber.decode(data, max_bytes=envelope.MAX_ENVELOPE_BYTES, max_depth=16,
                                     max_items=envelope.MAX_ENVELOPE_BYTES // 2))


def _plain(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"p" * (size % 256)


def _sealed(key: rsa.RSAPrivateKey, size: int, chunk: int | None) -> bytes:
    return seal_envelope(_plain(size), key.public_key(), chunk=chunk)


@pytest.mark.parametrize("name", REAL)
def test_real_responses_take_the_fast_path(name: str) -> None:
    data = (KMS_VECTORS / name).read_bytes()
    parts = envelope._kms_shape(data)
    assert parts is not None
    assert parts == _full_reader(data) == parse_envelope(data)


@pytest.mark.parametrize("chunk", [None, 1, 15, 16, 127, 128, 300, 4096])
@pytest.mark.parametrize("size", [0, 15, 16, 100, 111, 112, 4096])
def test_sealed_envelopes_take_the_fast_path(
    key: rsa.RSAPrivateKey, size: int, chunk: int | None
) -> None:
    data = _sealed(key, size, chunk)
    parts = envelope._kms_shape(data)
    assert parts is not None
    assert parts == _full_reader(data)
    assert open_envelope(data, key) == _plain(size)


def test_other_shapes_are_left_to_the_full_reader(key: rsa.RSAPrivateKey) -> None:
    big = rsa.generate_private_key(public_exponent=65537, key_size=3072)

    def definite(item: ber.Tlv) -> bytes:  # the same tree with definite lengths only
        if not item.constructed:
            return ber.encode_tlv(item.tag, item.content, cls=item.cls)
        return ber.encode_tlv(item.tag, b"".join(definite(c) for c in item.children),
                              cls=item.cls, constructed=True)

    for data, opener in (
        (seal_envelope(b"x" * 40, big.public_key()), big),  # a 384-byte encrypted key
        (seal_envelope(b"x" * 40, key.public_key(), subject_key_id=b"k" * 20), key),  # SKI of 20
        (definite(ber.decode(seal_envelope(b"x" * 40, key.public_key()))), key),
    ):
        assert envelope._kms_shape(data) is None
        assert parse_envelope(data) == _full_reader(data)
        assert open_envelope(data, opener) == b"x" * 40


def test_the_fast_path_refuses_what_the_full_reader_refuses(key: rsa.RSAPrivateKey) -> None:
    data = _sealed(key, 32, None)  # 48 bytes of content: 80 30, the content, then the trailer
    at = envelope._CONTENT_AT
    assert data[at:at + 2] == b"\x80\x30" and len(data) == at + 2 + 48 + 8
    content, trailer = data[at + 2:-8], data[-8:]
    head = data[:at]
    chunked = head + b"\xa0\x80\x04\x30" + content + b"\x00\x00" + trailer
    assert envelope._kms_shape(chunked) == _full_reader(chunked) == parse_envelope(data)
    for bad in (
        head + b"\x80\x80" + content + trailer,  # an indefinite primitive
        head + b"\x80\x7f" + content + trailer,  # content longer than what follows
        head + b"\x80\x30" + content + b"\x05\x00" + trailer,  # an item after the content
        head + b"\x80\x30" + content + b"\x04\x0e" + bytes(14) + trailer,  # a block of it
        head + b"\xa0\x80\x04\x30" + content + b"\x00\x00\x05\x00" + trailer,  # after chunks
        head + b"\x80\x00" + trailer,  # empty content
        head + b"\x80\x0f" + content[:15] + trailer,  # not whole blocks
        data + b"\x00",  # a trailing byte
        data[:-1],  # an end-of-contents cut
        head + b"\xa0\x80\x04\x30" + content + trailer,  # the chunks' end-of-contents missing
        head + b"\xa0\x80\x05\x30" + content + b"\x00\x00" + trailer,  # a chunk not 04
        head + b"\xa0\x80\x04\x80" + content + b"\x00\x00\x00\x00" + trailer,  # indefinite
    ):
        assert envelope._kms_shape(bad) is None
        with pytest.raises(EnvelopeFormatError):
            parse_envelope(bad)
    # well-formed but not the shape it knows: declined, and the full reader accepts it
    longer = head + b"\x80\x83\x00\x00\x30" + content + trailer  # a three-octet length
    assert envelope._kms_shape(longer) is None
    assert parse_envelope(longer) == parse_envelope(data)


_TAIL_BYTES = st.sampled_from([0x00, 0x01, 0x04, 0x10, 0x20, 0x7F, 0x80, 0x81, 0x82, 0x83,
                               0xA0, 0x24, 0x30, 0xFF])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_fast_path_agrees_with_the_full_reader(
    key: rsa.RSAPrivateKey, data: st.DataObject
) -> None:
    """Whatever the fast path accepts, the full reader accepts too, with the same parts: edits
    anywhere (sealed and real envelopes), and content encodings made up byte by byte."""
    base = data.draw(st.sampled_from([
        _sealed(key, 48, None), _sealed(key, 48, 16), _sealed(key, 200, 7),
        (KMS_VECTORS / REAL[0]).read_bytes(), (KMS_VECTORS / REAL[1]).read_bytes(),
    ]))
    raw = bytearray(base)
    if data.draw(st.booleans()):  # a made-up content encoding between the IV and the trailer
        tail = data.draw(st.lists(_TAIL_BYTES | st.integers(0, 255), max_size=60))
        raw = bytearray(base[:envelope._CONTENT_AT]) + bytes(tail) + bytes(8)
    for _ in range(data.draw(st.integers(0, 3))):
        where = data.draw(st.integers(envelope._CONTENT_AT - 2, len(raw) - 1)
                          | st.integers(0, len(raw) - 1))
        how = data.draw(st.sampled_from(["set", "insert", "item", "delete"]))
        if how == "set":
            raw[where] = data.draw(_TAIL_BYTES | st.integers(0, 255))
        elif how == "insert":
            raw[where:where] = bytes([data.draw(_TAIL_BYTES)])
        elif how == "item":  # a whole small item: an end-of-contents, a NULL, a string, a block
            raw[where:where] = data.draw(st.sampled_from(
                [b"\x00\x00", b"\x05\x00", b"\x04\x00", b"\x04\x0e" + bytes(14),
                 b"\x04\x10" + bytes(16), b"\x80\x10" + bytes(16), b"\xa0\x80"]))
        else:
            del raw[where]
    parts = envelope._kms_shape(bytes(raw))
    if parts is not None:
        assert parts == _full_reader(bytes(raw))
