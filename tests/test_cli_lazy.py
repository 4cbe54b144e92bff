"""The CLI imports only the chosen command: the static command table, and what stays unimported."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nitro_attest import _cli
from nitro_attest._cli import COMMANDS, build_parser, parse_args
from nitro_attest._cli.common import CliError

from .paths import REAL

SIGNAL = "signal_20230524_prod.cbor"

# Heavy code the verifier never needs: the asyncio server, the channel, the simulator, the EIF code.
HEAVY = (
    "asyncio",
    "nitro_attest.channel",
    "nitro_attest.nsm.simulator",
    "nitro_attest.eif",
    "nitro_attest.wire.server",
)


def _registered(module_name: str) -> list[tuple[str, str | None]]:
    """(name, help) of every command a module's register() adds."""
    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(f"nitro_attest._cli.{module_name}").register(sub)
    return [(action.dest, action.help) for action in sub._choices_actions]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_table_matches_what_the_module_registers(name: str) -> None:
    module_name, summary = COMMANDS[name]
    assert _registered(module_name) == [(name, summary)]


def test_every_command_module_is_in_the_table() -> None:
    """Every module with a top-level register() (helpers such as eif_build_cmd register under
    another command's parser) is a command of the table."""
    folder = Path(_cli.__file__).parent
    on_disk = {p.stem for p in folder.glob("*_cmd.py") if "\ndef register(" in p.read_text()}
    assert on_disk == {module for module, _ in COMMANDS.values()}


def test_help_without_modules_matches_full_help() -> None:
    assert build_parser(set()).format_help() == build_parser().format_help()


def _outcome(parser: argparse.ArgumentParser | None, argv: list[str], capsys: Any) -> Any:
    try:
        ns = parse_args(argv) if parser is None else parser.parse_args(argv)
        result: Any = {k: v for k, v in vars(ns).items() if k != "func"}
        result["func"] = getattr(ns, "func", None)
    except SystemExit as exc:  # --help
        result = ("exit", exc.code)
    except CliError as exc:  # a usage error: main prints it (docs/cli.md)
        result = ("usage", str(exc))
    out, err = capsys.readouterr()
    return result, out, err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["--verbose"],
        ["verify"],
        ["verify", "doc.cbor", "--json", "--at", "document"],
        ["--verbose", "verify", "doc.cbor"],
        ["verify", "doc.cbor", "--verbose"],
        ["--verb", "inspect", "doc.cbor"],
        ["--", "pcr", "--input", "x"],
        ["pcr", "--input", "x", "--signing-certificate", "y"],
        ["eif", "measure"],
        ["sim", "init", "--state", "s"],
        ["enclave", "describe"],
        ["serve", "--bogus"],
        ["send-secret", "--help"],
        ["attest", "-h"],
        ["verif", "doc.cbor"],
        ["-", "verify"],
        ["no-such-command"],
    ],
)
def test_parse_matches_the_full_parser(argv: list[str], capsys: Any) -> None:
    """Same namespace, or the same exit code and message, as with every command loaded."""
    assert _outcome(None, argv, capsys) == _outcome(build_parser(), argv, capsys)


def _modules_after(argv: list[str]) -> tuple[int, set[str]]:
    """Run the CLI in a fresh interpreter; its exit code and every module it imported."""
    code = (
        "import json, sys\n"
        "from nitro_attest._cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print(json.dumps([rc, sorted(sys.modules)]), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60
    )
    rc, modules = json.loads(proc.stderr.strip().splitlines()[-1])
    return rc, set(modules)


def _loaded(modules: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in modules)


def test_help_imports_no_command_module() -> None:
    rc, modules = _modules_after(["--help"])
    assert rc == 0
    assert not [m for m in modules if m.startswith("nitro_attest._cli.") and m.endswith("_cmd")]
    assert [h for h in HEAVY if _loaded(modules, h)] == []


def test_verify_imports_no_heavy_module(real_dir: Path) -> None:
    rc, modules = _modules_after(["verify", str(real_dir / SIGNAL), "--at", "document"])
    assert rc == 0  # it did verify: the check below is about a run that did the work
    assert "nitro_attest._cli.verify_cmd" in modules
    assert [h for h in HEAVY if _loaded(modules, h)] == []
    others = [m for m in modules if m.endswith("_cmd") and m != "nitro_attest._cli.verify_cmd"]
    assert others == []


def test_serve_help_loads_its_module() -> None:
    """The heavy modules are still there for the command that needs them."""
    rc, modules = _modules_after(["serve", "--help"])
    assert rc == 0
    assert "asyncio" in modules and "nitro_attest._cli.serve_cmd" in modules


def test_placeholder_reached_loads_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Should the guess ever miss, the command still gets its real parser, not a placeholder."""
    monkeypatch.setattr(_cli, "chosen_command", lambda argv: None)
    args = parse_args(["verify", "doc.cbor", "--json", "--verbose"])
    assert args.command == "verify" and args.json is True and args.verbose is True
    assert args.documents == ["doc.cbor"]
    assert args.func.__module__ == "nitro_attest._cli.verify_cmd"
    with pytest.raises(SystemExit) as exc:
        parse_args(["verify", "-h"])
    assert exc.value.code == 0
    assert "--expected" in capsys.readouterr().out


def _gc_report(argv: list[str]) -> tuple[int, list[str]]:
    """Run ``nitro-attest ARGV`` through entrypoint in a fresh process; the exit code and what it
    says of the collector (enabled while the command runs, enabled at exit)."""
    script = (
        "import gc, sys\n"
        "from nitro_attest import _cli\n"
        "from nitro_attest._cli import verify_cmd\n"
        "real = verify_cmd.run\n"
        "def run(args):\n"
        "    print('during', gc.isenabled(), len(gc.get_objects()) < gc.get_freeze_count())\n"
        "    return real(args)\n"
        "verify_cmd.run = run\n"
        "import atexit\n"
        "atexit.register(lambda: print('exit', gc.isenabled()))\n"
        "sys.argv = ['nitro-attest', *sys.argv[1:]]\n"
        "_cli.entrypoint()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60
    )
    return proc.returncode, [
        line for line in proc.stdout.splitlines() if line.startswith(("during", "exit"))
    ]


def test_entrypoint_resumes_the_collector_before_the_command_runs() -> None:
    # The collector is paused only while the command's modules import: the command itself (a
    # server runs for days) runs with it on, the imports' objects frozen out of its way.
    code, lines = _gc_report(["verify", str(REAL / SIGNAL), "--at", "document"])
    assert code == 0
    assert lines == ["during True True", "exit True"]


@pytest.mark.parametrize("argv", [["--help"], ["verify", "--no-such-flag"], ["verify"]])
def test_entrypoint_resumes_the_collector_when_parsing_stops(argv: list[str]) -> None:
    code, lines = _gc_report(argv)
    assert code in (0, 2)
    assert lines == ["exit True"]


_SERVERS = [
    ("serve_cmd", "run", ["serve", "--listen", "tcp://127.0.0.1:9"]),
    ("proxy_cmd", "run", ["proxy", "--listen", "tcp://127.0.0.1:9", "--to", "tcp://127.0.0.1:9"]),
    ("service_cmd", "run", ["service", "--policies", "p.json"]),
    ("https_cmd", "run_serve", ["https", "serve", "--listen", "tcp://127.0.0.1:9", "--to", "x"]),
    ("kms_emulator_cmd", "run", ["kms", "emulator", "--state", "d", "--credentials", "c"]),
    ("kms_client_cmd", "run_proxy", ["kms", "proxy", "--listen", "127.0.0.1:9"]),
]


@pytest.mark.parametrize(
    ("module", "func", "argv"), _SERVERS, ids=[s[2][0] + s[1] for s in _SERVERS]
)
def test_every_long_running_command_runs_with_the_collector_on(
    module: str, func: str, argv: list[str]
) -> None:
    # Servers run for days: whichever command the entrypoint runs, the collector it paused for the
    # imports is back on (and the imports frozen) by the time the command's own code starts.
    script = (
        "import gc, importlib, sys\n"
        "from nitro_attest import _cli\n"
        f"mod = importlib.import_module('nitro_attest._cli.{module}')\n"
        "def run(args):\n"
        "    print('during', gc.isenabled(), gc.get_freeze_count() > 0)\n"
        "    return 0\n"
        f"setattr(mod, {func!r}, run)\n"
        "sys.argv = ['nitro-attest', *sys.argv[1:]]\n"
        "_cli.entrypoint()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["during True True"]
