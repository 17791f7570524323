"""Data layouts by name: how a path is recognised and loaded.

Each loader module registers a :class:`Layout` beside its loader (``wafer.py`` the wafer
``.npz``, ``voc.py`` Pascal-VOC, ...). :func:`detect` asks every layout, highest
``priority`` first, whether it recognises a path; :func:`load` loads it for a purpose:

* ``"train"`` / ``"evaluate"``: a labelled set (for ``task="anomaly"`` and ``"train"``,
  the good samples only; an MVTec folder gives ``train/good`` or its ``test`` split);
* ``"predict"``: every input, labels not needed, decoded lazily where the layout allows.

An installed package adds a layout under the entry-point group ``inspectkit.sources``::

    [project.entry-points."inspectkit.sources"]
    csv-list = "my_line.layouts:CSV_LIST"      # a Layout object

Example:
    >>> from inspectkit import sources
    >>> sources.detect("WM811K_test_data.npz")  # doctest: +SKIP
    'wafer-npz'
    >>> steel = sources.load("neu_det", purpose="train")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from inspectkit.errors import DataError
from inspectkit.registry import Registry
from inspectkit.sources.limits import Limits, applies_limits

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from inspectkit.records import ImageSet

OnError = Literal["raise", "skip"]
Purpose = Literal["train", "evaluate", "predict"]
Task = Literal["classify", "anomaly"]

ENTRY_POINT_GROUP = "inspectkit.sources"
PURPOSES = ("train", "evaluate", "predict")
TASKS = ("classify", "anomaly")


@dataclass(frozen=True)
class Layout:
    """One data layout.

    Attributes:
        name: Registry key, also written to the model card (``"voc"``, ``"wafer-npz"``).
        detect: ``detect(path) -> bool``; cheap (names and listings, no decoding) and
            never raising for a path of another layout.
        load: ``load(path, *, purpose, task, channels, limit) -> ImageSet``. ``limit``
            caps the samples read (per class where the layout is organised by class);
            ``channels`` is 1, 3 or ``None`` (keep); a layout with fixed channels may
            ignore it.
        priority: Layouts are asked highest first (built-ins: 10 to 90; a specific
            plugin layout takes more than 20, the generic class-folder layout, to be
            asked before it).
        description: One line for messages and the documentation.
        on_error: Whether ``load`` also takes ``on_error="raise"|"skip"`` (skip unreadable
            files, listing them in ``ImageSet.skipped``); every built-in layout does.
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., ImageSet]
    priority: int = 50
    description: str = ""
    on_error: bool = False


LAYOUTS: Registry[Layout] = Registry(
    "layout",
    ENTRY_POINT_GROUP,
    check=lambda obj: isinstance(obj, Layout),
    scan="inspectkit.sources",
    error=DataError,
)


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def register_layout(layout: Layout) -> Layout:
    """Register ``layout`` under its name (a layout in code; packages use the entry point)."""
    return LAYOUTS.register(layout, name=layout.name)


def get_layout(name: str) -> Layout:
    """The layout registered as ``name``; a ``DataError`` lists the known names otherwise."""
    return LAYOUTS.get(name)


def available_layouts() -> list[str]:
    """Layout names in the order :func:`detect` asks them."""
    return [lay.name for lay in _ordered()]


def _ordered() -> list[Layout]:
    return sorted((lay for _, lay in LAYOUTS.items()), key=lambda lay: (-lay.priority, lay.name))


def detect(path: str | os.PathLike[str]) -> str:
    """The name of the layout ``path`` holds.

    Raises:
        DataError: the path does not exist or no layout recognises it.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    for layout in _ordered():
        if layout.detect(p):
            return layout.name
    if p.is_file():
        raise DataError(
            f"{p}: unrecognised file type {p.suffix.lower() or '(none)'}; expected a wafer .npz, "
            "LSWMD.pkl, an image file or a folder"
        )
    raise DataError(
        f"{p}: no images found; expected one sub-folder per class holding image files "
        "(or an MVTec / magnetic-tile / Pascal-VOC folder, a wafer .npz, LSWMD.pkl)"
    )


@applies_limits
def load(
    path: str | os.PathLike[str],
    *,
    purpose: Purpose = "train",
    task: Task = "classify",
    channels: int | None = None,
    limit: int | None = None,
    layout: str | None = None,
    on_error: OnError = "raise",
    limits: Limits | Mapping[str, int] | None = None,
) -> ImageSet:
    """Load ``path`` in the layout :func:`detect` finds (or the one named by ``layout``).

    Args:
        path: File or folder.
        purpose: ``"train"``, ``"evaluate"`` (labelled sets) or ``"predict"``.
        task: ``"classify"`` or ``"anomaly"``; an anomaly training set keeps only the good
            samples (``meta["anomalous"]`` when the layout sets it, else the label).
        channels: 1 (gray), 3 (RGB) or ``None`` (keep).
        limit: Read at most this many samples (per class where the layout has classes).
        layout: Skip detection and use this layout.
        on_error: ``"raise"`` stops at the first unreadable file; ``"skip"`` leaves it out
            and lists ``"<file>: <reason>"`` in ``ImageSet.skipped`` (layouts that take
            it, see :attr:`Layout.on_error`; others raise, with a warning).
        limits: Size limits for this call (:class:`~inspectkit.sources.limits.Limits` or
            a mapping of the ones to change); default: the process-wide limits.

    Raises:
        DataError: unknown layout, unreadable input, no labels where labels are needed,
            no good samples to train an anomaly model on.
        SizeLimitError: a file claims more than the limits allow.
    """
    check_on_error(on_error)
    if purpose not in PURPOSES:
        raise DataError(f"purpose must be one of {list(PURPOSES)}, got {purpose!r}")
    if task not in TASKS:
        raise DataError(f"task must be one of {list(TASKS)}, got {task!r}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    p = Path(path)
    chosen = get_layout(layout) if layout is not None else get_layout(detect(p))
    data = _load_with(chosen, p, purpose=purpose, task=task, channels=channels, limit=limit,
                      on_error=on_error)  # fmt: skip
    if task == "anomaly" and purpose == "train":
        data = _good_only(data, p)
    return data


def _load_with(layout: Layout, path: Path, *, on_error: OnError, **kwargs: Any) -> ImageSet:
    """``layout.load`` with ``on_error`` when the layout takes it."""
    if layout.on_error:
        return layout.load(path, on_error=on_error, **kwargs)
    if on_error == "skip":
        log.warning(
            "layout %s cannot skip unreadable files; the first one stops loading", layout.name
        )
    return layout.load(path, **kwargs)


def _good_only(data: ImageSet, path: Path) -> ImageSet:
    from inspectkit.metrics.anomaly import anomaly_truth

    keep = [i for i, bad in enumerate(anomaly_truth(data).tolist()) if not bad]
    if not keep:
        raise DataError(
            f"{path}: no good samples to learn from; an anomaly model trains on good parts "
            "only (a folder named good/ok/Free, MVTec train/good, wafer class 'none')"
        )
    return data.subset(keep)


@applies_limits
def load_inputs(
    paths: Sequence[str | os.PathLike[str]],
    *,
    channels: int | None = None,
    kind: str | None = None,
    on_error: OnError = "raise",
    limits: Limits | Mapping[str, int] | None = None,
) -> ImageSet:
    """Inputs to predict or explain: image files, folders, wafer files, any layout.

    Every path is loaded with ``purpose="predict"`` and the results are joined in order;
    image files stay lazy (decoded a batch at a time by ``Pipeline.iter_run``), so a
    folder of 100,000 parts costs only its file names up front. Sample ids are unique
    (a repeated id gets ``'`` appended).

    Args:
        paths: Files and folders.
        channels: 1, 3 or ``None`` (keep), for image files.
        kind: ``"wafer"`` or ``"image"``: the kind of input a model reads; a path holding
            the other kind is a ``DataError`` naming it.
        on_error: ``"skip"``: a path that cannot be loaded (or a file inside it, where the
            layout takes ``on_error``) is listed in ``ImageSet.skipped`` instead of
            stopping; files decoded later (lazily) are the caller's to skip.
        limits: Size limits for this call; lazy sets keep them for decoding.

    Raises:
        DataError: a path cannot be loaded (``on_error="raise"``), or none can.
    """
    check_on_error(on_error)
    if not paths:
        raise DataError("no inputs given")
    sets = []
    skipped: list[str] = []
    for raw in paths:
        p = Path(raw)
        try:
            name = detect(p)
            got = _load_with(get_layout(name), p, purpose="predict", task="classify",
                             channels=channels, limit=None, on_error=on_error)  # fmt: skip
            if kind is not None and got.kind != kind:
                reads = "wafer maps (.npz / LSWMD.pkl)" if kind == "wafer" else "images"
                raise DataError(f"{p}: this model reads {reads}, not {got.kind} data ({name})")
        except DataError as exc:
            if on_error == "raise":
                raise
            text = str(exc)
            skipped.append(text if text.startswith(str(p)) else f"{p}: {text}")
            continue
        sets.append(got)
    if not sets:
        raise DataError(f"none of the {len(paths)} inputs could be loaded: {skipped[0]}")
    joined = join_inputs(sets)
    return joined.replace(skipped=[*skipped, *joined.skipped]) if skipped else joined


def join_inputs(sets: Sequence[ImageSet]) -> ImageSet:
    """Join sets in order, renaming repeated sample ids; lazy sets that share one reader
    stay one lazy set (``ImageSet.concat`` would decode them)."""
    from inspectkit.records import ImageSet, LazyImages

    if len(sets) == 1:
        return sets[0]
    taken: set[str] = set()
    samples = [_unique(s.samples, taken) for s in sets]
    lazy = [
        s.images
        for s in sets
        if isinstance(s.images, LazyImages) and s.masks is None and s.boxes is None
    ]
    joinable = len(lazy) == len(sets) and len({s.kind for s in sets}) == 1
    if not joinable or any(x.loader != lazy[0].loader for x in lazy):
        return ImageSet.concat([s.replace(samples=m) for s, m in zip(sets, samples)])
    classes: list[str] = []
    for s in sets:
        classes += [c for c in s.classes if c not in classes]
    return ImageSet.build(
        images=LazyImages([k for x in lazy for k in x.keys], lazy[0].loader),
        samples=[smp for m in samples for smp in m],
        classes=classes,
        kind=sets[0].kind,
        skipped=[x for s in sets for x in s.skipped],
    )


def _unique(samples: Sequence[Any], taken: set[str]) -> list[Any]:
    out = []
    for s in samples:
        sid = s.id
        while sid in taken:
            sid += "'"
        taken.add(sid)
        out.append(s if sid == s.id else s.model_copy(update={"id": sid}))
    return out


__all__ = [
    "ENTRY_POINT_GROUP",
    "LAYOUTS",
    "Layout",
    "available_layouts",
    "detect",
    "get_layout",
    "join_inputs",
    "load",
    "load_inputs",
    "register_layout",
]
