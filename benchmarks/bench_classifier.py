"""Benchmark of the supervised Classifier on WM-811K and NEU steel; prints one JSON object.

WM-811K: train on ``WM811K_train_29_split.npz`` (18,051 maps), test on
``WM811K_test_data.npz`` (12,450), maps at 64×64 (``Wrangle(size=64)``). The peer, run in
the same process for the same wall-clock training time as ours, is the lecture CNN that
inspection courses teach for this data (Conv 1→32 s1, 32→16 s2, 16→16 s1, 3×3 pad 1 +
ReLU, Linear 32·32·16→512→9; Adam 1e-3, batch 128).

NEU-DET: the 1,770 ``IMAGES`` (6 classes), stratified 80/20 split with seed 0, trained
from scratch.

``--defaults validation|test`` measures what ``Classifier()`` with its defaults reaches
behind ``Wrangle(size=...)`` (``--candidate`` overrides settings to try as defaults):
on WM-811K (623 maps of ``WM811K_train_1_split.npz``, and the 6,225 of
``WM811K_train_10_split.npz``), NEU-DET (the 80 % split above) and DeepPCB defect tiles
(96×96 crops around the annotated defects of the ``_test.jpg`` images, six types; never
used to choose a default). ``validation`` scores on data carved from training files only
(WM-811K: every 10th map of ``WM811K_train_20_split.npz``; NEU: 20 % of the 80 % split);
``test`` on the test file / the 20 % NEU split / tiles from later DeepPCB images.

Usage::

    flock /tmp/inspectkit-bench.lock python benchmarks/bench_classifier.py > benchmarks/results/classifier.json
    python benchmarks/bench_classifier.py --quick      # smoke run, about a minute
    python benchmarks/bench_classifier.py --defaults validation --candidate '{"batch_size": 128}'

OpenMP threads spin while waiting by default: fastest on an idle machine; on a shared,
oversubscribed one, export ``OMP_WAIT_POLICY=PASSIVE`` before the run (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, recall_score
from sklearn.model_selection import train_test_split
from torch import nn

from inspectkit.metrics import classification_report
from inspectkit.models import count_parameters
from inspectkit.records import ImageSet, SampleMeta
from inspectkit.sources import load_wafer_maps
from inspectkit.stages import Classifier, Wrangle

log = logging.getLogger("bench_classifier")


def data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("INSPECTKIT_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "load_avg_start": list(os.getloadavg()),
    }


# ---------------------------------------------------------------------- lecture CNN peer
class LectureCNN(nn.Module):
    """The course CNN: three 3×3 convolutions (one strided), then two linear layers."""

    def __init__(self, num_classes: int = 9, size: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(32, 16, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, 1, 1),
            nn.ReLU(),
        )
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * (size // 2) ** 2, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


def run_peer(train: ImageSet, test: ImageSet, budget_s: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    size = int(train.image_tensor().shape[-1])
    net = LectureCNN(len(train.classes), size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = train.image_tensor().float() / 2.0
    y = train.targets()
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    epochs, steps = 0.0, 0
    n = len(y)
    done = False
    while not done:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, 128):
            idx = perm[start : start + 128]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            epochs += len(idx) / n
            if time.perf_counter() - t0 > budget_s:
                done = True
                break
    train_s = time.perf_counter() - t0
    net.eval()
    xt = test.image_tensor().float() / 2.0
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = torch.cat([net(xt[i : i + 256]) for i in range(0, len(xt), 256)])
    infer_s = time.perf_counter() - t0
    pred = logits.argmax(1).numpy()
    truth = test.targets().numpy()
    labels = list(range(len(test.classes)))
    rec = recall_score(truth, pred, labels=labels, average=None, zero_division=0)
    return {
        "model": "lecture CNN (Conv 1-32 s1, 32-16 s2, 16-16 s1, Linear 16384-512-9), Adam 1e-3, batch 128",
        "parameters": count_parameters(net),
        "train_seconds": round(train_s, 1),
        "epochs": round(epochs, 2),
        "steps": steps,
        "accuracy": float(accuracy_score(truth, pred)),
        "macro_f1": float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0)),
        "recall": {c: round(float(r), 4) for c, r in zip(test.classes, rec)},
        "inference_maps_per_s": round(len(xt) / infer_s, 1),
    }


# ---------------------------------------------------------------------- ours
def inference_speed(clf: Classifier, data: ImageSet, repeats: int = 2) -> dict:
    """End-to-end maps/s of ``predict_proba`` (preprocessing included) and network-only."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        clf.predict_proba(data)
        best = min(best, time.perf_counter() - t0)
    assert clf.model is not None
    model = clf.model.eval().to(memory_format=torch.channels_last)
    x = clf.preprocess(data.image_tensor()[:2048]).contiguous(memory_format=torch.channels_last)
    net_best = float("inf")
    with torch.inference_mode():
        model(x[:256])
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(x), 256):
                model(x[i : i + 256])
            net_best = min(net_best, time.perf_counter() - t0)
    return {
        "end_to_end_maps_per_s": round(len(data) / best, 1),
        "network_only_maps_per_s": round(len(x) / net_best, 1),
    }


def evaluate(clf: Classifier, test: ImageSet, focus: list[str]) -> dict:
    report = classification_report(clf.run(test))
    return {
        "accuracy": report.metrics["accuracy"],
        "macro_f1": report.metrics["macro_f1"],
        "recall": {c: round(v["recall"], 4) for c, v in report.per_class.items()},
        "focus_recall": {
            c: round(report.per_class[c]["recall"], 4) for c in focus if c in report.per_class
        },
        "confusion": report.confusion,
        "classes": report.classes,
    }


def tta_figures(clf: Classifier, test: ImageSet, focus: list[str]) -> dict:
    """The same trained network with the other test-time views (1, 2 or 8 views)."""
    out = {}
    base = clf.config
    for mode in ("none", "flip", "dihedral"):
        if mode == base.tta:
            continue
        clf.config = base.model_copy(update={"tta": mode})
        figures = evaluate(clf, test, focus)
        t0 = time.perf_counter()
        clf.predict_proba(test)
        speed = len(test) / (time.perf_counter() - t0)
        out[mode] = {k: figures[k] for k in ("accuracy", "macro_f1", "recall", "focus_recall")} | {
            "end_to_end_maps_per_s": round(speed, 1)
        }
    clf.config = base
    return out


def bench_wm811k(root: Path, args: argparse.Namespace) -> dict:
    wm = root / "wm811k"
    train_file = "WM811K_train_1_split.npz" if args.quick else "WM811K_train_29_split.npz"
    t0 = time.perf_counter()
    wrangle = Wrangle(size=64)
    train = wrangle.run(load_wafer_maps(wm / train_file))
    test = wrangle.run(
        load_wafer_maps(wm / "WM811K_test_data.npz", limit=1500 if args.quick else None)
    )
    load_s = time.perf_counter() - t0
    cfg = {
        "arch": "compact",
        "max_params": args.max_params,
        "epochs": 2 if args.quick else args.epochs,
        "batch_size": 128,
        "lr": args.lr,
        "imbalance": args.imbalance,
        "patience": args.patience,
        "time_budget": None if args.quick else args.time_budget,
        "ema": args.ema,
        "pool": args.pool,
        "val_fraction": args.val_fraction,
        "tta": args.tta,
        "seed": 0,
        "progress": not args.no_progress,
    }
    clf = Classifier(**cfg)
    t0 = time.perf_counter()
    clf.fit(train)
    train_s = time.perf_counter() - t0
    ours = {
        "config": cfg,
        "parameters": clf.num_parameters,
        "train_seconds": round(train_s, 1),
        "epochs_run": len(clf.history),
        "best_epoch": clf.train_result.best_epoch if clf.train_result else None,
        "val_macro_f1": [round(h.get("val", float("nan")), 4) for h in clf.history],
        **evaluate(clf, test, ["Scratch", "Loc", "Donut"]),
        **inference_speed(clf, test),
        "tta": tta_figures(clf, test, ["Scratch", "Loc", "Donut"]),
    }
    result = {
        "train_file": train_file,
        "n_train": len(train),
        "n_test": len(test),
        "load_and_wrangle_seconds": round(load_s, 1),
        "ours": ours,
    }
    if not args.skip_peer:
        result["peer"] = run_peer(train, test, budget_s=train_s)
    return result


def load_neu(root: Path, limit: int | None) -> ImageSet:
    neu = root / "neu_det"
    try:
        from inspectkit.sources import load_voc

        return load_voc(neu / "IMAGES", neu / "ANNOTATIONS", channels=1, limit=limit)
    except ImportError:  # pragma: no cover - before the VOC loader existed
        from PIL import Image

        files = sorted((neu / "IMAGES").glob("*.jpg"))[:limit]
        imgs, samples = [], []
        for f in files:
            label = f.stem.rsplit("_", 1)[0]
            arr = np.asarray(Image.open(f).convert("L"))
            imgs.append(torch.from_numpy(arr.copy()).unsqueeze(0))
            samples.append(SampleMeta(id=f.stem, source=str(f), label=label))
        classes = sorted({s.label for s in samples if s.label})
        return ImageSet(images=imgs, samples=samples, classes=classes)


def bench_neu(root: Path, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    data = load_neu(root, None)
    if args.quick:  # 40 images per class
        seen: dict[str, int] = {}
        keep = [
            i
            for i, s in enumerate(data.samples)
            if seen.setdefault(s.label, 0) < 40 and not seen.update({s.label: seen[s.label] + 1})
        ]
        data = data.subset(keep)
    data = Wrangle(size=args.neu_size).run(data)
    data = data.replace(boxes=None)
    load_s = time.perf_counter() - t0
    y = data.targets().numpy()
    tr, te = train_test_split(np.arange(len(data)), test_size=0.2, stratify=y, random_state=0)
    train, test = data.subset(tr.tolist()), data.subset(te.tolist())
    cfg = {
        "arch": "compact",
        "max_params": args.max_params,
        "epochs": 2 if args.quick else args.neu_epochs,
        "batch_size": 32,
        "lr": args.lr,
        "imbalance": "none",
        "augment": args.neu_augment,
        "patience": None if args.neu_patience < 0 else args.neu_patience,
        "val_fraction": args.neu_val_fraction,
        "time_budget": None if args.quick else args.neu_time_budget,
        "ema": args.neu_ema or None,
        "seed": 0,
        "progress": not args.no_progress,
    }
    clf = Classifier(**cfg)
    t0 = time.perf_counter()
    clf.fit(train)
    train_s = time.perf_counter() - t0
    return {
        "n_train": len(train),
        "n_test": len(test),
        "size": args.neu_size,
        "load_seconds": round(load_s, 1),
        "config": cfg,
        "parameters": clf.num_parameters,
        "train_seconds": round(train_s, 1),
        "epochs_run": len(clf.history),
        **evaluate(clf, test, []),
        "tta": tta_figures(clf, test, []),
    }


# ---------------------------------------------------------------------- the defaults
PCB_TYPES = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]


def deeppcb_tiles(
    root: Path, per_type: int, *, tile: int = 96, skip_images: int = 0
) -> tuple[ImageSet, int]:
    """``per_type`` gray ``tile``×``tile`` crops centred on annotated DeepPCB defects of
    each of the six types (``x1 y1 x2 y2 type`` lines of ``groupN/N_not/*.txt`` on the
    ``_test.jpg`` images), reading images in sorted order from the ``skip_images``-th on.
    Returns the set and the number of images read, so a later call can start after them
    (a test set from other boards)."""
    from PIL import Image

    pcb = root / "deeppcb" / "PCBData"
    quota = dict.fromkeys(range(1, 7), 0)
    images: list[torch.Tensor] = []
    samples: list[SampleMeta] = []
    annotations = sorted(pcb.glob("group*/*_not/*.txt"))
    k = 0
    for k, ann in enumerate(annotations):
        if min(quota.values()) >= per_type:
            break
        if k < skip_images:
            continue
        img = ann.parent.parent / ann.parent.name.removesuffix("_not") / f"{ann.stem}_test.jpg"
        boxes = [[int(v) for v in line.split()] for line in ann.read_text().splitlines() if line]
        wanted = [b for b in boxes if len(b) == 5 and quota.get(b[4], per_type) < per_type]
        if not wanted or not img.exists():
            continue
        a = np.asarray(Image.open(img).convert("L"))
        h, w = a.shape
        for j, (x1, y1, x2, y2, t) in enumerate(wanted):
            if quota[t] >= per_type:
                continue
            x0 = min(max((x1 + x2) // 2 - tile // 2, 0), w - tile)
            y0 = min(max((y1 + y2) // 2 - tile // 2, 0), h - tile)
            images.append(torch.from_numpy(a[y0 : y0 + tile, x0 : x0 + tile].copy())[None])
            samples.append(
                SampleMeta(id=f"{img.stem}#{j}", source=str(img), label=PCB_TYPES[t - 1])
            )
            quota[t] += 1
    data = ImageSet(images=torch.stack(images), samples=samples, classes=list(PCB_TYPES))
    return data, k


def defaults_sets(root: Path, mode: str) -> dict[str, tuple[ImageSet, ImageSet, int]]:
    """``name -> (train, evaluation set, Wrangle size)`` for ``--defaults``."""
    wm = root / "wm811k"
    small = load_wafer_maps(wm / "WM811K_train_1_split.npz")
    neu = load_neu(root, None)
    y = neu.targets().numpy()
    tr, te = train_test_split(np.arange(len(neu)), test_size=0.2, stratify=y, random_state=0)
    neu_train, neu_test = neu.subset(tr.tolist()), neu.subset(te.tolist())
    if mode == "validation":
        held = load_wafer_maps(wm / "WM811K_train_20_split.npz")
        held = held.subset(range(0, len(held), 10))
        y = neu_train.targets().numpy()
        a, b = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=1)
        return {
            "wm811k_623": (small, held, 64),
            "neu": (neu_train.subset(a.tolist()), neu_train.subset(b.tolist()), 128),
        }
    test = load_wafer_maps(wm / "WM811K_test_data.npz")
    pcb_train, read = deeppcb_tiles(root, 150)
    pcb_test, _ = deeppcb_tiles(root, 100, skip_images=read)
    return {
        "wm811k_623": (small, test, 64),
        "wm811k_6225": (load_wafer_maps(wm / "WM811K_train_10_split.npz"), test, 64),
        "neu": (neu_train, neu_test, 128),
        "deeppcb_tiles": (pcb_train, pcb_test, 96),
    }


def bench_defaults(root: Path, mode: str, overrides: dict) -> dict:
    """``Pipeline([Wrangle(size=...), Classifier(**overrides)])`` — the defaults — per set."""
    import inspectkit as ik

    out: dict = {}
    for name, (train, held, size) in defaults_sets(root, mode).items():
        clf = Classifier(progress=False, **overrides)
        pipe = ik.Pipeline([Wrangle(size=size), clf])
        t0, c0 = time.perf_counter(), time.process_time()
        pipe.fit(train.replace(boxes=None))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        pred = pipe.run(held.replace(boxes=None))
        report = classification_report(pred)
        result = clf.train_result
        out[name] = {
            "n_train": len(train),
            "n_eval": len(held),
            "size": size,
            "accuracy": round(report.metrics["accuracy"], 4),
            "macro_f1": round(report.metrics["macro_f1"], 4),
            "predicted_classes": len({p for p in pred.predicted if p is not None}),
            "one_class_flag": getattr(result, "one_class", None),
            "epochs_run": len(clf.history),
            "best_epoch": result.best_epoch if result else None,
            "val_macro_f1": [round(h.get("val", float("nan")), 4) for h in clf.history],
            "train_seconds": round(seconds, 1),
            "train_cpu_seconds": round(cpu, 1),
        }
        log.info("%s: %s", name, out[name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument(
        "--data", default=None, help="data root (default INSPECTKIT_DATA or ../shared/data)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--time-budget", type=float, default=570.0, help="seconds of WM-811K training")
    ap.add_argument("--max-params", type=int, default=100_000)
    ap.add_argument("--lr", type=float, default=6e-3)
    ap.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="held out for early stopping (0: train on all 18,051 maps, keep the last epoch)",
    )
    ap.add_argument(
        "--tta",
        default="flip",
        choices=["none", "flip", "dihedral"],
        help="test-time views of the reported predictor (the others are reported beside it)",
    )
    ap.add_argument("--imbalance", default="weighted_loss")
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--ema", type=float, default=0.999, help="weight EMA decay (0 = off)")
    ap.add_argument("--pool", default="avg", choices=["avg", "avgmax"])
    ap.add_argument("--neu-size", type=int, default=128)
    ap.add_argument("--neu-epochs", type=int, default=100)
    ap.add_argument("--neu-ema", type=float, default=0.998, help="weight EMA decay (0 = off)")
    ap.add_argument(
        "--neu-val-fraction",
        type=float,
        default=0.0,
        help="held out of the 80 %% for early stopping (0: train on all of it, keep the last epoch)",
    )
    ap.add_argument("--neu-patience", type=int, default=-1, help="-1: no early stopping")
    ap.add_argument("--neu-augment", default="dihedral", choices=["auto", "dihedral", "flip"])
    ap.add_argument("--neu-time-budget", type=float, default=600.0, help="seconds of NEU training")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-neu", action="store_true")
    ap.add_argument("--skip-wafer", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--defaults",
        choices=["validation", "test"],
        default=None,
        help="what Classifier() with its defaults reaches (see the module docs)",
    )
    ap.add_argument("--candidate", default="{}", help="JSON of settings tried as defaults")
    args = ap.parse_args()
    args.ema = args.ema or None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    root = data_root(args.data)
    out: dict = {
        "benchmark": "classifier",
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if args.defaults is not None:
        out["defaults"] = {
            "mode": args.defaults,
            "overrides": json.loads(args.candidate),
            "sets": bench_defaults(root, args.defaults, json.loads(args.candidate)),
        }
        out["machine"]["load_avg_end"] = list(os.getloadavg())
        print(json.dumps(out, indent=2))
        return
    if not args.skip_wafer:
        out["wm811k"] = bench_wm811k(root, args)
    if not args.skip_neu:
        out["neu_det"] = bench_neu(root, args)
    out["machine"]["load_avg_end"] = list(os.getloadavg())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
