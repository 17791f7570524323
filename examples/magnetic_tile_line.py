"""Magnetic tile press: find surface defects having seen only good tiles.

The line: magnetic-tile images (varying size, gray) with pixel masks → an
``AnomalyDetector`` fitted on defect-free tiles only. Part of the good tiles is held out
to calibrate the threshold at a target false-alarm rate — no defect is needed to set it.
The test set mixes unseen good tiles with every defect type; the example prints image
AUROC, pixel AUROC, AUPRO, F1 and false-alarm rate at the threshold, writes anomaly-map
overlays of the test tiles and an HTML report with the score histograms.

Run::

    python examples/magnetic_tile_line.py --quick     # ~15 s of CPU
    python examples/magnetic_tile_line.py             # every tile

Data: ``$INSPECTKIT_DATA/magnetic_tile`` or ``../shared/data/magnetic_tile``.

Note: no pretrained weights are downloaded, so the backbone features are those of a
seeded random network; pass ``weights="resnet18.pth"`` (a local ImageNet state dict) to
``AnomalyDetector`` for much better maps (see the README).
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
from inspectkit.metrics import anomaly_report
from inspectkit.report import write_html
from inspectkit.sources import load_magnetic_tile
from inspectkit.stages import AnomalyDetector
from inspectkit.xai import overlay


def data_root() -> Path:
    """``INSPECTKIT_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("INSPECTKIT_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "magnetic_tile").is_dir():
        sys.exit(f"magnetic_tile not found under {root}; set INSPECTKIT_DATA to the data folder")
    return root / "magnetic_tile"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small subset, small working size")
    ap.add_argument("--out", default="examples-out/tile-line", help="model + report folder")
    ap.add_argument(
        "--method", default="padim", choices=["patchcore", "padim", "autoencoder", "selfsupervised"]
    )
    ap.add_argument("--weights", default=None, help="local backbone weights file (optional)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    quick = args.quick

    # 1. load: good tiles (Free) and the five defect types, with their masks
    root = data_root()
    if quick:  # 64 good tiles, 12 of each defect type
        free = load_magnetic_tile(root, classes=["Free"], limit_per_class=64)
        kinds = ["Blowhole", "Break", "Crack", "Fray", "Uneven"]
        bad = load_magnetic_tile(root, classes=kinds, limit_per_class=12)
        tiles = ik.ImageSet.concat([free, bad])
    else:
        tiles = load_magnetic_tile(root)
    good = [i for i, s in enumerate(tiles.samples) if s.label == "Free"]
    random.Random(args.seed).shuffle(good)
    n_test_good = len(good) // 4
    test_good, train_good = good[:n_test_good], good[n_test_good:]
    defects = [i for i, s in enumerate(tiles.samples) if s.label != "Free"]
    train = tiles.subset(sorted(train_good))
    test = tiles.subset(sorted(test_good + defects))
    print(
        f"fit on {len(train)} good tiles; test on {len(test_good)} good + {len(defects)} "
        f"defective ({', '.join(c for c in tiles.classes if c != 'Free')})"
    )

    # 2. good-only detector; 25 % of the good tiles set the threshold (1 % false alarms)
    detector = AnomalyDetector(
        method=args.method,
        size=96 if quick else 256,
        weights=args.weights,
        calibration_fraction=0.25,
        target_false_alarm_rate=0.01,
        seed=args.seed,
        progress=not quick,
    )
    pipe = ik.Pipeline([detector])
    pipe.fit(train)
    scores = pipe.run(test)
    report = anomaly_report(scores, title=f"Magnetic tile: {args.method}, good-only")

    # 3. what a person looks at: overlays of the anomaly maps, the HTML report
    out = Path(args.out)
    pipe.save(out / "model")
    report.save(out / "report.json")
    html = write_html(report, out, scores=scores)
    maps_dir = out / "anomaly_maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    assert scores.maps is not None
    lo, hi = float(scores.maps.min()), float(scores.maps.max())
    shown = sorted(range(len(scores)), key=lambda i: -float(scores.scores[i]))[:12]
    for i in shown:
        heat = ((scores.maps[i] - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
        name = scores.samples[i].id.replace("/", "_")
        overlay(scores.images[i], heat).save(maps_dir / f"{name}.png")

    m = report.metrics
    print(
        f"image AUROC {m['image_auroc']:.3f}  pixel AUROC {m.get('pixel_auroc', float('nan')):.3f}"
        f"  AUPRO {m.get('aupro', float('nan')):.3f}"
    )
    if "threshold" in m:
        print(
            f"at threshold {m['threshold']:.4g}: F1 {m['f1']:.3f}  false-alarm rate "
            f"{m['false_alarm_rate']:.3f}  miss rate {m['miss_rate']:.3f}"
        )
    summary = {k: m.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1")}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))
    print(f"report: {html}; anomaly maps of the 12 highest scores in {maps_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
