"""Continual replay under ``torchrun`` (2 CPU processes, gloo): the one training loop's
DistributedDataParallel, with buffers and weights identical on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import inspectkit as ik

TESTS = Path(__file__).resolve().parent

CONFIG = {
    "max_params": 3000,
    "buffer": "snnl",
    "capacity": 30,
    "mode": "batch",
    "review_epochs": 1,
    "epochs": 20,
    "lr": 5e-3,
    "schedule": "onecycle",
    "augment": "none",  # the synthetic classes are block positions that flips would swap
    "device": "cpu",
    "progress": False,
    "seed": 0,
}

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import torch.distributed as dist
    import inspectkit as ik
    from inspectkit.continual import ContinualClassifier, update_pipeline
    from test_continual_stage import _exp

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    pipe = ik.Pipeline([ContinualClassifier(**json.loads(sys.argv[2]))])
    pipe.fit(_exp(0))
    update_pipeline(pipe, _exp(1))
    assert dist.is_initialized() and dist.get_world_size() == 2
    pipe.save(out / "model")          # every rank calls save; only rank 0 writes
    clf = pipe[0]

    def digest(tensors):
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    print(json.dumps({{
        "rank": rank,
        "weights": digest(clf.model.state_dict().values()),
        "buffer": digest([clf.buffer.images, clf.buffer.labels]),
        "epochs": [h["epochs"] for h in clf.history],
    }}))
    dist.barrier()
    """
)


@pytest.mark.distributed
def test_two_cpu_processes_learn_a_stream_in_step(tmp_path: Path) -> None:
    from test_classifier_distributed import _free_port
    from test_continual_stage import ALL, _exp, _set

    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"OMP_NUM_THREADS": "1", "INSPECTKIT_PROGRESS": "0"})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        str(out),
        # 2 processes × 8 new samples = one process's mini-batch of 16
        json.dumps({**CONFIG, "batch_size": 8}),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    # the memory saw the same global batches on both ranks, and DDP kept the weights equal
    assert reports[0]["buffer"] == reports[1]["buffer"]
    assert reports[0]["weights"] == reports[1]["weights"]
    assert reports[0]["epochs"] == reports[1]["epochs"] == [20, 20]
    assert sorted(p.name for p in out.iterdir()) == ["model"]

    loaded = ik.Pipeline.load(out / "model")
    test = _set(ALL[:3], ALL[:3], 6, seed=21, prefix="t")
    acc = float((loaded[0].predict_proba(test).argmax(1) == test.targets()).float().mean())
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from inspectkit.continual import ContinualClassifier

        single = ContinualClassifier(**{**CONFIG, "batch_size": 16}).fit(_exp(0)).update(_exp(1))
    finally:
        torch.set_num_threads(old)
    acc_single = float((single.predict_proba(test).argmax(1) == test.targets()).float().mean())
    assert acc >= acc_single - 0.15, (acc, acc_single)
    assert acc > 0.6
