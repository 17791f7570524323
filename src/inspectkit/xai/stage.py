"""``Explain``: the base of the explanation stages that turn ``Predictions`` into ``Explained``.

An explanation method is a subclass that implements ``attribute(inputs, target)`` (captum
style: preprocessed float inputs in, ``N×H×W`` heatmaps in [0, 1] out) and registers as a
stage: :class:`~inspectkit.xai.GradCAM` (``"gradcam"``) and :class:`~inspectkit.xai.SISE`
(``"sise"``) are two. This base knows none of them: ``Explain(method="sise", ...)``
looks the method up in the stage registry and builds that class, so a plugin method
registered under its own name works the same way.

In a pipeline, the stage attaches to the nearest upstream stage that offers a network
and its input contract (:class:`~inspectkit.models.inputs.ExplainableStage`: a
``Classifier`` or a ``ContinualClassifier``), prepares each batch with that stage's
``input_spec`` and explains the predicted class (or a fixed one). It learns nothing and
saves nothing but its config: the classifier carries the weights.

Example:
    >>> from inspectkit.xai import Explain
    >>> stage = Explain(method="sise", max_masks=16)
    >>> type(stage).__name__, stage.config.max_masks
    ('SISE', 16)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from inspectkit.errors import ConfigError, DataError, NotFittedError, PipelineError
from inspectkit.models.inputs import ExplainableStage, InputSpec
from inspectkit.records import Explained, Predictions
from inspectkit.registry import STAGES, get_stage
from inspectkit.runtime import progress
from inspectkit.stage import Stage, StageConfig
from inspectkit.xai._layers import normalize_maps, upsample

log = logging.getLogger(__name__)

DEFAULT_METHOD = "gradcam"


def _requested_method(config: Any, kwargs: dict[str, Any]) -> str:
    if "method" in kwargs:
        return str(kwargs["method"])
    if isinstance(config, StageConfig):
        return str(getattr(config, "method", DEFAULT_METHOD))
    if isinstance(config, dict):
        return str(config.get("method", DEFAULT_METHOD))
    return DEFAULT_METHOD


def available_methods() -> list[str]:
    """Names of the registered explanation methods (stages that subclass :class:`Explain`).

    Example:
        >>> {"gradcam", "sise"} <= set(available_methods())
        True
    """
    names = []
    for name in STAGES.names():
        try:
            cls = STAGES.get(name)
        except Exception:  # a broken third-party plugin must not hide the others
            continue
        if isinstance(cls, type) and issubclass(cls, Explain) and cls is not Explain:
            names.append(name)
    return names


def method_class(method: str) -> type[Explain]:
    """The :class:`Explain` subclass registered as ``method`` (a stage name)."""
    try:
        cls = get_stage(method)
    except PipelineError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Explain)) or cls is Explain:
        raise ConfigError(
            f"unknown explanation method {method!r}; methods: {', '.join(available_methods())}"
        )
    return cls


class Explain(Stage[Predictions, Explained]):
    """Explain a classifier's predictions with heatmaps; the base of every method.

    ``Explain(method=...)`` builds the registered method's stage (``"gradcam"``, the
    default, or ``"sise"``), with that method's settings.

    Args:
        method: Registered explanation method.
        target: ``"predicted"`` (the classifier's prediction; its most probable class
            where it abstained) or a fixed class index.
        batch_size: Images per batch.
        progress: Show a progress bar.
        model: Optional network to explain directly with ``attribute`` (not part of the
            config, never saved).

    Example:
        >>> from inspectkit.stages import Classifier  # doctest: +SKIP
        >>> pipe = ik.Pipeline([Classifier(arch="compact"), Explain()])  # doctest: +SKIP
    """

    name = "explain"
    stateful = False

    class Config(StageConfig):
        method: str = DEFAULT_METHOD
        target: Literal["predicted"] | int = "predicted"
        batch_size: int = Field(32, ge=1)
        progress: bool = True

    config: Config

    #: Settings of inspectkit 0.1's single ``Explain`` config that now belong to one
    #: method, with their defaults then: a saved ``"explain"`` spec carries all of them,
    #: and a method drops those it does not have while they hold these values.
    LEGACY_SETTINGS: ClassVar[dict[str, Any]] = {
        "layer": None,
        "blocks": None,
        "max_masks": 16,
        "max_blocks": 4,
    }

    def __new__(
        cls,
        model: nn.Module | StageConfig | dict[str, Any] | None = None,
        config: StageConfig | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Explain:
        if cls is Explain:
            chosen = config if config is not None else model
            cls = method_class(_requested_method(chosen, kwargs))
        return super().__new__(cls)

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
        if config is not None and kwargs:
            raise ConfigError(f"{type(self).__name__}: pass either a config or keyword arguments")
        raw = config.model_dump() if isinstance(config, StageConfig) else dict(config or kwargs)
        known = type(self).Config.model_fields
        for key, default in self.LEGACY_SETTINGS.items():
            if key in raw and key not in known:
                if raw[key] != default:
                    raise ConfigError(
                        f"{type(self).__name__} has no setting {key!r} (it belongs to another "
                        f"explanation method); settings: {', '.join(known)}"
                    )
                del raw[key]
        super().__init__(raw)
        if model is not None and not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
        self._model = model
        self._source: ExplainableStage | None = None

    # ------------------------------------------------------------------ wiring
    def attach(self, upstream: list[Stage[Any, Any]]) -> None:
        """Attach to the nearest upstream stage that offers a network and its input
        contract (:class:`~inspectkit.models.inputs.ExplainableStage`).

        Raises:
            PipelineError: Stages come before this one but none of them offers a network.
        """
        for st in reversed(upstream):
            if isinstance(st, ExplainableStage):
                self._source = st
                return
        self._source = None
        if upstream:
            names = ", ".join(type(st).__name__ for st in upstream)
            raise PipelineError(
                f"{type(self).__name__} explains the network of a stage before it, but none of "
                f"the stages before it ({names}) offers one (a network and its input_spec, as "
                "Classifier and ContinualClassifier do)"
            )

    @property
    def model(self) -> nn.Module:
        """The network explained: the one given, else the attached stage's."""
        if self._model is not None:
            return self._model
        if self._source is None:
            raise PipelineError(
                f"{type(self).__name__} has no model: put it after a Classifier in a Pipeline, "
                f"or pass one, e.g. {type(self).__name__}(model)"
            )
        network = self._source.network
        if not isinstance(network, nn.Module):
            raise NotFittedError(
                f"{type(self._source).__name__} has no trained network yet; fit the pipeline first"
            )
        return network

    # ------------------------------------------------------------------ attribution
    def attribute(
        self,
        inputs: torch.Tensor,
        target: int | Sequence[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Heatmaps ``N×H×W`` in [0, 1] for preprocessed float ``inputs`` (captum style).

        Each method implements it (:class:`~inspectkit.xai.GradCAM`,
        :class:`~inspectkit.xai.SISE`).

        Args:
            inputs: ``N×C×H×W`` float tensor as the model takes it.
            target: Class index per input, one for all, or ``None`` = predicted class.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement attribute()")

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

    def _input_spec(self) -> InputSpec:
        if self._source is None:
            raise PipelineError(
                f"{type(self).__name__} needs a Classifier before it in the pipeline to "
                "preprocess images; outside a pipeline call attribute(inputs) instead"
            )
        spec = self._source.input_spec
        if spec is None:
            raise NotFittedError(
                f"{type(self._source).__name__} has no trained network yet; fit the pipeline first"
            )
        return spec

    def run(self, data: Predictions) -> Explained:
        """Attach a heatmap per image; heatmaps follow the images' size when it is uniform."""
        self.check_input(data)
        spec = self._input_spec()
        spec.check(data, type(self._source).__name__)
        targets = self._targets(data)
        chunks: list[torch.Tensor] = []
        bs = self.config.batch_size
        batches = range(0, len(data), bs)
        for start in progress(
            batches, enabled=self.config.progress, desc=f"explain ({self.config.method})"
        ):
            batch = data.subset(range(start, min(start + bs, len(data)))).materialize()
            x = spec.prepare(batch.images)
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


__all__ = ["Explain", "available_methods", "method_class"]
