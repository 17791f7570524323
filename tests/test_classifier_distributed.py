"""Multi-process training: ``Classifier.fit`` unchanged under ``torchrun`` (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import inspectkit as ik
from inspectkit.stages import Classifier

TESTS = Path(__file__).resolve().parent

CONFIG = {
    "epochs": 10,
    "batch_size": 16,
    "max_params": 6_000,
    "lr": 1e-2,
    "progress": False,
    "seed": 0,
    "device": "cpu",
}

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import torch.distributed as dist
    import inspectkit as ik
    from inspectkit.stages import Classifier
    from test_classifier import make_patterns

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    pipe = ik.Pipeline([Classifier(**json.loads(sys.argv[2]))])
    pipe.fit(make_patterns(160, seed=1))
    assert dist.is_initialized() and dist.get_world_size() == 2
    pipe.save(out / "model")          # every rank calls save; only rank 0 writes
    clf = pipe["classifier"]
    probs = clf.predict_proba(make_patterns(80, seed=2, prefix="t"))
    torch.save(probs, out / f"probs-rank{{rank}}.pt") if rank == 0 else None
    print(json.dumps({{"rank": rank, "epochs": len(clf.history)}}))
    dist.barrier()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.distributed
def test_two_cpu_processes_train_like_one(tmp_path: Path) -> None:
    from test_classifier import make_patterns

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
        # 2 processes × batch 8 = the single process's batch of 16, so both take as many steps
        json.dumps({**CONFIG, "batch_size": CONFIG["batch_size"] // 2}),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert len({r["epochs"] for r in reports}) == 1  # early stopping kept the ranks in step

    # only rank 0 wrote: one model folder, nothing else but rank 0's probabilities
    assert sorted(p.name for p in out.iterdir()) == ["model", "probs-rank0.pt"]
    assert not any(p.name.startswith(".model") for p in out.iterdir())

    test = make_patterns(80, seed=2, prefix="t")
    loaded = ik.Pipeline.load(out / "model")
    probs = loaded.run(test).probs
    assert torch.allclose(probs, torch.load(out / "probs-rank0.pt"), atol=1e-6)
    acc_ddp = float((probs.argmax(1) == test.targets()).float().mean())

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Classifier(**CONFIG).fit(make_patterns(160, seed=1)).predict_proba(test)
    finally:
        torch.set_num_threads(old)
    acc_single = float((single.argmax(1) == test.targets()).float().mean())
    assert acc_ddp >= 0.85, (acc_ddp, acc_single)
    assert acc_ddp >= acc_single - 0.1, (acc_ddp, acc_single)
