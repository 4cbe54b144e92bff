"""CPU per Decrypt with Recipient in the local KMS, against its unavoidable crypto, in one run.

- floor:      one warm document verification (``Verifier.verify``, the same kind of document),
              one RSA-OAEP-SHA256 encryption (2048-bit), one AES-256-GCM open of a blob, one
              SigV4 check (``expected_signature`` over the same request): what no implementation
              of Decrypt-with-Recipient can skip.
- in-process: ``KmsApp.handle`` on the signed request (SigV4 check, JSON, key lookup, document
              verification, key policy with attestation conditions, blob open, CMS envelope):
              the emulator's own work, without the HTTP server. Target: at most 1.5x the floor.
- served:     the emulator process's own CPU (utime + stime from /proc) per request, over HTTP
              on 127.0.0.1 with a kept-alive connection (its front, kms_emulator/front.py,
              included), as a ratio to the floor.
- paced:      the floor and in-process again, each call after a 1 ms sleep (not counted), as
              bench/kms.py does: what a wait before the work costs it (colder caches), measured
              on both sides of the ratio.
- served floor: the floor's crypto in a process of its own behind the least an HTTP server does
              (a blocking socket: the head read to its blank line, the body by Content-Length, one
              send of a fixed answer of the emulator's size), measured the same way in the same
              rounds: what being woken by a request and serving it costs the unavoidable work
              itself (colder caches, the syscalls), which no implementation avoids either.
              served / served floor is the like-for-like ratio (docs/kms.md, "Speed").
Target (issue 20): at most 1.5x, each ratio taken between figures measured the same way
(in-process / floor, paced / paced, served / served floor); served / the hot floor is printed too.

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
PACE = 0.001  # the paced figures' sleep before each call
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
                if getattr(fn, "sleep_first", False):
                    time.sleep(PACE)
                t0 = clock()
                fn()
                spent[name] += clock() - t0
            calls += 1
        for name in fns:
            out[name].append(spent[name] / calls / 1e9)
    return out


def make_floor(
    root: bytes,
    document: bytes,
    spki: bytes,
    material: bytes,
    sealed: bytes,
    request: SignedRequest,
    secret: str,
) -> dict[str, Callable[[], object]]:
    """The unavoidable operations on these inputs, each alone."""
    verifier = Verifier(root_pem=root)
    header = blob.read_header(sealed)
    headers = dict(request.headers)
    auth = parse_authorization(headers["authorization"])
    amz_date = headers["x-amz-date"]
    content_key = os.urandom(32)
    public = serialization.load_der_public_key(spki)
    assert isinstance(public, rsa.RSAPublicKey)

    def sigv4() -> object:
        return sigv4_expected(
            "POST", "/", [], request.headers, request.body, secret, auth, amz_date
        )

    return {
        "verify": lambda: verifier.verify(document, allow_debug=True),
        "rsa-oaep encrypt": lambda: public.encrypt(content_key, _OAEP),
        "aes-gcm open": lambda: blob.open_blob(material, header, {}),
        "sigv4 check": sigv4,
    }


def paced(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` after a 1 ms sleep; paired() times only the call (the sleep is outside its clock)."""

    def call() -> object:
        return fn()

    call.sleep_first = True  # type: ignore[attr-defined]
    return call


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
        material = store.state.keys[key_id].material
        sealed = base64.b64decode(ciphertext)
        parts = make_floor(
            root, document, spki, material, sealed, request, CREDS.secret_access_key
        )

        def floor_once() -> None:
            for part in parts.values():
                part()

        both = paired(
            {"floor": floor_once, "handle": lambda: app.handle(request)}, args.rounds, args.seconds
        )
        floor, inproc = both["floor"], both["handle"]
        slept = paired(
            {"floor": paced(floor_once), "handle": paced(lambda: app.handle(request))},
            args.rounds,
            args.seconds / 2,
        )
        part_times = paired(parts, 3, args.seconds / 2)
        store.close()

        # --- served: the CLI's process over HTTP, its own CPU per request, beside the floor
        # served by a bare server (its inputs in floor.json)
        (tmp / "floor.json").write_text(
            json.dumps(
                {
                    "root": root.decode(),
                    "document": base64.b64encode(document).decode(),
                    "spki": base64.b64encode(spki).decode(),
                    "material": base64.b64encode(material).decode(),
                    "sealed": ciphertext,
                    "headers": request.headers,
                    "body": request.body.decode(),
                    "secret": CREDS.secret_access_key,
                    "answer_size": len(answer),
                }
            )
        )
        served, served_floor = _served(tmp, sim_state, decrypt, policy, args)

    best_floor = min(floor)
    print(show("floor (verify+oaep+gcm+sigv4)", floor))
    for name, values in part_times.items():
        print(show(f"  {name}", values))
    print(show("emulator in-process (handle)", inproc, best_floor))
    paced_floor = min(slept["floor"])
    print(show("floor paced (after 1 ms sleep)", slept["floor"], best_floor))
    print(show("emulator in-process paced", slept["handle"], best_floor))
    print(f"  in-process paced / floor paced: {min(slept['handle']) / paced_floor:.2f}x")
    print(show("emulator served (process CPU)", served, best_floor))
    print(show("floor served (bare server)", served_floor, best_floor))
    like = [e / f for e, f in zip(served, served_floor, strict=True)]
    print(
        f"served / served floor (same rounds): best {min(like):.2f}x, "
        f"rounds {min(like):.2f}..{max(like):.2f}x"
    )
    # The target compares like with like: a process woken by a lone request runs every step,
    # the crypto included, slower than a hot loop does (the served floor shows by how much), so
    # served CPU is held to the served floor, not to the hot loop (docs/kms.md, "Speed").
    print("target (issue 20): at most 1.5x the unavoidable crypto, both measured the same way")
    for label, ratio in (
        ("in-process / floor (both hot)", min(inproc) / best_floor),
        ("in-process paced / floor paced", min(slept["handle"]) / paced_floor),
        ("served / served floor (both woken per request)", min(like)),
    ):
        print(f"  {label:<48} {ratio:.2f}x -> {'met' if ratio <= 1.5 else 'NOT met'}")
    print(
        f"  (served / hot floor, a woken process against a hot loop: "
        f"{min(served) / best_floor:.2f}x; the bare server alone is "
        f"{min(served_floor) / best_floor:.2f}x)"
    )


def _request(body: bytes, headers: list[tuple[str, str]]) -> SignedRequest:
    return SignedRequest("POST", "/", [], [(k.lower(), v) for k, v in headers], body)


def _start(
    command: list[str], port: int
) -> tuple[subprocess.Popen[bytes], http.client.HTTPConnection]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.connect()
            return proc, conn
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"{command[3:5]} did not start") from None
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _served(
    tmp: Path,
    sim_state: Path,
    decrypt: dict[str, object],
    policy: dict[str, object],
    args: argparse.Namespace,
) -> tuple[list[float], list[float]]:
    port = _free_port()
    proc, conn = _start(
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
        port,
    )
    floor_port = _free_port()
    floor_proc, floor_conn = _start(
        [sys.executable, __file__, "--floor-server", str(tmp / "floor.json"), str(floor_port)],
        floor_port,
    )
    try:
        host = f"127.0.0.1:{port}"

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
        out: list[float] = []
        floor_out: list[float] = []
        for _ in range(args.rounds):
            out.append(_round(proc.pid, conn, body, header_map, args.seconds))
            floor_out.append(_round(floor_proc.pid, floor_conn, body, header_map, args.seconds))
        return out, floor_out
    finally:
        for c, p in ((conn, proc), (floor_conn, floor_proc)):
            c.close()
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)


def _round(
    pid: int, conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str],
    seconds: float,
) -> float:
    """The server's CPU per request over ``seconds`` of requests one after the other."""
    for _ in range(20):  # warm: the other server ran meanwhile
        conn.request("POST", "/", body, headers)
        conn.getresponse().read()
    calls = 0
    cpu0 = cpu_seconds(pid)
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        conn.request("POST", "/", body, headers)
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, data
        calls += 1
    return (cpu_seconds(pid) - cpu0) / calls


def floor_server(inputs: Path, port: int) -> None:
    """The floor's operations behind a bare HTTP/1.1 server: one connection, requests read to
    their blank line and Content-Length, each answered in one send with a fixed body."""
    given = json.loads(inputs.read_text())
    request = SignedRequest(
        "POST", "/", [], [(k, v) for k, v in given["headers"]], given["body"].encode()
    )
    parts = make_floor(
        given["root"].encode(),
        base64.b64decode(given["document"]),
        base64.b64decode(given["spki"]),
        base64.b64decode(given["material"]),
        base64.b64decode(given["sealed"]),
        request,
        given["secret"],
    )
    operations = tuple(parts.values())
    size = int(given["answer_size"])
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\n"
        b"content-length: %d\r\n\r\n" % size
    ) + b"x" * size
    with socket.create_server(("127.0.0.1", port)) as listener:
        while True:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffer = b""
                while True:
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buffer += data
                        continue
                    head = buffer[:end].lower()
                    at = head.find(b"content-length:")
                    length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                    while len(buffer) < end + 4 + length:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffer += data
                    buffer = buffer[end + 4 + length :]
                    for operation in operations:
                        operation()
                    conn.sendall(answer)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--floor-server"]:
        floor_server(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
