"""Peer worker for benchmarks/bench_anomaly.py: anomalib 2.7.0 PatchCore / PaDiM.

Run with the anomalib virtualenv's python (benchmarks/peers/anomalib.sh creates it):

    bench-venvs/anomalib/bin/python benchmarks/peers/anomalib_run.py JOB.json

JOB.json: {"model": "patchcore"|"padim", "backbone", "layers", "coreset_ratio",
"weights" (converted timm state dict or null), "random_bank_ratio" (optional: a random
bank of that share instead of the coreset, for throughput at equal bank size), "size", "train": [paths], "test": [paths],
"out": folder, "batch_size", "score_passes" (optional: score the test set that many
times, each pass timed)}. The anomalib lightning model is built exactly as a user
would (``Patchcore(backbone=..., pre_trained=False, coreset_sampling_ratio=...)``) and its
torch model is driven directly (no Lightning Trainer, so no framework overhead is
counted against it). Pre-processing is anomalib's own default: antialiased resize to
256×256 and ImageNet normalisation; gray replicated to 3 channels. As on the inspectkit
side, decoding is outside the timers and resizing inside them.
Writes scores.npy, maps.npy (float16, N×H×W) and timing.json into "out".
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load(paths: list[str]) -> list[torch.Tensor]:
    """Decoded images at their own sizes (decoding is not timed, resizing is)."""
    return [torch.from_numpy(np.array(Image.open(p).convert("L"))).unsqueeze(0) for p in paths]


def resized(images: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.stack([TF.resize(img, [size, size], antialias=True) for img in images])


def prep(x: torch.Tensor) -> torch.Tensor:
    x = x.float().div(255).expand(-1, 3, -1, -1)
    return (x - MEAN) / STD


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from anomalib.models import Padim, Patchcore

    layers = job["layers"]
    if job["model"] == "patchcore":
        lm = Patchcore(
            backbone=job["backbone"],
            layers=layers,
            pre_trained=False,
            coreset_sampling_ratio=job["coreset_ratio"],
        )
    else:
        kwargs = {"n_features": job.get("n_features")} if job.get("n_features") else {}
        lm = Padim(backbone=job["backbone"], layers=layers, pre_trained=False, **kwargs)
    model = lm.model
    if job.get("weights"):
        state = torch.load(job["weights"], map_location="cpu", weights_only=True)
        fx = model.feature_extractor.feature_extractor
        own = fx.state_dict()
        missing = [k for k in own if k not in state or state[k].shape != own[k].shape]
        if missing:
            raise SystemExit(f"pretrained weights do not cover {missing[:5]}")
        fx.load_state_dict({k: state[k] for k in own}, strict=True)
    bs = job.get("batch_size", 32)
    size = job["size"]
    train = load(job["train"])
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    # anomalib keeps the backbone in eval mode during "training" (feature collection)
    model.feature_extractor.eval()
    with torch.no_grad():
        for s in range(0, len(train), bs):
            model(prep(resized(train[s : s + bs], size)))
    t_feat = time.perf_counter() - t0
    if job.get("random_bank_ratio"):
        # throughput at an equal bank size: a seeded random subset instead of the greedy
        # coreset (which would take hours at ratio 0.1); its quality is not comparable
        store = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
        k = max(1, round(job["random_bank_ratio"] * store.shape[0]))
        g = torch.Generator().manual_seed(0)
        model.memory_bank = store[torch.randperm(store.shape[0], generator=g)[:k]].contiguous()
        del store
    else:
        lm.fit()  # coreset (PatchCore) or Gaussian (PaDiM)
    fit_s = time.perf_counter() - t0
    fit_cpu_s = time.process_time() - c0
    del train
    test = load(job["test"][: job.get("test_limit") or None])
    model.eval()
    pass_s, faults = [], []
    c1 = time.process_time()
    # "score_passes" > 1: the test set scored again in the same process, each pass timed
    # (throughput settled on the median pass rather than one reading)
    for _ in range(max(1, int(job.get("score_passes", 1)))):
        scores, maps = [], []
        f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t1 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(test), bs):
                res = model(prep(resized(test[s : s + bs], size)))
                scores.append(res.pred_score.flatten().float())
                maps.append(res.anomaly_map.reshape(-1, size, size).half())
        pass_s.append(time.perf_counter() - t1)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f1)
    predict_s = pass_s[0]
    predict_cpu_s = (time.process_time() - c1) / len(pass_s)
    np.save(out / "scores.npy", torch.cat(scores).numpy())
    np.save(out / "maps.npy", torch.cat(maps).numpy())
    bank = getattr(model, "memory_bank", None)
    # own peak RSS: ru_maxrss seen by the parent includes the parent's high-water mark
    hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln[:6] == "VmHWM:"]
    (out / "timing.json").write_text(
        json.dumps(
            {
                "peak_rss_mib": int(hwm[0].split()[1]) / 1024 if hwm else None,
                "fit_s": fit_s,
                "fit_cpu_s": fit_cpu_s,
                "predict_cpu_s": predict_cpu_s,
                "feature_s": t_feat,
                "predict_s": predict_s,
                "predict_pass_s": pass_s,
                "predict_pass_minor_faults": faults,
                "n_test": len(test),
                "bank": int(bank.shape[0]) if isinstance(bank, torch.Tensor) else None,
            }
        )
    )


if __name__ == "__main__":
    main()
