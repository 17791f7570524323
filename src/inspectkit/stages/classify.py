"""``Classifier``: a supervised image classifier stage with class probabilities.

It trains one of :mod:`inspectkit.models`' networks on a labelled :class:`ImageSet`
(after ``Wrangle(size=...)``) and returns :class:`Predictions` with a probability for
every class. Imbalance is handled by a class-weighted loss and/or a balanced sampler; a
stratified validation split carved from the training data drives early stopping and the
restore of the best epoch. Under ``torchrun`` the same ``fit`` trains with
DistributedDataParallel.

Input handling at prediction time:

* wafer maps (``kind="wafer"``) are one-hot encoded (outside / pass / fail channels);
  photos are scaled to [0, 1] and standardised with the training set's channel means;
* images of another **size** are resized to the training size (nearest neighbour for
  wafer maps, antialiased bilinear for photos), so ragged or lazy sets work too;
* images of another **channel count** or **kind** are refused with a ``DataError``:
  convert them with ``Wrangle(channels=...)`` first, since silently changing colour
  layout would change what the model sees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from inspectkit.errors import ConfigError, DataError
from inspectkit.models.classifiers import ClassifierNet, build_classifier, count_parameters
from inspectkit.models.distributed import DistInfo, ShardedSampler, setup_distributed
from inspectkit.models.training import (
    TrainResult,
    dihedral_augment,
    flip_augment,
    predict_logits,
    train_epochs,
)
from inspectkit.ops import resize_images
from inspectkit.records import ImageSet, LazyImages, Predictions
from inspectkit.runtime import resolve_device, seed_everything
from inspectkit.stage import Stage, StageConfig

log = logging.getLogger(__name__)

Imbalance = Literal["weighted_loss", "balanced_sampler", "both", "none"]
WAFER_CODES = 3


def _collate(batch: Any) -> Any:
    return batch


class _IndexedImages(Dataset):
    """Batched access (``__getitems__``) to uint8/float images and targets by index."""

    def __init__(
        self, images: torch.Tensor | LazyImages, targets: torch.Tensor, size: tuple[int, int]
    ) -> None:
        self.images = images
        self.targets = targets
        self.size = size

    def __len__(self) -> int:
        return len(self.targets)

    def _take(self, idx: list[int]) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return self.images[torch.as_tensor(idx, dtype=torch.long)]
        imgs = [self.images[i] for i in idx]
        bad = [i for i, t in zip(idx, imgs) if tuple(t.shape[-2:]) != self.size]
        if bad:
            raise DataError(
                f"training image {bad[0]} is {tuple(imgs[0].shape[-2:])}, not {self.size}; "
                "put Wrangle(size=...) before the Classifier"
            )
        return torch.stack(imgs)

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._take(idx), self.targets[torch.as_tensor(idx, dtype=torch.long)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]


class Classifier(Stage[ImageSet, Predictions]):
    """Supervised classifier: trains a network, predicts class probabilities.

    Args:
        arch: ``"compact"`` (depthwise-separable CNN sized by ``max_params``),
            ``"resnet18"``, ``"mobilenet_v3_small"`` or ``"efficientnet_b0"``.
        max_params: Parameter budget of the compact family.
        width: Explicit channel multiplier of the compact family (overrides the budget).
        depth: Residual blocks per resolution level (compact).
        pool: Global pooling of the compact family: ``"avg"`` or ``"avgmax"`` (average
            and max side by side; max keeps small and thin defects visible).
        weights: Local torchvision-layout weights file for the backbones (no downloads).
        epochs: Maximum training epochs.
        batch_size: Batch size per process.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        schedule: ``"onecycle"``, ``"cosine"`` or ``"constant"``.
        imbalance: ``"weighted_loss"`` (loss weights ∝ 1/√frequency),
            ``"balanced_sampler"`` (draw ∝ 1/√frequency), ``"both"`` (together ≈ 1/frequency)
            or ``"none"``.
        augment: ``"auto"`` (all 8 flips/rotations for wafer maps, flips for photos),
            ``"dihedral"``, ``"flip"`` or ``"none"``.
        label_smoothing: Cross-entropy label smoothing.
        val_fraction: Fraction of the real training samples held out (stratified) for
            early stopping; 0 trains on everything for ``epochs`` epochs.
        patience: Epochs without a better validation macro-F1 before stopping.
        time_budget: Stop training after this many seconds (checked after each epoch).
        ema: Decay of an exponential moving average of the weights that is validated and
            kept (smooths the epoch-to-epoch swings of small, imbalanced data);
            ``None`` keeps the raw weights.
        seed: Seed of initialisation, split, sampling and augmentation.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        amp: Mixed precision on CUDA (ignored on CPU).
        batch_size_predict: Batch size of inference. The default, 128, keeps a compact
            network's activations in the CPU caches (on 2 cores, 512-map batches ran at
            65 % and 1,024-map batches at 30 % of its speed); raise it on a GPU.
        num_workers: DataLoader workers feeding training batches (0 = main process).
        progress: tqdm bar with loss and validation macro-F1.
        reject_below: Predictions whose top probability is below this go to ``None``
            ("needs human review"); ``None`` never rejects.
        tta: Test-time augmentation: probabilities averaged over the identity and a
            horizontal flip (``"flip"``, 2 passes) or over all 8 flips/quarter-turns
            (``"dihedral"``, 8 passes; square inputs, else the 4 flips); ``"none"`` is
            one pass. Costs that many times the inference time.

    Example:
        >>> from inspectkit.stages import Classifier
        >>> clf = Classifier(arch="compact", epochs=20, reject_below=0.6)
        >>> clf.config.imbalance
        'weighted_loss'
    """

    name = "classifier"
    stateful = True

    class Config(StageConfig):
        arch: Literal["compact", "resnet18", "mobilenet_v3_small", "efficientnet_b0"] = "compact"
        max_params: int = Field(100_000, ge=1_000)
        width: float | None = Field(None, gt=0)
        depth: int = Field(2, ge=0, le=8)
        pool: Literal["avg", "avgmax"] = "avg"
        dropout: float = Field(0.1, ge=0, lt=1)
        weights: str | None = None
        epochs: int = Field(30, ge=1)
        batch_size: int = Field(128, ge=2)
        lr: float = Field(3e-3, gt=0)
        weight_decay: float = Field(1e-4, ge=0)
        schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
        imbalance: Imbalance = "weighted_loss"
        augment: Literal["auto", "dihedral", "flip", "none"] = "auto"
        label_smoothing: float = Field(0.0, ge=0, lt=1)
        val_fraction: float = Field(0.1, ge=0, lt=1)
        patience: int | None = Field(6, ge=0)
        time_budget: float | None = Field(None, gt=0)
        ema: float | None = Field(None, gt=0, lt=1)
        seed: int = 0
        device: str = "auto"
        amp: bool = True
        batch_size_predict: int = Field(128, ge=1)
        num_workers: int = Field(0, ge=0)
        progress: bool = True
        reject_below: float | None = Field(None, ge=0, le=1)
        tta: Literal["none", "flip", "dihedral"] = "none"

        @field_validator("weights", mode="before")
        @classmethod
        def _path_str(cls, v: Any) -> Any:
            return None if v is None else str(v)

    config: Config

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.model: ClassifierNet | None = None
        self.classes: list[str] = []
        self.kind: str = "image"
        self.input_size: tuple[int, int] = (0, 0)
        self.data_channels: int = 0
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []
        self.train_result: TrainResult | None = None
        self._device = torch.device("cpu")

    # ------------------------------------------------------------------ preprocessing
    @property
    def model_channels(self) -> int:
        """Channels the network takes (3 for one-hot wafer maps)."""
        return WAFER_CODES if self.kind == "wafer" else self.data_channels

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Turn stored images (uint8 / float, ``N×C×H×W``) into the network's float input.

        Wafer codes 0/1/2 become three one-hot channels; photos are scaled to [0, 1]
        (uint8 / 255) and standardised with the training set's per-channel mean and
        standard deviation. Explanation methods feed ``model(preprocess(x))``.

        Example:
            >>> clf = Classifier()
            >>> clf.kind = "wafer"
            >>> clf.preprocess(torch.tensor([[[[0, 2]]]], dtype=torch.uint8)).shape
            torch.Size([1, 3, 1, 2])
        """
        if self.kind == "wafer":
            codes = images[:, 0]
            if codes.dtype != torch.uint8:
                codes = codes.round().clamp(0, WAFER_CODES - 1).to(torch.uint8)
            levels = torch.arange(WAFER_CODES, dtype=torch.uint8, device=codes.device)
            # N×H×W×3 comparison viewed as N×3×H×W: already channels-last in memory
            return (codes.unsqueeze(-1) == levels).permute(0, 3, 1, 2).float()
        x = images.float() / 255.0 if not images.dtype.is_floating_point else images.float()
        if self.mean is not None and self.std is not None:
            x = (x - self.mean.to(x.device).view(1, -1, 1, 1)) / self.std.to(x.device).view(
                1, -1, 1, 1
            )
        return x

    def _augment_fn(self) -> Any:
        mode = self.config.augment
        if mode == "auto":
            mode = "dihedral" if self.kind == "wafer" else "flip"
        return {"dihedral": dihedral_augment, "flip": flip_augment, "none": None}[mode]

    # ------------------------------------------------------------------ checks
    def _check_training_set(self, data: ImageSet) -> tuple[ImageSet, torch.Tensor]:
        self.check_input(data)
        if not data.classes:
            raise DataError("the training set declares no classes; set ImageSet.classes")
        known = set(data.classes)
        unknown = sorted(
            {s.label for s in data.samples if s.label is not None and s.label not in known}
        )
        if unknown:
            raise DataError(
                f"labels {unknown} are missing from classes {data.classes}; add them to classes "
                "or relabel those samples"
            )
        labelled = [i for i, s in enumerate(data.samples) if s.label is not None]
        if not labelled:
            raise DataError(
                "the training set has no labels; a supervised Classifier needs a class label per "
                "sample (for good-only data use AnomalyDetector)"
            )
        if len(labelled) < len(data):
            log.warning("Classifier: ignoring %d unlabelled samples", len(data) - len(labelled))
            data = data.subset(labelled)
        present = sorted({s.label for s in data.samples if s.label is not None})
        if len(present) < 2:
            raise DataError(
                f"the training set holds a single class {present}; a classifier needs at least two "
                "classes (for good-only data use AnomalyDetector)"
            )
        if len(data.classes) < 2:
            raise DataError(f"classes {data.classes} has fewer than two entries")
        size = data.size
        if size is None:
            if data.is_lazy:
                first = data.images[0]
                size = (int(first.shape[-2]), int(first.shape[-1]))
            else:
                sizes = {tuple(int(v) for v in t.shape[-2:]) for t in data.images}
                if len(sizes) != 1:
                    raise DataError(
                        f"training images have {len(sizes)} different sizes; put "
                        "Wrangle(size=...) before the Classifier"
                    )
                data = data.replace(images=data.image_tensor())
                size = data.size
        assert size is not None
        self.input_size = (int(size[0]), int(size[1]))
        self.data_channels = int(data.channels or 0)
        self.kind = data.kind
        return data, data.targets()

    def _check_predict_input(self, data: ImageSet) -> None:
        self.check_input(data)
        self.check_fitted()
        if data.kind != self.kind:
            raise DataError(
                f"this Classifier was trained on {self.kind!r} images but got {data.kind!r} images"
            )
        if data.channels != self.data_channels:
            raise DataError(
                f"this Classifier was trained on {self.data_channels}-channel images but got "
                f"{data.channels}-channel images; convert them with Wrangle(channels={self.data_channels})"
            )

    # ------------------------------------------------------------------ fit
    def _build_model(self, num_classes: int) -> ClassifierNet:
        c = self.config
        kwargs: dict[str, Any] = {"dropout": c.dropout}
        if c.arch == "compact":
            kwargs.update(max_params=c.max_params, width=c.width, depth=c.depth, pool=c.pool)
        return build_classifier(
            c.arch,
            self.model_channels,
            num_classes,
            input_size=self.input_size,
            weights=c.weights if c.arch != "compact" else None,
            **kwargs,
        )

    def _split(self, targets: torch.Tensor, real: torch.Tensor) -> tuple[list[int], list[int]]:
        """Stratified train/val positions; validation holds real samples only."""
        frac = self.config.val_fraction
        all_idx = list(range(len(targets)))
        real_idx = [i for i in all_idx if bool(real[i])]
        if frac <= 0 or len(real_idx) < 4:
            return all_idx, []
        y = targets[real_idx].numpy()
        counts = torch.bincount(torch.as_tensor(y), minlength=1)
        n_val = max(1, round(frac * len(real_idx)))
        stratify = (
            y if int(counts[counts > 0].min()) >= 2 and n_val >= int((counts > 0).sum()) else None
        )
        if stratify is None:
            log.warning("Classifier: validation split is not stratified (a class has < 2 samples)")
        _, val = train_test_split(
            real_idx, test_size=n_val, stratify=stratify, random_state=self.config.seed % (2**32)
        )
        val_set = set(val)
        return [i for i in all_idx if i not in val_set], sorted(val)

    def _stats(self, images: torch.Tensor | LazyImages, idx: list[int]) -> None:
        if self.kind == "wafer":
            self.mean = self.std = None
            return
        take = idx[:: max(1, len(idx) // 2048)]
        if isinstance(images, torch.Tensor):
            sample = images[torch.as_tensor(take)]
        else:
            sample = torch.stack([images[i] for i in take])
        x = sample.float() / 255.0 if not sample.dtype.is_floating_point else sample.float()
        self.mean = x.mean(dim=(0, 2, 3))
        self.std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)

    def fit(self, data: ImageSet) -> Classifier:
        """Train on a labelled, uniformly sized :class:`ImageSet`.

        Raises:
            DataError: No labels, a single class, labels missing from ``classes``,
                images of different sizes, or an empty set.
        """
        c = self.config
        data, targets = self._check_training_set(data)
        dev = resolve_device(c.device)
        info: DistInfo = setup_distributed(dev)
        dev = info.device
        seed_everything(c.seed)
        labelled = targets >= 0
        assert bool(labelled.all())
        self.classes = list(data.classes)
        k = len(self.classes)
        real = torch.tensor([not s.synthetic for s in data.samples])
        train_idx, val_idx = self._split(targets, real)
        images: torch.Tensor | LazyImages = data.images  # type: ignore[assignment]
        self._stats(images, train_idx)

        counts = torch.bincount(targets[train_idx], minlength=k).double()
        inv_sqrt = 1.0 / counts.clamp_min(1).sqrt()
        class_weights = None
        if c.imbalance in ("weighted_loss", "both"):
            w = inv_sqrt * (counts > 0)
            class_weights = (w / (w * counts).sum() * counts.sum()).float()
        sample_weights = None
        if c.imbalance in ("balanced_sampler", "both"):
            sample_weights = inv_sqrt[targets[train_idx]]

        self.model = self._build_model(k)
        log.info(
            "Classifier: %s with %d parameters, %d train / %d val samples, %d process(es)",
            c.arch,
            count_parameters(self.model),
            len(train_idx),
            len(val_idx),
            info.world_size,
        )
        train_set = _IndexedImages(images, targets, self.input_size)
        subset = _SubsetBatches(train_set, train_idx)
        sampler: Any
        if sample_weights is None and info.enabled:
            sampler = DistributedSampler(
                subset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=c.seed
            )
        else:
            sampler = ShardedSampler(
                len(train_idx),
                weights=sample_weights,
                rank=info.rank,
                world_size=info.world_size,
                seed=c.seed,
            )
        loader = DataLoader(
            subset,
            batch_size=c.batch_size,
            sampler=sampler,
            num_workers=c.num_workers,
            collate_fn=_collate,
            drop_last=len(train_idx) // info.world_size > c.batch_size,
            persistent_workers=c.num_workers > 0,
        )
        augment = self._augment_fn()
        aug_gen = torch.Generator().manual_seed(c.seed + 104729 * (info.rank + 1))

        def transform(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if augment is not None:
                x = augment(x, aug_gen)
            return self.preprocess(x), y

        validate = None
        if val_idx:
            val_targets = targets[val_idx].numpy()

            def validate(net: nn.Module) -> float:
                logits = predict_logits(net, self._batches_at(train_set, val_idx), device=dev)
                pred = logits.argmax(1).numpy()
                return float(f1_score(val_targets, pred, average="macro", zero_division=0))

        self._device = dev
        self.train_result = train_epochs(
            self.model,
            loader,
            epochs=c.epochs,
            lr=c.lr,
            weight_decay=c.weight_decay,
            schedule=c.schedule,
            class_weights=class_weights,
            label_smoothing=c.label_smoothing,
            device=dev,
            transform=transform,
            validate=validate,
            patience=c.patience,
            amp=c.amp,
            time_budget=c.time_budget,
            ema=c.ema,
            progress=c.progress,
            desc=f"Classifier[{c.arch}]",
        )
        self.history = self.train_result.history
        self.model = self.model.cpu().eval()
        self._device = dev
        self.fitted = True
        return self

    def _batches_at(self, ds: _IndexedImages, idx: list[int]) -> Iterator[torch.Tensor]:
        bs = self.config.batch_size_predict
        for start in range(0, len(idx), bs):
            x, _ = ds.__getitems__(idx[start : start + bs])
            yield self.preprocess(x)

    # ------------------------------------------------------------------ predict
    def _input_batches(self, data: ImageSet) -> Iterator[torch.Tensor]:
        bs = self.config.batch_size_predict
        mode: Literal["nearest", "antialias"] = "nearest" if self.kind == "wafer" else "antialias"
        images = data.images
        warned = False
        for start in range(0, len(data), bs):
            if isinstance(images, torch.Tensor):
                batch: torch.Tensor | list[torch.Tensor] = images[start : start + bs]
            else:
                batch = [images[i] for i in range(start, min(start + bs, len(data)))]
            sizes = {tuple(int(v) for v in t.shape[-2:]) for t in batch}
            if sizes != {self.input_size}:
                if not warned:
                    log.info(
                        "Classifier: resizing inputs of sizes %s to %s",
                        sorted(sizes)[:3],
                        self.input_size,
                    )
                    warned = True
                batch = resize_images(batch, self.input_size, mode)
            elif not isinstance(batch, torch.Tensor):
                batch = torch.stack(batch)
            yield self.preprocess(batch)

    def predict_proba(self, data: ImageSet) -> torch.Tensor:
        """Class probabilities, ``N×K`` (columns follow :attr:`classes`).

        Example:
            >>> probs = clf.predict_proba(test)  # doctest: +SKIP
        """
        self._check_predict_input(data)
        assert self.model is not None
        dev = (
            self._device
            if self._device.type == "cpu" or torch.cuda.is_available()
            else torch.device("cpu")
        )
        # BatchNorm folded into the convolutions: same probabilities, faster on CPU
        model: nn.Module = self.model.fused().to(dev)
        if self.config.tta != "none":
            model = ViewAverage(model, self.config.tta)
        logits = predict_logits(model, self._input_batches(data), device=dev)
        return torch.softmax(logits.double(), dim=1).float()

    def run(self, data: ImageSet) -> Predictions:
        """Predict every sample: probabilities for all classes and the top label.

        With ``reject_below`` set, samples whose top probability is lower get the label
        ``None`` (send to a person).
        """
        probs = self.predict_proba(data)
        top, idx = probs.max(dim=1)
        threshold = self.config.reject_below
        if threshold is not None and not 0 <= threshold <= 1:
            raise ConfigError(f"reject_below must be within [0, 1], got {threshold}")
        predicted: list[str | None] = [self.classes[int(i)] for i in idx]
        if threshold is not None:
            predicted = [p if float(t) >= threshold else None for p, t in zip(predicted, top)]
        fields = data.base_fields()
        if data.classes != self.classes:
            known = set(self.classes)
            unknown = sorted({s.label for s in data.samples if s.label is not None} - known)
            if unknown:
                raise DataError(
                    f"labels {unknown} of the input are not classes of this Classifier {self.classes}"
                )
            fields["classes"] = list(self.classes)
        return Predictions.build(**fields, probs=probs, predicted=predicted)

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Weights and everything needed to rebuild the network (tensors and plain values)."""
        self.check_fitted()
        assert self.model is not None
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "classes": list(self.classes),
            "kind": self.kind,
            "input_size": list(self.input_size),
            "data_channels": self.data_channels,
            "mean": None if self.mean is None else self.mean.clone(),
            "std": None if self.std is None else self.std.clone(),
            "history": [dict(h) for h in self.history],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.classes = list(state["classes"])
        self.kind = str(state["kind"])
        self.input_size = (int(state["input_size"][0]), int(state["input_size"][1]))
        self.data_channels = int(state["data_channels"])
        self.mean = state.get("mean")
        self.std = state.get("std")
        self.history = list(state.get("history", []))
        c = self.config
        kwargs: dict[str, Any] = {"dropout": c.dropout}
        if c.arch == "compact":
            kwargs.update(max_params=c.max_params, width=c.width, depth=c.depth, pool=c.pool)
        model = build_classifier(
            c.arch, self.model_channels, len(self.classes), input_size=self.input_size, **kwargs
        )
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise DataError(
                f"saved Classifier weights do not fit its configuration: {exc}"
            ) from None
        self.model = model.eval()
        self._device = torch.device("cpu")
        self.fitted = True

    @property
    def num_parameters(self) -> int:
        """Parameters of the fitted network."""
        self.check_fitted()
        assert self.model is not None
        return count_parameters(self.model)


class ViewAverage(nn.Module):
    """Test-time augmentation: log of the class probabilities averaged over views.

    ``"flip"``: the image and its horizontal mirror; ``"dihedral"``: the 8 flips and
    quarter-turns of a square image (the 4 flips of a non-square one). Each view goes
    through the network as its own pass over the batch, so the network's batch stays the
    size it was given (larger batches fall out of the CPU caches and run slower per map).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> ViewAverage(net, "dihedral")(torch.zeros(2, 1, 4, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, net: nn.Module, views: str) -> None:
        super().__init__()
        if views not in ("flip", "dihedral"):
            raise ConfigError(f"tta must be 'none', 'flip' or 'dihedral', got {views!r}")
        self.net = net
        self.views = views

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.views == "flip":
            return [x, x.flip(-1)]
        if x.shape[-1] != x.shape[-2]:
            return [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
        turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
        return turns + [t.flip(-1) for t in turns]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = self._views(x)
        total: torch.Tensor | None = None
        for view in views:
            if view.device.type == "cpu" and view.ndim == 4:
                view = view.contiguous(memory_format=torch.channels_last)
            probs = torch.softmax(self.net(view).float(), dim=1)
            total = probs if total is None else total + probs
        assert total is not None
        return (total / len(views)).clamp_min(1e-12).log()


class _SubsetBatches(Dataset):
    """The training positions of an :class:`_IndexedImages`, fetched a batch at a time."""

    def __init__(self, base: _IndexedImages, idx: list[int]) -> None:
        self.base = base
        self.idx = torch.as_tensor(idx, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.__getitems__(self.idx[torch.as_tensor(positions)].tolist())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]


__all__ = ["Classifier", "ViewAverage"]
