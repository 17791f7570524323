"""``inspectkit rollback``: put the model saved before the last ``train`` back.

``train`` keeps the model it replaces as ``MODEL_DIR.prev`` (``--keep N``: N versions);
``rollback`` swaps it back in one atomic step (:meth:`inspectkit.Pipeline.rollback`), and
the model it replaces becomes ``MODEL_DIR.prev``, so a second ``rollback`` undoes the
first. The model card travels with its model (it is part of the same save).
"""

from __future__ import annotations

import argparse
import json

from inspectkit.cli.card import load_model
from inspectkit.cli.command import EXIT_OK, Command, register_command, shown, wrap
from inspectkit.cli.project import Project, pick
from inspectkit.errors import InspectkitError


@register_command
class Rollback(Command):
    name = "rollback"
    help = "put back the model the last train replaced (MODEL_DIR.prev)"
    order = 75  # after the first seven, whose order in --help the tests pin

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", metavar="MODEL_DIR", help="the model folder")

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.pipeline import Pipeline

        project = Project.from_args(args)
        model_dir = pick(args.model, project, lambda p: p.model(args.name), "--model", "rollback")
        try:
            Pipeline.rollback(model_dir)
        except InspectkitError as exc:
            raise wrap(model_dir, exc) from None
        _, card = load_model(model_dir)
        facts = {k: card.get(k) for k in ("task", "trained_at", "seed", "data")}
        if args.json:
            print(json.dumps({"model": shown(model_dir), "rolled_back": True, **facts}))
        else:
            when = f", trained {facts['trained_at']}" if facts["trained_at"] else ""
            self.say(
                args,
                f"{shown(model_dir)}: the previous {facts['task']} model is back{when} "
                "(run rollback again to undo)",
                always=True,
            )
        return EXIT_OK
