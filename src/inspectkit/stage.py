"""The :class:`Stage` base class every pipeline step derives from.

A stage declares the record type it accepts and the one it produces as generic
parameters, its knobs as a pydantic ``Config``, and its learned state as tensors and
plain values. The pipeline uses those declarations to check an assembly before anything
runs, and to save and load a fitted pipeline without pickling objects.

Example:
    >>> from inspectkit.records import ImageSet
    >>> from inspectkit.stage import Stage
    >>> class Invert(Stage[ImageSet, ImageSet]):
    ...     name = "invert"
    ...     class Config(Stage.Config):
    ...         maximum: int = 255
    ...     def run(self, data):
    ...         return data.replace(images=self.config.maximum - data.image_tensor())
    >>> Invert(maximum=1).config.maximum
    1
"""

from __future__ import annotations

import logging
import typing
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)
from typing_extensions import Self

from inspectkit.errors import ConfigError, DataError, NotFittedError
from inspectkit.ops import SIZE_RANGE, check_size
from inspectkit.records import ImageSet, Record, _format_validation

In = TypeVar("In", bound=Record)
Out = TypeVar("Out", bound=Record)

log = logging.getLogger(__name__)

#: Types allowed in a stage's state besides tensors (``torch.load(weights_only=True)`` safe).
PLAIN_TYPES = (str, int, float, bool, type(None))


def _square_size(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return value


#: An image size ``(H, W)`` config field; a single int ``n`` means ``(n, n)``. Every stage
#: that resizes declares its size with this type, so one range applies everywhere
#: (:data:`inspectkit.ops.SIZE_RANGE`).
_SIDE = {"type": "integer", "minimum": SIZE_RANGE[0], "maximum": SIZE_RANGE[1]}
ImageSize = Annotated[
    tuple[int, int],
    BeforeValidator(_square_size),
    AfterValidator(check_size),
    WithJsonSchema(
        {
            "anyOf": [
                _SIDE,
                {"type": "array", "items": _SIDE, "minItems": 2, "maxItems": 2},
            ],
            "description": "one side for a square, or [height, width], in pixels",
        }
    ),
]


#: A random seed: a whole number from 0 to 2**63 - 1 (what torch, NumPy and Python all
#: accept), so ``--seed 2**70`` is refused when the stage is built, not deep in a fit.
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class StageConfig(BaseModel):
    """Base of every stage's ``Config``: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Stage(Generic[In, Out]):
    """A pipeline step: ``fit`` learns state, ``run`` transforms at inference.

    Subclass as ``class MyStage(Stage[InRecord, OutRecord])`` and set ``name`` (the
    registry key). Override ``run``; override ``fit`` when the stage learns something;
    override ``fit_run`` when training-time output differs from inference (augmentation
    and generation add samples only there). Learned state goes through ``get_state`` /
    ``set_state`` as tensors and plain values.

    Attributes:
        name: Registry name used in saved specs.
        input_type: Record type accepted (taken from the first generic parameter).
        output_type: Record type produced (taken from the second generic parameter).
        preserves_type: True when ``run`` returns the same record type it got (e.g.
            ``Wrangle`` hands a ``Predictions`` on as ``Predictions``).
        stateful: True when ``fit`` learns state that ``run`` needs.
    """

    name: ClassVar[str] = ""
    input_type: ClassVar[type[Record]] = ImageSet
    output_type: ClassVar[type[Record]] = ImageSet
    preserves_type: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Stage:
                args = typing.get_args(base)
                if len(args) == 2:
                    if isinstance(args[0], type) and "input_type" not in cls.__dict__:
                        cls.input_type = args[0]
                    if isinstance(args[1], type) and "output_type" not in cls.__dict__:
                        cls.output_type = args[1]

    def __init__(self, config: StageConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise ConfigError(f"{type(self).__name__}: pass either a config or keyword arguments")
        raw: dict[str, Any]
        if isinstance(config, StageConfig):
            raw = config.model_dump()
        else:
            raw = dict(config or {}, **kwargs)
        try:
            self.config = self.Config(**raw)
        except ValidationError as exc:
            raise ConfigError(f"{type(self).__name__}: {_format_validation(exc)}") from None
        self.fitted = not self.stateful

    # ------------------------------------------------------------------ lifecycle
    def fit(self, data: In) -> Self:
        """Learn state from ``data``; stateless stages return ``self`` unchanged."""
        self.check_input(data)
        self.fitted = True
        return self

    def run(self, data: In) -> Out:
        """Transform ``data`` at inference time."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    def fit_run(self, data: In) -> Out:
        """Training-time transform: by default ``fit(data).run(data)``."""
        return self.fit(data).run(data)

    def attach(self, upstream: list[Stage[Any, Any]]) -> None:
        """Called by the pipeline with the stages before this one (e.g. to find a model)."""

    # ------------------------------------------------------------------ checks
    def check_input(self, data: Any) -> None:
        """Refuse a record of the wrong type or an empty set."""
        if not isinstance(data, self.input_type):
            raise DataError(
                f"{type(self).__name__} expects {self.input_type.__name__}, "
                f"got {type(data).__name__}"
            )
        if isinstance(data, ImageSet) and len(data) == 0:
            raise DataError(f"{type(self).__name__} got an empty {type(data).__name__}")

    def check_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__} must be fitted before run(); call fit()")

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Learned state as tensors, plain values and nested dicts/lists of them."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_state`` returned (after ``torch.load(weights_only=True)``)."""
        self.fitted = True

    # ------------------------------------------------------------------ settings
    def get_params(self) -> dict[str, Any]:
        """The stage's settings as plain values (its config).

        Example:
            >>> from inspectkit.stages import Wrangle
            >>> Wrangle(size=32).get_params()["size"]
            (32, 32)
        """
        return self.config.model_dump()

    def set_params(self, **changes: Any) -> Self:
        """Change settings by name, validated as at construction (``ConfigError`` when a
        name is unknown or a value is refused; the stage is then left unchanged).

        A key may reach into a dict-valued setting with ``__``:
        ``set_params(options__coreset_ratio=0.1)`` changes one entry of ``options``.

        Example:
            >>> from inspectkit.stages import Wrangle
            >>> Wrangle(size=32).set_params(size=48).config.size
            (48, 48)
        """
        values = self.config.model_dump()
        fields = type(self.config).model_fields
        for key, value in changes.items():
            name, _, rest = key.partition("__")
            if name not in fields:
                raise ConfigError(
                    f"{type(self).__name__} has no setting {name!r}; settings: {', '.join(fields)}"
                )
            if rest:
                values[name] = _set_nested(values[name], rest.split("__"), value, key)
            else:
                values[name] = value
        try:
            self.config = self.Config(**values)
        except ValidationError as exc:
            raise ConfigError(f"{type(self).__name__}: {_format_validation(exc)}") from None
        return self

    # ------------------------------------------------------------------ spec
    def spec(self) -> dict[str, Any]:
        return {"name": self.registry_name(), "config": self.config.model_dump(mode="json")}

    @classmethod
    def registry_name(cls) -> str:
        return cls.name or cls.__name__.lower()

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({cfg})"


def _set_nested(container: Any, path: list[str], value: Any, key: str) -> dict[str, Any]:
    """A copy of the dict ``container`` with ``value`` at ``path`` (created if missing)."""
    if container is None:
        container = {}
    if not isinstance(container, dict):
        raise ConfigError(f"{key}: {path[0]!r} is inside a setting that is not a dict")
    out = dict(container)
    head, rest = path[0], path[1:]
    out[head] = _set_nested(out.get(head), rest, value, key) if rest else value
    return out


def check_state(state: Any, path: str = "state") -> None:
    """Raise ``TypeError`` unless ``state`` holds only tensors and plain values."""
    if isinstance(state, (torch.Tensor, *PLAIN_TYPES)):
        return
    if isinstance(state, dict):
        for k, v in state.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{path}: key {k!r} is not a string")
            check_state(v, f"{path}.{k}")
        return
    if isinstance(state, list | tuple):
        for i, v in enumerate(state):
            check_state(v, f"{path}[{i}]")
        return
    raise TypeError(
        f"{path} is a {type(state).__name__}; state may hold tensors and plain values only"
    )


__all__ = ["ImageSize", "In", "Out", "Seed", "Stage", "StageConfig", "check_state"]
