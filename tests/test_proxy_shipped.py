"""What ships beside the proxy: the systemd unit and its example settings are valid, and the
enclave-side bridge runs without PyYAML (the enclave image does not carry it)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from nitro_attest._cli import build_parser
from nitro_attest._cli.proxy_cmd import build_config
from nitro_attest.proxy import ProxyConfig

from .paths import REPO

SYSTEMD = REPO / "systemd"


def _unit(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def _env_args(path: Path) -> list[str]:
    for line in path.read_text().splitlines():
        if line.startswith("PROXY_ARGS="):
            return shlex.split(shlex.split(line.partition("=")[2])[0])
    raise AssertionError(f"{path}: no PROXY_ARGS")


def test_unit_runs_the_proxy_sandboxed() -> None:
    unit = _unit(SYSTEMD / "nitro-attest-proxy@.service")
    assert unit["ExecStart"] == ["/opt/nitro-attest/bin/nitro-attest proxy $PROXY_ARGS"]
    assert unit["EnvironmentFile"] == ["/etc/nitro-attest/proxy-%i.env"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert int(unit["TimeoutStopSec"][0]) > 10  # longer than the default drain
    for key, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictNamespaces": "yes",
        "MemoryDenyWriteExecute": "yes",
    }.items():
        assert unit[key] == [value], key
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_VSOCK"]


def _config(env: str) -> ProxyConfig:
    args = _env_args(SYSTEMD / env)
    args = [str(SYSTEMD / "kms-allowlist.yaml") if a.endswith("kms-allowlist.yaml") else a
            for a in args]  # fmt: skip
    return build_config(build_parser().parse_args(["proxy", *args]))


def test_example_settings_are_valid() -> None:
    inbound = _config("proxy-inbound.env")
    assert not inbound.outbound
    assert str(inbound.target) == "vsock://16:5005"
    kms = _config("proxy-kms.env")
    assert kms.outbound and kms.target is None
    assert kms.allowlist is not None and len(kms.allowlist) == 1


def test_enclave_bridge_needs_no_yaml() -> None:
    code = (
        "import sys; from nitro_attest._cli import build_parser;"
        "from nitro_attest._cli.proxy_cmd import build_config;"
        "c = build_config(build_parser().parse_args(['proxy', '--listen', "
        "'tcp://127.0.0.1:3128', '--to', 'vsock://3:8000']));"
        "assert c.target.cid == 3 and not c.outbound, c;"
        "print('yaml' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_unit_documentation_points_at_our_docs_installed_beside_it() -> None:
    unit_text = (SYSTEMD / "nitro-attest-proxy@.service").read_text()
    docs = _unit(SYSTEMD / "nitro-attest-proxy@.service")["Documentation"]
    ours = [d for d in docs if d.startswith("file:///opt/nitro-attest/share/doc/nitro-attest/")]
    assert ours, docs
    for uri in ours:  # each page exists in the repo and the header's install line copies it
        name = uri.rsplit("/", 1)[1]
        assert (REPO / "docs" / name).is_file()
        assert f"docs/{name}" in unit_text.split("[Unit]")[0]
