"""Benchmark of inspectkit.xai: explanation quality against ground truth, speed, and the
pytorch-grad-cam peer.

* NEU-DET steel (``neu_det``): a classifier (``inspectkit.stages.Classifier``) trained on a
  stratified 80 % split; on the 20 % test split Grad-CAM and SISE heatmaps are scored
  against the VOC boxes (energy-based pointing game, mask L1) and by deletion/insertion
  AUC (RISE); Grad-CAM is compared with pytorch-grad-cam's GradCAM on the same weights,
  layer, inputs and targets (Pearson correlation per image, time per image).
* Magnetic tile (``magnetic_tile``): a classifier of the six folders (resized to
  ``--mt-size``); Grad-CAM and SISE against the pixel masks of the defective test images.

Localisation metrics explain the true class of each image (the defect the box/mask
marks); deletion/insertion and the peer comparison explain the predicted class.

Classifiers: the compact network from scratch, NEU at its native 200×200, magnetic tile
at ``--mt-size`` with a wider network (``--mt-max-params``) and more epochs; the one-cycle
schedule runs to the end and the best validation epoch is kept. ``--model-cache DIR``
saves each trained classifier as a one-stage pipeline (plus ``train.json``: time, epochs,
validation curve) in a folder keyed by the recipe and the training samples, and later
runs with the same recipe load it instead of training.

Usage::

    bash benchmarks/peers/gradcam.sh          # once: the peer's virtualenv
    python benchmarks/bench_xai.py --threads 1 --only neu --model-cache benchmarks/results/xai_models
    python benchmarks/bench_xai.py --threads 1 --only magnetic_tile --model-cache benchmarks/results/xai_models
    flock /tmp/inspectkit-bench.lock python benchmarks/bench_xai.py \
        --model-cache benchmarks/results/xai_models > benchmarks/results/xai.json
    python benchmarks/bench_xai.py --quick    # smoke run on a few images

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from inspectkit.pipeline import Pipeline
from inspectkit.records import ImageSet
from inspectkit.stages import Classifier, Wrangle
from inspectkit.xai import (
    SISE,
    GradCAM,
    deletion_auc,
    energy_pointing_game,
    insertion_auc,
    mask_l1,
)
from inspectkit.xai.metrics import boxes_to_mask

ROOT = Path(__file__).resolve().parents[1]
PEER_PY = ROOT / "bench-venvs" / "grad-cam" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "gradcam_peer.py"

log = logging.getLogger("bench_xai")


def data_root() -> Path:
    env = os.environ.get("INSPECTKIT_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def stratified_split(data: ImageSet, test_size: float, seed: int) -> tuple[ImageSet, ImageSet]:
    idx = np.arange(len(data))
    tr, te = train_test_split(idx, test_size=test_size, stratify=data.labels, random_state=seed)
    return data.subset(sorted(tr.tolist())), data.subset(sorted(te.tolist()))


def per_class_limit(data: ImageSet, n: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in data.classes:
        members = [i for i, s in enumerate(data.samples) if s.label == c]
        keep += sorted(rng.permutation(members)[:n].tolist())
    return data.subset(sorted(keep))


def classifier_config(args: argparse.Namespace, dataset: str, seed: int) -> dict[str, Any]:
    """The classifier recipe of one data set (plain values: it keys the model cache)."""
    cfg: dict[str, Any] = {
        "arch": args.arch,
        "epochs": args.epochs,
        "batch_size": 32,
        "val_fraction": 0.1,
        "patience": args.patience,
        "time_budget": args.train_budget,
        "imbalance": args.mt_imbalance if dataset == "magnetic_tile" else "weighted_loss",
        "seed": seed,
        "progress": False,
    }
    if dataset == "magnetic_tile":
        cfg["max_params"] = args.mt_max_params
        cfg["epochs"] = args.mt_epochs or args.epochs
    return cfg


def train(
    train_set: ImageSet, args: argparse.Namespace, dataset: str, seed: int
) -> tuple[Classifier, dict[str, Any]]:
    """Fit the data set's classifier, or load it from ``--model-cache``.

    The cache entry is a saved one-stage :class:`Pipeline` in a folder named after a hash
    of the recipe, the data set, the input size and the training samples, so a change to
    any of them trains afresh. ``train.json`` beside it keeps the training time.
    """
    cfg = classifier_config(args, dataset, seed)
    key_src = json.dumps(
        {
            "dataset": dataset,
            # validated and dumped, so 900 and 900.0 give one key
            "config": Classifier.Config(**cfg).model_dump(mode="json"),
            "size": list(train_set.size or ()),
            "samples": [s.id for s in train_set.samples],
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    folder = Path(args.model_cache) / f"{dataset}-{key}" if args.model_cache else None
    if folder is not None and (folder / "train.json").is_file():
        clf = Pipeline.load(folder).stages[0]
        assert isinstance(clf, Classifier)
        info = json.loads((folder / "train.json").read_text())
        return clf, {**info, "model_cache": f"hit: {folder}"}
    clf = Classifier(**cfg)
    t0 = time.perf_counter()
    clf.fit(train_set)
    info = {
        "config": cfg,
        "train_seconds": time.perf_counter() - t0,
        "epochs_run": len(clf.history),
        "best_epoch": clf.train_result.best_epoch if clf.train_result else None,
        "val_macro_f1": [round(h.get("val", float("nan")), 4) for h in clf.history],
        "torch_threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if folder is not None:
        Pipeline([clf]).save(folder)
        (folder / "train.json").write_text(json.dumps(info, indent=2))
        info = {**info, "model_cache": f"saved: {folder}"}
    return clf, info


def test_scores(clf: Classifier, test: ImageSet) -> tuple[Any, dict[str, float]]:
    """Predictions on the test split, with accuracy and macro-F1."""
    preds = clf.run(test)
    y = [s.label for s in preds.samples]
    return preds, {
        "test_accuracy": float(accuracy_score(y, preds.predicted)),
        "test_macro_f1": float(f1_score(y, preds.predicted, average="macro", zero_division=0)),
    }


def timed(fn: Any, *a: Any, **k: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t0


def timed_cpu(fn: Any, *a: Any, **k: Any) -> tuple[Any, float, float]:
    """Result, wall seconds and CPU seconds of this process."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t0, time.process_time() - c0


def summary(values: torch.Tensor) -> dict[str, float]:
    v = values.double()
    return {
        "mean": float(v.mean()),
        "median": float(v.median()),
        "std": float(v.std()) if len(v) > 1 else 0.0,
    }


def localisation(
    clf: Classifier,
    x: torch.Tensor,
    gt: torch.Tensor,
    targets: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """EBPG and mask L1 of Grad-CAM and SISE, plus their time per image."""
    model = clf.model
    assert model is not None
    out: dict[str, Any] = {"images": len(x)}
    gc = GradCAM(model, batch_size=args.batch_size)
    gc.attribute(x[:2], target=targets[:2])  # warm-up
    maps_gc, t_gc, c_gc = timed_cpu(gc.attribute, x, target=targets)
    si = SISE(model, batch_size=args.batch_size, max_masks=args.max_masks)
    maps_si, t_si, c_si = timed_cpu(si.attribute, x, target=targets)
    for name, maps, t, c in (("gradcam", maps_gc, t_gc, c_gc), ("sise", maps_si, t_si, c_si)):
        out[name] = {
            "ebpg": summary(energy_pointing_game(maps, gt)),
            "mask_l1": summary(mask_l1(maps, gt)),
            "seconds_per_image": t / len(x),
            "cpu_seconds_per_image": c / len(x),
        }
    out["sise_beats_gradcam"] = {
        "ebpg": out["sise"]["ebpg"]["mean"] > out["gradcam"]["ebpg"]["mean"],
        "mask_l1": out["sise"]["mask_l1"]["mean"] < out["gradcam"]["mask_l1"]["mean"],
    }
    out["_maps"] = (maps_gc, maps_si)
    return out


def causal(
    clf: Classifier, x: torch.Tensor, maps: dict[str, torch.Tensor], args: argparse.Namespace
) -> dict[str, Any]:
    model = clf.model
    assert model is not None
    res: dict[str, Any] = {"images": len(x), "steps": args.steps}
    for name, m in maps.items():
        d = deletion_auc(model, x, m, steps=args.steps, batch_size=args.batch_size)
        i = insertion_auc(model, x, m, steps=args.steps, batch_size=args.batch_size)
        res[name] = {"deletion_auc": float(d.mean()), "insertion_auc": float(i.mean())}
    return res


def peer(
    clf: Classifier, x: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """pytorch-grad-cam on the same weights/layer/inputs/targets, in its own virtualenv."""
    model = clf.model
    assert model is not None
    if not PEER_PY.exists():
        return {"skipped": f"{PEER_PY} missing; run benchmarks/peers/gradcam.sh"}
    layer = model.last_conv_name
    # ours, timed like the peer (one warm-up batch, then every batch), before and after it;
    # the shared machine's load drifts, so the faster of the two runs counts
    gc = GradCAM(model, layer=layer, batch_size=args.batch_size)
    gc.attribute(x[: args.batch_size], target=targets[: args.batch_size])
    _, t_before, c_before = timed_cpu(gc.attribute, x, target=targets)
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        spec = {
            "layer": layer,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
        }
        (wd / "spec.json").write_text(json.dumps(spec))
        torch.save(model, wd / "model.pt")  # the whole module: the peer rebuilds nothing
        torch.save(x.contiguous(), wd / "inputs.pt")
        torch.save(targets.clone(), wd / "targets.pt")
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        proc = subprocess.run(
            [str(PEER_PY), str(PEER_SCRIPT), "--workdir", str(wd)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        theirs = torch.load(wd / "peer_heatmaps.pt", weights_only=True)
    ours, t_after, c_after = timed_cpu(gc.attribute, x, target=targets)
    t_ours, c_ours = min(t_before, t_after), min(c_before, c_after)
    a, b = ours.flatten(1).double(), theirs.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    valid = denom > 0
    corr = (a * b).sum(1)[valid] / denom[valid]
    return {
        "peer": info,
        "layer": layer,
        "images": len(x),
        "pearson": {
            **summary(corr),
            "min": float(corr.min()),
            "flat_maps_skipped": int((~valid).sum()),
        },
        "max_abs_diff": float((ours - theirs).abs().max()),
        "inspectkit_seconds_per_image": t_ours / len(x),
        "inspectkit_cpu_seconds_per_image": c_ours / len(x),
        "peer_seconds_per_image": info["seconds_per_image"],
        "peer_cpu_seconds_per_image": info["cpu_seconds_per_image"],
        "time_ratio": (t_ours / len(x)) / info["seconds_per_image"],
        "cpu_time_ratio": (c_ours / len(x)) / info["cpu_seconds_per_image"],
    }


def bench_neu(args: argparse.Namespace) -> dict[str, Any]:
    from inspectkit.sources.voc import load_voc

    root = data_root() / "neu_det"
    data = load_voc(root / "IMAGES", root / "ANNOTATIONS", channels=1)
    if args.quick:
        data = per_class_limit(data, 12, args.seed)
    if args.neu_size:
        data = Wrangle(size=(args.neu_size, args.neu_size)).run(data)  # boxes rescaled too
    train_set, test = stratified_split(data, 0.2, args.seed)
    clf, train_info = train(train_set, args, "neu_det", args.seed)
    preds, scores = test_scores(clf, test)
    x = clf.preprocess(test.images)
    y = test.targets()
    pred = preds.predicted_indices()
    gt = torch.stack([boxes_to_mask(b, clf.input_size) for b in test.boxes])  # type: ignore[union-attr]
    res: dict[str, Any] = {
        "train": len(train_set),
        "test": len(test),
        "arch": clf.config.arch,
        "input_size": list(clf.input_size),
        "training": train_info,
        **scores,
    }
    n = len(test) if args.sise_images <= 0 else min(args.sise_images, len(test))
    sel = (
        torch.arange(len(test))[:n]
        if n == len(test)
        else torch.linspace(0, len(test) - 1, n).long()
    )
    loc = localisation(clf, x[sel], gt[sel], y[sel], args)
    loc.pop("_maps")
    res["localisation_vs_boxes"] = loc
    m = min(args.causal_images, len(sel))
    csel = torch.linspace(0, len(sel) - 1, m).long()
    # deletion/insertion explain the predicted class: heatmaps for it on the same images
    xs = x[sel][csel]
    ps = pred[sel][csel]
    model = clf.model
    assert model is not None
    maps_pred = {
        "gradcam": GradCAM(model, batch_size=args.batch_size).attribute(xs, target=ps),
        "sise": SISE(model, batch_size=args.batch_size, max_masks=args.max_masks).attribute(
            xs, target=ps
        ),
    }
    res["deletion_insertion"] = causal(clf, xs, maps_pred, args)
    res["peer_gradcam"] = peer(clf, x, pred, args)
    return res


def bench_magnetic_tile(args: argparse.Namespace) -> dict[str, Any]:
    from inspectkit.sources.folders import load_magnetic_tile

    data = load_magnetic_tile(
        data_root() / "magnetic_tile", limit_per_class=10 if args.quick else None
    )
    data = Wrangle(size=(args.mt_size, args.mt_size)).run(data)
    train_set, test = stratified_split(data, 0.2, args.seed)
    clf, train_info = train(train_set, args, "magnetic_tile", args.seed)
    _, scores = test_scores(clf, test)
    assert isinstance(test.masks, torch.Tensor)
    has_defect = test.masks.flatten(1).any(1) & torch.tensor(
        [s.label != "Free" for s in test.samples]
    )
    idx = has_defect.nonzero().flatten()
    x = clf.preprocess(test.images[idx])
    gt = test.masks[idx, 0] > 0
    y = test.targets()[idx]
    loc = localisation(clf, x, gt, y, args)
    loc.pop("_maps")
    return {
        "train": len(train_set),
        "test": len(test),
        "arch": clf.config.arch,
        "input_size": list(clf.input_size),
        "training": train_info,
        **scores,
        "defective_test_images_scored": len(idx),
        "localisation_vs_masks": loc,
    }


def sise_cost(args: argparse.Namespace) -> dict[str, Any]:
    """SISE cost per 200×200 image with default settings, one image at a time.

    Wall time on a shared machine depends on what else runs, so the CPU time of the
    process with ONE torch thread is reported too: on 2 idle cores the wall time is at
    most that, and about half of it when both threads keep busy. Random weights: the
    number of masked passes (4 blocks × ``max_masks``) does not depend on training.
    """
    from inspectkit.models import build_classifier

    out: dict[str, Any] = {}
    before = torch.get_num_threads()
    for arch in ("compact", "resnet18"):
        torch.manual_seed(0)
        net = build_classifier(arch, 1, 6, input_size=(200, 200)).eval()
        x = torch.randn(3 if args.quick else args.cost_images, 1, 200, 200)
        row: dict[str, Any] = {"images": len(x)}
        for threads in sorted({1, before}):
            torch.set_num_threads(threads)
            SISE(net).attribute(x[:1])
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(len(x)):
                SISE(net).attribute(x[i : i + 1])
            row[f"threads_{threads}"] = {
                "wall_seconds_per_image": (time.perf_counter() - t0) / len(x),
                "cpu_seconds_per_image": (time.process_time() - c0) / len(x),
                "loadavg_1min_after": os.getloadavg()[0],
            }
        out[f"{arch} (random init)"] = row
    torch.set_num_threads(before)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a few images per class, 1 epoch")
    ap.add_argument("--arch", default="compact", help="Classifier arch (the classifier's default)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early-stopping patience (default: none, so the one-cycle schedule completes; "
        "the best validation epoch is kept either way)",
    )
    ap.add_argument(
        "--train-budget",
        type=float,
        default=900.0,
        help="seconds per classifier (a safety net; the schedule is re-fitted to it)",
    )
    ap.add_argument(
        "--mt-imbalance",
        default="weighted_loss",
        choices=["none", "weighted_loss", "balanced_sampler", "both"],
        help="Classifier imbalance handling for magnetic tile (952 of 1,344 images are Free)",
    )
    ap.add_argument("--mt-epochs", type=int, default=80, help="epochs for magnetic tile")
    ap.add_argument(
        "--mt-max-params",
        type=int,
        default=250_000,
        help="compact network size for magnetic tile (100k, the default, underfits its 6 classes)",
    )
    ap.add_argument(
        "--model-cache",
        default=None,
        help="folder for trained classifiers (saved pipelines); re-runs with the same recipe "
        "and data load them instead of training",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-masks", type=int, default=16, help="SISE max_masks (library default 16)")
    ap.add_argument("--sise-images", type=int, default=0, help="0 = the whole NEU test split")
    ap.add_argument("--causal-images", type=int, default=60)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--neu-size", type=int, default=0, help="NEU input size; 0 = native 200")
    ap.add_argument("--mt-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cost-images", type=int, default=8, help="images per SISE cost row")
    ap.add_argument("--only", choices=["neu", "magnetic_tile", "cost"], default=None)
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.mt_epochs, args.train_budget, args.patience = 1, 1, 60.0, None
        args.sise_images, args.causal_images, args.steps = 12, 4, 5
    os.environ.setdefault("INSPECTKIT_PROGRESS", "0")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "xai",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "loadavg_start": os.getloadavg(),
        },
        "settings": {k: v for k, v in vars(args).items()},
    }
    if args.only in (None, "cost"):
        result["sise_cost_200px"] = sise_cost(args)
    if args.only in (None, "neu"):
        result["neu_det"] = bench_neu(args)
    if args.only in (None, "magnetic_tile"):
        result["magnetic_tile"] = bench_magnetic_tile(args)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
