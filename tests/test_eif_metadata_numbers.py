"""Metadata JSON whose numbers Python will not convert (past int_max_str_digits, 4,300 digits):
a one-line refusal and exit 1 from every command that reads metadata, never 'internal error'."""

from __future__ import annotations

from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.eif import EifError, inspect_eif
from nitro_attest.eif.metadata import parse_metadata
from nitro_attest.eif.writer import write_eif

HUGE = "9" * 4400


def _eif(path: Path, number: str) -> Path:
    text = f'{{"ImageName": "x", "ImageVersion": "1", "BuildMetadata": {{}}, "N": {number}}}'
    write_eif(path, kernel=b"K" * 64, cmdline=b"c", ramdisks=[b"R"], metadata=text.encode())
    return path


@pytest.mark.parametrize("command", [["describe"], ["measure"]])
def test_huge_integer_in_metadata_is_refused_in_one_line(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eif = _eif(tmp_path / "x.eif", HUGE)
    rc = main(["eif", *command, str(eif)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err
    assert "digits" in err


def test_parse_metadata_refuses_huge_numbers_of_every_form() -> None:
    for number in (HUGE, "-" + HUGE, "1e" + HUGE, HUGE + ".5"):
        text = f'{{"ImageName": "x", "ImageVersion": "1", "BuildMetadata": {{}}, "N": {number}}}'
        with pytest.raises(EifError, match="digits"):
            parse_metadata(text.encode())
    with pytest.raises(EifError, match="out of range"):
        parse_metadata(b'{"ImageName": "x", "ImageVersion": "1", "BuildMetadata": {}, "N": 1e999}')


def test_numbers_within_the_limit_still_parse(tmp_path: Path) -> None:
    eif = _eif(tmp_path / "ok.eif", "9" * 4000)
    info = inspect_eif(eif)
    assert info is not None
    assert parse_metadata(
        b'{"ImageName": "x", "ImageVersion": "1", "BuildMetadata": {}, "N": 1.5e3}'
    )["N"] == 1500.0
