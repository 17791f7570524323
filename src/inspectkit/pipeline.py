"""Typed assembly of stages, fit/run, and safe persistence.

Example:
    >>> import inspectkit as ik
    >>> from inspectkit.stages import Wrangle
    >>> pipe = ik.Pipeline([Wrangle(size=32)])
    >>> [s["name"] for s in pipe.spec()["stages"]]
    ['wrangle']
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from inspectkit._version import __version__
from inspectkit.errors import (
    ConfigError,
    DataError,
    InspectkitError,
    PersistenceError,
    PipelineError,
)
from inspectkit.modelfolder import (
    FORMAT,
    FORMAT_VERSION,
    read_model,
    rollback,
    write_model,
)
from inspectkit.records import Record
from inspectkit.registry import get_stage, name_of
from inspectkit.runtime import is_main_process
from inspectkit.stage import Stage, check_state

log = logging.getLogger(__name__)


class Pipeline:
    """A sequence of stages checked for type compatibility when built.

    Args:
        stages: Stage instances in order. Each stage must accept the record type the one
            before it produces; otherwise :class:`PipelineError` names both stages.

    Example:
        >>> from inspectkit.stages import Wrangle
        >>> Pipeline([Wrangle(size=64)])
        Pipeline([Wrangle(...)])
    """

    def __init__(self, stages: Sequence[Stage[Any, Any]]) -> None:
        stages = list(stages)
        if not stages:
            raise PipelineError("a pipeline needs at least one stage")
        for i, st in enumerate(stages):
            if not isinstance(st, Stage):
                raise PipelineError(
                    f"step {i} is a {type(st).__name__}, not a Stage instance "
                    "(did you pass the class instead of calling it?)"
                )
        self.stages = stages
        #: Files saved with the model (name → bytes), filled by :meth:`load`.
        self.attachments: dict[str, bytes] = {}
        self.output_type = self._check_types()
        for i, st in enumerate(stages):
            st.attach(stages[:i])

    def _check_types(self) -> type[Record]:
        current: type[Record] = self.stages[0].input_type
        prev: Stage[Any, Any] | None = None
        for st in self.stages:
            if prev is not None and not issubclass(current, st.input_type):
                raise PipelineError(
                    f"{type(prev).__name__} produces {current.__name__} but the next stage, "
                    f"{type(st).__name__}, accepts {st.input_type.__name__}; reorder the stages "
                    "or put a converting stage between them"
                )
            if not st.preserves_type:
                current = st.output_type
            prev = st
        return current

    # ------------------------------------------------------------------ running
    def _check_data(self, data: Any) -> None:
        first = self.stages[0]
        if not isinstance(data, first.input_type):
            raise DataError(
                f"the pipeline starts with {type(first).__name__}, which accepts "
                f"{first.input_type.__name__}; got {type(data).__name__}"
            )

    def fit(self, data: Record) -> Pipeline:
        """Fit every stage in order on the output of the previous stage's ``fit_run``."""
        self._check_data(data)
        last = len(self.stages) - 1
        for i, st in enumerate(self.stages):
            t0 = time.perf_counter()
            if i < last:
                data = st.fit_run(data)
            else:
                st.fit(data)
            log.info("fitted %s in %.2fs", type(st).__name__, time.perf_counter() - t0)
        return self

    def run(self, data: Record) -> Record:
        """Run every stage's inference transform in order."""
        self._check_data(data)
        for st in self.stages:
            data = st.run(data)
        return data

    def iter_run(self, data: Record, batch_size: int = 256) -> Iterator[Record]:
        """Stream ``data`` through the pipeline batch by batch (lazy sets stay lazy)."""
        self._check_data(data)
        for batch in data.iter_batches(batch_size):  # type: ignore[attr-defined]
            yield self.run(batch)

    def fit_run(self, data: Record) -> Record:
        """Fit then return the training-time output of the last stage."""
        self._check_data(data)
        for st in self.stages:
            data = st.fit_run(data)
        return data

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, key: int | str) -> Stage[Any, Any]:
        if isinstance(key, int):
            return self.stages[key]
        for st in self.stages:
            if type(st).__name__ == key or st.registry_name() == key:
                return st
        raise KeyError(key)

    def __repr__(self) -> str:
        return "Pipeline([" + ", ".join(f"{type(s).__name__}(...)" for s in self.stages) + "])"

    # ------------------------------------------------------------------ settings
    def stage_keys(self) -> list[str]:
        """The prefix of each stage's settings in :meth:`get_params`: its registry name,
        numbered ``name-1``, ``name-2`` ... when several stages share it.

        Example:
            >>> from inspectkit.stages import Wrangle
            >>> Pipeline([Wrangle(size=32), Wrangle(size=16)]).stage_keys()
            ['wrangle-1', 'wrangle-2']
        """
        names = [st.registry_name() for st in self.stages]
        seen: dict[str, int] = {}
        keys = []
        for n in names:
            if names.count(n) == 1:
                keys.append(n)
            else:
                seen[n] = seen.get(n, 0) + 1
                keys.append(f"{n}-{seen[n]}")
        return keys

    def get_params(self) -> dict[str, Any]:
        """Every stage setting as ``{"stage__setting": value}`` (scikit-learn style).

        Example:
            >>> from inspectkit.stages import Wrangle
            >>> Pipeline([Wrangle(size=32)]).get_params()["wrangle__size"]
            (32, 32)
        """
        return {
            f"{key}__{name}": value
            for key, st in zip(self.stage_keys(), self.stages)
            for name, value in st.get_params().items()
        }

    def set_params(self, **changes: Any) -> Pipeline:
        """Change stage settings with ``stage__setting=value`` keys (see :meth:`get_params`);
        ``stage__setting__key`` reaches into a dict-valued setting. Every change is
        validated before any is made: on a ``ConfigError`` no stage has changed.

        Example:
            >>> from inspectkit.stages import Classifier, Wrangle
            >>> pipe = Pipeline([Wrangle(size=32), Classifier()])
            >>> pipe.set_params(classifier__epochs=5)["classifier"].config.epochs
            5
        """
        by_key = dict(zip(self.stage_keys(), self.stages))
        grouped: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            stage_key, sep, setting = key.partition("__")
            if not sep or not setting:
                raise ConfigError(f"setting {key!r} must look like 'stage__setting'")
            if stage_key not in by_key:
                raise ConfigError(
                    f"no stage {stage_key!r} in this pipeline; stages: {', '.join(by_key)}"
                )
            grouped.setdefault(stage_key, {})[setting] = value
        trial = {k: copy.copy(by_key[k]).set_params(**v).config for k, v in grouped.items()}
        for k, config in trial.items():
            by_key[k].config = config
        return self

    # ------------------------------------------------------------------ spec
    def spec(self) -> dict[str, Any]:
        """Stage names and configs as plain JSON (no learned state)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "inspectkit_version": __version__,
            "stages": [
                {"name": name_of(st), "config": st.config.model_dump(mode="json")}
                for st in self.stages
            ],
        }

    @staticmethod
    def spec_schema() -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of a pipeline spec, with one branch per stage known
        here (built-in and installed plugins): ``{"stages": [{"name": ..., "config": {...}}]}``.
        ``inspectkit spec-schema`` prints it; :meth:`from_spec` applies the same rules.
        """
        from inspectkit.registry import STAGES

        branches = []
        defs: dict[str, Any] = {}
        for name, stage_cls in STAGES.items():
            config = stage_cls.Config.model_json_schema(mode="validation")
            defs.update(config.pop("$defs", {}))
            config["title"] = f"{stage_cls.__name__} settings"
            branches.append(
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": name},
                        "config": config,
                        "fitted": {"type": "boolean"},
                        "state": {"type": "string"},
                        "sha256": {"type": "string"},
                    },
                    "required": ["name"],
                    "additionalProperties": False,
                }
            )
        schema: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://inspectkit.dev/schemas/pipeline-spec-1.json",
            "title": "inspectkit pipeline spec",
            "type": "object",
            "properties": {
                "format": {"const": FORMAT},
                "format_version": {"type": "integer", "minimum": 1},
                "inspectkit_version": {"type": "string"},
                "stages": {"type": "array", "minItems": 1, "items": {"oneOf": branches}},
                "attachments": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["stages"],
        }
        if defs:
            schema["$defs"] = defs
        return schema

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Pipeline:
        """Build an unfitted pipeline from names and configs (built-in or plugin stages).

        Example:
            >>> Pipeline.from_spec({"stages": [{"name": "wrangle", "config": {"size": 32}}]})
            Pipeline([Wrangle(...)])
        """
        if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list):
            raise ConfigError('a pipeline spec is a dict with a "stages" list')
        stages = []
        for i, entry in enumerate(spec["stages"]):
            if not isinstance(entry, dict) or "name" not in entry:
                raise ConfigError(f'stage {i} of the spec needs a "name"')
            stage_cls = get_stage(str(entry["name"]))
            config = entry.get("config") or {}
            if not isinstance(config, dict):
                raise ConfigError(f"stage {i} ({entry['name']}): config must be a mapping")
            stages.append(stage_cls(**config))
        return cls(stages)

    # ------------------------------------------------------------------ persistence
    def save(
        self,
        path: str | os.PathLike[str],
        *,
        attachments: Mapping[str, str | bytes] | None = None,
        keep: int = 0,
    ) -> Path:
        """Save specs and learned state to folder ``path``, atomically.

        Everything is written to a temporary folder beside ``path`` and swapped in only
        when complete: a failure or a kill mid-save leaves the previous model intact.
        State is written with ``torch.save`` and read back with ``weights_only=True``;
        ``pipeline.json`` records the SHA-256 of every state file. A folder holding
        anything but a saved model is never replaced, with ``keep=1`` the previous model is
        kept as ``NAME.prev`` (``keep=N``: N versions; :meth:`rollback` puts it back; the
        command line keeps one by default), and a symlink
        ``path`` keeps pointing where it did (its target is replaced). In a ``torchrun``
        job only rank 0 writes; other ranks return ``path`` untouched. See
        :mod:`inspectkit.modelfolder` for the guarantees.

        Args:
            path: The model folder.
            attachments: Further files saved as part of the model (name → text or bytes),
                e.g. the command line's model card; :meth:`load` gives them back in
                ``pipeline.attachments``.
            keep: Previous versions to keep beside the model (default 0 = none).
        """
        path = Path(path)
        if not is_main_process():
            log.info("not rank 0 of a distributed job: leaving %s to rank 0", path)
            return path
        spec = self.spec()
        states: list[dict[str, Any] | None] = []
        for st in self.stages:
            state = st.get_state() if st.fitted else None
            try:
                check_state(state or {}, f"{type(st).__name__} state")
            except TypeError as exc:
                raise PersistenceError(str(exc)) from None
            states.append(state)
        return write_model(path, spec, states, attachments=attachments, keep=keep)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Pipeline:
        """Load a pipeline saved by :meth:`save` (no arbitrary objects are unpickled).

        Raises:
            PersistenceError: Not a model folder; a spec, state or file that cannot be read
                safely or is not the one the spec was saved with; a newer format.
        """
        path = Path(path)
        saved = read_model(path)
        try:
            pipe = cls.from_spec(saved.spec)
        except InspectkitError as exc:
            raise PersistenceError(f"cannot load {path}: {exc}") from None
        for i, (st, entry, state) in enumerate(
            zip(pipe.stages, saved.spec["stages"], saved.states)
        ):
            if state is None:
                continue
            try:
                st.set_state(state)
            except InspectkitError as exc:
                raise PersistenceError(f"{path / entry['state']}: {exc}") from None
            except (
                KeyError,
                TypeError,
                ValueError,
                AttributeError,
                IndexError,
                RuntimeError,
            ) as exc:
                raise PersistenceError(
                    f"{path / entry['state']}: the saved state of stage {i} ({entry['name']}) "
                    f"is incomplete or does not fit its config ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:200]})"
                ) from None
            st.fitted = True
        pipe.attachments = saved.attachments
        return pipe

    def export(self, path: str | os.PathLike[str], format: str = "onnx", **options: Any) -> Path:
        """Export the fitted pipeline to ONNX: ``MODEL.onnx`` plus the sidecar
        ``MODEL.json`` (preprocessing, classes or calibration) that
        :mod:`inspectkit_runtime` or any ONNX Runtime binding reads. The graph is checked
        against this pipeline's exact float32 scoring before anything is written; see
        :func:`inspectkit.export.export_pipeline` for ``options``.

        Raises:
            ExportError: a stage or detector without an exporter, or a graph that would
                score differently (nothing is written).
        """
        from inspectkit.export import export_pipeline

        return export_pipeline(self, path, format=format, **options)

    @staticmethod
    def rollback(path: str | os.PathLike[str]) -> Path:
        """Put the model saved before the last save at ``path`` back (see :meth:`save`)."""
        return rollback(path)


__all__ = ["Pipeline"]
