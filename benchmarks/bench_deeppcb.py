"""DeepPCB: squashed vs tiled inspection, one detector per design vs one over all designs.

Protocol (written down in BENCHMARKS.md, session 6): per board design, the pairs sorted
by name are permuted with seed 0; the first ``--fit-share`` of the pairs give their
*templates* to train on (the tested images of those pairs are never used), the next
``--val-share`` are validation pairs (template = good, tested image = defective; used to
choose settings), the rest are test pairs. Test: image AUROC of the test pairs' tested
images against their templates (the goods of held-out pairs), and the share of defect
boxes touched by the flagged region (map above the threshold calibrated at
``--rate`` on held-out templates).

Runs (``--runs``, comma separated): ``squash`` (whole image at ``--size``), ``tiled``
(``--tile`` tiles at native 640 px, ``--overlap``), each ``pooled`` (one detector, all
designs) or ``grouped`` (``group_by="group"``: one per design, one model), and
``per-design`` (a separate detector per design, the reference for ``grouped``).

    flock /tmp/inspectkit-bench.lock python benchmarks/bench_deeppcb.py --split val
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    env = os.environ.get("INSPECTKIT_DATA")
    root = Path(env) if env else ROOT.parent / "shared" / "data"
    return root / "deeppcb"


def split_pairs(data, fit_share: float, val_share: float) -> dict[str, set[str]]:
    """Pair stems per part of the protocol (per design, seeded)."""
    parts: dict[str, set[str]] = {"fit": set(), "val": set(), "test": set()}
    by_design: dict[str, list[str]] = {}
    for s in data.samples:
        by_design.setdefault(s.group, []).append(s.meta["pair"])
    for design, pairs in sorted(by_design.items()):
        pairs = sorted(set(pairs))
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
        n_fit, n_val = round(fit_share * len(pairs)), max(1, round(val_share * len(pairs)))
        for rank, i in enumerate(order):
            part = "fit" if rank < n_fit else "val" if rank < n_fit + n_val else "test"
            parts[part].add(f"{design}/{pairs[i]}")
    return parts


def select(data, pairs: set[str], role: str | None = None):
    keep = [
        i
        for i, s in enumerate(data.samples)
        if f"{s.group}/{s.meta['pair']}" in pairs and (role is None or s.meta["role"] == role)
    ]
    return data.subset(keep)


def boxes_touched(res, rate_threshold_region: torch.Tensor) -> tuple[int, int]:
    """(boxes whose area holds a flagged map pixel, all boxes) over defective images."""
    touched = total = 0
    for i, boxes in enumerate(res.boxes or []):
        for b in boxes:
            total += 1
            region = rate_threshold_region[
                i, int(b.ymin) : int(b.ymax) + 1, int(b.xmin) : int(b.xmax) + 1
            ]
            touched += bool(region.any())
    return touched, total


def run_one(name: str, cfg: dict, fit, evalset, threads: int) -> dict:
    from inspectkit.anomaly import AnomalyDetector
    from inspectkit.metrics import image_auroc

    det = AnomalyDetector(progress=False, device="cpu", **cfg)
    t0 = time.perf_counter()
    det.fit(fit)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = det.run(evalset)
    run_s = time.perf_counter() - t1
    bad = torch.tensor([s.meta["role"] == "tested" for s in res.samples])
    flagged = torch.zeros_like(res.maps, dtype=torch.bool)
    for k, p in det.products.items():
        rows = [i for i, s in enumerate(res.samples) if not k or s.group == k]
        flagged[rows] = res.maps[rows] > p.calibration.threshold
    touched, total = boxes_touched(res.subset(bad.nonzero().flatten()), flagged[bad])
    per_design = {}
    for design in sorted({s.group for s in res.samples}):
        rows = [i for i, s in enumerate(res.samples) if s.group == design]
        per_design[design] = round(image_auroc(res.scores[rows], bad[rows]), 4)
    return {
        "run": name,
        "image_auroc": round(image_auroc(res.scores, bad), 4),
        "image_auroc_mean_per_design": round(sum(per_design.values()) / len(per_design), 4),
        "per_design": per_design,
        "boxes_touched": round(touched / max(total, 1), 4),
        "flagged_tested": round(float(res.is_anomalous[bad].float().mean()), 4),
        "flagged_templates": round(float(res.is_anomalous[~bad].float().mean()), 4),
        "fit_s": round(fit_s, 1),
        "img_per_s": round(len(evalset) / run_s, 2),
        "n_fit": len(fit),
        "n_eval": len(evalset),
        "load": os.getloadavg()[0],
        "threads": threads,
    }


def main() -> None:
    from inspectkit.sources.deeppcb import load_deeppcb

    ap = argparse.ArgumentParser()
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--runs", default="squash-grouped,tiled-grouped,tiled-pooled,tiled-per-design")
    ap.add_argument("--fit-share", type=float, default=0.5)
    ap.add_argument("--val-share", type=float, default=0.1)
    ap.add_argument(
        "--fit-limit", type=int, default=0, help="at most N training templates per design"
    )
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--tile", type=int, default=160)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--options", default='{"coreset_ratio": 0.01, "max_bank_size": 16384}')
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_deeppcb(data_root())
    parts = split_pairs(data, args.fit_share, args.val_share)
    fit = select(data, parts["fit"], "template")
    if args.fit_limit:
        keep, seen = [], {}
        for i, s in enumerate(fit.samples):
            seen[s.group] = seen.get(s.group, 0) + 1
            if seen[s.group] <= args.fit_limit:
                keep.append(i)
        fit = fit.subset(keep)
    evalset = select(data, parts[args.split])
    fit, evalset = fit.materialize(), evalset.materialize()
    base = {
        "method": args.method,
        "options": json.loads(args.options),
        "target_false_alarm_rate": args.rate,
        "calibration_fraction": 0.2,
    }
    for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
        cfg = dict(base)
        cfg.update(
            {"tile": args.tile, "tile_overlap": args.overlap}
            if run.startswith("tiled")
            else {"size": args.size}
        )
        if run.endswith("grouped"):
            cfg["group_by"] = "group"
        if run.endswith("per-design"):
            rows = []
            for design in sorted({s.group for s in fit.samples}):
                f = fit.select(lambda s, d=design: s.group == d)
                e = evalset.select(lambda s, d=design: s.group == d)
                rows.append(run_one(f"{run}:{design}", cfg, f, e, args.threads))
            res = {
                "run": run,
                "image_auroc_mean_per_design": round(
                    sum(r["image_auroc"] for r in rows) / len(rows), 4
                ),
                "per_design": {r["run"].split(":")[1]: r["image_auroc"] for r in rows},
                "boxes_touched": round(sum(r["boxes_touched"] for r in rows) / len(rows), 4),
                "fit_s": round(sum(r["fit_s"] for r in rows), 1),
            }
        else:
            res = run_one(run, cfg, fit, evalset, args.threads)
        res.update(
            split=args.split,
            config={k: v for k, v in cfg.items() if k != "options"},
            options=base["options"],
        )
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
