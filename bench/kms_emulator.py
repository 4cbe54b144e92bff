"""CPU per Decrypt with Recipient in the local KMS, against its unavoidable crypto, in one run.

- floor:      one warm document verification (``Verifier.verify``, the same kind of document),
              one RSA-OAEP-SHA256 encryption (2048-bit), one AES-256-GCM open of a blob, one
              SigV4 check (``expected_signature`` over the same request): what no implementation
              of Decrypt-with-Recipient can skip.
- in-process: ``KmsApp.handle`` on the signed request (SigV4 check, JSON, key lookup, document
              verification, key policy with attestation conditions, blob open, CMS envelope):
              the emulator's own work, without the HTTP server. Target: at most 1.5x the floor.
- served:     the emulator process's own CPU (utime + stime from /proc) per request, over HTTP
              on 127.0.0.1 with a kept-alive connection (uvicorn + httptools included), as a
              ratio to the floor. Expect about 2x on a loaded machine: uvicorn adds ~65 us, and
              the same work runs with colder caches between the client's turns (docs/kms.md).

Best of --rounds rounds; the spread (worst/best) is printed beside each figure.
Usage: python bench/kms_emulator.py [--rounds 5] [--seconds 2]
"""

from __future__ import annotations

import _bootstrap  # noqa: F401  # first: runnable as python3 bench/NAME.py from a clone

# isort: split

import argparse
import base64
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP

from nitro_attest import Verifier
from nitro_attest.kms.sigv4 import Credentials, parse_authorization, sign_request
from nitro_attest.kms.sigv4 import expected_signature as sigv4_expected
from nitro_attest.kms_emulator import blob
from nitro_attest.kms_emulator.auth import SignedRequest, load_credentials
from nitro_attest.kms_emulator.runner import EmulatorSettings, build
from nitro_attest.kms_emulator.store import StateStore
from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state

ENTRY = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()"]
MEAS = {0: b"\x30" * 48, 1: b"\x31" * 48, 2: b"\x32" * 48}
ARN = "arn:aws:iam::111122223333:role/enclave"
CREDS = Credentials("AKIABENCH00000000001", "bench-secret-0000000000000000000000000000")
REGION = "us-east-1"
TICK = os.sysconf("SC_CLK_TCK")
_OAEP = OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def rounds_of(fn: Callable[[], object], rounds: int, seconds: float) -> list[float]:
    """Mean CPU seconds per call in each of ``rounds`` rounds of about ``seconds`` each."""
    return paired({"fn": fn}, rounds, seconds)["fn"]


def paired(
    fns: dict[str, Callable[[], object]], rounds: int, seconds: float
) -> dict[str, list[float]]:
    """Mean CPU seconds per call of each function, per round, the functions called in turn so
    that a busy moment of the (shared) machine weighs on every one of them alike."""
    for fn in fns.values():
        fn()
    clock = time.process_time_ns
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        spent = dict.fromkeys(fns, 0)
        calls = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for name, fn in fns.items():
                t0 = clock()
                fn()
                spent[name] += clock() - t0
            calls += 1
        for name in fns:
            out[name].append(spent[name] / calls / 1e9)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def signed(
    target: str, params: dict[str, object], host: str
) -> tuple[bytes, list[tuple[str, str]]]:
    body = json.dumps(params).encode()
    headers = [
        ("Host", host),
        ("Content-Type", "application/x-amz-json-1.1"),
        ("X-Amz-Target", f"TrentService.{target}"),
    ]
    headers += sign_request(
        "POST", "/", [], headers, body, CREDS, region=REGION, service="kms", when=datetime.now(UTC)
    )
    return body, headers


def show(name: str, values: list[float], floor: float | None = None) -> str:
    best = min(values)
    line = f"{name:<34} {best * 1e6:8.1f} us  (spread {max(values) / best:.2f})"
    if floor is not None:
        line += f"  ratio {best / floor:.2f}x"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per round")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sim_state = tmp / "sim"
        init_state(sim_state, SimulatorConfig(instance_id="i-0123456789abcdef0", measurements=MEAS))
        root = (sim_state / "root.pem").read_bytes()
        recipient_key = rsa.generate_private_key(65537, 2048)
        spki = recipient_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        document = SimulatedNsm.open(sim_state).attestation(public_key=spki)
        creds_json = json.dumps(
            [
                {
                    "AccessKeyId": CREDS.access_key_id,
                    "SecretAccessKey": CREDS.secret_access_key,
                    "Arn": ARN,
                }
            ]
        )
        (tmp / "creds.json").write_text(creds_json)
        policy: dict[str, object] = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "encrypt",
                    "Effect": "Allow",
                    "Principal": {"AWS": ARN},
                    "Action": "kms:Encrypt",
                    "Resource": "*",
                },
                {
                    "Sid": "enclave",
                    "Effect": "Allow",
                    "Principal": {"AWS": ARN},
                    "Action": "kms:*",
                    "Resource": "*",
                    "Condition": {
                        "StringEqualsIgnoreCase": {
                            "kms:RecipientAttestation:ImageSha384": MEAS[0].hex()
                        }
                    },
                },
            ],
        }

        # --- in-process: the app on a state folder of its own
        settings = EmulatorSettings(
            "127.0.0.1", 0, tmp / "state", load_credentials(creds_json), (root,), REGION
        )
        store = StateStore(settings.state_dir)
        app = build(settings, store)
        host = "127.0.0.1:1"
        body, headers = signed(
            "CreateKey",
            {"Policy": json.dumps(policy), "BypassPolicyLockoutSafetyCheck": True},
            host,
        )
        status, answer = app.handle(_request(body, headers))
        assert status == 200, answer
        key_id = json.loads(answer)["KeyMetadata"]["KeyId"]
        body, headers = signed(
            "Encrypt", {"KeyId": key_id, "Plaintext": base64.b64encode(b"s" * 32).decode()}, host
        )
        ciphertext = json.loads(app.handle(_request(body, headers))[1])["CiphertextBlob"]
        decrypt = {
            "CiphertextBlob": ciphertext,
            "Recipient": {
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                "AttestationDocument": base64.b64encode(document).decode(),
            },
        }
        body, headers = signed("Decrypt", decrypt, host)
        request = _request(body, headers)
        status, answer = app.handle(request)
        assert status == 200 and "CiphertextForRecipient" in json.loads(answer), answer

        # --- the floor, on the same inputs
        verifier = Verifier(root_pem=root)
        material = store.state.keys[key_id].material
        sealed = base64.b64decode(ciphertext)
        header = blob.read_header(sealed)
        auth = parse_authorization(dict(request.headers)["authorization"])
        amz_date = dict(request.headers)["x-amz-date"]
        content_key = os.urandom(32)
        public = recipient_key.public_key()

        def floor_once() -> None:
            verifier.verify(document, allow_debug=True)
            public.encrypt(content_key, _OAEP)
            blob.open_blob(material, header, {})
            sigv4_expected(
                "POST",
                "/",
                [],
                request.headers,
                request.body,
                CREDS.secret_access_key,
                auth,
                amz_date,
            )

        parts = {
            "verify": lambda: verifier.verify(document, allow_debug=True),
            "rsa-oaep encrypt": lambda: public.encrypt(content_key, _OAEP),
            "aes-gcm open": lambda: blob.open_blob(material, header, {}),
            "sigv4 check": lambda: sigv4_expected(
                "POST",
                "/",
                [],
                request.headers,
                request.body,
                CREDS.secret_access_key,
                auth,
                amz_date,
            ),
        }
        both = paired(
            {"floor": floor_once, "handle": lambda: app.handle(request)}, args.rounds, args.seconds
        )
        floor, inproc = both["floor"], both["handle"]
        part_times = paired(parts, 3, args.seconds / 2)
        store.close()

        # --- served: the CLI's process over HTTP, its own CPU per request
        served = _served(tmp, sim_state, decrypt, policy, args)

    best_floor = min(floor)
    print(show("floor (verify+oaep+gcm+sigv4)", floor))
    for name, values in part_times.items():
        print(show(f"  {name}", values))
    print(show("emulator in-process (handle)", inproc, best_floor))
    print(show("emulator served (process CPU)", served, best_floor))
    ratio = min(inproc) / best_floor
    print(f"target: in-process <= 1.50x the floor -> {'met' if ratio <= 1.5 else 'NOT met'}")


def _request(body: bytes, headers: list[tuple[str, str]]) -> SignedRequest:
    return SignedRequest("POST", "/", [], [(k.lower(), v) for k, v in headers], body)


def _served(
    tmp: Path,
    sim_state: Path,
    decrypt: dict[str, object],
    policy: dict[str, object],
    args: argparse.Namespace,
) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [
            *ENTRY,
            "kms",
            "emulator",
            "--listen",
            f"127.0.0.1:{port}",
            "--state",
            str(tmp / "served"),
            "--credentials",
            str(tmp / "creds.json"),
            "--root",
            str(sim_state / "root.pem"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        host = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.connect()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the emulator did not start") from None
                time.sleep(0.05)

        def call(target: str, params: dict[str, object]) -> dict[str, object]:
            body, headers = signed(target, params, host)
            conn.request("POST", "/", body, dict(headers))
            answer = conn.getresponse().read()
            result: dict[str, object] = json.loads(answer)
            return result

        created = call(
            "CreateKey", {"Policy": json.dumps(policy), "BypassPolicyLockoutSafetyCheck": True}
        )
        key_id = created["KeyMetadata"]["KeyId"]  # type: ignore[index]
        encrypted = call(
            "Encrypt", {"KeyId": key_id, "Plaintext": base64.b64encode(b"s" * 32).decode()}
        )
        body, headers = signed(
            "Decrypt", {**decrypt, "CiphertextBlob": encrypted["CiphertextBlob"]}, host
        )
        header_map = dict(headers)
        out = []
        for _ in range(args.rounds):
            calls = 0
            cpu0 = cpu_seconds(proc.pid)
            t_end = time.perf_counter() + args.seconds
            while time.perf_counter() < t_end:
                conn.request("POST", "/", body, header_map)
                response = conn.getresponse()
                data = response.read()
                assert response.status == 200, data
                calls += 1
            out.append((cpu_seconds(proc.pid) - cpu0) / calls)
        conn.close()
        return out
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


if __name__ == "__main__":
    main()
