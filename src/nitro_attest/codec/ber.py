"""Strict BER (X.690) reading and writing, enough for CMS envelopes as AWS KMS sends them.

KMS answers a Recipient with BER that strict DER parsers refuse: indefinite lengths closed by
end-of-contents octets, and the encrypted content either primitive or as a constructed string of
OCTET STRING chunks. ``decode`` reads exactly one item (no trailing bytes) into a ``Tlv`` tree:
definite and indefinite lengths, depth, item-count and size caps checked as it goes, and every
departure from X.690 (a high-tag form for a low tag, the reserved length 0xFF, an indefinite
primitive, a stray or malformed end-of-contents, a length past the input) raised as ``BerError``.
Non-minimal long-form lengths are BER and accepted. ``Tlv.octets`` joins a constructed string's
chunks. The writers emit definite items and indefinite constructed ones, so a test or the local
KMS can produce KMS's exact shape.

Why hand-written rather than a library: docs/kms.md ("Why the BER reader is our own").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nitro_attest.errors import FormatError

UNIVERSAL, APPLICATION, CONTEXT, PRIVATE = 0, 1, 2, 3

EOC = 0
BOOLEAN = 1
INTEGER = 2
BIT_STRING = 3
OCTET_STRING = 4
NULL = 5
OBJECT_IDENTIFIER = 6
SEQUENCE = 16
SET = 17

MAX_DEPTH = 32
MAX_ITEMS = 4096
MAX_BYTES = 1024 * 1024

_ALWAYS_PRIMITIVE = frozenset({BOOLEAN, INTEGER, NULL, OBJECT_IDENTIFIER})
_ALWAYS_CONSTRUCTED = frozenset({SEQUENCE, SET})
_CLASS_NAMES = ("universal", "application", "context", "private")
_UNIVERSAL_NAMES = {
    BOOLEAN: "BOOLEAN", INTEGER: "INTEGER", BIT_STRING: "BIT STRING",
    OCTET_STRING: "OCTET STRING", NULL: "NULL", OBJECT_IDENTIFIER: "OBJECT IDENTIFIER",
    SEQUENCE: "SEQUENCE", SET: "SET",
}


class BerError(FormatError):
    """The bytes are not the single, well-formed BER item expected."""


def tag_name(cls: int, tag: int) -> str:
    """A tag as messages name it: ``SEQUENCE``, ``[0]``, ``[APPLICATION 3]``."""
    if cls == UNIVERSAL:
        return _UNIVERSAL_NAMES.get(tag, f"[UNIVERSAL {tag}]")
    if cls == CONTEXT:
        return f"[{tag}]"
    return f"[{_CLASS_NAMES[cls].upper()} {tag}]"


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ cost a third of the decode
class Tlv:
    """One decoded item (treat it as read-only). ``content`` holds a primitive's contents;
    ``children`` a constructed one's items. ``offset`` is where the item starts in the input
    (for error messages)."""

    cls: int
    tag: int
    constructed: bool
    content: bytes = b""
    children: tuple[Tlv, ...] = ()
    indefinite: bool = False
    offset: int = 0

    @property
    def name(self) -> str:
        """The item's tag as messages name it (``SEQUENCE``, ``[0]``)."""
        return tag_name(self.cls, self.tag)

    def is_(self, tag: int, cls: int = UNIVERSAL) -> bool:
        """Whether the item has this tag number in this class."""
        return self.tag == tag and self.cls == cls

    def expect(
        self, tag: int, *, cls: int = UNIVERSAL, constructed: bool | None = None, what: str = "",
    ) -> Tlv:
        """This item if it has the tag (and form, when given); else ``BerError`` naming ``what``."""
        if self.tag != tag or self.cls != cls:
            raise BerError(f"{what or tag_name(cls, tag)}: expected {tag_name(cls, tag)}, found "
                           f"{self.name} at offset {self.offset}")
        if constructed is not None and self.constructed != constructed:
            form = "constructed" if constructed else "primitive"
            raise BerError(f"{what or tag_name(cls, tag)}: expected a {form} {self.name} at "
                           f"offset {self.offset}")
        return self

    def items(self, count: int | None = None, *, what: str = "") -> tuple[Tlv, ...]:
        """A constructed item's children, exactly ``count`` of them when given."""
        label = what or self.name
        if not self.constructed:
            raise BerError(f"{label}: expected a constructed item at offset {self.offset}")
        if count is not None and len(self.children) != count:
            raise BerError(f"{label}: expected {count} item(s), found {len(self.children)}")
        return self.children

    def octets(self, *, what: str = "") -> bytes:
        """A string's value: the contents, or a constructed string's OCTET STRING chunks joined
        (X.690 8.7.3: each chunk is itself an OCTET STRING, primitive or constructed)."""
        if not self.constructed:
            return self.content
        parts: list[bytes] = []
        self._join(parts, what or self.name)
        return b"".join(parts)

    def _join(self, parts: list[bytes], label: str) -> None:
        for chunk in self.children:
            if not chunk.is_(OCTET_STRING):
                raise BerError(f"{label}: a constructed string holds {chunk.name}, not OCTET "
                               f"STRING chunks, at offset {chunk.offset}")
            if chunk.constructed:
                chunk._join(parts, label)
            else:
                parts.append(chunk.content)

    def integer(self, *, what: str = "") -> int:
        """A primitive INTEGER-shaped value in its minimal two's-complement encoding (X.690 8.3.2
        holds for BER too)."""
        label = what or self.name
        data = self._primitive(label)
        if not data:
            raise BerError(f"{label}: empty integer at offset {self.offset}")
        if len(data) > 1 and (
            (data[0] == 0 and data[1] < 0x80) or (data[0] == 0xFF and data[1] >= 0x80)
        ):
            raise BerError(f"{label}: integer not minimally encoded at offset {self.offset}")
        return int.from_bytes(data, "big", signed=True)

    def null(self, *, what: str = "") -> None:
        """Check that the item is a NULL's empty contents."""
        if self._primitive(what or self.name):
            raise BerError(f"{what or self.name}: NULL with contents at offset {self.offset}")

    def oid(self, *, what: str = "") -> str:
        """An OBJECT IDENTIFIER's dotted form; every subidentifier minimally encoded."""
        label = what or self.name
        data = self._primitive(label)
        if not data or data[-1] & 0x80:
            raise BerError(f"{label}: truncated object identifier at offset {self.offset}")
        arcs: list[int] = []
        value = 0
        fresh = True
        for byte in data:
            if fresh and byte == 0x80:
                raise BerError(f"{label}: object identifier arc with a leading 0x80 "
                               f"at offset {self.offset}")
            value = (value << 7) | (byte & 0x7F)
            fresh = not byte & 0x80
            if fresh:
                arcs.append(value)
                value = 0
        first = arcs[0]
        head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
        return ".".join(str(arc) for arc in head + arcs[1:])

    def _primitive(self, label: str) -> bytes:
        if self.constructed:
            raise BerError(f"{label}: expected a primitive item at offset {self.offset}")
        return self.content


def decode(
    data: bytes,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
) -> Tlv:
    """Exactly one BER item from ``data``; ``BerError`` for anything else."""
    if len(data) > max_bytes:
        raise BerError(f"{len(data)} bytes, more than the {max_bytes} allowed")
    if not data:
        raise BerError("empty input")
    reader = _Reader(bytes(data), max_depth, max_items)
    item, end = reader.read(0, len(data), 0)
    if item is None:
        raise BerError("end-of-contents octets outside an indefinite length at offset 0")
    if end != len(data):
        raise BerError(f"{len(data) - end} trailing byte(s) after the BER item")
    return item


class _Reader:
    __slots__ = ("data", "items", "max_depth", "max_items")

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.max_depth = max_depth
        self.max_items = max_items
        self.items = 0

    def read(self, pos: int, end: int, depth: int) -> tuple[Tlv | None, int]:
        """The item at ``pos`` (which must end by ``end``) and where it ends; ``None`` for an
        end-of-contents marker (the caller decides whether one may stand there)."""
        data = self.data
        start = pos
        if depth > self.max_depth:
            raise BerError(f"nesting deeper than {self.max_depth} at offset {start}")
        self.items += 1
        if self.items > self.max_items:
            raise BerError(f"more than {self.max_items} items")
        if pos >= end:
            raise BerError(f"truncated: an item expected at offset {start}")
        first = data[pos]
        pos += 1
        cls = first >> 6
        constructed = bool(first & 0x20)
        tag = first & 0x1F
        if tag == 0x1F:
            tag, pos = self._high_tag(pos, end, start)
        if pos >= end:
            raise BerError(f"truncated: no length at offset {start}")
        length = data[pos]
        pos += 1
        indefinite = False
        if length == 0x80:
            if not constructed:
                raise BerError(f"indefinite length on a primitive item at offset {start}")
            indefinite = True
        elif length == 0xFF:
            raise BerError(f"reserved length octet 0xFF at offset {start}")
        elif length > 0x80:
            count = length & 0x7F
            if count > 4:
                raise BerError(f"length of {count} octets at offset {start}")
            if pos + count > end:
                raise BerError(f"truncated: length octets cut at offset {start}")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if cls == UNIVERSAL and tag == EOC:
            if constructed or indefinite or length:
                raise BerError(f"malformed end-of-contents at offset {start}")
            return None, pos
        if cls == UNIVERSAL:
            if constructed and tag in _ALWAYS_PRIMITIVE:
                raise BerError(f"constructed {tag_name(cls, tag)} at offset {start}")
            if not constructed and tag in _ALWAYS_CONSTRUCTED:
                raise BerError(f"primitive {tag_name(cls, tag)} at offset {start}")
        if indefinite:
            children: list[Tlv] = []
            while True:
                child, pos = self.read(pos, end, depth + 1)
                if child is None:
                    break
                children.append(child)
            return Tlv(cls, tag, True, b"", tuple(children), True, start), pos
        stop = pos + length
        if stop > end:
            raise BerError(f"truncated: {tag_name(cls, tag)} at offset {start} claims {length} "
                           f"bytes, {end - pos} remain")
        if not constructed:
            return Tlv(cls, tag, False, data[pos:stop], (), False, start), stop
        items: list[Tlv] = []
        while pos < stop:
            child, pos = self.read(pos, stop, depth + 1)
            if child is None:
                raise BerError(f"end-of-contents inside a definite length at offset {pos - 2}")
            items.append(child)
        return Tlv(cls, tag, True, b"", tuple(items), False, start), stop

    def _high_tag(self, pos: int, end: int, start: int) -> tuple[int, int]:
        data = self.data
        tag = 0
        for count in range(4):
            if pos >= end:
                raise BerError(f"truncated: tag cut at offset {start}")
            byte = data[pos]
            pos += 1
            if count == 0 and byte == 0x80:
                raise BerError(f"tag number with a leading 0x80 at offset {start}")
            tag = (tag << 7) | (byte & 0x7F)
            if not byte & 0x80:
                if tag < 31:
                    raise BerError(f"high-tag form for tag {tag} at offset {start}")
                return tag, pos
        raise BerError(f"tag number longer than 4 octets at offset {start}")


# Writing.


def _identifier(tag: int, cls: int, constructed: bool) -> bytes:
    if not 0 <= cls <= 3 or tag < 0:
        raise BerError(f"cannot encode class {cls} tag {tag}")
    first = (cls << 6) | (0x20 if constructed else 0)
    if tag < 31:
        return bytes([first | tag])
    arcs = [tag & 0x7F]
    tag >>= 7
    while tag:
        arcs.append(0x80 | (tag & 0x7F))
        tag >>= 7
    return bytes([first | 0x1F, *reversed(arcs)])


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode_tlv(
    tag: int, content: bytes, *, cls: int = UNIVERSAL, constructed: bool = False,
) -> bytes:
    """One item with a definite (minimal) length; ``content`` is the already-encoded contents."""
    return _identifier(tag, cls, constructed) + _length(len(content)) + content


def encode_indefinite(tag: int, parts: Iterable[bytes], *, cls: int = UNIVERSAL) -> bytes:
    """A constructed item with an indefinite length: its encoded ``parts``, then end-of-contents."""
    return _identifier(tag, cls, True) + b"\x80" + b"".join(parts) + b"\x00\x00"


def encode_sequence(*parts: bytes, indefinite: bool = False) -> bytes:
    """A SEQUENCE of the encoded ``parts``, definite or indefinite."""
    if indefinite:
        return encode_indefinite(SEQUENCE, parts)
    return encode_tlv(SEQUENCE, b"".join(parts), constructed=True)


def encode_set(*parts: bytes, indefinite: bool = False) -> bytes:
    """A SET of the encoded ``parts`` in the order given, definite or indefinite."""
    if indefinite:
        return encode_indefinite(SET, parts)
    return encode_tlv(SET, b"".join(parts), constructed=True)


def encode_integer(value: int) -> bytes:
    """An INTEGER in its minimal two's-complement form."""
    size = (value + (value < 0)).bit_length() // 8 + 1
    return encode_tlv(INTEGER, value.to_bytes(size, "big", signed=True))


def encode_null() -> bytes:
    """NULL."""
    return b"\x05\x00"


def encode_octets(value: bytes, *, tag: int = OCTET_STRING, cls: int = UNIVERSAL) -> bytes:
    """A primitive OCTET STRING (or an implicitly tagged one, given ``tag`` and ``cls``)."""
    return encode_tlv(tag, value, cls=cls)


def encode_chunked_octets(
    value: bytes, chunk: int, *, tag: int = OCTET_STRING, cls: int = UNIVERSAL,
) -> bytes:
    """A constructed, indefinite string of primitive OCTET STRING chunks of ``chunk`` bytes (the
    last may be shorter) -- the shape of KMS's chunked encrypted content."""
    if chunk < 1:
        raise BerError("chunk size must be at least 1")
    pieces = (encode_octets(value[i : i + chunk]) for i in range(0, len(value), chunk))
    return encode_indefinite(tag, pieces, cls=cls)


def encode_oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from its dotted form."""
    try:
        arcs = [int(arc) for arc in dotted.split(".")]
    except ValueError:
        raise BerError(f"not a dotted object identifier: {dotted!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40) or min(arcs) < 0:
        raise BerError(f"not a valid object identifier: {dotted!r}")
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return encode_tlv(OBJECT_IDENTIFIER, bytes(body))


def encode(item: Tlv) -> bytes:
    """A decoded tree back to bytes, keeping each item's indefinite or definite form (definite
    lengths come out minimal)."""
    if not item.constructed:
        return encode_tlv(item.tag, item.content, cls=item.cls)
    parts = [encode(child) for child in item.children]
    if item.indefinite:
        return encode_indefinite(item.tag, parts, cls=item.cls)
    return encode_tlv(item.tag, b"".join(parts), cls=item.cls, constructed=True)
