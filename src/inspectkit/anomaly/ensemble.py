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

Members that read the same frozen backbone share one pass over it when scoring
(:func:`feature_plan`, :func:`shared_features`): the default's PatchCore reads
``blocks.2`` and ``blocks.4`` of EfficientNet-Lite0, PaDiM ``blocks.1``, ``blocks.2`` and
``blocks.4``, so PaDiM's pass serves both. Sharing needs equal backbone weights and
buffers (checked tensor by tensor after every ``fit`` / ``load_state``), the same input
normalisation and ``feature_dtype``, and layers the other pass returns; anything else
(a backbone a member trained, as the self-supervised detector does) runs its own pass.

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

import contextlib
import math
from collections.abc import Iterator, Sequence
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

    def _reset_own_caches(self) -> None:
        self.__dict__.pop("_feature_plan", None)

    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.__dict__.get("_feature_plan")
        if plan is None:
            plan = self.__dict__["_feature_plan"] = feature_plan(list(self.members))
        scores = maps = 0.0
        with shared_features(list(self.members), plan, x):
            outputs = [member._score_batch(x) for member in self.members]
        for k, (s, m) in enumerate(outputs):
            w = self.member_weights[k]
            maps = maps + (m.float() - self.map_stats[k, 0]) / self.map_stats[k, 1] * w
            if self.image_score == "mean":
                scores = scores + (s.float() - self.image_stats[k, 0]) / self.image_stats[k, 1] * w
        assert isinstance(maps, torch.Tensor)
        if self.image_score == "map_max":
            return maps.flatten(1).amax(1), maps
        assert isinstance(scores, torch.Tensor)
        return scores, maps


def feature_plan(members: Sequence[nn.Module]) -> list[int | None]:
    """Per member, the member whose backbone pass gives it its features (itself when it
    runs the pass for others), or ``None`` (its own pass, shared with nobody).

    Member ``k`` may read member ``j``'s pass when both have a
    :class:`~inspectkit.models.features.FeatureExtractor`, ``j``'s layers include ``k``'s,
    input normalisation and ``feature_dtype`` agree, and every parameter and buffer of
    ``k``'s extractor equals ``j``'s. Of the passes ``k`` may read, the one with the most
    layers is taken (the first such member on ties).
    """
    from inspectkit.models.features import FeatureExtractor

    def extractor(m: nn.Module) -> FeatureExtractor | None:
        fx = getattr(m, "extractor", None)
        return fx if isinstance(fx, FeatureExtractor) else None

    states = {}
    for k, m in enumerate(members):
        fx = extractor(m)
        if fx is not None:
            states[k] = {**dict(fx.named_parameters()), **dict(fx.named_buffers())}

    def readable(k: int, j: int) -> bool:
        a, b = extractor(members[k]), extractor(members[j])
        if a is None or b is None or not set(a.layers) <= set(b.layers):
            return False
        if a.normalize != b.normalize or members[k].feature_dtype != members[j].feature_dtype:
            return False
        theirs = states[j]
        return all(name in theirs and torch.equal(theirs[name], t) for name, t in states[k].items())

    source: list[int | None] = []
    for k in range(len(members)):
        if k not in states:  # no backbone of its own to share
            source.append(None)
            continue
        options = [j for j in states if j == k or readable(k, j)]
        source.append(max(options, key=lambda j: (len(extractor(members[j]).layers), -j)))
    plan: list[int | None] = []
    for k, j in enumerate(source):
        if j is None or source[j] != j:  # a reader of a reader: keep it simple, own pass
            plan.append(None)
        elif j == k and not any(s == k for i, s in enumerate(source) if i != k):
            plan.append(None)  # nobody reads this pass
        else:
            plan.append(j)
    return plan


@contextlib.contextmanager
def shared_features(
    members: Sequence[nn.Module], plan: Sequence[int | None], x: torch.Tensor
) -> Iterator[None]:
    """Within the block, each member with a source in ``plan`` (:func:`feature_plan`)
    takes this batch ``x``'s features from that source's one backbone pass
    (:meth:`~inspectkit.anomaly.base.AnomalyModel.features`)."""
    passes: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for k, j in enumerate(plan):
            if j is None:
                continue
            if j not in passes:
                passes[j] = members[j].features(x)
            members[k].__dict__["_shared_features"] = (x, passes[j])
        yield
    finally:
        for m in members:
            m.__dict__.pop("_shared_features", None)


def _mean_std(values: torch.Tensor) -> torch.Tensor:
    """``[mean, std]`` of all values (float64 sums); a floor keeps constant scores finite."""
    v = values.double().flatten()
    mean = v.mean()
    std = v.std() if v.numel() > 1 else torch.zeros((), dtype=torch.float64)
    floor = 1e-6 * max(float(mean.abs()), 1.0)
    return torch.stack([mean, std.clamp_min(floor)]).float()


__all__ = ["DEFAULT_MEMBERS", "Ensemble", "feature_plan", "shared_features"]
