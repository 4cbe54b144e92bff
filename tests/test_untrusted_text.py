"""Text from a document or from the wire never reaches the terminal raw.

Threat model (docs/threat-model.md): the parent chooses the bytes handed to the client, and an
attacker can put anything in a module_id, a certificate subject, an error message or a file name.
Printed raw, a newline and "✅ ..." forge a check line, and ANSI escapes rewrite the screen. Every
human-facing printer escapes control characters through one helper; JSON stays exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.eif.writer import default_metadata, write_eif

from . import chainfactory as cf
from .hostile_parent import parent_serving

FORGED = "✅ Forged Check: all good"
EVIL = f"i-0123\n  {FORGED}\x1b[2K\x1b[1A\r\u202egnp.exe\x07\u2028{FORGED}"
EVIL_CN = f"leaf\n{FORGED}\x1b[31m"
AT = cf.T0.isoformat()


def _evil_chain() -> cf.Chain:
    specs = cf.default_chain()
    specs[-1].cn = EVIL_CN  # the leaf's subject is document text too
    return cf.chain(specs)


CHAIN = _evil_chain()
DOC = CHAIN.document(module_id=EVIL)


def assert_clean(text: str) -> None:
    """No escape byte, no raw control or separator, and no line that starts as a forged check."""
    for bad in ("\x1b", "\r", "\x07", "\u202e", "\u2028"):
        assert bad not in text, repr(text)
    for line in text.splitlines():
        assert not line.lstrip().startswith(FORGED[:8]), repr(line)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text and é stay", "plain text and é stay"),
        ("a ✅ or ❌ mark is the report's own", "a \\u2705 or \\u274c mark is the report's own"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x1b[31mred\x07", "\\x1b[31mred\\x07"),
        ("\x00\x7f\x85", "\\x00\\x7f\\x85"),
        ("\u202eevil\u2028\u2029\u200b", "\\u202eevil\\u2028\\u2029\\u200b"),
        ("bad\udcffname", "bad\\udcffname"),  # a surrogate-escaped file name byte
    ],
)
def test_escape_untrusted(raw: str, shown: str) -> None:
    assert escape_untrusted(raw) == shown
    assert escape_untrusted(shown) == shown  # escaping is stable: already-safe text is kept


def _files(tmp_path: Path, doc: bytes = DOC) -> tuple[Path, Path]:
    path = tmp_path / f"doc\n{FORGED}\x1b[0m.cbor"  # the file name is hostile as well
    path.write_bytes(doc)
    root = tmp_path / "root.pem"
    root.write_bytes(CHAIN.root_pem)
    return path, root


@pytest.mark.parametrize(
    "extra",
    [
        [],  # verified: the module_id is authenticated, and still escaped
        ["--pcr", "0=" + "00" * 48],  # rejected by policy
        ["--at", "now"],  # rejected: every certificate expired, the leaf's subject is quoted
    ],
)
def test_verify_prints_no_escape_and_no_forged_line(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, root = _files(tmp_path)
    argv = ["verify", str(path), "--root", str(root), "--at", AT, *extra]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == (0 if not extra else 1), out
    assert_clean(out + err)
    assert "i-0123\\n  \\u2705 Forged" in out  # shown, escaped, on the line it belongs to
    # JSON is exact: the same strings, escaped by json.dumps only.
    assert main([*argv, "--json"]) == rc
    report = json.loads(capsys.readouterr().out)
    assert report["file"] == str(path)
    if report["document"] is not None:
        assert report["document"]["module_id"] == EVIL


def test_unauthenticated_claims_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flipped = DOC[:-1] + bytes([DOC[-1] ^ 1])
    path, root = _files(tmp_path, flipped)
    assert main(["verify", str(path), "--root", str(root), "--at", AT]) == 1
    out, err = capsys.readouterr()
    assert_clean(out + err)
    assert "UNAUTHENTICATED claims" in out and "\\n  \\u2705 Forged" in out


def test_inspect_prints_no_escape_and_no_forged_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _files(tmp_path)
    assert main(["inspect", str(path)]) == 0
    out, err = capsys.readouterr()
    assert_clean(out + err)
    shown = FORGED.replace("✅", "\\u2705")  # the report's own marks are escaped too
    assert out.startswith("UNVERIFIED") and f"leaf\\n{shown}\\x1b[31m" in out
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["module_id"] == EVIL


def test_inspect_malformed_message_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"x\n{FORGED}\x1b[0m.cbor"
    path.write_bytes(b"\xa1\x63k\n\x1b" + b"\x00")  # CBOR map, not a COSE_Sign1
    assert main(["inspect", str(path)]) == 1
    assert main(["verify", str(tmp_path / f"missing\n{FORGED}\x1b[0m")]) == 2
    out, err = capsys.readouterr()
    assert_clean(out + err)


def test_attest_prints_no_escape_and_no_forged_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / f"out\n{FORGED}\x1b[0m"
    root = tmp_path / "root.pem"
    root.write_bytes(CHAIN.root_pem)
    with parent_serving(f"unix://{tmp_path}/p.sock", DOC) as parent:
        argv = ["attest", "--connect", parent.address, "--root", str(root),
                "--out-dir", str(out_dir)]
        assert main(argv) == 1  # the test hierarchy expired long ago: chain rejected
        out, err = capsys.readouterr()
        assert_clean(out + err)
        assert "Saved" in out and "UNAUTHENTICATED claims" in out
        assert main([*argv, "--json"]) == 1
        assert json.loads(capsys.readouterr().out)["document"] is None


def test_enclave_error_message_is_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s")
    with parent_serving(f"unix://{tmp_path}/p.sock", DOC, error=EVIL) as parent:
        assert main(["attest", "--connect", parent.address]) == 2
        out, err = capsys.readouterr()
        assert_clean(out + err)
        assert "enclave error bad_request: i-0123\\n" in err
        rc = main(["send-secret", "--connect", parent.address, "--file", str(secret),
                   "--unsafe-any-enclave"])
        out, err = capsys.readouterr()
    assert rc in (1, 2)
    assert_clean(out + err)
    assert "i-0123\\n" in out + err


def test_verbose_traceback_is_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Threat model (docs/threat-model.md): the enclave's error message is the parent's text.

    --verbose adds the traceback, whose last line repeats the exception message: it must be
    escaped like the one-line error above it.
    """
    with parent_serving(f"unix://{tmp_path}/p.sock", DOC, error=EVIL) as parent:
        assert main(["attest", "--connect", parent.address, "--verbose"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" in err and err.count("i-0123\\n") == 2
    assert_clean(out + err)


def test_eif_describe_escapes_image_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An EIF is a file from elsewhere: its metadata strings are untrusted text too."""
    path = tmp_path / "evil.eif"
    write_eif(path, kernel=b"K" * 64, cmdline="console=ttyS0", ramdisks=[b"R" * 64],
              metadata=default_metadata(image_name=EVIL, image_version="1\x1b[0m"))
    assert main(["eif", "describe", str(path)]) == 0
    out, err = capsys.readouterr()
    assert_clean(out + err)
    assert "Image:           i-0123\\n" in out
    assert main(["eif", "describe", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["ImageName"] == EVIL
