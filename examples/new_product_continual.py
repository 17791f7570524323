"""A deployed wafer classifier learns new defect types and new products without forgetting.

The line ships a classifier that knows a few WM-811K failure patterns. Later, new
patterns show up (a new process step, a new tool) and the model must learn them from a
handful of fresh examples while still recognising everything it knew
(``--stream class``, the default). Or the fab starts new products — wafers with more,
smaller dies — and every known pattern comes back at a new die size (``--stream
domain``: experiences by die count, small → medium → large). The example replays a
small memory of past samples (SNNL-chosen by default; on the product stream its class
quotas follow the line's class mix, ``quotas="proportional"``) while training on each
new experience, and compares with plain fine-tuning (``--buffer none``). It prints the
accuracy matrix ``R[t, i]`` (accuracy on experience ``i``'s test set after learning
experience ``t``), the final average accuracy, forgetting and backward transfer, saves
the updated model after every experience (atomically: a failed update keeps the
previous model) and writes an HTML report.

Run::

    python examples/new_product_continual.py --quick                  # ~15 s of CPU
    python examples/new_product_continual.py --quick --stream domain  # new products
    python examples/new_product_continual.py --buffer none            # the forgetting baseline

Data: ``$INSPECTKIT_DATA/wm811k`` or ``../shared/data/wm811k``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

import inspectkit as ik
from inspectkit.continual import (
    ContinualClassifier,
    accuracy_matrix,
    class_incremental_stream,
    continual_summary,
    domain_incremental_stream,
    size_bucket,
    update_pipeline,
)
from inspectkit.metrics import classification_report
from inspectkit.report import write_html
from inspectkit.sources import load_wafer_maps
from inspectkit.stages import Wrangle

#: Defect types in the order the line meets them.
CLASS_ORDER = [
    ["none", "Center", "Edge-Ring"],
    ["Edge-Loc", "Loc"],
    ["Scratch", "Random"],
    ["Donut", "Near-full"],
]

#: Products in the order the fab starts them: wafer maps by die count ``H×W``.
PRODUCTS = ["small", "medium", "large"]
DIE_COUNT_EDGES = [676, 1353]


def data_root() -> Path:
    """``INSPECTKIT_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("INSPECTKIT_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "wm811k").is_dir():
        sys.exit(f"WM-811K not found under {root}; set INSPECTKIT_DATA to the data folder")
    return root / "wm811k"


def per_class_cap(data: ik.ImageSet, cap: int, seed: int = 0) -> ik.ImageSet:
    rng = random.Random(seed)
    by_class: dict[str | None, list[int]] = {}
    for i, s in enumerate(data.samples):
        by_class.setdefault(s.label, []).append(i)
    return data.subset(
        sorted(i for idx in by_class.values() for i in rng.sample(idx, min(cap, len(idx))))
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small subset, few epochs")
    ap.add_argument("--out", default="examples-out/continual", help="model + report folder")
    ap.add_argument(
        "--buffer",
        default="snnl",
        choices=["snnl", "reservoir", "class_balanced", "herding", "none"],
    )
    ap.add_argument(
        "--stream",
        default="class",
        choices=["class", "domain"],
        help="new defect types (class) or new products, i.e. die sizes (domain)",
    )
    ap.add_argument("--capacity", type=int, default=None, help="replay memory size (samples)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    quick = args.quick
    root = data_root()
    # an old experience's test set holds none of the newer classes the model may predict
    warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")

    train = load_wafer_maps(
        root / ("WM811K_train_10_split.npz" if quick else "WM811K_train_29_split.npz")
    )
    test = load_wafer_maps(root / "WM811K_test_data.npz", unlabelled="skip")
    if quick:
        test = per_class_cap(test, 20, args.seed)
    if args.stream == "class":
        stream = class_incremental_stream(
            train, test, CLASS_ORDER, max_train_per_class=60 if quick else 600, seed=args.seed
        )
    else:  # per class and product
        stream = domain_incremental_stream(
            train,
            test,
            size_bucket(DIE_COUNT_EDGES),
            order=PRODUCTS,
            max_train_per_class=40 if quick else 300,
            seed=args.seed,
        )
    for exp in stream:
        print(f"{exp.name}: {len(exp.train)} train, {len(exp.test)} test maps")

    # the stage's defaults (30 epochs per experience, one-cycle schedule, augmentation,
    # class weights); --quick trains a smaller network for fewer epochs
    small = {"epochs": 8, "batch_size": 16, "max_params": 30_000} if quick else {}
    clf = ContinualClassifier(
        buffer=args.buffer,
        capacity=args.capacity or (60 if quick else 500),
        seed=args.seed,
        progress=not quick,
        # every class returns with each product: keep the line's class mix in memory
        quotas="proportional" if args.stream == "domain" else "balanced",
        **small,
    )
    pipe = ik.Pipeline([Wrangle(size=32 if quick else 64), clf])
    out = Path(args.out)
    rows: list[list[float]] = []
    for t, exp in enumerate(stream):
        if t == 0:
            pipe.fit(exp.train)
        else:
            update_pipeline(pipe, exp.train)
        pipe.save(out / "model")  # the line always has the latest good model on disk
        rows.append(
            [
                classification_report(pipe.run(past.test)).metrics["accuracy"]
                for past in stream[: t + 1]
            ]
        )
        print(f"after {exp.name}: " + "  ".join(f"{a:.2f}" for a in rows[-1]))

    R = accuracy_matrix(rows)
    summary = continual_summary(R)
    names = [e.name for e in stream]
    print("accuracy matrix R[t, i] (row: after experience t, column: test set of experience i)")
    for name, row in zip(names, R):
        print(f"  {name:<32}" + "".join("     - " if math.isnan(a) else f"  {a:.2f}" for a in row))
    print(
        f"final average accuracy {summary['final_avg_accuracy']:.3f}  forgetting "
        f"{summary['forgetting']:.3f}  backward transfer {summary['bwt']:.3f}"
    )

    everything = ik.ImageSet.concat([e.test for e in stream])
    final = pipe.run(everything)
    what = "new defect types" if args.stream == "class" else "new products"
    report = classification_report(
        final, title=f"Continual wafer line, {what}: {args.buffer} replay"
    )
    report.metrics.update(summary)
    report.details["accuracy_matrix"] = {
        "matrix": [[None if math.isnan(a) else round(float(a), 4) for a in row] for row in R],
        "rows": [f"after {n}" for n in names],
        "columns": names,
    }
    report.save(out / "report.json")
    html = write_html(report, out, predictions=final)
    print(json.dumps({**summary, "seconds": round(time.perf_counter() - t0, 1)}))
    print(f"report: {html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
