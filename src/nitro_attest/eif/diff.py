"""`eif diff`: why two EIFs differ. Sections are compared by index and SHA-256 of their data;
differing ramdisks are read as cpio and compared path by path (content, mode, owner, link target,
type, device, mtime), differing metadata key by key. Memory: one small record per cpio entry."""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from nitro_attest.eif.cpio import CpioEntry, CpioError, iter_cpio
from nitro_attest.eif.format import EifError, SectionType
from nitro_attest.eif.reader import MAX_METADATA_SIZE, EifLayout, Section, open_eif, read_layout

CHUNK = 1 << 20
MAX_LISTED = 200
MAX_ENTRIES = 2_000_000
"""One small record per entry is kept; a hostile EIF could otherwise hold tens of millions."""


@dataclass(slots=True)
class SectionDiff:
    index: int
    section_type: str
    summary: str
    details: list[str] = field(default_factory=list)
    truncated: int = 0


@dataclass(slots=True)
class DiffReport:
    header: list[str] = field(default_factory=list)
    sections: list[SectionDiff] = field(default_factory=list)
    pcrs: list[str] = field(default_factory=list)
    """Which of PCR0/1/2 the differences change."""

    @property
    def same(self) -> bool:
        return not self.header and not self.sections

    def to_json(self) -> dict[str, Any]:
        return {
            "Identical": self.same,
            "PCRsDiffer": self.pcrs,
            "Header": self.header,
            "Sections": [
                {
                    "Index": s.index,
                    "Type": s.section_type,
                    "Summary": s.summary,
                    "Details": s.details,
                    "NotListed": s.truncated,
                }
                for s in self.sections
            ],
        }

    def text(self, a: str, b: str) -> str:
        if self.same:
            return f"{a} and {b} are identical"
        lines = [f"{a} and {b} differ" + (f" ({', '.join(self.pcrs)} differ)" if self.pcrs else "")]
        lines += [f"  header: {h}" for h in self.header]
        for s in self.sections:
            lines.append(f"  section {s.index} {s.section_type}: {s.summary}")
            lines += [f"    {d}" for d in s.details]
            if s.truncated:
                lines.append(f"    ... and {s.truncated} more")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Record:
    file_type: int
    mode: int
    uid: int
    gid: int
    mtime: int
    content: str
    """sha256 of the data (of the first name of a hard-linked file), or the link target."""
    rdev: tuple[int, int]


def _sha256(fh: BinaryIO, section: Section) -> str:
    fh.seek(section.data_offset)
    h = hashlib.sha256()
    left = section.size
    while left:
        block = fh.read(min(left, CHUNK))
        if not block:
            raise EifError(f"section {section.index}: file ended early")
        h.update(block)
        left -= len(block)
    return h.hexdigest()


def _cpio_records(fh: BinaryIO, section: Section) -> dict[bytes, _Record]:
    fh.seek(section.data_offset)
    hashes: dict[bytes, Any] = {}
    targets: dict[bytes, bytes] = {}

    def on_data(entry: CpioEntry, block: bytes) -> None:
        if entry.header.file_type == stat.S_IFLNK:
            targets[entry.header.name] = targets.get(entry.header.name, b"") + block[:4096]
        else:
            hashes.setdefault(entry.header.name, hashlib.sha256()).update(block)

    records: dict[bytes, _Record] = {}
    by_ino: dict[int, str] = {}
    for entry in iter_cpio(fh, section.size, on_data):
        h = entry.header
        digest = hashes.pop(h.name, hashlib.sha256())
        if h.file_type == stat.S_IFLNK:
            content = "-> " + targets.pop(h.name, b"").decode("utf-8", "backslashreplace")
        elif h.file_type == stat.S_IFREG:
            content = digest.hexdigest()
            if h.nlink > 1:  # later names of a hard-linked file carry no data
                content = by_ino.setdefault(h.ino, content) if h.size else by_ino.get(h.ino, "")
        else:
            content = ""
        if h.name in records:
            raise CpioError(f"cpio: {h.name[:80]!r} appears twice")
        if len(records) >= MAX_ENTRIES:
            raise CpioError(f"cpio: more than {MAX_ENTRIES} entries")
        records[h.name] = _Record(
            h.file_type, h.mode & 0o7777, h.uid, h.gid, h.mtime, content, (h.rdevmajor, h.rdevminor)
        )
    return records


def _file_type_name(file_type: int) -> str:
    return {
        stat.S_IFDIR: "directory",
        stat.S_IFREG: "file",
        stat.S_IFLNK: "symlink",
        stat.S_IFCHR: "char device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "fifo",
    }.get(file_type, f"type {file_type:o}")


def _compare_records(a: _Record, b: _Record) -> list[str]:
    if a.file_type != b.file_type:
        return [f"type {_file_type_name(a.file_type)} -> {_file_type_name(b.file_type)}"]
    how = []
    if a.content != b.content:
        if a.file_type == stat.S_IFLNK:
            how.append(f"link target {a.content[3:]} -> {b.content[3:]}")
        else:
            how.append(f"content (sha256 {a.content[:12]} -> {b.content[:12]})")
    if a.mode != b.mode:
        how.append(f"mode {a.mode:04o} -> {b.mode:04o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        how.append(f"owner {a.uid}:{a.gid} -> {b.uid}:{b.gid}")
    if a.rdev != b.rdev:
        how.append(f"device {a.rdev[0]}:{a.rdev[1]} -> {b.rdev[0]}:{b.rdev[1]}")
    if a.mtime != b.mtime:
        how.append(f"mtime {a.mtime} -> {b.mtime}")
    return how


def _diff_ramdisk(fa: BinaryIO, sa: Section, fb: BinaryIO, sb: Section, out: SectionDiff) -> None:
    try:
        ra, rb = _cpio_records(fa, sa), _cpio_records(fb, sb)
    except CpioError as exc:
        out.summary += f" (not comparable as cpio: {exc})"
        return
    details = []
    for name in sorted(ra.keys() | rb.keys()):
        shown = name.decode("utf-8", "backslashreplace")
        if name not in rb:
            details.append(f"{shown}: only in A")
        elif name not in ra:
            details.append(f"{shown}: only in B")
        else:
            how = _compare_records(ra[name], rb[name])
            if how:
                details.append(f"{shown}: {', '.join(how)}")
    if ra != rb:
        out.summary += f"; {len(details)} path(s) differ"
    else:
        details.append(
            "same paths and contents; the archives differ in layout (order, inode "
            "numbers, link counts or padding)"
        )
    out.details = details[:MAX_LISTED]
    out.truncated = max(0, len(details) - MAX_LISTED)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _diff_metadata(fa: BinaryIO, sa: Section, fb: BinaryIO, sb: Section, out: SectionDiff) -> None:
    docs = []
    for fh, s in ((fa, sa), (fb, sb)):
        if s.size > MAX_METADATA_SIZE:
            return
        fh.seek(s.data_offset)
        try:
            docs.append(_flatten(json.loads(fh.read(s.size))))
        except (ValueError, RecursionError):  # the EIFs are untrusted too
            out.summary += " (not comparable as JSON)"
            return
    a, b = docs
    for key in sorted(a.keys() | b.keys()):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            left = json.dumps(a.get(key, "<absent>"))[:80]
            right = json.dumps(b.get(key, "<absent>"))[:80]
            out.details.append(f"{key}: {left} -> {right}")
    out.summary += " (not measured: no PCR changes)"


def _open(path: Path) -> tuple[BinaryIO, EifLayout]:
    fh, size = open_eif(path)
    try:
        return fh, read_layout(fh, size)
    except BaseException:
        fh.close()
        raise


def diff_eifs(a: Path, b: Path) -> DiffReport:
    report = DiffReport()
    fa, la = _open(a)
    try:
        fb, lb = _open(b)
    except BaseException:
        fa.close()
        raise
    with fa, fb:
        ha, hb = la.header, lb.header
        for name in ("version", "flags"):
            if getattr(ha, name) != getattr(hb, name):
                report.header.append(f"{name} {getattr(ha, name)} -> {getattr(hb, name)}")
        ramdisk_no = 0
        pcrs: set[str] = set()
        for i in range(max(len(la.sections), len(lb.sections))):
            sa = la.sections[i] if i < len(la.sections) else None
            sb = lb.sections[i] if i < len(lb.sections) else None
            if sa is not None and sa.type == SectionType.RAMDISK:
                ramdisk_no += 1
            if sa is None or sb is None:
                s = sa or sb
                assert s is not None
                report.sections.append(
                    SectionDiff(i, s.type.name, f"only in {'A' if sb is None else 'B'}")
                )
                continue
            if sa.type != sb.type:
                report.sections.append(
                    SectionDiff(i, sa.type.name, f"type {sa.type.name} -> {sb.type.name}")
                )
                pcrs.add("PCR0")
                continue
            if sa.size == sb.size and _sha256(fa, sa) == _sha256(fb, sb):
                continue
            name = sa.type.name
            if sa.type == SectionType.RAMDISK:
                name += " (bootstrap)" if ramdisk_no == 1 else " (customer)"
            diff = SectionDiff(
                i, name, f"size {sa.size} -> {sb.size}" if sa.size != sb.size else "content differs"
            )
            if sa.type == SectionType.RAMDISK:
                _diff_ramdisk(fa, sa, fb, sb, diff)
                pcrs.update({"PCR0", "PCR1"} if ramdisk_no == 1 else {"PCR0", "PCR2"})
            elif sa.type == SectionType.METADATA:
                _diff_metadata(fa, sa, fb, sb, diff)
            elif sa.type in (SectionType.KERNEL, SectionType.CMDLINE):
                pcrs.update({"PCR0", "PCR1"})
                if sa.type == SectionType.CMDLINE and sa.size < 4096 and sb.size < 4096:
                    fa.seek(sa.data_offset)
                    fb.seek(sb.data_offset)
                    diff.details = [
                        f"A: {fa.read(sa.size)[:200]!r}",
                        f"B: {fb.read(sb.size)[:200]!r}",
                    ]
            elif sa.type == SectionType.SIGNATURE:
                diff.summary += " (PCR8 differs if the certificate does)"
            report.sections.append(diff)
        report.pcrs = sorted(pcrs)
    return report
