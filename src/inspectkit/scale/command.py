"""``inspectkit predict --out DIR [--engine ray]``: an archive run from the command line.

The ``predict`` command adds these options and hands over to :func:`run_archive` when
``--out`` is given: rows go to Parquet under ``DIR`` (resumable, one per input, errors
as rows) instead of the terminal, and the summary is printed at the end.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

#: Schema tag of ``inspectkit predict --out DIR --json``.
ARCHIVE_SCHEMA = "inspectkit.predict-archive/1"


def add_archive_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--engine``, ``--address``, ``--workers``, ``--batch-size``,
    ``--retry-errors``."""
    from inspectkit.cli.command import positive_int

    group = parser.add_argument_group("archive runs (Parquet results, resumable)")
    group.add_argument(
        "--out",
        metavar="DIR",
        help="write one Parquet row per input under DIR (a path or a pyarrow URI such as "
        "s3://bucket/run) instead of printing; a rerun scores only what is missing, and "
        "unreadable inputs become rows with their error",
    )
    group.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default); ray: a pool of Ray workers, one model each "
        "(pip install 'inspectkit[ray]'); needs --out",
    )
    group.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to use (auto, ray://host:10001); default: a local Ray",
    )
    group.add_argument(
        "--workers", type=positive_int, metavar="N", help="Ray workers (default: one per CPU)"
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="inputs per chunk (default 256 for a classifier, 16 for a detector)",
    )
    group.add_argument(
        "--retry-errors",
        action="store_true",
        help="score again the inputs whose row in --out is an error",
    )


def wants_archive(args: argparse.Namespace) -> bool:
    """Whether ``predict`` runs as an archive run (``--out``); a Ray engine, address or
    worker count without ``--out`` is a usage error."""
    from inspectkit.cli.command import UsageError

    if args.out is not None:
        return True
    given = [
        flag
        for flag, on in (
            ("--engine ray", args.engine == "ray"),
            ("--address", args.address is not None),
            ("--workers", args.workers is not None),
            ("--batch-size", args.batch_size is not None),
            ("--retry-errors", args.retry_errors),
        )
        if on
    ]
    if given:
        raise UsageError(
            f"inspectkit predict: {given[0]} is for archive runs, which write Parquet: "
            "give --out DIR"
        )
    return False


def run_archive(args: argparse.Namespace, model_dir: Path, progress: bool) -> dict[str, Any]:
    """Run ``predict --out``; print the summary (or its JSON); the summary as a dict.

    Raises:
        UsageError: no inputs, or nothing could be scored.
    """
    from inspectkit.cli.command import UsageError, shown
    from inspectkit.scale import inspect_archive

    if not args.inputs:
        raise UsageError("inspectkit predict: give at least one image, folder or wafer file")
    summary = inspect_archive(
        model_dir,
        args.inputs,
        args.out,
        engine=args.engine,
        address=args.address,
        num_workers=args.workers,
        batch_size=args.batch_size,
        retry_errors=args.retry_errors,
        progress=progress,
    )
    out = {"schema": ARCHIVE_SCHEMA, **asdict(summary)}
    out["inputs_per_second"] = summary.inputs_per_second
    if args.json:
        print(json.dumps(out))
    else:  # the run's result: printed with --quiet too, as predict's rows are
        for line in summary.lines():
            print(shown(line), flush=True)
    if summary.scored and summary.scored == summary.errors:
        raise UsageError(
            f"inspectkit predict: nothing could be scored ({summary.errors} inputs with "
            f"errors; see the error column in {shown(args.out)})"
        )
    return out


__all__ = ["ARCHIVE_SCHEMA", "add_archive_arguments", "run_archive", "wants_archive"]
