"""Steel strip (hot-rolled): classify NEU surface defects and check where the model looks.

The line: NEU-DET images with Pascal-VOC defect boxes → ``Wrangle`` (gray, one size; the
boxes are rescaled with the images; a stratified train/test split) → a compact CNN
``Classifier`` → ``GradCAM`` and ``SISE`` heatmaps, each scored against the annotated
boxes with the energy-based pointing game (EBPG: the share of heatmap energy inside the
boxes, 1 = all of it) and mask L1.

Run::

    python examples/steel_strip_line.py --quick     # ~15 s of CPU
    python examples/steel_strip_line.py             # all 1,770 images

Data: ``$INSPECTKIT_DATA/neu_det`` or ``../shared/data/neu_det`` (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import inspectkit as ik
from inspectkit.metrics import classification_report
from inspectkit.report import write_html
from inspectkit.sources import load_voc
from inspectkit.stages import Classifier, Wrangle
from inspectkit.stages.wrangle import split_of
from inspectkit.xai import SISE, GradCAM, explanation_report


def data_root() -> Path:
    """``INSPECTKIT_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("INSPECTKIT_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "neu_det").is_dir():
        sys.exit(f"NEU-DET not found under {root}; set INSPECTKIT_DATA to the data folder")
    return root / "neu_det"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small subset, a few epochs")
    ap.add_argument("--out", default="examples-out/steel-line", help="model + report folder")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    root = data_root()
    quick = args.quick

    # 1. load lazily (headers + XML only), pick a subset, decode just that
    steel = load_voc(root / "IMAGES", root / "ANNOTATIONS", lazy=True, channels=1)
    if quick:
        rng = random.Random(args.seed)
        by_class: dict[str | None, list[int]] = {}
        for i, s in enumerate(steel.samples):
            by_class.setdefault(s.label, []).append(i)
        steel = steel.subset(sorted(i for idx in by_class.values() for i in rng.sample(idx, 40)))
    steel = steel.materialize()
    print(f"{len(steel)} steel images, classes {steel.classes}")

    # 2. one size for everything (boxes follow), a stratified split
    size = 64 if quick else 128
    steel = Wrangle(size=size, split=(0.75, 0.0, 0.25), seed=args.seed).run(steel)
    train, test = split_of(steel, "train"), split_of(steel, "test")
    print(f"train {len(train)}, test {len(test)} at {size}x{size}")

    # 3. classifier, then two explanation methods on the same predictions
    pipe = ik.Pipeline(
        [
            Classifier(
                arch="compact",
                epochs=args.epochs or (8 if quick else 40),
                batch_size=16 if quick else 64,
                max_params=30_000 if quick else 150_000,
                val_fraction=0.0 if quick else 0.1,
                seed=args.seed,
                progress=not quick,
            ),
            GradCAM(progress=False),
        ]
    )
    pipe.fit(train)
    explained = pipe.run(test)
    report = classification_report(explained, title="NEU steel strip: compact CNN")

    gradcam = explanation_report(explained, title="Grad-CAM vs boxes")
    n_sise = 24 if quick else len(test)
    sise_stage = ik.Pipeline([pipe[0], SISE(max_masks=8 if quick else 32, progress=False)])[1]
    sised = sise_stage.run(explained.subset(range(min(n_sise, len(explained)))))
    sise = explanation_report(sised, title="SISE vs boxes")
    report.details["explanations"] = {
        "gradcam": {**gradcam.metrics, "n": gradcam.counts["scored"]},
        "sise": {**sise.metrics, "n": sise.counts["scored"]},
    }

    out = Path(args.out)
    pipe.save(out / "model")
    report.save(out / "report.json")
    html = write_html(report, out, predictions=explained, explained=explained)

    m = report.metrics
    print(f"test: accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}")
    for cls, fig in report.per_class.items():
        print(f"  {cls:<16} precision {fig['precision']:.2f}  recall {fig['recall']:.2f}")
    for name, r in (("Grad-CAM", gradcam), ("SISE", sise)):
        print(
            f"{name:<8} EBPG {r.metrics['ebpg']:.3f}  mask L1 {r.metrics['mask_l1']:.3f}"
            f"  ({r.counts['scored']} images with boxes)"
        )
    summary = {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "ebpg_gradcam": gradcam.metrics["ebpg"],
        "ebpg_sise": sise.metrics["ebpg"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))
    print(f"report: {html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
