"""Choosing the default anomaly recipe on the magnetic-tile *validation* split only.

Split (as in ``bench_anomaly.py``): the 500 seed-0 training goods; the detector fits on
the first 400, validation = the last 100 goods + the 40 defects held out with seed 3
(never the test files). Every candidate uses EfficientNet-Lite0 ImageNet weights
(``weights="imagenet"``, the ``inspectkit[weights]`` extra) except the ``no_weights`` ones
(the recipe without weights: random-init resnet18), and intensity standardisation; reported: validation image AUROC, fit seconds and scoring images/s
end to end (resize + standardise + detector), on ``--threads`` torch threads.

    flock /tmp/inspectkit-bench.lock python benchmarks/bench_anomaly_defaults.py --only padim
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _ensemble(bank: int, **extra) -> dict:
    """PatchCore with a ``bank``-patch memory + PaDiM 200 channels, at 384 px."""
    members = [
        {"method": "patchcore", "coreset_ratio": 0.25, "max_bank_size": bank},
        {"method": "padim", "n_features": 200},
    ]
    return {"method": "ensemble", "size": 384, "options": {**extra, "members": members}}


def _cutpaste(size: int, **options) -> dict:
    """The self-supervised detector without weights (random-init resnet18)."""
    return {"method": "selfsupervised", "size": size, "no_weights": True, "options": options}


BF16 = {"feature_dtype": "bfloat16"}
CANDIDATES: dict[str, dict] = {
    "padim200-384-bf16": {"method": "padim", "size": 384, "options": {"n_features": 200, **BF16}},
    "padim200-384-fp32": {"method": "padim", "size": 384, "options": {"n_features": 200}},
    "padim100-384-bf16": {"method": "padim", "size": 384, "options": {"n_features": 100, **BF16}},
    "padim200-256-bf16": {"method": "padim", "size": 256, "options": {"n_features": 200, **BF16}},
    "patchcore16k-384-bf16": {
        "method": "patchcore",
        "size": 384,
        "options": {"coreset_ratio": 0.25, "max_bank_size": 16384, **BF16},
    },
    "patchcore16k-384-fp32": {
        "method": "patchcore",
        "size": 384,
        "options": {"coreset_ratio": 0.25, "max_bank_size": 16384},
    },
    "ensemble16k-384-fp32": _ensemble(16384),
    "ensemble4k-384-fp32": _ensemble(4096),
    "ensemble64k-384-fp32": _ensemble(65536),
    "ensemble256k-384-fp32": _ensemble(262144),
    # no weights: the self-supervised (CutPaste) detector, random-init resnet18 (issue #17
    # item 7: 500 images in <= 120 s on 2 cores); steps/size/head candidates
    "ss300-384": _cutpaste(384),
    "ss150-384": _cutpaste(384, steps=150),
    "ss100-384": _cutpaste(384, steps=100),
    "ss200-384": _cutpaste(384, steps=200),
    "ss150-256": _cutpaste(256, steps=150),
    "ss100-256": _cutpaste(256, steps=100),
    "ss300-256": _cutpaste(256),
    "ss200-256": _cutpaste(256, steps=200),
    "ss250-256": _cutpaste(256, steps=250),
    "ss150-256-nf200": _cutpaste(256, steps=150, n_features=200),
    "ss150-256-crop96": _cutpaste(256, steps=150, crop_size=96),
    "ss150-256-l123": {**_cutpaste(256, steps=150), "layers": ["layer1", "layer2", "layer3"]},
    "ss150-256-nf200-l123": {
        **_cutpaste(256, steps=150, n_features=200),
        "layers": ["layer1", "layer2", "layer3"],
    },
    "ss150-256-nf300": _cutpaste(256, steps=150, n_features=300),
    "ss150-256-nf384": _cutpaste(256, steps=150, n_features=384),
    "ss150-256-nf300-l123": {
        **_cutpaste(256, steps=150, n_features=300),
        "layers": ["layer1", "layer2", "layer3"],
    },
    "ss300-384-pc": _cutpaste(384, head="patchcore"),
    "ensemble16k-384-bf16": _ensemble(16384, **BF16),
}


def main() -> None:
    from bench_anomaly import load_subset, make_split

    from inspectkit.anomaly import AnomalyDetector
    from inspectkit.metrics import image_auroc
    from inspectkit.records import ImageSet

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    split = make_split(False)
    fit_ids, val_good = split["train"][:400], split["train"][400:]
    fit = load_subset(fit_ids)
    val = ImageSet.concat([load_subset(val_good), load_subset(split["val_bad"])])
    keys = [k for k in CANDIDATES if not args.only or any(o in k for o in args.only.split(","))]
    for name in keys:
        cfg = dict(CANDIDATES[name])
        features = (
            {"backbone": "auto", "weights": None}
            if cfg.pop("no_weights", False)
            else {"backbone": "efficientnet_lite0", "weights": "imagenet"}
        )
        det = AnomalyDetector(
            **cfg,
            **features,
            intensity="standardize",
            calibration_fraction=0,
            progress=False,
            device="cpu",
        )
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        det.fit(fit)
        fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        res = det.run(val)
        score_s = time.perf_counter() - t1
        row = {
            "candidate": name,
            "val_image_auroc": round(image_auroc(res), 4),
            "fit_s": round(fit_s, 1),
            "img_per_s": round(len(val) / score_s, 2),
            "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
