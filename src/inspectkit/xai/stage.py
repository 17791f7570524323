"""``Explain``: the pipeline stage that turns ``Predictions`` into ``Explained``.

Placed after a classifier, it finds that stage (the nearest upstream stage with a
``model`` and a ``preprocess`` method) when the pipeline is built, preprocesses each
batch the way the classifier does, and attaches one heatmap per image explaining the
predicted class (or a fixed class). It learns nothing and saves nothing: the classifier
carries the weights.

Example:
    >>> import inspectkit as ik
    >>> from inspectkit.xai import Explain
    >>> Explain(method="sise", max_masks=16).config.method
    'sise'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from inspectkit.errors import ConfigError, DataError, NotFittedError, PipelineError
from inspectkit.ops import resize_images
from inspectkit.records import Explained, Predictions
from inspectkit.runtime import progress
from inspectkit.stage import Stage, StageConfig
from inspectkit.xai._layers import normalize_maps, upsample

log = logging.getLogger(__name__)


class Explain(Stage[Predictions, Explained]):
    """Explain a classifier's predictions with Grad-CAM or SISE heatmaps.

    Args:
        method: ``"gradcam"`` or ``"sise"``.
        layer: Grad-CAM layer name (``None`` = the model's last conv layer).
        blocks: SISE block-end layer names (``None`` = found automatically).
        max_masks: SISE: most masked forward passes per block and image.
        max_blocks: SISE: deepest blocks used when ``blocks`` is ``None``.
        target: ``"predicted"`` (the classifier's prediction; its most probable class
            where it abstained) or a fixed class index.
        batch_size: Images per batch.
        progress: Show a progress bar.
        model: Optional network to explain directly with :meth:`attribute` (not part of
            the config, never saved).

    Example:
        >>> from inspectkit.stages import Classifier  # doctest: +SKIP
        >>> pipe = ik.Pipeline([Classifier(arch="compact"), Explain()])  # doctest: +SKIP
    """

    name = "explain"
    stateful = False

    class Config(StageConfig):
        method: Literal["gradcam", "sise"] = "gradcam"
        layer: str | None = None
        blocks: list[str] | None = None
        max_masks: int = Field(16, ge=1, le=4096)
        max_blocks: int = Field(4, ge=1, le=16)
        target: Literal["predicted"] | int = "predicted"
        batch_size: int = Field(32, ge=1)
        progress: bool = True

    def __init__(
        self,
        model: nn.Module | StageConfig | dict[str, Any] | None = None,
        config: StageConfig | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # ``GradCAM(model)`` is an attribution method; ``GradCAM()`` or ``Explain({...})``
        # (a config in first place) is a pipeline stage.
        if isinstance(model, dict | StageConfig):
            model, config = None, model
        super().__init__(config, **kwargs)
        if model is not None and not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
        self._model = model
        self._source: Stage[Any, Any] | None = None

    # ------------------------------------------------------------------ wiring
    def attach(self, upstream: list[Stage[Any, Any]]) -> None:
        """Remember the nearest upstream stage that has a ``model`` and ``preprocess``."""
        for st in reversed(upstream):
            if hasattr(st, "model") and callable(getattr(st, "preprocess", None)):
                self._source = st
                return
        self._source = None

    @property
    def model(self) -> nn.Module:
        """The network explained: the one given, else the attached classifier's."""
        if self._model is not None:
            return self._model
        if self._source is None:
            raise PipelineError(
                f"{type(self).__name__} has no model: put it after a Classifier in a Pipeline, "
                f"or pass one, e.g. {type(self).__name__}(model)"
            )
        model = getattr(self._source, "model", None)
        if not isinstance(model, nn.Module):
            raise NotFittedError(
                f"{type(self._source).__name__} has no trained network yet; fit the pipeline first"
            )
        return model

    # ------------------------------------------------------------------ attribution
    def attribute(
        self,
        inputs: torch.Tensor,
        target: int | Sequence[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Heatmaps ``N×H×W`` in [0, 1] for preprocessed float ``inputs`` (captum style).

        Args:
            inputs: ``N×C×H×W`` float tensor as the model takes it.
            target: Class index per input, one for all, or ``None`` = predicted class.
        """
        cfg = self.config
        model = self.model
        if cfg.method == "gradcam":
            from inspectkit.xai.gradcam import compute_gradcam

            return compute_gradcam(
                model, inputs, target, layer=cfg.layer, batch_size=cfg.batch_size
            )
        from inspectkit.xai.sise import compute_sise

        return compute_sise(
            model,
            inputs,
            target,
            layers=cfg.blocks,
            max_masks=cfg.max_masks,
            max_blocks=cfg.max_blocks,
            batch_size=cfg.batch_size,
        )

    # ------------------------------------------------------------------ stage
    def _targets(self, data: Predictions) -> list[int]:
        k = len(data.classes)
        if self.config.target == "predicted":
            idx = data.predicted_indices()
            fallback = data.probs.argmax(1)
            return torch.where(idx >= 0, idx, fallback).tolist()
        t = int(self.config.target)
        if not 0 <= t < k:
            raise DataError(f"target class {t} is out of range 0..{k - 1} ({data.classes})")
        return [t] * len(data)

    def _preprocess(self, batch: Predictions) -> torch.Tensor:
        """The classifier's input for ``batch``: resized to its input size, then preprocessed."""
        if self._source is None:
            raise PipelineError(
                f"{type(self).__name__} needs a Classifier before it in the pipeline to "
                "preprocess images; outside a pipeline call attribute(inputs) instead"
            )
        images = batch.images
        size = getattr(self._source, "input_size", None)
        mode: Literal["nearest", "antialias"] = "nearest" if batch.kind == "wafer" else "antialias"
        if isinstance(size, tuple) and len(size) == 2 and min(size) > 0:
            images = resize_images(images, (int(size[0]), int(size[1])), mode)  # type: ignore[arg-type]
        elif not isinstance(images, torch.Tensor):
            images = batch.image_tensor()
        x = self._source.preprocess(images)  # type: ignore[attr-defined]
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise PipelineError(
                f"{type(self._source).__name__}.preprocess returned "
                f"{type(x).__name__}, not an N×C×H×W tensor"
            )
        return x.float()

    def run(self, data: Predictions) -> Explained:
        """Attach a heatmap per image; heatmaps follow the images' size when it is uniform."""
        self.check_input(data)
        targets = self._targets(data)
        chunks: list[torch.Tensor] = []
        bs = self.config.batch_size
        batches = range(0, len(data), bs)
        for start in progress(
            batches, enabled=self.config.progress, desc=f"explain ({self.config.method})"
        ):
            batch = data.subset(range(start, min(start + bs, len(data)))).materialize()
            x = self._preprocess(batch)
            chunks.append(self.attribute(x, torch.tensor(targets[start : start + len(batch)])))
        heatmaps = torch.cat(chunks)
        size = data.size
        if size is not None and tuple(heatmaps.shape[-2:]) != size:
            heatmaps = normalize_maps(upsample(heatmaps[:, None], size)[:, 0])
        return Explained.build(
            **{name: getattr(data, name) for name in Predictions.model_fields},
            heatmaps=heatmaps,
            method=self.config.method,
            target_classes=targets,
        )


__all__ = ["Explain"]
