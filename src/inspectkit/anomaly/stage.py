"""``AnomalyDetector``: the pipeline stage around the good-only detectors.

Fit on good parts only, run to get :class:`~inspectkit.records.AnomalyScores`.

* Which samples are good: ``meta["anomalous"]`` when a source set it (the magnetic-tile
  and MVTec loaders do), else the label — unlabelled samples and labels in
  ``good_labels`` are good, every other label is a defect. Defects in the training set
  are refused (``on_defective="raise"``) or dropped with a warning (``"drop"``).
* Sizes: every image is resized (antialiased, aspect not kept) to ``size`` before the
  detector sees it, so ragged sets such as magnetic tiles are accepted; anomaly maps are
  returned at that working size (``N×H×W``), and the metrics resize masks to it.
* Lighting: ``intensity="standardize"`` gives every image the training set's typical
  brightness and contrast (per-image mean and standard deviation mapped to the average
  ones seen in ``fit``, saved with the model) before the detector sees it, so a part
  that is only lit differently is not an anomaly.
* Detectors: ``method`` names any registered detector
  (:func:`~inspectkit.anomaly.registry.available_detectors`); the stage builds it through
  :func:`~inspectkit.anomaly.registry.build_detector` from its shared settings (seed,
  batch size, device, progress) plus ``options``, whatever the detector.
* Calibration: ``calibration_fraction`` of the good images is held out of fitting, scored,
  and the threshold set so that ``target_false_alarm_rate`` of them would be flagged.
  :meth:`AnomalyDetector.calibrate` re-calibrates on other data: F1-optimal when it holds
  labelled defects, at the target rate otherwise. Threshold, normalisation and what they
  rest on are one :class:`~inspectkit.anomaly.threshold.Calibration`, saved with the model.

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
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.anomaly.registry import (
    DetectorNames,
    available_detectors,
    build_detector,
    check_method,
)
from inspectkit.anomaly.threshold import Calibration, check_rate
from inspectkit.errors import ConfigError, DataError, NotFittedError, PersistenceError
from inspectkit.metrics.anomaly import DEFAULT_GOOD_LABELS, is_defective
from inspectkit.ops import resize_images
from inspectkit.records import AnomalyScores, ImageSet
from inspectkit.stage import ImageSize, Seed, Stage, StageConfig

log = logging.getLogger(__name__)


#: Smallest side a detector works at: backbone feature maps are 8-16× smaller.
MIN_DETECTOR_SIDE = 16

#: ``name -> detector class`` of every registered detector: a read-only view of the
#: registry (:func:`~inspectkit.anomaly.registry.available_detectors` lists the names).
METHODS = DetectorNames()

#: Version of the state :meth:`AnomalyDetector.get_state` writes. 1 (inspectkit 0.1.0):
#: ``calibration`` a float64 tensor ``[threshold, low, high]`` plus a ``calibrated`` flag;
#: 2: ``calibration`` the plain-value dict of a :class:`Calibration`, or ``None``.
STATE_VERSION = 2


def _detector_names_schema(schema: dict[str, Any]) -> None:
    """The JSON schema of ``method`` lists the detectors known when it is generated."""
    schema["enum"] = available_detectors()


class AnomalyDetector(Stage[ImageSet, AnomalyScores]):
    """Good-only anomaly detection as a pipeline stage.

    Args:
        method: A registered detector: ``"patchcore"``, ``"padim"``, ``"autoencoder"``,
            ``"selfsupervised"``, ``"ensemble"`` (several of them averaged on one scale;
            see :class:`~inspectkit.anomaly.ensemble.Ensemble` and ``options`` below), or
            one added in code or by an installed package
            (:func:`~inspectkit.anomaly.registry.available_detectors`).
        backbone: torchvision or registered backbone name (not used by the autoencoder).
        weights: Local state-dict file for the backbone (``None`` = seeded random init).
        layers: Backbone layers; ``None`` = the method's default.
        size: Working size ``(H, W)`` (or one int) every image is resized to.
        intensity: ``"raw"`` or ``"standardize"`` (each image's mean and standard
            deviation mapped to the training set's average ones; see the module notes).
        good_labels: Labels that mean "good"; unlabelled samples are good too.
        on_defective: ``"raise"`` or ``"drop"`` (with a warning) for defects in ``fit``.
        target_false_alarm_rate: Share of good parts the threshold may flag, in (0, 1).
        calibration_fraction: Share of good training images held out for calibration
            (0 = none; the stage then reports no threshold until :meth:`calibrate`).
        options: Further keyword arguments of the detector class (e.g.
            ``{"coreset_ratio": 0.01}`` for PatchCore, ``{"steps": 500}`` for CutPaste),
            and shared detector settings the stage has no field for (``feature_dtype``,
            ``sigma``) or overrides (``batch_size``; see
            :class:`~inspectkit.anomaly.base.DetectorSettings`).
            For ``method="ensemble"``: ``members``, a list of dicts each naming a
            ``method`` plus that detector's ``layers`` and options (default: PatchCore
            and PaDiM with their default settings); ``holdout``, ``member_weights``
            and ``image_score`` of :class:`~inspectkit.anomaly.ensemble.Ensemble`; every other
            key (e.g. ``feature_dtype``) is given to every member. Members share the
            backbone and its weights file.
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
        method: str = Field("patchcore", json_schema_extra=_detector_names_schema)
        backbone: str = "resnet18"
        weights: str | None = None
        layers: list[str] | None = None
        size: ImageSize = (256, 256)
        intensity: Literal["raw", "standardize"] = "raw"
        good_labels: list[str] = Field(default_factory=lambda: list(DEFAULT_GOOD_LABELS))
        on_defective: Literal["raise", "drop"] = "raise"
        target_false_alarm_rate: float = 0.005
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
        def _detector_minimum(cls, v: tuple[int, int]) -> tuple[int, int]:
            if min(v) < MIN_DETECTOR_SIDE:
                raise ValueError(
                    f"detectors need images of at least {MIN_DETECTOR_SIDE} pixels per side "
                    f"(their feature maps are 8-16× smaller), got {v}"
                )
            return v

        @field_validator("target_false_alarm_rate")
        @classmethod
        def _rate(cls, v: float) -> float:
            if not 0 < v < 1:
                raise ValueError(
                    f"target_false_alarm_rate must lie strictly between 0 and 1 (e.g. 0.005), got {v}"
                )
            return v

    config: Config

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.detector: AnomalyModel | None = None
        self.in_channels: int | None = None
        self.intensity_stats: tuple[float, float] | None = None
        self.calibration: Calibration | None = None
        # Built once without the weights file to refuse bad options, backbones and layers
        # now; fit() builds afresh with the weights (a saved pipeline needs no such file).
        self.detector = self._build(None, in_channels=1)

    @property
    def threshold(self) -> float | None:
        """The calibrated threshold (``score > threshold`` is anomalous), or ``None``."""
        return None if self.calibration is None else self.calibration.threshold

    # ------------------------------------------------------------------ building
    def detector_settings(self) -> DetectorSettings:
        """The shared detector settings this stage's config sets."""
        cfg = self.config
        return DetectorSettings(
            seed=cfg.seed, batch_size=cfg.batch_size, device=cfg.device, progress=cfg.progress
        )

    def _build(self, weights: str | None, in_channels: int) -> AnomalyModel:
        cfg = self.config
        return build_detector(
            cfg.method,
            self.detector_settings(),
            options=cfg.options,
            backbone=cfg.backbone,
            weights=weights,
            layers=cfg.layers,
            in_channels=in_channels,
        )

    # ------------------------------------------------------------------ data
    def _prepare(self, data: ImageSet, fitting: bool = False) -> torch.Tensor:
        """All images at the working size, as one ``N×C×H×W`` tensor (built batch by batch),
        intensity-standardised when configured (``fitting`` learns the statistics)."""
        size = self.config.size
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
        if self.config.intensity == "standardize":
            out = self._standardize(out, fitting)
        return out

    def _standardize(self, images: torch.Tensor, fitting: bool) -> torch.Tensor:
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
            self.intensity_stats = (
                float(stats[:, 1].double().mean()),
                float(stats[:, 0].double().mean()),
            )
        if self.intensity_stats is None:
            raise NotFittedError("intensity statistics are learned in fit; call fit first")
        mean, std = self.intensity_stats
        out = torch.empty_like(images)
        for s in chunks:
            sd = stats[s : s + 256, 0].clamp_min(1e-3 * top).view(-1, 1, 1, 1)
            m = stats[s : s + 256, 1].view(-1, 1, 1, 1)
            y = ((images[s : s + 256].float() - m) / sd * std + mean).clamp(0, top)
            out[s : s + 256] = y.round().to(torch.uint8) if is_uint8 else y.to(images.dtype)
        return out

    def _good_only(self, data: ImageSet) -> ImageSet:
        bad = [i for i, s in enumerate(data.samples) if is_defective(s, self.config.good_labels)]
        if not bad:
            return data
        labels = sorted({str(data.samples[i].label) for i in bad})
        if self.config.on_defective == "raise":
            raise DataError(
                f"{len(bad)} of {len(data)} training samples are labelled defective ({labels}); "
                "fit on good parts only, list their label in good_labels, or pass "
                "on_defective='drop'"
            )
        log.warning("dropping %d defective samples (%s) from anomaly training", len(bad), labels)
        dropped = set(bad)
        keep = [i for i in range(len(data)) if i not in dropped]
        if not keep:
            raise DataError(
                "every training sample is labelled defective; nothing good to learn from"
            )
        return data.subset(keep)

    # ------------------------------------------------------------------ lifecycle
    def fit(self, data: ImageSet) -> AnomalyDetector:
        """Learn from the good samples of ``data``; hold some out to set the threshold."""
        self.check_input(data)
        data = self._good_only(data)
        self.in_channels = None
        images = self._prepare(data, fitting=True)
        self.in_channels = int(images.shape[1])
        self.detector = self._build(self.config.weights, in_channels=self.in_channels)
        n = images.shape[0]
        frac = self.config.calibration_fraction
        n_cal = round(frac * n) if frac > 0 else 0
        n_cal = min(n_cal, n - 2) if n_cal else 0
        if frac > 0 and n_cal < 1:
            log.warning("only %d good images: none held out for calibration", n)
        g = torch.Generator().manual_seed(self.config.seed)
        order = torch.randperm(n, generator=g)
        train_idx, cal_idx = order[n_cal:].sort().values, order[:n_cal].sort().values
        assert self.detector is not None
        self.detector.fit(images[train_idx])
        self.fitted = True
        self.calibration = None
        if n_cal:
            scores, _ = self.detector.score(images[cal_idx])
            self.calibration = Calibration.at_false_alarm_rate(
                scores, self.config.target_false_alarm_rate
            )
        return self

    def calibrate(
        self, data: ImageSet, target_false_alarm_rate: float | None = None
    ) -> AnomalyDetector:
        """Replace the calibration with one set on ``data`` (images not used in fitting).

        With both good and labelled defective samples the F1-optimal threshold is taken;
        with good samples only, the one that flags ``target_false_alarm_rate`` of them
        (default: the config's), and the config's ``target_false_alarm_rate`` becomes
        that rate, so a saved pipeline states the rate its threshold was set at.

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
        assert self.detector is not None
        scores, _ = self.detector.score(self._prepare(data))
        bad = torch.tensor([is_defective(s, self.config.good_labels) for s in data.samples])
        if bad.all():
            raise DataError("calibration data holds only defective samples; add good ones")
        if bad.any():
            self.calibration = Calibration.f1_optimal(scores, bad)
        else:
            self.calibration = Calibration.at_false_alarm_rate(scores, rate)
            if rate != self.config.target_false_alarm_rate:
                self.config = self.Config(
                    **{**self.config.model_dump(), "target_false_alarm_rate": rate}
                )
        return self

    def run(self, data: ImageSet) -> AnomalyScores:
        """Score ``data``: image scores, anomaly maps (working size), normalised score, verdict."""
        self.check_fitted()
        self.check_input(data)
        assert self.detector is not None
        scores, maps = self.detector.score(self._prepare(data))
        fields: dict[str, Any] = {"scores": scores, "maps": maps}
        cal = self.calibration
        if cal is not None:
            fields["threshold"] = cal.threshold
            fields["normalized"] = cal.normalize(scores)
            fields["is_anomalous"] = cal.verdict(scores)
        return AnomalyScores.build(**data.base_fields(), **fields)

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        assert self.detector is not None
        return {
            "version": STATE_VERSION,
            "detector": {k: v.detach().cpu() for k, v in self.detector.state_dict().items()},
            "calibration": None if self.calibration is None else self.calibration.to_state(),
            "in_channels": int(self.in_channels or 1),
            "intensity": torch.tensor(
                self.intensity_stats or (float("nan"), float("nan")), dtype=torch.float64
            ),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        version = int(state.get("version", 1))
        if version > STATE_VERSION:
            raise PersistenceError(
                f"AnomalyDetector state version {version} is newer than {STATE_VERSION}; "
                "upgrade inspectkit to load it"
            )
        self.in_channels = int(state["in_channels"])
        # The saved state holds the backbone weights, so no weights file is needed here.
        self.detector = self._build(None, in_channels=self.in_channels)
        self.detector.load_state(state["detector"])
        self.calibration = None
        try:
            if version == 1:  # inspectkit 0.1.0
                if state["calibrated"]:
                    self.calibration = Calibration.from_legacy(state["calibration"])
            elif state["calibration"] is not None:
                self.calibration = Calibration.from_state(state["calibration"])
        except DataError as exc:
            raise PersistenceError(f"the saved calibration is unreadable: {exc}") from None
        cal = self.calibration
        if cal is not None and cal.false_alarm_rate not in (
            None,
            self.config.target_false_alarm_rate,
        ):
            log.warning(
                "the saved threshold was set at a false-alarm rate of %g but the config says "
                "%g (changed after calibration); call calibrate() to set it at the config's rate",
                cal.false_alarm_rate,
                self.config.target_false_alarm_rate,
            )
        stats = state.get("intensity")
        self.intensity_stats = None
        if stats is not None and not bool(torch.isnan(stats).any()):
            self.intensity_stats = (float(stats[0]), float(stats[1]))
        if self.config.intensity == "standardize" and self.intensity_stats is None:
            raise PersistenceError(
                "this AnomalyDetector standardises intensity but the saved state holds no "
                "intensity statistics; re-fit it"
            )
        self.fitted = True


__all__ = ["DEFAULT_GOOD_LABELS", "METHODS", "STATE_VERSION", "AnomalyDetector", "is_defective"]
