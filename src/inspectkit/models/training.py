"""A reusable supervised training loop: AdamW, a learning-rate schedule, class weights,
early stopping with best-checkpoint restore, AMP on CUDA, DDP when a process group runs.

The library's one training loop: :class:`inspectkit.stages.Classifier` trains through
:func:`train_epochs`, and continual replay calls it once per experience with its replay
batch source (:class:`inspectkit.continual.trainer.ReplayBatches`), so both get the same
optimiser, schedules, early stopping, EMA, AMP and DDP. The helpers both share live
here too: :func:`validation_split`, :func:`augmentation`, :func:`sqrt_inverse_weights`,
:func:`auto_batch_size`, :func:`check_prediction_spread`.

Example:
    >>> import torch
    >>> from inspectkit.models import build_classifier, train_epochs
    >>> net = build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000)
    >>> x = torch.randn(32, 1, 16, 16); y = (x.mean((1, 2, 3)) > 0).long()
    >>> loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    >>> result = train_epochs(net, loader, epochs=2, progress=False)
    >>> result.epochs_run
    2
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from inspectkit.errors import ConfigError
from inspectkit.models.distributed import broadcast_float, broadcast_module_buffers
from inspectkit.runtime import epoch_done, progress_bar

log = logging.getLogger(__name__)

Schedule = Literal["onecycle", "cosine", "constant"]
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainResult:
    """What :func:`train_epochs` did.

    Attributes:
        history: One dict per epoch: ``epoch``, ``loss``, ``lr`` and ``val`` (the
            validation score, when a ``validate`` callback was given).
        best_epoch: Epoch (0-based) whose weights the model holds at the end.
        best_score: Validation score of that epoch (``None`` without validation).
        epochs_run: Epochs actually trained.
        stopped_early: True when patience or the time budget ended training.
        seconds: Wall-clock training time.
        one_class: True when the returned model predicts one class for every sample of
            a check set that holds several (set by the caller through
            :func:`check_prediction_spread`, which also logs a warning).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float | None = None
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    one_class: bool = False


def dihedral_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply one of the 8 flips/quarter-turns to each image of a square ``N×C×H×W`` batch.

    Label-preserving for wafer maps (every WM-811K pattern is symmetric under these).
    """
    if x.shape[-1] != x.shape[-2]:
        return flip_augment(x, generator)
    choice = torch.randint(0, 8, (x.shape[0],), generator=generator).to(x.device)
    out = x.clone()
    for k in range(1, 8):
        idx = (choice == k).nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        part = x[idx]
        if k & 4:
            part = part.flip(-1)
        part = torch.rot90(part, k & 3, dims=(-2, -1))
        out[idx] = part
    return out


def flip_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal and vertical flips, each with probability 1/2, per image."""
    flips = torch.randint(0, 2, (2, x.shape[0]), generator=generator).bool().to(x.device)
    out = x.clone()
    h = flips[0].nonzero(as_tuple=True)[0]
    if h.numel():
        out[h] = out[h].flip(-1)
    v = flips[1].nonzero(as_tuple=True)[0]
    if v.numel():
        out[v] = out[v].flip(-2)
    return out


def validation_split(
    targets: torch.Tensor,
    fraction: float,
    *,
    seed: int = 0,
    eligible: torch.Tensor | None = None,
    desc: str = "training",
) -> tuple[list[int], list[int]]:
    """Positions of a stratified train/validation split of labelled samples.

    ``fraction`` of the ``eligible`` samples (default: all; stages pass the real ones, so
    no figure rests on synthetic samples) go to validation, stratified by class with
    scikit-learn (unstratified, with a logged warning, when a class has a single sample);
    every other sample trains. Fewer than 4 eligible samples or ``fraction <= 0``: no
    validation.

    Example:
        >>> train, val = validation_split(torch.tensor([0, 1] * 10), 0.2)
        >>> len(train), len(val)
        (16, 4)
    """
    from sklearn.model_selection import train_test_split

    all_idx = list(range(len(targets)))
    pool = all_idx if eligible is None else [i for i in all_idx if bool(eligible[i])]
    if fraction <= 0 or len(pool) < 4:
        return all_idx, []
    y = targets[pool].numpy()
    counts = torch.bincount(torch.as_tensor(y), minlength=1)
    n_val = max(1, round(fraction * len(pool)))
    stratify = (
        y if int(counts[counts > 0].min()) >= 2 and n_val >= int((counts > 0).sum()) else None
    )
    if stratify is None:
        log.warning("%s: validation split is not stratified (a class has < 2 samples)", desc)
    _, val = train_test_split(pool, test_size=n_val, stratify=stratify, random_state=seed % (2**32))
    val_set = set(val)
    return [i for i in all_idx if i not in val_set], sorted(val)


Augmentation = Literal["auto", "dihedral", "flip", "none"]


def augmentation(
    mode: Augmentation, kind: str
) -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None:
    """The batch augmentation a stage's ``augment`` setting names: ``"auto"`` is all 8
    flips/quarter-turns for wafer maps (label-preserving for every WM-811K pattern) and
    flips for photos; ``"none"`` is ``None``.

    Example:
        >>> augmentation("auto", "wafer") is dihedral_augment
        True
    """
    if mode == "auto":
        mode = "dihedral" if kind == "wafer" else "flip"
    table = {"dihedral": dihedral_augment, "flip": flip_augment, "none": None}
    if mode not in table:
        raise ConfigError(f"augment must be 'auto', 'dihedral', 'flip' or 'none', got {mode!r}")
    return table[mode]


def sqrt_inverse_weights(frequency: torch.Tensor) -> torch.Tensor:
    """Per-class loss weights ∝ 1/√frequency, normalised so that the average sample
    weight is 1 under ``frequency`` (classes with frequency 0 get weight 0).

    Square roots, not full inverse frequencies: on WM-811K (``none`` 60 % of the maps,
    ``Near-full`` 0.2 %) the full inverse trades too much accuracy on the big classes for
    the tiny ones.

    Example:
        >>> [round(w, 3) for w in sqrt_inverse_weights(torch.tensor([90.0, 10.0])).tolist()]
        [0.833, 2.5]
    """
    f = frequency.double().clamp_min(0)
    w = torch.where(f > 0, 1.0 / f.clamp_min(1e-12).sqrt(), torch.zeros_like(f))
    return (w / (w * f).sum() * f.sum()).float()


#: ``batch_size="auto"``: the fewest optimizer steps a whole run should take ...
AUTO_MIN_STEPS = 200
#: ... and the range of the batch size chosen for it.
AUTO_BATCH_RANGE = (16, 128)


def auto_batch_size(n_train: int, epochs: int) -> int:
    """The batch size ``batch_size="auto"`` picks for ``n_train`` samples (per process)
    and ``epochs`` epochs: the largest power of two in :data:`AUTO_BATCH_RANGE` that still
    gives the run :data:`AUTO_MIN_STEPS` optimizer steps. Small sets and short runs then
    get enough steps for the warm-up and for patience, both counted in epochs, to mean
    something (561 wafer maps at a batch of 128 are 5 steps an epoch, and every map got
    one class); larger sets keep the full batch, which trained NEU steel better.

    Example:
        >>> auto_batch_size(561, 30), auto_batch_size(561, 5), auto_batch_size(1_020, 30)
        (64, 16, 128)
    """
    lo, hi = AUTO_BATCH_RANGE
    size = lo
    while size * 2 <= hi and (n_train // (size * 2)) * epochs >= AUTO_MIN_STEPS:
        size *= 2
    return size


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(".bias")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on weights only (not on biases or BatchNorm parameters).

    The update is ``fused`` (one kernel over all parameters) where the parameters'
    device supports it, else ``foreach`` (one multi-tensor call); both give the same
    steps as the per-parameter loop.
    """
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if _no_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, foreach=True)


#: Share of the steps the one-cycle schedule spends warming up (lr/10 → lr).
ONECYCLE_WARMUP = 0.15


class _Horizon:
    """Total number of optimizer steps; shrinks when a time budget cuts training short."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)


def warmed_up(schedule: Schedule, epochs_done: int, epochs: int) -> bool:
    """True once ``epochs_done`` of ``epochs`` epochs have passed the schedule's warm-up.

    Early stopping only counts epochs without improvement from then on: during the
    one-cycle warm-up the learning rate is still rising, and a model that predicts one
    class for everything there (validation macro-F1 flat and low while the training loss
    falls) is not a reason to stop.

    Example:
        >>> [warmed_up("onecycle", e, 40) for e in (6, 7)], warmed_up("cosine", 1, 40)
        ([False, True], True)
    """
    if schedule != "onecycle":
        return True
    return epochs_done > ONECYCLE_WARMUP * epochs + 1e-9


def check_prediction_spread(
    predicted: torch.Tensor, targets: torch.Tensor, *, desc: str = "training"
) -> bool:
    """Warn when a model predicts one class for every sample of a set holding several.

    Returns ``True`` in that case (a model that cannot tell the classes apart; callers
    record it as :attr:`TrainResult.one_class`), ``False`` otherwise. The warning names
    the class and the remedy.

    Example:
        >>> check_prediction_spread(torch.tensor([1, 1, 1]), torch.tensor([0, 1, 2]))
        True
    """
    present = torch.unique(targets[targets >= 0])
    distinct = torch.unique(predicted)
    if present.numel() < 2 or distinct.numel() != 1:
        return False
    log.warning(
        "%s: the trained model predicts class %d for every one of %d check samples, which "
        "hold %d classes; train longer (epochs), lower lr, or check the labels",
        desc,
        int(distinct[0]),
        int(predicted.numel()),
        int(present.numel()),
    )
    return True


def _make_schedule(
    optimizer: torch.optim.Optimizer, schedule: Schedule, horizon: _Horizon
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Per-step learning-rate factor: one-cycle (15 % warm-up from 1/10, cosine down to
    1/1000) or cosine (down to 1/100), over ``horizon.total`` steps (re-read each step)."""
    if schedule == "constant":
        return None
    if schedule not in ("onecycle", "cosine"):
        raise ConfigError(f"unknown schedule {schedule!r}; use 'onecycle', 'cosine' or 'constant'")

    def factor(step: int) -> float:
        t = min(1.0, step / horizon.total)
        if schedule == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
        warm = ONECYCLE_WARMUP
        if t < warm:
            return 0.1 + 0.9 * t / warm
        u = (t - warm) / (1 - warm)
        return 0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * u))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _ema_model(net: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``net`` (parameters and buffers) with warm-up:
    the decay of step ``n`` is ``min(decay, (1 + n) / (10 + n))``, so the first steps are
    not dominated by the random initial weights."""
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"ema decay must be in (0, 1), got {decay}")

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's step counters
            torch._foreach_copy_(averaged, current)
            return
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return AveragedModel(net, multi_avg_fn=update, use_buffers=True)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _set_epoch(loader: Any, epoch: int) -> None:
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) over an iterable of input batches, on CPU.

    Example:
        >>> net = torch.nn.Linear(4, 2)
        >>> predict_logits(net, [torch.zeros(3, 4)]).shape
        torch.Size([3, 2])
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    outs = []
    try:
        for x in batches:
            x = x.to(device, non_blocking=True)
            if x.ndim == 4 and device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", enabled=device.type == "cuda"):
                outs.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


def train_epochs(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    epochs: int,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: Schedule = "onecycle",
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    device: torch.device | str = "cpu",
    transform: Callable[[torch.Tensor, torch.Tensor], Batch] | None = None,
    extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    | None = None,
    validate: Callable[[nn.Module], float] | None = None,
    patience: int | None = None,
    restore_best: bool = True,
    amp: bool = True,
    ddp: bool | Literal["auto"] = "auto",
    time_budget: float | None = None,
    ema: float | None = None,
    progress: bool = True,
    desc: str = "training",
) -> TrainResult:
    """Train ``model`` with cross-entropy for ``epochs`` passes over ``loader``.

    Args:
        model: The network (trained in place; left in eval mode at the end).
        loader: Re-iterable batches ``(x, y)`` (a ``DataLoader`` or a list). If it or its
            sampler has ``set_epoch``, it is called before every epoch.
        epochs: Maximum number of epochs.
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        optimizer: Use this optimizer instead of a new AdamW (continuing training).
        schedule: ``"onecycle"``, ``"cosine"`` (per step) or ``"constant"``.
        class_weights: Per-class loss weights (imbalance handling).
        label_smoothing: Cross-entropy label smoothing.
        device: Where to train; batches are moved there.
        transform: Applied to each batch on ``device`` before the forward pass
            (normalisation, augmentation).
        extra_loss: ``f(model, x, y, logits) -> scalar`` added to the loss (e.g. a
            feature-space regulariser computed with ``model.embed``).
        validate: ``f(model) -> score`` (higher is better) called after every epoch
            with the model in eval mode; enables early stopping and best restore.
        patience: Epochs without a better validation score before stopping (``None``:
            never stop early). Epochs inside the one-cycle warm-up do not count.
        restore_best: Load the best epoch's weights at the end (with ``validate``).
        amp: Mixed precision (float16 autocast + gradient scaling) — used on CUDA only.
        ddp: Wrap in ``DistributedDataParallel`` when a process group is initialised
            (``"auto"``); the loader must then shard the data (``DistributedSampler``).
        time_budget: Seconds of training allowed: after each epoch the schedule is
            re-fitted to the epochs that fit (from the pace of the last three epochs),
            never beyond ``epochs``.
        ema: Decay of an exponential moving average of the weights (and BatchNorm
            statistics), updated after every step with a warm-up (the decay starts low
            and rises to ``ema``). Validation, best-checkpoint choice and the returned
            model use the averaged weights. ``None`` trains without one.
        progress: Show a tqdm bar with loss and validation score.
        desc: Label of the progress bar.

    Returns:
        A :class:`TrainResult`.
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    device = torch.device(device)
    net = _unwrap(model).to(device)
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    is_main = not distributed or dist.get_rank() == 0
    train_model: nn.Module = net
    if distributed and ddp:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    opt = optimizer or make_optimizer(net, lr, weight_decay)
    steps_per_epoch = len(loader) if isinstance(loader, Sized) else 0
    horizon = _Horizon(steps_per_epoch * epochs)
    sched = None if optimizer is not None else _make_schedule(opt, schedule, horizon)
    use_amp = bool(amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = class_weights.to(device).float() if class_weights is not None else None
    averaged = _ema_model(net, ema) if ema is not None else None
    # the weights that are validated, kept as the best and returned
    final_net: nn.Module = averaged.module if averaged is not None else net

    planned = epochs
    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    best = -math.inf
    stale = 0
    durations: list[float] = []
    t0 = time.perf_counter()
    bar = progress_bar(
        enabled=progress and is_main, total=steps_per_epoch * epochs or None, desc=desc
    )
    try:
        epoch = -1
        while epoch + 1 < epochs:
            epoch += 1
            epoch_t0 = time.perf_counter()
            _set_epoch(loader, epoch)
            train_model.train()
            total, count = 0.0, 0
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if transform is not None:
                    x, y = transform(x, y)
                if device.type == "cpu" and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", enabled=use_amp):
                    logits = train_model(x)
                    loss = F.cross_entropy(
                        logits.float(), y, weight=weights, label_smoothing=label_smoothing
                    )
                    if extra_loss is not None:
                        loss = loss + extra_loss(net, x, y, logits)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if sched is not None:
                    sched.step()
                if averaged is not None:
                    averaged.update_parameters(net)
                total += float(loss.detach()) * len(y)
                count += len(y)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / max(count, 1):.4f}", refresh=False)
            entry: dict[str, float] = {
                "epoch": float(epoch),
                "loss": total / max(count, 1),
                "lr": float(opt.param_groups[0]["lr"]),
            }
            result.epochs_run = epoch + 1
            if validate is not None:
                broadcast_module_buffers(final_net)
                final_net.eval()
                score = broadcast_float(float(validate(final_net)), device)
                entry["val"] = score
                bar.set_postfix(epoch=epoch + 1, loss=f"{entry['loss']:.4f}", val_f1=f"{score:.4f}")
                if score > best:
                    best, stale = score, 0
                    result.best_epoch, result.best_score = epoch, score
                    best_state = copy.deepcopy(final_net.state_dict())
                elif warmed_up(schedule if sched is not None else "constant", epoch + 1, epochs):
                    stale += 1
            else:
                result.best_epoch = epoch
            result.history.append(entry)
            log.info("%s epoch %d: %s", desc, epoch + 1, entry)
            epoch_done(entry, epochs)  # runtime.observe_epochs: live curves, cancel
            if patience is not None and validate is not None and stale >= max(patience, 1):
                result.stopped_early = True
                break
            elapsed = time.perf_counter() - t0
            if time_budget is not None:
                if elapsed > time_budget:
                    result.stopped_early = epoch + 1 < epochs
                    break
                # fit the schedule to the epochs the budget allows, from the pace of the
                # last epochs (a slow start on a busy machine is not held against the
                # rest), never beyond the planned epochs (decided on rank 0)
                durations.append(time.perf_counter() - epoch_t0)
                pace = sum(durations[-3:]) / len(durations[-3:])
                fits = broadcast_float(
                    float(epoch + 1 + int(max(0.0, time_budget - elapsed) / pace)), device
                )
                fitted_epochs = min(planned, max(epoch + 1, int(fits)))
                if fitted_epochs != epochs:
                    epochs = fitted_epochs
                    horizon.total = max(1, steps_per_epoch * epochs)
                    bar.total = horizon.total
                    log.info("%s: time budget allows %d epochs", desc, epochs)
    finally:
        bar.close()
    if result.epochs_run < planned:
        result.stopped_early = True
    if restore_best and best_state is not None:
        net.load_state_dict(best_state)
    elif averaged is not None:
        broadcast_module_buffers(final_net)
        net.load_state_dict(final_net.state_dict())
    net.eval()
    result.seconds = time.perf_counter() - t0
    return result


__all__ = [
    "AUTO_BATCH_RANGE",
    "AUTO_MIN_STEPS",
    "ONECYCLE_WARMUP",
    "Augmentation",
    "TrainResult",
    "augmentation",
    "auto_batch_size",
    "check_prediction_spread",
    "dihedral_augment",
    "flip_augment",
    "make_optimizer",
    "predict_logits",
    "sqrt_inverse_weights",
    "train_epochs",
    "validation_split",
    "warmed_up",
]
