"""Configuration files are read strictly (issue 26, item 4).

A person's typo must not silently drop an expectation: a duplicate key does not "win", a key
beside "Measurements" is not ignored, and a file nested deep enough to break the parser is a
one-line refusal, never "internal error" or a traceback; a service reload of such a file keeps
the old policies and says so, and a good reload says so too.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from nitro_attest import PolicyError
from nitro_attest._cli import main
from nitro_attest.attestation.policy import parse_expected_measurements
from nitro_attest.proxy.allowlist import AllowlistError, parse_allowlist
from nitro_attest.service.policies import parse_policies

from .servicekit import build_enclave_json, service, wait_until, write_policies

PCR = "ab" * 48
DEEP = ("[" * 5000 + "]" * 5000).encode()
DEEPISH = ("[" * 40 + "]" * 40).encode()  # parses in Python, still too deep for a config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f'{{"Measurements": {{"PCR0": "{PCR}", "PCR0": "{PCR}"}}}}', "'PCR0' given twice"),
        (f'{{"Measurements": {{"PCR0": "{PCR}"}}, "Measurements": {{}}}}',
         "'Measurements' given twice"),
        (f'{{"Measurements": {{"PCR0": "{PCR}"}}, "PCR8": "{PCR}"}}',
         "unexpected key(s) 'PCR8' beside 'Measurements'"),
        ('{"Measurements": {"PCR0": NaN}}', "NaN is not a JSON number"),
        (DEEP.decode(), "nested more than 32 levels deep"),
        (DEEPISH.decode(), "nested more than 32 levels deep"),
    ],
)
def test_expected_measurements_strict(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_expected_measurements(text, "e.json")
    assert message in info.value.message and "\n" not in info.value.message


def test_describe_eif_output_is_a_measurements_file() -> None:
    """nitro-cli describe-eif's own keys may sit beside Measurements; anything else may not."""
    described = {"EifVersion": 4, "Measurements": {"PCR0": PCR}, "IsSigned": False,
                 "CheckCRC": True, "ImageName": "app", "ImageVersion": "1", "Metadata": {}}
    (only,) = parse_expected_measurements(json.dumps(described), "d.json")
    assert dict(only) == {0: bytes.fromhex(PCR)}
    with pytest.raises(PolicyError, match="'Pcr8'"):
        parse_expected_measurements(json.dumps({**described, "Pcr8": PCR}), "d.json")


def test_expected_file_on_the_command_line(
    tmp_path: Path, real_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = next(real_dir.glob("*.cbor"))
    for name, body in (("dup.json", b'{"PCR0": "%s", "PCR0": "%s"}' % (PCR.encode(), PCR.encode())),
                       ("deep.json", DEEP)):  # fmt: skip
        (tmp_path / name).write_bytes(body)
        rc = main(["verify", str(doc), "--expected", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "internal error" not in err and "Traceback" not in err


def _policies(raw: bytes) -> None:
    parse_policies(raw, "p.json")


def test_policies_strict() -> None:
    good = {"expected": [build_enclave_json({0: b"\x01" * 48})]}
    dup = json.dumps({"default": "a", "policies": {"a": good}})[:-1] + ', "default": "a"}'
    with pytest.raises(PolicyError, match="'default' given twice"):
        _policies(dup.encode())
    with pytest.raises(PolicyError, match="nested more than 32 levels deep"):
        _policies(DEEP)
    nested = {"default": "a", "policies": {"a": {**good, "kind": json.loads(DEEPISH)}}}
    with pytest.raises(PolicyError, match="nested more than 32 levels deep"):
        _policies(json.dumps(nested).encode())


def test_deeply_nested_allowlist_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = b"allowlist: " + b"[" * 5000 + b"]" * 5000 + b"\n"
    with pytest.raises(AllowlistError, match="nested too deeply"):
        parse_allowlist(deep)
    path = tmp_path / "allow.yaml"
    path.write_bytes(deep)
    rc = main(["proxy", "--listen", "tcp://127.0.0.1:0", "--to", "connect",
               "--allowlist", str(path)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "nested too deeply" in err, err


def _reloads(base: str, outcome: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f'nitro_attest_policy_reloads_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_sighup_reload_of_a_nested_file_fails_loudly_and_keeps_the_old(
    tmp_path: Path, sim_state: Path
) -> None:
    policies = write_policies(tmp_path / "policies.json")
    root = sim_state / "root.pem"
    with service(["--policies", str(policies), "--root", str(root)]) as (base, proc):
        policies.write_bytes(b'{"default": "prod", "policies": ' + DEEP + b"}")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _reloads(base, "failed") == 1.0, what="failed reload counted")
        assert proc.poll() is None
        new = f"{base}/challenge-response/v1/newSession"
        assert httpx.post(new).status_code == 201  # the old policies still serve
        write_policies(policies, extra={"expected": [build_enclave_json({0: b"\x01" * 48})]})
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _reloads(base, "ok") == 1.0, what="good reload counted")
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        out = proc.stdout.read().decode() if proc.stdout else ""
    assert "policies reload failed, keeping the previous policies" in out
    assert "nested more than 32 levels deep" in out and "Traceback" not in out
    assert "policies reloaded (sha256 " in out, out


