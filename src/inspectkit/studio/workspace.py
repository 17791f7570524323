"""Projects on disk, as the studio manages them.

A studio project is a command-line project folder (:class:`inspectkit.cli.project.Project`:
``data/<class>/``, ``generated/<class>/``, ``models/<name>/``, ``reports/<name>/``) plus
``.studio/`` (the project's task in ``project.json``, job records in ``jobs/``, upload
scratch space in ``tmp/``), so ``inspectkit train --project DIR`` and the studio work on
one folder in turn. :class:`Workspace` is the folder holding projects; every name that
comes from a browser goes through :mod:`inspectkit.studio.safety`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

from inspectkit.atomic import atomic_write
from inspectkit.cli.card import CARD_FILE
from inspectkit.cli.project import Project, parse_json
from inspectkit.errors import DataError
from inspectkit.studio.safety import (
    IMAGE_SUFFIXES,
    NotFound,
    StudioError,
    UnsafeName,
    UploadLimits,
    check_name,
    inside,
    is_plain_dir,
    is_plain_file,
    unique_path,
    upload_name,
)

TASKS = ("classify", "anomaly")
STUDIO_DIR = ".studio"
SETTINGS_FILE = "project.json"
SETTINGS_FORMAT = "inspectkit.studio-project/1"
#: Folders a project download holds.
EXPORTED = ("data", "generated", "models", "reports")
#: Model name the studio trains (``PROJECT/models/model``, the command line's default).
MODEL_NAME = "model"
#: Class folders of a new good-only project.
GOOD_CLASS = "good"
#: Side of a thumbnail in pixels.
THUMB_SIDE = 112
#: A class with fewer images than this share of the median class is flagged as small.
SMALL_SHARE = 0.5


def check_task(task: object) -> str:
    if task not in TASKS:
        raise StudioError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return str(task)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@dataclass
class Workspace:
    """The folder whose sub-folders are projects."""

    home: Path

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()

    def projects(self) -> list[dict[str, Any]]:
        """Every project folder here (a ``data/`` or ``.studio/`` folder inside), by name."""
        if not is_plain_dir(self.home):
            return []
        found = []
        for child in sorted(self.home.iterdir()):
            if child.name.startswith(".") or not is_plain_dir(child):
                continue
            if is_plain_dir(child / "data") or is_plain_dir(child / STUDIO_DIR):
                try:
                    found.append(StudioProject(child).summary())
                except StudioError:
                    continue
        return found

    def path_of(self, name: str) -> Path:
        return inside(self.home, name, what="project name")

    def open(self, name: str) -> StudioProject:
        path = self.path_of(name)
        if not is_plain_dir(path):
            raise NotFound(f"no project {name!r} in {self.home}")
        return StudioProject(path)

    def create(self, name: str, task: str) -> StudioProject:
        """A new project folder ``home/name`` (an existing empty folder is taken over)."""
        check_task(task)
        path = self.path_of(name)
        if path.exists() and (not is_plain_dir(path) or any(path.iterdir())):
            raise StudioError(
                f"{name!r} already exists in {self.home}; open it or pick another name"
            )
        return StudioProject.create(path, task)


class StudioProject:
    """One project folder: its task, classes, images, generated samples and model."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.paths = Project(self.root)
        self.name = self.root.name

    # ------------------------------------------------------------------ settings
    @classmethod
    def create(cls, root: Path, task: str) -> StudioProject:
        check_task(task)
        for sub in ("data", "generated", "models", "reports", STUDIO_DIR):
            (root / sub).mkdir(parents=True, exist_ok=True)
        project = cls(root)
        project.write_settings({"task": task})
        if task == "anomaly":
            project.add_class(GOOD_CLASS)
        return project

    @property
    def studio_dir(self) -> Path:
        return self.root / STUDIO_DIR

    def settings(self) -> dict[str, Any]:
        path = self.studio_dir / SETTINGS_FILE
        if is_plain_file(path):
            raw = parse_json(path.read_bytes(), path, "studio settings")
            if isinstance(raw, dict) and raw.get("task") in TASKS:
                return raw
        return {"format": SETTINGS_FORMAT, "task": self._guess_task()}

    def write_settings(self, changes: dict[str, Any]) -> None:
        settings = {**self.settings(), **changes, "format": SETTINGS_FORMAT}
        self.studio_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.studio_dir / SETTINGS_FILE, json.dumps(settings, indent=2))

    @property
    def task(self) -> str:
        return str(self.settings()["task"])

    def _guess_task(self) -> str:
        """A command-line project without studio settings: its model card's task, else
        good-only when every class is a good label."""
        card = self.model_card()
        if card.get("task") in TASKS:
            return str(card["task"])
        from inspectkit.metrics.anomaly import DEFAULT_GOOD_LABELS

        names = self.class_names()
        return "anomaly" if names and all(n in DEFAULT_GOOD_LABELS for n in names) else "classify"

    def summary(self) -> dict[str, Any]:
        classes = self.classes()
        return {
            "name": self.name,
            "task": self.task,
            "classes": len(classes),
            "images": sum(c["images"] for c in classes),
            "has_model": self.has_model(),
        }

    # ------------------------------------------------------------------ classes
    def class_names(self) -> list[str]:
        if not is_plain_dir(self.paths.data):
            return []
        return sorted(
            d.name
            for d in self.paths.data.iterdir()
            if is_plain_dir(d) and not d.name.startswith(".")
        )

    def class_dir(self, cls: str, area: str = "data") -> Path:
        if area not in ("data", "generated"):
            raise NotFound(f"no image area {area!r}")
        return inside(self.root / area, cls, what="class name")

    def require_class(self, cls: str) -> Path:
        folder = self.class_dir(cls)
        if not is_plain_dir(folder):
            raise NotFound(f"no class {cls!r} in project {self.name!r}")
        return folder

    def images(self, cls: str, area: str = "data") -> list[str]:
        folder = self.class_dir(cls, area)
        if not is_plain_dir(folder):
            return []
        return sorted(p.name for p in folder.iterdir() if _is_image(p) and is_plain_file(p))

    def classes(self) -> list[dict[str, Any]]:
        """Per class: name, real images, generated images, and whether it is among the
        smallest (fewer than :data:`SMALL_SHARE` of the median class)."""
        rows = [
            {
                "name": c,
                "images": len(self.images(c)),
                "generated": len(self.images(c, "generated")),
            }
            for c in self.class_names()
        ]
        counts = [r["images"] for r in rows]
        median = statistics.median(counts) if counts else 0
        for r in rows:
            r["small"] = len(rows) > 1 and r["images"] < SMALL_SHARE * median
        return rows

    def balance(self) -> dict[str, Any]:
        """Imbalance at a glance: largest / smallest class ratio and the smallest classes."""
        rows = [r for r in self.classes() if r["images"] > 0]
        if len(rows) < 2:
            return {"ratio": None, "smallest": [r["name"] for r in rows if r.get("small")]}
        low = min(r["images"] for r in rows)
        high = max(r["images"] for r in rows)
        return {
            "ratio": round(high / low, 2),
            "smallest": [r["name"] for r in self.classes() if r["small"]],
        }

    def add_class(self, cls: str) -> str:
        name = check_name(cls, "class name")
        folder = self.class_dir(name)
        if folder.exists():
            raise StudioError(f"class {name!r} already exists")
        folder.mkdir(parents=True)
        return name

    def rename_class(self, cls: str, new: str) -> str:
        src = self.require_class(cls)
        name = check_name(new, "class name")
        dst = self.class_dir(name)
        if dst.exists():
            raise StudioError(f"class {name!r} already exists")
        os.rename(src, dst)
        gen_src, gen_dst = self.class_dir(cls, "generated"), self.class_dir(name, "generated")
        if is_plain_dir(gen_src) and not gen_dst.exists():
            os.rename(gen_src, gen_dst)
        return name

    def delete_class(self, cls: str) -> None:
        folder = self.require_class(cls)
        shutil.rmtree(folder)
        self.clear_generated(cls)

    def clear_generated(self, cls: str) -> int:
        folder = self.class_dir(cls, "generated")
        if not is_plain_dir(folder):
            return 0
        n = len(self.images(cls, "generated"))
        shutil.rmtree(folder)
        return n

    # ------------------------------------------------------------------ images
    def add_images(
        self, cls: str, files: list[tuple[str, bytes]], limits: UploadLimits
    ) -> list[dict[str, Any]]:
        """Save uploads into ``data/<cls>/``: each one checked (name, size, pixels) and
        decoded by the library's reader before it is placed. One result per file:
        ``{"file", "saved"}`` or ``{"file", "error"}`` (the message shown on screen)."""
        folder = self.require_class(cls)
        results = []
        for raw_name, payload in files:
            try:
                saved = self.save_upload(folder, raw_name, payload, limits)
                results.append({"file": raw_name, "saved": saved})
            except (StudioError, DataError) as exc:
                results.append({"file": raw_name, "error": str(exc)})
        return results

    def save_upload(self, folder: Path, raw_name: str, payload: bytes, limits: UploadLimits) -> str:
        """Check one uploaded file (name, size), decode it with the library's reader in the
        scratch folder (its header first, against the library's pixel limit), and link it
        into ``folder`` under a free safe name."""
        from inspectkit.sources._common import decode_array

        name = upload_name(raw_name)
        limits.check_file(name, len(payload))
        scratch = self.studio_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=scratch, suffix=Path(name).suffix)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            try:
                decode_array(tmp)  # header and pixel limit first (sources.Limits), then pixels
            except DataError as exc:
                raise DataError(str(exc).replace(str(tmp), name)) from None
            while True:  # os.link fails when another upload took the name meanwhile
                target = unique_path(folder, name)
                try:
                    os.link(tmp, target)
                    break
                except FileExistsError:
                    continue
            return target.name
        finally:
            tmp.unlink(missing_ok=True)

    def image_path(self, cls: str, file: str, area: str = "data") -> Path:
        path = (
            inside(self.root / area, cls, file, what="file name")
            if area
            in (
                "data",
                "generated",
            )
            else None
        )
        if path is None or not is_plain_file(path) or not _is_image(path):
            raise NotFound(f"no image {file!r} in {area}/{cls}")
        return path

    def delete_image(self, cls: str, file: str, area: str = "data") -> None:
        self.image_path(cls, file, area).unlink()

    def thumbnail(self, cls: str, file: str, area: str = "data", side: int = THUMB_SIDE) -> bytes:
        """A PNG thumbnail of one image, decoded by the library's reader."""
        from PIL import Image

        from inspectkit.sources._common import decode_array

        arr = decode_array(self.image_path(cls, file, area))
        if arr.dtype.kind == "f":
            arr = (arr.clip(0, 1) * 255).round().astype("uint8")
        img = Image.fromarray(arr)
        img.thumbnail((side, side))
        buf = BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    # ------------------------------------------------------------------ model
    @property
    def model_dir(self) -> Path:
        return self.paths.model(MODEL_NAME)

    def has_model(self) -> bool:
        return is_plain_file(self.model_dir / "pipeline.json")

    def model_card(self) -> dict[str, Any]:
        """The model card saved with the project's model (``{}`` without one), read from
        ``pipeline.json``'s attachments without loading the weights."""
        spec_path = self.model_dir / "pipeline.json"
        card_path = self.model_dir / CARD_FILE
        if not is_plain_file(spec_path) or not is_plain_file(card_path):
            return {}
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError):
            return {}
        return card if isinstance(card, dict) else {}

    def model_info(self) -> dict[str, Any]:
        if not self.has_model():
            return {"exists": False}
        card = self.model_card()
        stat = (self.model_dir / "pipeline.json").stat()
        return {
            "exists": True,
            "task": card.get("task"),
            "classes": card.get("classes"),
            "trained_at": card.get("trained_at")
            or datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds"),
            "samples": card.get("samples"),
            "previous": is_plain_dir(self.model_dir.with_name(self.model_dir.name + ".prev")),
        }

    # ------------------------------------------------------------------ downloads
    def zip_folders(self, folders: list[Path], arc_root: Path) -> Path:
        """A zip of the plain files under ``folders`` (links left out), named relative to
        ``arc_root``, in the project's scratch folder; the caller deletes it."""
        scratch = self.studio_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=scratch, suffix=".zip")
        os.close(fd)
        out = Path(name)
        try:
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
                for folder in folders:
                    if not is_plain_dir(folder):
                        continue
                    for dirpath, dirnames, filenames in os.walk(folder):
                        dirnames[:] = sorted(
                            d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))
                        )
                        for f in sorted(filenames):
                            path = Path(dirpath) / f
                            if is_plain_file(path):
                                zf.write(path, path.relative_to(arc_root).as_posix())
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        return out

    def project_zip(self) -> Path:
        """The project as a zip: ``NAME/data``, ``generated``, ``models``, ``reports``."""
        return self.zip_folders([self.root / f for f in EXPORTED], self.root.parent)

    def model_zip(self) -> Path:
        if not self.has_model():
            raise NotFound("this project has no trained model yet")
        return self.zip_folders([self.model_dir], self.model_dir.parent)

    def clean_scratch(self, older_than: float = 3600.0) -> None:
        """Remove scratch files (uploads in flight, downloads) older than ``older_than`` s."""
        scratch = self.studio_dir / "tmp"
        if not is_plain_dir(scratch):
            return
        now = time.time()
        for p in scratch.iterdir():
            try:
                if is_plain_file(p) and now - p.stat().st_mtime > older_than:
                    p.unlink()
            except OSError:
                continue


__all__ = [
    "EXPORTED",
    "GOOD_CLASS",
    "MODEL_NAME",
    "STUDIO_DIR",
    "TASKS",
    "StudioProject",
    "UnsafeName",
    "Workspace",
    "check_task",
]
