"""Malformed and tampered EIFs: a one-line EifError (CLI exit 1), never a traceback, never a huge
allocation."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import cbor2
import pytest

from nitro_attest._cli import main
from nitro_attest.eif import EifError, inspect_eif
from nitro_attest.eif.writer import write_eif

from .eif_helpers import (
    FLAGS,
    NUM_SECTIONS,
    OFFSETS,
    SECTION,
    SIZES,
    VERSION,
    parse,
    replace_last_section,
    set_header_field,
    with_fixed_crc,
    write,
)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("eif") / "good.eif"
    write_eif(path, kernel=b"K" * 4000, cmdline=b"console=ttyS0", ramdisks=[b"R" * 900, b"A" * 700])
    return path.read_bytes()


def _section_types(blob: bytes) -> list[int]:
    return [t for t, _, _ in parse(blob)[1]]


def _patch_section_header(blob: bytes, index: int, stype: int, size: int | None = None) -> bytes:
    _, sections = parse(blob)
    _, off, old_size = sections[index]
    head = SECTION.pack(stype, 0, old_size if size is None else size)
    return with_fixed_crc(blob[:off] + head + blob[off + 12 :])


def _move_bytes_between(blob: bytes, index: int, extra: bytes) -> bytes:
    """Insert ``extra`` before section ``index`` and shift its and later offsets: a gap."""
    fields, sections = parse(blob)
    off = sections[index][1]
    for i in range(index, len(sections)):
        fields[OFFSETS + i] += len(extra)
    return with_fixed_crc(
        struct.pack(">4sHHQQHH32Q32QII", *fields) + blob[548:off] + extra + blob[off:]
    )


CASES: list[tuple[str, object, str]] = [
    ("bad magic", lambda b: b"XEIF" + b[4:], "bad magic"),
    ("empty file", lambda b: b"", "shorter than the 548-byte EIF header"),
    ("header only", lambda b: b[:548], "past the end"),
    ("truncated last section", lambda b: b[:-10], "past the end"),
    ("trailing bytes", lambda b: b + b"\0" * 3, "3 trailing byte(s)"),
    ("version 5", lambda b: set_header_field(b, VERSION, 5), "unsupported EIF version 5"),
    ("version 1", lambda b: set_header_field(b, VERSION, 1), "unsupported EIF version 1"),
    ("count 65535", lambda b: set_header_field(b, NUM_SECTIONS, 65535), "section count 65535"),
    ("count 1", lambda b: set_header_field(b, NUM_SECTIONS, 1), "section count 1"),
    ("count too small", lambda b: set_header_field(b, NUM_SECTIONS, 4), "table entry 4 is set"),
    ("size 2^60", lambda b: set_header_field(b, SIZES + 3, 1 << 60), "past the end"),
    ("offset 2^60", lambda b: set_header_field(b, OFFSETS + 2, 1 << 60), "past the end"),
    ("offset past EOF", lambda b: set_header_field(b, OFFSETS + 4, len(b) + 1), "past the end"),
    ("overlap", lambda b: set_header_field(b, OFFSETS + 1, 548 + 100), "overlaps"),
    ("gap", lambda b: _move_bytes_between(b, 3, b"\0\0"), "2 unaccounted byte(s)"),
    ("type 0", lambda b: _patch_section_header(b, 3, 0), "invalid section type 0"),
    ("type 6", lambda b: _patch_section_header(b, 3, 6), "invalid section type 6"),
    ("header size 2^60", lambda b: _patch_section_header(b, 3, 3, 1 << 60), "section header says"),
    ("ramdisk first", lambda b: _patch_section_header(b, 0, 3), "KERNEL section must come first"),
    ("two cmdlines", lambda b: _patch_section_header(b, 3, 2), "exactly one CMDLINE"),
    ("two metadata", lambda b: _patch_section_header(b, 3, 5), "more than one METADATA"),
    ("signature not last", lambda b: _patch_section_header(b, 3, 4), "SIGNATURE section"),
]


@pytest.mark.parametrize(("name", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_corrupt_eif_is_rejected(
    name: str,
    mutate: object,
    message: str,
    good: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert callable(mutate)
    path = write(tmp_path / "bad.eif", mutate(good))
    tracemalloc.start()
    try:
        with pytest.raises(EifError) as excinfo:
            inspect_eif(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert peak < 2 << 20, f"peak {peak} bytes while rejecting"
    for argv in (["eif", "describe", str(path)], ["eif", "measure", str(path)]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_metadata_must_be_json(good: bytes, tmp_path: Path) -> None:
    _, sections = parse(good)
    _, off, size = sections[2]
    blob = with_fixed_crc(good[: off + 12] + b"{" + b" " * (size - 1) + good[off + 12 + size :])
    with pytest.raises(EifError, match="metadata section: invalid JSON"):
        inspect_eif(write(tmp_path / "m.eif", blob))


def test_crc_mismatch_is_reported(
    good: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = bytearray(good)
    blob[-1] ^= 0xFF  # a ramdisk byte: PCRs change, CRC no longer matches
    path = write(tmp_path / "crc.eif", bytes(blob))
    info = inspect_eif(path)
    assert info.crc_ok is False
    assert main(["eif", "describe", "--json", str(path)]) == 1
    out, err = capsys.readouterr()
    assert '"CheckCRC": false' in out and "CRC mismatch" in err
    assert main(["eif", "measure", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "CRC mismatch" in err


def test_flags_are_not_measured(good: bytes, tmp_path: Path) -> None:
    a = inspect_eif(write(tmp_path / "a.eif", good))
    b = inspect_eif(write(tmp_path / "b.eif", set_header_field(good, FLAGS, 1)))
    assert a.pcrs_hex() == b.pcrs_hex() and b.header.arch == "aarch64" and b.crc_ok


def _signed_with(good_signed: bytes, entries: object) -> bytes:
    return replace_last_section(good_signed, cbor2.dumps(entries))


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    from .eif_helpers import make_signer

    key_pem, cert_pem = make_signer(ec.SECP384R1())
    path = tmp_path_factory.mktemp("eif") / "signed.eif"
    write_eif(
        path,
        kernel=b"K" * 100,
        cmdline=b"c",
        ramdisks=[b"R"],
        signing_key_pem=key_pem,
        signing_certificate_pem=cert_pem,
    )
    return path.read_bytes()


def _entry(blob: bytes) -> dict[str, object]:
    _, sections = parse(blob)
    _, off, size = sections[-1]
    return dict(cbor2.loads(blob[off + 12 : off + 12 + size])[0])


SIG_CASES: list[tuple[str, object, str]] = [
    ("bytes not uint arrays", lambda e: [{k: bytes(v) for k, v in e.items()}], "got a byte string"),
    ("two entries", lambda e: [e, e], "2 entries"),
    ("empty array", lambda e: [], "non-empty CBOR array"),
    ("a map", lambda e: e, "non-empty CBOR array"),
    ("extra key", lambda e: [e | {"x": [1]}], "entry must be a map"),
    ("value 256", lambda e: [e | {"signature": [256]}], "not a byte"),
    ("garbage pem", lambda e: [e | {"signing_certificate": list(b"nope")}], "not a valid PEM"),
    ("tagged", lambda e: cbor2.CBORTag(55799, [e]), "tags are not allowed"),
]


@pytest.mark.parametrize(("name", "mutate", "message"), SIG_CASES, ids=[c[0] for c in SIG_CASES])
def test_malformed_signature_section(
    name: str, mutate: object, message: str, signed: bytes, tmp_path: Path
) -> None:
    assert callable(mutate)
    path = write(tmp_path / "s.eif", _signed_with(signed, mutate(_entry(signed))))
    with pytest.raises(EifError, match=message):
        inspect_eif(path)


def test_oversized_signature_section(signed: bytes, tmp_path: Path) -> None:
    path = write(tmp_path / "s.eif", replace_last_section(signed, b"\0" * 40000))
    with pytest.raises(EifError, match="signature section is 40000 bytes"):
        inspect_eif(path)


def test_large_valid_eif_is_streamed(tmp_path: Path) -> None:
    """An 8 MiB ramdisk is measured with about one chunk of memory, not the file size."""
    rd = write(tmp_path / "rd.bin", b"\x5a" * (8 << 20))
    path = tmp_path / "big.eif"
    pcrs = write_eif(path, kernel=b"k", cmdline=b"c", ramdisks=[b"init", rd])
    tracemalloc.start()
    try:
        info = inspect_eif(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.pcrs_hex() == pcrs
    assert peak < 3 << 20, f"peak {peak} bytes for an 8 MiB EIF"


def test_fifo_and_device_are_refused_without_blocking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe.eif"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(EifError, match="not a regular file"):
            inspect_eif(path)
        assert main(["eif", "describe", str(path)]) == 1
        assert "not a regular file" in capsys.readouterr().err
