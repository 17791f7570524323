"""``inspectkit demo``: a wafer-line classifier trained and evaluated on shipped data.

The pipeline is :func:`inspectkit.recipes.default_pipeline` for wafer maps, trained on
the WM-811K sample inside the package; the model, ``report.json`` and a ``report.html``
with Grad-CAM heatmaps of the most confident mistakes go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from inspectkit.cli.card import save_model
from inspectkit.cli.command import (
    EXIT_OK,
    Command,
    positive_int,
    register_command,
    seed_int,
    shown,
)

#: Mistakes explained with Grad-CAM in the demo report.
EXPLAINED_MISTAKES = 16


def demo_data_path(name: str) -> Path:
    """Path of a file shipped in ``inspectkit/data``."""
    return Path(str(resources.files("inspectkit") / "data" / name))


def explain_mistakes(pipe: Any, pred: Any, limit: int) -> Any:
    """Grad-CAM heatmaps of the ``limit`` most confident mistakes (``None`` if none)."""
    from inspectkit.pipeline import Pipeline
    from inspectkit.xai import Explain

    wrong = [
        i
        for i, s in enumerate(pred.samples)
        if s.label is not None and pred.predicted[i] is not None and pred.predicted[i] != s.label
    ]
    if not wrong:
        return None
    conf = pred.probs.max(dim=1).values
    wrong = sorted(wrong, key=lambda i: -float(conf[i]))[:limit]
    explainer = Pipeline([*pipe.stages, Explain(method="gradcam", progress=False)])
    return explainer.stages[-1].run(pred.subset(wrong))


@register_command
class Demo(Command):
    name = "demo"
    help = "train and evaluate a wafer-map classifier on shipped sample data"
    order = 10
    takes_project = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--out", default="inspectkit-demo", help="output folder (model + report)"
        )
        parser.add_argument("--epochs", type=positive_int, default=None, help="default 30")
        parser.add_argument(
            "--size", type=positive_int, default=None, help="maps are resized to SIZE×SIZE (48)"
        )
        parser.add_argument("--seed", type=seed_int, default=0)

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.metrics import classification_report
        from inspectkit.recipes import default_pipeline
        from inspectkit.report import write_html
        from inspectkit.sources import load_wafer_maps

        started = time.perf_counter()
        train = load_wafer_maps(demo_data_path("wm811k_demo_train.npz"))
        test = load_wafer_maps(demo_data_path("wm811k_demo_test.npz"))
        self.say(
            args, f"wafer line demo: {len(train)} training maps, {len(test)} test maps, 9 classes"
        )
        pipe = default_pipeline(
            "classify",
            kind="wafer",
            n_train=len(train),
            size=args.size,
            epochs=args.epochs,
            seed=args.seed,
            progress=self.progress(args),
        )
        pipe.fit(train)
        pred = pipe.run(test)
        report = classification_report(pred, title="WM-811K demo sample: compact CNN")
        out = Path(args.out)
        save_model(
            out / "model",
            pipe,
            train,
            task="classify",
            source="inspectkit demo sample (WM-811K)",
            seed=args.seed,
            layout="wafer-npz",
            started=started,
        )
        report.save(out / "report.json")
        explained = explain_mistakes(pipe, pred, limit=EXPLAINED_MISTAKES)
        html = write_html(report, out, predictions=pred, explained=explained)
        elapsed = time.perf_counter() - started
        m = report.metrics
        if args.json:
            metrics = {k: (v if v == v else None) for k, v in m.items()}
            out_json = {"metrics": metrics, "out": str(out), "report_html": str(html)}
            print(json.dumps({**out_json, "seconds": round(elapsed, 1)}))
            return EXIT_OK
        self.say(
            args,
            f"accuracy {m.get('accuracy', float('nan')):.3f}  "
            f"macro-F1 {m.get('macro_f1', float('nan')):.3f}  ({elapsed:.0f} s)",
            always=True,
        )
        for cls, fig in report.per_class.items():
            self.say(args, f"  {cls:<10} recall {fig.get('recall', float('nan')):.2f}")
        self.say(args, f"model saved to {shown(out / 'model')}; report at {shown(html)}")
        return EXIT_OK
