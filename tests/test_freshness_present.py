"""--max-age is measured against the present; with --at document or any other --at it is refused.

Threat model (docs/threat-model.md): the parent can replay any document it has seen. A maximum
age is the client's defence against that, and only the real present can judge it: measured at the
document's own timestamp every document is "0 s old" (docs/verifier.md, "Time").
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from nitro_attest import Policy, PolicyError, StaleDocumentError, Verifier
from nitro_attest._cli import main

from . import chainfactory as cf

OLD = "anjuna_20210317_prod_all_optional_null.cbor"


@pytest.mark.parametrize("at", ["document", "2021-03-17T22:02:00Z", "2030-01-01T00:00:00Z"])
def test_max_age_with_at_is_a_usage_error(
    at: str, real_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["verify", str(real_dir / OLD), "--at", at, "--max-age", "60"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert "--max-age cannot be combined with --at" in err and len(err.splitlines()) == 1


def test_max_age_at_now_rejects_an_old_document(
    real_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["--max-age", "60"], ["--at", "now", "--max-age", "60"]):
        assert main(["verify", str(real_dir / OLD), *argv]) == 1
        assert "VERIFIED" not in capsys.readouterr().out.replace("REJECTED", "")


def test_library_refuses_max_age_at_document(real_dir: Path) -> None:
    doc = (real_dir / OLD).read_bytes()
    verifier = Verifier()
    with pytest.raises(PolicyError, match="0 s old"):
        verifier.verify(doc, at="document", max_age=60)
    with pytest.raises(PolicyError, match="0 s old"):
        verifier.evaluate(doc, at="document", policy=Policy(max_age=60))
    verified = verifier.verify(doc, at="document")  # without max_age the audit still works
    assert [c.ok for c in verified.checks if c.name == "freshness"] == [None]  # not run


def _chain_valid_now() -> cf.Chain:
    now = dt.datetime.now(dt.UTC)
    specs = cf.default_chain()
    for spec in specs:
        spec.not_before, spec.not_after = now - dt.timedelta(days=1), now + dt.timedelta(days=1)
    return cf.chain(specs)


def test_max_age_measured_against_the_clock(tmp_path: Path) -> None:
    chain = _chain_valid_now()
    verifier = Verifier(root_pem=chain.root_pem)
    ten_minutes_ago = int((time.time() - 600) * 1000)
    stale = chain.document(timestamp=ten_minutes_ago)
    with pytest.raises(StaleDocumentError, match="older than the allowed 60 s"):
        verifier.verify(stale, max_age=60)
    fresh = chain.document(timestamp=int(time.time() * 1000))
    assert verifier.verify(fresh, max_age=60).checks[-1].ok is True


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00"])
def test_at_outside_the_datetime_range_is_a_usage_error(
    at: str, real_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Threat model (docs/threat-model.md): bad input is a one-line error, never a crash.

    A time that exists only in its own zone (year 10000 or year 0 in UTC) once reached the
    chain check and failed there with an internal ValueError.
    """
    rc = main(["verify", str(real_dir / OLD), "--at", at])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert "internal error" not in err and "--at" in err and len(err.splitlines()) == 1


def test_library_refuses_a_time_outside_the_range(real_dir: Path) -> None:
    doc = (real_dir / OLD).read_bytes()
    far = dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=-14)))
    verifier = Verifier()
    with pytest.raises(PolicyError, match="out of range"):
        verifier.evaluate(doc, at=far)
    with pytest.raises(PolicyError, match="out of range"):
        verifier.verify(doc, at=far)


@pytest.mark.parametrize("field", ["max_age", "clock_skew"])
def test_infinite_age_or_skew_is_not_a_freshness_check(field: str) -> None:
    """Threat model (docs/threat-model.md): max_age is the replay defence; an infinite bound
    (``--max-age inf``) would print ✅ Freshness for any replayed document. Fail closed."""
    with pytest.raises(PolicyError, match="finite"):
        Policy(**{"max_age": 60.0, field: float("inf")})


def test_cli_max_age_inf_is_a_usage_error(
    real_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(real_dir / OLD), "--max-age", "inf"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "finite" in err
