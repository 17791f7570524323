"""``inspectkit explain``: heatmap overlays per input.

A classifier's inputs get Grad-CAM or SISE heatmaps (:func:`inspectkit.xai.write_overlays`),
a detector's its anomaly maps on one colour scale
(:func:`inspectkit.xai.overlay.write_anomaly_overlays`, the scale of the HTML report).
"""

from __future__ import annotations

import argparse

from inspectkit.cli.card import load_model
from inspectkit.cli.command import EXIT_OK, Command, check_choice, register_command, shown
from inspectkit.cli.predict import load_inputs_for
from inspectkit.cli.project import Project, out_folder, pick


def check_method(method: str) -> str:
    """``method`` if it names a registered explanation method (imports ``inspectkit.xai``:
    call it in ``run``); a ``UsageError`` listing the methods otherwise."""
    from inspectkit.xai import available_methods

    return check_choice(method, available_methods(), "inspectkit explain: --method")


@register_command
class Explain(Command):
    name = "explain"
    help = "heatmap overlays per input"
    order = 50

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", metavar="MODEL_DIR")
        parser.add_argument("--out", metavar="DIR")
        parser.add_argument(
            "--method",
            default="gradcam",
            help="explanation method of a classifier: gradcam (default), sise, or an installed one",
        )
        parser.add_argument("inputs", nargs="*", metavar="PATH")

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.pipeline import Pipeline
        from inspectkit.xai.overlay import write_anomaly_overlays, write_overlays

        project = Project.from_args(args)
        model_dir = pick(args.model, project, lambda p: p.model(args.name), "--model", "explain")
        out = out_folder(pick(args.out, project, lambda p: p.report("explain"), "--out", "explain"))
        pipe, card = load_model(model_dir)
        if card["task"] == "classify":
            check_method(args.method)
        data = load_inputs_for(args.inputs, card, "explain")
        if card["task"] == "classify":
            from inspectkit.xai import Explain as ExplainStage

            stage = ExplainStage(method=args.method, progress=self.progress(args))
            paths = write_overlays(Pipeline([*pipe.stages, stage]).run(data), out)
        else:
            paths = write_anomaly_overlays(pipe.run(data), out)
        self.say(args, f"{len(paths)} overlays written to {shown(out)}", always=True)
        return EXIT_OK
