"""``inspectkit weights``: ImageNet weights of a backbone, for machines without a network.

``inspectkit weights download NAME --to DIR`` (on a connected machine, or where the
``inspectkit[weights]`` extra is installed) writes NAME's ImageNet weights into DIR as a
state-dict file; copy it to the line's machine and pass ``--weights DIR/file``
(``weights=DIR/file`` in Python). ``inspectkit weights list`` says, per built-in
backbone, whether ``weights="imagenet"`` works here without a download.
"""

from __future__ import annotations

import argparse
import json

from inspectkit.cli.command import EXIT_OK, Command, UsageError, register_command

#: Backbones ``weights list`` reports on (any torchvision model name works for download).
LISTED = ("efficientnet_lite0", "resnet18", "wide_resnet50_2")


@register_command
class Weights(Command):
    name = "weights"
    help = "download ImageNet weights of a backbone for offline use, or list what is here"
    order = 78  # after the first seven, whose order in --help the tests pin
    takes_project = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=["download", "list"])
        parser.add_argument(
            "backbone", nargs="?", help="efficientnet_lite0 or a torchvision model name"
        )
        parser.add_argument("--to", metavar="DIR", help="folder to write the weights file to")

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.models.backbones import download_imagenet, imagenet_file

        if args.action == "list":
            rows = []
            for name in LISTED:
                file, path = imagenet_file(name)
                rows.append({"backbone": name, "file": file, "here": str(path) if path else None})
            if args.json:
                print(json.dumps({"weights": rows}))
            else:
                for r in rows:
                    where = r["here"] or "not here (download, or the weights extra)"
                    self.say(args, f"{r['backbone']:<20} {where}", always=True)
            return EXIT_OK
        if not args.backbone or not args.to:
            raise UsageError("inspectkit weights download: give NAME and --to DIR")
        path = download_imagenet(args.backbone, args.to)
        if args.json:
            print(json.dumps({"backbone": args.backbone, "file": str(path)}))
        else:
            self.say(
                args,
                f"{path}  (use: inspectkit train --backbone {args.backbone} --weights {path})",
                always=True,
            )
        return EXIT_OK
