"""``Classifier``: a supervised image classifier stage with class probabilities.

It trains one of :mod:`inspectkit.models`' networks on a labelled :class:`ImageSet`
and returns :class:`Predictions` with a probability for every class. Imbalance is
handled by a class-weighted loss and/or a balanced sampler; a stratified validation
split carved from the training data drives early stopping and the restore of the best
epoch. Under ``torchrun`` the same ``fit`` trains with DistributedDataParallel.

Input handling goes through the stage's :class:`~inspectkit.models.inputs.InputSpec`
(``input_spec``), the same at fit, at predict and when explaining:

* the **input size** is ``size`` when set, else the training images' size when they
  share one (ragged training images without ``size`` are refused); every batch of
  another size is resized to it, at fit and at predict alike (nearest neighbour for
  wafer maps, antialiased bilinear for photos), so ragged or lazy sets work too;
* wafer maps (``kind="wafer"``) are one-hot encoded (outside / pass / fail channels);
  photos are scaled to [0, 1] and standardised with the training set's channel means;
* images of another **channel count** or **kind** are refused with a ``DataError``:
  convert them with ``Wrangle(channels=...)`` first, since silently changing colour
  layout would change what the model sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from inspectkit.errors import ConfigError, DataError, NotFittedError, PersistenceError
from inspectkit.models.classifiers import ClassifierNet, build_classifier, count_parameters
from inspectkit.models.distributed import DistInfo, ShardedSampler, setup_distributed
from inspectkit.models.inputs import WAFER_CODES, InputSpec
from inspectkit.models.training import (
    TrainResult,
    augmentation,
    auto_batch_size,
    check_prediction_spread,
    predict_logits,
    sqrt_inverse_weights,
    train_epochs,
    validation_split,
)
from inspectkit.records import ImageSet, LazyImages, Predictions
from inspectkit.runtime import resolve_device, seed_everything
from inspectkit.stage import ImageSize, Stage, StageConfig

log = logging.getLogger(__name__)

Imbalance = Literal["weighted_loss", "balanced_sampler", "both", "none"]
#: Version of :meth:`Classifier.get_state`'s layout (1: inspectkit 0.1, flat input fields).
STATE_VERSION = 2
#: Most training samples the one-class check predicts when there is no validation split.
SPREAD_CHECK_SAMPLES = 1024


def _collate(batch: Any) -> Any:
    return batch


class _IndexedImages(Dataset):
    """Batched access (``__getitems__``) to training images at the input size and targets.

    ``images`` is a tensor already at the input size, or lazily decoded images that are
    fitted to it batch by batch (``load``).
    """

    def __init__(
        self,
        images: torch.Tensor | LazyImages,
        targets: torch.Tensor,
        load: Callable[[list[torch.Tensor]], torch.Tensor],
    ) -> None:
        self.images = images
        self.targets = targets
        self.load = load

    def __len__(self) -> int:
        return len(self.targets)

    def _take(self, idx: list[int]) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return self.images[torch.as_tensor(idx, dtype=torch.long)]
        return self.load([self.images[i] for i in idx])

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
        size: Input size ``(H, W)`` (an int means square): every image is resized to it at
            fit and at predict. ``None``: the training images' size (they must share one).
        epochs: Maximum training epochs.
        batch_size: Batch size per process; ``"auto"`` picks the largest power of two
            from 16 to 128 that still gives the run 200 optimizer steps
            (:func:`~inspectkit.models.training.auto_batch_size`).
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
        patience: Epochs without a better validation macro-F1 before stopping; epochs
            inside the one-cycle warm-up do not count.
        time_budget: Stop training after this many seconds (checked after each epoch).
        ema: Decay of an exponential moving average of the weights that is validated and
            kept (smooths the epoch-to-epoch swings of small, imbalanced data);
            ``None`` keeps the raw weights.
        seed: Seed of initialisation, split, sampling and augmentation.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        amp: Mixed precision on CUDA (ignored on CPU).
        batch_size_predict: Batch size of inference. The default, 128, keeps a compact
            network's activations in the CPU caches (BENCHMARKS.md); raise it on a GPU.
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
        size: ImageSize | None = None
        epochs: int = Field(30, ge=1)
        batch_size: Annotated[int, Field(ge=2)] | Literal["auto"] = "auto"
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
        #: The input contract of the fitted network (``None`` before ``fit``).
        self.input_spec: InputSpec | None = None
        self.history: list[dict[str, float]] = []
        self.train_result: TrainResult | None = None
        self._device = torch.device("cpu")

    # ------------------------------------------------------------------ input contract
    @property
    def network(self) -> ClassifierNet | None:
        """The trained network (``None`` before ``fit``); with :attr:`input_spec` this is
        what an explanation stage attaches to."""
        return self.model

    @property
    def kind(self) -> str:
        """``"wafer"`` or ``"image"``: the kind of data the network was trained on."""
        return self.input_spec.kind if self.input_spec is not None else "image"

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` the network takes (``(0, 0)`` before ``fit``)."""
        return self.input_spec.size if self.input_spec is not None else (0, 0)

    @property
    def data_channels(self) -> int:
        """Channels of the stored images the network was trained on."""
        return self.input_spec.data_channels if self.input_spec is not None else 0

    @property
    def mean(self) -> torch.Tensor | None:
        """Per-channel mean of the training photos (``None`` for wafer maps)."""
        return self.input_spec.mean if self.input_spec is not None else None

    @property
    def std(self) -> torch.Tensor | None:
        """Per-channel standard deviation of the training photos."""
        return self.input_spec.std if self.input_spec is not None else None

    @property
    def model_channels(self) -> int:
        """Channels the network takes (3 for one-hot wafer maps)."""
        return self.input_spec.model_channels if self.input_spec is not None else 0

    def _spec(self) -> InputSpec:
        if self.input_spec is None:
            raise NotFittedError("Classifier must be fitted before its input can be prepared")
        return self.input_spec

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Turn stored images at the input size (uint8 / float, ``N×C×H×W``) into the
        network's float input: :meth:`InputSpec.encode` of :attr:`input_spec`.

        Wafer codes 0/1/2 become three one-hot channels; photos are scaled to [0, 1]
        (uint8 / 255) and standardised with the training set's per-channel mean and
        standard deviation. ``model(preprocess(x))`` gives the logits.

        Example:
            >>> x = clf.preprocess(test.image_tensor())  # doctest: +SKIP
        """
        return self._spec().encode(images)

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
        return data, data.targets()

    def _input_size(self, data: ImageSet) -> tuple[int, int]:
        """``size`` when set, else the one size the training images share."""
        if self.config.size is not None:
            return self.config.size
        if data.size is not None:
            return data.size
        if data.is_lazy:  # decoding every image to learn its size would read the whole set
            first = data.images[0]
            return int(first.shape[-2]), int(first.shape[-1])
        sizes = {tuple(int(v) for v in t.shape[-2:]) for t in data.images}
        if len(sizes) != 1:
            raise self._ragged_error(len(sizes))
        (size,) = sizes
        return size  # type: ignore[return-value]

    @staticmethod
    def _ragged_error(n_sizes: int | None = None) -> DataError:
        what = f"have {n_sizes} different sizes" if n_sizes else "differ in size"
        return DataError(
            f"training images {what}; set the input size with Classifier(size=...) or put "
            "Wrangle(size=...) before the Classifier"
        )

    def _check_predict_input(self, data: ImageSet) -> InputSpec:
        self.check_input(data)
        self.check_fitted()
        spec = self._spec()
        spec.check(data, "Classifier")
        return spec

    # ------------------------------------------------------------------ fit
    def _build_model(self, num_classes: int, spec: InputSpec, *, weights: bool) -> ClassifierNet:
        c = self.config
        kwargs: dict[str, Any] = {"dropout": c.dropout}
        if c.arch == "compact":
            kwargs.update(max_params=c.max_params, width=c.width, depth=c.depth, pool=c.pool)
        return build_classifier(
            c.arch,
            spec.model_channels,
            num_classes,
            input_size=spec.size,
            weights=c.weights if weights and c.arch != "compact" else None,
            **kwargs,
        )

    def fit(self, data: ImageSet) -> Classifier:
        """Train on a labelled :class:`ImageSet`; images are fitted to the input size
        (``size``, else the size the training images share).

        Raises:
            DataError: No labels, a single class, labels missing from ``classes``,
                training images of several sizes without ``size``, or an empty set.
        """
        c = self.config
        data, targets = self._check_training_set(data)
        spec = InputSpec(
            kind=data.kind,
            data_channels=int(data.channels or 0),
            size=self._input_size(data),
            size_policy="resize",
        )
        dev = resolve_device(c.device)
        info: DistInfo = setup_distributed(dev)
        dev = info.device
        seed_everything(c.seed)
        labelled = targets >= 0
        assert bool(labelled.all())
        self.classes = list(data.classes)
        k = len(self.classes)
        real = torch.tensor([not s.synthetic for s in data.samples])
        train_idx, val_idx = validation_split(
            targets, c.val_fraction, seed=c.seed, eligible=real, desc="Classifier"
        )

        images: torch.Tensor | LazyImages
        if isinstance(data.images, LazyImages):
            images = data.images
            strict = c.size is None

            def load(batch: list[torch.Tensor]) -> torch.Tensor:
                if strict and any(tuple(t.shape[-2:]) != spec.size for t in batch):
                    raise self._ragged_error()
                return spec.fit_size(batch)
        else:
            # one resize of the whole set (grouped by size), not one per batch and epoch
            images = spec.fit_size(data.images)
            load = spec.fit_size
        train_set = _IndexedImages(images, targets, load)
        take = train_idx[:: max(1, len(train_idx) // 2048)]
        spec = spec.with_stats(train_set._take(take))
        self.input_spec = spec

        counts = torch.bincount(targets[train_idx], minlength=k).double()
        class_weights = None
        if c.imbalance in ("weighted_loss", "both"):
            class_weights = sqrt_inverse_weights(counts)
        sample_weights = None
        if c.imbalance in ("balanced_sampler", "both"):
            sample_weights = (1.0 / counts.clamp_min(1).sqrt())[targets[train_idx]]

        self.model = self._build_model(k, spec, weights=True)
        batch_size = (
            auto_batch_size(len(train_idx) // info.world_size, c.epochs)
            if c.batch_size == "auto"
            else c.batch_size
        )

        log.info(
            "Classifier: %s with %d parameters at %s, %d train / %d val samples, batch %d, "
            "%d process(es)",
            c.arch,
            count_parameters(self.model),
            spec.size,
            len(train_idx),
            len(val_idx),
            batch_size,
            info.world_size,
        )
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
            batch_size=batch_size,
            sampler=sampler,
            num_workers=c.num_workers,
            collate_fn=_collate,
            drop_last=len(train_idx) // info.world_size > batch_size,
            persistent_workers=c.num_workers > 0,
        )
        augment = augmentation(c.augment, spec.kind)
        aug_gen = torch.Generator().manual_seed(c.seed + 104729 * (info.rank + 1))

        def transform(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if augment is not None:
                x = augment(x, aug_gen)
            return spec.encode(x, channels_last=x.device.type == "cpu"), y

        check_idx = val_idx or train_idx[:: max(1, len(train_idx) // SPREAD_CHECK_SAMPLES)]
        check_targets = targets[check_idx]
        best: dict[str, Any] = {"score": -1.0, "pred": None}

        def predicted(net: nn.Module) -> torch.Tensor:
            return predict_logits(net, self._batches_at(train_set, check_idx), device=dev).argmax(1)

        validate = None
        if val_idx:

            def validate(net: nn.Module) -> float:
                pred = predicted(net)
                score = float(
                    f1_score(check_targets.numpy(), pred.numpy(), average="macro", zero_division=0)
                )
                if score > best["score"]:  # the epoch train_epochs keeps (same rule)
                    best.update(score=score, pred=pred)
                return score

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
        kept = best["pred"] if best["pred"] is not None else predicted(self.model)
        self.train_result.one_class = check_prediction_spread(
            kept, check_targets, desc=f"Classifier[{c.arch}]"
        )
        self.history = self.train_result.history
        self.model = self.model.cpu().eval()
        self.fitted = True
        return self

    def _batches_at(self, ds: _IndexedImages, idx: list[int]) -> Iterator[torch.Tensor]:
        bs = self.config.batch_size_predict
        spec = self._spec()
        for start in range(0, len(idx), bs):
            x, _ = ds.__getitems__(idx[start : start + bs])
            yield spec.encode(x)

    # ------------------------------------------------------------------ predict
    def _input_batches(self, data: ImageSet) -> Iterator[torch.Tensor]:
        """The network's input for ``data``, batch by batch (resized where needed)."""
        spec = self._spec()
        if data.size is not None and data.size != spec.size:
            log.info("Classifier: resizing %s inputs to %s", data.size, spec.size)
        return spec.batches(data.images, self.config.batch_size_predict)

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
        # BatchNorm folded into the convolutions: same probabilities, fewer memory passes
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
        """Weights, the input contract and the class list (tensors and plain values)."""
        self.check_fitted()
        assert self.model is not None
        return {
            "version": STATE_VERSION,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "classes": list(self.classes),
            "input": self._spec().get_state(),
            "history": [dict(h) for h in self.history],
        }

    @staticmethod
    def _spec_from_state(state: dict[str, Any]) -> InputSpec:
        version = int(state.get("version", 1))
        if version > STATE_VERSION:
            raise PersistenceError(
                f"Classifier state version {version} is newer than {STATE_VERSION}; "
                "upgrade inspectkit to load this model"
            )
        if "input" in state:
            return InputSpec.from_state(state["input"])
        try:  # version 1 (inspectkit 0.1): the input fields sat beside the weights
            return InputSpec(
                kind=state["kind"],
                data_channels=int(state["data_channels"]),
                size=(int(state["input_size"][0]), int(state["input_size"][1])),
                mean=state.get("mean"),
                std=state.get("std"),
            )
        except (KeyError, TypeError, ValueError, IndexError, DataError) as exc:
            raise PersistenceError(
                f"saved Classifier state lacks its input fields: {exc}"
            ) from None

    def set_state(self, state: dict[str, Any]) -> None:
        spec = self._spec_from_state(state)
        self.classes = list(state["classes"])
        self.history = list(state.get("history", []))
        model = self._build_model(len(self.classes), spec, weights=False)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise DataError(
                f"saved Classifier weights do not fit its configuration: {exc}"
            ) from None
        self.input_spec = spec
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


__all__ = ["STATE_VERSION", "WAFER_CODES", "Classifier", "ViewAverage"]
