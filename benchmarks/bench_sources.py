"""Benchmark the data sources and Wrangle on the real data sets; prints one JSON object.

* wafer: load all five WM-811K ``.npz`` files (49,798 maps) and resize them to 64×64
  (targets: < 10 s, < 1 GB peak RSS), holding everything (``wafer``) and file by file,
  keeping only the resized sets (``wafer_stream``);
* magnetic tile: load the 1,344 images (+ masks) and resize them to 256×256 (< 15 s).

Each measurement runs in a fresh Python process, which reports its own peak RSS
(``ru_maxrss``), the RSS right after importing torch and inspectkit (the baseline that
any process using the library pays), wall seconds and CPU seconds (user + system; on a
machine that other jobs keep busy, CPU seconds are the figure that carries over). Each is run with torch's default intra-op threads
and with one thread.

Usage:
    flock /tmp/inspectkit-bench.lock python benchmarks/bench_sources.py > benchmarks/results/sources.json
    python benchmarks/bench_sources.py --quick      # tiny smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WAFER_FILES = [
    "WM811K_train_1_split.npz",
    "WM811K_train_10_split.npz",
    "WM811K_train_20_split.npz",
    "WM811K_train_29_split.npz",
    "WM811K_test_data.npz",
]
TARGETS = {"wafer_seconds": 10.0, "wafer_peak_rss_mb": 1024.0, "tile_seconds": 15.0}


def data_root() -> Path:
    env = os.environ.get("INSPECTKIT_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if not root.is_dir():
        sys.exit(f"data not found at {root}; set INSPECTKIT_DATA")
    return root


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(task: str, quick: bool, threads: int | None) -> dict[str, object]:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    from inspectkit.sources import load_magnetic_tile, load_wafer_npz
    from inspectkit.stages import Wrangle

    t_imp = time.perf_counter()
    if task == "tile":
        # antialiased resizing needs torchvision, which inspectkit imports on first use;
        # a one-off process cost (seconds on a busy machine), timed apart from the data
        from inspectkit.ops import _tf

        _tf()
    import_s = time.perf_counter() - t_imp
    baseline = rss_mb()
    root = data_root()
    out: dict[str, object] = {
        "torch_threads": torch.get_num_threads(),
        "baseline_rss_mb": round(baseline, 1),
        "torchvision_import_s": round(import_s, 3),
    }
    cpu0 = cpu_s()
    if task == "wafer":
        files = WAFER_FILES[:1] if quick else WAFER_FILES
        t0 = time.perf_counter()
        sets = [load_wafer_npz(root / "wm811k" / f) for f in files]
        t1 = time.perf_counter()
        resized = [Wrangle(size=64).run(s).images for s in sets]
        t2 = time.perf_counter()
        n = sum(len(s) for s in sets)
        assert all(r.dtype == torch.uint8 and r.shape[1:] == (1, 64, 64) for r in resized)
        out.update(
            n_maps=n,
            load_s=round(t1 - t0, 3),
            resize_s=round(t2 - t1, 3),
            total_s=round(t2 - t0, 3),
        )
    elif task == "wafer_stream":
        # file by file: each file's raw maps are dropped once resized
        files = WAFER_FILES[:1] if quick else WAFER_FILES
        load_s = resize_s = 0.0
        resized = []
        n = 0
        for f in files:
            t0 = time.perf_counter()
            s = load_wafer_npz(root / "wm811k" / f)
            t1 = time.perf_counter()
            resized.append(Wrangle(size=64).run(s))
            t2 = time.perf_counter()
            n += len(s)
            del s
            load_s += t1 - t0
            resize_s += t2 - t1
        out.update(
            n_maps=n,
            load_s=round(load_s, 3),
            resize_s=round(resize_s, 3),
            total_s=round(load_s + resize_s, 3),
        )
    else:
        t0 = time.perf_counter()
        tiles = load_magnetic_tile(root / "magnetic_tile", limit_per_class=5 if quick else None)
        t1 = time.perf_counter()
        out_set = Wrangle(size=256).run(tiles)
        t2 = time.perf_counter()
        assert out_set.images.shape[1:] == (1, 256, 256) and out_set.masks.shape[1:] == (
            1,
            256,
            256,
        )
        out.update(
            n_images=len(tiles),
            load_s=round(t1 - t0, 3),
            resize_s=round(t2 - t1, 3),
            total_s=round(t2 - t0, 3),
        )
    out["cpu_s"] = round(cpu_s() - cpu0, 3)
    out["peak_rss_mb"] = round(rss_mb(), 1)
    return out


def run_child(task: str, quick: bool, threads: int | None) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", task]
    if quick:
        cmd.append("--quick")
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, INSPECTKIT_PROGRESS="0")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument(
        "--child", choices=["wafer", "wafer_stream", "tile"], help=argparse.SUPPRESS
    )
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.quick, args.threads)))
        return
    import torch

    load_before = os.getloadavg()
    results: dict[str, object] = {
        "benchmark": "sources",
        "command": " ".join(["python", "benchmarks/bench_sources.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "quick": args.quick,
        "loadavg_1m_before": round(load_before[0], 2),
        "targets": TARGETS,
    }
    for task in ("wafer", "tile"):
        results[task] = {
            "default_threads": run_child(task, args.quick, None),
            "one_thread": run_child(task, args.quick, 1),
        }
    results["wafer_stream"] = {"default_threads": run_child("wafer_stream", args.quick, None)}
    results["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    if not args.quick:
        best_w = min(r.get("total_s", 1e9) for r in results["wafer"].values())  # type: ignore[union-attr]
        peak_w = max(r.get("peak_rss_mb", 1e9) for r in results["wafer"].values())  # type: ignore[union-attr]
        best_t = min(r.get("total_s", 1e9) for r in results["tile"].values())  # type: ignore[union-attr]
        results["met"] = {
            "wafer_seconds": best_w < TARGETS["wafer_seconds"],
            "wafer_peak_rss_mb": peak_w < TARGETS["wafer_peak_rss_mb"],
            "tile_seconds": best_t < TARGETS["tile_seconds"],
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
