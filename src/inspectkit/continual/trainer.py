"""Experience replay over a stream of experiences.

:class:`ReplayTrainer` trains one network experience after experience. Each mini-batch of
new samples is joined by replayed samples drawn from a :class:`~inspectkit.continual.buffers.ReplayBuffer`
(``replay_ratio`` is the share of the joined batch that comes from memory). Two modes:

* ``mode="experience"`` (classic ER): the buffer is updated once, after the experience,
  with the current model's view of the new data (the feature-based policies need it).
* ``mode="batch"``: batch-level replay of the CVPR 2020 CLVision challenge winner
  (Mai et al., "Batch-level Experience Replay with Review"): the buffer sees every
  mini-batch as it is trained on, and ``review_epochs`` of training on the memory alone
  at ``lr × review_lr_factor`` close each experience.

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
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.continual.buffers import ReplayBuffer
from inspectkit.errors import ConfigError, DataError
from inspectkit.ops import to_float
from inspectkit.runtime import progress_bar, resolve_device

log = logging.getLogger(__name__)

ReplayMode = Literal["experience", "batch"]


# ---------------------------------------------------------------------- model helpers
def wafer_one_hot(images: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """Wafer maps coded 0/1/2 (``N×1×H×W`` uint8) as ``N×3×H×W`` float one-hot channels.

    With ``channels_last=True`` the result is built directly in channels-last memory
    layout (``N×H×W×3`` storage, no extra copy to convert it).

    Example:
        >>> wafer_one_hot(torch.tensor([[[[0, 2]]]], dtype=torch.uint8))[0, :, 0, 1].tolist()
        [0.0, 0.0, 1.0]
    """
    n, _, h, w = images.shape
    codes = images[:, 0]
    if channels_last:
        out = torch.empty(n, h, w, 3, device=images.device)
        for k in range(3):
            torch.eq(codes, k, out=out[..., k])
        return out.permute(0, 3, 1, 2)
    out = torch.empty(n, 3, h, w, device=images.device)
    for k in range(3):
        # comparing straight into the float output: ~10× faster than (x == codes).float()
        torch.eq(codes, k, out=out[:, k])
    return out


def model_input(images: torch.Tensor, kind: str, *, channels_last: bool = False) -> torch.Tensor:
    """What the network sees: one-hot codes for wafer maps, [0, 1] floats for photos."""
    if kind == "wafer":
        return wafer_one_hot(images, channels_last=channels_last)
    x = to_float(images, kind=kind)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def input_channels(channels: int, kind: str) -> int:
    """Network input channels for images with ``channels`` channels of this ``kind``."""
    return 3 if kind == "wafer" else int(channels)


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


# ---------------------------------------------------------------------- trainer
class ReplayTrainer:
    """Train a network on one experience after another with experience replay.

    Args:
        model: Any ``nn.Module`` mapping inputs to logits whose last ``nn.Linear``
            (or ``model.head``) is the output layer; ``model.embed`` is used for features
            when present.
        buffer: Replay memory; ``None`` = plain fine-tuning (the lower bound).
        epochs: Passes over each experience's new samples.
        batch_size: New samples per mini-batch.
        lr: Adam learning rate (a fresh optimiser per experience).
        weight_decay: Adam weight decay.
        replay_ratio: Share of each joined mini-batch drawn from memory, in [0, 0.9]
            (0.5 = as many replayed as new samples).
        mode: ``"experience"`` (update memory after each experience) or ``"batch"``
            (update memory with every mini-batch; batch-level ER).
        review_epochs: Epochs of training on the memory alone after each experience.
        review_lr_factor: Learning-rate factor of the review pass.
        ensemble: Keep a frozen copy per experience and average their probabilities.
        kind: ``"wafer"`` (one-hot codes) or ``"image"`` — how raw samples become inputs.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: Seed of batch order, replay draws and new output rows.
        progress: Show progress bars.
        channels_last: Keep convolution weights and inputs in channels-last memory
            layout (about 20 % faster training of the compact CNNs on CPU).

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
        self.kind = kind
        self.seed = int(seed)
        self.progress = progress
        self.members: list[nn.Module] = []
        self.experiences_seen = 0

    # ------------------------------------------------------------------ helpers
    def _input(self, images: torch.Tensor) -> torch.Tensor:
        # move the raw codes (uint8 travels 4× lighter), then encode in the model's layout
        x = images.to(self.device, non_blocking=True)
        return model_input(x, self.kind, channels_last=self.channels_last)

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

    def _replay_size(self, n_current: int) -> int:
        if self.buffer is None or len(self.buffer) == 0 or self.replay_ratio == 0:
            return 0
        return max(1, round(n_current * self.replay_ratio / (1 - self.replay_ratio)))

    def _step(self, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
        logits = self.model(self._input(x))
        loss = F.cross_entropy(logits, y.to(self.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def _optimizer(self, lr: float) -> torch.optim.Optimizer:
        # fused: one kernel over all parameters (on the CPU half the time of foreach's
        # multi-tensor update, ~4 % of a compact-CNN step); foreach where fused is not built
        params = list(self.model.parameters())
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay, fused=True)
        except RuntimeError:
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay, foreach=True)

    # ------------------------------------------------------------------ training
    def train_experience(
        self, images: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
    ) -> dict[str, Any]:
        """Learn one experience: new samples plus replay, then update memory (and ensemble).

        Args:
            images: ``N×C×H×W`` raw samples (uint8 wafer codes or images).
            labels: ``N`` class indices into the (growing) class list.
            num_classes: Size of the class list after this experience; the output layer
                grows to it (default: ``max(labels) + 1`` or the current size).

        Returns:
            Statistics: steps, mean loss, seconds, buffer size.
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
        k = max(num_classes or 0, int(labels.max()) + 1, num_outputs(self.model))
        expand_head(self.model, k, seed=self.seed + self.experiences_seen)
        t0 = time.perf_counter()
        exp = self.experiences_seen
        gen = torch.Generator().manual_seed(self.seed * 7919 + exp)
        opt = self._optimizer(self.lr)
        self.model.train()
        n = labels.numel()
        losses: list[float] = []
        steps_per_epoch = (n + self.batch_size - 1) // self.batch_size
        bar = progress_bar(
            enabled=self.progress, total=self.epochs * steps_per_epoch, desc=f"experience {exp}"
        )
        try:
            for _ in range(self.epochs):
                perm = torch.randperm(n, generator=gen)
                for start in range(0, n, self.batch_size):
                    idx = perm[start : start + self.batch_size]
                    x, y = images[idx], labels[idx]
                    r = self._replay_size(len(idx))
                    if r:
                        assert self.buffer is not None
                        rx, ry = self.buffer.sample(r, gen)
                        x, y = torch.cat([x, rx]), torch.cat([y, ry])
                    losses.append(self._step(opt, x, y))
                    if self.mode == "batch" and self.buffer is not None:
                        self.buffer.update(
                            images[idx],
                            labels[idx],
                            features=self.features if self.buffer.needs_features else None,
                        )
                    bar.update(1)
        finally:
            bar.close()
        if self.buffer is not None and self.mode == "experience":
            feats = self._feature_fn(fuse=True) if self.buffer.needs_features else None
            self.buffer.update(images, labels, features=feats)
        review_steps = self._review(gen) if self.review_epochs and self.buffer is not None else 0
        if self.ensemble:
            member = copy.deepcopy(self.model).eval()
            for p in member.parameters():
                p.requires_grad_(False)
            self.members.append(member)
        self.experiences_seen += 1
        seconds = time.perf_counter() - t0
        stats = {
            "experience": exp,
            "samples": n,
            "steps": len(losses) + review_steps,
            "loss": float(sum(losses) / max(len(losses), 1)),
            "seconds": seconds,
            "buffer": len(self.buffer) if self.buffer is not None else 0,
            "classes": k,
        }
        log.info("experience %d: %d samples, loss %.4f, %.1fs", exp, n, stats["loss"], seconds)
        return stats

    def _review(self, gen: torch.Generator) -> int:
        """Train on the memory alone at a lower learning rate (the "review" of batch-level ER)."""
        assert self.buffer is not None and self.buffer.images is not None
        if len(self.buffer) == 0:
            return 0
        opt = self._optimizer(self.lr * self.review_lr_factor)
        self.model.train()
        m = len(self.buffer)
        steps = 0
        for _ in range(self.review_epochs):
            perm = torch.randperm(m, generator=gen)
            for start in range(0, m, self.batch_size):
                idx = perm[start : start + self.batch_size]
                if idx.numel() < 2 and m >= 2:
                    continue  # BatchNorm needs two samples
                self._step(opt, self.buffer.images[idx], self.buffer.labels[idx])
                steps += 1
        return steps

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
        total = torch.zeros(images.shape[0], k)
        count = torch.zeros(k)
        for m in models:
            probs = predict_with(m, images, self.kind, self.device, batch_size, self.channels_last)
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
) -> torch.Tensor:
    """Softmax probabilities of one model over raw samples, in eval mode, on CPU."""
    was = model.training
    model.eval()
    outs = []
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(device)
                x = model_input(x, kind, channels_last=channels_last)
                outs.append(torch.softmax(model(x).float(), dim=1).cpu())
    finally:
        model.train(was)
    if not outs:
        return torch.zeros(0, num_outputs(model))
    return torch.cat(outs)


__all__ = [
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
