"""Semiconductor wafer test (EDS): classify WM-811K wafer-map failure patterns.

The line: wafer maps of varying size → ``Wrangle`` (nearest-neighbour resize that keeps
the 0/1/2 die codes) → ``Generate`` trains a small VAE per rare defect class and tops
the class up with new maps (fit time only, flagged synthetic so no metric counts them)
→ a compact CNN ``Classifier`` → ``GradCAM`` heatmaps for every prediction.

Data fusion and a group-aware split: each map's die grid (rows × columns) identifies the
product it was made for. The example joins that product key onto the samples with
``attach_metadata`` (with an original ``LSWMD.pkl`` the lot name is already the group),
and ``Wrangle(split=..., group_by="group")`` holds out whole products, so the hold-out
accuracy says how the model does on a product it never saw — no product straddles
train and hold-out.

Run::

    python examples/semiconductor_wafer_line.py --quick     # ~15 s of CPU
    python examples/semiconductor_wafer_line.py             # the full training split

Data: ``$INSPECTKIT_DATA/wm811k`` or ``../shared/data/wm811k`` (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import inspectkit as ik
from inspectkit.metrics import classification_report
from inspectkit.report import write_html
from inspectkit.sources import attach_metadata, load_wafer_maps
from inspectkit.stages import Classifier, Generate, Wrangle
from inspectkit.stages.wrangle import split_of
from inspectkit.xai import GradCAM


def data_root() -> Path:
    """``INSPECTKIT_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("INSPECTKIT_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "wm811k").is_dir():
        sys.exit(f"WM-811K not found under {root}; set INSPECTKIT_DATA to the data folder")
    return root / "wm811k"


def per_class_cap(data: ik.ImageSet, cap: int, seed: int = 0) -> ik.ImageSet:
    """At most ``cap`` samples per class (a seeded random choice), for quick runs."""
    import random

    rng = random.Random(seed)
    by_class: dict[str | None, list[int]] = {}
    for i, s in enumerate(data.samples):
        by_class.setdefault(s.label, []).append(i)
    keep = [i for idx in by_class.values() for i in rng.sample(idx, min(cap, len(idx)))]
    return data.subset(sorted(keep))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small subset, a few epochs")
    ap.add_argument("--out", default="examples-out/wafer-line", help="model + report folder")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--vae-steps", type=int, default=None, help="VAE steps per rare class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    root = data_root()
    quick = args.quick

    # 1. load: ragged maps of varying size, labels from the file
    train = load_wafer_maps(
        root / ("WM811K_train_1_split.npz" if quick else "WM811K_train_29_split.npz")
    )
    test = load_wafer_maps(root / "WM811K_test_data.npz", unlabelled="skip")
    if quick:
        train = per_class_cap(train, 60, args.seed)
        test = per_class_cap(test, 25, args.seed)
    print(f"train {len(train)} maps, test {len(test)} maps, {len(train.classes)} classes")

    # 2. data fusion: the product (die grid) of each map becomes its group
    table = {
        "id": train.ids,
        "product": [f"{s.meta['height']}x{s.meta['width']}" for s in train.samples],
    }
    train = attach_metadata(train, table, key="id", group="product")
    print(f"{len({s.group for s in train.samples})} products (die grids) in the training file")

    # 3. group-aware split: whole products go to the hold-out set
    train = Wrangle(split=(0.8, 0.2, 0.0), group_by="group", seed=args.seed).run(train)
    fit_part, holdout = split_of(train, "train"), split_of(train, "val")
    assert not {s.group for s in fit_part.samples} & {s.group for s in holdout.samples}
    print(f"fit on {len(fit_part)} maps, hold out {len(holdout)} maps of unseen products")

    # 4. the line's pipeline, assembled from the public API
    counts = fit_part.class_counts()
    largest = max(counts.values())
    rare = [c for c, n in counts.items() if 0 < n < largest // 4]
    epochs = args.epochs or (8 if quick else 30)
    stages = [Wrangle(size=32 if quick else 64)]
    if rare:  # a small VAE per rare class draws new maps (fit time only, flagged synthetic)
        stages.append(
            Generate(
                method="vae",
                per_class=largest // 4,
                classes=rare,
                steps=args.vae_steps or (60 if quick else 500),
                seed=args.seed,
                progress=not quick,
            )
        )
    stages += [
        Classifier(
            arch="compact",
            epochs=epochs,
            seed=args.seed,
            max_params=30_000 if quick else 100_000,
            batch_size=16 if quick else 64,
            val_fraction=0.0 if quick else 0.1,
            progress=not quick,
        ),
        GradCAM(progress=False),
    ]
    pipe = ik.Pipeline(stages)
    print(f"rare classes topped up by a VAE: {rare or 'none'}; {epochs} epochs")
    pipe.fit(fit_part)

    # 5. evaluate: unseen products, then the official test file
    out = Path(args.out)
    hold_report = classification_report(pipe.run(holdout), title="hold-out: unseen products")
    explained = pipe.run(test)
    report = classification_report(explained, title="WM-811K wafer line: compact CNN + Grad-CAM")
    report.details["holdout_unseen_products"] = hold_report.metrics
    report.details["train_class_counts"] = dict(Counter(s.label for s in fit_part.samples))
    pipe.save(out / "model")
    report.save(out / "report.json")
    html = write_html(report, out, predictions=explained, explained=explained)

    m, h = report.metrics, hold_report.metrics
    print(f"hold-out (unseen products): accuracy {h['accuracy']:.3f}  macro-F1 {h['macro_f1']:.3f}")
    print(f"test: accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}")
    for cls, fig in report.per_class.items():
        print(f"  {cls:<10} precision {fig['precision']:.2f}  recall {fig['recall']:.2f}")
    print(
        json.dumps(
            {
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    print(f"report: {html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
