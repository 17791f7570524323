"""The studio's boundary with the browser: names, paths and size limits.

Everything a browser sends is untrusted. A project, class or file name becomes a path
only through :func:`check_name` / :func:`upload_name` and :func:`inside`, which keep it
one plain component strictly inside its folder (no ``..``, separators of any system,
NUL and control characters, look-alike Unicode, hidden or reserved names, symlinks).
Errors are :class:`StudioError` subclasses carrying the HTTP status the server answers
with; their message is the one line shown on screen.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from inspectkit.errors import InspectkitError
from inspectkit.sources._common import IMAGE_SUFFIXES as _READABLE

#: Longest project, class or file name (characters).
MAX_NAME = 64
#: File suffixes accepted as uploads: what the library's image readers decode.
IMAGE_SUFFIXES = tuple(sorted(_READABLE))

_LOOKALIKE_SLASHES = "\u2044\u2215\u2216\u29f5\u29f8\u29f9"
_FORBIDDEN = set('/\\:*?"<>|\x00' + _LOOKALIKE_SLASHES)
_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


class StudioError(InspectkitError):
    """A request the studio refuses; ``status`` is the HTTP status it answers with."""

    status = 400


class UnsafeName(StudioError):
    """A name that is not one plain file-name component."""


class TooLarge(StudioError):
    """An upload over a size limit."""

    status = 413


class NotFound(StudioError):
    """No such project, class, image, model or job."""

    status = 404


class Busy(StudioError):
    """Another long job runs in this project."""

    status = 409


@dataclass(frozen=True)
class UploadLimits:
    """Limits on what a browser may send.

    Attributes:
        max_file_bytes: Largest single image file.
        max_request_bytes: Largest request body (all files of one drop together).
        max_files: Most files in one request.

    How large an image may be once decoded is the library's limit
    (:class:`inspectkit.sources.Limits`, ``max_image_pixels``), checked from the header.
    """

    max_file_bytes: int = 25 * 2**20
    max_request_bytes: int = 200 * 2**20
    max_files: int = 500

    def check_file(self, name: str, size: int) -> None:
        if size > self.max_file_bytes:
            raise TooLarge(
                f"{name}: {size / 2**20:.1f} MiB is over the limit of "
                f"{self.max_file_bytes / 2**20:.0f} MiB per file"
            )


def check_name(text: object, what: str = "name") -> str:
    """``text`` as a safe single path component (NFC), or an :class:`UnsafeName`.

    Refused: empty or longer than :data:`MAX_NAME`, ``.``/``..`` and names starting with
    a dot, path separators of any system and the characters Windows forbids, NUL and
    other control or invisible format characters (bidirectional overrides, zero-width
    joiners), characters whose compatibility form is one of those (full-width ``／``,
    ``．．``), leading or trailing spaces, and the names Windows reserves (``CON``,
    ``NUL``, ``COM1`` ...).
    """
    if not isinstance(text, str):
        raise UnsafeName(f"{what} must be text")
    name = unicodedata.normalize("NFC", text)
    shown = name.encode("unicode_escape").decode("ascii")[:80]
    if not name or not name.strip():
        raise UnsafeName(f"{what} is empty")
    if len(name) > MAX_NAME:
        raise UnsafeName(f"{what} {shown!r} is longer than {MAX_NAME} characters")
    for form in {name, unicodedata.normalize("NFKC", name)}:
        bad = sorted(
            {c for c in form if c in _FORBIDDEN or unicodedata.category(c) in _BAD_CATEGORIES}
        )
        if bad:
            listed = " ".join(repr(c) for c in bad)
            raise UnsafeName(f"{what} {shown!r} may not contain {listed}")
        if form.startswith("."):
            raise UnsafeName(f"{what} {shown!r} may not start with a dot")
    if name != name.strip():
        raise UnsafeName(f"{what} {shown!r} may not start or end with a space")
    if name.rstrip(". ").split(".")[0].lower() in _RESERVED:
        raise UnsafeName(f"{what} {shown!r} is a name Windows reserves")
    return name


def upload_name(filename: object) -> str:
    """A safe file name for an uploaded image, from the name the browser sent.

    Only the last component of the name is kept (browsers may send a path, with either
    separator), characters :func:`check_name` refuses become ``_``, and the suffix must be
    an image suffix the library reads (:data:`IMAGE_SUFFIXES`, kept in lower case).
    """
    raw = filename if isinstance(filename, str) else ""
    base = unicodedata.normalize("NFKC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = base.rpartition(".")
    suffix = f".{suffix.lower()}" if dot else ""
    shown = raw.encode("unicode_escape").decode("ascii")[:80] or "(no name)"
    if suffix not in IMAGE_SUFFIXES:
        raise UnsafeName(
            f"{shown}: not an image file type the library reads (use {', '.join(IMAGE_SUFFIXES)})"
        )
    clean = "".join(
        "_" if c in _FORBIDDEN or unicodedata.category(c) in _BAD_CATEGORIES else c for c in stem
    )
    clean = re.sub(r"\s+", " ", clean).strip(" .")[: MAX_NAME - len(suffix)].strip(" .")
    if not clean or clean.split(".")[0].lower() in _RESERVED:
        clean = f"image-{clean}" if clean else "image"
    return check_name(clean + suffix, "file name")


def inside(root: Path, *parts: str, what: str = "name") -> Path:
    """``root / part / ...`` after checking each part with :func:`check_name`, with no
    symlink on the way, resolved strictly inside ``root``."""
    base = root.resolve()
    path = base
    for part in parts:
        path = path / check_name(part, what)
        if path.is_symlink():
            raise UnsafeName(f"{what} {part!r} is a link; the studio does not follow links")
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafeName(f"{what} {'/'.join(parts)!r} leaves its folder")
    return path


def is_plain_file(path: Path) -> bool:
    """A regular file that is not a link (what the studio lists and serves)."""
    try:
        return path.is_file() and not path.is_symlink()
    except OSError:
        return False


def is_plain_dir(path: Path) -> bool:
    """A folder that is not a link."""
    try:
        return path.is_dir() and not path.is_symlink()
    except OSError:
        return False


def unique_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem-2.suffix`` ... when taken (not atomic: callers
    create it with ``os.link``, which fails if another writer took it first)."""
    stem, suffix = os.path.splitext(name)
    candidate, n = folder / name, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = folder / f"{stem[: MAX_NAME - len(suffix) - 6]}-{n}{suffix}"
    return candidate


__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_NAME",
    "Busy",
    "NotFound",
    "StudioError",
    "TooLarge",
    "UnsafeName",
    "UploadLimits",
    "check_name",
    "inside",
    "is_plain_dir",
    "is_plain_file",
    "unique_path",
    "upload_name",
]
