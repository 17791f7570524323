"""Choosing the region false-alarm rate on validation splits only.

A flagged part's defect region is its anomaly map above the region threshold, set on the
held-out goods' maps at ``region_false_alarm_rate`` (a share of their pixels;
``inspectkit.anomaly.threshold.PixelTail``). This benchmark fits the default detector
once and scores each candidate rate on the same maps, with the library's own rule
(``region_masks``); ``image`` is the image threshold (what regions were before).

Magnetic tiles (``--set mt``): the split of ``bench_anomaly_defaults.py`` (fit on 400 of
the 500 seed-0 training goods, validation = the last 100 goods + the 40 defects held out
with seed 3), every default (``AnomalyDetector()``, so 20 % of the 400 are the held-out
goods the thresholds rest on). Reported per candidate, over the parts the detector shows
a region for (flagged or in review):

* ``defects_touched``: share of the defect masks' connected parts that the region
  touches, over every validation defect (a missed part counts as untouched);
* ``pixel_precision`` / ``pixel_recall`` / ``pixel_f1``: region pixels against mask
  pixels, pooled over the validation parts;
* ``good_area``: mean share of a flagged good part's pixels inside its region.

DeepPCB rows come from ``bench_deeppcb.py --region-rates`` (the same candidates there).

    flock /tmp/inspectkit-bench.lock python benchmarks/bench_regions.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Candidate region false-alarm rates (``None``: the image threshold).
CANDIDATES: list[float | None] = [None, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5]


def region_lines(det, result, rate: float | None) -> torch.Tensor:
    """Per part, its product's region threshold at ``rate`` (the image threshold for
    ``None``), from the tail each product kept at fit."""
    keys = det._keys(result)
    lines = torch.full((len(result),), float("nan"), dtype=torch.float64)
    for key, idx in det._route(keys):
        p = det.products[key]
        line = p.calibration.threshold if rate is None else p.calibration_tail.threshold(rate)
        lines[idx] = line
    return lines


def shown_parts(result) -> torch.Tensor:
    from inspectkit.metrics.anomaly import flagged, sent_to_review

    flags = flagged(result)
    review = sent_to_review(result, flags)
    return torch.from_numpy(flags if review is None else flags | review)


def mask_scores(region: torch.Tensor, masks: torch.Tensor, bad: torch.Tensor) -> dict:
    """Region against masks (both ``N×H×W`` bool at one size)."""
    from scipy import ndimage

    touched = total = 0
    for i in torch.nonzero(bad).flatten().tolist():
        labelled, n = ndimage.label(masks[i].numpy())
        if n:
            hit = np.unique(labelled[region[i].numpy() & (labelled > 0)])
            touched += len(hit)
            total += n
    tp = int((region & masks).sum())
    fp = int((region & ~masks).sum())
    fn = int((~region & masks & bad[:, None, None]).sum())
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    good_flagged = [
        float(region[i].float().mean()) for i in range(len(bad)) if not bad[i] and region[i].any()
    ]
    return {
        "defects_touched": round(touched / max(total, 1), 4),
        "pixel_precision": round(p, 4),
        "pixel_recall": round(r, 4),
        "pixel_f1": round(2 * p * r / max(p + r, 1e-12), 4),
        "good_area": round(float(np.mean(good_flagged)) if good_flagged else 0.0, 5),
        "defect_parts": total,
    }


def main() -> None:
    from bench_anomaly import load_subset, make_split

    from inspectkit.anomaly import AnomalyDetector
    from inspectkit.anomaly.threshold import region_masks
    from inspectkit.metrics import image_auroc
    from inspectkit.metrics.anomaly import _pixel_arrays, anomaly_truth
    from inspectkit.records import ImageSet

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    split = make_split(False)
    fit = load_subset(split["train"][:400])
    val = ImageSet.concat([load_subset(split["train"][400:]), load_subset(split["val_bad"])])
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    det = AnomalyDetector(progress=False, device="cpu").fit(fit)
    fit_s = time.perf_counter() - t0
    res = det.run(val)
    maps, masks = _pixel_arrays(res, None)
    bad = torch.from_numpy(anomaly_truth(res))
    shown = shown_parts(res)
    head = {
        "set": "magnetic_tile_val",
        "val_image_auroc": round(image_auroc(res), 4),
        "flagged_defects": int((shown & bad).sum()),
        "defects": int(bad.sum()),
        "flagged_goods": int((shown & ~bad).sum()),
        "goods": int((~bad).sum()),
        "fit_s": round(fit_s, 1),
        "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(head), flush=True)
    for rate in CANDIDATES:
        lines = region_lines(det, res, rate)
        region = region_masks(maps, lines, shown)
        row = {"set": "magnetic_tile_val", "rate": rate, "line": round(float(lines[0]), 4)}
        print(json.dumps({**row, **mask_scores(region, masks, bad)}), flush=True)


if __name__ == "__main__":
    main()
