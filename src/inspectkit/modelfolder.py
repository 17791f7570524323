"""Model folders: how a fitted pipeline is written to disk and read back.

A model folder holds ``pipeline.json`` (the spec: stage names, configs, and for each
fitted stage the name and SHA-256 of its state file), one ``stage-NN-name.pt`` per stage
(tensors and plain values, read with ``torch.load(weights_only=True)``), and the
*attachments* saved with it (the command line's model card). What it guarantees:

* **Whole or not at all.** A save writes a hidden temporary folder beside the model,
  flushes it to disk and swaps it in with one ``renameat2(RENAME_EXCHANGE)`` on Linux
  (elsewhere two renames, journaled so that an interrupted swap is undone by the next
  save or read). A kill, a full disk or an exception leaves the previous model as it was.
* **Nothing else is deleted.** A folder that holds anything but a saved model (a
  project, a data folder, files a user put beside the weights) is never replaced.
* **The previous model can be kept** as ``NAME.prev`` (``keep`` versions:
  ``NAME.prev``, ``NAME.prev-2`` ...); :func:`rollback` swaps it back in one step.
* **Symlinks stay links.** Saving to ``models/current -> v7`` replaces ``v7``.
* **Leftovers are cleaned.** Saves hold a lock (a ``flock`` on the parent folder) and
  remove the temporary folders of earlier saves that were killed.
* **Spec and state are one unit.** A reader opens the folder once and reads every file
  relative to that handle, and checks each state file's SHA-256 against the spec, so a
  save that swaps the folder meanwhile is never read half old, half new; a tampered or
  foreign file is refused.
* **Names stay inside.** File names in a spec are plain names (no ``/``, no ``..``, no
  symlinks): a spec cannot make a model load another model's weights.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "model"
    >>> spec = {"format": FORMAT, "format_version": FORMAT_VERSION,
    ...         "inspectkit_version": "0.1.0", "stages": [{"name": "wrangle", "config": {}}]}
    >>> _ = write_model(d, spec, [None], attachments={"notes.txt": "first"})
    >>> read_model(d).attachments["notes.txt"]
    b'first'
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from inspectkit.atomic import (
    fsync_dir,
    fsync_tree,
    renameat2_exchange,
    resolve_target,
    temp_folder_beside,
)
from inspectkit.errors import PersistenceError

log = logging.getLogger(__name__)

SPEC_FILE = "pipeline.json"
FORMAT = "inspectkit.pipeline"
#: 1: spec + state files; 2: adds a SHA-256 per state file and the ``attachments`` map.
FORMAT_VERSION = 2
#: The largest ``pipeline.json`` read (a spec is a few kB; anything far larger is not one).
MAX_SPEC_BYTES = 16 * 2**20
#: The largest attachment read (model cards are a few kB).
MAX_ATTACHMENT_BYTES = 16 * 2**20
#: Files the command line writes beside older models without listing them in the spec.
LEGACY_ATTACHMENTS = ("inspectkit-model.json",)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_READ_ATTEMPTS = 5


@dataclass
class SavedModel:
    """What :func:`read_model` read from one folder, all from the same save.

    Attributes:
        spec: The validated ``pipeline.json``.
        states: One entry per stage: its state (``None`` for an unfitted stage).
        attachments: Attachment name → bytes.
        path: The folder read (a symlink's target).
    """

    spec: dict[str, Any]
    states: list[dict[str, Any] | None]
    attachments: dict[str, bytes] = field(default_factory=dict)
    path: Path | None = None


def safe_name(name: Any, what: str) -> str:
    """Refuse anything but a plain file name (the folder's own files only)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise PersistenceError(
            f"{what} {name!r} is not a plain file name inside the model folder "
            "(no folders, no '..', no absolute paths)"
        )
    return name


def prev_path(path: Path, k: int = 1) -> Path:
    """Where the ``k``-th previous version of the model at ``path`` is kept."""
    return path.with_name(f"{path.name}.prev" if k == 1 else f"{path.name}.prev-{k}")


# ---------------------------------------------------------------------- writing
def write_model(
    path: str | os.PathLike[str],
    spec: dict[str, Any],
    states: list[dict[str, Any] | None],
    *,
    attachments: Mapping[str, str | bytes] | None = None,
    keep: int = 0,
) -> Path:
    """Write a model folder at ``path`` atomically (see the module notes).

    Args:
        path: The model folder (created, or replaced when it holds a saved model).
        spec: ``pipeline.json`` without file names: one ``stages`` entry per state.
        states: Per stage its state dict, or ``None`` for an unfitted stage.
        attachments: Further files saved in the same unit (e.g. a model card).
        keep: Previous versions to keep as ``NAME.prev``, ``NAME.prev-2`` ... (0 = none).

    Returns:
        The folder written (a symlink's target when ``path`` is a symlink).
    """
    import torch

    if keep < 0:
        raise PersistenceError(f"keep must be 0 or more previous versions, got {keep}")
    target = resolve_target(path)
    if target.exists() and not target.is_dir():
        raise PersistenceError(f"{target} exists and is not a folder")
    attachments = dict(attachments or {})
    for name in attachments:
        safe_name(name, "attachment")
        if name == SPEC_FILE or name.startswith("stage-"):
            raise PersistenceError(f"attachment {name!r} would overwrite a model file")
    check_replaceable(target)
    with _save_lock(target):
        _clean_leftovers(target)
        check_replaceable(target)  # another process may have saved meanwhile
        tmp = temp_folder_beside(target)
        try:
            spec = json.loads(json.dumps(spec))  # a copy that is plain JSON
            spec["format"], spec["format_version"] = FORMAT, FORMAT_VERSION
            for i, (entry, state) in enumerate(zip(spec["stages"], states, strict=True)):
                entry["fitted"] = state is not None
                entry.pop("state", None)
                entry.pop("sha256", None)
                if state is None:
                    continue
                name = safe_name(f"stage-{i:02d}-{entry['name']}.pt", "state file")
                entry["state"] = name
                entry["sha256"] = _write_file(
                    tmp / name, lambda fh, s=state: torch.save(s, fh), name
                )
            spec["attachments"] = {
                name: _write_file(tmp / name, lambda fh, d=data: fh.write(_as_bytes(d)), name)
                for name, data in attachments.items()
            }
            _write_file(
                tmp / SPEC_FILE,
                lambda fh: fh.write(json.dumps(spec, indent=2).encode()),
                SPEC_FILE,
            )
            fsync_tree(tmp)
            _publish(tmp, target, keep)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("saved model to %s", target)
    return target


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class _HashingWriter(io.RawIOBase):
    """A binary file that hashes what goes through it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.error: OSError | None = None  # what the file system said, when a write failed

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        try:
            self.fh.write(view)
            self.fh.flush()  # surface a full disk here, not inside a library's writer
        except OSError as exc:
            self.error = exc
            raise
        self.digest.update(view)
        return len(view)

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as exc:
            self.error = exc
            raise


def _write_file(path: Path, writer: Any, name: str) -> str:
    """Write one file of the model through ``writer(fh)``; returns its SHA-256."""
    fh: _HashingWriter | None = None
    try:
        with open(path, "wb", buffering=1 << 20) as raw:
            fh = _HashingWriter(raw)
            writer(fh)
            fh.flush()
            os.fsync(raw.fileno())
            return fh.digest.hexdigest()
    except (OSError, RuntimeError) as exc:
        cause = fh.error if fh is not None and fh.error is not None else exc
        raise PersistenceError(f"cannot write {name} of the model: {_reason(cause)}") from None


def _reason(exc: BaseException) -> str:
    err = getattr(exc, "errno", None)
    text = str(exc)
    if err == errno.ENOSPC or "No space left" in text or "file write failed" in text:
        return "no space left on the device (the previous model is untouched)"
    if err == errno.EFBIG or "File too large" in text:
        return "the file system refused a file this large (the previous model is untouched)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(text.split())[:300]


def _model_files(spec: Any) -> set[str] | None:
    """The files a saved spec says its folder holds; ``None`` when it is no model spec."""
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        return None
    names = {SPEC_FILE, *LEGACY_ATTACHMENTS}
    for entry in spec.get("stages") or []:
        if isinstance(entry, dict) and isinstance(entry.get("state"), str):
            names.add(entry["state"])
    attached = spec.get("attachments")
    if isinstance(attached, dict):
        names.update(str(n) for n in attached)
    return names


def check_replaceable(target: Path) -> None:
    """Refuse (``PersistenceError``) a folder that a save would not replace: one holding
    anything but a saved model. Callers check it before spending time on training."""
    if not target.is_dir():
        return
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    try:
        spec = json.loads((target / SPEC_FILE).read_bytes()[: MAX_SPEC_BYTES + 1])
    except (OSError, ValueError, RecursionError):
        spec = None
    known = _model_files(spec)
    if known is None:
        raise PersistenceError(
            f"{target} is a non-empty folder that holds no saved model; refusing to replace it "
            "(saving would delete what is there): choose another folder"
        )
    foreign = [e for e in entries if e not in known]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise PersistenceError(
            f"{target} holds files that are not part of the saved model ({shown}); saving "
            "would delete them: move them elsewhere or choose another folder"
        )


@contextlib.contextmanager
def _save_lock(target: Path) -> Iterator[None]:
    """One saver at a time in the model's parent folder: an advisory ``flock`` on the
    folder itself (no lock file left behind; the kernel releases it when a saver dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sibling(name: Any) -> str:
    """A journal's folder name: a plain name beside the model, nothing else."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"bad journal entry {name!r}")
    return name


def _journal(target: Path) -> Path:
    return target.parent / f".{target.name}.swap"


def _write_journal(target: Path, old: Path) -> None:
    """Record where the model goes during a portable swap. Written in place: a journal
    torn by a kill is unreadable, and a kill that early happened before any rename."""
    with open(_journal(target), "w") as fh:
        fh.write(json.dumps({"old": old.name}))
        fh.flush()
        os.fsync(fh.fileno())


def _clean_leftovers(target: Path) -> None:
    """Under the save lock: finish an interrupted swap, remove killed saves' folders."""
    journal = _journal(target)
    if journal.exists():
        try:
            old = target.parent / _sibling(json.loads(journal.read_text())["old"])
        except (OSError, ValueError, KeyError, TypeError):
            old = None
        if not target.exists() and old is not None and old.is_dir():
            log.warning("restoring %s from an interrupted save (%s)", target, old.name)
            os.rename(old, target)
        journal.unlink(missing_ok=True)
    for p in target.parent.glob(f".{glob_escape(target.name)}.*-*"):
        if p.is_dir() and (p.name.startswith(f".{target.name}.tmp-") or ".old-" in p.name):
            log.info("removing %s, left by an interrupted save", p)
            shutil.rmtree(p, ignore_errors=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _rotate(target: Path, keep: int) -> Path | None:
    """Make room for one more previous version; returns where it goes (``None``: keep none)."""
    if keep == 0:
        return None
    oldest = prev_path(target, keep)
    if oldest.exists():
        shutil.rmtree(oldest)
    for k in range(keep - 1, 0, -1):
        if prev_path(target, k).exists():
            os.rename(prev_path(target, k), prev_path(target, k + 1))
    return prev_path(target, 1)


def _publish(tmp: Path, target: Path, keep: int) -> None:
    """Swap the complete folder ``tmp`` in at ``target`` (under the save lock)."""
    if not target.exists():
        os.rename(tmp, target)
        fsync_dir(target.parent)
        return
    prev = _rotate(target, keep)
    if renameat2_exchange(tmp, target):
        fsync_dir(target.parent)
        if prev is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, prev)  # tmp now holds the old model
        return
    # portable path: two renames, journaled so an interruption is undone later
    old = prev or target.parent / f".{target.name}.old-{os.getpid()}"
    _write_journal(target, old)
    os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(target.parent)
    _journal(target).unlink(missing_ok=True)
    if prev is None:
        shutil.rmtree(old, ignore_errors=True)


def rollback(path: str | os.PathLike[str]) -> Path:
    """Put the previous version (``NAME.prev``) back; the current one becomes ``NAME.prev``
    (so a second rollback undoes the first). Atomic like a save.

    Raises:
        PersistenceError: There is no previous version.
    """
    target = resolve_target(path)
    with _save_lock(target):
        _clean_leftovers(target)
        prev = prev_path(target)
        if not (prev / SPEC_FILE).is_file():
            raise PersistenceError(f"{target} has no previous version to roll back to ({prev})")
        if not target.exists():
            os.rename(prev, target)
        elif not renameat2_exchange(prev, target):
            spare = target.parent / f".{target.name}.old-{os.getpid()}"
            _write_journal(target, spare)
            os.rename(target, spare)
            os.rename(prev, target)
            os.rename(spare, prev)
            _journal(target).unlink(missing_ok=True)
        fsync_dir(target.parent)
    log.info("rolled %s back to its previous version", target)
    return target


# ---------------------------------------------------------------------- reading
def read_model(path: str | os.PathLike[str]) -> SavedModel:
    """Read spec, states and attachments of one save, verified (see the module notes).

    Raises:
        PersistenceError: Not a model folder, a spec or state that cannot be read safely,
            a file that is not the one the spec was written with, or a newer format.
    """
    folder = Path(path)
    last: Exception | None = None
    for _ in range(_READ_ATTEMPTS):
        try:
            return _read_once(folder)
        except _Changed as exc:  # a save swapped the folder while it was being read
            last = exc
    if isinstance(last, _Mismatch):
        raise PersistenceError(
            f"{folder / last.name} cannot be read safely: it is not the file {SPEC_FILE} was "
            "saved with (its SHA-256 differs: the folder was changed by hand or tampered with)"
        ) from None
    raise PersistenceError(
        f"{folder} changed while it was being read ({last}); try again"
    ) from None


class _Changed(Exception):
    """The folder changed under the reader (a concurrent save): read it again."""


class _Mismatch(_Changed):
    """A file's SHA-256 is not the one in the spec (a concurrent save, or tampering)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not the file {SPEC_FILE} was saved with")
        self.name = name


def _open_folder(folder: Path) -> int | None:
    """A handle on the folder, or ``None`` where files cannot be opened relative to one."""
    if os.open not in os.supports_dir_fd:  # pragma: no cover - Windows
        return None
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        return os.open(folder, flags)
    except FileNotFoundError:
        journal = _journal(resolve_target(folder))
        if journal.exists():  # a portable swap was interrupted: read the old model
            try:
                old = json.loads(journal.read_text())["old"]
                return os.open(folder.parent / _sibling(old), flags)
            except (OSError, ValueError, KeyError, TypeError):
                pass
        raise PersistenceError(f"{folder} holds no saved pipeline (no such folder)") from None
    except NotADirectoryError:
        raise PersistenceError(f"{folder} is a file, not a model folder") from None
    except OSError as exc:
        raise PersistenceError(f"{folder} cannot be opened: {exc.strerror}") from None


@contextlib.contextmanager
def _open_in(folder: Path, dfd: int | None, name: str) -> Iterator[IO[bytes]]:
    """Open ``name`` in the folder (relative to its handle; symlinks refused)."""
    # no symlinks; non-blocking so that a FIFO planted in the folder cannot hang the open
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(name, flags, dir_fd=dfd) if dfd is not None else os.open(folder / name, flags)
    except FileNotFoundError:
        raise _Changed(f"{name} disappeared") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PersistenceError(
                f"{folder / name} is a symlink; model files must be plain files in the folder"
            ) from None
        raise PersistenceError(f"{folder / name} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not _is_regular(fh):
            raise PersistenceError(f"{folder / name} is not a regular file")
        yield fh


def _is_regular(fh: IO[bytes]) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fh.fileno()).st_mode)


def _read_limited(fh: IO[bytes], limit: int, what: str) -> bytes:
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise PersistenceError(f"{what} is larger than {limit // 2**20} MiB; not a model file")
    return data


def _sha256(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _read_once(folder: Path) -> SavedModel:
    import torch

    dfd = _open_folder(folder)
    try:
        with contextlib.ExitStack() as files:
            try:
                fh = files.enter_context(_open_in(folder, dfd, SPEC_FILE))
            except _Changed:
                raise PersistenceError(
                    f"{folder} holds no saved pipeline (no {SPEC_FILE})"
                ) from None
            spec = parse_spec(
                _read_limited(fh, MAX_SPEC_BYTES, f"{folder / SPEC_FILE}"), folder / SPEC_FILE
            )
            # open every file of this save at once: an open file stays readable even when a
            # concurrent save removes the folder it was in
            wanted = [e["state"] for e in spec["stages"] if e["fitted"]]
            wanted += list(spec.get("attachments", {}))
            handles = {name: files.enter_context(_open_in(folder, dfd, name)) for name in wanted}
            if spec["format_version"] < 2:  # older folders list no attachments
                for name in LEGACY_ATTACHMENTS:
                    with contextlib.suppress(_Changed):
                        handles[name] = files.enter_context(_open_in(folder, dfd, name))
            states: list[dict[str, Any] | None] = []
            for i, entry in enumerate(spec["stages"]):
                if not entry["fitted"]:
                    states.append(None)
                    continue
                name = entry["state"]
                fh = handles[name]
                if "sha256" in entry and _sha256(fh) != entry["sha256"]:
                    raise _Mismatch(name)
                fh.seek(0)
                try:
                    state = torch.load(fh, map_location="cpu", weights_only=True)
                except Exception as exc:
                    raise PersistenceError(
                        f"{folder / name} cannot be read safely: {' '.join(str(exc).split())[:300]}"
                    ) from None
                if not isinstance(state, dict):
                    raise PersistenceError(
                        f"{folder / name}: stage {i} ({entry['name']}) state is a "
                        f"{type(state).__name__}, not a dict of tensors and values"
                    )
                states.append(state)
            attachments: dict[str, bytes] = {}
            for name, digest in spec.get("attachments", {}).items():
                data = _read_limited(handles[name], MAX_ATTACHMENT_BYTES, str(folder / name))
                if hashlib.sha256(data).hexdigest() != digest:
                    raise _Mismatch(name)
                attachments[name] = data
            for name in LEGACY_ATTACHMENTS:
                if name in handles and name not in attachments:
                    attachments[name] = _read_limited(handles[name], MAX_ATTACHMENT_BYTES, name)
            return SavedModel(spec, states, attachments, resolve_target(folder))
    finally:
        if dfd is not None:
            os.close(dfd)


def parse_spec(raw: bytes, where: Path | str) -> dict[str, Any]:
    """Decode and check a saved ``pipeline.json``: every field of the right type, file
    names plain, format not newer than this library. ``PersistenceError`` otherwise."""
    from inspectkit._version import __version__

    try:
        spec = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise PersistenceError(f"{where} is not UTF-8 text; not a saved pipeline") from None
    except RecursionError:
        raise PersistenceError(f"{where} is nested too deeply; not a saved pipeline") from None
    except ValueError as exc:  # JSON syntax, NaN/Infinity, integers of thousands of digits
        raise PersistenceError(
            f"{where} is not readable JSON: {' '.join(str(exc).split())[:200]}"
        ) from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise PersistenceError(f"{where} is not an inspectkit pipeline spec")
    version = spec.get("format_version", 1)
    if type(version) is not int or version < 1:
        raise PersistenceError(
            f"{where}: format_version must be a whole number ≥ 1, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise PersistenceError(
            f"{where} uses pipeline format {version}, newer than {FORMAT_VERSION}; "
            "upgrade inspectkit to load it"
        )
    saved = spec.get("inspectkit_version", "0")
    if not isinstance(saved, str) or not re.match(r"^\d{1,6}(\.|$)", saved):
        raise PersistenceError(f"{where}: unreadable library version {saved!r}")
    if int(saved.split(".")[0]) > int(__version__.split(".")[0]):
        raise PersistenceError(
            f"{where} was saved by inspectkit {saved}, newer than this {__version__}; "
            "upgrade inspectkit to load it"
        )
    stages = spec.get("stages")
    if not isinstance(stages, list) or not stages:
        raise PersistenceError(f'{where}: "stages" must be a non-empty list')
    for i, entry in enumerate(stages):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise PersistenceError(f'{where}: stage {i} needs a "name"')
        if entry.get("config") is None:
            entry["config"] = {}
        if not isinstance(entry["config"], dict):
            raise PersistenceError(f"{where}: stage {i} ({entry['name']}) config is not a mapping")
        fitted = entry.get("fitted", False)
        if not isinstance(fitted, bool):
            raise PersistenceError(f"{where}: stage {i} 'fitted' must be true or false")
        entry["fitted"] = fitted
        if fitted:
            safe_name(entry.get("state"), f"{where}: stage {i} state file")
            if version >= 2:
                digest = entry.get("sha256")
                if not isinstance(digest, str) or not _HEX64.match(digest):
                    raise PersistenceError(f"{where}: stage {i} has no valid sha256 of its state")
    attached = spec.get("attachments", {})
    if not isinstance(attached, dict) or not all(
        isinstance(d, str) and _HEX64.match(d) for d in attached.values()
    ):
        raise PersistenceError(f"{where}: 'attachments' must map file names to sha256 digests")
    for name in attached:
        safe_name(name, f"{where}: attachment")
    spec["attachments"] = attached
    spec["format_version"] = version
    return spec


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SPEC_FILE",
    "SavedModel",
    "check_replaceable",
    "parse_spec",
    "prev_path",
    "read_model",
    "rollback",
    "safe_name",
    "write_model",
]
