"""serve, proxy and service are observable as the services users run beside them: Prometheus
metrics scraped over HTTP (process metrics, build info, their own counters, no ``_created``
series) and --log-format json with UTC timestamps. Real processes, scraped as Prometheus would."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nitro_attest.logs import TextFormatter, json_line, utc_stamp
from nitro_attest.wire.client import request_attestation

from .serve_process import ENTRY, serve_process
from .servicekit import free_port, service, wait_until, write_policies

UTC_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        text: str = answer.read().decode()
    return text


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def assert_common(text: str, component: str) -> None:
    got = samples(text)
    assert any(k.startswith("process_cpu_seconds_total") for k in got), text[:500]
    assert "process_resident_memory_bytes" in got and "process_open_fds" in got
    build = [k for k in got if k.startswith("nitro_attest_build_info{")]
    assert len(build) == 1 and f'component="{component}"' in build[0] and got[build[0]] == 1
    assert re.findall(r"^\w+_created(?=[{ ])", text, re.M) == []  # no stray *_created series


def json_lines(text: str) -> list[dict[str, object]]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert records
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record)
        assert UTC_STAMP.match(str(record["ts"])), record
    return records


def test_serve_metrics_and_json_logs(sim_state: Path, tmp_path: Path) -> None:
    port = free_port()
    with serve_process(sim_state, tmp_path / "s.sock", "--metrics", f"127.0.0.1:{port}",
                       "--log-format", "json") as served:  # fmt: skip
        for _ in range(3):
            request_attestation(served.address, nonce=b"n" * 32, timeout=10)
        text = scrape(port)
        assert_common(text, "serve")
        got = samples(text)
        assert got['nitro_attest_serve_requests_total{outcome="ok",type="attest"}'] == 3
        assert got["nitro_attest_serve_connections_shed_total"] == 0
        assert "nitro_attest_serve_connections" in got
    assert served.proc.returncode == 0
    records = json_lines(served.stderr())
    requests = [r for r in records if " attest " in str(r["msg"])]
    assert len(requests) == 3 and requests[0]["logger"] == "nitro_attest.wire.server"
    assert "nnnn" not in served.stderr()  # sizes, never the nonce


def test_proxy_metrics_and_json_logs(sim_state: Path, tmp_path: Path) -> None:
    listen, metrics = free_port(), free_port()
    log = tmp_path / "proxy.log"
    with serve_process(sim_state, tmp_path / "s.sock") as served, log.open("wb") as err:
        proc = subprocess.Popen(
            [*ENTRY, "proxy", "--listen", f"tcp://127.0.0.1:{listen}", "--to", served.address,
             "--metrics", f"127.0.0.1:{metrics}", "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            document = request_attestation(f"tcp://127.0.0.1:{listen}", nonce=b"x", timeout=15)
            assert document[:1] == b"\x84"

            def counted() -> bool:
                return any(k.startswith("nitro_attest_proxy_connections_total")
                           for k in samples(scrape(metrics)))  # fmt: skip

            wait_until(counted, timeout=10, what="the proxy's connection counted")
            text = scrape(metrics)
        finally:
            proc.terminate()
            proc.wait(20)
    assert proc.returncode == 0
    assert_common(text, "proxy")
    got = samples(text)
    assert got['nitro_attest_proxy_connections_total{end="closed"}'] == 1
    assert got['nitro_attest_proxy_bytes_total{direction="down"}'] >= len(document)
    records = json_lines(log.read_text())
    assert any(str(r["msg"]).startswith("connection peer=tcp://127.0.0.1") for r in records)


def test_service_metrics_status_codes_and_json_logs(sim_state: Path, tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies.json")
    port = free_port()
    with service(["--policies", str(policies), "--log-format", "json"], port=port) as (base, proc):
        urllib.request.urlopen(base + "/healthz", timeout=5).close()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert missing.value.code == 404
        text = scrape(port)
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert_common(text, "service")
    got = samples(text)
    assert got['nitro_attest_http_responses_total{code="200",endpoint="healthz"}'] >= 1
    assert got['nitro_attest_http_responses_total{code="404",endpoint="other"}'] == 1
    lines = [line for line in out.splitlines() if line.startswith("{")]
    records = json_lines("\n".join(lines))
    assert any(r["logger"].startswith("uvicorn") for r in records)  # type: ignore[union-attr]


def test_text_logs_are_utc_too() -> None:
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.created = 0.0
    assert TextFormatter().format(record) == "1970-01-01T00:00:00.000Z INFO hello you"
    assert utc_stamp(1.5) == "1970-01-01T00:00:01.500Z"
    assert json.loads(json_line(0.0, "INFO", "x", "m")) == {
        "ts": "1970-01-01T00:00:00.000Z", "level": "INFO", "logger": "x", "msg": "m",
    }  # fmt: skip


def test_metrics_address_errors_are_usage_errors(sim_state: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [*ENTRY, "serve", "--listen", f"unix://{tmp_path}/s.sock", "--nsm", "simulator",
         "--state", str(sim_state), "--metrics", "nowhere"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("nitro-attest: error: --metrics 'nowhere': expected HOST:PORT")
    time.sleep(0)  # nothing was left listening: the socket file was never made
    assert not (tmp_path / "s.sock").exists()
