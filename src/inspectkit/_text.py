"""Text that is safe to print: file names and labels on one line, every character visible.

Kept free of heavy imports so the command line can escape what it prints before (or
without) loading torch; :mod:`inspectkit.records` uses it for sample ids and labels.
"""

from __future__ import annotations

_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    r"""``text`` on one line, every character visible: control characters become escapes
    (``\t``, ``\n``, ``\x1b``) and bytes of a file name that are not UTF-8 (Python's
    ``surrogateescape``) become ``\xNN``. Sample ids, sources, labels and groups pass
    through it, so a file name can neither forge rows of a text report nor make a set
    unbuildable.

    Example:
        >>> print(printable("LOT42\tpart7\nok"))
        LOT42\tpart7\nok
        >>> print(printable(b"part\xff.png".decode("utf-8", "surrogateescape")))
        part\xff.png
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


__all__ = ["printable"]
