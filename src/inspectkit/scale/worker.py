"""What runs on a worker: decode a chunk, score it, commit its part file.

A *chunk* is one row of the run's dataset: the part file's name and, per input, its
``path``, ``index``, ``id``, ``source`` and ``reader``. :func:`decode_chunks` (the
``map_batches`` function) adds the decoded pixels (``C×H×W`` arrays as bytes, shape,
dtype) or the error per input; :class:`ChunkScorer` (the actor, one loaded model each)
scores the decodable inputs as one batch, writes the part and returns a one-row summary.
A batch the model refuses is scored input by input, so one bad input gets an error row
and the others their results.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from inspectkit.scale.inputs import WAFER_READER, WaferArchives, group_runs
from inspectkit.scale.model import ModelInfo, Scorer, load_scorer
from inspectkit.scale.output import ResultStore, part_name, result_schema

#: Columns of a chunk as the driver lists it.
CHUNK_COLUMNS = ("part", "path", "index", "id", "source", "reader")
_ARCHIVES: WaferArchives | None = None  # per worker process: archives held open


def chunk_row(digest: str, units: Sequence[Any]) -> dict[str, Any]:
    """The dataset row of a chunk of :class:`~inspectkit.scale.inputs.Unit`."""
    return {
        "part": part_name(digest, (u.key for u in units)),
        "path": [u.path for u in units],
        "index": [u.index for u in units],
        "id": [u.id for u in units],
        "source": [u.source for u in units],
        "reader": [u.reader for u in units],
    }


def _error(path: str, exc: BaseException) -> str:
    """An input's error: the library's message (it names the file), else the exception's."""
    from inspectkit.errors import InspectkitError

    text = " ".join(str(exc).split())
    if isinstance(exc, InspectkitError) or type(exc).__name__ == "InputError":
        return text if text.startswith(path) else f"{path}: {text}"
    return f"{path}: {type(exc).__name__}: {text}"


def _decode_image(
    reader: Callable[[str], Any], path: str, backend: str, channels: int | None
) -> np.ndarray:
    if backend == "onnx":  # the runtime's decoder, as the exported model's users read files
        from inspectkit_runtime.images import decode_image

        arr = decode_image(path, getattr(reader, "channels", channels))
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return reader(path).numpy()


def decode_chunks(
    batch: Any, *, readers: Sequence[Callable[[str], Any]], backend: str, channels: int | None
) -> Any:
    """``map_batches`` function: the chunks of ``batch`` (a ``pyarrow.Table``) with their
    inputs decoded (columns ``pixels``, ``shape``, ``dtype``, ``error``, ``decode_s``)."""
    import pyarrow as pa

    global _ARCHIVES
    if _ARCHIVES is None:
        _ARCHIVES = WaferArchives()
    cols: dict[str, list[Any]] = {
        "pixels": [],
        "shape": [],
        "dtype": [],
        "error": [],
        "decode_s": [],
    }
    for row in batch.to_pylist():
        t0 = time.perf_counter()
        n = len(row["path"])
        arrays: list[np.ndarray | None] = [None] * n
        errors: list[str | None] = [None] * n
        maps = [
            (j, row["path"][j], row["index"][j])
            for j in range(n)
            if row["reader"][j] == WAFER_READER
        ]
        for path, positions, indices in group_runs(maps):
            for j, (arr, err) in zip(positions, _ARCHIVES.read(path, indices)):
                arrays[j], errors[j] = (None if arr is None else arr[None]), err
        for j in range(n):
            if row["reader"][j] == WAFER_READER:
                continue
            path = row["path"][j]
            try:
                arrays[j] = _decode_image(readers[row["reader"][j]], path, backend, channels)
            except MemoryError:
                raise
            except Exception as exc:  # a corrupt input gives an error row, never stops a run
                errors[j] = _error(path, exc)
        done = [np.ascontiguousarray(a) if a is not None else None for a in arrays]
        cols["pixels"].append([b"" if a is None else a.data for a in done])
        cols["shape"].append([[] if a is None else list(a.shape) for a in done])
        cols["dtype"].append(["" if a is None else a.dtype.str for a in done])
        cols["error"].append(errors)
        cols["decode_s"].append(time.perf_counter() - t0)
    types = {
        "pixels": pa.large_list(pa.large_binary()),
        "shape": pa.list_(pa.list_(pa.int64())),
        "dtype": pa.list_(pa.string()),
        "error": pa.list_(pa.string()),
        "decode_s": pa.float64(),
    }
    for name, values in cols.items():
        batch = batch.append_column(pa.field(name, types[name]), pa.array(values, type=types[name]))
    return batch


class ChunkScorer:
    """``map_batches`` actor: one loaded model; scores decoded chunks and commits their
    part files (see the module notes).

    Args:
        info: The model (path, backend, digest the run started with).
        out: The results folder (a :class:`ResultStore`).
        run: The run's id (:meth:`ResultStore.take_lease`): parts are committed only
            while it is the folder's writer.
        threads: Torch / ONNX Runtime threads of this worker (``None``: leave as is).
    """

    def __init__(
        self, info: ModelInfo, out: ResultStore, run: str, threads: int | None = None
    ) -> None:
        if threads is not None:  # a worker process of its own: its settings are ours
            import torch

            os.environ["INSPECTKIT_PROGRESS"] = "0"
            torch.set_num_threads(threads)
        self.info = info
        self.store = out
        self.run = run
        self.scorer: Scorer = load_scorer(info, threads)
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        summaries = [self.chunk(row) for row in batch.to_pylist()]
        return pa.Table.from_pylist(summaries)

    def chunk(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one decoded chunk, write its part; the chunk's summary."""
        import pyarrow as pa

        t0 = time.perf_counter()
        n = len(row["path"])
        errors: list[str | None] = list(row["error"])
        ok = [j for j in range(n) if errors[j] is None]

        def column(name: str) -> list[Any]:
            return [row[name][j] for j in ok]

        arrays = [
            np.frombuffer(b, dtype=np.dtype(d)).reshape(shape).copy()  # writable, for torch
            for b, d, shape in zip(column("pixels"), column("dtype"), column("shape"))
        ]
        scored = self._score(arrays, column("id"), column("source"), column("path"), errors, ok)
        results = dict(zip(ok, scored))
        rows = []
        for j in range(n):
            res = results.get(j) or {}
            rows.append(
                {
                    "path": row["path"][j],
                    "index": None if row["index"][j] < 0 else row["index"][j],
                    "id": row["id"][j],
                    **res,
                    "model_digest": self.info.digest,
                    "error": errors[j],
                }
            )
        t1 = time.perf_counter()
        self.store.check_lease(self.run)
        self.store.write_part(row["part"], pa.Table.from_pylist(rows, schema=result_schema()))
        verdicts = Counter(r["verdict"] for r in rows if r["error"] is None)
        return {
            "part": row["part"],
            "inputs": n,
            "errors": sum(e is not None for e in errors),
            "verdicts": json.dumps(dict(verdicts)),
            "decode_s": row["decode_s"],
            "score_s": t1 - t0,
            "write_s": time.perf_counter() - t1,
            "worker": self.where,
        }

    def _score(
        self,
        arrays: list[np.ndarray],
        ids: list[str],
        sources: list[str],
        paths: list[str],
        errors: list[str | None],
        positions: list[int],
    ) -> list[dict[str, Any] | None]:
        """Rows of the decodable inputs: one batch, or one by one when the model refuses
        the batch (the inputs it refuses alone get their error in ``errors``)."""
        if not arrays:
            return []
        try:
            return list(self.scorer.score(arrays, ids, sources))
        except MemoryError:
            if len(arrays) == 1:
                raise
        except Exception as exc:
            if len(arrays) == 1:
                errors[positions[0]] = _error(paths[0], exc)
                return [None]
        out: list[dict[str, Any] | None] = []
        for k in range(len(arrays)):
            out += self._score(
                arrays[k : k + 1],
                ids[k : k + 1],
                sources[k : k + 1],
                paths[k : k + 1],
                errors,
                positions[k : k + 1],
            )
        return out


__all__ = ["CHUNK_COLUMNS", "ChunkScorer", "chunk_row", "decode_chunks"]
