"""The results of an archive run: a folder of Parquet part files, one row per input.

* **One part per chunk**, named ``part-<model digest>-<hash of the chunk's inputs>.parquet``
  and committed whole: locally through :func:`~inspectkit.atomic.atomic_write`, on other
  pyarrow file systems (S3, GCS, HDFS) as a hidden object moved to its name. A chunk
  retried after a worker died writes the same name again, so a retry never adds rows.
* **Resume** reads the ``path``, ``index``, ``model_digest`` and ``error`` columns of
  every part: inputs with a row of the same model digest are not scored again.
* **One run at a time.** A run writes its id to ``_run.json`` before any part; a worker
  checks it before each commit, so the workers of an interrupted run that are still
  winding down stop instead of writing beside the new run.
* **Exactly once** is checked when a run ends (:meth:`ResultStore.deduplicate`): a row
  whose input already has a row of the same digest in an earlier part (a late writer
  that passed its check just before the new run started) is dropped from the later part.

Names beginning with ``.`` or ``_`` are not parts (pyarrow's datasets skip them too), so
``pyarrow.dataset.dataset(out)`` or ``pandas.read_parquet(out)`` read the results.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from inspectkit.errors import InspectkitError

#: The Parquet schema of every part (columns that do not apply to a task are null).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("path", "absolute path of the file read"),
    ("index", "map index in a wafer archive; null for an image file"),
    ("id", "the sample id inspectkit predict gives the input"),
    ("verdict", "good / review / defect (detector), the class or review (classifier)"),
    ("score", "raw anomaly score"),
    ("normalized", "anomaly score mapped to [0, 1], 0.5 at the threshold"),
    ("threshold", "the detector's raw-score threshold"),
    (
        "regions",
        "boxes [xmin, ymin, xmax, ymax] of a flagged or review part's defect region, in the "
        "image's pixels (empty for a good part; null for a classifier, or in parts written "
        "before regions existed)",
    ),
    ("predicted", "top class; null when the classifier sends the input to review"),
    ("probability", "probability of the top class"),
    ("probs", "class -> probability"),
    ("model_digest", "SHA-256 of the model that scored the input"),
    ("error", "why the input has no result (unreadable, refused by the model); else null"),
)
PART_PREFIX = "part-"
#: The file naming the run that writes the folder now (see :meth:`ResultStore.take_lease`).
LEASE = "_run.json"


class ScaleError(InspectkitError):
    """An archive run cannot start or go on: a missing extra, an unusable output or
    cluster, a model that changed during the run."""


def result_schema() -> Any:
    """The ``pyarrow.Schema`` of a part file."""
    import pyarrow as pa

    types = {
        "path": pa.string(),
        "index": pa.int64(),
        "id": pa.string(),
        "verdict": pa.string(),
        "score": pa.float64(),
        "normalized": pa.float64(),
        "threshold": pa.float64(),
        "regions": pa.list_(pa.list_(pa.int64())),
        "predicted": pa.string(),
        "probability": pa.float64(),
        "probs": pa.map_(pa.string(), pa.float64()),
        "model_digest": pa.string(),
        "error": pa.string(),
    }
    return pa.schema([pa.field(name, types[name]) for name, _ in COLUMNS])


def part_name(digest: str, keys: Iterable[tuple[str, int]]) -> str:
    """The file name of the part holding ``keys`` scored by model ``digest``: the same
    chunk always gets the same name."""
    h = hashlib.sha256()
    for path, index in keys:
        h.update(f"{path}\0{index}\n".encode("utf-8", "surrogateescape"))
    return f"{PART_PREFIX}{digest[:16]}-{h.hexdigest()[:24]}.parquet"


@dataclass(frozen=True)
class Done:
    """What a results folder already holds for one model digest."""

    keys: set[tuple[str, int]]  # inputs with a row
    errors: set[tuple[str, int]]  # of which: rows with an error
    parts: int  # part files of this digest


class ResultStore:
    """A results folder on a local path or any file system pyarrow reads.

    Args:
        out: A folder path or URI (``s3://bucket/run``, ``gs://...``, ``hdfs://...``,
            ``file:///...``).
        filesystem: A ``pyarrow.fs.FileSystem`` to use for ``out`` (else resolved from it).
    """

    def __init__(self, out: str | os.PathLike[str], filesystem: Any = None) -> None:
        from pyarrow import fs as pafs

        text = os.fspath(out)
        if filesystem is not None:
            self.fs, self.root = filesystem, text
        elif "://" in text:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(text)
            except (ValueError, OSError) as exc:
                raise ScaleError(f"{text}: not an output pyarrow can write to ({exc})") from None
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(text)
        self.uri = text
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root = self.root.rstrip("/") or "/"

    def prepare(self) -> None:
        """Create the folder; refuse a path that is a file."""
        from pyarrow import fs as pafs

        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise ScaleError(f"{self.uri}: is a file; give a folder for the results")
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as exc:
            raise ScaleError(f"{self.uri}: cannot create the results folder ({exc})") from None

    def take_lease(self, digest: str) -> str:
        """Make this run the folder's writer: a new run id in ``_run.json``. Workers of an
        earlier run (interrupted, its actors not yet gone) then stop at their next commit
        (:meth:`check_lease`). Returns the run id."""
        run = uuid.uuid4().hex
        self.write_file(LEASE, json.dumps({"run": run, "model_digest": digest}).encode())
        return run

    def check_lease(self, run: str) -> None:
        """A ``ScaleError`` unless ``run`` is still the folder's writer."""
        try:
            with self.fs.open_input_stream(posixpath.join(self.root, LEASE)) as fh:
                current = json.loads(fh.read()).get("run")
        except (OSError, ValueError, AttributeError):
            current = None
        if current != run:
            raise ScaleError(
                f"{self.uri}: another run took over this results folder; this one stops "
                "(one run at a time per folder)"
            )

    def part_files(self) -> list[str]:
        """Paths of the part files, sorted by name."""
        from pyarrow import fs as pafs

        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            return []
        listing = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return sorted(
            f.path
            for f in listing
            if f.type == pafs.FileType.File
            and posixpath.basename(f.path).startswith(PART_PREFIX)
            and f.path.endswith(".parquet")
        )

    def _scan(self, files: Sequence[str]) -> Any:
        """``path``, ``index``, ``model_digest``, ``error`` and the file of every row."""
        import pyarrow as pa
        import pyarrow.dataset as pads

        if not files:
            return None
        data = pads.dataset(list(files), filesystem=self.fs, format="parquet")
        cols = ["path", "index", "model_digest", "error", "__filename"]
        try:
            return data.to_table(columns=cols)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ScaleError(f"{self.uri}: cannot read the results there ({exc})") from None

    def done(self, digest: str) -> Done:
        """The inputs the folder already holds a row for, scored by model ``digest``."""
        files = [f for f in self.part_files() if _digest_of(f) == digest[:16]]
        table = self._scan(files)
        keys: set[tuple[str, int]] = set()
        errors: set[tuple[str, int]] = set()
        if table is not None:
            paths = table.column("path").to_pylist()
            index = table.column("index").to_pylist()
            digests = table.column("model_digest").to_pylist()
            errs = table.column("error").to_pylist()
            for p, i, d, e in zip(paths, index, digests, errs):
                if d == digest:
                    key = _key(p, i)
                    keys.add(key)
                    if e is not None:
                        errors.add(key)
        return Done(keys, errors, len(files))

    def write_part(self, name: str, table: Any) -> str:
        """Write one part whole under ``name`` (the same name again replaces it whole)."""
        import pyarrow.parquet as pq

        return self.write_file(name, lambda fh: pq.write_table(table, fh))

    def write_file(self, name: str, data: bytes | Any) -> str:
        """Write file ``name`` of the folder whole: ``data`` is bytes or a writer given a
        binary file object (locally :func:`~inspectkit.atomic.atomic_write`; elsewhere a
        hidden object moved to its name)."""
        target = posixpath.join(self.root, name)
        if self.local:
            from inspectkit.atomic import atomic_write

            atomic_write(target, data)
            return target
        tmp = posixpath.join(self.root, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with self.fs.open_output_stream(tmp) as fh:
            if isinstance(data, bytes):
                fh.write(data)
            else:
                data(fh)
        self.fs.move(tmp, target)
        return target

    def _rewrite(self, path: str, drop: Any) -> None:
        """Rewrite part ``path`` without the rows for which ``drop(key, error)`` holds;
        delete it when none is left."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path, filesystem=self.fs, schema=result_schema())
        rows = zip(*(table.column(c).to_pylist() for c in ("path", "index", "error")))
        keep = [r for r, (p, i, e) in enumerate(rows) if not drop(_key(p, i), e)]
        if len(keep) == table.num_rows:
            return
        if not keep:
            self.fs.delete_file(path)
            return
        self.write_part(posixpath.basename(path), table.take(pa.array(keep)))

    def _rows(self, digest: str) -> list[tuple[str, tuple[str, int], str | None]]:
        """``(file, key, error)`` of every row of ``digest``, files in name order."""
        files = [f for f in self.part_files() if _digest_of(f) == digest[:16]]
        table = self._scan(files)
        if table is None:
            return []
        cols = [table.column(c).to_pylist() for c in ("__filename", "path", "index", "error")]
        digests = table.column("model_digest").to_pylist()
        rows = [(f, _key(p, i), e) for (f, p, i, e), d in zip(zip(*cols), digests) if d == digest]
        return sorted(rows, key=lambda r: r[0])

    def drop_errors(self, digest: str) -> int:
        """Remove the error rows of model ``digest`` (their inputs are then scored again
        by the next run); returns how many were removed."""
        rows = [r for r in self._rows(digest) if r[2] is not None]
        for name in sorted({f for f, _, _ in rows}):
            self._rewrite(name, lambda key, error: error is not None)
        return len(rows)

    def deduplicate(self, digest: str) -> int:
        """Keep one row per input of model ``digest``, the one in the part first by name
        (a part never holds an input twice); returns how many rows were dropped."""
        first: dict[tuple[str, int], str] = {}
        extra: dict[str, set[tuple[str, int]]] = {}
        for name, key, _ in self._rows(digest):
            kept = first.setdefault(key, name)
            if kept != name:
                extra.setdefault(name, set()).add(key)
        for name, keys in extra.items():
            self._rewrite(name, lambda key, error, keys=keys: key in keys)
        return sum(len(v) for v in extra.values())


def _key(path: str, index: int | None) -> tuple[str, int]:
    return (path, -1 if index is None else int(index))


def _digest_of(path: str) -> str:
    """The model digest prefix in a part's name (``part-<digest16>-<hash>.parquet``)."""
    name = posixpath.basename(path)
    return name[len(PART_PREFIX) : len(PART_PREFIX) + 16]


def read_results(
    out: str | os.PathLike[str], *, digest: str | None = None, filesystem: Any = None
) -> Any:
    """Every row of a results folder as one ``pyarrow.Table`` (of model ``digest`` only,
    when given).

    Example:
        >>> from inspectkit.scale import read_results
        >>> rows = read_results("results/").to_pandas()  # doctest: +SKIP
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    store = ResultStore(out, filesystem)
    files = store.part_files()
    if digest is not None:
        files = [f for f in files if _digest_of(f) == digest[:16]]
    if not files:
        return result_schema().empty_table()
    table = pads.dataset(files, filesystem=store.fs, format="parquet", schema=result_schema())
    rows = table.to_table()
    if digest is not None:
        rows = rows.filter(pa.compute.equal(rows.column("model_digest"), digest))
    return rows


__all__ = [
    "COLUMNS",
    "Done",
    "ResultStore",
    "ScaleError",
    "part_name",
    "read_results",
    "result_schema",
]
