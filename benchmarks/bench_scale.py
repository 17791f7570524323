"""Archive runs: throughput of single-process ``Pipeline.run`` against Ray Data with 1 and
2 workers, and what Ray adds (start-up, per-input overhead, listing, driver memory).

Two models, the ones ``inspectkit train`` builds: the wafer classifier (default recipe,
trained briefly on WM811K_train_1_split: speed does not depend on accuracy) scoring all
12,450 maps of WM811K_test_data.npz, and the default anomaly detector fitted on
``--train-n`` good magnetic tiles scoring ``--tiles`` held-out and defective tiles.

    flock /tmp/inspectkit-bench.lock python benchmarks/bench_scale.py            # ~15 min
    flock /tmp/inspectkit-bench.lock python benchmarks/bench_scale.py --quick    # ~5 min

Each configuration uses one CPU per worker (``OMP_NUM_THREADS=1``, torch threads 1);
single-process runs use one thread, and two for the 2-core comparison. Prints one JSON
document (BENCHMARKS.md, "Scale-out").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("INSPECTKIT_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INSPECTKIT_DATA", REPO.parent / "shared" / "data"))
WAFER_TEST = DATA / "wm811k" / "WM811K_test_data.npz"


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- models
def wafer_model(folder: Path, epochs: int) -> Path:
    if (folder / "pipeline.json").exists():
        return folder
    from inspectkit import recipes
    from inspectkit.sources import load_wafer_maps

    train = load_wafer_maps(DATA / "wm811k" / "WM811K_train_1_split.npz")
    pipe = recipes.default_pipeline(
        "classify", kind="wafer", n_train=len(train), epochs=epochs, progress=False
    )
    pipe.fit(train).save(folder)
    return folder


def tile_files(n: int, train_n: int) -> tuple[list[Path], list[Path]]:
    """Training goods (every other good tile, the first ``train_n``) and ``n`` test tiles
    strided over the held-out goods and the defects."""
    good = sorted((DATA / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))
    bad = sorted(p for p in (DATA / "magnetic_tile").glob("MT_[!F]*/Imgs/*.jpg"))
    train = good[::2][:train_n]
    test = [p for p in good if p not in set(train)] + bad
    return train, test[:: max(1, len(test) // n)][:n]


def tile_model(folder: Path, train: list[Path]) -> Path:
    if (folder / "pipeline.json").exists():
        return folder
    from inspectkit import recipes
    from inspectkit.sources import load_image_files

    pipe = recipes.default_pipeline("anomaly", kind="image", n_train=len(train), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(load_image_files([str(p) for p in train], channels=1))
    pipe.save(folder)
    return folder


# ---------------------------------------------------------------------- runs
def single_process(model: Path, inputs: list[str], batch: int, threads: int) -> dict[str, Any]:
    """``inspectkit predict``'s path: load, list lazily, ``Pipeline.iter_run``."""
    import torch

    from inspectkit.cli.card import load_model
    from inspectkit.sources import load_inputs

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pipe, card = load_model(model)
    data = load_inputs(inputs, channels=card.get("channels"), kind=card["kind"])
    t1 = time.perf_counter()
    n = 0
    for res in pipe.iter_run(data, batch_size=batch):
        n += len(res)
    t2 = time.perf_counter()
    return {
        "inputs": n,
        "threads": threads,
        "load_s": round(t1 - t0, 2),
        "run_s": round(t2 - t1, 2),
        "inputs_per_s": round(n / (t2 - t1), 2),
    }


def ray_run(model: Path, inputs: list[str], workers: int, batch: int, out: Path) -> dict[str, Any]:
    import ray

    from inspectkit.scale import inspect_archive

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    done: list[Any] = []
    try:
        s = inspect_archive(
            model,
            inputs,
            out,
            num_workers=workers,
            batch_size=batch,
            progress=False,
            callback=done.append,
        )
    finally:
        ray.shutdown()
    first = done[0]
    # before the first chunk: listing, actors started, model loaded (the chunk's own
    # decode + score time taken out); afterwards the pool runs at its rate
    overhead = s.startup_s - (first.decode_s + first.score_s + first.write_s)
    return {
        "workers": workers,
        "inputs": s.scored,
        "errors": s.errors,
        "chunks": len(done),
        "ray_init_s": round(init_s, 2),
        "startup_overhead_s": round(overhead, 2),
        "wall_s": round(s.seconds, 2),
        "inputs_per_s_wall": round(s.inputs_per_second, 2),
        "inputs_per_s_after_start": round(s.scored / (s.seconds - overhead), 2),
        "per_worker_busy_rate": round(s.per_worker_rate, 2),
        "worker_busy_s": round(s.worker_s, 2),
    }


def listing_cost(model: Path) -> dict[str, Any]:
    """Driver side: seconds and bytes per input to list and plan chunks."""
    from inspectkit.scale import Listing, ModelInfo, plan_chunks

    info = ModelInfo.read(model)
    out: dict[str, Any] = {}
    for name, inputs, kind in (
        ("wafer_npz_12450_maps", [WAFER_TEST], "wafer"),
        ("folder_walk_neu_images", [DATA / "neu_det" / "IMAGES"], "image"),
        ("magnetic_tile_layout", [DATA / "magnetic_tile"], "image"),
    ):
        tracemalloc.start()
        t = time.perf_counter()
        rows, n = plan_chunks(Listing(inputs, kind).units(), 256, info.digest, set())
        secs = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[name] = {
            "inputs": n,
            "s": round(secs, 3),
            "us_per_input": round(1e6 * secs / n, 1),
            "peak_bytes_per_input": round(peak / n),
        }
        del rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 maps, 24 tiles")
    ap.add_argument("--tiles", type=int, default=64, help="test tiles per configuration")
    ap.add_argument("--train-n", type=int, default=60, help="good tiles the detector fits on")
    ap.add_argument("--epochs", type=int, default=3, help="wafer classifier epochs")
    ap.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "bench-scale")
    ap.add_argument("--only", default="", help="comma-separated: wafer,tiles,listing")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    want = lambda part: not only or part in only  # noqa: E731
    n_tiles = 24 if args.quick else args.tiles
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_avg_start": os.getloadavg(),
        "quick": args.quick,
    }
    import ray

    result["ray"] = ray.__version__
    args.models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        wafer = wafer_model(args.models / "wafer", args.epochs)
        if want("wafer"):
            inputs = [str(WAFER_TEST)]
            if args.quick:  # the first 600 maps, as their own archive
                from inspectkit.sources import load_wafer_npz, save_wafer_npz

                part = load_wafer_npz(WAFER_TEST, limit=600)
                inputs = [str(save_wafer_npz(tmp / "wafer600.npz", part.images, [None] * 600))]
            res: dict[str, Any] = {}
            for threads in (1, 2):
                res[f"single_{threads}t"] = single_process(wafer, inputs, 256, threads)
                log("wafer single", threads, res[f"single_{threads}t"])
            for workers in (1, 2):
                res[f"ray_{workers}w"] = ray_run(wafer, inputs, workers, 256, tmp / f"w{workers}")
                log("wafer ray", workers, res[f"ray_{workers}w"])
            result["wafer_classifier"] = res
        if want("tiles"):
            train, test = tile_files(n_tiles, args.train_n)
            t = time.perf_counter()
            tiles = tile_model(args.models / f"tiles-{args.train_n}", train)
            res = {"fit_s_or_cached": round(time.perf_counter() - t, 1), "train_n": len(train)}
            inputs = [str(p) for p in test]
            res["single_1t"] = single_process(tiles, inputs, 8, 1)
            log("tiles single", res["single_1t"])
            for workers in (1, 2):
                res[f"ray_{workers}w"] = ray_run(tiles, inputs, workers, 8, tmp / f"t{workers}")
                log("tiles ray", workers, res[f"ray_{workers}w"])
            result["anomaly_default_tiles"] = res
        if want("listing"):
            result["listing"] = listing_cost(wafer)
            log("listing", result["listing"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_avg_end"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
