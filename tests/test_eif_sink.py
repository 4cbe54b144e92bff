"""The writer's sink: three threads, a ring of buffers, and still every hash in byte order."""

from __future__ import annotations

import hashlib
import os
import threading
import zlib
from pathlib import Path

import pytest

from nitro_attest.eif.sink import CHUNK, RING, Crc, HashingSink


def test_hashes_and_file_follow_byte_order_across_sections(tmp_path: Path) -> None:
    src = tmp_path / "src"
    data = os.urandom(CHUNK * (RING + 3) + 12345)
    src.write_bytes(data)
    one, two, crc = hashlib.sha384(), hashlib.sha384(), Crc()
    fd = os.open(src, os.O_RDONLY)
    with open(tmp_path / "out", "w+b") as fh, HashingSink(fh, crc) as sink:
        sink.begin([one], [])
        sink.write(b"head")  # small writes, then reads that wrap the ring several times
        sink.fill(fd, 0, 1000, "src")
        sink.begin([one], [two])
        for at in range(1000, len(data), 700_001):
            sink.fill(fd, at, min(700_001, len(data) - at), "src")
            sink.write(b"x" * 3)
        sink.close()
    os.close(fd)
    tail = b"".join(data[at : at + 700_001] + b"xxx" for at in range(1000, len(data), 700_001))
    whole = b"head" + data[:1000] + tail
    assert (tmp_path / "out").read_bytes() == whole
    assert one.digest() == hashlib.sha384(whole).digest()
    assert two.digest() == hashlib.sha384(tail).digest()
    assert crc.value == zlib.crc32(whole)


class Broken:
    def update(self, data: bytes | memoryview) -> None:
        raise ValueError("hash failed")


def test_a_hashing_thread_failure_reaches_the_writer_and_threads_stop(tmp_path: Path) -> None:
    before = threading.active_count()
    with (
        pytest.raises(ValueError, match="hash failed"),
        open(tmp_path / "out", "wb") as fh,
        HashingSink(fh, Crc()) as sink,
    ):
        sink.begin([], [Broken()])
        sink.write(b"y" * (CHUNK * 2))
        sink.close()
    assert threading.active_count() == before


def test_a_short_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"abc")
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        with (
            open(tmp_path / "out", "wb") as fh,
            HashingSink(fh, Crc()) as sink,
            pytest.raises(OSError, match="ended early"),
        ):
            sink.fill(fd, 0, 10, "src")
    finally:
        os.close(fd)
