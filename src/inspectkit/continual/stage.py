"""``ContinualClassifier``: a classifier stage that keeps learning with experience replay.

``fit`` learns the first experience; :meth:`ContinualClassifier.update` learns each next
one, growing the class list when new defect types arrive, while a replay buffer keeps a
small memory of the past. Model, buffer and ensemble members are the stage's state, so
they save and load with the pipeline (tensors only, ``weights_only=True``).

An update works on copies of the model and the buffer and swaps them in only when it has
finished: a failed update leaves the stage — and anything saved from it — as it was.

Example:
    >>> import inspectkit as ik
    >>> from inspectkit.stages import Wrangle
    >>> from inspectkit.continual import ContinualClassifier, update_pipeline
    >>> pipe = ik.Pipeline([Wrangle(size=64), ContinualClassifier(buffer="snnl", capacity=200)])
    >>> pipe.fit(first_experience)  # doctest: +SKIP
    >>> update_pipeline(pipe, next_experience)  # doctest: +SKIP
    >>> pipe.save("models/wafer-continual")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from typing_extensions import Self

from inspectkit.continual.buffers import ReplayBuffer, buffer_from_state, make_buffer
from inspectkit.continual.trainer import ReplayTrainer, expand_head, num_outputs
from inspectkit.errors import ConfigError, DataError, NotFittedError, PersistenceError
from inspectkit.models.classifiers import build_classifier
from inspectkit.models.distributed import setup_distributed
from inspectkit.models.inputs import InputSpec
from inspectkit.models.training import Augmentation, augmentation, validation_split
from inspectkit.records import ImageSet, Predictions
from inspectkit.runtime import resolve_device, seed_everything
from inspectkit.stage import Stage, StageConfig

log = logging.getLogger(__name__)

BufferPolicy = Literal["reservoir", "class_balanced", "snnl", "herding", "none"]
#: Version of :meth:`ContinualClassifier.get_state`'s layout (1: inspectkit 0.1).
STATE_VERSION = 2
#: Most samples the photo mean/std are measured on.
STATS_SAMPLES = 2048


def merge_classes(current: list[str], incoming: list[str]) -> list[str]:
    """The class list after learning data whose class list is ``incoming``.

    The classes the model already knows must appear in ``incoming`` in the same relative
    order, and new classes must come after them (a stream's class list only grows at the
    end); otherwise the two lists collide and :class:`DataError` says so.

    Example:
        >>> merge_classes(["none", "Center"], ["none", "Center", "Loc"])
        ['none', 'Center', 'Loc']
        >>> merge_classes(["a", "b"], ["c"])
        ['a', 'b', 'c']
    """
    known = [c for c in incoming if c in current]
    new = [c for c in incoming if c not in current]
    order_ok = known == [c for c in current if c in known]
    new_last = all(
        incoming.index(c) > max((incoming.index(k) for k in known), default=-1) for c in new
    )
    if not (order_ok and new_last):
        raise DataError(
            f"the experience's class list {incoming} collides with the model's class list {current}: "
            "shared classes must keep the model's order and new classes must come last — build the "
            f"experience with classes={current} + [new classes]"
        )
    return list(current) + new


class ContinualClassifier(Stage[ImageSet, Predictions]):
    """Image classifier that learns a stream of experiences with experience replay.

    The defaults (30 epochs per experience at a one-cycle peak of 3e-3, AdamW with weight
    decay 1e-4, augmentation, class weights) were chosen on validation splits carved
    from WM-811K's training files (BENCHMARKS.md, "Architecture round (issue #15): what the
    training defaults reach"); 0.1 trained 3 epochs at a constant 1e-3, which left the README's example
    far below joint training.

    Training runs on the library's one loop (:func:`~inspectkit.models.training.train_epochs`):
    AdamW with a per-experience schedule, optional validation with early stopping and
    best-epoch restore, EMA weights, AMP on CUDA, and ``torch.distributed`` under
    ``torchrun``. Inputs follow the stage's :class:`~inspectkit.models.inputs.InputSpec`
    (``input_spec``), fixed by the first experience: other sizes are refused at
    ``update`` and at predict alike (put the same ``Wrangle(size=...)`` first).

    Args:
        arch: Network from :func:`inspectkit.models.build_classifier` (``"compact"``...).
        max_params: Parameter budget of the compact network.
        buffer: Replay policy: ``"snnl"``, ``"reservoir"``, ``"class_balanced"``,
            ``"herding"`` or ``"none"`` (plain fine-tuning).
        capacity: Replay memory size in samples (≥ 1).
        temperature: SNNL temperature (``buffer="snnl"``).
        cohesive_fraction: Share of each class's most cohesive samples the SNNL buffer
            draws its quota from (``buffer="snnl"``; 0 = only the most cohesive ones).
        quotas: How the SNNL buffer splits its capacity over classes: ``"balanced"``
            (equal shares; lines where new defect types arrive) or ``"proportional"``
            (the class mix of the stream; domain-incremental lines where every class
            comes back with each new product).
        epochs: Epochs per experience (at most, with early stopping).
        batch_size: New samples per mini-batch (and process).
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not on biases and norms).
        schedule: Learning-rate schedule of each experience: ``"onecycle"``, ``"cosine"``
            or ``"constant"``.
        val_fraction: Share of each experience's samples held out (stratified) and
            scored, with the memory, after every epoch for early stopping and best-epoch
            restore; 0 trains on everything for ``epochs`` epochs. Held-out samples still
            become memory candidates.
        patience: Epochs without a better validation macro-F1 before an experience stops
            (epochs inside the one-cycle warm-up do not count).
        augment: ``"auto"`` (all 8 flips/quarter-turns for wafer maps, flips for
            photos), ``"dihedral"``, ``"flip"`` or ``"none"``; applied to new and replayed
            samples alike.
        imbalance: ``"weighted_loss"``: loss weights ∝ 1/√(each class's expected share
            of a joined batch of new and replayed samples); ``"none"``.
        ema: Decay of an exponential moving average of the weights kept as the model.
        amp: Mixed precision on CUDA (ignored on CPU).
        replay_ratio: Share of each mini-batch replayed from memory.
        mode: ``"experience"`` (ER) or ``"batch"`` (batch-level ER).
        review_epochs: Review epochs on the memory alone after each experience.
        review_lr_factor: Learning-rate factor of the review.
        ensemble: Keep one model per experience and average their probabilities.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        seed: Seed of initialisation, batch order and buffer choices.
        progress: Progress bars.

    Example:
        >>> clf = ContinualClassifier(buffer="reservoir", capacity=500, epochs=2)
        >>> clf.config.capacity
        500
    """

    name = "continual_classifier"
    stateful = True

    class Config(StageConfig):
        arch: str = "compact"
        max_params: int = Field(100_000, ge=1000)
        buffer: BufferPolicy = "snnl"
        capacity: int = 200
        temperature: float = Field(0.1, gt=0)
        cohesive_fraction: float = Field(0.5, ge=0, le=1)
        quotas: Literal["balanced", "proportional"] = "balanced"
        epochs: int = Field(30, ge=1)
        batch_size: int = Field(64, ge=2)
        lr: float = Field(3e-3, gt=0)
        weight_decay: float = Field(1e-4, ge=0)
        schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
        val_fraction: float = Field(0.0, ge=0, lt=1)
        patience: int | None = Field(6, ge=0)
        ema: float | None = Field(None, gt=0, lt=1)
        augment: Augmentation = "auto"
        imbalance: Literal["weighted_loss", "none"] = "weighted_loss"
        amp: bool = True
        replay_ratio: float = Field(0.5, ge=0, le=0.9)
        mode: Literal["experience", "batch"] = "experience"
        review_epochs: int = Field(0, ge=0)
        review_lr_factor: float = Field(0.1, gt=0, le=1)
        ensemble: bool = False
        device: str = "auto"
        seed: int = 0
        progress: bool = True

        @field_validator("capacity")
        @classmethod
        def _capacity(cls, v: int) -> int:
            if v <= 0:
                raise ValueError(
                    f"replay capacity must be at least 1 sample, got {v}; for plain fine-tuning use buffer='none'"
                )
            return v

    config: Config

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.classes: list[str] = []
        #: The input contract of the network (``None`` before ``fit``).
        self.input_spec: InputSpec | None = None
        self.build_classes = 0
        self.model: nn.Module | None = None
        self.buffer: ReplayBuffer | None = None
        self.members: list[nn.Module] = []
        self.experiences = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ input contract
    @property
    def network(self) -> nn.Module | None:
        """The latest network (``None`` before ``fit``). With ``ensemble=True``
        predictions average the members, and an explanation explains this network."""
        return self.model

    @property
    def kind(self) -> str:
        return self.input_spec.kind if self.input_spec is not None else "image"

    @property
    def channels(self) -> int:
        return self.input_spec.data_channels if self.input_spec is not None else 0

    @property
    def size(self) -> tuple[int, int]:
        return self.input_spec.size if self.input_spec is not None else (0, 0)

    def _spec(self) -> InputSpec:
        if self.input_spec is None:
            raise NotFittedError("ContinualClassifier must be fitted before run(); call fit()")
        return self.input_spec

    # ------------------------------------------------------------------ building
    def _build_model(self, num_classes: int) -> nn.Module:
        cfg = self.config
        spec = self._spec()
        kwargs: dict[str, Any] = {"max_params": cfg.max_params} if cfg.arch == "compact" else {}
        return build_classifier(
            cfg.arch, spec.model_channels, num_classes, input_size=spec.size, **kwargs
        )

    def _new_buffer(self) -> ReplayBuffer | None:
        cfg = self.config
        if cfg.buffer == "none":
            return None
        params: dict[str, Any] = {}
        if cfg.buffer == "snnl":
            params = {
                "temperature": cfg.temperature,
                "cohesive_fraction": cfg.cohesive_fraction,
                "quotas": cfg.quotas,
            }
        return make_buffer(cfg.buffer, cfg.capacity, seed=cfg.seed, **params)

    def _trainer(
        self,
        model: nn.Module,
        buffer: ReplayBuffer | None,
        members: list[nn.Module],
        device: torch.device | str | None = None,
    ) -> ReplayTrainer:
        cfg = self.config
        tr = ReplayTrainer(
            model,
            buffer=buffer,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            replay_ratio=cfg.replay_ratio,
            mode=cfg.mode,
            review_epochs=cfg.review_epochs,
            review_lr_factor=cfg.review_lr_factor,
            ensemble=cfg.ensemble,
            kind=self.kind,
            device=device or cfg.device,
            seed=cfg.seed,
            progress=cfg.progress,
            schedule=cfg.schedule,
            patience=cfg.patience,
            ema=cfg.ema,
            amp=cfg.amp,
            augment=augmentation(cfg.augment, self.kind),
            imbalance=cfg.imbalance,
            input_spec=self._spec(),
        )
        tr.members = members
        tr.experiences_seen = self.experiences
        return tr

    # ------------------------------------------------------------------ checks
    def _images_labels(
        self, data: ImageSet, classes: list[str], what: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images, label indices into ``classes`` and a real-sample mask."""
        self.check_input(data)
        data = data.materialize()
        missing = sum(s.label is None for s in data.samples)
        if missing:
            raise DataError(
                f"{what}: {missing} samples have no label; every training sample needs one"
            )
        images = data.image_tensor()
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[str(s.label)] for s in data.samples], dtype=torch.long)
        real = torch.tensor([not s.synthetic for s in data.samples])
        return images, labels, real

    def _learn(
        self,
        trainer: ReplayTrainer,
        images: torch.Tensor,
        labels: torch.Tensor,
        real: torch.Tensor,
        num_classes: int,
    ) -> dict[str, Any]:
        """One experience through the trainer, with the validation split the config asks."""
        cfg = self.config
        train_idx, val_idx = validation_split(
            labels,
            cfg.val_fraction,
            seed=cfg.seed + self.experiences,
            eligible=real,
            desc="ContinualClassifier",
        )
        if not val_idx:
            return trainer.train_experience(images, labels, num_classes)
        t, v = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        return trainer.train_experience(
            images[t], labels[t], num_classes, val_images=images[v], val_labels=labels[v]
        )

    # ------------------------------------------------------------------ lifecycle
    def fit(self, data: ImageSet) -> Self:
        """Start over and learn ``data`` as the first experience."""
        self.check_input(data)
        if len(data.classes) < 2:
            raise DataError(
                f"the first experience needs at least two classes, got {data.classes}; "
                "add a second class (e.g. the good/'none' class) before fitting"
            )
        cfg = self.config
        device = setup_distributed(resolve_device(cfg.device)).device
        seed_everything(cfg.seed)
        images, labels, real = self._images_labels(data, list(data.classes), "fit")
        spec = InputSpec(
            kind=data.kind,
            data_channels=int(images.shape[1]),
            size=(int(images.shape[2]), int(images.shape[3])),
            size_policy="refuse",
        )
        self.input_spec = spec.with_stats(images[:: max(1, len(images) // STATS_SAMPLES)])
        self.classes = list(data.classes)
        self.build_classes = len(self.classes)
        self.experiences = 0
        self.history = []
        model = self._build_model(self.build_classes)
        trainer = self._trainer(model, self._new_buffer(), [], device)
        stats = self._learn(trainer, images, labels, real, len(self.classes))
        self._commit(trainer, stats)
        self.fitted = True
        return self

    def update(self, data: ImageSet) -> Self:
        """Learn the next experience, replaying the memory; grows the class list.

        Works on copies: if anything fails, the stage keeps its previous model, buffer
        and class list.

        Raises:
            NotFittedError: ``update`` before ``fit``.
            DataError: empty or unlabelled experience, another image size or kind, or a
                class list that collides with the model's.
        """
        self.check_fitted()
        self.check_input(data)
        self._spec().check(data, "ContinualClassifier")
        classes = merge_classes(self.classes, list(data.classes))
        images, labels, real = self._images_labels(data, classes, "update")
        assert self.model is not None
        device = setup_distributed(resolve_device(self.config.device)).device
        model = copy.deepcopy(self.model)
        buffer = self.buffer.copy() if self.buffer is not None else None
        trainer = self._trainer(model, buffer, list(self.members), device)
        torch.manual_seed(self.config.seed + self.experiences)
        stats = self._learn(trainer, images, labels, real, len(classes))
        # everything succeeded: swap the new state in
        self.classes = classes
        self._commit(trainer, stats)
        return self

    def _commit(self, trainer: ReplayTrainer, stats: dict[str, Any]) -> None:
        self.model = trainer.model.cpu().eval()
        self.buffer = trainer.buffer
        self.members = [m.cpu() for m in trainer.members]
        self.experiences = trainer.experiences_seen
        self.history.append({k: v for k, v in stats.items() if isinstance(v, int | float | str)})

    def predict_proba(self, data: ImageSet, *, ensemble: bool | None = None) -> torch.Tensor:
        """``N×K`` probabilities over :attr:`classes`.

        Args:
            data: Samples to predict (at the size the model was trained on).
            ensemble: Average the per-experience members (default: the ``ensemble``
                setting); ``False`` uses the latest model alone.
        """
        self.check_fitted()
        self.check_input(data)
        spec = self._spec()
        spec.check(data, "ContinualClassifier")
        assert self.model is not None
        images = spec.fit_size(data.materialize().images)  # type: ignore[arg-type]
        trainer = self._trainer(self.model, self.buffer, self.members, "cpu")
        return trainer.predict_proba(images, ensemble=ensemble)

    def run(self, data: ImageSet) -> Predictions:
        """Predict every sample. Classes of ``data`` the model has not learned yet are
        appended to the output class list with probability 0."""
        t0 = time.perf_counter()
        probs = self.predict_proba(data)
        extra = [c for c in data.classes if c not in self.classes]
        classes = self.classes + extra
        if extra:
            probs = torch.cat([probs, torch.zeros(probs.shape[0], len(extra))], dim=1)
        top = probs.argmax(1).tolist()
        fields = data.base_fields()
        fields["classes"] = classes
        out = Predictions.build(**fields, probs=probs, predicted=[classes[i] for i in top])
        log.debug("predicted %d samples in %.2fs", len(data), time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        self.check_fitted()
        assert self.model is not None
        return {
            "version": STATE_VERSION,
            "classes": list(self.classes),
            "input": self._spec().get_state(),
            "build_classes": self.build_classes,
            "experiences": self.experiences,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "buffer": self.buffer.get_state() if self.buffer is not None else None,
            "members": [
                {
                    "num_classes": num_outputs(m),
                    "weights": {k: v.detach().cpu() for k, v in m.state_dict().items()},
                }
                for m in self.members
            ],
            "history": [dict(h) for h in self.history],
        }

    @staticmethod
    def _spec_from_state(state: dict[str, Any]) -> InputSpec:
        version = int(state.get("version", 1))
        if version > STATE_VERSION:
            raise PersistenceError(
                f"ContinualClassifier state version {version} is newer than {STATE_VERSION}; "
                "upgrade inspectkit to load this model"
            )
        if "input" in state:
            return InputSpec.from_state(state["input"])
        # version 1 (inspectkit 0.1): kind, channels and size beside the weights; photos
        # were scaled to [0, 1] without standardisation, which a spec without mean/std keeps
        return InputSpec(
            kind=state["kind"],
            data_channels=int(state["channels"]),
            size=(int(state["size"][0]), int(state["size"][1])),
            size_policy="refuse",
        )

    def set_state(self, state: dict[str, Any]) -> None:
        try:
            self.input_spec = self._spec_from_state(state)
            self.classes = [str(c) for c in state["classes"]]
            self.build_classes = int(state["build_classes"])
            self.experiences = int(state["experiences"])
            self.model = self._restore(state["model"], len(self.classes))
            self.buffer = (
                buffer_from_state(state["buffer"]) if state.get("buffer") is not None else None
            )
            self.members = [
                self._restore(m["weights"], int(m["num_classes"])).requires_grad_(False)
                for m in state["members"]
            ]
            self.history = list(state.get("history", []))
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError, DataError) as exc:
            raise PersistenceError(
                f"ContinualClassifier state is incomplete or does not match its config: {exc}"
            ) from None
        self.fitted = True

    def _restore(self, weights: dict[str, torch.Tensor], num_classes: int) -> nn.Module:
        model = self._build_model(self.build_classes)
        expand_head(model, num_classes, seed=self.config.seed)
        model.load_state_dict(weights)
        return model.eval()


def update_pipeline(pipe: Any, data: ImageSet) -> Any:
    """Run ``data`` through the stages before the pipeline's :class:`ContinualClassifier`
    (their inference transforms, e.g. ``Wrangle``) and ``update`` it with the result.

    Example:
        >>> update_pipeline(pipe, next_experience)  # doctest: +SKIP
    """
    for i, st in enumerate(pipe.stages):
        if isinstance(st, ContinualClassifier):
            for before in pipe.stages[:i]:
                data = before.run(data)
            st.update(data)
            return pipe
    raise ConfigError("the pipeline has no ContinualClassifier stage to update")


__all__ = ["STATE_VERSION", "ContinualClassifier", "merge_classes", "update_pipeline"]
