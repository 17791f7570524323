"""DeepPCB: squashed vs tiled inspection, one detector per design vs one over all designs.

Protocol (written down in BENCHMARKS.md, session 6): per board design, the pairs sorted
by name are permuted with seed 0; the first ``--fit-share`` of the pairs give their
*templates* to train on (the tested images of those pairs are never used), the next
``--val-share`` are validation pairs (template = good, tested image = defective; used to
choose settings), the rest are test pairs. Test: image AUROC of the test pairs' tested
images against their templates (the goods of held-out pairs), and the share of defect
boxes touched by the flagged region (the library's defect region: map above the region
threshold calibrated on held-out templates' maps, ``inspectkit.metrics.anomaly.
defect_regions``; with ``--region-rates`` also at each of those region false-alarm rates,
``image`` for the map above the image threshold, as before session 12).

Runs (``--runs``, comma separated): ``squash`` (whole image at ``--size``), ``tiled``
(``--tile`` tiles at native 640 px, ``--overlap``), each ``pooled`` (one detector, all
designs) or ``grouped`` (``group_by="group"``: one per design, one model), and
``per-design`` (a separate detector per design, the reference for ``grouped``).

    flock /tmp/inspectkit-bench.lock python benchmarks/bench_deeppcb.py --split val

A sweep (``--grid``: a JSON list of overrides, each run with every ``--runs`` entry) on a
GPU machine that cannot see the data folder: save the split, copy just its pairs, carry
that folder and point ``INSPECTKIT_DATA`` at it::

    python benchmarks/bench_deeppcb.py --split val --fit-limit 100 \
        --save-split .dpcb/split.json --copy-to .dpcb
    INSPECTKIT_DATA=.dpcb python benchmarks/bench_deeppcb.py --use-split .dpcb/split.json \
        --device cuda --runs tiled-grouped \
        --grid '[{"name": "x2-t256", "tile": 256, "work_size": 1280}]'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


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


def copy_pairs(src: Path, dest: Path, pairs: dict[str, list[str]]) -> None:
    """Copy the listed pairs' files into ``dest/deeppcb`` in DeepPCB's layout."""
    import shutil

    groups = {d.name.removeprefix("group"): d for d in (src / "PCBData").iterdir() if d.is_dir()}
    for role, names in pairs.items():
        for name in names:
            design, stem = name.split("/")
            g = groups[design]
            files = [(g / design / f"{stem}_temp.jpg", False),
                     (g / design / f"{stem}_test.jpg", role == "fit"),
                     (g / f"{design}_not" / f"{stem}.txt", False)]  # fmt: skip
            for path, empty in files:
                out = dest / "deeppcb" / path.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                if empty:
                    out.write_bytes(b"")
                else:
                    shutil.copy2(path, out)


def boxes_touched(res, flagged: torch.Tensor) -> list[tuple[int, int]]:
    """Per image: (boxes whose area holds a flagged map pixel, all its boxes); images
    without boxes (templates) give (0, 0)."""
    out = []
    for i, boxes in enumerate(res.boxes or [[] for _ in res.samples]):
        hits = [
            bool(flagged[i, int(b.ymin) : int(b.ymax) + 1, int(b.xmin) : int(b.xmax) + 1].any())
            for b in boxes
        ]
        out.append((sum(hits), len(hits)))
    return out


def box_masks(res) -> torch.Tensor:
    """The defect boxes of each image filled in, ``N×H×W`` bool at the maps' size."""
    out = torch.zeros(res.maps.shape, dtype=torch.bool)
    for i, boxes in enumerate(res.boxes or [[] for _ in res.samples]):
        for b in boxes:
            out[i, int(b.ymin) : int(b.ymax) + 1, int(b.xmin) : int(b.xmax) + 1] = True
    return out


def region_rows(det, res, rates: list[float | None]) -> list[dict]:
    """Boxes touched and region pixels inside boxes, per candidate region rate."""
    from bench_regions import region_lines, shown_parts

    from inspectkit.anomaly.threshold import region_masks

    inside = box_masks(res)
    shown = shown_parts(res)
    rows = []
    for rate in rates:
        region = region_masks(res.maps, region_lines(det, res, rate), shown)
        per_image = boxes_touched(res, region)
        touched, total = (sum(col) for col in zip(*per_image)) if per_image else (0, 0)
        rows.append({
            "rate": rate,
            "boxes_touched": round(touched / max(total, 1), 4),
            "region_in_boxes": round(int((region & inside).sum()) / max(int(region.sum()), 1), 4),
            "region_area": round(float(region.float().mean()), 5),
        })  # fmt: skip
    return rows


def run_one(
    name: str,
    cfg: dict,
    fit,
    evalset,
    threads: int,
    device: str = "cpu",
    rows_out: str = "",
    region_rates: list[float | None] | None = None,
) -> dict:
    from inspectkit.anomaly import AnomalyDetector
    from inspectkit.metrics import image_auroc
    from inspectkit.metrics.anomaly import defect_regions

    det = AnomalyDetector(progress=False, device=device, **cfg)
    t0 = time.perf_counter()
    det.fit(fit)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = det.run(evalset)
    run_s = time.perf_counter() - t1
    bad = torch.tensor([s.meta["role"] == "tested" for s in res.samples])
    per_image = boxes_touched(res, defect_regions(res))
    touched, total = (sum(col) for col in zip(*per_image)) if per_image else (0, 0)
    if rows_out:  # per image, so runs over parts of the eval set can be pooled
        with open(rows_out, "a") as fh:
            for i, s in enumerate(res.samples):
                t, n = per_image[i]
                row = {"run": name, "id": s.id, "design": s.group, "bad": bool(bad[i]),
                       "score": float(res.scores[i]), "flagged": bool(res.is_anomalous[i]),
                       "boxes_touched": t, "boxes": n}  # fmt: skip
                fh.write(json.dumps(row) + "\n")
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
        "regions": region_rows(det, res, region_rates) if region_rates else None,
        "n_fit": len(fit),
        "n_eval": len(evalset),
        "load": os.getloadavg()[0],
        "threads": threads,
        "device": device,
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
    ap.add_argument(
        "--eval-limit", type=int, default=0, help="at most N evaluation pairs per design (seeded)"
    )
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--tile", type=int, default=160)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--options", default='{"coreset_ratio": 0.01, "max_bank_size": 16384}')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--work-size", type=int, default=0, help="working size of tiled runs (0: native 640)"
    )
    ap.add_argument(
        "--grid",
        default="",
        help="JSON list of overrides ({name, work_size, tile, overlap, method, options}); "
        "each is run with every --runs entry",
    )
    ap.add_argument("--rows-out", default="", help="append per-image rows (JSON lines) here")
    ap.add_argument(
        "--region-rates",
        default="",
        help="comma-separated region false-alarm rates (or 'image') to report boxes touched at",
    )
    ap.add_argument("--save-split", default="", help="write the fit/eval pair lists here")
    ap.add_argument(
        "--copy-to",
        default="",
        help="with --save-split: copy just those pairs into DIR/deeppcb (for a device "
        "machine; the fit pairs' tested images as empty files, never read)",
    )
    ap.add_argument(
        "--use-split", default="", help="read the fit/eval pair lists (from --save-split)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_deeppcb(data_root())
    if args.use_split:
        saved = json.loads(Path(args.use_split).read_text())
        fit = select(data, set(saved["fit"]), "template")
        evalset = select(data, set(saved["eval"]))
    else:
        parts = split_pairs(data, args.fit_share, args.val_share)
        fit = select(data, parts["fit"], "template")
        if args.fit_limit:
            keep, seen = [], {}
            for i, s in enumerate(fit.samples):
                seen[s.group] = seen.get(s.group, 0) + 1
                if seen[s.group] <= args.fit_limit:
                    keep.append(i)
            fit = fit.subset(keep)
        chosen = parts[args.split]
        if args.eval_limit:  # a seeded subsample: at most N pairs per design
            by_design: dict[str, list[str]] = {}
            for name in sorted(chosen):
                by_design.setdefault(name.split("/")[0], []).append(name)
            g = torch.Generator().manual_seed(1)
            chosen = {
                names[i]
                for names in by_design.values()
                for i in torch.randperm(len(names), generator=g)[: args.eval_limit].tolist()
            }
        evalset = select(data, chosen)
    if args.save_split:
        pairs = {k: sorted({f"{s.group}/{s.meta['pair']}" for s in d.samples})
                 for k, d in (("fit", fit), ("eval", evalset))}  # fmt: skip
        Path(args.save_split).write_text(json.dumps({**pairs, "split": args.split}))
        if args.copy_to:
            copy_pairs(data_root(), Path(args.copy_to), pairs)
        return
    fit, evalset = fit.materialize(), evalset.materialize()
    base = {
        "method": args.method,
        "options": json.loads(args.options),
        "target_false_alarm_rate": args.rate,
        "calibration_fraction": 0.2,
    }
    grid = json.loads(args.grid) if args.grid else [{}]
    todo = [(g, r.strip()) for g in grid for r in args.runs.split(",") if r.strip()]
    for g, run in todo:
        cfg = dict(base)
        if "method" in g:
            cfg["method"] = g["method"]
        if "options" in g:
            cfg["options"] = g["options"]
        cfg.update(g.get("cfg", {}))  # any other AnomalyDetector field (layers, backbone…)
        if run.startswith("tiled"):
            cfg.update(tile=g.get("tile", args.tile), tile_overlap=g.get("overlap", args.overlap))
            work = g.get("work_size", args.work_size)
            if work:
                cfg["size"] = work
        else:
            cfg["size"] = g.get("size", args.size)
        if run.endswith("grouped"):
            cfg["group_by"] = "group"
        if run.endswith("per-design"):
            rows = []
            for design in sorted({s.group for s in fit.samples}):
                f = fit.select(lambda s, d=design: s.group == d)
                e = evalset.select(lambda s, d=design: s.group == d)
                rows.append(run_one(f"{run}:{design}", cfg, f, e, args.threads, args.device))
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
            try:
                rates = [
                    None if r.strip() == "image" else float(r)
                    for r in args.region_rates.split(",")
                    if r.strip()
                ]
                res = run_one(
                    run, cfg, fit, evalset, args.threads, args.device, args.rows_out, rates
                )
            except Exception as exc:  # one failing configuration must not end the sweep
                res = {"run": run, "error": f"{type(exc).__name__}: {exc}"}
        res.update(
            name=g.get("name", ""),
            split=args.split,
            config={k: v for k, v in cfg.items() if k != "options"},
            options=cfg["options"],
        )
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
