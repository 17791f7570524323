"""Self-contained HTML reports people look at.

:func:`write_html` turns a metrics :class:`~inspectkit.records.Report` (and, when given,
the records it was computed from) into one HTML page with every picture inline as a
base64 PNG, so the page can be mailed or archived as one file:

* the headline metrics, counts and notes;
* the confusion matrix as a picture and the per-class precision / recall / F1 table;
* a ROC curve (one-vs-rest per class for a classifier, good-vs-defect for a detector);
* anomaly-score histograms of good and defective samples with the threshold;
* a grid of the worst mistakes, with their heatmap (``Explained``) or anomaly map
  (``AnomalyScores``) laid over the image;
* any matrix in ``report.details`` (e.g. a continual-learning accuracy matrix) as a
  picture, the rest of ``details`` as JSON.

Figures are drawn with matplotlib's object API on the Agg canvas: no window opens and the
global pyplot backend is never changed.

Example:
    >>> from inspectkit.records import Report
    >>> from inspectkit.report import write_html
    >>> r = Report(title="demo", metrics={"accuracy": 0.9}, classes=["a", "b"],
    ...            confusion=[[5, 1], [0, 4]])
    >>> write_html(r, "out/")  # doctest: +SKIP
    PosixPath('out/report.html')
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from inspectkit._version import __version__
from inspectkit.atomic import atomic_write
from inspectkit.errors import DataError
from inspectkit.metrics.anomaly import anomaly_truth, defect_regions, flagged
from inspectkit.ops import to_float
from inspectkit.records import AnomalyScores, Box, Explained, Predictions, Report

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:.6em} .card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em;min-width:8em}
.card b{display:block;font-size:1.4em} .card span{color:#666;font-size:.85em}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start} .figs img{max-width:100%;border:1px solid #eee}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6em}
.grid figure{margin:0;border:1px solid #ddd;border-radius:4px;padding:.3em;font-size:.78em;text-align:center;word-break:break-all}
.grid img{width:100%;image-rendering:pixelated}
.low{background:#fde2e1} .mid{background:#fff4d6} .high{background:#e3f5e1}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em;max-height:30em}
ul.notes li{color:#8a5a00}
"""


# ---------------------------------------------------------------------- picture helpers
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _fig_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", bbox_inches="tight")  # long tick labels are never cut
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pil_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img_tag(uri: str, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{uri}" alt="{html.escape(alt)}"{w}>'


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return _esc(v)


def _matrix_figure(
    matrix: np.ndarray,
    rows: list[str],
    cols: list[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    normalise_rows: bool,
    fmt: str,
) -> str:
    k_r, k_c = matrix.shape
    size = max(3.5, 0.55 * max(k_r, k_c) + 2.0)
    fig = _figure(size + 0.8, size)
    ax = fig.add_subplot(1, 1, 1)
    shown = matrix.astype(float)
    if normalise_rows:
        sums = shown.sum(axis=1, keepdims=True)
        shown = np.divide(shown, sums, out=np.zeros_like(shown), where=sums > 0)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=max(1e-9, float(np.nanmax(shown))))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k_c), labels=cols, rotation=45, ha="right")
    ax.set_yticks(range(k_r), labels=rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if k_r * k_c <= 400:
        top = float(np.nanmax(shown)) if shown.size else 0.0
        for i in range(k_r):
            for j in range(k_c):
                v = matrix[i, j]
                if isinstance(v, float | np.floating) and not np.isfinite(v):
                    continue
                colour = "white" if top > 0 and shown[i, j] > 0.6 * top else "black"
                ax.text(j, i, format(v, fmt), ha="center", va="center", color=colour, fontsize=8)
    return _fig_uri(fig)


# ---------------------------------------------------------------------- sections
def _metrics_section(report: Report) -> str:
    cards = "".join(
        f'<div class="card"><b>{_fmt(v)}</b><span>{_esc(k)}</span></div>'
        for k, v in report.metrics.items()
    )
    parts = [f'<div class="cards">{cards}</div>'] if cards else []
    if report.counts:
        cells = "".join(
            f"<tr><td>{_esc(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in report.counts.items()
        )
        parts.append(f"<table><tr><th>count</th><th>samples</th></tr>{cells}</table>")
    if report.notes:
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in report.notes) + "</ul>"
        )
    return "<h2>Metrics</h2>" + "".join(parts) if parts else ""


def _confusion_section(report: Report) -> str:
    if report.confusion is None or not report.classes:
        return ""
    m = np.array(report.confusion, dtype=np.int64)
    uri = _matrix_figure(
        m,
        report.classes,
        report.classes,
        title="Confusion matrix",
        xlabel="predicted",
        ylabel="true",
        normalise_rows=True,
        fmt="d",
    )
    return (
        "<h2>Confusion matrix</h2>"
        '<p class="sub">Rows: true class, columns: predicted; numbers are sample counts, '
        "colour is the share of the true class.</p>" + _img_tag(uri, "confusion matrix")
    )


def _shade(v: float) -> str:
    if not math.isfinite(v):
        return ""
    return "low" if v < 0.5 else ("mid" if v < 0.8 else "high")


def _per_class_section(report: Report) -> str:
    if not report.per_class:
        return ""
    keys: list[str] = []
    for figs in report.per_class.values():
        keys += [k for k in figs if k not in keys]
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    rows = []
    for cls, figs in report.per_class.items():
        cells = []
        for k in keys:
            v = figs.get(k, math.nan)
            shade = _shade(v) if k in ("precision", "recall", "f1") else ""
            text = _fmt(int(v)) if k in ("support", "review") and math.isfinite(v) else _fmt(v)
            cells.append(f'<td class="{shade}">{text}</td>')
        rows.append(f"<tr><td>{_esc(cls)}</td>{''.join(cells)}</tr>")
    return f"<h2>Per class</h2><table><tr><th>class</th>{head}</tr>{''.join(rows)}</table>"


def _roc_predictions(pred: Predictions) -> str:
    from sklearn.metrics import roc_auc_score, roc_curve

    keep = [i for i, s in enumerate(pred.samples) if not s.synthetic and s.label is not None]
    if not keep:
        return ""
    index = {c: i for i, c in enumerate(pred.classes)}
    y = np.array([index[pred.samples[i].label] for i in keep])  # type: ignore[index]
    probs = pred.probs[keep].double().numpy()
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    k = len(pred.classes)
    targets = [1] if k == 2 else range(k)
    for c in targets:
        pos = y == c
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, c])
        auc = roc_auc_score(pos, probs[:, c])
        ax.plot(fpr, tpr, lw=1.4, label=f"{pred.classes[c]} (AUC {auc:.3f})")
        drawn += 1
    if not drawn:
        return ""
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one class against the rest" if k > 2 else "ROC")
    ax.legend(fontsize=7, loc="lower right")
    return _img_tag(_fig_uri(fig), "ROC curve")


def _scores_figures(scores: AnomalyScores) -> str:
    from sklearn.metrics import roc_auc_score, roc_curve

    real = [i for i, s in enumerate(scores.samples) if not s.synthetic]
    if not real:
        return ""
    sub = scores.subset(real)
    s = sub.scores.double().numpy()
    truth = anomaly_truth(sub)
    parts = []
    fig = _figure(5.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.histogram_bin_edges(s, bins=min(40, max(8, len(s) // 4)))
    if (~truth).any():
        ax.hist(
            s[~truth],
            bins=bins,
            alpha=0.6,
            color="tab:green",
            label=f"good ({int((~truth).sum())})",
        )
    if truth.any():
        ax.hist(
            s[truth], bins=bins, alpha=0.6, color="tab:red", label=f"defect ({int(truth.sum())})"
        )
    if scores.threshold is not None:
        ax.axvline(
            scores.threshold,
            color="black",
            ls="--",
            lw=1.2,
            label=f"threshold {scores.threshold:.3g}",
        )
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("samples")
    ax.set_title("Anomaly scores")
    ax.legend(fontsize=8)
    parts.append(_img_tag(_fig_uri(fig), "anomaly-score histogram"))
    if truth.any() and (~truth).any():
        fpr, tpr, _ = roc_curve(truth, s)
        fig = _figure(11.0, 4.5)  # ROC beside miss rate against false-alarm rate
        ax = fig.add_subplot(1, 2, 1)
        ax.plot(fpr, tpr, lw=1.6, label=f"AUROC {roc_auc_score(truth, s):.3f}")
        if scores.threshold is not None:
            pred = flagged(sub)  # the detector's rule, as the metrics count it
            op_fpr = float((pred & ~truth).sum() / (~truth).sum())
            op_tpr = float((pred & truth).sum() / truth.sum())
            ax.plot([op_fpr], [op_tpr], "ko", label="at the threshold")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set_xlabel("false positive rate (good flagged)")
        ax.set_ylabel("true positive rate (defects caught)")
        ax.set_title("ROC")
        ax.legend(fontsize=8, loc="lower right")
        _miss_vs_false_alarm(fig.add_subplot(1, 2, 2), sub, fpr, tpr, truth)
        parts.append(_img_tag(_fig_uri(fig), "ROC curve and miss rate against false-alarm rate"))
    return "".join(parts)


def _miss_vs_false_alarm(ax: Any, sub: AnomalyScores, fpr: Any, tpr: Any, truth: Any) -> None:
    """Miss rate against false-alarm rate (log scale) on ``ax``, with the detector's
    operating point (and the review band's): where a line reads off the threshold it can
    live with."""
    n_good = max(int((~truth).sum()), 1)
    floor = 0.5 / n_good  # no false alarm at all, drawn half a sample below the first
    ax.step(np.maximum(fpr, floor), 1 - tpr, where="post", lw=1.6, label="all thresholds")
    if sub.threshold is not None:
        pred = flagged(sub)
        op_far = float((pred & ~truth).sum() / n_good)
        op_miss = float((~pred & truth).sum() / max(int(truth.sum()), 1))
        ax.plot([max(op_far, floor)], [op_miss], "ko",
                label=f"threshold: {100 * op_miss:.1f} % missed, {100 * op_far:.1f} % false alarms")  # fmt: skip
    if sub.review is not None:
        review = sub.review.numpy() | flagged(sub)
        r_far = float((review & ~truth).sum() / n_good)
        r_miss = float((~review & truth).sum() / max(int(truth.sum()), 1))
        ax.plot([max(r_far, floor)], [r_miss], "s", color="tab:orange",
                label=f"with review: {100 * r_miss:.1f} % missed, {100 * r_far:.1f} % reviewed")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(floor / 1.5, 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false-alarm rate (good parts flagged), log scale")
    ax.set_ylabel("miss rate (defects passed as good)")
    ax.set_title("Miss rate against false-alarm rate")
    ax.legend(fontsize=7, loc="upper right")


def _thumbnail(
    image: torch.Tensor,
    heat: torch.Tensor | None,
    kind: str,
    size: int = 160,
    *,
    mask: torch.Tensor | None = None,
    boxes: list[Box] | None = None,
    region: torch.Tensor | None = None,
) -> Image.Image:
    """The image (with its heatmap, if any) scaled to ``size``. The ground-truth defect
    mask and boxes, when known, are outlined in white, so a reader sees where the true
    defect is against where the model looked; a detector's defect region in magenta."""
    from inspectkit.xai.overlay import REGION_COLOUR, draw_outline, overlay

    if heat is not None:
        img = overlay(image, heat, kind=kind)
    else:
        x = to_float(image.detach().cpu(), kind=kind).clamp(0, 1)[:3]
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        img = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")
    scale = size / max(img.size)
    if scale > 1:  # small wafer maps: enlarge with nearest so dies stay crisp
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.NEAREST)
    elif scale < 1:
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BILINEAR)
    if mask is not None:
        img = draw_outline(img, mask.detach().cpu()[0] > 0, (255, 255, 255), width=2)
    if region is not None:
        img = draw_outline(img, region, REGION_COLOUR, width=2)
    if boxes:
        sx, sy = img.size[0] / image.shape[-1], img.size[1] / image.shape[-2]
        draw = ImageDraw.Draw(img)
        for bx in boxes:
            draw.rectangle(
                [bx.xmin * sx, bx.ymin * sy, bx.xmax * sx - 1, bx.ymax * sy - 1],
                outline="white",
                width=2,
            )
    return img


def _record_thumbnail(
    record: Any, j: int, heat: torch.Tensor | None, region: torch.Tensor | None = None
) -> Image.Image:
    """Thumbnail of sample ``j`` of a record, with its ground-truth mask and boxes (and a
    detector's defect ``region``)."""
    return _thumbnail(
        record.images[j],
        heat,
        record.kind,
        mask=record.masks[j] if record.masks is not None else None,
        boxes=record.boxes[j] if record.boxes is not None else None,
        region=region,
    )


def _mistakes_predictions(pred: Predictions, limit: int) -> str:
    wrong = [
        i
        for i, s in enumerate(pred.samples)
        if not s.synthetic
        and s.label is not None
        and pred.predicted[i] is not None
        and pred.predicted[i] != s.label
    ]
    if not wrong:
        return "<p>No misclassified sample.</p>"
    conf = pred.probs.max(dim=1).values
    wrong.sort(key=lambda i: -float(conf[i]))
    wrong = wrong[:limit]
    sub = pred.subset(wrong).materialize()
    heat = sub.heatmaps if isinstance(sub, Explained) else None
    cells = []
    for j, s in enumerate(sub.samples):
        hm = heat[j] if heat is not None else None
        img = _record_thumbnail(sub, j, hm)
        cap = (
            f"{_esc(s.id)}<br>true <b>{_esc(s.label)}</b> → <b>{_esc(sub.predicted[j])}</b> "
            f"({float(sub.probs[j].max()):.2f})"
        )
        cells.append(
            f"<figure>{_img_tag(_pil_uri(img), s.id)}<figcaption>{cap}</figcaption></figure>"
        )
    what = f"heatmaps: {_esc(sub.method)}" if isinstance(sub, Explained) else "no heatmaps given"
    return f'<p class="sub">The {len(wrong)} most confident mistakes ({what}).</p><div class="grid">{"".join(cells)}</div>'


def _mistakes_scores(scores: AnomalyScores, limit: int) -> str:
    real = [i for i, s in enumerate(scores.samples) if not s.synthetic]
    truth_all = anomaly_truth(scores)
    if scores.threshold is None:
        return ""
    s = scores.scores.double().numpy()
    flags = flagged(scores)  # the detector's rule, as the metrics count it
    fn = [i for i in real if truth_all[i] and not flags[i]]
    fp = [i for i in real if not truth_all[i] and flags[i]]
    fn.sort(key=lambda i: s[i])  # defects with the lowest scores: the worst misses
    fp.sort(key=lambda i: -s[i])  # good parts with the highest scores
    picked = (fn[: (limit + 1) // 2] + fp[: limit // 2])[:limit]
    if not picked:
        return "<p>No mistake at the threshold.</p>"
    sub = scores.subset(picked).materialize()
    from inspectkit.xai.overlay import anomaly_scale, scale_map

    # one scale for every map shown, the one of the anomaly overlay files
    lo, hi = anomaly_scale(scores.maps, scores.threshold) if scores.maps is not None else (0.0, 0.0)
    regions = defect_regions(sub) if sub.maps is not None else None
    cells = []
    for j, smp in enumerate(sub.samples):
        hm = scale_map(sub.maps[j], lo, hi) if sub.maps is not None else None
        img = _record_thumbnail(sub, j, hm, None if regions is None else regions[j])
        verdict = "missed defect" if truth_all[picked[j]] else "false alarm"
        cap = f"{_esc(smp.id)}<br><b>{verdict}</b> ({_esc(smp.label)}), score {float(sub.scores[j]):.3g}"
        cells.append(
            f"<figure>{_img_tag(_pil_uri(img), smp.id)}<figcaption>{cap}</figcaption></figure>"
        )
    return (
        f'<p class="sub">{len(fn)} missed defects and {len(fp)} false alarms at threshold '
        f'{scores.threshold:.3g}; the worst shown with their anomaly maps.</p><div class="grid">{"".join(cells)}</div>'
    )


def _is_matrix(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) > 0
        and all(isinstance(r, list) and len(r) == len(v[0]) and len(r) > 0 for r in v)
        and all(isinstance(x, int | float) or x is None for r in v for x in r)
    )


def _details_section(report: Report) -> str:
    if not report.details:
        return ""
    parts = []
    rest: dict[str, Any] = {}
    for key, value in report.details.items():
        matrix = value.get("matrix") if isinstance(value, dict) else value
        if _is_matrix(matrix):
            m = np.array([[math.nan if x is None else float(x) for x in r] for r in matrix])
            rows = value.get("rows") if isinstance(value, dict) else None
            cols = value.get("columns") if isinstance(value, dict) else None
            rows = (
                [str(r) for r in rows]
                if isinstance(rows, list) and len(rows) == m.shape[0]
                else [str(i) for i in range(m.shape[0])]
            )
            cols = (
                [str(c) for c in cols]
                if isinstance(cols, list) and len(cols) == m.shape[1]
                else [str(i) for i in range(m.shape[1])]
            )
            uri = _matrix_figure(
                m,
                rows,
                cols,
                title=key.replace("_", " "),
                xlabel="",
                ylabel="",
                normalise_rows=False,
                fmt=".2f",
            )
            parts.append(f"<h3>{_esc(key)}</h3>" + _img_tag(uri, key))
        else:
            rest[key] = value
    if rest:
        text = json.dumps(rest, indent=2)
        parts.append(f"<details><summary>details (JSON)</summary><pre>{_esc(text)}</pre></details>")
    return "<h2>Details</h2>" + "".join(parts)


# ---------------------------------------------------------------------- the page
def render_html(
    report: Report,
    *,
    predictions: Predictions | None = None,
    scores: AnomalyScores | None = None,
    explained: Explained | None = None,
    max_mistakes: int = 16,
) -> str:
    """The report page as an HTML string (see :func:`write_html`)."""
    if not isinstance(report, Report):
        raise DataError(f"write_html needs a Report, got {type(report).__name__}")
    for name, value, cls in (
        ("predictions", predictions, Predictions),
        ("scores", scores, AnomalyScores),
        ("explained", explained, Explained),
    ):
        if value is not None and not isinstance(value, cls):
            raise DataError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
    if max_mistakes < 0:
        raise DataError(f"max_mistakes must be 0 or more, got {max_mistakes}")
    roc_source = predictions if predictions is not None else explained
    mistakes_source = explained if explained is not None else predictions
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{_esc(report.title)}</h1>",
        f'<p class="sub">inspectkit {_esc(__version__)} · {stamp}</p>',
        _metrics_section(report),
        _per_class_section(report),
        _confusion_section(report),
    ]
    curves = []
    if roc_source is not None:
        curves.append(_roc_predictions(roc_source))
    if scores is not None:
        curves.append(_scores_figures(scores))
    curves = [c for c in curves if c]
    if curves:
        body.append(f'<h2>Scores and ROC</h2><div class="figs">{"".join(curves)}</div>')
    if max_mistakes:
        if mistakes_source is not None:
            body.append(
                "<h2>Worst mistakes</h2>" + _mistakes_predictions(mistakes_source, max_mistakes)
            )
        if scores is not None:
            grid = _mistakes_scores(scores, max_mistakes)
            if grid:
                body.append("<h2>Worst anomaly-detection mistakes</h2>" + grid)
    body.append(_details_section(report))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(report.title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(b for b in body if b)
        + "\n</body></html>\n"
    )


def write_html(
    report: Report,
    out_dir: str | os.PathLike[str],
    *,
    predictions: Predictions | None = None,
    scores: AnomalyScores | None = None,
    explained: Explained | None = None,
    filename: str = "report.html",
    max_mistakes: int = 16,
) -> Path:
    """Write a self-contained HTML report (pictures inline) into ``out_dir``.

    Args:
        report: The metrics :class:`Report` (from ``classification_report``,
            ``anomaly_report`` or your own).
        out_dir: Folder to write into (created if missing).
        predictions: The classifier output the report was computed from: adds the ROC
            curves and the grid of the most confident mistakes.
        scores: Anomaly-detector output: adds the score histograms with the threshold,
            the ROC curve and the worst misses / false alarms with their anomaly maps.
        explained: Like ``predictions`` but the mistakes show their heatmaps.
        filename: Name of the page.
        max_mistakes: Most images in a mistakes grid (0: no grid).

    Returns:
        The path of the page, written atomically (temporary file + rename).

    Raises:
        DataError: a wrong record type, or ``out_dir`` is a file.

    Example:
        >>> from inspectkit.metrics import classification_report  # doctest: +SKIP
        >>> write_html(classification_report(pred), "reports/", predictions=pred)  # doctest: +SKIP
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    page = render_html(
        report,
        predictions=predictions,
        scores=scores,
        explained=explained,
        max_mistakes=max_mistakes,
    )
    out.mkdir(parents=True, exist_ok=True)
    path = atomic_write(out / filename, page)
    log.info("wrote HTML report %s (%d kB)", path, len(page) // 1024)
    return path


__all__ = ["anomaly_truth", "render_html", "write_html"]
