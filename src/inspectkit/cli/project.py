"""The project folder of the command line.

A project keeps one line's work in one place::

    PROJECT/data/<class>/         the real samples
    PROJECT/generated/<class>/    what `inspectkit generate` wrote (trains, never scored)
    PROJECT/models/<name>/        saved pipelines (+ inspectkit-model.json, see cli/card.py)
    PROJECT/reports/<name>/       report.html / report.json

A project keeps a held-out test split in ``PROJECT/split.json`` (:meth:`Project.held_out`:
made once by the first ``train --project``, seeded, stratified by class and lot); the
training set leaves it out, and ``evaluate --project`` scores only what the model was not
trained on (:func:`inspectkit.cli.card.seen_in_training` counts what it shares with the
training set all the same).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspectkit.cli.command import UsageError

#: The project's held-out split: ``PROJECT/split.json``.
SPLIT_FILE = "split.json"
SPLIT_FORMAT = "inspectkit.project-split"
#: Share of each class (of each lot, where samples have one) held out for testing.
TEST_FRACTION = 0.2
#: Samples a class needs before it gives some to the test split (then at least two).
MIN_SPLIT_CLASS = 10


@dataclass(frozen=True)
class Project:
    """Paths of a project folder (see the module docstring)."""

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> Project:
        path = Path(root)
        if not path.is_dir():
            raise UsageError(f"{path}: project folder not found (expected {path}/data/<class>/)")
        return cls(path)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Project | None:
        """The ``--project`` folder, or ``None`` when not given."""
        root = getattr(args, "project", None)
        return None if root is None else cls.open(root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    def generated_class(self, cls: str) -> Path:
        return self.generated / cls

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def report(self, name: str) -> Path:
        return self.root / "reports" / name

    @property
    def split_file(self) -> Path:
        return self.root / SPLIT_FILE

    def held_out(self, data: Any, seed: int) -> set[str]:
        """Ids of the project's test samples: read from ``split.json``, or, the first time,
        drawn from ``data`` (stratified by label, lots kept together, ``seed``) and stored.

        Only classes with at least :data:`MIN_SPLIT_CLASS` samples give test samples (a
        class of six cannot spare one); while no class has that many no split is stored,
        and evaluations note that they include training samples. Samples added to
        ``data/`` after the split was made are not in it: they train."""
        if self.split_file.is_file():
            split = read_json(self.split_file, "project split")
            test = split.get("test") if isinstance(split, dict) else None
            if not isinstance(test, list) or split.get("format") != SPLIT_FORMAT:
                raise UsageError(
                    f"{self.split_file}: not a project split (format {SPLIT_FORMAT!r} with a "
                    '"test" list of sample ids); move it away to draw a new one'
                )
            return {str(t) for t in test}
        from inspectkit.atomic import atomic_write
        from inspectkit.stages.wrangle import assign_splits

        counts = Counter(s.label for s in data.samples)
        big = [s for s in data.samples if counts[s.label] >= MIN_SPLIT_CLASS]
        if not big:
            return set()
        splits = assign_splits(
            big, (1 - TEST_FRACTION, 0.0, TEST_FRACTION), seed=seed, group_by="group"
        )
        test = sorted(s.id for s, split in zip(big, splits) if split == "test")
        record = {
            "format": SPLIT_FORMAT,
            "seed": seed,
            "test_fraction": TEST_FRACTION,
            "made_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "samples": len(data),
            "test": test,
        }
        atomic_write(self.split_file, json.dumps(record, indent=1))
        return set(test)

    def load_generated(self, data: Any, channels: int | None = None) -> Any:
        """Samples under ``generated/<class>/`` flagged ``synthetic`` (``None`` if none),
        with the classes of the real set ``data``."""
        from inspectkit.records import ImageSet
        from inspectkit.sources import load_image_folder, load_wafer_maps

        folder = self.generated
        if not folder.is_dir():
            return None
        if data.kind == "wafer":
            files = sorted(folder.glob("*/*.npz"))
            if not files:
                return None
            gen = ImageSet.concat([load_wafer_maps(f, classes=list(data.classes)) for f in files])
        else:
            from inspectkit.sources.folders import CLASS_FOLDERS

            if not CLASS_FOLDERS.detect(folder):
                return None
            gen = load_image_folder(folder, channels=channels)
            unknown = [c for c in gen.classes if c not in data.classes]
            if unknown:
                raise UsageError(
                    f"{folder}: generated classes {unknown} have no real samples under data/"
                )
        samples = [
            s.model_copy(update={"synthetic": True, "id": f"generated/{s.id}"}) for s in gen.samples
        ]
        return gen.replace(samples=samples, classes=list(data.classes))


def pick(
    value: str | None,
    project: Project | None,
    default: Callable[[Project], Path],
    flag: str,
    command: str,
) -> Path:
    """``value``, else the project's default path; a ``UsageError`` when neither is given."""
    if value is not None:
        return Path(value)
    if project is not None:
        return default(project)
    raise UsageError(f"inspectkit {command}: {flag} is required (or give --project)")


def out_folder(path: Path) -> Path:
    """``path`` as an output folder: it may not be a file."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is not a folder")
    return path


# ---------------------------------------------------------------------- JSON files
def read_json(path: Path, what: str) -> Any:
    """Parsed JSON of ``path``; a one-line ``UsageError`` naming the file otherwise."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc})") from None
    return parse_json(raw, path, what)


def parse_json(raw: bytes, path: Path, what: str) -> Any:
    """``raw`` parsed as JSON; a one-line ``UsageError`` naming ``path`` otherwise."""
    try:
        return json.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}: {what} is not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from None


__all__ = [
    "MIN_SPLIT_CLASS",
    "SPLIT_FILE",
    "TEST_FRACTION",
    "Project",
    "out_folder",
    "parse_json",
    "pick",
    "read_json",
]
