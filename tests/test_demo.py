"""./demo.sh end to end: the whole loop on the software NSM, nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .paths import REPO


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    demo_dir, out_dir = tmp_path / "demo", tmp_path / "client"
    env = {**os.environ, "DEMO_DIR": str(demo_dir), "DEMO_OUT_DIR": str(out_dir)}
    done = subprocess.run(
        ["bash", str(REPO / "demo.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in (
        "✅ COSE Signature",
        "✅ Certificate Chain",
        "✅ PCR Values",
        "✅ User Data",
        "✅ Nonce",
        "Result: VERIFIED",
        "DELIVERED",
        "signed by",
        "enclave (this image): kms decrypt with a Recipient document -> database password",
        "enclave (other image, PCR0 b0b0...): refused: AccessDeniedException: User: ",
        "because no resource-based policy allows the kms:Decrypt action",
        "KMS released its secret to this image only",
    ):
        assert line in done.stdout
    doc = json.loads((out_dir / "attestation-document-json.json").read_text())
    assert doc["kind"] == "enclave" and len(doc["pcrs"]) == 17  # serve locks PCR16 untouched
    assert doc["pcrs"]["16"] == "00" * 48
    assert (out_dir / "attestation-document.dat").read_text().startswith("hE")  # base64 of 0x84
    assert not (demo_dir / "demo.sock").exists()
    running = subprocess.run(
        ["pgrep", "-f", f"serve --listen unix://{demo_dir}"], capture_output=True, text=True
    )
    assert running.stdout == "", "demo.sh left its server running"
    for name in ("kms.pid", "proxy.pid"):  # the local KMS and the parent's proxy it started
        pid = int((demo_dir / "kms" / name).read_text())
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid), f"{name} left"
    secret = (demo_dir / "kms" / "secret.blob").read_bytes()
    assert b"database password" not in secret  # the parent holds only the ciphertext


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"
