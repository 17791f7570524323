"""``inspect_archive``: score an archive of inputs into Parquet, on Ray Data or in-process.

The driver reads the model's digest and what the results folder already holds, lists the
inputs lazily (no pixels) and cuts the ones still to score into chunks of ``batch_size``.
With ``engine="ray"`` the chunks become a Ray dataset (``ray.data.from_items``), decoded
by a ``map_batches`` function and scored by a pool of ``map_batches`` actors that each
load the model once; Ray fuses the two steps, so pixels never leave the worker that
decodes them. Ray restarts an actor that dies and retries its chunk, which writes the
same part file again. ``engine="local"`` runs the same steps in this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from inspectkit.scale.inputs import Listing, Unit
from inspectkit.scale.model import ModelInfo
from inspectkit.scale.output import ResultStore, ScaleError
from inspectkit.scale.worker import ChunkScorer, chunk_row, decode_chunks

log = logging.getLogger(__name__)

ENGINES = ("ray", "local")
#: Inputs per chunk by task when ``batch_size`` is not given: a classifier scores
#: thousands of inputs a second, a detector about one, so its chunks stay short (a
#: worker that dies loses at most one chunk, and the progress bar moves).
DEFAULT_BATCH = {"classify": 256, "anomaly": 16}
INSTALL_HINT = "pip install 'inspectkit[ray]'"


@dataclass(frozen=True)
class ChunkDone:
    """One chunk scored and committed (what ``callback`` receives).

    Attributes:
        part: The part file written.
        inputs: Inputs in the chunk; ``errors`` of them without a result.
        verdicts: Count per verdict of the chunk.
        decode_s, score_s, write_s: Seconds the worker spent on each step.
        worker: ``host:pid`` of the worker process.
    """

    part: str
    inputs: int
    errors: int
    verdicts: dict[str, int]
    decode_s: float
    score_s: float
    write_s: float
    worker: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ChunkDone:
        return cls(
            part=row["part"],
            inputs=int(row["inputs"]),
            errors=int(row["errors"]),
            verdicts=json.loads(row["verdicts"]),
            decode_s=float(row["decode_s"]),
            score_s=float(row["score_s"]),
            write_s=float(row["write_s"]),
            worker=row["worker"],
        )


@dataclass
class ScaleSummary:
    """What an archive run did.

    Attributes:
        out: The results folder.
        model_digest: The model's digest (``model_digest`` column of its rows).
        listed: Inputs found under the inputs (repeats counted once).
        already_done: Of those, inputs the folder held a row for (not scored again).
        scored: Inputs given a row by this run; ``errors`` of them without a result.
        verdicts: Count per verdict of this run's rows.
        workers: Scoring workers; ``engine`` the engine.
        seconds: Wall time of the whole call; ``startup_s`` of it before the first chunk
            was done (listing, starting Ray and the workers, loading the model);
            ``list_s`` listing the inputs and planning the chunks.
        worker_s: Seconds the workers spent decoding, scoring and writing, summed.
        duplicates_dropped: Rows removed by the end-of-run check (a late writer of an
            interrupted run).
    """

    out: str
    model_digest: str
    engine: str
    workers: int
    listed: int = 0
    already_done: int = 0
    scored: int = 0
    errors: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    startup_s: float = 0.0
    list_s: float = 0.0
    worker_s: float = 0.0
    duplicates_dropped: int = 0

    @property
    def inputs_per_second(self) -> float:
        """Inputs scored per second of wall time (the whole call)."""
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_worker_rate(self) -> float:
        """Inputs per second of one worker's busy time (decode + score + write)."""
        return self.scored / self.worker_s if self.worker_s > 0 else 0.0

    def lines(self) -> list[str]:
        """The summary as text lines (what the command line prints)."""
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(self.verdicts.items())) or "none"
        return [
            f"scored {self.scored} inputs ({self.already_done} already done of {self.listed}) "
            f"with {self.workers} {self.engine} worker(s) into {self.out}",
            f"verdicts: {verdicts}; errors: {self.errors}",
            f"{self.inputs_per_second:.1f} inputs/s over {self.seconds:.1f} s "
            f"({self.startup_s:.1f} s to the first chunk; {self.per_worker_rate:.1f} inputs/s "
            "per busy worker)",
        ]


def plan_chunks(
    units: Iterator[Unit], size: int, digest: str, done: set[tuple[str, int]]
) -> tuple[list[dict[str, Any]], int]:
    """The dataset rows of the units still to score, ``size`` per chunk, and how many
    distinct units were listed (an input met twice is scored once)."""
    seen: set[tuple[str, int]] = set()
    rows: list[dict[str, Any]] = []
    chunk: list[Unit] = []
    for u in units:
        if u.key in seen:
            continue
        seen.add(u.key)
        if u.key in done:
            continue
        chunk.append(u)
        if len(chunk) == size:
            rows.append(chunk_row(digest, chunk))
            chunk = []
    if chunk:
        rows.append(chunk_row(digest, chunk))
    return rows, len(seen)


def inspect_archive(
    model: str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    engine: str = "ray",
    address: str | None = None,
    num_workers: int | None = None,
    batch_size: int | None = None,
    threads_per_worker: int | None = None,
    retry_errors: bool = False,
    progress: bool = True,
    callback: Callable[[ChunkDone], None] | None = None,
    filesystem: Any = None,
) -> ScaleSummary:
    """Score every input under ``inputs`` with ``model`` into Parquet files under ``out``,
    one row per input (see :mod:`inspectkit.scale`).

    Args:
        model: A saved model folder (run in torch) or an exported model (``.onnx`` /
            ``.json``, run in ONNX Runtime).
        inputs: Folders, glob patterns, files or wafer ``.npz`` archives (or a list).
        out: The results folder: a path or any URI pyarrow writes (``s3://...``). A run
            into a folder that already holds rows of this model scores only the rest.
        engine: ``"ray"`` (Ray Data; the ``inspectkit[ray]`` extra) or ``"local"`` (this
            process, the same chunks and files).
        address: ``None``: a local Ray on this machine (one already started in this
            process is used as it is); ``"auto"`` or ``"ray://host:10001"``: a cluster.
        num_workers: Scoring actors (default: the CPUs Ray has, ``threads_per_worker``
            each).
        batch_size: Inputs per chunk (default 256 for a classifier, 16 for a detector).
        threads_per_worker: CPU threads (and Ray CPUs) per actor (default 1); for the
            local engine, torch's threads during the run (default: as they are).
        retry_errors: Score again the inputs whose row of this model is an error (their
            error rows are removed first).
        progress: Show a progress bar with inputs per second.
        callback: Called with each :class:`ChunkDone` as chunks complete.
        filesystem: A ``pyarrow.fs.FileSystem`` for ``out``.

    Returns:
        The run's :class:`ScaleSummary`.

    Raises:
        ScaleError: Ray missing (``engine="ray"``), an output that cannot be written, a
            cluster without the CPUs asked for, the model changed during the run.
        DataError: an input path that does not exist or is of the other kind.

    Example:
        >>> from inspectkit.scale import inspect_archive
        >>> summary = inspect_archive("models/line3", "archive/2024/", "results/")  # doctest: +SKIP
        >>> summary.verdicts  # doctest: +SKIP
        {'good': 9871, 'defect': 129}
    """
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise ScaleError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    _require("pyarrow", "pyarrow")
    if engine == "ray":
        _require("ray.data", "Ray Data")
    if batch_size is not None and batch_size < 1:
        raise ScaleError(f"batch_size must be at least 1, got {batch_size}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ScaleError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
    if num_workers is not None and num_workers < 1:
        raise ScaleError(f"num_workers must be at least 1, got {num_workers}")
    if engine == "local" and address is not None:
        raise ScaleError("address is for engine='ray'; the local engine runs in this process")
    info = ModelInfo.read(model)
    store = ResultStore(out, filesystem)
    store.prepare()
    run = store.take_lease(info.digest)
    if retry_errors:
        store.drop_errors(info.digest)
    done = store.done(info.digest)
    listing = Listing(
        [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs),
        info.kind,
        info.channels,
    )
    size = batch_size or DEFAULT_BATCH[info.task]
    t_list = time.perf_counter()
    rows, listed = plan_chunks(listing.units(), size, info.digest, done.keys)
    todo = sum(len(r["path"]) for r in rows)
    summary = ScaleSummary(
        out=store.uri,
        model_digest=info.digest,
        engine=engine,
        workers=1,
        listed=listed,
        already_done=listed - todo,
        list_s=time.perf_counter() - t_list,
    )
    verdicts: Counter[str] = Counter()
    first: list[float] = []

    def record(chunk: ChunkDone) -> None:
        if not first:
            first.append(time.perf_counter())
        summary.scored += chunk.inputs
        summary.errors += chunk.errors
        summary.worker_s += chunk.decode_s + chunk.score_s + chunk.write_s
        verdicts.update(chunk.verdicts)
        bar.update(chunk.inputs)
        if callback is not None:
            callback(chunk)

    from inspectkit.runtime import progress_bar

    bar = progress_bar(enabled=progress and todo > 0, total=todo, unit="input", desc="inspect")
    with bar:
        if rows and engine == "local":
            _run_local(info, store, run, listing, rows, threads_per_worker, record)
        elif rows:
            threads = threads_per_worker or 1
            summary.workers = _run_ray(
                info, store, run, listing, rows, address, num_workers, threads, record
            )
    summary.verdicts = dict(verdicts)
    summary.duplicates_dropped = store.deduplicate(info.digest) if rows else 0
    summary.seconds = time.perf_counter() - t0
    summary.startup_s = (first[0] - t0) if first else summary.seconds
    return summary


def _run_local(
    info: ModelInfo,
    store: ResultStore,
    run: str,
    listing: Listing,
    rows: list[dict[str, Any]],
    threads: int | None,
    record: Callable[[ChunkDone], None],
) -> None:
    import pyarrow as pa

    from inspectkit.runtime import torch_threads

    with torch_threads(threads):
        scorer = ChunkScorer(info, store, run, None)
        for row in rows:
            decoded = decode_chunks(
                pa.Table.from_pylist([row]),
                readers=listing.readers,
                backend=info.backend,
                channels=info.channels,
            )
            for summary in scorer(decoded).to_pylist():
                record(ChunkDone.from_row(summary))


def _require(module: str, what: str) -> None:
    """A ``ScaleError`` saying what to install when ``module`` cannot be imported."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ScaleError(
            f"archive runs need {what}, which is not installed ({exc.name}); "
            f"install it with: {INSTALL_HINT}"
        ) from None


@contextlib.contextmanager
def _ray_session(address: str | None, cpus: int) -> Iterator[Any]:
    """Ray for this run: the one this process already started, a local one (``address``
    ``None``; stopped afterwards) or a cluster."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    try:
        if address is None:
            ray.init(
                num_cpus=max(cpus, os.cpu_count() or 1),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray" if address is None else f"the Ray cluster at {address}"
        raise ScaleError(f"cannot start {where}: {' '.join(str(exc).split())}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_ray(
    info: ModelInfo,
    store: ResultStore,
    run: str,
    listing: Listing,
    rows: list[dict[str, Any]],
    address: str | None,
    num_workers: int | None,
    threads: int,
    record: Callable[[ChunkDone], None],
) -> int:
    """Run the chunks on Ray Data; returns the number of scoring actors."""
    import ray.data
    from ray.data import ActorPoolStrategy

    wanted = (num_workers or 1) * threads
    with _ray_session(address, wanted) as ray, _quiet_ray_data():
        cpus = int(ray.cluster_resources().get("CPU", 0))
        workers = num_workers or max(1, cpus // threads)
        if workers * threads > cpus:
            raise ScaleError(
                f"{workers} workers of {threads} CPU(s) need {workers * threads} CPUs; "
                f"the Ray cluster has {cpus}"
            )
        workers = min(workers, len(rows))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(
            decode_chunks,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=threads,
            fn_kwargs={
                "readers": listing.readers,
                "backend": info.backend,
                "channels": info.channels,
            },
        )
        ds = ds.map_batches(
            ChunkScorer,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=threads,
            compute=ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={"info": info, "out": store, "run": run, "threads": threads},
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                record(ChunkDone.from_row(row))
    return workers


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's execution log lines off for the run (our bar and summary say it)."""
    logger = logging.getLogger("ray.data")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


__all__ = ["DEFAULT_BATCH", "ENGINES", "ChunkDone", "ScaleSummary", "inspect_archive"]
