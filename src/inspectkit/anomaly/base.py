"""What every good-only detector shares: settings, batching, map smoothing, dynamic state.

A detector is a plain ``nn.Module`` (no pipeline glue): ``fit(images)`` learns from good
images only, ``score(images)`` returns image scores and anomaly maps. ``images`` is an
``N×C×H×W`` tensor (uint8 0-255 or float in [0, 1]) already at the working size;
:class:`~inspectkit.anomaly.stage.AnomalyDetector` does the resizing. Everything a
detector learned lives in its ``state_dict`` (parameters and buffers), so it travels
with a saved pipeline.

The settings every detector has (seed, batch size, device, progress bars, feature dtype,
map smoothing) are one :class:`DetectorSettings`, declared and checked here; a detector
declares only its own options. :meth:`AnomalyModel.from_settings` is how the stage
builds any detector by name (see :mod:`inspectkit.anomaly.registry`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import TypeAdapter, ValidationError
from torch import nn
from typing_extensions import Self

from inspectkit.errors import ConfigError, DataError, NotFittedError
from inspectkit.ops import to_float
from inspectkit.runtime import progress, resolve_device
from inspectkit.stage import Seed

log = logging.getLogger(__name__)


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``N×H×W`` maps with a Gaussian of ``sigma`` pixels (kernel 2·⌊4σ+0.5⌋+1).

    Separable (one row pass, one column pass) with reflected borders: the same result as
    torchvision's ``gaussian_blur`` at a fraction of the cost for σ = 4 (33-tap kernel).
    """
    if sigma <= 0:
        return maps
    k = 2 * int(4 * sigma + 0.5) + 1
    limit = 2 * ((min(maps.shape[-2:]) - 1) // 2) + 1  # reflect padding needs pad < side
    k = min(k, limit)
    if k < 3:
        return maps
    ax = torch.arange(k, dtype=maps.dtype, device=maps.device) - k // 2
    kernel = torch.exp(-0.5 * (ax / sigma) ** 2)
    kernel = kernel / kernel.sum()
    pad = k // 2
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, [pad, pad, 0, 0], mode="reflect"), kernel.view(1, 1, 1, k))
    x = F.conv2d(F.pad(x, [0, 0, pad, pad], mode="reflect"), kernel.view(1, 1, k, 1))
    return x.squeeze(1)


def _bilinear_matrix(out: int, cells: int) -> torch.Tensor:
    """``out×cells`` weights of sampling cell coordinates ``i·cells/out`` (edge clamped)."""
    pos = (torch.arange(out, dtype=torch.float64) * (cells / out)).clamp(0, cells - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=cells - 1)
    frac = pos - lo
    m = torch.zeros(out, cells, dtype=torch.float64)
    rows = torch.arange(out)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m


def _gaussian_matrix(n: int, k: int, sigma: float) -> torch.Tensor:
    """``n×n`` matrix of a ``k``-tap Gaussian blur with reflected borders (``k`` odd)."""
    if k < 3:
        return torch.eye(n, dtype=torch.float64)
    ax = torch.arange(k, dtype=torch.float64) - k // 2
    kernel = torch.exp(-0.5 * (ax / sigma) ** 2)
    kernel = kernel / kernel.sum()
    src = torch.arange(n).unsqueeze(1) + ax.long().unsqueeze(0)  # n×k source indices
    src = src.abs()  # reflect at 0 ...
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)  # ... and at n-1
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_add_(1, src, kernel.expand(n, k).contiguous())
    return m


def upsample_smooth_matrices(
    grid: tuple[int, int], size: tuple[int, int], sigma: float, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column matrices ``A_y`` (``H×h``) and ``A_x`` (``W×w``) with
    ``A_y · P · A_xᵀ`` = aligned bilinear upsampling of an ``h×w`` map ``P`` to ``H×W``
    followed by :func:`gaussian_smooth` with ``sigma`` (float32, built in float64).

    Example:
        >>> ay, ax = upsample_smooth_matrices((4, 4), (16, 16), 2.0)
        >>> tuple(ay.shape), round(float(ay.sum(1).mean()), 4)  # rows are averages
        ((16, 4), 1.0)
    """
    (h, w), (big_h, big_w) = grid, size
    k = 0
    if sigma > 0:
        k = 2 * int(4 * sigma + 0.5) + 1
        k = min(k, 2 * ((min(big_h, big_w) - 1) // 2) + 1)
    ay = _gaussian_matrix(big_h, k, sigma) @ _bilinear_matrix(big_h, h)
    ax = _gaussian_matrix(big_w, k, sigma) @ _bilinear_matrix(big_w, w)
    return ay.float().to(device), ax.float().to(device)


def check_images(images: Any, what: str = "images") -> torch.Tensor:
    """Refuse anything but a non-empty ``N×C×H×W`` tensor."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"{what} must be an N×C×H×W tensor, got {shape}; resize ragged sets first")
    if images.shape[0] == 0:
        raise DataError(f"no {what} given; a detector needs at least one good image")
    return images


FEATURE_DTYPES = ("float32", "bfloat16")

_SEED: TypeAdapter[int] = TypeAdapter(Seed)


@dataclass(frozen=True)
class DetectorSettings:
    """The settings every detector shares, checked once here.

    A detector takes them as keywords (``PaDiM(batch_size=8, device="cpu")``) or as one
    object (``PaDiM(settings=DetectorSettings(...))``, the stage's path); its attributes
    of the same names (``detector.batch_size``, ``detector.seed`` ...) read them.

    Attributes:
        seed: Seed of initialisation, projections, sampling and training order.
        batch_size: Images per forward pass (at least 1).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` ...
        progress: tqdm bars on loops a person waits for.
        feature_dtype: ``"float32"`` (default) or ``"bfloat16"``: a frozen backbone runs
            under bfloat16 autocast and hands float32 features on (2-3× faster where the
            CPU has AVX-512 BF16 / AMX, and on GPUs; features rounded to about three
            significant digits). Detectors without a frozen backbone pass ignore it.
        sigma: Gaussian smoothing of anomaly maps, in pixels (0 = none).

    Example:
        >>> DetectorSettings(batch_size=8).replace(seed=3).seed
        3
        >>> DetectorSettings(batch_size=0)
        Traceback (most recent call last):
        ...
        inspectkit.errors.ConfigError: detector setting batch_size must be a whole number of at least 1, got 0
    """

    seed: int = 0
    batch_size: int = 32
    device: str | torch.device = "auto"
    progress: bool = True
    feature_dtype: str = "float32"
    sigma: float = 4.0

    def __post_init__(self) -> None:
        def refuse(name: str, what: str) -> ConfigError:
            return ConfigError(
                f"detector setting {name} must be {what}, got {getattr(self, name)!r}"
            )

        for name, what in (
            ("seed", "a whole number from 0 to 2**63 - 1"),
            ("batch_size", "a whole number of at least 1"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool):
                raise refuse(name, what)
            try:
                value = operator.index(value)
            except TypeError:
                raise refuse(name, what) from None
            object.__setattr__(self, name, int(value))
        try:
            _SEED.validate_python(self.seed)  # the range of every stage's seed
        except ValidationError:
            raise refuse("seed", "a whole number from 0 to 2**63 - 1") from None
        if self.batch_size < 1:
            raise refuse("batch_size", "a whole number of at least 1")
        if not isinstance(self.progress, bool):
            raise refuse("progress", "True or False")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise refuse("feature_dtype", "'float32' or 'bfloat16'")
        sigma = self.sigma
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma >= 0:
            raise refuse("sigma", "a number of pixels, 0 or more")
        if not math.isfinite(sigma):
            raise refuse("sigma", "finite")
        object.__setattr__(self, "sigma", float(sigma))
        if not isinstance(self.device, str | torch.device):
            raise refuse("device", "a device name such as 'auto', 'cpu' or 'cuda'")
        resolve_device(self.device)  # ConfigError for unknown or absent devices

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> DetectorSettings:
        """A copy with ``changes`` (checked like a new object; unknown names refused)."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ConfigError(
                f"unknown detector setting(s) {', '.join(map(repr, unknown))}; "
                f"settings: {', '.join(self.names())}"
            )
        return dataclasses.replace(self, **changes)

    @classmethod
    def split(cls, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``options`` as (shared settings, the rest)."""
        names = set(cls.names())
        shared = {k: v for k, v in options.items() if k in names}
        return shared, {k: v for k, v in options.items() if k not in names}


class _Setting:
    """A detector attribute that reads one field of its ``settings`` (assigning replaces
    the settings with a checked copy)."""

    def __init__(self, field: str) -> None:
        self.field = field

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else getattr(obj.settings, self.field)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.settings = obj.settings.replace(**{self.field: value})


class AnomalyModel(nn.Module):
    """Base class of the detectors: a torch module with ``fit`` and ``score``.

    Subclasses implement ``_fit(images)`` and ``_score_batch(x) -> (scores, maps)``
    where ``x`` is a float batch in [0, 1] on the model's device. Their ``__init__``
    declares only the detector's own options and hands the shared settings on::

        def __init__(self, *, min_std: float = 0.02, **settings):
            super().__init__(**settings)

    A detector becomes usable by name (``AnomalyDetector(method=...)``) through
    :func:`~inspectkit.anomaly.registry.register_detector`.

    Attributes:
        name: The registry name (``"patchcore"``); empty for unregistered subclasses.
        default_settings: The settings a detector built without them starts from.
        uses_pretrained: ``False`` for detectors that train their own features
            (autoencoder, self-supervised): ``backbone="auto"`` keeps resnet18 for them.
        settings: This detector's :class:`DetectorSettings`; ``seed``, ``batch_size``,
            ``sigma``, ``feature_dtype``, ``show_progress`` and ``device`` read it.
    """

    name: ClassVar[str] = ""
    default_settings: ClassVar[DetectorSettings] = DetectorSettings()
    #: Whether the detector reads frozen features that ImageNet weights improve (the
    #: stage's ``backbone="auto"`` picks a pretrained backbone only for these).
    uses_pretrained: ClassVar[bool] = True

    #: Pixels per pass of the frozen backbone on a CPU (two 384×384 images; see
    #: :meth:`features`).
    FEATURE_PIXELS: ClassVar[int] = 2 * 384 * 384

    seed = _Setting("seed")
    batch_size = _Setting("batch_size")
    sigma = _Setting("sigma")
    feature_dtype = _Setting("feature_dtype")
    show_progress = _Setting("progress")

    def __init__(self, settings: DetectorSettings | None = None, **changes: Any) -> None:
        super().__init__()
        unknown = sorted(set(changes) - set(DetectorSettings.names()))
        if unknown:
            raise ConfigError(
                f"{type(self).__name__} has no option {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(self.option_names()) or 'none'}; settings of "
                f"every detector: {', '.join(DetectorSettings.names())}"
            )
        if settings is not None and not isinstance(settings, DetectorSettings):
            raise ConfigError(f"settings must be a DetectorSettings, got {type(settings).__name__}")
        base = self.default_settings if settings is None else settings
        self.settings = base.replace(**changes) if changes else base
        self.register_buffer("fitted_flag", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ building
    @classmethod
    def option_names(cls) -> list[str]:
        """The detector's own keyword options (its ``__init__`` parameters, without the
        shared settings)."""
        skip = {"self", "settings", *DetectorSettings.names()}
        return [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    @classmethod
    def from_settings(
        cls,
        settings: DetectorSettings,
        *,
        backbone: str | nn.Module | None = None,
        weights: str | None = None,
        layers: Sequence[str] | None = None,
        in_channels: int | None = None,
        **options: Any,
    ) -> Self:
        """Build this detector from the stage: shared ``settings``, the stage's backbone,
        weights file, layers and image channels, and the detector's own ``options``.

        Of ``backbone``, ``weights``, ``layers`` and ``in_channels`` only those the
        detector's ``__init__`` names, and that are not ``None``, are passed on (so a
        detector without a backbone never sees one); ``options`` win over them. Override
        this when a detector is built from other detectors (see ``Ensemble``).
        """
        context = {
            "backbone": backbone,
            "weights": weights,
            "layers": layers,
            "in_channels": in_channels,
        }
        params = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in context.items() if v is not None and k in params}
        kwargs.update(options)
        return cls(settings=settings, **kwargs)

    # ------------------------------------------------------------------ helpers
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features of a float batch: ``self.extractor``, or, when no gradient is
        needed, a frozen copy of it (BatchNorm folded, activations in place,
        ``channels_last`` tensors; equal up to float rounding) run on a CPU
        :attr:`FEATURE_PIXELS` pixels at a time, so a pass's activations stay in the
        caches (3× faster than one pass over 32 images at 384 px). The copy is taken at
        the first use after ``fit`` / ``load_state`` and kept outside the ``state_dict``.

        Inside :func:`inspectkit.anomaly.ensemble.shared_features` this batch's features
        come from another detector's pass over the same backbone (an ensemble runs it once
        for its members).
        """
        shared = self.__dict__.get("_shared_features")
        if shared is not None and shared[0] is x:
            return {name: shared[1][name] for name in self.extractor.layers}
        extractor = self.extractor
        if torch.is_grad_enabled() or extractor.training:
            return extractor(x)
        cached = self.__dict__.get("_fast_extractor")
        if cached is None or cached[0] is not extractor or cached[1] != x.device:
            cached = (extractor, x.device, extractor.inference_copy())
            self.__dict__["_fast_extractor"] = cached
        fast = cached[2]
        step = x.shape[0]
        if x.device.type == "cpu":
            step = max(1, self.FEATURE_PIXELS // max(1, x.shape[-2] * x.shape[-1]))
        parts = []
        for s in range(0, x.shape[0], step):
            if self.feature_dtype == "bfloat16":
                with torch.autocast(x.device.type, dtype=torch.bfloat16):
                    out = fast(x[s : s + step])
                out = {name: f.float() for name, f in out.items()}
            else:
                out = fast(x[s : s + step])
            parts.append(out)
        if len(parts) == 1:
            return parts[0]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def reset_caches(self) -> None:
        """Forget everything derived from the learned state (called by ``fit`` and
        ``load_state``, on this detector and on the detectors inside it)."""
        for module in self.modules():
            if isinstance(module, AnomalyModel):
                module.__dict__.pop("_fast_extractor", None)
                module._reset_own_caches()

    def _reset_own_caches(self) -> None:
        """Subclasses drop their own derived tensors here."""

    @property
    def device(self) -> torch.device:
        """Where computations run (``settings.device`` resolved)."""
        return resolve_device(self.settings.device)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted_flag)

    def batches(self, images: torch.Tensor, desc: str = "") -> Iterator[torch.Tensor]:
        """Float batches in [0, 1] on the device, converted one batch at a time."""
        n = images.shape[0]
        starts = range(0, n, self.batch_size)
        for s in progress(starts, enabled=self.show_progress and n > self.batch_size, desc=desc):
            yield to_float(images[s : s + self.batch_size]).to(self.device)

    def upsample_smooth(self, patch_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``N×h×w`` patch scores → ``N×H×W`` maps: bilinear upsampling then Gaussian blur.

        A feature cell ``i`` of a stride-``s`` layer (convolutions padded to "same", as in
        ResNets and EfficientNets) is centred on pixel ``s·i``, not on ``s·i + (s−1)/2``
        where plain ``interpolate`` puts it; sampling at ``pixel / s`` keeps maps aligned
        with the image (plain interpolation shifts them by up to 7.5 px at stride 16).

        Both steps are linear and separable, so they run fused as ``A_y · P · A_xᵀ`` with
        one ``H×h`` and one ``W×w`` matrix (:func:`upsample_smooth_matrices`): two small
        matmuls per map instead of a sampling pass and two 33-tap convolutions over
        ``H×W``. :meth:`upsample_smooth_reference` is the step-by-step version.
        """
        _, h, w = patch_maps.shape
        key = (h, w, *size, self.sigma, patch_maps.device)
        cached = self.__dict__.get("_upsample_matrices")
        if cached is None or cached[0] != key:
            ay, ax = upsample_smooth_matrices((h, w), size, self.sigma, patch_maps.device)
            cached = (key, ay, ax.T.contiguous())
            self.__dict__["_upsample_matrices"] = cached
        _, ay, ax_t = cached
        return torch.matmul(torch.matmul(ay, patch_maps.float()), ax_t)

    def upsample_smooth_reference(
        self, patch_maps: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Unfused :meth:`upsample_smooth`: ``grid_sample`` then :func:`gaussian_smooth`."""
        n, h, w = patch_maps.shape
        big_h, big_w = size
        if (h, w) == (big_h, big_w):
            return gaussian_smooth(patch_maps, self.sigma)
        dev = patch_maps.device
        ys = torch.arange(big_h, device=dev, dtype=torch.float32) * (h / big_h)
        xs = torch.arange(big_w, device=dev, dtype=torch.float32) * (w / big_w)
        gy = 2 * ys / max(h - 1, 1) - 1 if h > 1 else torch.zeros_like(ys)
        gx = 2 * xs / max(w - 1, 1) - 1 if w > 1 else torch.zeros_like(xs)
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)  # H×W×2 as (x, y)
        maps = torch.nn.functional.grid_sample(
            patch_maps.unsqueeze(1).float(),
            grid.unsqueeze(0).expand(n, -1, -1, -1),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        ).squeeze(1)
        return gaussian_smooth(maps, self.sigma)

    # ------------------------------------------------------------------ API
    def fit(self, images: torch.Tensor) -> AnomalyModel:
        """Learn from good images only (``N×C×H×W``, uint8 or float in [0, 1])."""
        images = check_images(images, "training images")
        self.to(self.device)
        self.reset_caches()
        self._fit(images)
        self.reset_caches()
        self.fitted_flag.fill_(True)
        return self

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (``N``) and anomaly maps (``N×H×W``, the input's size); higher = worse."""
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} must be fitted on good images before scoring"
            )
        images = check_images(images)
        self.to(self.device)
        self.eval()
        scores, maps = [], []
        for x in self.batches(images, desc=f"{type(self).__name__} scoring"):
            s, m = self._score_batch(x)
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
        return torch.cat(scores), torch.cat(maps)

    def _fit(self, images: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score_batch(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a ``state_dict`` whose buffers may have other shapes than the fresh module's.

        Learned buffers (memory bank, Gaussian statistics) are created empty and get their
        size at ``fit``; here they take the state's tensors as they are (no copy: a saved
        default model is about 1 GB of PaDiM inverse covariances, which a copy would hold
        twice while loading), then the strict load copies the rest. ``fit`` replaces those
        buffers wholesale, never in place, so a module loaded from another's live
        ``state_dict`` does not change when either is fitted again.
        """
        buffers = dict(self.named_buffers())
        for name, tensor in state.items():
            if name in buffers and tuple(buffers[name].shape) != tuple(tensor.shape):
                owner_name, _, leaf = name.rpartition(".")
                owner = self.get_submodule(owner_name) if owner_name else self
                # the state's own tensor: the strict load below copies it onto itself
                owner._buffers[leaf] = tensor
        self.load_state_dict(state, strict=True)
        self.reset_caches()


__all__ = [
    "FEATURE_DTYPES",
    "AnomalyModel",
    "DetectorSettings",
    "check_images",
    "gaussian_smooth",
    "upsample_smooth_matrices",
]
