"""``inspectkit spec-schema``: the JSON Schema of ``train --spec`` files.

The schema lists every stage known here (built-in and installed plugins) with its
settings; ``Pipeline.from_spec`` applies the same rules when a spec is used.
"""

from __future__ import annotations

import argparse
import json

from inspectkit.cli.command import EXIT_OK, Command, register_command


@register_command
class SpecSchema(Command):
    name = "spec-schema"
    help = "print the JSON Schema of pipeline spec files (train --spec)"
    order = 70
    takes_quiet = False
    takes_json = False
    takes_project = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--indent", type=int, default=2, help="spaces per level (0: one line)")

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.pipeline import Pipeline

        indent = args.indent if args.indent > 0 else None
        print(json.dumps(Pipeline.spec_schema(), indent=indent))
        return EXIT_OK
