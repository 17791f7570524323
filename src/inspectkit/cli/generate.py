"""``inspectkit generate``: synthesise N more samples of one class.

Augmentation or a learned VAE (:func:`inspectkit.recipes.generate_samples`); photos are
written as PNG files, wafer maps as one ragged ``.npz``
(:func:`inspectkit.sources.save_wafer_npz`) plus PNG previews. With ``--project`` they
go to ``PROJECT/generated/<class>/``, where ``train --project`` picks them up as
synthetic samples.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspectkit.cli.command import (
    EXIT_OK,
    Command,
    positive_int,
    register_command,
    seed_int,
    shown,
    wrap,
)
from inspectkit.cli.project import Project, out_folder, pick
from inspectkit.errors import DataError

#: Wafer maps previewed as PNG beside a generated ``.npz``.
PREVIEWS = 64


def _png(path: Path, img: Any) -> Path:
    from inspectkit.atomic import atomic_write

    atomic_write(path, lambda fh: img.save(fh, format="PNG"))
    return path


def save_generated(synth: Any, out: Path, cls: str) -> list[Path]:
    """PNG files (photos) or one ragged ``.npz`` plus PNG previews (wafer maps)."""
    import torch
    from PIL import Image

    from inspectkit.ops import to_float
    from inspectkit.sources import save_wafer_npz

    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe_cls = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cls)
    if synth.kind == "wafer":
        maps = [t[0].to(torch.uint8).numpy() for t in synth.images]
        written = [save_wafer_npz(out / f"{safe_cls}-{stamp}.npz", maps, [cls] * len(maps))]
        preview = out / "previews"
        preview.mkdir(exist_ok=True)
        for i, m in enumerate(maps[:PREVIEWS]):
            img = Image.fromarray(m * 127)
            img = img.resize((m.shape[1] * 4, m.shape[0] * 4), Image.NEAREST)
            _png(preview / f"{safe_cls}-{stamp}-{i:04d}.png", img)
        return written
    written = []
    for i in range(len(synth)):
        x = synth.images[i]
        if x.dtype != torch.uint8:
            x = (to_float(x).clamp(0, 1) * 255).round().to(torch.uint8)
        arr = x.numpy()
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
        written.append(_png(out / f"{safe_cls}-{stamp}-{i:05d}.png", Image.fromarray(arr)))
    return written


@register_command
class Generate(Command):
    name = "generate"
    help = "synthesise more samples of one class"
    order = 60

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data", metavar="PATH")
        parser.add_argument("--class", dest="cls", required=True, metavar="NAME")
        parser.add_argument("--n", type=positive_int, required=True)
        parser.add_argument("--method", choices=["augment", "vae"], default="augment")
        parser.add_argument("--out", metavar="DIR")
        parser.add_argument("--seed", type=seed_int, default=0)
        parser.add_argument("--steps", type=positive_int, default=None, help="VAE training steps")
        parser.add_argument("--size", type=positive_int, default=None)
        parser.add_argument("--channels", type=int, choices=[1, 3], default=None)

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.recipes import generation_pipeline, synthetic_samples
        from inspectkit.sources import load

        project = Project.from_args(args)
        data_path = pick(args.data, project, lambda p: p.data, "--data", "generate")
        out = out_folder(
            pick(args.out, project, lambda p: p.generated_class(args.cls), "--out", "generate")
        )
        data = load(data_path, purpose="train", channels=args.channels)
        try:
            pipe = generation_pipeline(
                data,
                args.cls,
                args.n,
                method=args.method,
                size=args.size,
                seed=args.seed,
                steps=args.steps,
                progress=self.progress(args),
            )
            self.say(
                args,
                f"generating {args.n} '{args.cls}' samples with {args.method} "
                f"from {len(data)} real ones",
            )
            synth = synthetic_samples(pipe.fit_run(data), args.cls, args.n)
        except DataError as exc:
            raise wrap(data_path, exc) from None
        written = save_generated(synth, out, args.cls)
        self.say(
            args,
            f"{len(synth)} samples written to {shown(out)} ({len(written)} files)",
            always=True,
        )
        return EXIT_OK
