"""How often ``method="auto"`` picks the detector that is best on the real test defects.

Protocol, per ``--seeds`` (magnetic tiles, ``MT_Free`` permuted with the seed): 500 goods
to train on, the other 452 goods plus every defective tile (392) to test on. With every
other setting at its default (EfficientNet-Lite0 ImageNet features, working size from the
images, intensity standardised):

1. ``AnomalyDetector(method="auto")`` fits on the 500 goods and picks one of its
   candidates on synthetic defects made from its held-out goods (no real defect is seen):
   its choice and its validation AUROC per candidate are recorded;
2. each candidate is also fitted on its own (``AnomalyDetector(method=name)`` with the
   options ``auto`` gives it) on the same 500 goods, and scored on the test tiles;
3. a "process" is one seed with one defect type (blowhole, break, crack, fray, uneven)
   or all of them: the best detector there is the one with the highest image AUROC of the
   test goods against those defects. Reported: how often ``auto``'s pick is that best one,
   and the AUROC given up when it is not (regret).

Nothing here chooses a setting; it measures the choice ``auto`` makes.

    flock /tmp/inspectkit-bench.lock python benchmarks/bench_anomaly_auto.py --seeds 0,1,2
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


def main() -> None:
    from bench_anomaly import load_subset, make_split

    from inspectkit.anomaly import AnomalyDetector
    from inspectkit.anomaly.recipe import AUTO_CANDIDATES, AUTO_OPTIONS
    from inspectkit.metrics import image_auroc

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    common = {"calibration_fraction": 0, "progress": False, "device": "cpu"}
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        split = make_split(False, seed=seed)
        train, test = load_subset(split["train"]), load_subset(split["test"])
        t0 = time.perf_counter()
        auto = AnomalyDetector(method="auto", seed=seed, **common).fit(train)
        auto_s = time.perf_counter() - t0
        selection = auto.recipe()["selection"]["*"]
        labels = [s.label for s in test.samples]
        scores: dict[str, torch.Tensor] = {}
        for name in AUTO_CANDIDATES:
            det = AnomalyDetector(
                method=name,
                intensity="standardize",
                options=AUTO_OPTIONS.get(name, {}),
                seed=seed,
                **common,
            ).fit(train)
            scores[name] = det.run(test).scores
        for kind in ["all", *sorted({x for x in labels if x != "Free"})]:
            keep = [i for i, x in enumerate(labels) if x == "Free" or kind in ("all", x)]
            truth = torch.tensor([labels[i] != "Free" for i in keep])
            auroc = {n: round(image_auroc(s[keep], truth), 4) for n, s in scores.items()}
            best = max(auroc, key=auroc.get)
            rows.append(
                {
                    "seed": seed,
                    "defects": kind,
                    "auto_pick": selection["chosen"],
                    "best_on_test": best,
                    "picked_best": auroc[selection["chosen"]] >= auroc[best],
                    "regret": round(auroc[best] - auroc[selection["chosen"]], 4),
                    "test_auroc": auroc,
                    "validation_auroc": selection["validation_auroc"],
                    "evidence": selection["evidence"],
                    "auto_fit_s": round(auto_s, 1),
                    "load": round(os.getloadavg()[0], 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    picked = sum(r["picked_best"] for r in rows)
    print(
        json.dumps(
            {
                "summary": True,
                "processes": len(rows),
                "auto_picked_best": picked,
                "pick_rate": round(picked / len(rows), 3),
                "mean_regret": round(sum(r["regret"] for r in rows) / len(rows), 4),
                "max_regret": max(r["regret"] for r in rows),
            }
        )
    )


if __name__ == "__main__":
    main()
