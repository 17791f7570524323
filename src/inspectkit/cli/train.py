"""``inspectkit train``: fit a classifier or a good-only anomaly detector and save it.

Without ``--spec`` the pipeline is :func:`inspectkit.recipes.default_pipeline`; with it,
the spec file's pipeline (``Pipeline.from_spec``, the rules ``inspectkit spec-schema``
publishes), with ``--epochs``, ``--seed`` and ``--quiet`` applied through
:func:`inspectkit.recipes.override`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from inspectkit.cli.card import KEEP_PREVIOUS, model_task, save_model, task_of
from inspectkit.cli.command import (
    EXIT_OK,
    Command,
    UsageError,
    check_choice,
    positive_int,
    register_command,
    seed_int,
    shown,
    wrap,
)
from inspectkit.cli.project import SPLIT_FILE, Project, out_folder, pick, read_json
from inspectkit.errors import InspectkitError


def check_method(method: str) -> str:
    """``method`` if it names a registered detector (imports the anomaly package: call it in
    ``run``); a ``UsageError`` listing the detectors otherwise."""
    from inspectkit.anomaly import available_detectors

    return check_choice(method, available_detectors(), "inspectkit train: --method")


def spec_pipeline(path: Path, *, epochs: int | None, seed: int | None, progress: bool) -> Any:
    """The pipeline of a spec file, with the command-line overrides applied.

    Errors (not JSON, unknown stage, a setting the stage refuses) are one line naming the
    file, then the stage and the setting, as ``Pipeline.from_spec`` and ``set_params``
    report them.
    """
    from inspectkit.pipeline import Pipeline
    from inspectkit.recipes import override

    spec = read_json(path, "pipeline spec")
    try:
        pipe = Pipeline.from_spec(spec)
        return override(pipe, epochs=epochs, seed=seed, progress=None if progress else False)
    except InspectkitError as exc:
        raise wrap(path, exc) from None


def check_out(out: Path, task: str, *, replace: bool) -> None:
    """Refuse, before anything is trained, an ``--out`` that a save would refuse (a folder
    holding anything but a saved model: a project, a data folder) and, unless ``replace``,
    one holding a model of the other task or a model that cannot be read."""
    from inspectkit.atomic import resolve_target
    from inspectkit.modelfolder import check_replaceable

    try:
        check_replaceable(resolve_target(out))
    except InspectkitError as exc:
        raise wrap(out, exc) from None
    try:
        existing = model_task(out)
    except UsageError as exc:
        if replace:
            return
        raise UsageError(f"{exc}; pass --replace to replace it, or choose another --out") from None
    if existing is not None and existing != task and not replace:
        raise UsageError(
            f"{shown(out)}: holds a {existing} model; training a {task} model would replace it: "
            "pass --replace to do so, or choose another --out"
        )


def _rate(text: str) -> float:
    """argparse type: a share strictly between 0 and 1."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a share between 0 and 1, got {text!r}"
        ) from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a share strictly between 0 and 1, got {v}")
    return v


def _region_rate(text: str) -> float:
    """argparse type: a share of good map pixels, in (0, REGION_TAIL_SHARE]."""
    from inspectkit.anomaly.threshold import REGION_TAIL_SHARE

    v = _rate(text)
    if v > REGION_TAIL_SHARE:
        raise argparse.ArgumentTypeError(
            f"expected a share of good pixels of at most {REGION_TAIL_SHARE}, got {v}"
        )
    return v


def _seed_of(pipe: Any, given: int | None) -> int:
    if given is not None:
        return given
    seeds = [v for k, v in pipe.get_params().items() if k.partition("__")[2] == "seed"]
    return int(seeds[0]) if seeds else 0


@register_command
class Train(Command):
    name = "train"
    help = "train a classifier or an anomaly detector"
    order = 20

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--data",
            metavar="PATH",
            help="class folders, MVTec / magnetic-tile / Pascal-VOC folder, wafer .npz or LSWMD.pkl",
        )
        parser.add_argument("--task", choices=["classify", "anomaly"], default="classify")
        parser.add_argument("--out", metavar="MODEL_DIR", help="folder to save the model to")
        parser.add_argument(
            "--spec", metavar="pipeline.json", help="pipeline spec (see inspectkit spec-schema)"
        )
        parser.add_argument("--epochs", type=positive_int, default=None)
        parser.add_argument(
            "--seed",
            type=seed_int,
            default=None,
            help="seed of every stage, 0 .. 2**63-1 (default 0, or the spec's)",
        )
        parser.add_argument(
            "--size", type=positive_int, default=None, help="images are resized to SIZE×SIZE"
        )
        parser.add_argument(
            "--channels", type=int, choices=[1, 3], default=None, help="force gray (1) or RGB (3)"
        )
        parser.add_argument(
            "--keep",
            type=int,
            default=KEEP_PREVIOUS,
            metavar="N",
            help=f"previous models kept as MODEL_DIR.prev ... (default {KEEP_PREVIOUS}, 0: none)",
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="replace a model of the other task (or one that cannot be read) at --out",
        )
        parser.add_argument(
            "--method",
            default=None,
            help="anomaly detector of --task anomaly: default (the validated recipe: PatchCore + "
            "PaDiM on pretrained features, CutPaste without weights), auto (the best of several on "
            "held-out goods vs real or synthetic defects), patchcore, padim, autoencoder, "
            "selfsupervised, ensemble, or an installed one",
        )
        detector = parser.add_argument_group("backbone, weights and threshold")
        detector.add_argument(
            "--backbone", default=None, help="detector backbone / classifier arch (default: auto)"
        )
        detector.add_argument(
            "--weights",
            default=None,
            metavar="imagenet|FILE",
            help="ImageNet weights (the inspectkit[weights] extra or torch's cache) or a file",
        )
        detector.add_argument(
            "--false-alarm-rate", type=_rate, default=None, metavar="R",
            help="detector: share of good parts the threshold may flag (default 0.005)",
        )  # fmt: skip
        detector.add_argument(
            "--threshold", type=float, default=None, help="detector: a fixed threshold instead"
        )
        detector.add_argument(
            "--review-rate", type=_rate, default=None, metavar="R",
            help="detector: review band (verdict review) flagging this share of good parts",
        )  # fmt: skip
        detector.add_argument(
            "--review-threshold", type=float, default=None, metavar="SCORE",
            help="detector: review band from this score up to the threshold (not with --review-rate)",
        )  # fmt: skip
        detector.add_argument(
            "--region-rate", type=_region_rate, default=None, metavar="R",
            help="detector: share of good map pixels inside a defect region (default 0.001)",
        )  # fmt: skip
        detector.add_argument(
            "--region-threshold", type=float, default=None, metavar="VALUE",
            help="detector: map value above which a flagged part's pixels form its region",
        )  # fmt: skip
        detector.add_argument(
            "--tile", type=positive_int, default=None, metavar="PX",
            help="detector: inspect PX×PX tiles at native resolution",
        )  # fmt: skip
        detector.add_argument(
            "--group-by", default=None, metavar="KEY",
            help="detector: one model per product named by this sample field or meta key",
        )  # fmt: skip

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.recipes import default_pipeline
        from inspectkit.records import ImageSet
        from inspectkit.sources import detect, load

        project = Project.from_args(args)
        data_path = pick(args.data, project, lambda p: p.data, "--data", "train")
        out = out_folder(pick(args.out, project, lambda p: p.model(args.name), "--out", "train"))
        check_out(out, args.task, replace=args.replace)
        if args.keep < 0:
            raise UsageError(f"inspectkit train: --keep must be 0 or more, got {args.keep}")
        method = check_method(args.method) if args.method is not None else None
        progress = self.progress(args)
        spec = None
        if args.spec:
            spec = spec_pipeline(
                Path(args.spec), epochs=args.epochs, seed=args.seed, progress=progress
            )
            if task_of(spec) != args.task:
                raise UsageError(
                    f"{args.spec}: this pipeline does the {task_of(spec)} task, not {args.task}"
                )
        started = time.perf_counter()
        layout = detect(data_path)
        data = load(data_path, purpose="train", task=args.task, channels=args.channels)
        held_out = None
        if project is not None and args.data is None:  # the project's own data: hold out
            test = project.held_out(data, _seed_of(spec, args.seed) if spec else args.seed or 0)
            keep = [i for i, s in enumerate(data.samples) if s.id not in test]
            if len(keep) < len(data):
                if not keep:
                    raise UsageError(f"{shown(project.split_file)}: holds out every sample")
                held_out = len(data) - len(keep)
                data = data.subset(keep)
                self.say(args, f"{held_out} samples held out for evaluate ({SPLIT_FILE})")
        if project is not None and args.task == "classify":
            gen = project.load_generated(data, args.channels)
            if gen is not None:
                data = ImageSet.concat([data, gen])
                self.say(args, f"+ {len(gen)} generated samples from {shown(project.generated)}")
        counts = data.class_counts(include_synthetic=False)
        self.say(
            args,
            f"training a {args.task} model on {len(data)} samples from {shown(data_path)} "
            f"({data.kind}; " + ", ".join(f"{c} {n}" for c, n in counts.items() if n) + ")",
        )
        pipe = spec or default_pipeline(
            args.task,
            kind=data.kind,
            n_train=len(data),
            size=args.size,
            epochs=args.epochs,
            seed=args.seed or 0,
            method=method,
            progress=progress,
            backbone=args.backbone,
            weights=args.weights,
            false_alarm_rate=args.false_alarm_rate,
            threshold=args.threshold,
            review_rate=args.review_rate,
            review_threshold=args.review_threshold,
            region_rate=args.region_rate,
            region_threshold=args.region_threshold,
            tile=args.tile,
            group_by=args.group_by,
        )
        pipe.fit(data)
        card = save_model(
            out,
            pipe,
            data,
            task=args.task,
            source=str(data_path),
            seed=_seed_of(pipe, args.seed),
            layout=layout,
            started=started,
            keep=args.keep,
            held_out=held_out,
        )
        if args.json:
            print(json.dumps({"model": shown(out), **card}))
        else:
            self.say(args, f"model saved to {shown(out)} ({card['seconds']:.0f} s)", always=True)
        return EXIT_OK
