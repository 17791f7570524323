"""Experience replay over a stream of experiences, on the library's one training loop.

:class:`ReplayTrainer` trains one network experience after experience. Replay is a
batch source (:class:`ReplayBatches`, as Avalanche's replay plugin sits on its one
training template): each mini-batch of new samples is joined by replayed samples drawn
from a :class:`~inspectkit.continual.buffers.ReplayBuffer` (``replay_ratio`` is the share
of the joined batch that comes from memory), and
:func:`~inspectkit.models.training.train_epochs` does the rest — AdamW, the learning-rate
schedule, validation with early stopping and best-epoch restore, EMA weights, AMP on
CUDA and ``torch.distributed`` — exactly as for the ``Classifier``. Two modes:

* ``mode="experience"`` (classic ER): the buffer is updated once, after the experience,
  with the current model's view of the new data (the feature-based policies need it).
* ``mode="batch"``: batch-level replay of the CVPR 2020 CLVision challenge winner
  (Mai et al., "Batch-level Experience Replay with Review"): the buffer sees every
  mini-batch after the step that trained on it, and ``review_epochs`` of training on the
  memory alone at ``lr × review_lr_factor`` close each experience.

With ``ensemble=True`` a frozen copy of the model is kept after each experience and
predictions average the members' class probabilities (per class, over the members
that know the class).

Networks grow their output layer when an experience brings new classes
(:func:`expand_head`): the old rows keep their weights, new rows start small.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from inspectkit.continual import ReplayTrainer, ReservoirBuffer
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    >>> tr = ReplayTrainer(net, buffer=ReservoirBuffer(8), epochs=1, progress=False)
    >>> stats = tr.train_experience(torch.rand(20, 1, 4, 4), torch.arange(20) % 2)
    >>> len(tr.buffer)
    8
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
from sklearn.metrics import f1_score
from torch import nn

from inspectkit.continual.buffers import ReplayBuffer
from inspectkit.errors import ConfigError, DataError
from inspectkit.models.distributed import broadcast_module_buffers
from inspectkit.models.inputs import InputSpec, Kind, wafer_one_hot
from inspectkit.models.training import (
    Schedule,
    check_prediction_spread,
    predict_logits,
    sqrt_inverse_weights,
    train_epochs,
)
from inspectkit.runtime import resolve_device

log = logging.getLogger(__name__)

ReplayMode = Literal["experience", "batch"]
Imbalance = Literal["weighted_loss", "none"]
AugmentFn = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]
#: Most new samples of an experience the one-class check predicts (plus the memory).
SPREAD_CHECK_SAMPLES = 256


# ---------------------------------------------------------------------- model helpers
def model_input(images: torch.Tensor, kind: str, *, channels_last: bool = False) -> torch.Tensor:
    """What the network sees: one-hot codes for wafer maps, [0, 1] floats for photos.

    Deprecated: use :meth:`InputSpec.encode <inspectkit.models.inputs.InputSpec.encode>`
    (which also standardises photos with the training statistics it holds).
    """
    warnings.warn(
        "model_input is deprecated; use inspectkit.models.inputs.InputSpec(...).encode(images)",
        DeprecationWarning,
        stacklevel=2,
    )
    return _plain_spec(images, kind).encode(images, channels_last=channels_last)


def input_channels(channels: int, kind: str) -> int:
    """Network input channels for images with ``channels`` channels of this ``kind``.

    Deprecated: use :attr:`InputSpec.model_channels <inspectkit.models.inputs.InputSpec.model_channels>`.
    """
    warnings.warn(
        "input_channels is deprecated; use inspectkit.models.inputs.InputSpec(...).model_channels",
        DeprecationWarning,
        stacklevel=2,
    )
    return InputSpec(kind=kind, data_channels=channels, size=(1, 1)).model_channels  # type: ignore[arg-type]


def _plain_spec(images: torch.Tensor, kind: str) -> InputSpec:
    """The contract of raw ``N×C×H×W`` samples at their own size, without photo statistics."""
    if images.ndim != 4:
        raise DataError(f"need N×C×H×W images, got shape {tuple(images.shape)}")
    return InputSpec(
        kind=kind,  # type: ignore[arg-type]
        data_channels=int(images.shape[1]),
        size=(int(images.shape[2]), int(images.shape[3])),
        size_policy="refuse",
    )


def find_head(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The final linear layer as ``(parent, attribute, layer)``.

    Uses ``model.head`` when it is an ``nn.Linear`` (inspectkit's classifiers), else the
    last ``nn.Linear`` registered in the model.
    """
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return model, "head", head
    last: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear output layer to grow")
    name, layer = last
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, layer


def num_outputs(model: nn.Module) -> int:
    """Number of classes the model's output layer predicts."""
    return int(find_head(model)[2].out_features)


def expand_head(model: nn.Module, num_classes: int, *, seed: int = 0) -> nn.Module:
    """Give the output layer ``num_classes`` rows, keeping the weights of the old ones.

    New rows are drawn from N(0, 0.01²) with a seeded generator and zero bias (the same
    initialisation as inspectkit's classifiers). Shrinking is refused.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 2))
        >>> w = net[0].weight.detach().clone()
        >>> _ = expand_head(net, 3)
        >>> net[0].out_features, bool((net[0].weight[:2] == w).all())
        (3, True)
    """
    parent, attr, old = find_head(model)
    k = old.out_features
    if num_classes == k:
        return model
    if num_classes < k:
        raise ConfigError(f"cannot shrink the output layer from {k} to {num_classes} classes")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + num_classes)
    with torch.no_grad():
        new.weight.copy_(torch.randn(num_classes, old.in_features, generator=gen) * 0.01)
        new.weight[:k] = old.weight
        if new.bias is not None and old.bias is not None:
            new.bias.zero_()
            new.bias[:k] = old.bias
    setattr(parent, attr, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes  # type: ignore[assignment]
    return model


def embedding_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> N×D`` penultimate features: ``model.embed`` if it exists, else the input of
    the output layer (captured with a forward hook)."""
    embed = getattr(model, "embed", None)
    if callable(embed):
        return embed  # type: ignore[no-any-return]
    _, _, head = find_head(model)

    def hooked(x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
        try:
            model(x)
        finally:
            handle.remove()
        return captured[0]

    return hooked


def _inference_net(model: nn.Module) -> nn.Module:
    """A BatchNorm-folded eval copy where the network offers one (``ClassifierNet.fused``)."""
    fused = getattr(model, "fused", None)
    return fused() if callable(fused) else model


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------- batch source
class ReplayBatches:
    """The batch source of one experience for :func:`~inspectkit.models.training.train_epochs`.

    One pass is one epoch over the new samples in a seeded random order; each mini-batch
    of ``batch_size`` new samples is joined by ``replay_ratio / (1 - replay_ratio)`` times
    as many samples drawn from the buffer. Batches are raw stored samples (uint8 wafer
    codes stay one byte a pixel); the loop encodes them on its device.

    ``after_batch(images, labels)`` is called with each batch's *new* samples once the
    step that trained on them is done (when the loop asks for the next batch, and after
    the last one): batch-level replay updates its buffer there.

    Under ``torch.distributed`` every rank draws the same order; a global batch of
    ``batch_size × world_size`` new samples is split evenly over the ranks (a final batch
    too small to give every rank a sample is left out), and ``after_batch`` sees the
    whole global batch on every rank, so buffers stay identical. Replay draws differ per
    rank.

    Args:
        images: ``N×C×H×W`` new samples of the experience.
        labels: ``N`` class indices.
        batch_size: New samples per mini-batch and process.
        buffer: Replay memory (``None`` or ``replay_ratio=0``: new samples only).
        replay_ratio: Share of each joined batch drawn from memory, in [0, 0.9].
        seed: Seed of the order (and, with the rank, of the replay draws).
        min_batch: Batches with fewer samples are skipped (BatchNorm needs two).
        after_batch: Called with each global batch's new samples after its step.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        buffer: ReplayBuffer | None = None,
        replay_ratio: float = 0.0,
        seed: int = 0,
        min_batch: int = 1,
        after_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.buffer = buffer
        self.replay_ratio = float(replay_ratio)
        self.after_batch = after_batch
        self.min_batch = int(min_batch)
        self.rank, self.world_size = _world()
        # one order stream (each pass draws the next permutation) shared by every rank
        self.order = torch.Generator().manual_seed(int(seed))
        self.draws = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7 * self.rank + 1)

    def _global_batches(self) -> list[tuple[int, int]]:
        n, step = len(self.labels), self.batch_size * self.world_size
        spans = [(s, min(s + step, n)) for s in range(0, n, step)]
        smallest = max(self.world_size, self.min_batch * self.world_size)
        if n > smallest:  # a tiny last batch is left out, never the only one
            spans = [(a, b) for a, b in spans if b - a >= smallest]
        return spans

    def __len__(self) -> int:
        return len(self._global_batches())

    def class_shares(self, num_classes: int) -> torch.Tensor:
        """Expected share of each class in a joined batch: new samples at ``1 - ρ``, the
        memory (as it stands now) at ``ρ``, with ``ρ`` the replay ratio."""
        new = torch.bincount(self.labels, minlength=num_classes).double()
        shares = new / new.sum()
        if self.replay_size(self.batch_size):
            assert self.buffer is not None and self.buffer.labels is not None
            mem = torch.bincount(self.buffer.labels, minlength=num_classes).double()
            rho = self.replay_ratio
            shares = (1 - rho) * shares + rho * mem / mem.sum()
        return shares

    def replay_size(self, n_new: int) -> int:
        """Replayed samples joined to ``n_new`` new ones."""
        if self.buffer is None or len(self.buffer) == 0 or self.replay_ratio == 0:
            return 0
        return max(1, round(n_new * self.replay_ratio / (1 - self.replay_ratio)))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self.labels), generator=self.order)
        for a, b in self._global_batches():
            global_idx = perm[a:b]
            idx = global_idx.tensor_split(self.world_size)[self.rank]
            x, y = self.images[idx], self.labels[idx]
            r = self.replay_size(len(idx))
            if r:
                assert self.buffer is not None
                rx, ry = self.buffer.sample(r, self.draws)
                x, y = torch.cat([x, rx]), torch.cat([y, ry])
            yield x, y
            if self.after_batch is not None:
                self.after_batch(self.images[global_idx], self.labels[global_idx])


# ---------------------------------------------------------------------- trainer
class ReplayTrainer:
    """Train a network on one experience after another with experience replay.

    Args:
        model: Any ``nn.Module`` mapping inputs to logits whose last ``nn.Linear``
            (or ``model.head``) is the output layer; ``model.embed`` is used for features
            when present.
        buffer: Replay memory; ``None`` = plain fine-tuning (the lower bound).
        epochs: Passes over each experience's new samples (at most, with early stopping).
        batch_size: New samples per mini-batch (and process).
        lr: Peak learning rate of AdamW (a fresh optimiser and schedule per experience).
        weight_decay: AdamW weight decay (not on biases and norms).
        replay_ratio: Share of each joined mini-batch drawn from memory, in [0, 0.9]
            (0.5 = as many replayed as new samples).
        mode: ``"experience"`` (update memory after each experience) or ``"batch"``
            (update memory with every mini-batch; batch-level ER).
        review_epochs: Epochs of training on the memory alone after each experience.
        review_lr_factor: Learning-rate factor of the review pass.
        ensemble: Keep a frozen copy per experience and average their probabilities.
        kind: ``"wafer"`` (one-hot codes) or ``"image"`` — how raw samples become inputs
            when no ``input_spec`` is given (then the first experience fixes the size).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: Seed of batch order, replay draws and new output rows.
        progress: Show progress bars.
        channels_last: Encode inputs straight into channels-last memory layout (the
            layout the training loop runs convolutions in on the CPU).
        schedule: Per-step learning-rate schedule of each experience: ``"constant"``,
            ``"onecycle"`` or ``"cosine"``.
        patience: Epochs without a better validation macro-F1 before an experience stops
            (with validation samples given to :meth:`train_experience`).
        ema: Decay of an exponential moving average of the weights, kept as the model.
        amp: Mixed precision on CUDA.
        label_smoothing: Cross-entropy label smoothing.
        augment: Batch augmentation applied to joined batches before encoding, e.g.
            :func:`~inspectkit.models.training.dihedral_augment` (``None``: none).
        imbalance: ``"weighted_loss"``: loss weights ∝ 1/√(each class's expected share of
            a joined batch), as the ``Classifier`` weighs its classes; ``"none"``.
        input_spec: The model-input contract (``None``: built from ``kind`` and the first
            experience, refusing other sizes).

    Example:
        >>> from torch import nn
        >>> tr = ReplayTrainer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), epochs=1, progress=False)
        >>> _ = tr.train_experience(torch.rand(8, 1, 2, 2), torch.tensor([0, 1] * 4))
        >>> tr.predict_proba(torch.rand(3, 1, 2, 2)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        buffer: ReplayBuffer | None = None,
        epochs: int = 3,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        replay_ratio: float = 0.5,
        mode: ReplayMode = "experience",
        review_epochs: int = 0,
        review_lr_factor: float = 0.1,
        ensemble: bool = False,
        kind: str = "image",
        device: str | torch.device = "auto",
        seed: int = 0,
        progress: bool = True,
        channels_last: bool = True,
        schedule: Schedule = "constant",
        patience: int | None = None,
        ema: float | None = None,
        amp: bool = True,
        label_smoothing: float = 0.0,
        augment: AugmentFn | None = None,
        imbalance: Imbalance = "none",
        input_spec: InputSpec | None = None,
    ) -> None:
        if epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {epochs}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= replay_ratio <= 0.9:
            raise ConfigError(f"replay_ratio must be in [0, 0.9], got {replay_ratio}")
        if mode not in ("experience", "batch"):
            raise ConfigError(f"mode must be 'experience' or 'batch', got {mode!r}")
        if review_epochs < 0:
            raise ConfigError(f"review_epochs must be >= 0, got {review_epochs}")
        if not 0 < review_lr_factor <= 1:
            raise ConfigError(f"review_lr_factor must be in (0, 1], got {review_lr_factor}")
        if not lr > 0:
            raise ConfigError(f"lr must be positive, got {lr}")
        if kind not in ("wafer", "image"):
            raise ConfigError(f"kind must be 'wafer' or 'image', got {kind!r}")
        if imbalance not in ("weighted_loss", "none"):
            raise ConfigError(f"imbalance must be 'weighted_loss' or 'none', got {imbalance!r}")
        self.device = resolve_device(device)
        self.channels_last = bool(channels_last)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.buffer = buffer
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.replay_ratio = float(replay_ratio)
        self.mode: ReplayMode = mode
        self.review_epochs = int(review_epochs)
        self.review_lr_factor = float(review_lr_factor)
        self.ensemble = bool(ensemble)
        self.kind: Kind = kind  # type: ignore[assignment]
        self.seed = int(seed)
        self.progress = progress
        self.schedule: Schedule = schedule
        self.patience = patience
        self.ema = ema
        self.amp = bool(amp)
        self.label_smoothing = float(label_smoothing)
        self.augment = augment
        self.imbalance: Imbalance = imbalance
        self.input_spec = input_spec
        self._augment_gen = torch.Generator().manual_seed(self.seed)
        self.members: list[nn.Module] = []
        self.experiences_seen = 0

    # ------------------------------------------------------------------ helpers
    def _spec(self, images: torch.Tensor) -> InputSpec:
        if self.input_spec is None:
            self.input_spec = _plain_spec(images, self.kind)
        return self.input_spec

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        # move the raw codes (uint8 travels 4× lighter), then encode in the model's layout
        return self._spec(images).prepare(
            images, device=self.device, channels_last=self.channels_last
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features of raw samples (eval mode, no gradient), ``N×D`` on CPU."""
        return self._feature_fn(fuse=False)(images)

    def _feature_fn(self, *, fuse: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """A feature function over the model as it is now (for a buffer update).

        With ``fuse=True`` and a network that has a ``fused()`` inference copy
        (inspectkit's compact CNNs fold BatchNorm into the convolutions), features come
        from that copy, built once for the whole update; otherwise the live model is
        switched to eval mode for each call.
        """
        fused = getattr(self.model, "fused", None)
        if fuse and callable(fused):
            frozen = fused()
            embed = embedding_fn(frozen)

            def from_copy(images: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return embed(self._input(images)).float().cpu()

            return from_copy

        def live(images: torch.Tensor) -> torch.Tensor:
            was = self.model.training
            self.model.eval()
            try:
                with torch.inference_mode():
                    return embedding_fn(self.model)(self._input(images)).float().cpu()
            finally:
                self.model.train(was)

        return live

    def _encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.input_spec is not None
        if self.augment is not None:
            x = self.augment(x, self._augment_gen)
        return self.input_spec.encode(x, channels_last=self.channels_last), y

    def _class_weights(self, batches: ReplayBatches, num_classes: int) -> torch.Tensor | None:
        if self.imbalance == "none":
            return None
        return sqrt_inverse_weights(batches.class_shares(num_classes))

    def _batch_update(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Batch-level replay: the buffer sees each trained mini-batch (global under DDP)."""
        assert self.buffer is not None
        features = None
        if self.buffer.needs_features:
            broadcast_module_buffers(self.model)  # ranks embed with the same statistics
            features = self.features
        self.buffer.update(images, labels, features=features)

    def _validation_set(
        self, images: torch.Tensor | None, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The held-out new samples plus the memory as it stands before the experience: a
        model that learns the new classes by forgetting the old ones scores low."""
        if images is None or labels is None or labels.numel() == 0:
            return None, None
        if self.buffer is None or self.buffer.images is None or len(self.buffer) == 0:
            return images, labels
        return torch.cat([images, self.buffer.images]), torch.cat([labels, self.buffer.labels])

    def _validator(
        self, images: torch.Tensor | None, labels: torch.Tensor | None
    ) -> Callable[[nn.Module], float] | None:
        if images is None or labels is None or labels.numel() == 0:
            return None
        spec = self.input_spec
        assert spec is not None
        truth = labels.numpy()

        def validate(net: nn.Module) -> float:
            batches = spec.batches(images, 512, channels_last=self.channels_last)
            pred = predict_logits(net, batches, device=self.device).argmax(1).numpy()
            return float(f1_score(truth, pred, average="macro", zero_division=0))

        return validate

    # ------------------------------------------------------------------ training
    def train_experience(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int | None = None,
        *,
        val_images: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Learn one experience: new samples plus replay, then update memory (and ensemble).

        Args:
            images: ``N×C×H×W`` raw samples (uint8 wafer codes or images).
            labels: ``N`` class indices into the (growing) class list.
            num_classes: Size of the class list after this experience; the output layer
                grows to it (default: ``max(labels) + 1`` or the current size).
            val_images: Held-out samples scored (macro-F1, together with the memory as
                it stands before this experience) after every epoch for early stopping and
                best-epoch restore; they join the memory's candidates after the
                experience (experience mode) but are never trained on.
            val_labels: Their class indices.

        Returns:
            Statistics: steps, mean loss, seconds, buffer size, epochs run, best epoch,
            whether training stopped early and whether the model predicts one class only.
        """
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if images.ndim != 4 or images.shape[0] != labels.numel():
            raise DataError(
                f"need N×C×H×W images with one label each, got {tuple(images.shape)} and {labels.numel()} labels"
            )
        if labels.numel() == 0:
            raise DataError("the experience holds no samples; nothing to learn")
        if int(labels.min()) < 0:
            raise DataError("every training sample needs a label")
        spec = self._spec(images)
        images = spec.fit_size(images)
        if val_images is not None:
            val_images = spec.fit_size(val_images)
            val_labels = torch.as_tensor(val_labels, dtype=torch.long).reshape(-1)
        top = int(labels.max())
        if val_labels is not None and val_labels.numel():
            top = max(top, int(val_labels.max()))
        k = max(num_classes or 0, top + 1, num_outputs(self.model))
        expand_head(self.model, k, seed=self.seed + self.experiences_seen)
        t0 = time.perf_counter()
        exp = self.experiences_seen
        n = labels.numel()
        batches = ReplayBatches(
            images,
            labels,
            batch_size=self.batch_size,
            buffer=self.buffer,
            replay_ratio=self.replay_ratio,
            seed=self.seed * 7919 + exp,
            after_batch=self._batch_update
            if self.mode == "batch" and self.buffer is not None
            else None,
        )
        weights = self._class_weights(batches, k)

        rank, _ = _world()
        self._augment_gen.manual_seed(self.seed * 104729 + exp * 7919 + rank)
        result = train_epochs(
            self.model,
            batches,
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            class_weights=weights,
            label_smoothing=self.label_smoothing,
            device=self.device,
            transform=self._encode,
            validate=self._validator(*self._validation_set(val_images, val_labels)),
            patience=self.patience,
            amp=self.amp,
            ema=self.ema,
            progress=self.progress,
            desc=f"experience {exp}",
        )
        broadcast_module_buffers(self.model)  # every rank keeps rank 0's statistics
        steps = result.epochs_run * len(batches)
        if self.buffer is not None and self.mode == "experience":
            feats = self._feature_fn(fuse=True) if self.buffer.needs_features else None
            if val_images is not None and val_labels is not None and val_labels.numel():
                self.buffer.update(
                    torch.cat([images, val_images]), torch.cat([labels, val_labels]), features=feats
                )
            else:
                self.buffer.update(images, labels, features=feats)
        review_steps = self._review() if self.review_epochs and self.buffer is not None else 0
        one_class = self._one_class(images, labels, val_images, val_labels, exp)
        if self.ensemble:
            member = copy.deepcopy(self.model).eval()
            for p in member.parameters():
                p.requires_grad_(False)
            self.members.append(member)
        self.experiences_seen += 1
        seconds = time.perf_counter() - t0
        losses = [h["loss"] for h in result.history]
        stats = {
            "experience": exp,
            "samples": n,
            "steps": steps + review_steps,
            "loss": float(sum(losses) / max(len(losses), 1)),
            "seconds": seconds,
            "buffer": len(self.buffer) if self.buffer is not None else 0,
            "classes": k,
            "epochs": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "one_class": one_class,
        }
        if result.best_score is not None:
            stats["val_macro_f1"] = result.best_score
        log.info("experience %d: %d samples, loss %.4f, %.1fs", exp, n, stats["loss"], seconds)
        return stats

    def _one_class(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        val_images: torch.Tensor | None,
        val_labels: torch.Tensor | None,
        exp: int,
    ) -> bool:
        """Warn when the model predicts one class for the experience's check samples (the
        held-out ones, else a subsample of the new ones) plus the memory."""
        if val_images is not None and val_labels is not None and val_labels.numel():
            xs, ys = [val_images], [val_labels]
        else:
            step = max(1, labels.numel() // SPREAD_CHECK_SAMPLES)
            xs, ys = [images[::step]], [labels[::step]]
        if self.buffer is not None and self.buffer.images is not None and len(self.buffer):
            xs.append(self.buffer.images)
            ys.append(self.buffer.labels)
        x, y = torch.cat(xs), torch.cat(ys)
        probs = predict_with(self.model, x, self.kind, self.device, spec=self.input_spec)
        return check_prediction_spread(probs.argmax(1), y, desc=f"experience {exp}")

    def _review(self) -> int:
        """Train on the memory alone at a lower learning rate (the "review" of batch-level ER)."""
        assert self.buffer is not None and self.buffer.images is not None
        if len(self.buffer) == 0:
            return 0
        batches = ReplayBatches(
            self.buffer.images,
            self.buffer.labels,
            batch_size=self.batch_size,
            seed=self.seed * 7919 + self.experiences_seen + 104729,
            min_batch=2 if len(self.buffer) >= 2 else 1,  # BatchNorm needs two samples
        )
        result = train_epochs(
            self.model,
            batches,
            epochs=self.review_epochs,
            lr=self.lr * self.review_lr_factor,
            weight_decay=self.weight_decay,
            schedule="constant",
            class_weights=self._class_weights(batches, num_outputs(self.model)),
            label_smoothing=self.label_smoothing,
            device=self.device,
            transform=self._encode,
            amp=self.amp,
            progress=False,
            desc="review",
        )
        broadcast_module_buffers(self.model)
        return result.epochs_run * len(batches)

    # ------------------------------------------------------------------ inference
    def predict_proba(
        self, images: torch.Tensor, *, batch_size: int = 512, ensemble: bool | None = None
    ) -> torch.Tensor:
        """Class probabilities ``N×K`` (``K`` = current classes), on CPU.

        With an ensemble (``ensemble=None`` follows the trainer's setting), each class's
        probability is the mean over the members that know the class, and rows are
        renormalised.
        """
        use = self.ensemble if ensemble is None else ensemble
        k = num_outputs(self.model)
        models = self.members if use and self.members else [self.model]
        spec = self._spec(images)
        total = torch.zeros(images.shape[0], k)
        count = torch.zeros(k)
        for m in models:
            probs = predict_with(
                m, images, self.kind, self.device, batch_size, self.channels_last, spec=spec
            )
            km = probs.shape[1]
            total[:, :km] += probs
            count[:km] += 1
        probs = total / count.clamp_min(1)
        return probs / probs.sum(1, keepdim=True).clamp_min(1e-12)


def predict_with(
    model: nn.Module,
    images: torch.Tensor,
    kind: str,
    device: torch.device,
    batch_size: int = 512,
    channels_last: bool = False,
    *,
    spec: InputSpec | None = None,
) -> torch.Tensor:
    """Softmax probabilities of one model over raw samples, in eval mode, on CPU.

    The inputs are prepared by ``spec`` (default: the plain contract of ``kind`` at the
    images' own size) and run through :func:`~inspectkit.models.training.predict_logits`
    on a BatchNorm-folded copy where the network offers one.
    """
    if images.shape[0] == 0:
        return torch.zeros(0, num_outputs(model))
    spec = spec or _plain_spec(images, kind)
    batches = spec.batches(images, batch_size, channels_last=channels_last)
    logits = predict_logits(_inference_net(model), batches, device=device)
    return torch.softmax(logits, dim=1)


__all__ = [
    "ReplayBatches",
    "ReplayTrainer",
    "embedding_fn",
    "expand_head",
    "find_head",
    "input_channels",
    "model_input",
    "num_outputs",
    "predict_with",
    "wafer_one_hot",
]
