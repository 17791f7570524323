"""What an archive run reads: inputs listed lazily, decoded a chunk at a time.

The driver lists *units* (one image file, or one map of a wafer ``.npz``) without reading
pixels: folders are walked, globs expanded and wafer archives indexed from their
``shapes``/``offsets`` members and the ``.npy`` header of ``flat``. Workers decode a
chunk of units with the readers the single-process path uses
(:class:`~inspectkit.sources._common.ImageReader` or a layout's lazy loader for the torch
pipeline, :func:`inspectkit_runtime.images.decode_image` for an exported model; wafer
maps are sliced out of ``flat`` as :func:`~inspectkit.sources.load_wafer_npz` slices
them), so an input decodes to the same array either way.
"""

from __future__ import annotations

import glob
import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspectkit._text import printable
from inspectkit.errors import DataError

#: ``Unit.index`` of an input that is a whole file (an image).
WHOLE_FILE = -1
#: ``Unit.reader`` of a wafer map (read by :class:`WaferArchives`, not a listed reader).
WAFER_READER = -1
_PLAIN_LAYOUTS = ("images", "class-folders")  # their predict inputs: every image below


@dataclass(frozen=True)
class Unit:
    """One input: a file, or one map of a wafer archive.

    Attributes:
        path: Absolute path of the file read (the results' key, with ``index``).
        index: Map index in a wafer archive; :data:`WHOLE_FILE` for an image file.
        id: The sample id ``inspectkit predict`` gives it (``STEM:INDEX`` for a map).
        source: The path as given (``SampleMeta.source``).
        reader: Position of its reader in :attr:`Listing.readers`, or :data:`WAFER_READER`.
    """

    path: str
    index: int
    id: str
    source: str
    reader: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.path, self.index)


@dataclass
class Listing:
    """The units under some inputs, produced lazily by :meth:`units`.

    Args:
        inputs: Files, folders, glob patterns or wafer ``.npz`` archives.
        kind: ``"wafer"`` or ``"image"``: what the model reads (a path of the other kind
            is a ``DataError``).
        channels: Channels images are decoded to (the model card's), ``None`` = as stored.
    """

    inputs: Sequence[str | os.PathLike[str]]
    kind: str
    channels: int | None = None
    #: Picklable decoders of image units (filled while :meth:`units` runs).
    readers: list[Callable[[str], Any]] = field(default_factory=list)

    def units(self) -> Iterator[Unit]:
        """Every unit under the inputs, in order (a repeated one each time it is met)."""
        if not self.inputs:
            raise DataError("no inputs given")
        for raw in self.inputs:
            text = os.fspath(raw)
            if not os.path.lexists(text) and glob.has_magic(text):
                found = False
                for match in glob.iglob(text, recursive=True):
                    found = True
                    yield from self._path(Path(match))
                if not found:
                    raise DataError(f"{text}: no file or folder matches this pattern")
            else:
                yield from self._path(Path(text))

    # ------------------------------------------------------------------ per path
    def _path(self, p: Path) -> Iterator[Unit]:
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_file() and p.suffix.lower() == ".npz":
            if self.kind != "wafer":
                raise DataError(f"{p}: this model reads images, not wafer maps (.npz)")
            yield from _wafer_units(p)
            return
        if self.kind == "wafer":
            raise DataError(
                f"{p}: this model reads wafer maps, and archive runs read them from .npz "
                "files (convert an LSWMD.pkl with inspectkit.sources.save_wafer_npz)"
            )
        if p.is_file():
            yield self._unit(p, str(p), str(p), self._plain_reader())
            return
        from inspectkit.sources import detect

        try:
            layout = detect(p)
        except DataError:
            layout = None  # e.g. an archive root whose images sit several folders down
        if layout is None or layout in _PLAIN_LAYOUTS:
            reader, found = self._plain_reader(), False
            for f in walk_images(p):
                found = True
                yield self._unit(f, f, f, reader)
            if not found:
                raise DataError(f"{p}: the folder holds no image files")
            return
        yield from self._layout_units(p)

    def _layout_units(self, p: Path) -> Iterator[Unit]:
        """A data layout (MVTec, magnetic tiles, VOC, DeepPCB, a plugin's): its own
        ``predict`` listing, which names files without decoding them."""
        from inspectkit.records import LazyImages
        from inspectkit.sources import load_inputs

        data = load_inputs([p], channels=self.channels, kind=self.kind)
        images = data.images
        if not isinstance(images, LazyImages) or not all(isinstance(k, str) for k in images.keys):
            raise DataError(
                f"{p}: its layout loads the inputs into memory instead of naming files; "
                "archive runs need files (use inspectkit predict for this one)"
            )
        reader = self._add_reader(images.loader)
        for key, sample in zip(images.keys, data.samples):
            yield self._unit(Path(key), sample.id, sample.source or key, reader)

    def _unit(self, f: str | Path, sid: str, source: str, reader: int) -> Unit:
        return Unit(os.path.abspath(f), WHOLE_FILE, sid, source, reader)

    def _plain_reader(self) -> int:
        from inspectkit.sources._common import ImageReader

        return self._add_reader(ImageReader(self.channels))

    def _add_reader(self, reader: Callable[[str], Any]) -> int:
        for i, known in enumerate(self.readers):
            if known == reader:
                return i
        self.readers.append(reader)
        return len(self.readers) - 1


def walk_images(root: Path) -> Iterator[str]:
    """Image files below ``root`` (recursively, by name, hidden files and folders left
    out, symlinked folders not followed), as ``inspectkit predict`` lists a folder, one
    folder in memory at a time. Directory entries tell files from folders, so a regular
    file costs no ``stat`` of its own (only symlinks are followed to see what they are)."""
    from inspectkit.sources._common import IMAGE_SUFFIXES

    stack = [os.fspath(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # an unreadable folder holds nothing we can read (as rglob skips it)
        subfolders = []
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                subfolders.append(e.path)
            elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file():
                yield e.path
        stack.extend(reversed(subfolders))


# ---------------------------------------------------------------------- wafer archives
@dataclass
class WaferIndex:
    """Where each map of a wafer archive lies in its ``flat`` member (no pixels read)."""

    path: Path
    shapes: np.ndarray
    offsets: np.ndarray
    flat_dtype: np.dtype[Any]
    stamp: tuple[int, int]  # (size, mtime_ns) when indexed

    @classmethod
    def read(cls, path: Path) -> WaferIndex:
        """Read and check the index the way :func:`~inspectkit.sources.load_wafer_npz`
        checks a whole archive (limits, layout), from every member but ``flat``, of
        which only the ``.npy`` header is read."""
        from inspectkit.sources._common import check_regular_file
        from inspectkit.sources.wafer import _check_layout, _read_npz

        check_regular_file(path)
        st = path.stat()  # before reading: a later change makes the stamp stale, not wrong
        arrs = _read_npz(path, flat=False)
        _check_layout(path, arrs)  # on the stand-in for flat: its length and dtype only
        return cls(
            path, arrs["shapes"], arrs["offsets"], arrs["flat"].dtype, (st.st_size, st.st_mtime_ns)
        )

    def __len__(self) -> int:
        return int(self.shapes.shape[0])


def _wafer_units(p: Path) -> Iterator[Unit]:
    index = WaferIndex.read(p)
    stem, src, path = printable(p.stem) or "map", str(p), os.path.abspath(p)
    for i in range(len(index)):
        yield Unit(path, i, f"{stem}:{i}", src, WAFER_READER)


class _OpenArchive:
    """One archive held open by a worker: its index and the ``flat`` member's stream,
    read forwards (a compressed member is inflated once per worker, not once per chunk)."""

    def __init__(self, path: Path) -> None:
        from inspectkit.sources.wafer import _member_header, _member_names

        self.index = WaferIndex.read(path)
        self.zf = zipfile.ZipFile(path)
        self.fh = self.zf.open(_member_names(self.zf, path)["flat"])
        _member_header(self.fh)
        self.base = self.fh.tell()

    def close(self) -> None:
        self.fh.close()
        self.zf.close()

    def flat(self, start: int, stop: int) -> np.ndarray:
        """Elements ``start:stop`` of ``flat`` (a backward seek starts the stream again)."""
        size = self.index.flat_dtype.itemsize
        self.fh.seek(self.base + start * size)
        raw = self.fh.read((stop - start) * size)
        if len(raw) != (stop - start) * size:
            raise DataError(f"{self.index.path}: 'flat' ends early (truncated archive)")
        return np.frombuffer(raw, dtype=self.index.flat_dtype)


class WaferArchives:
    """The wafer maps of a chunk, as ``load_wafer_npz`` returns them: ``1×H×W`` uint8
    (``H×W`` with ``channels_first=False``), and per map the error that leaves it out."""

    def __init__(self, keep_open: int = 2) -> None:
        self.keep_open = keep_open
        self._open: OrderedDict[str, _OpenArchive] = OrderedDict()

    def _archive(self, path: str) -> _OpenArchive:
        st = os.stat(path)
        held = self._open.get(path)
        if held is not None and held.index.stamp == (st.st_size, st.st_mtime_ns):
            self._open.move_to_end(path)
            return held
        if held is not None:
            held.close()
            del self._open[path]
        archive = self._open[path] = _OpenArchive(Path(path))
        while len(self._open) > self.keep_open:
            self._open.popitem(last=False)[1].close()
        return archive

    def read(self, path: str, indices: Sequence[int]) -> list[tuple[np.ndarray | None, str | None]]:
        """``(H×W uint8 map, None)`` or ``(None, error)`` per index, read in one pass."""
        try:
            archive = self._archive(path)
            index = archive.index
            bad = [i for i in indices if not 0 <= i < len(index)]
            if bad:
                raise DataError(f"{path}: holds {len(index)} maps, not map {bad[0]} (changed?)")
            lo, hi = min(indices), max(indices) + 1
            flat = archive.flat(int(index.offsets[lo]), int(index.offsets[hi]))
        except DataError as exc:
            return [(None, str(exc))] * len(indices)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
            text = f"{path}: cannot read the archive ({type(exc).__name__}: {exc})"
            return [(None, text)] * len(indices)
        out: list[tuple[np.ndarray | None, str | None]] = []
        base = int(index.offsets[lo])
        for i in indices:
            a, b = int(index.offsets[i]) - base, int(index.offsets[i + 1]) - base
            chunk = flat[a:b]
            low, high = (int(chunk.min()), int(chunk.max())) if chunk.size else (0, 0)
            if high > 2 or low < 0:
                value = high if high > 2 else low
                out.append(
                    (
                        None,
                        f"{path}: map {i} holds wafer code {value}; codes must be 0 "
                        "(outside), 1 (pass), 2 (fail)",
                    )
                )
                continue
            h, w = int(index.shapes[i, 0]), int(index.shapes[i, 1])
            out.append((chunk.astype(np.uint8, copy=False).reshape(h, w), None))
        return out

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


def group_runs(units: Iterable[tuple[int, str, int]]) -> Iterator[tuple[str, list[int], list[int]]]:
    """``(path, positions, indices)`` per run of ``(position, path, index)`` entries that
    are consecutive maps of one archive, so that a worker reads each run in one pass and
    never holds the maps between two runs (a resumed chunk can skip some)."""
    current: str | None = None
    positions: list[int] = []
    indices: list[int] = []
    for pos, path, idx in units:
        if positions and (path != current or idx != indices[-1] + 1):
            yield current, positions, indices  # type: ignore[misc]
            positions, indices = [], []
        current = path
        positions.append(pos)
        indices.append(idx)
    if positions:
        yield current, positions, indices  # type: ignore[misc]


__all__ = [
    "WAFER_READER",
    "WHOLE_FILE",
    "Listing",
    "Unit",
    "WaferArchives",
    "WaferIndex",
    "group_runs",
    "walk_images",
]
