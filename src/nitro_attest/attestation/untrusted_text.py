"""Make untrusted text safe to print on a terminal: the one helper every human-facing printer uses.

A document's module_id, a certificate subject, an error message echoed by the enclave or a file
name can hold newlines, carriage returns, ANSI escapes or bidi overrides. Printed raw they forge
report lines ("✅ ...") or rewrite the screen (docs/threat-model.md). Escaping keeps every such
string on its own line and visible; JSON output does not need this (json.dumps escapes).
"""

from __future__ import annotations

import unicodedata

# Cc: C0/C1 controls and DEL; Cf: format characters (bidi overrides, zero-width joiners);
# Zl/Zp: line and paragraph separators; Cs: lone surrogates (from surrogateescape'd file names).
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# The report's own verdict marks: untrusted text never shows them, so a long string that wraps on
# a narrow terminal cannot start a screen row that looks like a check line.
_MARKS = frozenset("\u2705\u274c\u2796\u26a0")  # ✅ ❌ ➖ ⚠


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_untrusted(text: str) -> str:
    """``text`` with every control, format and line-separator character written as an escape."""
    if text.isprintable() and _MARKS.isdisjoint(text):  # fast path (spaces are printable)
        return text
    return "".join(
        _escape_char(ch) if ch in _MARKS or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
        for ch in text
    )
