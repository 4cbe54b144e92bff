"""`nitro-attest sim init|attest|describe` through main(argv)."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from nitro_attest._cli import main
from nitro_attest.attestation.verifier import Verifier

MEAS = {"HashAlgorithm": "Sha384 { ... }", "PCR0": "a0" * 48, "PCR1": "a1" * 48, "PCR2": "a2" * 48}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    meas = tmp_path / "m.json"
    meas.write_text(json.dumps({"Measurements": MEAS}))
    d = tmp_path / "state"
    rc, out, _ = run(
        ["sim", "init", "--state", str(d), "--measurements", str(meas),
         "--instance-id", "i-0aaaaaaaaaaaaaaaa"],
        capsys,
    )  # fmt: skip
    assert rc == 0
    der = x509.load_pem_x509_certificate((d / "root.pem").read_bytes()).public_bytes(Encoding.DER)
    fp = hashlib.sha256(der).hexdigest().upper()
    assert ":".join(fp[i : i + 2] for i in range(0, 64, 2)) in out
    assert str(d / "root.pem") in out
    return d


def test_init_attest_verify(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "doc.cbor"
    rc, _, _ = run(
        ["sim", "attest", "--state", str(state), "--nonce", "0a0b", "--user-data", "ff",
         "--out", str(out_file)],
        capsys,
    )  # fmt: skip
    assert rc == 0
    doc = out_file.read_bytes()
    verified = Verifier(root_pem=(state / "root.pem").read_bytes()).verify(
        doc, nonce=b"\x0a\x0b", user_data=b"\xff", expected_pcrs={0: "a0" * 48}
    )
    assert verified.document.raw == doc


def test_attest_to_stdout_is_binary(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buffer))
    assert main(["sim", "attest", "--state", str(state)]) == 0
    out = buffer.getvalue()
    assert out[:6] == bytes.fromhex("8444a1013822")
    assert len(cbor2.loads(cbor2.loads(out)[2])) == 9


def test_describe(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["sim", "describe", "--state", str(state)], capsys)
    assert rc == 0
    d = json.loads(out)
    assert d["max_pcrs"] == 32 and d["digest"] == "SHA384"
    assert d["locked_pcrs"] == list(range(16))
    assert d["pcrs"]["0"] == {"locked": True, "data": "a0" * 48}
    assert d["pcrs"]["4"]["data"] == hashlib.sha384(bytes(48) + b"i-0aaaaaaaaaaaaaaaa").hexdigest()
    assert d["pcrs"]["3"]["data"] == "00" * 48
    assert d["module_id"].startswith("i-0aaaaaaaaaaaaaaaa-enc")


def test_debug_and_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    role = "arn:aws:iam::123456789012:role/r"
    assert run(["sim", "init", "--state", str(d), "--debug", "--role-arn", role], capsys)[0] == 0
    pcrs = json.loads(run(["sim", "describe", "--state", str(d)], capsys)[1])["pcrs"]
    assert pcrs["0"]["data"] == pcrs["1"]["data"] == pcrs["2"]["data"] == "00" * 48
    assert pcrs["3"]["data"] == hashlib.sha384(bytes(48) + role.encode()).hexdigest()


def test_default_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    rc, out, _ = run(["sim", "describe"], capsys)
    assert rc == 0
    assert (tmp_path / "xdg" / "nitro-attest" / "simulator" / "root.pem").is_file()
    assert json.loads(out)["pcrs"]["0"]["data"] != "00" * 48


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sim", "attest", "--nonce", "xyz!"], "neither hex nor base64url"),
        (["sim", "attest", "--user-data", "xyz"], "not valid hex"),
        (["sim", "attest", "--user-data", ""], "empty"),
        (["sim", "attest", "--public-key", "00" * 1025], "at most 1024"),
        (["sim", "init", "--measurements", "MISSING"], "no such file"),
        (["sim", "init", "--measurements", "BAD"], "not valid JSON"),
        (["sim", "init", "--measurements", "EMPTY"], "empty"),
        (["sim", "init", "--instance-id", "i-1"], "instance id"),
        (["sim", "init", "--role-arn", "bob"], "role ARN"),
        (["sim", "init"], "--force"),  # the fixture already initialised the folder
        (["sim"], "choose an action"),
    ],
)
def test_errors_are_one_line_exit_2(
    state: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    (tmp_path / "BAD").write_text("{not json")
    (tmp_path / "EMPTY").write_text('{"Measurements": {}}')
    fixed = [str(tmp_path / a) if a in ("MISSING", "BAD", "EMPTY") else a for a in argv]
    if len(fixed) > 1:
        fixed += ["--state", str(state)]
    rc, _, err = run(fixed, capsys)
    assert rc == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_attest_refuses_terminal(state: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    rc, out, err = run(["sim", "attest", "--state", str(state)], capsys)
    assert rc == 2 and "terminal" in err and out == ""


def test_init_from_an_eif_sets_the_simulated_pcrs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nitro_attest.eif.writer import write_eif

    eif = tmp_path / "enclave.eif"
    pcrs = write_eif(
        eif, kernel=b"kernel" * 100, cmdline="console=ttyS0", ramdisks=[b"init" * 50, b"app" * 70]
    )
    # The formula, written here independently of the EIF module.
    zero = bytes(48)
    app = hashlib.sha384(zero + hashlib.sha384(b"app" * 70).digest()).hexdigest()
    assert pcrs["PCR2"] == app
    state_dir = tmp_path / "sim"
    rc, _, err = run(["sim", "init", "--state", str(state_dir), "--measurements", str(eif)], capsys)
    assert rc == 0, err
    rc, out, _ = run(["sim", "describe", "--state", str(state_dir)], capsys)
    described = json.loads(out)
    assert json.dumps(described).count(app) >= 1
    doc_path = tmp_path / "doc.cbor"
    rc, _, err = run(["sim", "attest", "--state", str(state_dir), "--out", str(doc_path)], capsys)
    assert rc == 0, err
    verified = Verifier(root_pem=(state_dir / "root.pem").read_bytes()).verify(
        doc_path.read_bytes(), expected_pcrs={f"PCR{i}": pcrs[f"PCR{i}"] for i in range(3)}
    )
    assert verified.document.pcrs[2].hex() == app


def test_init_from_a_corrupt_eif_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eif = tmp_path / "bad.eif"
    eif.write_bytes(b".eif" + bytes(100))
    rc, _out, err = run(
        ["sim", "init", "--state", str(tmp_path / "s"), "--measurements", str(eif)], capsys
    )
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_measurements_prints_build_enclave_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    measurements = tmp_path / "m.json"
    values = {f"PCR{i}": bytes([i + 7]) * 48 for i in range(3)}
    measurements.write_text(json.dumps({"Measurements": {k: v.hex() for k, v in values.items()}}))
    state_dir = tmp_path / "sim"
    assert (
        run(
            [
                "sim",
                "init",
                "--state",
                str(state_dir),
                "--measurements",
                str(measurements),
                "--debug",
            ],
            capsys,
        )[0]
        == 0
    )
    expected = tmp_path / "out" / "expected.json"
    rc, out, _ = run(
        ["sim", "measurements", "--state", str(state_dir), "--write-expected", str(expected)],
        capsys,
    )
    assert rc == 0
    printed = json.loads(out)
    assert json.loads(expected.read_text()) == printed
    assert printed["Measurements"] == {
        "HashAlgorithm": "Sha384 { ... }",
        **{k: v.hex() for k, v in values.items()},
    }
    # Debug mode keeps the image's measurements; the documents carry zeros instead.
    rc, out, _ = run(["sim", "describe", "--state", str(state_dir)], capsys)
    assert json.loads(out)["pcrs"]["0"]["data"] == "00" * 48


@pytest.mark.parametrize("form", ["hex", "base64url", "base64url-padded"])
def test_attest_takes_the_nonce_as_hex_or_as_the_service_gives_it(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    import base64

    nonce = bytes.fromhex("58823c1feb31e8ac547631b63752e165")
    text = {
        "hex": nonce.hex(),
        "base64url": "WII8H-sx6KxUdjG2N1LhZQ",  # a Veraison newSession nonce, as printed
        "base64url-padded": base64.urlsafe_b64encode(nonce).decode(),
    }[form]
    out = tmp_path / "doc.cbor"
    rc, _, err = run(["sim", "attest", "--state", str(state), "--nonce", text, "--out", str(out)],
                     capsys)  # fmt: skip
    assert rc == 0, err
    payload = cbor2.loads(cbor2.loads(out.read_bytes())[2])
    assert payload["nonce"] == nonce


@pytest.mark.parametrize("bad", ["not a nonce!", "x", "0x", "=="])
def test_attest_refuses_a_nonce_in_neither_form(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    rc, _, err = run(["sim", "attest", "--state", str(state), "--nonce", bad,
                      "--out", str(tmp_path / "d")], capsys)  # fmt: skip
    assert rc == 2 and err.startswith("nitro-attest: error: --nonce") and "Traceback" not in err
    assert not (tmp_path / "d").exists()
