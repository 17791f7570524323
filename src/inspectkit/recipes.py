"""Ready-made pipelines: what ``inspectkit train`` and ``inspectkit generate`` build.

The command line and Python users get the same defaults from here, so a model trained
with ``inspectkit train --data DIR`` can be rebuilt in three lines:

Example:
    >>> from inspectkit.recipes import default_pipeline
    >>> pipe = default_pipeline("classify", kind="wafer", n_train=1000)
    >>> pipe.get_params()["wrangle__size"], pipe.get_params()["classifier__epochs"]
    ((48, 48), 30)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inspectkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from inspectkit.pipeline import Pipeline
    from inspectkit.records import ImageSet

#: Side (px) a classifier's inputs are resized to, by kind of input.
CLASSIFY_SIZE = {"wafer": 48, "image": 64}
#: Working size of an anomaly detector: ``"auto"``, taken from the training images (the
#: median longer side rounded up to 32 px, at most 384; see ``AnomalyDetector``).
ANOMALY_SIZE = "auto"
#: Side (px) ``generate_samples`` resizes to when the set is wafer maps or ragged.
GENERATE_SIZE = 64
#: Classifier training epochs.
EPOCHS = 30
#: Anomaly detector of ``task="anomaly"``: the validated recipe (PatchCore + PaDiM on
#: EfficientNet-Lite0 ImageNet features, standardised intensities; the self-supervised detector without
#: weights), see :mod:`inspectkit.anomaly.recipe`.
ANOMALY_METHOD = "default"
#: Training sets smaller than this get no validation split (too few to measure on).
MIN_VALIDATION_SET = 50


def default_size(task: str, kind: str) -> int | str:
    """The working side in pixels of :func:`default_pipeline` (``"auto"`` for a detector)."""
    _check_task(task)
    return ANOMALY_SIZE if task == "anomaly" else CLASSIFY_SIZE.get(kind, CLASSIFY_SIZE["image"])


def default_pipeline(
    task: str,
    *,
    kind: str,
    n_train: int,
    size: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    method: str | None = None,
    progress: bool = True,
    backbone: str | None = None,
    weights: str | None = None,
    false_alarm_rate: float | None = None,
    threshold: float | None = None,
    review_rate: float | None = None,
    review_threshold: float | None = None,
    region_rate: float | None = None,
    region_threshold: float | None = None,
    tile: int | None = None,
    group_by: str | None = None,
) -> Pipeline:
    """The pipeline ``inspectkit train`` builds without ``--spec``.

    * ``task="classify"``: ``Wrangle(size) → Classifier(arch="compact")``, a 10 %
      validation split from :data:`MIN_VALIDATION_SET` training samples on;
    * ``task="anomaly"``: one ``AnomalyDetector(method)`` (it resizes by itself), which
      drops defective samples from its training set with a warning (``method="auto"``
      validates on them instead).

    Args:
        task: ``"classify"`` or ``"anomaly"``.
        kind: ``"wafer"`` or ``"image"`` (sets the default size of a classifier).
        n_train: Number of training samples.
        size: Working side in pixels (default: :func:`default_size`).
        epochs: Classifier epochs (default :data:`EPOCHS`); a detector has none.
        seed: Seed of every stage.
        method: Detector name (default :data:`ANOMALY_METHOD`).
        progress: Progress bars.
        backbone: Classifier ``arch`` / detector ``backbone`` (default: each stage's).
        weights: ``"imagenet"`` or a local weights file for that backbone (a detector's
            default ``"auto"`` takes ImageNet weights where they are installed).
        false_alarm_rate: Detector: the threshold's target false-alarm rate.
        threshold: Detector: a fixed threshold instead.
        review_rate: Detector: a review band whose lower threshold flags this share of
            goods.
        review_threshold: Detector: a review band whose lower threshold is this score.
        region_rate: Detector: share of the held-out goods' map pixels its defect
            regions' threshold lets in (default: the stage's).
        region_threshold: Detector: a fixed region threshold (a map value) instead.
        tile: Detector: tile side for tiled inspection at native resolution.
        group_by: Detector: ``SampleMeta`` field or ``meta`` key naming the product.
    """
    from inspectkit.pipeline import Pipeline
    from inspectkit.stages import Wrangle

    side = size or default_size(task, kind)
    if task == "classify":
        from inspectkit.stages import Classifier

        extra: dict[str, Any] = {}
        if backbone is not None:
            extra["arch"] = backbone
        if weights is not None:
            extra["weights"] = weights
        return Pipeline(
            [
                Wrangle(size=side),
                Classifier(
                    epochs=epochs or EPOCHS,
                    seed=seed,
                    progress=progress,
                    val_fraction=0.1 if n_train >= MIN_VALIDATION_SET else 0.0,
                    **{"arch": "compact", **extra},
                ),
            ]
        )
    from inspectkit.stages import AnomalyDetector

    settings: dict[str, Any] = {
        "backbone": backbone,
        "weights": weights,
        "target_false_alarm_rate": false_alarm_rate,
        "threshold": threshold,
        "review_false_alarm_rate": review_rate,
        "review_threshold": review_threshold,
        "region_false_alarm_rate": region_rate,
        "region_threshold": region_threshold,
        "tile": tile,
        "group_by": group_by,
    }
    return Pipeline(
        [
            AnomalyDetector(
                method=method or ANOMALY_METHOD,
                size=side,
                seed=seed,
                progress=progress,
                on_defective="drop",
                **{k: v for k, v in settings.items() if v is not None},
            )
        ]
    )


def override(
    pipe: Pipeline,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    progress: bool | None = None,
) -> Pipeline:
    """Set ``epochs``, ``seed`` and ``progress`` on every stage that has the setting
    (``None`` leaves it as it is), through :meth:`Pipeline.set_params`: the command
    line's ``--epochs``, ``--seed`` and ``--quiet`` on a ``--spec`` pipeline.

    Example:
        >>> from inspectkit.pipeline import Pipeline
        >>> from inspectkit.stages import Classifier, Wrangle
        >>> pipe = override(Pipeline([Wrangle(size=32), Classifier()]), epochs=2, seed=7)
        >>> pipe.get_params()["classifier__epochs"], pipe.get_params()["wrangle__seed"]
        (2, 7)
    """
    wanted = {"epochs": epochs, "seed": seed, "progress": progress}
    changes = {
        key: wanted[setting]
        for key in pipe.get_params()
        for setting in [key.partition("__")[2]]
        if wanted.get(setting) is not None
    }
    return pipe.set_params(**changes) if changes else pipe


def generation_pipeline(
    data: ImageSet,
    cls: str,
    n: int,
    *,
    method: str = "augment",
    size: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    progress: bool = True,
) -> Pipeline:
    """A pipeline whose ``fit_run(data)`` adds ``n`` synthetic samples of class ``cls``:
    ``[Wrangle(size)] → Augment`` (``method="augment"``) or ``→ Generate(method="vae")``.

    Wafer maps and sets of mixed sizes are resized to ``size`` (default
    :data:`GENERATE_SIZE`); photos of one size keep it unless ``size`` is given.

    Raises:
        DataError: ``cls`` is not a class of ``data`` or has no samples.
        ConfigError: unknown ``method`` or ``n`` below 1.
    """
    from inspectkit.pipeline import Pipeline

    if method not in ("augment", "vae"):
        raise ConfigError(f"method must be 'augment' or 'vae', got {method!r}")
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    counts = data.class_counts()
    if cls not in counts:
        raise DataError(f"no class {cls!r}; classes are {list(counts)}")
    if counts[cls] == 0:
        raise DataError(f"class {cls!r} has no samples to learn from")
    if size is None and (data.kind == "wafer" or data.size is None):
        size = GENERATE_SIZE
    stages: list[Any] = []
    if size:
        from inspectkit.stages import Wrangle

        stages.append(Wrangle(size=size))
    if method == "augment":
        from inspectkit.stages import Augment

        stages.append(Augment(per_class=counts[cls] + n, classes=[cls], seed=seed))
    else:
        from inspectkit.stages import Generate

        cfg: dict[str, Any] = {"steps": steps} if steps else {}
        stages.append(
            Generate(
                method="vae",
                classes=[cls],
                per_class=counts[cls] + n,
                seed=seed,
                progress=progress,
                **cfg,
            )
        )
    return Pipeline(stages)


def generate_samples(data: ImageSet, cls: str, n: int, **options: Any) -> ImageSet:
    """``n`` new synthetic samples of class ``cls`` learned from ``data`` (see
    :func:`generation_pipeline` for ``options``), flagged ``synthetic``.

    Example:
        >>> from inspectkit.recipes import generate_samples
        >>> more = generate_samples(maps, "Scratch", 200, method="vae")  # doctest: +SKIP
    """
    return synthetic_samples(generation_pipeline(data, cls, n, **options).fit_run(data), cls, n)


def synthetic_samples(result: ImageSet, cls: str, n: int) -> ImageSet:
    """The first ``n`` synthetic samples of class ``cls`` in the output of a
    :func:`generation_pipeline`'s ``fit_run``."""
    synth = result.select(lambda s: s.synthetic and s.label == cls)
    if len(synth) == 0:
        raise DataError(f"nothing was generated for class {cls!r}")
    return synth.subset(range(min(n, len(synth))))


def _check_task(task: str) -> None:
    if task not in ("classify", "anomaly"):
        raise ConfigError(f"task must be 'classify' or 'anomaly', got {task!r}")


__all__ = [
    "ANOMALY_METHOD",
    "ANOMALY_SIZE",
    "CLASSIFY_SIZE",
    "EPOCHS",
    "GENERATE_SIZE",
    "default_pipeline",
    "default_size",
    "generate_samples",
    "generation_pipeline",
    "override",
    "synthetic_samples",
]
