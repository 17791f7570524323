"""Benchmark: augmentation and learned generation for rare WM-811K classes.

Prints one JSON object with:

* ``augment_throughput``: wafer-aware augmentation of 64×64 maps (maps/s), the bare op
  and the whole ``Augment(per_class=2000).fit_run`` (metadata and validation included);
* ``generator_speed``: one class (Center), 2,000 maps at 64×64 with ``Generate(method="vae")``,
  generator training included — wall time and peak RSS of a fresh child process;
* ``quality``: the same classifier (``Classifier(arch="compact")``, fixed epochs) trained
  three ways — real only, real + ``Augment(per_class=2000)``, real +
  ``Generate(method="vae", per_class=2000)`` — scored on ``WM811K_test_data.npz``
  (macro-F1, accuracy, per-class recall);
* ``fidelity``: the real-only classifier's agreement with the intended class of the
  generated (and, for reference, the augmented) samples, per class;
* ``novelty``: share of generated maps that are exact or near copies (Hamming distance
  below 1 % of the dies) of a training map of their class.

Usage::

    flock /tmp/inspectkit-bench.lock python benchmarks/bench_generate.py > benchmarks/results/generate.json
    python benchmarks/bench_generate.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def data_dir(arg: str | None) -> Path:
    for cand in (arg, os.environ.get("INSPECTKIT_DATA"), str(REPO.parent / "shared" / "data")):
        if cand and (Path(cand) / "wm811k").is_dir():
            return Path(cand) / "wm811k"
    sys.exit("wm811k data not found: pass --data or set INSPECTKIT_DATA")


def load(path: Path, limit: int | None = None):
    from inspectkit.sources import load_wafer_maps
    from inspectkit.stages import Wrangle

    return Wrangle(size=64).run(load_wafer_maps(path, limit=limit, unlabelled="skip"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM, which a fresh exec resets)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------- child: one class
def child_speed(args: argparse.Namespace) -> None:
    """One class, 2,000 generated maps, training included; prints JSON."""
    from inspectkit.stages import Generate

    base_rss = peak_rss_mb()
    train = load(data_dir(args.data) / args.train_file)
    cls = args.speed_class
    n_real = train.class_counts()[cls]
    t0 = time.perf_counter()
    gen = Generate(
        method="vae",
        classes=[cls],
        per_class=n_real + args.n_generate,
        seed=0,
        progress=False,
        **({"steps": args.steps} if args.steps else {}),
    )
    out = gen.fit_run(train)
    wall = time.perf_counter() - t0
    synth = out.select(lambda s: s.synthetic)
    print(
        json.dumps(
            {
                "class": cls,
                "real_samples": n_real,
                "generated": len(synth),
                "seconds_total": round(wall, 2),
                "seconds_training": round(gen.timings.get(cls, float("nan")), 2),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "rss_before_mb": round(base_rss, 1),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


def run_child(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--train-file", args.train_file]
    cmd += ["--speed-class", args.speed_class, "--n-generate", str(args.n_generate)]
    if args.data:
        cmd += ["--data", args.data]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- measurements
def augment_throughput(train, quick: bool) -> dict:
    from inspectkit.augment_ops import AugmentRanges, augment_batch
    from inspectkit.stages import Augment

    x = train.image_tensor()
    n = 4096 if quick else 20000
    reps = -(-n // len(x))
    maps = x.repeat(reps, 1, 1, 1)[:n].contiguous()
    gen = torch.Generator().manual_seed(0)
    augment_batch(maps[:512], wafer=True, ranges=AugmentRanges(), generator=gen)  # warm-up
    t0 = time.perf_counter()
    out, _, _ = augment_batch(maps, wafer=True, ranges=AugmentRanges(), generator=gen)
    op_s = time.perf_counter() - t0
    assert out.dtype == torch.uint8 and int(out.max()) <= 2
    per_class = 200 if quick else 2000
    t0 = time.perf_counter()
    aug = Augment(per_class=per_class, seed=0).fit_run(train)
    stage_s = time.perf_counter() - t0
    added = sum(s.synthetic for s in aug.samples)
    return {
        "maps": n,
        "op_maps_per_s": round(n / op_s),
        "stage_per_class": per_class,
        "stage_added": added,
        "stage_seconds": round(stage_s, 2),
        "stage_maps_per_s": round(added / stage_s),
        "target_maps_per_s": 5000,
    }


def train_and_score(name: str, data, test, args) -> tuple[dict, object]:
    from inspectkit.metrics import classification_report
    from inspectkit.stages import Classifier

    clf = Classifier(
        arch="compact",
        epochs=args.epochs,
        seed=0,
        progress=False,
        patience=None,
    )
    t0 = time.perf_counter()
    clf.fit(data)
    fit_s = time.perf_counter() - t0
    rep = classification_report(clf.run(test))
    return (
        {
            "train_samples": len(data),
            "synthetic_samples": sum(s.synthetic for s in data.samples),
            "fit_seconds": round(fit_s, 1),
            "macro_f1": round(rep.metrics["macro_f1"], 4),
            "accuracy": round(rep.metrics["accuracy"], 4),
            "recall": {c: round(v["recall"], 4) for c, v in rep.per_class.items()},
            "f1": {c: round(v["f1"], 4) for c, v in rep.per_class.items()},
        },
        clf,
    )


def agreement(clf, synth) -> dict:
    """Per class: share of synthetic samples the real-only classifier labels as intended."""
    if len(synth) == 0:
        return {}
    pred = clf.run(synth)
    out: dict[str, list[int]] = {}
    for s, p in zip(pred.samples, pred.predicted):
        hit = out.setdefault(s.label, [0, 0])
        hit[0] += int(p == s.label)
        hit[1] += 1
    return {c: round(h / n, 4) for c, (h, n) in sorted(out.items())}


def novelty(train, synth, threshold: float = 0.01) -> dict:
    """Per class: share of synthetic maps within ``threshold`` Hamming distance of a training map."""
    result = {}
    real_x = train.image_tensor()
    syn_x = synth.image_tensor()
    for c in synth.classes:
        si = [i for i, s in enumerate(synth.samples) if s.label == c]
        ri = [i for i, s in enumerate(train.samples) if s.label == c and not s.synthetic]
        if not si or not ri:
            continue
        g = syn_x[si].flatten(1).long()
        r = real_x[ri].flatten(1).long()
        same = torch.zeros(len(si), len(ri))
        for code in (0, 1, 2):
            same += (g == code).float() @ (r == code).float().T
        gi = (g > 0).float()
        rin = (r > 0).float()
        dies = gi.sum(1, keepdim=True) + rin.sum(1)[None] - gi @ rin.T
        diff = g.shape[1] - same
        frac = (diff / dies.clamp(min=1)).min(1).values
        result[c] = {
            "generated": len(si),
            "near_copy_fraction": round(float((frac < threshold).float().mean()), 4),
            "exact_copy_fraction": round(float((frac == 0).float().mean()), 4),
            "median_min_distance": round(float(frac.median()), 4),
        }
    total = sum(v["generated"] for v in result.values())
    near = sum(v["near_copy_fraction"] * v["generated"] for v in result.values())
    return {"per_class": result, "overall_near_copy_fraction": round(near / max(total, 1), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--data", default=None, help="folder holding wm811k/ (default INSPECTKIT_DATA)")
    ap.add_argument("--train-file", default="WM811K_train_10_split.npz")
    ap.add_argument(
        "--epochs", type=int, default=None, help="classifier epochs (default 5; quick 2)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="VAE steps per class (default: stage's)"
    )
    ap.add_argument("--per-class", type=int, default=None, help="default 2000 (quick 200)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--speed-class", default="Center")
    ap.add_argument("--n-generate", type=int, default=2000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("INSPECTKIT_PROGRESS", "0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child_speed(args)
        return

    from inspectkit.stages import Augment, Generate

    quick = args.quick
    args.epochs = args.epochs or (2 if quick else 5)
    per_class = args.per_class or (200 if quick else 2000)
    if quick:
        args.train_file = "WM811K_train_1_split.npz"
        args.steps = args.steps or 60
        args.n_generate = 200
    wm = data_dir(args.data)
    started = time.perf_counter()
    train = load(wm / args.train_file)
    test = load(wm / "WM811K_test_data.npz", limit=2000 if quick else None)

    result: dict = {
        "benchmark": "generate",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_at_start": list(os.getloadavg()),
        },
        "train_file": args.train_file,
        "train_counts": train.class_counts(),
        "test_samples": len(test),
        "classifier": {"arch": "compact", "epochs": args.epochs, "patience": None},
        "per_class": per_class,
    }
    result["augment_throughput"] = augment_throughput(train, quick)
    result["generator_speed"] = run_child(args)
    result["generator_speed"]["target_seconds"] = 60
    result["generator_speed"]["target_peak_rss_mb"] = 1536

    gen_kwargs = {"steps": args.steps} if args.steps else {}
    t0 = time.perf_counter()
    augmented = Augment(per_class=per_class, seed=0).fit_run(train)
    aug_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    generator = Generate(method="vae", per_class=per_class, seed=0, progress=False, **gen_kwargs)
    generated = generator.fit_run(train)
    gen_s = time.perf_counter() - t0

    quality = {}
    quality["real_only"], real_clf = train_and_score("real_only", train, test, args)
    quality["real_plus_augment"], _ = train_and_score("augment", augmented, test, args)
    quality["real_plus_generate"], _ = train_and_score("generate", generated, test, args)
    base = quality["real_only"]["macro_f1"]
    result["quality"] = quality
    result["macro_f1_lift"] = {
        "augment_vs_real": round(quality["real_plus_augment"]["macro_f1"] - base, 4),
        "generate_vs_real": round(quality["real_plus_generate"]["macro_f1"] - base, 4),
        "generate_vs_augment": round(
            quality["real_plus_generate"]["macro_f1"] - quality["real_plus_augment"]["macro_f1"], 4
        ),
        "target_generate_vs_real": 0.03,
    }
    synth_gen = generated.select(lambda s: s.synthetic)
    synth_aug = augmented.select(lambda s: s.synthetic)
    result["fidelity"] = {
        "generated": agreement(real_clf, synth_gen),
        "augmented_reference": agreement(real_clf, synth_aug),
    }
    result["novelty"] = novelty(train, synth_gen)
    result["novelty"]["target_near_copy_fraction"] = 0.05
    result["generation"] = {
        "augment_seconds": round(aug_s, 1),
        "generate_seconds": round(gen_s, 1),
        "vae_training_seconds_per_class": {c: round(t, 1) for c, t in generator.timings.items()},
        "methods": {c: e["method"] for c, e in generator.generators.items()},
    }
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
