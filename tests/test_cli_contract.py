"""docs/cli.md's output contract, command by command: the error line on stderr, the exit status,
JSON on stdout for failures too (one shape per command, JSON Lines for verify), --version.

The table must name every command of ``nitro_attest._cli.COMMANDS``: a new command without a row
fails ``test_every_command_has_rows``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import nitro_attest
from nitro_attest._cli import COMMANDS, build_parser, main

from .paths import EIF_VECTORS, REAL

DOC = REAL / "signal_20230524_prod.cbor"
EIF_A = EIF_VECTORS / "v1_unsigned_2rd.eif"
EIF_B = EIF_VECTORS / "v2_unsigned_3rd.eif"


class Case(NamedTuple):
    argv: tuple[str, ...]
    code: int
    json_keys: frozenset[str] = frozenset()  # members the failure object must carry


def case(code: int, *argv: str, keys: tuple[str, ...] = ()) -> Case:
    return Case(argv, code, frozenset(keys))


VERIFY_KEYS = ("file", "verified", "checks", "document", "error", "verified_at")
ATTEST_KEYS = ("verified", "checks", "document", "address", "files", "error")
SEND_KEYS = ("delivered", "sent", "suite", "module_id", "sha256", "error")

# {DOC} a real document (expired today), {JUNK} not a document nor an EIF, {MISSING} no file,
# {SIM} a simulator state, {SOCK} a Unix socket nobody listens on, {EIF_A}/{EIF_B} two EIFs.
CASES: dict[str, list[Case]] = {
    "verify": [
        case(2, "verify", "{MISSING}"),
        case(2, "verify", "{MISSING}", "--json", keys=VERIFY_KEYS),
        case(1, "verify", "{DOC}"),  # expired now
        case(1, "verify", "{DOC}", "--json", keys=VERIFY_KEYS),
        case(1, "verify", "{JUNK}", "--json", keys=VERIFY_KEYS),
        case(2, "verify", "{DOC}", "--root", "{MISSING}", "--json", keys=VERIFY_KEYS),
        case(2, "verify", "--json"),  # usage: no DOC
    ],
    "inspect": [
        case(1, "inspect", "{JUNK}"),
        case(1, "inspect", "{JUNK}", "--json", keys=("authenticated", "error")),
        case(2, "inspect", "{MISSING}", "--json", keys=("authenticated", "error")),
    ],
    "eif": [
        case(1, "eif", "describe", "{JUNK}"),
        case(1, "eif", "describe", "{JUNK}", "--json", keys=("error",)),
        case(2, "eif", "describe", "{MISSING}", "--json", keys=("error",)),
        case(1, "eif", "measure", "{JUNK}"),
        case(1, "eif", "diff", "{JUNK}", "{JUNK}"),
        case(1, "eif", "diff", "{JUNK}", "{JUNK}", "--json", keys=("Identical", "error")),
        case(1, "eif", "diff", "{EIF_A}", "{EIF_B}", "--json", keys=("Identical", "Sections")),
        case(2, "eif", "diff", "{MISSING}", "{EIF_B}"),
        case(
            2,
            "eif",
            "build",
            "--image",
            "{MISSING}",
            "--blobs",
            "{MISSING}",
            "--output",
            "{OUT}",
            "--json",
            keys=("Measurements", "error"),
        ),
    ],
    "pcr": [case(2, "pcr", "--input", "{MISSING}")],
    "sim": [
        case(2, "sim", "attest", "--state", "{SIM}", "--nonce", "not a nonce!"),
        case(2, "sim", "init", "--measurements", "{MISSING}", "--state", "{OUT}"),
        case(2, "sim"),
    ],
    "enclave": [case(2, "enclave", "describe")],  # no nitro-cli on PATH
    "serve": [case(2, "serve", "--listen", "bogus://x", "--nsm", "simulator")],
    "attest": [
        case(2, "attest", "--connect", "unix://{SOCK}", "--timeout", "0.3"),
        case(
            2,
            "attest",
            "--connect",
            "unix://{SOCK}",
            "--timeout",
            "0.3",
            "--json",
            keys=ATTEST_KEYS,
        ),
    ],
    "send-secret": [
        case(
            2,
            "send-secret",
            "--connect",
            "unix://{SOCK}",
            "--file",
            "{MISSING}",
            "--pcr",
            "0=00",
            "--json",
            keys=SEND_KEYS,
        ),
        case(
            2,
            "send-secret",
            "--connect",
            "unix://{SOCK}",
            "--file",
            "{DOC}",
            "--pcr",
            "0=00",
            "--timeout",
            "0.3",
            "--json",
            keys=SEND_KEYS,
        ),
        case(2, "send-secret", "--connect", "unix://{SOCK}", "--file", "{DOC}"),  # no PCRs
    ],
    "service": [case(2, "service", "--listen", "127.0.0.1:1", "--policies", "{MISSING}")],
    "appraise": [
        case(
            2,
            "appraise",
            "--service",
            "http://127.0.0.1:9",
            "--connect",
            "unix://{SOCK}",
            "--timeout",
            "0.5",
            "--trust-advertised-key",
            "--json",
            keys=("error",),
        ),
    ],
    "proxy": [case(2, "proxy", "--listen", "tcp://127.0.0.1:0", "--to", "connect")],
    "kms": [case(2, "kms")],
}


@pytest.fixture()
def paths(tmp_path: Path, sim_state: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00not a document, not an EIF" * 40)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))  # enclave: no nitro-cli here
    monkeypatch.delenv("NITRO_CLI_BLOBS", raising=False)
    return {
        "{DOC}": str(DOC),
        "{JUNK}": str(junk),
        "{MISSING}": str(tmp_path / "missing"),
        "{SIM}": str(sim_state),
        "{SOCK}": str(tmp_path / "nobody.sock"),
        "{OUT}": str(tmp_path / "out"),
        "{EIF_A}": str(EIF_A),
        "{EIF_B}": str(EIF_B),
    }


def _fill(argv: tuple[str, ...], paths: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        for key, value in paths.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def _json_objects(out: str, lines: bool) -> list[dict[str, Any]]:
    if lines:
        return [json.loads(line) for line in out.splitlines()]
    return [json.loads(out)]


ROWS = [(name, c) for name, cases in CASES.items() for c in cases]


@pytest.mark.parametrize(("command", "row"), ROWS, ids=[" ".join(c.argv) for _, c in ROWS])
def test_failure_contract(
    command: str, row: Case, paths: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _fill(row.argv, paths)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == row.code, (out, err)
    lines = err.splitlines()
    assert any(line.startswith("nitro-attest: error: ") for line in lines), err
    assert "Traceback" not in err and "Traceback" not in out
    if "--json" in argv:
        objects = _json_objects(out, lines=command == "verify")
        assert objects, "no JSON on stdout"
        for obj in objects:
            assert isinstance(obj, dict)
            assert set(row.json_keys) <= set(obj), obj.keys()
            if row.code != 0 and "Sections" not in row.json_keys:
                assert obj["error"]["message"], obj
                assert set(obj["error"]) == {"check", "message"}
    else:
        assert "nitro-attest: error:" not in out  # errors never on stdout


def test_every_command_has_rows() -> None:
    assert set(CASES) == set(COMMANDS)


def test_every_json_command_has_a_json_failure_row() -> None:
    """Each command (or action) with --json has at least one failure row using it."""
    parser = build_parser()
    with_json = set()
    for name, sub in parser._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        parsers = nested[0].choices.items() if nested else [("", sub)]
        for action, p in parsers:
            if any("--json" in a.option_strings for a in p._actions):
                with_json.add(f"{name} {action}".strip())
    covered = {
        " ".join(c.argv[: 2 if c.argv[0] in ("eif", "sim", "kms") else 1])
        for cases in CASES.values()
        for c in cases
        if "--json" in c.argv and c.code != 0
    }
    # The kms operations come with their own tests (docs/kms.md); every other one is here.
    assert {n for n in with_json - covered if not n.startswith("kms ")} == set()
    assert {"verify", "inspect", "attest", "send-secret", "appraise", "eif describe"} <= with_json


def test_verify_json_is_json_lines_for_one_and_for_several(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for docs in ([DOC], [DOC, DOC]):
        rc = main(["verify", *map(str, docs), "--at", "document", "--json"])
        out = capsys.readouterr().out
        assert rc == 0
        lines = out.splitlines()
        assert len(lines) == len(docs)
        assert all(json.loads(line)["verified"] and json.loads(line)["error"] is None
                   for line in lines)  # fmt: skip


def test_inspect_json_says_unauthenticated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(DOC), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["authenticated"] is False and doc["error"] is None
    assert doc["module_id"].startswith("i-")


def test_eif_describe_and_diff_agree_on_a_malformed_file(
    paths: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    junk = paths["{JUNK}"]
    codes = {main(["eif", "describe", junk]), main(["eif", "diff", junk, str(EIF_A)])}
    capsys.readouterr()
    assert codes == {1}


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nitro_attest._cli", "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout == f"nitro-attest {nitro_attest.__version__}\n"


def test_usage_error_names_the_command_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nitro_attest._cli", "verify", "--no-such-flag", "x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("nitro-attest: error: unrecognized arguments: --no-such-flag")
    assert out.stderr.count("\n") == 1 and "--help" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "nitro_attest._cli", "verify"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("nitro-attest: error: verify: the following arguments")
    assert "see 'nitro-attest verify --help'" in out.stderr
