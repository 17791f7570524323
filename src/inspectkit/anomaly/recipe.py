"""Two detectors that choose for the user: the validated recipe, and a per-line choice.

* ``"default"`` (:class:`Recommended`): with pretrained features (``weights`` given, e.g.
  ``"imagenet"``) :data:`PRETRAINED` — the ensemble of PatchCore (4,096-patch bank) and
  PaDiM (200 channels), the best image AUROC among the candidates that score at least
  10 images/s on 2 cores on the magnetic-tile validation split (BENCHMARKS.md, anomaly
  session 8; PaDiM alone was session 6's choice); without
  weights :data:`NO_WEIGHTS` — the self-supervised (CutPaste) detector, the best image
  AUROC without any weights. Which one it holds is fixed when it is built (``pretrained``)
  and saved with it.
* ``"auto"`` (:class:`AutoSelect`): fits every candidate (:data:`AUTO_CANDIDATES`) on
  most of the good images and keeps the one with the best image AUROC on the held-out
  rest against defects: real ones when the stage hands some over
  (``validation_defects``), else synthetic ones made from the held-out goods
  (:func:`~inspectkit.anomaly.synthetic.synthetic_defects`). ``selection`` tells what was
  measured and on which evidence; only the chosen candidate is kept.

Example:
    >>> import torch
    >>> det = AutoSelect(candidates=["padim"], progress=False, device="cpu")
    >>> _ = det.fit(torch.rand(12, 1, 64, 64))
    >>> det.selection["chosen"], det.selection["evidence"]
    ('padim', 'synthetic defects')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.anomaly.registry import build_detector, check_method, register_detector
from inspectkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: ``(method, options)`` of the recipe with pretrained features, and without.
PRETRAINED: tuple[str, dict[str, Any]] = (
    "ensemble",
    {
        "members": [
            {"method": "patchcore", "coreset_ratio": 0.25, "max_bank_size": 4096},
            {"method": "padim", "n_features": 200},
        ]
    },
)
#: Without weights: 150 CutPaste steps and a 300-channel Gaussian head (validation: 0.885
#: AUROC at 256 px, fit on 400 goods in 79 s, the best of the candidates that fit 500
#: images within 2 minutes on 2 cores; BENCHMARKS.md, anomaly sessions 8, 10 and 11).
NO_WEIGHTS: tuple[str, dict[str, Any]] = ("selfsupervised", {"steps": 150, "n_features": 300})
#: Largest side ``size="auto"`` gives the recipe without weights (its own features learn
#: better from, and score faster at, 256 px than 384: BENCHMARKS.md, anomaly session 8).
NO_WEIGHTS_MAX_SIDE = 256
#: What ``"default"`` held in states saved before the recipe was stored with the model
#: (state version 3, inspectkit before session 8): by ``pretrained``.
LEGACY_RECIPES: dict[bool, dict[str, Any]] = {
    True: {"method": "padim", "options": {"n_features": 200}},
    False: {"method": "selfsupervised", "options": {}},
}
#: Candidates of ``"auto"`` and their options.
AUTO_CANDIDATES: tuple[str, ...] = ("padim", "patchcore", "ensemble")
AUTO_OPTIONS: dict[str, dict[str, Any]] = {
    "padim": {"n_features": 200},
    "patchcore": {"coreset_ratio": 0.25, "max_bank_size": 16_384},
    "ensemble": PRETRAINED[1],  # the default recipe is always one of the candidates
}


def _context(backbone: Any, weights: Any, layers: Any, in_channels: Any) -> dict[str, Any]:
    return {"backbone": backbone, "weights": weights, "layers": layers, "in_channels": in_channels}


@register_detector
class Recommended(AnomalyModel):
    """The validated recipe: PatchCore + PaDiM on pretrained features, CutPaste without.

    Args:
        pretrained: Whether the backbone has pretrained weights (default: ``weights`` is
            given). Saved with the detector, so a loaded model rebuilds the same one.
        held: ``{"method", "options"}`` of the detector to hold instead of today's recipe
            (a saved model's, so a later recipe never changes it).
        backbone, layers, weights, in_channels: Passed to the detector it holds.
        options: Options of that detector (over the recipe's own).
        settings, **shared: The settings every detector has.
    """

    name = "default"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        layers: Sequence[str] | None = None,
        weights: str | None = None,
        *,
        pretrained: bool | None = None,
        in_channels: int | None = None,
        options: dict[str, Any] | None = None,
        held: dict[str, Any] | None = None,
        settings: DetectorSettings | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(settings, **shared)
        self.pretrained = weights is not None if pretrained is None else bool(pretrained)
        if held is not None:  # a saved model: the detector it was fitted as
            if not isinstance(held, dict) or not isinstance(held.get("options"), dict):
                raise ConfigError(f"held is {{'method': ..., 'options': {{...}}}}, got {held!r}")
            method, own = check_method(held.get("method")), dict(held["options"])
        else:
            method, own = PRETRAINED if self.pretrained else NO_WEIGHTS
        #: ``{"method", "options"}`` of the detector held (saved with the model)
        self.held = {"method": method, "options": dict(own)}
        self.inner = build_detector(
            method,
            self.settings,
            options={**own, **(options or {})},
            **_context(backbone, weights, layers, in_channels),
        )

    @property
    def method(self) -> str:
        """The name of the detector it holds."""
        return self.held["method"]

    @property
    def summary(self) -> str:
        """The detector it holds in words, e.g. ``"ensemble(patchcore+padim)"``."""
        members = getattr(self.inner, "members", None)
        if self.method == "ensemble" and members is not None:
            return f"ensemble({'+'.join(m.name for m in members)})"
        return self.method

    def _fit(self, images: torch.Tensor) -> None:
        self.inner.fit(images)

    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner._score_batch(x)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        inner = {k[len("inner.") :]: v for k, v in state.items() if k.startswith("inner.")}
        self.inner.load_state(inner)
        self.fitted_flag.copy_(state["fitted_flag"])


@register_detector
class AutoSelect(AnomalyModel):
    """The best of several detectors on held-out goods against real or synthetic defects.

    Args:
        candidates: Registered detector names (default :data:`AUTO_CANDIDATES`).
        holdout: Share of the good images held out to validate on (at least 2).
        candidate_options: Options per candidate name (over :data:`AUTO_OPTIONS`).
        backbone, layers, weights, in_channels: Given to every candidate.
        settings, **shared: The settings every detector has (``seed`` of the split and
            the synthetic defects).

    Attributes:
        validation_defects: Real defective images (at the working size) to validate on
            instead of synthetic ones; set by the stage before ``fit``, not saved.
        selection: After ``fit``: ``chosen``, ``validation_auroc`` per candidate,
            ``evidence`` (``"real defects"`` / ``"synthetic defects"``), counts.
    """

    name = "auto"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        layers: Sequence[str] | None = None,
        weights: str | None = None,
        *,
        candidates: Sequence[str] = AUTO_CANDIDATES,
        holdout: float = 0.2,
        candidate_options: dict[str, dict[str, Any]] | None = None,
        in_channels: int | None = None,
        settings: DetectorSettings | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(settings, **shared)
        names = list(candidates)
        if not names:
            raise ConfigError("auto needs at least one candidate detector")
        for n in names:
            if n in ("auto", "default"):
                raise ConfigError(f"auto's candidates are detectors, not {n!r}")
            check_method(n)
        if not 0 < holdout < 1:
            raise ConfigError(f"holdout must be in (0, 1), got {holdout}")
        extra = candidate_options or {}
        if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
            raise ConfigError("candidate_options maps a candidate name to a dict of its options")
        self.candidates = names
        self.holdout = float(holdout)
        context = _context(backbone, weights, layers, in_channels)
        self.members = nn.ModuleList(
            build_detector(
                n,
                self.settings,
                options={**AUTO_OPTIONS.get(n, {}), **extra.get(n, {})},
                **context,
            )
            for n in names
        )
        self.register_buffer("chosen", torch.tensor(-1))
        self.register_buffer("validation_auroc", torch.full((len(names),), float("nan")))
        self.register_buffer("real_evidence", torch.zeros((), dtype=torch.bool))
        self.validation_defects: torch.Tensor | None = None

    @property
    def detector(self) -> AnomalyModel:
        """The chosen candidate (the only member left after ``fit``)."""
        if int(self.chosen) < 0:
            raise DataError("auto has not chosen a detector yet; fit it first")
        return self.members[0]

    @property
    def selection(self) -> dict[str, Any] | None:
        k = int(self.chosen)
        if k < 0:
            return None
        return {
            "chosen": self.candidates[k],
            "validation_auroc": {
                n: round(float(v), 4) for n, v in zip(self.candidates, self.validation_auroc)
            },
            "evidence": "real defects" if bool(self.real_evidence) else "synthetic defects",
        }

    def _fit(self, images: torch.Tensor) -> None:
        from inspectkit.anomaly.synthetic import synthetic_defects
        from inspectkit.metrics.anomaly import image_auroc

        n = images.shape[0]
        n_out = max(2, round(self.holdout * n))
        if n - n_out < 2:
            raise DataError(
                f"auto needs at least 4 good images (2 to fit on, 2 to validate on), got {n}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        fit_imgs = images[order[n_out:].sort().values]
        held = images[order[:n_out].sort().values]
        real = self.validation_defects is not None and self.validation_defects.shape[0] > 0
        bad = self.validation_defects if real else synthetic_defects(held, self.seed)
        assert bad is not None
        truth = torch.cat([torch.zeros(held.shape[0]), torch.ones(bad.shape[0])]).bool()
        best = -1.0
        for k, member in enumerate(self.members):
            member.fit(fit_imgs)
            s_good, _ = member.score(held)
            s_bad, _ = member.score(bad)
            auroc = float(image_auroc(torch.cat([s_good, s_bad]), truth))
            self.validation_auroc[k] = auroc
            if auroc > best:
                best = auroc
                self.chosen.fill_(k)
        self.real_evidence.fill_(real)
        self.members = nn.ModuleList([self.members[int(self.chosen)]])
        log.info("auto chose %s: %s", self.candidates[int(self.chosen)], self.selection)

    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector._score_batch(x)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        k = int(state["chosen"])
        if not 0 <= k < len(self.candidates):
            raise DataError(f"the saved auto detector chose candidate {k} of {self.candidates}")
        if len(self.members) > 1:
            self.members = nn.ModuleList([self.members[k]])
        super().load_state(state)


__all__ = [
    "AUTO_CANDIDATES",
    "AUTO_OPTIONS",
    "LEGACY_RECIPES",
    "NO_WEIGHTS",
    "NO_WEIGHTS_MAX_SIDE",
    "PRETRAINED",
    "AutoSelect",
    "Recommended",
]
