"""``export_pipeline``: a fitted pipeline → ``MODEL.onnx`` + ``MODEL.json``, checked first.

1. Every stage's exporter (:mod:`inspectkit.export.base`) adds its runtime preprocessing;
   the last stage gives the graph (a torch module of exportable operations).
2. The module is exported with torch's TorchScript-based ONNX exporter at opset
   :data:`OPSET` with a dynamic batch dimension (``batch``) on the input and every output.
3. **Verification.** Probe inputs (random parts of the model's kind and size, plus any
   ``verify_on`` set) go through the pipeline's exact float32 reference
   (:func:`~inspectkit.export.base.exact_reference`) and through the runtime
   (:mod:`inspectkit_runtime`: the sidecar's NumPy preprocessing, then ONNX Runtime).
   Verdicts and top classes must be identical, scores and probabilities within
   :data:`SCORE_RTOL`, maps within :data:`MAP_TOL`; otherwise :class:`ExportError` and
   nothing is written.
4. The files are moved into place (the ONNX file and its external data first, the
   sidecar last, each atomically); the sidecar records their SHA-256.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspectkit._version import __version__
from inspectkit.atomic import atomic_write, fsync_dir, temp_folder_beside
from inspectkit.export.base import ExportContext, ExportError, exact_reference, stage_exporter

log = logging.getLogger(__name__)

#: ONNX opset of exported graphs (ONNX Runtime ≥ 1.12, OpenVINO ≥ 2022.1 read it).
OPSET = 17
#: Graphs whose initializers exceed this many bytes keep them in ``MODEL.onnx.data``
#: (ONNX external data); a single ONNX file cannot exceed 2 GB.
EXTERNAL_DATA_BYTES = 1 << 30
#: Relative tolerance of scores and probabilities between the runtime and the library.
SCORE_RTOL = 1e-4
#: Tolerance of anomaly maps, relative to the largest absolute map value (at least 1).
MAP_TOL = 1e-3
CARD_FILE = "inspectkit-model.json"


def _card(pipeline: Any) -> dict[str, Any]:
    raw = getattr(pipeline, "attachments", {}).get(CARD_FILE)
    if raw is None:
        return {}
    try:
        card = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return card if isinstance(card, dict) else {}


def _input_kind(pipeline: Any, card: dict[str, Any], kind: str | None) -> str:
    if kind is not None:
        if kind not in ("wafer", "image"):
            raise ExportError(f"kind must be 'wafer' or 'image', got {kind!r}")
        return kind
    if card.get("kind") in ("wafer", "image"):
        return str(card["kind"])
    for st in pipeline.stages:
        if getattr(st.config, "normalize", "none") != "none":
            raise ExportError(
                f"{type(st).__name__} normalises the data, so the kind of input the model reads "
                "is not known; pass kind='wafer' or kind='image'"
            )
        spec = getattr(st, "input_spec", None)
        if spec is not None:
            return str(spec.kind)
    return "image"


def _decode_channels(pipeline: Any, card: dict[str, Any], kind: str) -> int | None:
    if kind == "wafer":
        return None
    if "channels" in card:
        return card["channels"]
    for st in pipeline.stages:
        if getattr(st.config, "channels", None) is not None:
            return None  # the pipeline converts channels itself
        spec = getattr(st, "input_spec", None)
        if spec is not None:
            return int(spec.data_channels)
        if getattr(st, "in_channels", None) is not None:
            return int(st.in_channels)
    return None


def plan(pipeline: Any, *, kind: str | None = None) -> tuple[Any, ExportContext, dict[str, Any]]:
    """Ask every stage's exporter for its part: ``(last stage's export, context, card)``.

    Raises:
        ExportError: a stage without an exporter, a stage after the graph stage, a
            pipeline without one.
    """
    card = _card(pipeline)
    input_kind = _input_kind(pipeline, card, kind)
    ctx = ExportContext(kind=input_kind, input_kind=input_kind)
    final = None
    for i, st in enumerate(pipeline.stages):
        if final is not None:
            raise ExportError(
                f"stage {i} ({type(st).__name__}) follows {type(pipeline.stages[i - 1]).__name__}, "
                "whose output is the exported graph's; export the pipeline without it"
            )
        part = stage_exporter(st)(st, ctx)
        ctx.steps.extend(part.steps)
        if part.kind is not None:
            ctx.kind = part.kind
        if part.module is not None:
            final = part
    if final is None:
        raise ExportError(
            "the pipeline has no classifier or detector to export (only preprocessing stages)"
        )
    return final, ctx, card


def _torch_export(
    module: torch.nn.Module, shape: tuple[int, ...], outputs: list[str], file: Path, opset: int
) -> None:
    dummy = torch.rand(1, *shape)
    axes = {name: {0: "batch"} for name in ["images", *outputs]}
    # traced with gradients on: detectors then run their plain feature extractor (ONNX
    # Runtime folds BatchNorm itself) rather than the channels-last inference copy
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        torch.onnx.export(
            module,
            (dummy,),
            str(file),
            dynamo=False,
            input_names=["images"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    module.eval()  # the exporter restores the training flag it found, recursively


def _relocate(src: Path, dest: Path, external_bytes: int) -> list[str]:
    """Load the exported graph, write it as ``dest`` (+ ``dest.data`` when its weights
    exceed ``external_bytes``); returns the external data file names."""
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    model.producer_name = "inspectkit"
    model.producer_version = __version__
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size <= external_bytes:
        onnx.save_model(model, str(dest))
        return []
    data = dest.name + ".data"
    onnx.save_model(
        model,
        str(dest),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )
    return [data]


def _probe(
    kind: str,
    channels: int | None,
    shape: tuple[int, int, int],
    n: int = 3,
    *,
    resizes: bool = True,
) -> Any:
    """Random parts of the model's kind: uint8 images (one of another size when the model
    resizes, so resizing is checked too) or wafer maps of codes 0/1/2."""
    from inspectkit.records import ImageSet, SampleMeta

    g = torch.Generator().manual_seed(0)
    c, h, w = shape
    sizes = [(h, w)] * (n - 1) + [(h + 7, w + 5) if resizes else (h, w)]
    if kind == "wafer":
        images = [torch.randint(0, 3, (1, a, b), generator=g, dtype=torch.uint8) for a, b in sizes]
    else:
        cc = channels or c
        base = [torch.rand(cc, a, b, generator=g) for a, b in sizes]
        images = [(x * 255).round().to(torch.uint8) for x in base]
    return ImageSet.build(
        images=images, samples=[SampleMeta(id=f"probe-{i}") for i in range(n)], kind=kind
    )


def _as_arrays(data: Any) -> list[np.ndarray]:
    out = []
    for batch in data.iter_batches(256):
        for t in batch.images:
            a = t.numpy()
            out.append(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    return out


def compare(reference: Any, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """How the runtime's graph outputs differ from a reference record of the library
    (``Predictions`` or ``AnomalyScores``): mismatched verdicts / top classes, the largest
    relative score or probability difference, the largest map difference (relative to
    the map scale), and ``ok`` when all are within the tolerances."""
    report: dict[str, Any] = {"n": len(reference)}
    if "probs" in outputs:
        ref = reference.probs.double().numpy()
        got = outputs["probs"].astype(np.float64)
        report["max_prob_diff"] = float(np.abs(got - ref).max())
        classes = list(reference.classes)
        ref_idx = [classes.index(p) if p is not None else -1 for p in reference.predicted]
        report["class_mismatches"] = int((np.asarray(ref_idx) != outputs["class"]).sum())
        report["ok"] = report["class_mismatches"] == 0 and report["max_prob_diff"] <= SCORE_RTOL
        return report
    ref_s = reference.scores.double().numpy()
    got_s = outputs["score"].astype(np.float64)
    floor = 1e-3 * max(float(np.abs(ref_s).max()), 1e-12)
    report["max_score_rel_diff"] = float(
        (np.abs(got_s - ref_s) / np.maximum(np.abs(ref_s), floor)).max()
    )
    ref_m = reference.maps.double().numpy()
    got_m = outputs["map"].astype(np.float64)
    scale = max(float(np.abs(ref_m).max()), 1.0)
    report["max_map_diff"] = float(np.abs(got_m - ref_m).max() / scale)
    ok = report["max_score_rel_diff"] <= SCORE_RTOL and report["max_map_diff"] <= MAP_TOL
    if reference.is_anomalous is not None:
        flags = reference.is_anomalous.numpy().astype(bool)
        report["verdict_mismatches"] = int((flags != outputs["anomalous"].astype(bool)).sum())
        norm = reference.normalized.double().numpy()
        report["max_normalized_diff"] = float(np.abs(outputs["normalized"] - norm).max())
        ok = (
            ok and report["verdict_mismatches"] == 0 and report["max_normalized_diff"] <= SCORE_RTOL
        )
    report["ok"] = ok
    return report


def export_pipeline(
    pipeline: Any,
    path: str | os.PathLike[str],
    *,
    format: str = "onnx",
    opset: int = OPSET,
    kind: str | None = None,
    verify: bool = True,
    verify_on: Any = None,
    batch_hint: int | None = None,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
    strict: bool = False,
) -> Path:
    """Export a fitted pipeline to ONNX (see the module notes); returns the ``.onnx`` path.

    Args:
        pipeline: A fitted :class:`~inspectkit.Pipeline` ending in a classifier or detector.
        path: ``MODEL.onnx`` (the sidecar is ``MODEL.json`` beside it), or a folder (then
            ``model.onnx`` and ``model.json`` inside it).
        format: ``"onnx"`` (the only format).
        opset: ONNX opset (default :data:`OPSET`).
        kind: ``"wafer"`` or ``"image"`` inputs; default from the model card or the stages.
        verify: Check the exported graph against the library before writing anything.
        verify_on: An ``ImageSet`` of real inputs to verify on as well.
        batch_hint: Inputs per graph run the runtime uses by default.
        external_data_bytes: Weights above this size go to ``MODEL.onnx.data``.
        strict: Refuse a model whose own run is not exact float32 (bfloat16 features,
            approximate nearest-neighbour search) instead of exporting its exact float32
            computation with a note.

    Raises:
        ExportError: an unsupported stage, detector or format, or a graph that does not
            reproduce the library within the tolerances (nothing is written then).
    """
    if format != "onnx":
        raise ExportError(f"unknown export format {format!r}; inspectkit exports 'onnx'")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"export needs the onnx extra ({exc.name} is missing): pip install 'inspectkit[onnx]'"
        ) from None
    for st in pipeline.stages:
        if getattr(st, "stateful", False) and not getattr(st, "fitted", True):
            raise ExportError(f"stage {type(st).__name__} is not fitted; fit the pipeline first")
    out = Path(path)
    if out.suffix.lower() != ".onnx":
        out = out / "model.onnx"
    final, ctx, card = plan(pipeline, kind=kind)
    if strict and ctx.notes:
        raise ExportError(
            "strict export: the model's own run is not exact float32, so the exported graph "
            f"would score differently ({'; '.join(ctx.notes)}); set feature_dtype='float32' and "
            "PatchCore search_dim=0 / search_dtype='float32', or export without strict"
        )
    assert final.module is not None and final.input_shape is not None
    channels = _decode_channels(pipeline, card, ctx.input_kind)
    tmp = temp_folder_beside(out, "export")
    try:
        raw = tmp / "traced.onnx"
        _torch_export(final.module, final.input_shape, final.outputs, raw, opset)
        staged = tmp / out.name
        external = _relocate(raw, staged, external_data_bytes)
        raw.unlink()
        from inspectkit_runtime.sidecar import FORMAT, FORMAT_VERSION, sha256_file

        hint = batch_hint or (2 if final.sidecar.get("task") == "anomaly" else 64)
        sidecar: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "inspectkit_version": __version__,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": out.name,
            "sha256": sha256_file(staged),
            "external_data": [{"file": f, "sha256": sha256_file(tmp / f)} for f in external],
            "opset": opset,
            "input": {"kind": ctx.input_kind, "channels": channels},
            "preprocess": ctx.steps,
            "graph": {
                "input": "images",
                "input_shape": list(final.input_shape),
                "dynamic_batch": True,
                "outputs": final.outputs,
            },
            "batch_hint": hint,
            **final.sidecar,
            "notes": ctx.notes,
        }
        if card:
            sidecar["card"] = card
        side_tmp = tmp / "sidecar.json"
        side_tmp.write_text(json.dumps(sidecar, indent=2))
        if verify:
            report = verify_export(
                pipeline, side_tmp, staged, ctx.input_kind, channels, final, verify_on
            )
            sidecar["verified"] = report
            log.info("export verified: %s", report)
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in [*external, out.name]:
            os.replace(tmp / name, out.parent / name)
        fsync_dir(out.parent)
        atomic_write(out.with_suffix(".json"), json.dumps(sidecar, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def verify_export(
    pipeline: Any,
    sidecar: Path,
    onnx_file: Path,
    kind: str,
    channels: int | None,
    final: Any,
    verify_on: Any = None,
) -> dict[str, Any]:
    """Run probe inputs (and ``verify_on``) through the exact reference and the runtime;
    :class:`ExportError` when they disagree. Returns the comparison of each set."""
    from inspectkit_runtime.model import InspectionModel

    # the sidecar in the staging folder names the staged ONNX file: load it as it will be
    side = json.loads(sidecar.read_text())
    side["model"] = onnx_file.name
    staged_side = onnx_file.with_suffix(".json")
    staged_side.write_text(json.dumps(side))
    try:
        runtime = InspectionModel(staged_side)
    finally:
        staged_side.unlink()
    reference = exact_reference(pipeline)
    fixed = any(step["op"] == "require_size" for step in side["preprocess"])
    sets = {"probe": _probe(kind, channels, final.input_shape, resizes=not fixed)}
    if verify_on is not None:
        sets["verify_on"] = verify_on
    reports = {}
    for name, data in sets.items():
        expected = reference.run(data)
        got = runtime.run_arrays(_as_arrays(data))
        report = compare(expected, got)
        reports[name] = report
        if not report["ok"]:
            raise ExportError(
                f"the exported graph does not reproduce the model on the {name} inputs "
                f"({report}); nothing was written"
            )
    return reports


__all__ = [
    "EXTERNAL_DATA_BYTES",
    "MAP_TOL",
    "OPSET",
    "SCORE_RTOL",
    "compare",
    "export_pipeline",
    "plan",
    "verify_export",
]
