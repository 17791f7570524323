"""``Ensemble``: several good-only detectors, their scores put on one scale and averaged.

Detectors fail differently. A memory bank (PatchCore) flags a patch unlike *any* good
patch; a per-position Gaussian (PaDiM) flags a patch unusual *at its place*. Their raw
scores live on unrelated scales (feature distances vs. Mahalanobis distances), so the
ensemble learns each member's scale from good images it did not fit on:

1. a seeded ``holdout`` share of the good images is kept aside; every member fits on the
   rest;
2. each member scores the held-out images; the mean and standard deviation of its image
   scores, and of all its anomaly-map pixels, are stored as buffers;
3. scoring averages the members' z-scored anomaly maps pixel by pixel,
   ``Σ_m w_m (M_m − μ_m) / σ_m`` (``member_weights``, summing to 1), and the image score
   is the maximum of that fused map (``image_score="map_max"``, the default): a spot
   counts when the members agree on *where* it is, while one member's stray peak is
   halved. With ``image_score="mean"`` it is the weighted mean of the members' z-scored
   image scores.

So a map value of 0 is "a typical good pixel" for every member, whatever its units
(measured gains: BENCHMARKS.md, anomaly detection).

Example:
    >>> import torch
    >>> from inspectkit.anomaly import PaDiM, PatchCore
    >>> good = torch.rand(12, 3, 64, 64)
    >>> ens = Ensemble([PatchCore(progress=False), PaDiM(progress=False)], holdout=0.25)
    >>> scores, maps = ens.fit(good).score(good[:2])
    >>> tuple(maps.shape)
    (2, 64, 64)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import Self

from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.anomaly.registry import (
    build_detector,
    check_method,
    get_detector,
    register_detector,
)
from inspectkit.errors import ConfigError, DataError

#: Members of ``AnomalyDetector(method="ensemble")`` without ``members``: the memory bank
#: and the Gaussian, each with its default settings.
DEFAULT_MEMBERS: list[dict[str, Any]] = [{"method": "patchcore"}, {"method": "padim"}]


@register_detector
class Ensemble(AnomalyModel):
    """Average of z-normalised member detectors (see the module notes).

    Args:
        members: Two or more unfitted detectors (any :class:`AnomalyModel`).
        member_weights: Weight per member (non-negative, normalised to sum 1); ``None`` =
            equal.
        holdout: Share of the good images kept aside to learn each member's score scale,
            in (0, 0.5]; at least 2 images are held out and at least 1 is fitted on.
        image_score: ``"map_max"`` (maximum of the fused map) or ``"mean"`` (weighted
            mean of the members' z-scored image scores).
        settings, **shared: The settings every detector has: ``seed`` of the hold-out
            split, ``batch_size`` of scoring batches (each member then batches as it
            likes), ``device``, ``progress`` (see
            :class:`~inspectkit.anomaly.base.DetectorSettings`). Members built by
            :meth:`from_settings` start from the same settings.
    """

    name = "ensemble"

    def __init__(
        self,
        members: Sequence[AnomalyModel],
        *,
        member_weights: Sequence[float] | None = None,
        holdout: float = 0.1,
        image_score: str = "map_max",
        settings: DetectorSettings | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(settings, **shared)
        members = list(members)
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 detectors, got {len(members)}")
        for m in members:
            if not isinstance(m, AnomalyModel):
                raise ConfigError(f"ensemble members must be detectors, got {type(m).__name__}")
        if len({id(m) for m in members}) != len(members):
            raise ConfigError("the same detector object appears twice in the ensemble")
        w = [1.0] * len(members) if member_weights is None else [float(v) for v in member_weights]
        if len(w) != len(members):
            raise ConfigError(f"{len(w)} member_weights for {len(members)} ensemble members")
        if any(not math.isfinite(v) or v < 0 for v in w) or sum(w) <= 0:
            raise ConfigError(f"member_weights must be non-negative with a positive sum: {w}")
        if not 0 < holdout <= 0.5:
            raise ConfigError(f"holdout must be in (0, 0.5], got {holdout}")
        if image_score not in ("map_max", "mean"):
            raise ConfigError(f"image_score must be 'map_max' or 'mean', got {image_score!r}")
        self.image_score = image_score
        self.members = nn.ModuleList(members)
        self.holdout = float(holdout)
        self.register_buffer("member_weights", torch.tensor(w, dtype=torch.float32) / sum(w))
        # per member: (mean, std) of held-out good image scores, and of their map pixels
        self.register_buffer("image_stats", torch.zeros(len(members), 2))
        self.register_buffer("map_stats", torch.zeros(len(members), 2))

    @classmethod
    def from_settings(
        cls,
        settings: DetectorSettings,
        *,
        backbone: str | nn.Module | None = None,
        weights: str | None = None,
        layers: Sequence[str] | None = None,
        in_channels: int | None = None,
        members: Any = None,
        **options: Any,
    ) -> Self:
        """The stage's ``method="ensemble"``: members from ``members``, a list of dicts
        each naming a registered detector as ``method`` plus its ``layers`` and options
        (default :data:`DEFAULT_MEMBERS`). ``member_weights``, ``holdout`` and
        ``image_score`` are the ensemble's; shared settings go to every member, any other
        option to the members that have it (a member's own keys win), and one that no
        member has is refused. Members share the backbone and its weights file.
        """
        own = {k: options.pop(k) for k in cls.option_names() if k in options}
        specs = DEFAULT_MEMBERS if members is None else members
        if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
            raise ConfigError(
                "ensemble members are a list of dicts, e.g. options={'members': "
                f"[{{'method': 'patchcore', ...}}, {{'method': 'padim', ...}}]}}, got {specs!r}"
            )
        built = []
        shared, own_opts = DetectorSettings.split(dict(options))
        methods = []
        for spec in specs:
            method = dict(spec).get("method")
            try:
                check_method(method)
            except ConfigError as exc:
                raise ConfigError(f"ensemble member method: {exc}") from None
            methods.append(method)
        # an option goes to the members that have it (n_features to PaDiM, coreset_ratio
        # to PatchCore); one no member has is refused
        accepted = {m: set(get_detector(m).option_names()) for m in methods}
        unknown = [k for k in own_opts if not any(k in names for names in accepted.values())]
        if unknown:
            raise ConfigError(
                f"no ensemble member ({', '.join(methods)}) has the option(s) {unknown}"
            )
        for spec, method in zip(specs, methods):
            spec = dict(spec)
            spec.pop("method", None)
            member_layers = spec.pop("layers", layers)
            mine = {k: v for k, v in own_opts.items() if k in accepted[method]}
            built.append(
                build_detector(
                    method,
                    settings,
                    options={**shared, **mine, **spec},
                    backbone=backbone,
                    weights=weights,
                    layers=member_layers,
                    in_channels=in_channels,
                )
            )
        return cls(built, settings=settings, **own)

    def split(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices ``(fit, held_out)`` of ``n`` good images (seeded, sorted)."""
        n_out = max(2, round(self.holdout * n))
        if n - n_out < 1:
            raise DataError(
                f"an ensemble needs at least 3 good images (2 held out to learn the "
                f"members' score scales, 1 to fit on), got {n}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return order[n_out:].sort().values, order[:n_out].sort().values

    def _fit(self, images: torch.Tensor) -> None:
        fit_idx, out_idx = self.split(images.shape[0])
        fit_images, held_out = images[fit_idx], images[out_idx]
        for k, member in enumerate(self.members):
            member.fit(fit_images)
            scores, maps = member.score(held_out)
            self.image_stats[k] = _mean_std(scores)
            self.map_stats[k] = _mean_std(maps)

    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = maps = 0.0
        for k, member in enumerate(self.members):
            s, m = member._score_batch(x)
            w = self.member_weights[k]
            maps = maps + (m.float() - self.map_stats[k, 0]) / self.map_stats[k, 1] * w
            if self.image_score == "mean":
                scores = scores + (s.float() - self.image_stats[k, 0]) / self.image_stats[k, 1] * w
        assert isinstance(maps, torch.Tensor)
        if self.image_score == "map_max":
            return maps.flatten(1).amax(1), maps
        assert isinstance(scores, torch.Tensor)
        return scores, maps


def _mean_std(values: torch.Tensor) -> torch.Tensor:
    """``[mean, std]`` of all values (float64 sums); a floor keeps constant scores finite."""
    v = values.double().flatten()
    mean = v.mean()
    std = v.std() if v.numel() > 1 else torch.zeros((), dtype=torch.float64)
    floor = 1e-6 * max(float(mean.abs()), 1.0)
    return torch.stack([mean, std.clamp_min(floor)]).float()


__all__ = ["DEFAULT_MEMBERS", "Ensemble"]
