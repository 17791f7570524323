"""Streams of experiences built from image sets.

An :class:`Experience` is one step of a stream: the training and test samples that arrive
together and the classes they introduce. Two ways to cut a stream:

* :func:`class_incremental_stream` — new classes per experience, in a given order
  (new defect types appear on the line);
* :func:`domain_incremental_stream` — the same classes, split by process-line metadata
  (another die size, another product model) with :func:`meta_key` or :func:`size_bucket`.

The class list of an experience's sets is the list of every class seen up to and
including it, in order of arrival, so class indices never change along a stream.

Example:
    >>> import torch
    >>> from inspectkit.records import ImageSet, SampleMeta
    >>> s = ImageSet(images=torch.zeros(4, 1, 2, 2), classes=["a", "b"],
    ...              samples=[SampleMeta(id=str(i), label="ab"[i % 2]) for i in range(4)])
    >>> stream = class_incremental_stream(s, s, [["a"], ["b"]])
    >>> [e.classes for e in stream], stream[1].train.classes
    ([['a'], ['b']], ['a', 'b'])
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inspectkit.errors import ConfigError, DataError
from inspectkit.records import ImageSet, SampleMeta

log = logging.getLogger(__name__)


@dataclass
class Experience:
    """One step of a stream.

    Attributes:
        index: Position in the stream (0-based).
        name: Human-readable name (``"exp0: none+Center"``, ``"size: small"``).
        train: Training samples of this step (class list = classes seen so far).
        test: Test samples of this step (same class list).
        classes: Classes this experience introduces (empty when it brings none).
        seen_classes: Every class seen up to and including this experience.
    """

    index: int
    name: str
    train: ImageSet
    test: ImageSet
    classes: list[str]
    seen_classes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"Experience({self.index}, {self.name!r}, train={len(self.train)}, "
            f"test={len(self.test)}, new classes={self.classes})"
        )


def _with_classes(data: ImageSet, idx: Sequence[int], classes: list[str]) -> ImageSet:
    sub = data.subset(list(idx))
    return sub.replace(classes=list(classes))


def _check_labelled(data: ImageSet, what: str) -> None:
    if not isinstance(data, ImageSet):
        raise DataError(f"{what} must be an ImageSet, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError(f"{what} is empty")
    missing = sum(s.label is None for s in data.samples)
    if missing:
        raise DataError(f"{what} has {missing} unlabelled samples; a stream needs labels")


def _cap(
    indices: np.ndarray,
    labels: list[str | None],
    max_per_class: int | None,
    rng: np.random.Generator,
) -> list[int]:
    if max_per_class is None:
        return indices.tolist()
    keep: list[int] = []
    labs = np.asarray([labels[i] for i in indices], dtype=object)
    for c in dict.fromkeys(labs.tolist()):
        members = indices[labs == c]
        if len(members) > max_per_class:
            members = np.sort(rng.choice(members, size=max_per_class, replace=False))
        keep += members.tolist()
    return sorted(keep)


def class_incremental_stream(
    train: ImageSet,
    test: ImageSet,
    class_order: Sequence[Sequence[str]],
    *,
    max_train_per_class: int | None = None,
    seed: int = 0,
) -> list[Experience]:
    """Split ``train``/``test`` into experiences that each bring new classes.

    Args:
        train: Labelled training set.
        test: Labelled test set.
        class_order: One group of class names per experience, e.g.
            ``[["none", "Center", "Edge-Ring"], ["Edge-Loc", "Loc"], ...]``. Groups must
            be disjoint; classes left out of every group are dropped.
        max_train_per_class: Keep at most this many training samples per class (a
            seeded random subset) — for quick runs on large archives.
        seed: Seed of that subsample.

    Returns:
        The experiences, in order.

    Example:
        >>> from inspectkit.sources import load_wafer_maps
        >>> tr = load_wafer_maps("WM811K_train_29_split.npz")  # doctest: +SKIP
        >>> stream = class_incremental_stream(tr, te, [["none", "Center"], ["Loc"]])  # doctest: +SKIP
    """
    _check_labelled(train, "the training set")
    _check_labelled(test, "the test set")
    groups = [list(g) for g in class_order]
    if not groups or any(not g for g in groups):
        raise ConfigError("class_order needs at least one experience, each with at least one class")
    flat = [c for g in groups for c in g]
    dup = sorted({c for c in flat if flat.count(c) > 1})
    if dup:
        raise ConfigError(f"classes {dup} appear in more than one experience of class_order")
    known = set(train.classes) | set(test.classes)
    unknown = [c for c in flat if c not in known]
    if unknown:
        raise ConfigError(
            f"class_order names {unknown}, which are not classes of the data ({sorted(known)})"
        )
    rng = np.random.default_rng(seed)
    train_labels, test_labels = train.labels, test.labels
    train_lab = np.asarray(train_labels, dtype=object)
    test_lab = np.asarray(test_labels, dtype=object)
    stream: list[Experience] = []
    seen: list[str] = []
    for t, group in enumerate(groups):
        seen = seen + group
        tr_idx = _cap(
            np.flatnonzero(np.isin(train_lab, group)), train_labels, max_train_per_class, rng
        )
        te_idx = np.flatnonzero(np.isin(test_lab, group)).tolist()
        if not tr_idx:
            raise DataError(f"experience {t} ({group}) has no training samples")
        if not te_idx:
            raise DataError(f"experience {t} ({group}) has no test samples")
        stream.append(
            Experience(
                index=t,
                name=f"exp{t}: " + "+".join(group),
                train=_with_classes(train, tr_idx, seen),
                test=_with_classes(test, te_idx, seen),
                classes=list(group),
                seen_classes=list(seen),
            )
        )
    return stream


def meta_key(key: str) -> Callable[[SampleMeta], Any]:
    """Domain of a sample = ``sample.meta[key]`` (e.g. product model, tool, recipe).

    Example:
        >>> meta_key("product")(SampleMeta(id="a", meta={"product": "X1"}))
        'X1'
    """

    def domain(s: SampleMeta) -> Any:
        if key not in s.meta:
            raise DataError(f"sample {s.id!r} has no metadata {key!r}; cannot assign it a domain")
        return s.meta[key]

    return domain


def size_bucket(
    edges: Sequence[float], names: Sequence[str] | None = None
) -> Callable[[SampleMeta], str]:
    """Domain = wafer-map size bucket by die count ``height × width`` from ``SampleMeta.meta``.

    Args:
        edges: Increasing bucket edges; bucket ``b`` holds maps with
            ``edges[b-1] <= H*W < edges[b]`` (``len(edges) + 1`` buckets).
        names: Bucket names (default ``"small"``, ``"medium"``, ``"large"`` for two edges).

    Example:
        >>> size_bucket([700, 1500])(SampleMeta(id="a", meta={"height": 26, "width": 26}))
        'small'
    """
    e = [float(x) for x in edges]
    if any(b <= a for a, b in itertools.pairwise(e)):
        raise ConfigError(f"bucket edges must increase, got {list(edges)}")
    if names is None:
        names = (
            ["small", "medium", "large"]
            if len(e) == 2
            else [f"bucket{i}" for i in range(len(e) + 1)]
        )
    if len(names) != len(e) + 1:
        raise ConfigError(
            f"{len(e)} edges make {len(e) + 1} buckets, but {len(names)} names were given"
        )
    labels = list(names)

    def domain(s: SampleMeta) -> str:
        h, w = s.meta.get("height"), s.meta.get("width")
        if not isinstance(h, int | float) or not isinstance(w, int | float):
            raise DataError(
                f"sample {s.id!r} has no numeric 'height'/'width' metadata for a size bucket"
            )
        return labels[int(np.searchsorted(e, float(h) * float(w), side="right"))]

    return domain


def domain_incremental_stream(
    train: ImageSet,
    test: ImageSet,
    domain: str | Callable[[SampleMeta], Any],
    *,
    order: Sequence[Any] | None = None,
    max_train_per_class: int | None = None,
    seed: int = 0,
) -> list[Experience]:
    """Split ``train``/``test`` into experiences by a domain of each sample.

    Args:
        train: Labelled training set.
        test: Labelled test set.
        domain: A metadata key (``"product"``) or a function ``SampleMeta -> domain``
            such as :func:`size_bucket`.
        order: Domains in stream order (default: order of first appearance in ``train``).
            Domains not listed are dropped.
        max_train_per_class: Keep at most this many training samples per class and domain.
        seed: Seed of that subsample.

    Returns:
        The experiences; every one uses the union of classes seen so far as class list.

    Example:
        >>> stream = domain_incremental_stream(tr, te, size_bucket([700, 1500]))  # doctest: +SKIP
    """
    _check_labelled(train, "the training set")
    _check_labelled(test, "the test set")
    fn = meta_key(domain) if isinstance(domain, str) else domain
    tr_dom = [fn(s) for s in train.samples]
    te_dom = [fn(s) for s in test.samples]
    doms = list(order) if order is not None else list(dict.fromkeys(tr_dom))
    if not doms:
        raise ConfigError("no domains to build a stream from")
    if len(set(map(repr, doms))) != len(doms):
        raise ConfigError(f"domain order {doms} has duplicates")
    rng = np.random.default_rng(seed)
    train_labels = train.labels
    class_rank = {
        c: i
        for i, c in enumerate(
            list(train.classes) + [c for c in test.classes if c not in train.classes]
        )
    }
    seen: list[str] = []
    stream: list[Experience] = []
    for t, d in enumerate(doms):
        tr_idx = _cap(
            np.asarray([i for i, x in enumerate(tr_dom) if x == d], dtype=np.int64),
            train_labels,
            max_train_per_class,
            rng,
        )
        te_idx = [i for i, x in enumerate(te_dom) if x == d]
        if not tr_idx:
            raise DataError(f"domain {d!r} has no training samples")
        if not te_idx:
            raise DataError(f"domain {d!r} has no test samples")
        present = {train_labels[i] for i in tr_idx} | {test.samples[i].label for i in te_idx}
        new = sorted(
            (c for c in present if c is not None and c not in seen), key=lambda c: class_rank[c]
        )
        seen = seen + new
        stream.append(
            Experience(
                index=t,
                name=f"{d}",
                train=_with_classes(train, tr_idx, seen),
                test=_with_classes(test, te_idx, seen),
                classes=new,
                seen_classes=list(seen),
            )
        )
    return stream


__all__ = [
    "Experience",
    "class_incremental_stream",
    "domain_incremental_stream",
    "meta_key",
    "size_bucket",
]
