"""``Generate``: a learned generator per class tops up rare classes while a pipeline is fitted.

``method="vae"`` trains a small convolutional VAE per class (see
:mod:`inspectkit.models.generators` for the model and why it is a VAE) on that class's
real samples at a reduced size, samples it, and brings the samples back to the working
size: wafer maps as 0/1/2 codes inside a real wafer outline of the class, photos as
gray/RGB images. ``method="augment"`` uses classic augmentation instead (the fallback for
classes with fewer than ``min_samples`` real samples as well). Synthetic samples are
flagged ``SampleMeta.synthetic``; ``run`` hands data on untouched.

The trained generators are the stage's state, so a saved pipeline can generate again
after :meth:`Pipeline.load <inspectkit.pipeline.Pipeline.load>` with :meth:`Generate.sample`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from inspectkit.augment_ops import (
    AugmentRanges,
    Mode,
    augment_batch,
    check_wafer_maps,
    real_indices_by_class,
    spread_sources,
    target_classes,
    top_up_plan,
    wafer_mode,
)
from inspectkit.errors import ConfigError, DataError, NotFittedError
from inspectkit.models.generators import (
    ConvVAE,
    VAESettings,
    sample_images,
    sample_wafers,
    train_vae,
)
from inspectkit.ops import resize_batch
from inspectkit.records import ImageSet, SampleMeta
from inspectkit.runtime import resolve_device, torch_threads
from inspectkit.stage import Seed, Stage, StageConfig

log = logging.getLogger(__name__)

STATE_VERSION = 1


class Generate(Stage[ImageSet, ImageSet]):
    """Top up classes with samples from a generator learned per class (fit time only).

    Args:
        method: ``"vae"`` (a convolutional VAE per class) or ``"augment"`` (classic
            wafer-aware/photo augmentation of the class's real samples).
        per_class: Top every class up to this many samples (real + synthetic); real
            samples are never removed. Classes already this large get no generator.
        classes: Only these classes (default: every class of the set).
        mode: ``"auto"`` (wafer maps for ``kind="wafer"`` sets), ``"wafer"`` or ``"image"``.
        size: Side of the generator's working resolution (multiple of 8).
        latent: Latent dimension of the VAE.
        width: Channels of the VAE's first convolution.
        steps: Gradient steps per class (a fixed budget, independent of class size).
        batch_size: Samples per step.
        lr: Adam learning rate (cosine-annealed).
        beta: Weight of the KL term (warmed up over the first 30 % of steps).
        temperature: Scale of the latent prior when sampling (below 1: more typical
            samples, above 1: more varied).
        sharpness: Wafer maps: factor on the decoder's fail logits before each die is
            drawn (1: speckled draws from the VAE's probabilities; 3: clean pattern
            shapes with a little speckle; large: a 0.5 threshold).
        fail_budget: Wafer maps: a trained generator must put between
            ``fail_budget ×`` and ``1 / fail_budget ×`` the real maps' mean share of
            fail dies into its samples; otherwise it has not learned the pattern (thin
            scratches are the usual case) and the class falls back to augmentation
            with a logged warning. ``None`` switches the check off.
        min_samples: Classes with fewer real samples fall back to augmentation (with a
            logged warning); a class with none is an error.
        train_augment: Augment every training batch (wafer-aware rotations and flips
            by default) so small classes show the generator more variety.
        augment: Ranges for training-batch augmentation and for the augmentation
            fallback, see :class:`inspectkit.augment_ops.AugmentRanges`.
        keep: Real samples kept per class in the state (wafer outlines to draw from;
            sources for augmentation), so ``sample`` works after loading.
        seed: Same seed, same generators and samples (on CPU).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        threads: torch intra-op threads while training (``None``: leave the setting
            alone). The generators are small, so on a busy machine one thread is often
            as fast as two and does not fight other processes.
        progress: Show progress bars while training.

    Example:
        >>> from inspectkit.stages import Generate
        >>> gen = Generate(method="vae", per_class=2000, seed=0)
        >>> gen.config.size
        32
    """

    name = "generate"
    preserves_type = True

    class Config(StageConfig):
        method: Literal["vae", "augment"] = "vae"
        per_class: int = Field(2000, gt=0)
        classes: list[str] | None = None
        mode: Mode = "auto"
        size: int = Field(32, ge=8, le=256)
        latent: int = Field(16, ge=1, le=1024)
        width: int = Field(16, ge=2, le=512)
        steps: int = Field(500, ge=1)
        batch_size: int = Field(32, ge=2)
        lr: float = Field(2e-3, gt=0, le=1)
        beta: float = Field(1.0, gt=0)
        temperature: float = Field(1.0, gt=0, le=10)
        sharpness: float = Field(3.0, ge=1, le=100)
        fail_budget: float | None = Field(0.5, gt=0, le=1)
        min_samples: int = Field(8, ge=1)
        train_augment: bool = True
        augment: AugmentRanges = Field(default_factory=AugmentRanges)
        keep: int = Field(256, ge=1)
        seed: Seed = 0
        device: str = "auto"
        threads: int | None = Field(None, ge=1)
        progress: bool = True

        @field_validator("size")
        @classmethod
        def _multiple_of_8(cls, v: int) -> int:
            if v % 8:
                raise ValueError(f"size must be a multiple of 8 (e.g. 32), got {v}")
            return v

    config: Config

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._reset()

    def _reset(self) -> None:
        self.classes: list[str] = []
        self.kind: str = "image"
        self.wafer: bool = False
        self.image_size: tuple[int, int] = (0, 0)
        self.channels: int = 0
        self.dtype: str = "uint8"
        self.generators: dict[str, dict[str, Any]] = {}
        self._models: dict[str, ConvVAE] = {}
        self.timings: dict[str, float] = {}

    @property
    def settings(self) -> VAESettings:
        """The VAE settings this stage trains with."""
        c = self.config
        return VAESettings(
            size=c.size,
            latent=c.latent,
            width=c.width,
            steps=c.steps,
            batch_size=c.batch_size,
            lr=c.lr,
            beta=c.beta,
        )

    # ------------------------------------------------------------------ fitting
    def _prepare(self, data: ImageSet) -> tuple[ImageSet, torch.Tensor, bool]:
        self.check_input(data)
        wafer = wafer_mode(data, self.config.mode, "Generate")
        data = data.materialize()
        images = data.image_tensor()
        if wafer:
            check_wafer_maps(images)
        elif images.dtype.is_floating_point and (
            float(images.min()) < 0 or float(images.max()) > 1
        ):
            raise DataError(
                "Generate models photos with intensities in [0, 1]: got float images outside that "
                "range; pass uint8 images or floats scaled to [0, 1]"
            )
        return data, images, wafer

    def _plan(self, data: ImageSet) -> dict[str, int]:
        classes = target_classes(data, self.config.classes, "Generate")
        counts = data.class_counts()
        plan = top_up_plan({c: counts[c] for c in classes}, per_class=self.config.per_class)
        real = data.class_counts(include_synthetic=False)
        empty = [c for c in classes if real[c] == 0 and plan[c] > 0]
        if empty:
            raise DataError(
                f"Generate: classes {empty} have no real samples, so no generator can learn them; "
                "add samples or leave them out with classes=[...]"
            )
        return plan

    def fit(self, data: ImageSet) -> Generate:
        """Train a generator for every class that needs topping up.

        Raises:
            DataError: empty set, mixed sizes (put ``Wrangle`` first), a class without
                real samples, or a non-wafer image in wafer mode.
            ConfigError: unknown ``classes``, or a mode that contradicts the data.
        """
        data, images, wafer = self._prepare(data)
        plan = self._plan(data)
        cfg = self.config
        self._reset()
        self.classes = list(data.classes)
        self.kind = data.kind
        self.wafer = wafer
        self.image_size = (int(images.shape[2]), int(images.shape[3]))
        self.channels = int(images.shape[1])
        self.dtype = "uint8" if images.dtype == torch.uint8 else "float32"
        device = resolve_device(cfg.device)
        sources = real_indices_by_class(data, list(plan))
        for c, need in plan.items():
            if need == 0:
                continue
            src = torch.as_tensor(sources[c])
            keep_gen = torch.Generator().manual_seed(self._class_seed(c))
            kept = src[torch.randperm(len(src), generator=keep_gen)[: cfg.keep]]
            entry: dict[str, Any] = {
                "method": cfg.method,
                "n_real": len(src),
                "samples": images[kept].clone(),
            }
            if cfg.method == "vae" and len(src) < cfg.min_samples:
                log.warning(
                    "Generate: class %r has %d real samples (< min_samples=%d), too few to train "
                    "a generator; falling back to augmentation for it",
                    c,
                    len(src),
                    cfg.min_samples,
                )
                entry["method"] = "augment"
            if entry["method"] == "vae":
                t0 = time.perf_counter()
                model = self._train(c, images[src], wafer, device)
                self.timings[c] = time.perf_counter() - t0
                entry["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                self._models[c] = model
                if not wafer:
                    entry["samples"] = images[kept[:0]].clone()  # outlines not needed
            self.generators[c] = entry
            if entry["method"] == "vae" and wafer and cfg.fail_budget is not None:
                self._check_fail_budget(c, images[src])
        self.fitted = True
        return self

    def _check_fail_budget(self, cls: str, real: torch.Tensor) -> None:
        """Fall back to augmentation when the generator's fail-die share is far off the real one."""
        budget = self.config.fail_budget
        assert budget is not None
        probe = self.sample(cls, 256, seed=self._class_seed(cls) + 1).image_tensor()

        def share(maps: torch.Tensor) -> float:
            inside = (maps > 0).sum((1, 2, 3)).clamp(min=1)
            return float(((maps == 2).sum((1, 2, 3)) / inside).mean())

        real_share, gen_share = share(real), share(probe)
        ratio = gen_share / max(real_share, 1e-6)
        self.generators[cls]["fail_ratio"] = round(ratio, 4)
        if not budget <= ratio <= 1 / budget:
            log.warning(
                "Generate: the VAE of class %r puts %.1f%% fail dies on its maps against %.1f%% "
                "in the real ones (ratio %.2f outside [%.2f, %.2f]); it has not learned the "
                "pattern, so the class falls back to augmentation",
                cls,
                100 * gen_share,
                100 * real_share,
                ratio,
                budget,
                1 / budget,
            )
            entry = self.generators[cls]
            entry["method"] = "augment"
            entry.pop("weights", None)
            self._models.pop(cls, None)

    def _class_seed(self, cls: str) -> int:
        index = self.classes.index(cls) if cls in self.classes else 0
        return int(self.config.seed) * 1_000_003 + 7919 * (index + 1)

    def _train(self, cls: str, images: torch.Tensor, wafer: bool, device: torch.device) -> ConvVAE:
        s = self.config.size
        if wafer:
            small = resize_batch(images, (s, s), "nearest")
        else:
            small = resize_batch(images, (s, s), "antialias")
        ranges = self.config.augment
        augment = None
        if self.config.train_augment:

            def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
                return augment_batch(batch, wafer=wafer, ranges=ranges, generator=gen)[0]

        log.info("Generate: training a VAE for class %r on %d samples", cls, len(images))
        with torch_threads(self.config.threads):
            return train_vae(
                small,
                wafer=wafer,
                settings=self.settings,
                seed=self._class_seed(cls),
                device=device,
                augment=augment,
                progress=self.config.progress,
                desc=f"vae {cls}",
            )

    def run(self, data: ImageSet) -> ImageSet:
        """Inference: data pass through untouched."""
        self.check_input(data)
        return data

    def fit_run(self, data: ImageSet) -> ImageSet:
        """Training time: fit the generators, then the real samples followed by synthetic ones."""
        self.check_input(data)
        data = data.materialize()
        self.fit(data)
        plan = self._plan(data)
        base = data if type(data) is ImageSet else ImageSet.build(**data.base_fields())
        if base.masks is not None or base.boxes is not None:
            log.warning(
                "Generate: generated samples have no masks or boxes, so the training set it "
                "returns carries none; use Augment to keep them"
            )
            base = base.replace(masks=None, boxes=None)
        taken = set(base.ids)
        parts = [base]
        for c, need in plan.items():
            if need == 0:
                continue
            start = 0
            while any(f"gen:{c}:{k}" in taken for k in range(start, start + need)):
                start += need
            parts.append(self.sample(c, need, start=start))
        if len(parts) == 1:
            return base
        log.info(
            "Generate added %d synthetic samples (%s)",
            sum(len(p) for p in parts[1:]),
            ", ".join(f"{c}: +{k}" for c, k in plan.items() if k),
        )
        return ImageSet.concat(parts)

    # ------------------------------------------------------------------ sampling
    def sample(
        self, class_name: str, n: int, *, seed: int | None = None, start: int = 0
    ) -> ImageSet:
        """Generate ``n`` synthetic samples of one class with its trained generator.

        Args:
            class_name: A class this stage trained a generator for.
            n: How many samples.
            seed: Seed of this draw (default: the stage's ``seed``).
            start: First number of the ids ``"gen:<class>:<k>"``.

        Returns:
            An :class:`ImageSet` of ``n`` samples flagged ``synthetic=True``.

        Example:
            >>> pipe = Pipeline.load("models/wafer-line")  # doctest: +SKIP
            >>> more = pipe["generate"].sample("Donut", 500)  # doctest: +SKIP
        """
        if not self.generators:
            raise NotFittedError("Generate has no trained generators; call fit() first")
        if class_name not in self.generators:
            raise DataError(
                f"Generate has no generator for class {class_name!r}; it has "
                f"{sorted(self.generators)} (classes that already held per_class samples get none)"
            )
        if n <= 0:
            raise ConfigError(f"n must be a positive number of samples, got {n}")
        entry = self.generators[class_name]
        base_seed = self._class_seed(class_name) if seed is None else int(seed)
        gen = torch.Generator().manual_seed(base_seed + 104_729)
        stored: torch.Tensor = entry["samples"]
        origins: list[int] | None = None
        if entry["method"] == "vae":
            model = self._model(class_name)
            if self.wafer:
                pick = spread_sources(len(stored), n, gen)
                images = sample_wafers(
                    model,
                    stored[pick],
                    generator=gen,
                    temperature=self.config.temperature,
                    sharpness=self.config.sharpness,
                )
                origins = pick.tolist()
            else:
                dtype = torch.uint8 if self.dtype == "uint8" else torch.float32
                images = sample_images(
                    model,
                    n,
                    self.image_size,
                    generator=gen,
                    dtype=dtype,
                    temperature=self.config.temperature,
                )
        else:
            pick = spread_sources(len(stored), n, gen)
            images, _, _ = augment_batch(
                stored[pick], wafer=self.wafer, ranges=self.config.augment, generator=gen
            )
            origins = pick.tolist()
        method = entry["method"]
        samples = [
            SampleMeta(
                id=f"gen:{class_name}:{start + k}",
                source=f"generate:{method}",
                label=class_name,
                synthetic=True,
                meta={"method": method}
                if origins is None
                else {"method": method, "kept_sample": origins[k]},
            )
            for k in range(n)
        ]
        return ImageSet.build(
            images=images, samples=samples, classes=list(self.classes), kind=self.kind
        )

    def _model(self, cls: str) -> ConvVAE:
        model = self._models.get(cls)
        if model is None:
            model = ConvVAE(
                in_channels=3 if self.wafer else self.channels,
                out_channels=1 if self.wafer else self.channels,
                size=self.config.size,
                latent=self.config.latent,
                width=self.config.width,
                condition_channels=1 if self.wafer else 0,
            )
            model.load_state_dict(self.generators[cls]["weights"])
            model.eval()
            self._models[cls] = model
        return model

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Generator weights, kept samples and the data layout (tensors and plain values)."""
        if not self.generators:
            return {}
        return {
            "version": STATE_VERSION,
            "classes": list(self.classes),
            "kind": self.kind,
            "wafer": self.wafer,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "dtype": self.dtype,
            "timings": dict(self.timings),
            "generators": {
                c: {
                    k: v
                    for k, v in e.items()
                    if k in ("method", "n_real", "samples", "weights", "fail_ratio")
                }
                for c, e in self.generators.items()
            },
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore generators saved by :meth:`get_state`."""
        self._reset()
        if not state:
            self.fitted = True
            return
        if int(state.get("version", 0)) > STATE_VERSION:
            raise DataError(
                f"Generate state version {state.get('version')} is newer than {STATE_VERSION}; "
                "upgrade inspectkit"
            )
        self.classes = list(state["classes"])
        self.kind = str(state["kind"])
        self.wafer = bool(state["wafer"])
        self.image_size = (int(state["image_size"][0]), int(state["image_size"][1]))
        self.channels = int(state["channels"])
        self.dtype = str(state["dtype"])
        self.timings = {str(k): float(v) for k, v in state.get("timings", {}).items()}
        self.generators = {str(c): dict(e) for c, e in state["generators"].items()}
        for c, e in self.generators.items():
            if e["method"] == "vae":
                self._model(c)  # fail now, not at the first sample, if weights do not fit
        self.fitted = True


__all__ = ["Generate"]
