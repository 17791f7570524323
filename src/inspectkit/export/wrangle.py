"""``Wrangle`` as an export: its inference transform is preprocessing only (resize or
letterbox, channels, normalisation), so it becomes runtime steps and no graph. Dropping
duplicates at run time (``dedupe="always"``) changes which samples come out and is
refused."""

from __future__ import annotations

from typing import Any

from inspectkit.export.base import ExportContext, ExportError, StageExport, register_stage_exporter


@register_stage_exporter("wrangle")
def export_wrangle(stage: Any, ctx: ExportContext) -> StageExport:
    cfg = stage.config
    if cfg.dedupe == "always":
        raise ExportError(
            "Wrangle(dedupe='always') drops duplicate inputs at run time, which an exported "
            "model (one output per input) cannot do; use dedupe='fit' (the default for training)"
        )
    stage.check_fitted()
    wafer = ctx.kind == "wafer"
    steps: list[dict[str, Any]] = []
    if cfg.size is not None:
        mode = cfg.resize if cfg.resize != "auto" else ("nearest" if wafer else "antialias")
        if cfg.keep_aspect:
            steps.append(
                {
                    "op": "letterbox",
                    "size": list(cfg.size),
                    "mode": mode,
                    "fill": 0 if wafer else cfg.pad_value,
                    "fill_scale": None if wafer else 255,
                }
            )
        else:
            steps.append({"op": "resize", "size": list(cfg.size), "mode": mode})
    if cfg.channels is not None and not wafer:
        steps.append({"op": "channels", "channels": cfg.channels})
    kind = None
    if cfg.normalize != "none":
        steps.append({"op": "to_float", "scale": 2 if wafer else 255})
        if cfg.normalize == "standard":
            steps.append(
                {"op": "standardize", "mean": stage.mean.tolist(), "std": stage.std.tolist()}
            )
        kind = "image"
    return StageExport(steps=steps, kind=kind)


__all__ = ["export_wrangle"]
