"""Hostile clients never hurt honest ones: 200 bad connections interleaved with real requests.

Threat model (docs/threat-model.md): the parent calls every endpoint with any bytes; a hostile
client costs only its own connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import tracemalloc
from pathlib import Path

import cbor2

from nitro_attest.wire import client, protocol
from tests.serverkit import LogCollector, running_server

HOSTILE = 200
REAL = 60
CONCURRENCY = 24


async def _hostile(kind: int, path: str, rng: random.Random) -> None:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        if kind == 0:  # random bytes, then close
            writer.write(rng.randbytes(rng.randrange(1, 300)))
        elif kind == 1:  # huge length prefix
            writer.write(struct.pack(">I", rng.choice([0xFFFFFFFF, 1 << 20, 65537])))
        elif kind == 2:  # half a frame, then silence until the server gives up
            writer.write(struct.pack(">I", 1000) + b"x" * rng.randrange(0, 999))
        elif kind == 3:  # instant close
            pass
        elif kind == 4:  # half a header, then silence
            writer.write(b"\x00\x00")
        elif kind == 5:  # a whole frame of garbage CBOR
            body = rng.randbytes(rng.randrange(1, 100))
            writer.write(struct.pack(">I", len(body)) + body)
        elif kind == 6:  # well-formed CBOR, wrong shapes
            writer.write(protocol.encode_frame(cbor2.dumps({"v": 1, "type": "attest", "nonce": 5})))
        elif kind == 7:  # requests pipelined, responses never read, abrupt close
            writer.write(protocol.AttestRequest(nonce=b"p").encode() * 20)
        await writer.drain()
        if kind in (1, 2, 4, 5, 6):
            await asyncio.wait_for(reader.read(), 5)  # until the server closes
    finally:
        if kind == 7:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


async def _storm(path: str) -> list[bool]:
    rng = random.Random(2026)
    jobs: list[tuple[str, int]] = [("hostile", i % 8) for i in range(HOSTILE)]
    jobs += [("real", i) for i in range(REAL)]
    rng.shuffle(jobs)
    gate = asyncio.Semaphore(CONCURRENCY)
    real_ok: list[bool] = []

    async def run(job: tuple[str, int]) -> None:
        async with gate:
            kind, n = job
            if kind == "hostile":
                await _hostile(n, path, rng)
                return
            nonce = n.to_bytes(8, "big")
            doc = await asyncio.to_thread(
                client.request_attestation, f"unix://{path}", nonce=nonce, timeout=10
            )
            real_ok.append(doc.startswith(b"FAKE|" + nonce))

    await asyncio.gather(*(run(j) for j in jobs))
    return real_ok


def test_hostile_storm_does_not_affect_real_requests(tmp_path: Path) -> None:
    path = str(tmp_path / "enclave.sock")
    asyncio_errors = LogCollector()
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(asyncio_errors)
    tracemalloc.start()
    try:
        with running_server(
            f"unix://{path}", read_timeout=0.3, frame_deadline=0.3, max_connections=64
        ) as (
            _addr,
            server,
            logs,
        ):
            asyncio.run(_storm(path))  # warm-up round: caches, thread pools, buffers
            baseline = tracemalloc.get_traced_memory()[0]
            real_ok = asyncio.run(_storm(path))
            after = tracemalloc.get_traced_memory()[0]
            for _ in range(200):
                if server.active_connections == 0:
                    break
                asyncio.run(asyncio.sleep(0.02))
            assert server.active_connections == 0
    finally:
        tracemalloc.stop()
        asyncio_log.removeHandler(asyncio_errors)

    assert real_ok == [True] * REAL
    growth = after - baseline
    assert growth < 2 * 1024 * 1024, f"memory grew by {growth} bytes over one storm"
    errors = [r for r in logs.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert [r.getMessage() for r in asyncio_errors.records if r.levelno >= logging.ERROR] == []
    lines = logs.lines()
    assert any("went quiet" in line for line in lines)
    assert any("frame_too_large" in line or "announces" in line for line in lines)


def test_slow_reader_does_not_block_others() -> None:
    """A client that pipelines requests and never reads only fills its own buffers."""
    with running_server("tcp://127.0.0.1:0", read_timeout=0.5) as (addr, _server, _logs):
        hog = socket.create_connection((addr.host, addr.port))
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            hog.sendall(protocol.AttestRequest(nonce=b"h" * 512).encode() * 200)
            for i in range(10):
                nonce = bytes([i]) * 4
                assert client.request_attestation(str(addr), nonce=nonce).startswith(
                    b"FAKE|" + nonce
                )
        finally:
            hog.close()
