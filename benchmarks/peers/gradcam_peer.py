"""Run pytorch-grad-cam's GradCAM on a saved inspectkit classifier (peer of bench_xai.py).

Started by ``benchmarks/bench_xai.py`` with the python of ``bench-venvs/grad-cam``
(created by ``benchmarks/peers/gradcam.sh``). Reads from ``--workdir``:

* ``spec.json``: ``layer`` (module name), ``batch_size``, ``threads``;
* ``model.pt``: the whole network (``torch.save(model)``, unpickled with inspectkit on
  ``PYTHONPATH``); ``inputs.pt``: preprocessed float inputs
  ``N×C×H×W``; ``targets.pt``: the class explained per input.

Writes ``peer_heatmaps.pt`` (``N×H×W``) and prints JSON with the timing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    wd = Path(args.workdir)
    spec = json.loads((wd / "spec.json").read_text())
    torch.set_num_threads(int(spec["threads"]))
    # the benchmark's own file: the whole module, pickled by bench_xai.py a moment ago
    model = torch.load(wd / "model.pt", weights_only=False)
    model.eval()
    x = torch.load(wd / "inputs.pt", weights_only=True)
    t = torch.load(wd / "targets.pt", weights_only=True)
    layer = model.get_submodule(spec["layer"])
    bs = int(spec["batch_size"])
    out = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        # warm-up on one batch, not timed (both sides do the same)
        cam(input_tensor=x[:bs], targets=[ClassifierOutputTarget(int(c)) for c in t[:bs]])
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(0, len(x), bs):
            maps = cam(
                input_tensor=x[s : s + bs],
                targets=[ClassifierOutputTarget(int(c)) for c in t[s : s + bs]],
            )
            out.append(torch.from_numpy(maps).float())
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.save(torch.cat(out), wd / "peer_heatmaps.pt")
    from importlib.metadata import version

    print(
        json.dumps(
            {
                "peer": "pytorch-grad-cam",
                "version": version("grad-cam"),
                "images": len(x),
                "seconds": elapsed,
                "seconds_per_image": elapsed / len(x),
                "cpu_seconds_per_image": cpu / len(x),
            }
        )
    )


if __name__ == "__main__":
    main()
