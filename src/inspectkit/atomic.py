"""Atomic writes: a file or a folder appears whole, or not at all.

Every file inspectkit writes for a user (model cards, reports, overlays, generated
samples, saved pipelines) goes through this module, so a crash, a full disk or a kill
never leaves a half-written file under the name the user reads.

* :func:`atomic_write` writes a file: into a hidden temporary sibling, flushed and
  ``fsync``-ed, given the permissions a new file gets under the umask, then renamed over
  the target. A target that is a symlink is written through the link (the link stays).
* :func:`swap_folder` puts a completed temporary folder in place of another one with
  ``renameat2(RENAME_EXCHANGE)`` on Linux (one atomic step), else with two renames.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(d / "card.json", '{"task": "classify"}').read_text()
    '{"task": "classify"}'
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

Writer = Callable[[IO[bytes]], object]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_target(path: str | os.PathLike[str]) -> Path:
    """The path a write should replace: a symlink's target (so the link survives)."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str | Writer,
    *,
    encoding: str = "utf-8",
    mode: int | None = None,
) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole.

    Args:
        path: File to write; its folder is created when missing.
        data: ``bytes``, ``str`` (encoded with ``encoding``) or a callable that writes
            into the binary file object it is given (``Image.save``, ``numpy.savez``,
            ``torch.save`` ...).
        encoding: Text encoding of a ``str``.
        mode: Permission bits; default: those of a new file under the umask (0644 with
            the usual umask 022), not the 0600 of a temporary file.

    Returns:
        The path written (the symlink's target when ``path`` is a symlink).
    """
    target = resolve_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, str):
                fh.write(data.encode(encoding))
            elif isinstance(data, bytes | bytearray | memoryview):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


# ---------------------------------------------------------------------- folders
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths on Linux; ``False`` where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def temp_folder_beside(path: Path, tag: str = "tmp") -> Path:
    """A new hidden folder next to ``path`` (same file system, so it can be renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{tag}-"))


def swap_folder(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` at ``path``; the old folder there is removed.

    On Linux the exchange is one ``renameat2(RENAME_EXCHANGE)`` call: a reader sees the
    old folder or the new one, never neither. Elsewhere the old folder is renamed aside,
    the new one renamed in, and the old one removed.
    """
    fsync_tree(tmp)
    if not path.exists():
        os.rename(tmp, path)
        fsync_dir(path.parent)
        return
    if renameat2_exchange(tmp, path):
        fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    os.rename(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` (one level) and the folder itself to disk."""
    for p in folder.iterdir():
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


__all__ = [
    "atomic_write",
    "fsync_dir",
    "fsync_tree",
    "renameat2_exchange",
    "resolve_target",
    "swap_folder",
    "temp_folder_beside",
]
