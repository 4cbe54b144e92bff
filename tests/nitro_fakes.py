"""Fake `nitro-cli`, `docker` and friends for tests: small executables written into a tmp dir.

The fake nitro-cli keeps its enclaves in ``state.json`` beside it (run-enclave adds one,
terminate-enclave removes them, describe-enclaves lists them) and prints JSON in the shapes real
nitro-cli prints (docs/nitro-spec.md section 5). A failure is injected per subcommand with
``FakeNitro.fail("run-enclave", 26, "InsufficientMemoryRequested ...")``: the fake then prints
``[ E26 ] ...`` on stderr and exits with status 26, like nitro-cli. Every call is recorded.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

PCR0 = "34" * 48
PCR1 = "03" * 48
PCR2 = "25" * 48

BUILD_JSON: dict[str, Any] = {
    "Measurements": {
        "HashAlgorithm": "Sha384 { ... }",
        "PCR0": PCR0,
        "PCR1": PCR1,
        "PCR2": PCR2,
    }
}

ERROR_TEXT = {
    11: "SocketError: Could not connect to the enclave process socket",
    26: "Insufficient memory requested. User provided `memory` is 512 MB, but based on the EIF "
    "file size, the minimum memory should be 2048 MB",
    27: "Insufficient memory available. User provided `memory` is 4096 MB, which is more than "
    "the available hugepage memory.",
}

_FAKE_NITRO = r'''
import json, os, sys
from pathlib import Path
HERE = Path(os.environ.get("FAKE_NITRO_DIR") or Path(__file__).resolve().parent)
args = sys.argv[1:]
with open(HERE / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(["nitro-cli", *args]) + "\n")
cmd = args[0] if args else ""
fail = HERE / f"fail-{cmd}.json"
if fail.exists():
    spec = json.loads(fail.read_text())
    sys.stderr.write(f"[ E{spec['code']:02d} ] {spec['text']}\n")
    sys.stderr.write("For more details, please visit "
                     f"https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html#E{spec['code']:02d}\n")
    sys.exit(spec["code"])
state_file = HERE / "state.json"
state = json.loads(state_file.read_text()) if state_file.exists() else []
def opt(name, default=None):
    # as clap parses: --name=VALUE takes anything; --name VALUE refuses a VALUE starting with '-'
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a[len(name) + 1:]
        if a == name:
            value = args[i + 1] if i + 1 < len(args) else ""
            if not value or value.startswith("-"):
                sys.stderr.write(f"error: The argument '{name} <VALUE>' requires a value but "
                                 f"none was supplied (found {value!r})\n")
                sys.exit(1)
            return value
    return default
for flag in ("--eif-path", "--enclave-id", "--output-file", "--docker-uri", "--memory"):
    if flag in args or any(a.startswith(flag + "=") for a in args):
        opt(flag)  # refuse like clap even where the fake does not need the value
out = None
if cmd == "build-enclave":
    sys.stderr.write("Start building the Enclave Image...\n")
    Path(opt("--output-file")).write_bytes(b"\0" * int((HERE / "eif_size").read_text()
                                                      if (HERE / "eif_size").exists() else 4096))
    out = json.loads((HERE / "build.json").read_text())
elif cmd == "run-enclave":
    cid = int(opt("--enclave-cid", "16"))
    enc = {"EnclaveName": "enclave", "EnclaveID": f"i-0123456789abcdef0-enc{len(state) + 1:016x}",
           "ProcessID": 4242, "EnclaveCID": cid, "NumberOfCPUs": int(opt("--cpu-count", "2")),
           "CPUIDs": [1, 3], "MemoryMiB": int(opt("--memory"))}
    state.append({**enc, "State": "RUNNING",
                  "Flags": "DEBUG_MODE" if "--debug-mode" in args else "NONE",
                  "Measurements": json.loads((HERE / "build.json").read_text())["Measurements"]})
    sys.stderr.write(f"Started enclave with enclave-cid: {cid}, memory: {enc['MemoryMiB']} MiB\n")
    out = enc
elif cmd == "describe-enclaves":
    out = state
elif cmd == "describe-eif":
    meas = json.loads((HERE / "build.json").read_text())["Measurements"]
    out = {"EifVersion": 4, "Measurements": meas,
           "IsSigned": False, "CheckCRC": True, "ImageName": "nitro-attest-enclave",
           "ImageVersion": "latest", "Metadata": {"BuildTool": "nitro-cli"}}
elif cmd == "terminate-enclave":
    gone = state if "--all" in args else [e for e in state if e["EnclaveID"] == opt("--enclave-id")]
    if not gone and "--all" not in args:
        sys.stderr.write("[ E11 ] Enclave not found\n")
        sys.exit(11)
    for e in gone:
        print(json.dumps({"EnclaveName": e["EnclaveName"], "EnclaveID": e["EnclaveID"],
                          "Terminated": True}, indent=2))
        sys.stderr.write(f"Successfully terminated enclave {e['EnclaveID']}.\n")
    state = [e for e in state if e not in gone]
else:
    sys.stderr.write(f"[ E03 ] unknown subcommand {cmd}\n")
    sys.exit(3)
state_file.write_text(json.dumps(state))
if out is not None:
    print(json.dumps(out, indent=2))
'''

_RECORDER = r'''
import json, os, sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
name = Path(sys.argv[0]).name
with open(HERE / "calls.jsonl", "a") as fh:
    fh.write(json.dumps([name, *sys.argv[1:]]) + "\n")
rc_file = HERE / f"rc-{name}"
out_file = HERE / f"out-{name}"
if out_file.exists():
    sys.stdout.write(out_file.read_text())
sys.exit(int(rc_file.read_text()) if rc_file.exists() else 0)
'''


def write_exe(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class FakeBin:
    """A directory of fake executables to put first on PATH; all calls land in calls.jsonl."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        write_exe(directory / "nitro-cli", _FAKE_NITRO)
        (directory / "build.json").write_text(json.dumps(BUILD_JSON))

    def recorder(self, *names: str) -> None:
        """Fake commands that record their arguments and exit 0 (or ``rc-NAME``)."""
        for name in names:
            write_exe(self.dir / name, _RECORDER)

    def set_rc(self, name: str, rc: int) -> None:
        (self.dir / f"rc-{name}").write_text(str(rc))

    def set_output(self, name: str, text: str) -> None:
        (self.dir / f"out-{name}").write_text(text)

    def fail(self, subcommand: str, code: int, text: str | None = None) -> None:
        spec = {"code": code, "text": text or ERROR_TEXT.get(code, "failure")}
        (self.dir / f"fail-{subcommand}.json").write_text(json.dumps(spec))

    def set_eif_size(self, size: int) -> None:
        (self.dir / "eif_size").write_text(str(size))

    def set_state(self, enclaves: list[dict[str, Any]]) -> None:
        (self.dir / "state.json").write_text(json.dumps(enclaves))

    def state(self) -> list[dict[str, Any]]:
        f = self.dir / "state.json"
        data: list[dict[str, Any]] = json.loads(f.read_text()) if f.exists() else []
        return data

    def calls(self, name: str | None = None) -> list[list[str]]:
        f = self.dir / "calls.jsonl"
        if not f.exists():
            return []
        rows = [json.loads(line) for line in f.read_text().splitlines() if line]
        return [r for r in rows if name is None or r[0] == name]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.dir}{os.pathsep}{env.get('PATH', '')}"
        return env


def running_enclave(cid: int = 16, flags: str = "NONE", state: str = "RUNNING") -> dict[str, Any]:
    return {
        "EnclaveName": "enclave", "EnclaveID": "i-0123456789abcdef0-enc0123456789abcdef",
        "ProcessID": 4242, "EnclaveCID": cid, "NumberOfCPUs": 2, "CPUIDs": [1, 3],
        "MemoryMiB": 512, "State": state, "Flags": flags,
        "Measurements": BUILD_JSON["Measurements"],
    }


# A stand-in for `nitro-attest` (the real serve/attest/sim commands are tested on their own):
# records its arguments; `sim init` creates the state dir's root.pem; `serve` binds the unix
# socket and waits (at most 60 s) to be killed; `attest` exits with ``rc-nitro-attest`` (or 0).
_FAKE_NITRO_ATTEST = r'''
import json, os, signal, socket, sys, time
from pathlib import Path
HERE = Path(__file__).resolve().parent
args = sys.argv[1:]
with open(HERE / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(["nitro-attest", *args]) + "\n")
def opt(name):
    return args[args.index(name) + 1] if name in args else None
if args[:2] == ["sim", "init"]:
    state = Path(opt("--state"))
    state.mkdir(parents=True, exist_ok=True)
    (state / "root.pem").write_text("SIMULATED ROOT\n")
elif args[:2] == ["sim", "measurements"]:
    out = json.dumps({"Measurements": {"PCR0": "00" * 48}})
    if opt("--write-expected"):
        Path(opt("--write-expected")).write_text(out)
    print(out)
elif args[:1] == ["serve"]:
    if (HERE / "serve-fails").exists():
        sys.stderr.write("serve: cannot open the NSM\n")
        sys.exit(2)
    path = opt("--listen").removeprefix("unix://")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.1)
elif args[:1] == ["attest"]:
    rc_file = HERE / "rc-nitro-attest"
    sys.exit(int(rc_file.read_text()) if rc_file.exists() else 0)
else:
    sys.exit(2)
'''


def add_fake_nitro_attest(fb: FakeBin) -> Path:
    return write_exe(fb.dir / "nitro-attest", _FAKE_NITRO_ATTEST)
