"""What every exporter shares: the two exporter registries, the export context, the
exact float32 reference of a model.

An exporter turns one fitted stage into (a) the preprocessing steps the runtime applies
in NumPy (:mod:`inspectkit_runtime.preprocess`) and, for the stage that ends the
pipeline, (b) a torch module made of ONNX-exportable operations whose outputs are the
exported graph's outputs. Stage exporters are found by the stage's registry name
(``"classifier"``, ``"anomaly_detector"``, ``"wrangle"``), detector exporters by the
detector's name (``"patchcore"``, ``"padim"`` ...): each lives in its own module of this
package (or an installed package's entry point under ``inspectkit.stage_exporters`` /
``inspectkit.detector_exporters``), so a new detector adds its exporter in one file.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from inspectkit.errors import InspectkitError
from inspectkit.registry import Registry


class ExportError(InspectkitError):
    """A pipeline (or one of its stages or detectors) cannot be exported as asked, or the
    exported graph did not reproduce the model; nothing was written."""


StageExporter = Callable[[Any, "ExportContext"], "StageExport"]
DetectorExporter = Callable[[Any], nn.Module]

STAGE_EXPORTERS: Registry[StageExporter] = Registry(
    "stage exporter",
    "inspectkit.stage_exporters",
    check=callable,
    scan="inspectkit.export",
    error=ExportError,
)
DETECTOR_EXPORTERS: Registry[DetectorExporter] = Registry(
    "detector exporter",
    "inspectkit.detector_exporters",
    check=callable,
    scan="inspectkit.export",
    error=ExportError,
)


def register_stage_exporter(name: str) -> Callable[[StageExporter], StageExporter]:
    """Decorator: ``fn(stage, context) -> StageExport`` exports stages registered as
    ``name``."""
    return lambda fn: STAGE_EXPORTERS.register(fn, name=name)


def register_detector_exporter(name: str) -> Callable[[DetectorExporter], DetectorExporter]:
    """Decorator: ``fn(detector) -> nn.Module`` exports detectors registered as ``name``.
    The module maps a float batch in [0, 1] (``N×C×H×W``) to ``(scores N, maps N×H×W)``
    with ONNX-exportable operations and a dynamic batch dimension."""
    return lambda fn: DETECTOR_EXPORTERS.register(fn, name=name)


def _find(registry: Registry[Any], name: str, what: str) -> Any:
    if name not in registry.names():
        raise ExportError(
            f"{what} has no ONNX exporter; exporters exist for: {', '.join(registry.names())}"
        )
    return registry.get(name)


def stage_exporter(stage: Any) -> StageExporter:
    """The exporter of ``stage``; an :class:`ExportError` naming the stage otherwise."""
    name = stage.registry_name()
    return _find(STAGE_EXPORTERS, name, f"stage {type(stage).__name__} ({name!r})")  # type: ignore[no-any-return]


def detector_graph(detector: Any) -> nn.Module:
    """The exportable scoring module of ``detector`` (see :func:`register_detector_exporter`)."""
    from inspectkit.anomaly.registry import detector_name

    name = detector_name(detector) or type(detector).__name__
    exporter = _find(DETECTOR_EXPORTERS, name, f"detector {type(detector).__name__} ({name!r})")
    return exporter(detector).eval()


# ---------------------------------------------------------------------- context
@dataclass
class ExportContext:
    """What the stages before an exporter have done to the data.

    Attributes:
        kind: ``"wafer"`` or ``"image"``: the kind of the data at this stage.
        input_kind: The kind of the inputs the runtime reads (wafer ``.npz`` or images).
        steps: Runtime preprocessing so far (sidecar ``"preprocess"`` entries).
        notes: Lines for the sidecar's ``"notes"`` (what was changed or left out).
    """

    kind: str
    input_kind: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class StageExport:
    """One stage's part of an export.

    Attributes:
        steps: Runtime preprocessing this stage adds.
        module: The graph (only the pipeline's last stage has one): a float32
            ``N×C×H×W`` batch named ``images`` in, ``outputs`` out.
        outputs: Names of the module's outputs, in order.
        input_shape: ``(C, H, W)`` of the graph input.
        sidecar: Task fields for the sidecar (``task``, ``classes``, ``calibration`` ...).
        kind: The kind of data after this stage (``None``: unchanged).
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    module: nn.Module | None = None
    outputs: list[str] = field(default_factory=list)
    input_shape: tuple[int, int, int] | None = None
    sidecar: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None


# ---------------------------------------------------------------------- exact reference
def approximations(detector: Any) -> list[str]:
    """What ``detector`` computes other than in exact float32 (bfloat16 features, an
    approximate nearest-neighbour search), one line each; empty when it is exact."""
    from inspectkit.anomaly.base import AnomalyModel
    from inspectkit.anomaly.patchcore import EXACT_SEARCH_MAX_BANK, PatchCore, fast_search_dtype

    found: list[str] = []
    for module in detector.modules():
        if not isinstance(module, AnomalyModel):
            continue
        name = type(module).__name__
        if module.feature_dtype != "float32":
            found.append(f"{name}: {module.feature_dtype} features")
        if isinstance(module, PatchCore) and module.memory_bank.shape[0] > EXACT_SEARCH_MAX_BANK:
            dtype = module.search_dtype
            if dtype == "auto":
                dtype = str(fast_search_dtype(module.memory_bank.device)).removeprefix("torch.")
            if module.search_dim or dtype != "float32":
                found.append(
                    f"{name}: approximate nearest-neighbour search "
                    f"(search_dim={module.search_dim}, {dtype})"
                )
    return found


def exact_detector(detector: Any) -> Any:
    """A copy of ``detector`` that computes in exact float32: features without bfloat16
    autocast, PatchCore's nearest-neighbour search exact (no projection, float32)."""
    from inspectkit.anomaly.base import AnomalyModel
    from inspectkit.anomaly.patchcore import PatchCore

    exact = copy.deepcopy(detector)
    for module in exact.modules():
        if isinstance(module, AnomalyModel) and module.feature_dtype != "float32":
            module.settings = module.settings.replace(feature_dtype="float32")
        if isinstance(module, PatchCore):
            module.search_dim = 0
            module.search_dtype = "float32"
    exact.reset_caches()
    return exact.eval()


def _detectors(stage: Any) -> list[Any]:
    """The fitted detectors of an anomaly stage (one per product where it routes)."""
    products = getattr(stage, "products", None)
    if products:
        return [p.detector for p in products.values()]
    det = getattr(stage, "detector", None)
    return [] if det is None else [det]


def exact_reference(pipeline: Any) -> Any:
    """``pipeline`` with its detectors computing in exact float32 (see
    :func:`exact_detector`): what an exported graph reproduces. The pipeline itself when
    it already is exact, else a copy (the pipeline is left as it is)."""
    from inspectkit.anomaly.stage import AnomalyDetector

    def inexact(st: Any) -> bool:
        return isinstance(st, AnomalyDetector) and any(approximations(d) for d in _detectors(st))

    if not any(inexact(st) for st in pipeline.stages):
        return pipeline
    copied = copy.copy(pipeline)
    copied.stages = [copy.copy(st) if inexact(st) else st for st in pipeline.stages]
    for st in copied.stages:
        if not inexact(st):
            continue
        if getattr(st, "products", None):
            st.products = {
                key: dataclasses.replace(p, detector=exact_detector(p.detector))
                for key, p in st.products.items()
            }
        else:
            st.detector = exact_detector(st.detector)
    return copied


__all__ = [
    "DETECTOR_EXPORTERS",
    "STAGE_EXPORTERS",
    "ExportContext",
    "ExportError",
    "StageExport",
    "approximations",
    "detector_graph",
    "exact_detector",
    "exact_reference",
    "register_detector_exporter",
    "register_stage_exporter",
    "stage_exporter",
]
