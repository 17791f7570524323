"""Deployment benchmark (issue #18); prints one JSON object.

* ``parity``: models trained on the public data sets (the default anomaly detector of
  ``inspectkit train`` on magnetic tiles and DeepPCB, the default wafer classifier on
  WM-811K, a compact classifier on NEU) are exported; every image of the full test sets is
  read from its file by the runtime (decode + NumPy preprocessing + ONNX Runtime) and by
  the library (``sources`` + ``Pipeline.run`` of the exact float32 reference). Reported:
  verdict / top-class mismatches, largest relative score / absolute probability
  difference, largest map difference.
* ``latency``: per-image time of ONNX Runtime (graph only, and runtime with its NumPy
  preprocessing) against ``Pipeline.run`` on one image at a time (median of ``--repeat``),
  default anomaly detector and wafer classifier; both on ``--threads`` threads.
* ``service``: ``inspectkit serve`` (uvicorn on 127.0.0.1) with the default anomaly model,
  4 concurrent clients each posting one image per request: p50 / p99 latency and
  throughput, against in-process ``Pipeline.run`` one image at a time.
* ``runtime_start``: a fresh process where ``import torch`` fails imports the runtime,
  loads the exported model and predicts one image file (times of each step).
* ``cli``: wall time of ``inspectkit --version`` and ``--help`` (median of 7).
* ``install``: size of a fresh venv with ``pip install ./runtime`` (and of an empty venv).

Usage:
    flock /tmp/inspectkit-bench.lock python benchmarks/bench_deploy.py > benchmarks/results/deploy.json
    python benchmarks/bench_deploy.py --quick        # subsets, a few minutes
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INSPECTKIT_DATA", REPO.parent / "shared" / "data"))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "INSPECTKIT_PROGRESS": "0"}


def _stride(items: list[Any], n: int | None) -> list[Any]:
    return items if n is None or len(items) <= n else items[:: len(items) // n][:n]


# ---------------------------------------------------------------------- models
def anomaly_model(name: str, train_n: int) -> tuple[Any, list[Path], int | None]:
    """The default detector of ``inspectkit train`` on ``name``'s good parts, and the test
    files: every defective part, and the good parts not trained on (DeepPCB: 100 of its
    templates)."""
    from inspectkit import recipes
    from inspectkit.sources import load_image_files

    if name == "magnetic_tile":
        good = sorted((DATA / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))
        bad = sorted(p for p in (DATA / "magnetic_tile").glob("MT_[!F]*/Imgs/*.jpg"))
    else:
        good = sorted((DATA / "deeppcb").rglob("*_temp.jpg"))
        bad = sorted((DATA / "deeppcb").rglob("*_test.jpg"))
    train = good[::2][:train_n]
    held = [p for p in good if p not in set(train)]
    if name == "deeppcb":  # 999 tested boards; the 999 templates are near-duplicates: 100 held out
        held = held[:: max(1, len(held) // 100)][:100]
    pipe = recipes.default_pipeline("anomaly", kind="image", n_train=len(train), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(load_image_files([str(p) for p in train], channels=1))
    return pipe, held + bad, 1


def wafer_model(train_file: str, epochs: int) -> Any:
    from inspectkit import recipes
    from inspectkit.sources import load_wafer_maps

    train = load_wafer_maps(DATA / "wm811k" / train_file)
    pipe = recipes.default_pipeline(
        "classify", kind="wafer", n_train=len(train), epochs=epochs, progress=False
    )
    return pipe.fit(train)


def neu_model(epochs: int) -> Any:
    from inspectkit import Pipeline
    from inspectkit.sources import load
    from inspectkit.stages import Classifier, Wrangle

    train = load(DATA / "neu_det")
    train = train.subset(range(0, len(train), 3))
    return Pipeline([Wrangle(size=64, channels=1), Classifier(epochs=epochs, progress=False)]).fit(
        train
    )


# ---------------------------------------------------------------------- parity
def parity(
    pipe: Any, onnx: Path, paths: list[Path], channels: int | None, kind: str, batch: int = 64
) -> dict[str, Any]:
    import inspectkit_runtime as ikr
    from inspectkit.export import compare, exact_reference
    from inspectkit.sources import load_inputs

    model = ikr.load(onnx)
    reference = exact_reference(pipe)
    worst: dict[str, Any] = {"n": 0}
    t_lib = t_rt = 0.0
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        t0 = time.perf_counter()
        if kind == "wafer":
            arrays = [a for p in chunk for a in ikr.read_wafer_npz(p)]
        else:
            arrays = [ikr.decode_image(p, channels) for p in chunk]
        outputs = model.run_arrays(arrays)
        t1 = time.perf_counter()
        data = load_inputs([str(p) for p in chunk], channels=channels, kind=kind).materialize()
        expected = reference.run(data)
        t_lib += time.perf_counter() - t1
        t_rt += t1 - t0
        rep = compare(expected, outputs)
        worst["n"] += rep["n"]
        for key, value in rep.items():
            if key in ("n", "ok"):
                continue
            worst[key] = (
                value
                if key not in worst
                else (worst[key] + value if "mismatch" in key else max(worst[key], value))
            )
        worst["ok"] = worst.get("ok", True) and rep["ok"]
    worst["seconds_runtime"] = round(t_rt, 1)
    worst["seconds_library"] = round(t_lib, 1)
    return worst


def wafer_parity(
    pipe: Any, onnx: Path, test_file: Path, limit: int | None, tmp: Path, batch: int = 2000
) -> dict[str, Any]:
    from inspectkit.sources import load_wafer_maps, save_wafer_npz

    test = load_wafer_maps(test_file, limit=limit)
    parts = []
    for start in range(0, len(test), batch):
        sub = test.subset(range(start, min(start + batch, len(test))))
        f = tmp / f"lot{start // batch:03d}.npz"
        save_wafer_npz(f, list(sub.images), sub.labels)
        parts.append(f)
    return parity(pipe, onnx, parts, None, "wafer", batch=1)


# ---------------------------------------------------------------------- latency
def _median_ms(fn: Any, repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 2)


def latency(
    pipe: Any, onnx: Path, arrays: list[np.ndarray], kind: str, repeat: int, threads: int
) -> dict[str, Any]:
    import torch

    import inspectkit_runtime as ikr
    from inspectkit.records import ImageSet, SampleMeta

    torch.set_num_threads(threads)
    model = ikr.load(onnx, threads=threads, batch_size=1)
    x = model.preprocess(arrays[:1])
    tensors = [
        torch.from_numpy(np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1)))
        for a in arrays[:1]
    ]
    one = ImageSet.build(images=tensors, samples=[SampleMeta(id="0")], kind=kind)
    out = {
        "torch_pipeline_ms": _median_ms(lambda: pipe.run(one), repeat),
        "onnxruntime_runtime_ms": _median_ms(lambda: model.run_arrays(arrays[:1]), repeat),
        "onnxruntime_graph_ms": _median_ms(lambda: model.session.run(None, {"images": x}), repeat),
        "threads": threads,
    }
    out["ratio_torch_over_runtime"] = round(
        out["torch_pipeline_ms"] / out["onnxruntime_runtime_ms"], 2
    )
    return out


# ---------------------------------------------------------------------- service
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service(
    model_dir: Path, files: list[Path], pipe: Any, requests: int, clients: int = 4
) -> dict[str, Any]:
    import httpx
    import torch

    from inspectkit.records import ImageSet, SampleMeta
    from inspectkit_runtime import decode_image

    port = _free_port()
    env = {**os.environ, "INSPECTKIT_PROGRESS": "0"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inspectkit.cli",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            if proc.poll() is not None or time.perf_counter() - t0 > 300:
                raise RuntimeError("inspectkit serve did not start")
        start_s = time.perf_counter() - t0
        bodies = [(f.name, f.read_bytes()) for f in files]
        with httpx.Client(base_url=base, timeout=120) as c:  # warm-up
            c.post("/predict", files=[("files", (bodies[0][0], bodies[0][1], "image/jpeg"))])
        lat: list[float] = []
        lock = threading.Lock()
        counter = iter(range(requests))

        def client() -> None:
            with httpx.Client(base_url=base, timeout=120) as c:
                for i in counter:
                    name, body = bodies[i % len(bodies)]
                    t = time.perf_counter()
                    r = c.post("/predict", files=[("files", (name, body, "image/jpeg"))])
                    r.raise_for_status()
                    with lock:
                        lat.append(time.perf_counter() - t)

        t = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    lat.sort()
    arrays = [decode_image(f, 1) for f in files]
    sets = [
        ImageSet.build(images=[torch.from_numpy(a)[None]], samples=[SampleMeta(id=str(i))])
        for i, a in enumerate(arrays)
    ]
    pipe.run(sets[0])
    t = time.perf_counter()
    for i in range(requests):
        pipe.run(sets[i % len(sets)])
    in_process = requests / (time.perf_counter() - t)
    served = requests / wall
    return {
        "clients": clients,
        "requests": requests,
        "server_start_s": round(start_s, 2),
        "p50_ms": round(1000 * lat[len(lat) // 2], 1),
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
        "throughput_per_s": round(served, 2),
        "in_process_per_s": round(in_process, 2),
        "service_over_in_process": round(served / in_process, 3),
    }


# ---------------------------------------------------------------------- cold starts
STARTER = r"""
import sys, time, json
t0 = time.perf_counter()
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "inspectkit"):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
import inspectkit_runtime as ikr
t1 = time.perf_counter()
model = ikr.load(sys.argv[1])
t2 = time.perf_counter()
rows = model.predict([sys.argv[2]])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2, "in_process_total_s": t3 - t0}))
"""


def runtime_start(onnx: Path, image: Path) -> dict[str, Any]:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", STARTER, str(onnx), str(image)],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    wall = time.perf_counter() - t
    out = {k: round(v, 3) for k, v in json.loads(proc.stdout).items()}
    out["process_wall_s"] = round(wall, 3)
    return out


def cli_times() -> dict[str, Any]:
    out = {}
    for flag in ("--version", "--help"):
        times = []
        for _ in range(7):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "inspectkit.cli", flag],
                capture_output=True,
                env=_env(),
                check=True,
            )
            times.append(time.perf_counter() - t)
        out[flag] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
    exe = shutil.which("inspectkit")
    if exe:
        times = []
        for _ in range(7):
            t = time.perf_counter()
            subprocess.run([exe, "--version"], capture_output=True, env=_env(), check=True)
            times.append(time.perf_counter() - t)
        out["inspectkit --version (console script)"] = {
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
        }
    return out


def install_size(tmp: Path) -> dict[str, Any]:
    def du(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())

    empty, rt = tmp / "empty", tmp / "rt"
    subprocess.run([sys.executable, "-m", "venv", str(empty)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(rt)], check=True)
    t = time.perf_counter()
    subprocess.run(
        [str(rt / "bin" / "pip"), "install", "-q", str(REPO / "runtime")],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - t
    shutil.rmtree(REPO / "runtime" / "build", ignore_errors=True)
    check = subprocess.run(
        [
            str(rt / "bin" / "python"),
            "-c",
            "import importlib.util as u; print(u.find_spec('torch') is None)",
        ],
        capture_output=True,
        text=True,
    )
    return {
        "venv_with_runtime_mb": round(du(rt) / 2**20, 1),
        "empty_venv_mb": round(du(empty) / 2**20, 1),
        "runtime_added_mb": round((du(rt) - du(empty)) / 2**20, 1),
        "torch_absent": check.stdout.strip() == "True",
        "pip_install_s": round(seconds, 1),
    }


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="subsets: a few minutes")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated parts: parity,latency,service,runtime_start,cli,install",
    )
    ap.add_argument("--train-n", type=int, default=200, help="good images the detectors fit on")
    ap.add_argument("--epochs", type=int, default=10, help="classifier epochs")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    want = lambda part: not only or part in only  # noqa: E731
    limit = 60 if args.quick else None
    train_n = 40 if args.quick else args.train_n
    epochs = 2 if args.quick else args.epochs
    import torch

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_avg_start": os.getloadavg(),
        "quick": args.quick,
        "torch_threads": args.threads,
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    try:
        need_models = any(want(p) for p in ("parity", "latency", "service", "runtime_start"))
        if need_models:
            t = time.perf_counter()
            tiles, tile_files, _ = anomaly_model("magnetic_tile", train_n)
            tiles.save(tmp / "tiles")
            tiles.export(tmp / "tiles.onnx")
            result["magnetic_tile_model"] = {
                **tiles[0].recipe(),
                "fit_and_export_s": round(time.perf_counter() - t, 1),
                "train_n": train_n,
            }
            result["magnetic_tile_model"].pop("calibration", None)
            t = time.perf_counter()
            wafer = wafer_model(
                "WM811K_train_1_split.npz" if args.quick else "WM811K_train_10_split.npz", epochs
            )
            wafer.export(tmp / "wafer.onnx")
            result["wafer_model"] = {
                "fit_and_export_s": round(time.perf_counter() - t, 1),
                "epochs": epochs,
            }
        if want("parity"):
            par: dict[str, Any] = {}
            par["magnetic_tile"] = parity(
                tiles, tmp / "tiles.onnx", _stride(tile_files, limit), 1, "image", batch=32
            )
            pcb, pcb_files, _ = anomaly_model("deeppcb", train_n)
            pcb.export(tmp / "pcb.onnx")
            par["deeppcb"] = parity(
                pcb, tmp / "pcb.onnx", _stride(pcb_files, limit), 1, "image", batch=16
            )
            par["wm811k"] = wafer_parity(
                wafer,
                tmp / "wafer.onnx",
                DATA / "wm811k" / "WM811K_test_data.npz",
                600 if args.quick else None,
                tmp,
            )
            neu = neu_model(epochs)
            neu.export(tmp / "neu.onnx", kind="image")
            neu_files = sorted((DATA / "neu_det" / "IMAGES").glob("*.jpg")) + sorted(
                (DATA / "neu_det" / "Validation_Images").glob("*.jpg")
            )
            par["neu"] = parity(
                neu, tmp / "neu.onnx", _stride(neu_files, limit), None, "image", batch=128
            )
            result["parity"] = par
            print(json.dumps(par), file=sys.stderr, flush=True)
        if want("latency"):
            import inspectkit_runtime as ikr

            tile_arrays = [ikr.decode_image(p, 1) for p in tile_files[:8]]
            wafer_arrays = ikr.read_wafer_npz(DATA / "wm811k" / "WM811K_test_data.npz")[:512]
            result["latency"] = {
                "anomaly_default": latency(
                    tiles, tmp / "tiles.onnx", tile_arrays, "image", args.repeat, args.threads
                ),
                "wafer_classifier": latency(
                    wafer, tmp / "wafer.onnx", wafer_arrays, "wafer", args.repeat * 5, args.threads
                ),
            }
            print(json.dumps(result["latency"]), file=sys.stderr, flush=True)
        if want("service"):
            result["service"] = service(
                tmp / "tiles", tile_files[:20], tiles, 40 if args.quick else args.requests
            )
            print(json.dumps(result["service"]), file=sys.stderr, flush=True)
        if want("runtime_start"):
            result["runtime_start"] = runtime_start(tmp / "tiles.onnx", tile_files[0])
        if want("cli"):
            result["cli"] = cli_times()
        if want("install"):
            result["install"] = install_size(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_avg_end"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
