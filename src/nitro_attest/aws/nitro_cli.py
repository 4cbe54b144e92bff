"""Typed wrappers over the `nitro-cli` binary: run it, parse the JSON it prints, surface `[ Exx ]`.

nitro-cli prints pretty JSON on stdout, progress lines on stderr, and on failure a line
``[ Exx ] <text>`` on stderr with the process exit status equal to xx (docs: nitro-spec.md
section 5). The results are frozen dataclasses that keep the parsed JSON (``raw``) for audit and
for passing through unchanged.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nitro_attest.attestation.policy import parse_measurements_object
from nitro_attest.errors import NitroCliError, PolicyError

# nitro-cli's JSON is a few KiB (describe-eif with metadata is the largest); cap what we parse.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024
# Generous: build-enclave runs docker and linuxkit; the others return in seconds.
BUILD_TIMEOUT_S = 1800.0
DEFAULT_TIMEOUT_S = 300.0

_ERROR_RE = re.compile(r"\[\s*(E\d{2,3})\s*\]\s*(.*)")


class NitroCliNotFoundError(NitroCliError):
    """The nitro-cli binary is not installed or not on PATH."""


class NitroCliOutputError(NitroCliError):
    """nitro-cli succeeded but printed something that is not the JSON we expect."""


@dataclass(frozen=True)
class Measurements:
    """EIF measurements as nitro-cli prints them: hash algorithm text and PCR index -> hex."""

    hash_algorithm: str
    pcrs: Mapping[int, str]
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class BuildResult:
    measurements: Measurements
    raw: Mapping[str, Any] = field(repr=False)


def _enclave_fields(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The fields run-enclave prints, which describe-enclaves repeats for every enclave."""
    return {
        "enclave_name": _str(obj, "EnclaveName", what),
        "enclave_id": _str(obj, "EnclaveID", what),
        "process_id": _int(obj, "ProcessID", what),
        "enclave_cid": _int(obj, "EnclaveCID", what),
        "cpu_count": _int(obj, "NumberOfCPUs", what),
        "cpu_ids": _cpu_ids(obj, what),
        "memory_mib": _int(obj, "MemoryMiB", what),
    }


@dataclass(frozen=True)
class RunResult:
    enclave_name: str
    enclave_id: str
    process_id: int
    enclave_cid: int
    cpu_count: int
    cpu_ids: tuple[int, ...]
    memory_mib: int
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class EnclaveInfo(RunResult):
    """One describe-enclaves entry: run-enclave's fields plus state, flags and measurements."""

    state: str = ""
    flags: str = ""
    measurements: Measurements | None = None

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def debug_mode(self) -> bool:
        # Documents from a debug enclave carry all-zero PCRs and fail attestation.
        return self.flags == "DEBUG_MODE"


@dataclass(frozen=True)
class TerminateResult:
    enclave_name: str
    enclave_id: str
    terminated: bool
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class EifDescription:
    eif_version: int
    measurements: Measurements
    is_signed: bool
    check_crc: bool
    signature_check: bool | None
    signing_certificate: Mapping[str, Any] | None
    image_name: str | None
    image_version: str | None
    metadata: Mapping[str, Any] | None
    raw: Mapping[str, Any] = field(repr=False)


def parse_error(stderr: str) -> tuple[str | None, str]:
    """Find nitro-cli's ``[ Exx ] text`` line; returns (code, text) or (None, last line)."""
    for line in stderr.splitlines():
        m = _ERROR_RE.search(line)
        if m:
            return m.group(1), m.group(2).strip()
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return None, (lines[-1] if lines else "no error text")


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise NitroCliOutputError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, Any], key: str, what: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise NitroCliOutputError(f"{what}: {key} missing or not a string")
    return v


def _int(obj: Mapping[str, Any], key: str, what: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise NitroCliOutputError(f"{what}: {key} missing or not an integer")
    return v


def _bool(obj: Mapping[str, Any], key: str, what: str) -> bool:
    v = obj.get(key)
    if not isinstance(v, bool):
        raise NitroCliOutputError(f"{what}: {key} missing or not a boolean")
    return v


def _opt_str(obj: Mapping[str, Any], key: str, what: str) -> str | None:
    v = obj.get(key)
    if v is not None and not isinstance(v, str):
        raise NitroCliOutputError(f"{what}: {key} is not a string")
    return v


def _cpu_ids(obj: Mapping[str, Any], what: str) -> tuple[int, ...]:
    v = obj.get("CPUIDs")
    if not isinstance(v, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in v
    ):
        raise NitroCliOutputError(f"{what}: CPUIDs missing or not a list of integers")
    return tuple(v)


def parse_measurements(value: Any, what: str = "Measurements") -> Measurements:
    obj = _obj(value, what)
    algo = obj.get("HashAlgorithm", "")
    if not isinstance(algo, str):
        raise NitroCliOutputError(f"{what}: HashAlgorithm is not a string")
    pcr_values = {k: v for k, v in obj.items() if k != "HashAlgorithm"}  # checked here, not there
    if any(isinstance(v, bytes) for v in pcr_values.values()):
        raise NitroCliOutputError(f"{what}: PCR values must be hex strings")
    try:  # the verifier's parser, tolerant of keys nitro-cli may add
        pcrs = parse_measurements_object(pcr_values, what, tolerant=True)
    except PolicyError as exc:
        raise NitroCliOutputError(str(exc)) from None
    return Measurements(
        hash_algorithm=algo, pcrs={i: v.hex() for i, v in pcrs.items()}, raw=obj
    )


def parse_build(value: Any) -> BuildResult:
    obj = _obj(value, "build-enclave")
    return BuildResult(
        measurements=parse_measurements(obj.get("Measurements"), "build-enclave Measurements"),
        raw=obj,
    )


def parse_run(value: Any) -> RunResult:
    what = "run-enclave"
    obj = _obj(value, what)
    return RunResult(**_enclave_fields(obj, what), raw=obj)


def parse_describe_enclaves(value: Any) -> tuple[EnclaveInfo, ...]:
    if not isinstance(value, list):
        raise NitroCliOutputError("describe-enclaves: expected a JSON array")
    out = []
    for i, item in enumerate(value):
        what = f"describe-enclaves[{i}]"
        obj = _obj(item, what)
        meas = obj.get("Measurements")
        out.append(
            EnclaveInfo(
                **_enclave_fields(obj, what),
                state=_str(obj, "State", what),
                flags=_str(obj, "Flags", what),
                measurements=None if meas is None else parse_measurements(meas, what),
                raw=obj,
            )
        )
    return tuple(out)


def parse_terminate(value: Any) -> TerminateResult:
    what = "terminate-enclave"
    obj = _obj(value, what)
    return TerminateResult(
        enclave_name=_str(obj, "EnclaveName", what),
        enclave_id=_str(obj, "EnclaveID", what),
        terminated=_bool(obj, "Terminated", what),
        raw=obj,
    )


def parse_describe_eif(value: Any) -> EifDescription:
    what = "describe-eif"
    obj = _obj(value, what)
    sig_check = obj.get("SignatureCheck")
    if sig_check is not None and not isinstance(sig_check, bool):
        raise NitroCliOutputError(f"{what}: SignatureCheck is not a boolean")
    cert = obj.get("SigningCertificate")
    metadata = obj.get("Metadata")
    return EifDescription(
        eif_version=_int(obj, "EifVersion", what),
        measurements=parse_measurements(obj.get("Measurements"), f"{what} Measurements"),
        is_signed=_bool(obj, "IsSigned", what),
        check_crc=_bool(obj, "CheckCRC", what),
        signature_check=sig_check,
        signing_certificate=None if cert is None else _obj(cert, f"{what} SigningCertificate"),
        image_name=_opt_str(obj, "ImageName", what),
        image_version=_opt_str(obj, "ImageVersion", what),
        metadata=None if metadata is None else _obj(metadata, f"{what} Metadata"),
        raw=obj,
    )


@dataclass(frozen=True)
class Completed:
    """One finished nitro-cli call: its stdout text and the stderr progress lines."""

    stdout: str
    stderr: str


class NitroCli:
    """Runs nitro-cli subcommands. ``binary`` is a name looked up on PATH, or a path."""

    def __init__(self, binary: str = "nitro-cli", *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.binary = binary
        self.timeout = timeout
        self.last_stderr = ""

    def _resolve(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            raise NitroCliNotFoundError(
                f"{self.binary} not found on PATH; on the parent instance run ./setup-pvm.sh "
                "(then reboot) or `source /etc/profile.d/nitro-cli-env.sh`"
            )
        return found

    def run(self, args: Sequence[str], *, timeout: float | None = None) -> Completed:
        """Run ``nitro-cli ARGS``; raise NitroCliError carrying ``[ Exx ]`` on failure."""
        exe = self._resolve()
        try:
            proc = subprocess.run(
                [exe, *args], capture_output=True, timeout=timeout or self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise NitroCliError(f"nitro-cli {args[0]} timed out") from None
        except OSError as exc:
            raise NitroCliNotFoundError(f"cannot run {exe}: {exc.strerror or exc}") from None
        stderr = proc.stderr[:MAX_OUTPUT_BYTES].decode("utf-8", "replace")
        self.last_stderr = stderr
        if proc.returncode != 0:
            code, text = parse_error(stderr)
            raise NitroCliError(
                f"nitro-cli {args[0]} failed: {text}",
                code=code, returncode=proc.returncode, stderr=stderr,
            )
        if len(proc.stdout) > MAX_OUTPUT_BYTES:
            raise NitroCliOutputError(f"nitro-cli {args[0]}: output over {MAX_OUTPUT_BYTES} bytes")
        return Completed(stdout=proc.stdout.decode("utf-8", "replace"), stderr=stderr)

    def run_json(self, args: Sequence[str], *, timeout: float | None = None) -> Any:
        out = self.run(args, timeout=timeout).stdout
        try:
            return json.loads(_json_part(out))
        except ValueError:
            raise NitroCliOutputError(
                f"nitro-cli {args[0]}: output is not JSON: {out.strip()[:80]!r}"
            ) from None

    def build_enclave(
        self, *, docker_uri: str, output_file: str, docker_dir: str | None = None,
        signing_certificate: str | None = None, private_key: str | None = None,
    ) -> BuildResult:
        args = ["build-enclave", _opt("docker-uri", docker_uri), _opt("output-file", output_file)]
        if docker_dir is not None:
            args.append(_opt("docker-dir", docker_dir))
        if (signing_certificate is None) != (private_key is None):
            raise ValueError("signing_certificate and private_key go together")
        if signing_certificate is not None and private_key is not None:
            args += [
                _opt("signing-certificate", signing_certificate),
                _opt("private-key", private_key),
            ]
        return parse_build(self.run_json(args, timeout=BUILD_TIMEOUT_S))

    def run_enclave(
        self, *, eif_path: str, memory_mib: int, cpu_count: int | None = None,
        cpu_ids: Sequence[int] | None = None, enclave_cid: int | None = None,
        debug_mode: bool = False, enclave_name: str | None = None,
    ) -> RunResult:
        if (cpu_count is None) == (cpu_ids is None):
            raise ValueError("give exactly one of cpu_count and cpu_ids")
        args = ["run-enclave", _opt("eif-path", eif_path), _opt("memory", memory_mib)]
        if cpu_count is not None:
            args.append(_opt("cpu-count", cpu_count))
        if cpu_ids is not None:  # clap: a multiple-valued option may repeat, one value each
            args += [_opt("cpu-ids", c) for c in cpu_ids]
        if enclave_cid is not None:
            args.append(_opt("enclave-cid", enclave_cid))
        if enclave_name is not None:
            args.append(_opt("enclave-name", enclave_name))
        if debug_mode:
            args.append("--debug-mode")
        return parse_run(self.run_json(args))

    def describe_enclaves(self) -> tuple[EnclaveInfo, ...]:
        return parse_describe_enclaves(self.run_json(["describe-enclaves"]))

    def describe_eif(self, eif_path: str) -> EifDescription:
        return parse_describe_eif(self.run_json(["describe-eif", _opt("eif-path", eif_path)]))

    def terminate_enclave(
        self, *, enclave_id: str | None = None, all_enclaves: bool = False
    ) -> tuple[TerminateResult, ...]:
        if (enclave_id is None) == (not all_enclaves):
            raise ValueError("give exactly one of enclave_id and all_enclaves")
        args = ["terminate-enclave"]
        args += ["--all"] if all_enclaves else [_opt("enclave-id", enclave_id)]
        values: list[Any] = []
        for v in _json_values(self.run(args).stdout):
            values.extend(v if isinstance(v, list) else [v])
        return tuple(parse_terminate(v) for v in values)

    def console_args(self, enclave_id: str, disconnect_timeout: int | None = None) -> list[str]:
        """The argv for `nitro-cli console`: it streams, so callers run it attached."""
        args = [self._resolve(), "console", _opt("enclave-id", enclave_id)]
        if disconnect_timeout is not None:
            args.append(_opt("disconnect-timeout", disconnect_timeout))
        return args


def _opt(name: str, value: object) -> str:
    """``--name=VALUE``: one argument, so a value starting with '-' (a path, an id, a name) is
    never read by nitro-cli as a flag of its own."""
    return f"--{name}={value}"


def _json_part(text: str) -> str:
    """nitro-cli may print a progress line before the JSON on stdout; start at the JSON."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    return text[min(starts):] if starts else text


def _json_values(text: str) -> list[Any]:
    """`terminate-enclave --all` prints one JSON object per enclave, back to back."""
    decoder = json.JSONDecoder()
    text = _json_part(text)
    values: list[Any] = []
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            raise NitroCliOutputError(
                f"nitro-cli terminate-enclave: output is not JSON: {text[pos:pos + 60]!r}"
            ) from None
        values.append(value)
    return values
