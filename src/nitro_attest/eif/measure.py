"""One pass over an EIF: CRC32 of the whole file and the SHA-384 streams behind PCR0, PCR1, PCR2.

PCRn = SHA-384(48 zero bytes || SHA-384(data)), where the data is kernel || cmdline || ramdisks
(PCR0), kernel || cmdline || ramdisk0 (PCR1), ramdisk1 || ramdisk2 ... (PCR2). PCR0 and PCR1
share their prefix, so one hash object serves both and PCR1 is a copy taken after ramdisk 0.
The application ramdisks feed two hashes (PCR0 and PCR2): hashlib and zlib drop the GIL on large
buffers, so a worker thread hashes PCR2 and the CRC while this thread reads and hashes PCR0.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nitro_attest.attestation.pcr import extend_zero
from nitro_attest.eif.format import (
    CRC_OFFSET,
    HEADER_SIZE,
    SECTION_HEADER_SIZE,
    EifError,
    SectionHeader,
)
from nitro_attest.eif.format import SectionType as T
from nitro_attest.eif.reader import EifLayout, Section, read_exact

CHUNK_SIZE = 1 << 20
HASH_ALGORITHM = "Sha384 { ... }"
"""How nitro-cli names its hasher in JSON (the Rust Debug string of Sha384)."""


@dataclass(frozen=True, slots=True)
class EifScan:
    layout: EifLayout
    pcr0: bytes
    pcr1: bytes
    pcr2: bytes
    crc_computed: int
    metadata: bytes | None
    signature: bytes | None

    @property
    def crc_ok(self) -> bool:
        return self.crc_computed == self.layout.header.crc32


class _Crc:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)


def scan(fh: io.BufferedReader, layout: EifLayout, *, chunk_size: int = CHUNK_SIZE) -> EifScan:
    """Read the file once from start to end; section data is never held whole, except metadata
    and signature, whose sizes the layout has already capped."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    crc = _Crc()
    header = read_exact(fh, 0, HEADER_SIZE, "EIF header")
    crc.update(header[:CRC_OFFSET])
    if header != layout.header.pack():
        raise EifError("EIF header changed while reading")

    prefix = hashlib.sha384()  # kernel || cmdline || ramdisk0 ..., becomes PCR0
    app = hashlib.sha384()  # ramdisk1 ...
    pcr1_digest: bytes | None = None
    metadata: bytes | None = None
    signature: bytes | None = None
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    first_ramdisk = True
    fh.seek(HEADER_SIZE)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eif-hash") as pool:
        for section in layout.sections:
            head = fh.read(SECTION_HEADER_SIZE)
            if len(head) != SECTION_HEADER_SIZE or head != _section_header_bytes(section):
                raise EifError(f"section {section.index} header changed while reading")
            crc.update(head)
            if section.type in (T.KERNEL, T.CMDLINE):
                _stream(fh, section, view, [prefix.update], [crc.update], pool)
            elif section.type == T.RAMDISK and first_ramdisk:
                _stream(fh, section, view, [prefix.update], [crc.update], pool)
                pcr1_digest = prefix.copy().digest()
                first_ramdisk = False
            elif section.type == T.RAMDISK:
                _stream(fh, section, view, [prefix.update], [app.update, crc.update], pool)
            else:
                data = _read_small(fh, section)
                crc.update(data)
                if section.type == T.METADATA:
                    metadata = data
                else:
                    signature = data
        if fh.read(1):
            raise EifError("file grew while reading")
    if pcr1_digest is None:  # read_layout guarantees a ramdisk; keep the invariant explicit
        raise EifError("no RAMDISK section")
    return EifScan(
        layout=layout,
        pcr0=extend_zero(prefix.digest()),
        pcr1=extend_zero(pcr1_digest),
        pcr2=extend_zero(app.digest()),
        crc_computed=crc.value,
        metadata=metadata,
        signature=signature,
    )


Sink = Callable[[memoryview], None]


def _stream(
    fh: io.BufferedReader,
    section: Section,
    view: memoryview,
    here: list[Sink],
    there: list[Sink],
    pool: ThreadPoolExecutor,
) -> None:
    """Feed a section's data, chunk by chunk, to ``here`` (this thread) and ``there`` (worker)."""
    remaining = section.size
    while remaining:
        n = fh.readinto(view[: min(remaining, len(view))])
        if not n:
            raise EifError(
                f"section {section.index} ({section.type.name}): file ended early (file changed?)"
            )
        chunk = view[:n]
        future = pool.submit(_feed, there, chunk)
        _feed(here, chunk)
        future.result()  # the buffer is reused by the next read
        remaining -= n


def _feed(sinks: list[Sink], chunk: memoryview) -> None:
    for sink in sinks:
        sink(chunk)


def _read_small(fh: io.BufferedReader, section: Section) -> bytes:
    data = fh.read(section.size)
    if len(data) != section.size:
        raise EifError(
            f"section {section.index} ({section.type.name}): file ended early (file changed?)"
        )
    return data


def _section_header_bytes(section: Section) -> bytes:
    return SectionHeader(int(section.type), 0, section.size).pack()
