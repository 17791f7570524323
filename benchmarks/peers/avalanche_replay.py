"""Peer run for bench_continual.py: Avalanche experience replay on the same stream.

Run with the Avalanche virtualenv's python (``benchmarks/peers/avalanche.sh`` creates it);
``bench_continual.py`` calls it through a subprocess. The stream, the initial weights and
the settings come from files the benchmark writes; the same compact network is built
with inspectkit's builder and loaded with those initial weights, and its output layer
grows at each experience exactly as inspectkit's trainer grows it (same function, same
seed). Training uses Avalanche's ``Naive`` strategy with ``ReplayPlugin`` and a
``ReservoirSamplingBuffer`` of the same memory size, the same mini-batch sizes
(new + replayed), Adam with the same learning rate, reset at each experience, and the
same epochs. Evaluation uses the same prediction code as the benchmark.

Prints one JSON object (accuracy matrix, final predictions, training seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset,
)
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.supervised import Naive

from inspectkit.continual.trainer import expand_head, predict_with, wafer_one_hot
from inspectkit.models import build_classifier


class NaiveFreshAdam(Naive):
    """``Naive`` whose optimiser state is reset at every experience (as inspectkit's)."""

    def make_optimizer(self, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["reset_optimizer_state"] = True
        return super().make_optimizer(**kwargs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stream", required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mem-size", type=int, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--batch-size-mem", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--max-params", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--channels-last",
        action="store_true",
        help="hand Avalanche the model in channels-last memory layout (a sensitivity run; "
        "the benchmark's peer rows use the model as built)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    s = torch.load(args.stream, weights_only=True)
    size = tuple(int(v) for v in s["size"])
    model = build_classifier(
        "compact", 3, int(s["build_classes"]), input_size=size, max_params=args.max_params
    )
    model.load_state_dict(torch.load(args.init, weights_only=True))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    train_sets = [
        _make_taskaware_tensor_classification_dataset(wafer_one_hot(x), y.long(), task_labels=0)
        for x, y in zip(s["train_x"], s["train_y"])
    ]
    bench = benchmark_from_datasets(train=train_sets)
    plugin = ReplayPlugin(
        mem_size=args.mem_size,
        batch_size=args.batch_size,
        batch_size_mem=args.batch_size_mem,
        storage_policy=ReservoirSamplingBuffer(max_size=args.mem_size),
    )
    strategy = NaiveFreshAdam(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=args.lr),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=args.batch_size,
        train_epochs=args.epochs,
        eval_mb_size=512,
        device="cpu",
        plugins=[plugin],
        evaluator=EvaluationPlugin(loggers=[]),
        eval_every=-1,
    )
    test_x, test_y, test_exp = s["test_x"], s["test_y"], s["test_exp"]
    n_exp = len(train_sets)
    R = [[0.0] * n_exp for _ in range(n_exp)]
    train_seconds = train_cpu = 0.0
    preds = None
    for t, exp in enumerate(bench.train_stream):
        # grow the output layer like inspectkit's trainer (same rows, same seed)
        expand_head(strategy.model, int(s["num_classes"][t]), seed=args.seed + t)
        t0, c0 = time.perf_counter(), time.process_time()
        strategy.train(exp)
        train_seconds += time.perf_counter() - t0
        train_cpu += time.process_time() - c0
        probs = predict_with(strategy.model, test_x, "wafer", torch.device("cpu"))
        preds = probs.argmax(1)
        for i in range(n_exp):
            m = test_exp == i
            R[t][i] = float((preds[m] == test_y[m]).float().mean())
    assert preds is not None
    out = {
        "R": R,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu,
        "predicted": preds.tolist(),
    }
    with open(args.out, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
