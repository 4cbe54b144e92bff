"""A strict, bounded tar header reader (ustar, GNU long names, PAX) over a random-access blob.

Only headers are read: each member's data is located (offset, size) and skipped, so a layer of any
size costs one small read per member. Python's tarfile is not used because it reads GNU long-name
and PAX headers of any declared size into memory; here they are capped before they are read.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from nitro_attest.eif.blobs import Blob, FileCache, ImageError

BLOCK = 512
MAX_EXTENDED_HEADER = 1 << 20
"""PAX and GNU long-name headers are parsed in memory; real ones are a few hundred bytes."""
MAX_NAME = 4096

REGULAR = frozenset({b"0", b"\0", b"7"})
HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO = b"1", b"2", b"3", b"4", b"5", b"6"
_KNOWN = REGULAR | {HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO}


@dataclass(slots=True)
class HeaderBudget:
    """Every tar header block read in a build, whatever it is (extended headers, whiteouts, the
    outer tar's, a layer's second read): the bound on the builder's work."""

    limit: int
    used: int = 0

    def spend(self, where: str) -> None:
        self.used += 1
        if self.used > self.limit:
            raise ImageError(
                f"{where}: more than {self.limit} tar headers in the image (work bound)"
            )


@dataclass(slots=True)
class TarMember:
    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: bytes
    devmajor: int
    devminor: int
    data_offset: int
    """Where the member's data starts, from the start of the tar stream."""
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def is_regular(self) -> bool:
        return self.type in REGULAR


def _octal(field_bytes: bytes, what: str, where: str) -> int:
    if field_bytes[:1] and field_bytes[0] & 0x80:  # GNU base-256 for large values
        if field_bytes[0] == 0xFF:
            raise ImageError(f"{where}: negative {what}")
        return int.from_bytes(bytes([field_bytes[0] & 0x7F]) + field_bytes[1:], "big")
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ImageError(f"{where}: invalid {what} field {text[:20]!r}") from None


def block_sum(block: bytes) -> int:
    """sum(block) for a 512-byte block at C speed (it was a third of reading a header):
    Adler-32's low half is 1 + the byte sum mod 65521, exact over 256 bytes (256 * 255 < 65521)."""
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2


def _checksum_ok(block: bytes) -> bool:
    stored = block[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        want = int(stored, 8)
    except ValueError:
        return False
    unsigned = block_sum(block) - sum(block[148:156]) + 8 * 0x20
    if want == unsigned:
        return True
    # some old tars summed signed chars
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    return want == signed


def _pax_records(data: bytes, where: str) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ImageError(f"{where}: malformed PAX record") from None
        record = data[pos : pos + length]
        if length <= 0 or space < 0 or len(record) != length or not record.endswith(b"\n"):
            raise ImageError(f"{where}: malformed PAX record")
        key, eq, value = record[space - pos + 1 : -1].partition(b"=")
        if not eq:
            raise ImageError(f"{where}: malformed PAX record")
        out[key] = value
        pos += length
    return out


WINDOW = 8192


class _Window:
    """Header blocks served from positioned reads of up to WINDOW bytes: tar headers mostly sit
    next to each other (small files, extended headers and their data), so most cost no system
    call. Callers have checked that ``at + n`` lies inside the blob."""

    def __init__(self, blob: Blob, files: FileCache) -> None:
        self.blob, self.files = blob, files
        self.start = 0
        self.data = b""

    def read(self, n: int, at: int) -> bytes:
        off = at - self.start
        if off >= 0 and off + n <= len(self.data):
            return self.data[off : off + n]
        if n > WINDOW:
            return self.blob.pread(self.files, n, at)
        self.start = at
        self.data = self.blob.pread(self.files, min(WINDOW, self.blob.size - at), at)
        return self.data[:n]


def iter_members(
    blob: Blob, files: FileCache, *, max_members: int, budget: HeaderBudget
) -> Iterator[TarMember]:
    """Yield every member of a tar stream; refuse anything malformed, truncated or unsupported.
    Every header block read is spent from ``budget``."""
    window = _Window(blob, files)
    pos = 0
    count = 0
    long_name: bytes | None = None
    long_link: bytes | None = None
    pax: dict[bytes, bytes] = {}
    while True:
        where = f"{blob.name}: tar header at offset {pos}"
        if pos + BLOCK > blob.size:
            if pos == blob.size and count == 0 and blob.size == 0:
                return  # an empty layer
            raise ImageError(f"{blob.name}: tar truncated at offset {pos} (no end-of-archive)")
        block = window.read(BLOCK, pos)
        if block.count(0) == BLOCK:
            if long_name is not None or long_link is not None or pax:
                raise ImageError(f"{where}: extended header not followed by a member")
            return  # end-of-archive marker; what follows is padding
        budget.spend(blob.name)
        if not _checksum_ok(block):
            raise ImageError(f"{where}: bad header checksum (not a tar archive, or corrupt)")
        typeflag = block[156:157]
        size = _octal(block[124:136], "size", where)
        data_offset = pos + BLOCK
        has_data = typeflag in REGULAR or typeflag in (b"L", b"K", b"x", b"g")
        stored = size if has_data else 0
        end = data_offset + stored + (-stored % BLOCK)
        if data_offset + stored > blob.size:
            raise ImageError(
                f"{blob.name}: tar truncated: member at offset {pos} declares {size} bytes "
                f"but the archive ends at {blob.size}"
            )
        if typeflag in (b"L", b"K", b"x", b"g"):
            if size > MAX_EXTENDED_HEADER:
                raise ImageError(
                    f"{where}: {size}-byte extended header (at most {MAX_EXTENDED_HEADER})"
                )
            data = window.read(size, data_offset) if size else b""
            if typeflag == b"L":
                long_name = data.split(b"\0", 1)[0]
            elif typeflag == b"K":
                long_link = data.split(b"\0", 1)[0]
            elif typeflag == b"x":
                pax.update(_pax_records(data, where))
            # 'g' (global PAX) is ignored, as Docker and containerd do
            pos = end
            continue
        if typeflag not in _KNOWN:
            what = {b"S": "GNU sparse file", b"V": "volume label", b"M": "multi-volume"}.get(
                typeflag, f"type {typeflag!r}"
            )
            raise ImageError(f"{where}: unsupported tar member ({what})")
        count += 1
        if count > max_members:
            raise ImageError(f"{blob.name}: more than {max_members} tar members")
        name = block[0:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0":  # POSIX prefix field (GNU uses these bytes for times)
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        linkname = block[157:257].split(b"\0", 1)[0]
        member = TarMember(
            name=long_name if long_name is not None else name,
            type=typeflag,
            mode=_octal(block[100:108], "mode", where) & 0o7777,
            uid=_octal(block[108:116], "uid", where),
            gid=_octal(block[116:124], "gid", where),
            size=stored,
            mtime=_octal(block[136:148], "mtime", where),
            linkname=long_link if long_link is not None else linkname,
            devmajor=_octal(block[329:337], "devmajor", where),
            devminor=_octal(block[337:345], "devminor", where),
            data_offset=data_offset,
        )
        if pax:
            _apply_pax(member, pax, where)
            end = member.data_offset + member.size + (-member.size % BLOCK)
            if member.data_offset + member.size > blob.size:
                raise ImageError(f"{blob.name}: tar truncated: member at offset {pos}")
        if len(member.name) > MAX_NAME or len(member.linkname) > MAX_NAME:
            raise ImageError(f"{where}: name or link target longer than {MAX_NAME} bytes")
        long_name = long_link = None
        pax = {}
        pos = end
        yield member


def _apply_pax(member: TarMember, pax: dict[bytes, bytes], where: str) -> None:
    for key, value in pax.items():
        if key == b"path":
            member.name = value
        elif key == b"linkpath":
            member.linkname = value
        elif key in (b"uid", b"gid", b"size"):
            try:
                number = int(value)
            except ValueError:
                raise ImageError(f"{where}: PAX {key.decode()} is not a number") from None
            if number < 0:
                raise ImageError(f"{where}: negative PAX {key.decode()}")
            if key == b"size" and member.is_regular:
                member.size = number
            elif key == b"uid":
                member.uid = number
            elif key == b"gid":
                member.gid = number
        elif key == b"mtime":
            try:
                member.mtime = int(float(value))
            except (ValueError, OverflowError):
                raise ImageError(f"{where}: PAX mtime is not a number") from None
        elif key.startswith(b"SCHILY.xattr."):
            member.xattrs[key[13:].decode("utf-8", "replace")] = value
        elif key.startswith(b"LIBARCHIVE.xattr."):
            try:
                member.xattrs[key[17:].decode("utf-8", "replace")] = base64.b64decode(value)
            except ValueError:
                raise ImageError(f"{where}: bad LIBARCHIVE.xattr value") from None
        elif key.startswith(b"GNU.sparse."):
            raise ImageError(f"{where}: unsupported tar member (GNU sparse file)")
