"""Grad-CAM (Selvaraju et al., 2017) on captum's ``LayerGradCam``.

The class-activation map of a conv layer is the ReLU of its feature maps weighted by the
spatially averaged gradients of the target logit. inspectkit upsamples it bilinearly to
the input size and min-max normalises each map to [0, 1].

Example:
    >>> import torch
    >>> from torch import nn
    >>> from inspectkit.xai import GradCAM
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    >>> GradCAM(net).attribute(torch.rand(3, 1, 16, 16)).shape
    torch.Size([3, 16, 16])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
from captum.attr import LayerGradCam
from torch import nn

from inspectkit.errors import ConfigError
from inspectkit.xai._layers import (
    LayerSpec,
    check_inputs,
    eval_mode,
    model_device,
    normalize_maps,
    resolve_layer,
    resolve_targets,
    upsample,
)
from inspectkit.xai.stage import Explain

log = logging.getLogger(__name__)


def compute_gradcam(
    model: nn.Module,
    inputs: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    layer: LayerSpec = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Grad-CAM heatmaps of ``model`` for ``inputs``, ``N×H×W`` in [0, 1] on the CPU.

    Args:
        model: Any classifier ``N×C×H×W -> N×K`` logits (put in eval mode while running).
        inputs: Preprocessed float inputs ``N×C×H×W``.
        target: Class index per input, one index for all, or ``None`` for the predicted class.
        layer: Conv layer (name or module); ``None`` picks ``model.last_conv`` or the last
            ``nn.Conv2d``.
        batch_size: Inputs per forward/backward pass.

    Raises:
        ConfigError: No conv layer / unknown layer name.
        DataError: Bad inputs or a target class out of range.
    """
    inputs = check_inputs(inputs)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    _, module = resolve_layer(model, layer)
    device = model_device(model)
    n, size = inputs.shape[0], (int(inputs.shape[2]), int(inputs.shape[3]))
    out = torch.empty((n, *size), dtype=torch.float32)
    cam = LayerGradCam(model, module)
    targets: torch.Tensor | None = None
    with eval_mode(model):
        for start in range(0, n, batch_size):
            x = inputs[start : start + batch_size].to(device)
            if target is None:
                with torch.no_grad():
                    logits = model(x)
                t = logits.argmax(1)
            else:
                if targets is None:
                    with torch.no_grad():
                        k = int(model(x[:1]).shape[1])
                    targets = resolve_targets(target, n, k)
                    assert targets is not None
                t = targets[start : start + batch_size].to(device)
            attr = cam.attribute(x, target=t, relu_attributions=True)
            if attr.ndim != 4:
                raise ConfigError(
                    f"the explained layer's output has shape {tuple(attr.shape)}; Grad-CAM needs "
                    "an N×C×h×w feature map, so name a conv layer with layer='...'"
                )
            maps = upsample(attr.detach().float(), size)[:, 0]
            out[start : start + x.shape[0]] = normalize_maps(maps).cpu()
    return out


class GradCAM(Explain):
    """Grad-CAM: an attribution method on a model, and a pipeline stage after a classifier.

    With a model, ``GradCAM(model).attribute(inputs, target)`` returns ``N×H×W``
    heatmaps (captum style). Without one, ``GradCAM()`` is an :class:`Explain` stage:
    placed after a ``Classifier`` (or any stage offering a network and its input
    contract) it explains that stage's predictions and turns ``Predictions`` into
    ``Explained``.

    Args:
        model: Classifier to explain directly, or ``None`` inside a pipeline.
        layer: Conv layer name (``model.named_modules()``); ``None`` = last conv layer.
        target: ``"predicted"`` or a fixed class index (stage use).
        batch_size: Images per forward/backward pass.

    Example:
        >>> import inspectkit as ik
        >>> from inspectkit.xai import GradCAM
        >>> GradCAM().registry_name()
        'gradcam'
    """

    name = "gradcam"

    class Config(Explain.Config):
        method: Literal["gradcam"] = "gradcam"
        layer: str | None = None

    config: Config

    def attribute(
        self,
        inputs: torch.Tensor,
        target: int | Sequence[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Grad-CAM heatmaps ``N×H×W`` in [0, 1] for preprocessed float ``inputs``.

        Args:
            inputs: ``N×C×H×W`` float tensor as the model takes it.
            target: Class index per input, one for all, or ``None`` = predicted class.
        """
        return compute_gradcam(
            self.model, inputs, target, layer=self.config.layer, batch_size=self.config.batch_size
        )


__all__ = ["GradCAM", "compute_gradcam"]
