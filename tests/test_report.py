"""HTML reports: self-contained pages with the figures a person checks; Chromium renders them."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from inspectkit.errors import DataError
from inspectkit.metrics import anomaly_report, classification_report
from inspectkit.records import AnomalyScores, Explained, ImageSet, Predictions, Report, SampleMeta
from inspectkit.report import anomaly_truth, render_html, write_html


def predictions(n: int = 30, seed: int = 0) -> Predictions:
    g = torch.Generator().manual_seed(seed)
    classes = ["Center", "Scratch", "none"]
    labels = [classes[i % 3] for i in range(n)]
    logits = torch.randn(n, 3, generator=g)
    for i, lab in enumerate(labels):
        logits[i, classes.index(lab)] += 1.5  # mostly right, some mistakes
    probs = torch.softmax(logits, 1)
    data = ImageSet(
        images=torch.randint(0, 3, (n, 1, 16, 16), generator=g, dtype=torch.uint8),
        samples=[SampleMeta(id=f"w{i}", label=lab) for i, lab in enumerate(labels)],
        classes=classes,
        kind="wafer",
    )
    predicted = [classes[int(i)] for i in probs.argmax(1)]
    return Predictions.build(**data.base_fields(), probs=probs, predicted=predicted)


def scores(n_good: int = 12, n_bad: int = 8) -> AnomalyScores:
    g = torch.Generator().manual_seed(1)
    n = n_good + n_bad
    s = torch.cat([torch.linspace(0.0, 0.9, n_good), torch.linspace(0.7, 1.6, n_bad)])
    masks = torch.zeros(n, 1, 24, 24, dtype=torch.uint8)
    masks[n_good:, :, 8:16, 8:16] = 1
    data = ImageSet(
        images=torch.randint(0, 256, (n, 1, 24, 24), generator=g, dtype=torch.uint8),
        masks=masks,
        samples=[SampleMeta(id=f"t{i}", label="good" if i < n_good else "crack") for i in range(n)],
        classes=["good", "crack"],
    )
    maps = torch.rand(n, 24, 24, generator=g)
    maps[n_good:, 8:16, 8:16] += 1
    return AnomalyScores.build(
        **data.base_fields(), scores=s, maps=maps, threshold=0.8, is_anomalous=s > 0.8
    )


def embedded_pngs(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in found]


def test_classification_page_is_self_contained(tmp_path: Path) -> None:
    pred = predictions()
    report = classification_report(pred, title="wafer <line> & co")
    path = write_html(report, tmp_path / "out", predictions=pred)
    assert path == tmp_path / "out" / "report.html"
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "wafer &lt;line&gt; &amp; co" in page  # titles are escaped
    # nothing is fetched from elsewhere: every picture is inline
    assert not re.search(r'src="(?!data:)', page) and "<link" not in page
    pngs = embedded_pngs(page)
    wrong = sum(p != s.label for p, s in zip(pred.predicted, pred.samples))
    assert wrong > 0
    # confusion matrix + ROC + one thumbnail per mistake (at most 16)
    assert len(pngs) == 2 + min(wrong, 16)
    assert "Confusion matrix" in page and "Per class" in page and "ROC" in page
    for cls, fig in report.per_class.items():
        assert f"<td>{cls}</td>" in page
        assert f"{fig['recall']:.3f}" in page
    assert f"The {min(wrong, 16)} most confident mistakes" in page
    assert path.stat().st_mode & 0o044  # readable by others, unlike a bare mkstemp file


def test_explained_mistakes_show_heatmaps(tmp_path: Path) -> None:
    pred = predictions()
    heat = torch.zeros(len(pred), 16, 16)
    heat[:, :4, :4] = 1.0
    explained = Explained.build(
        **{k: getattr(pred, k) for k in Predictions.model_fields},
        heatmaps=heat,
        method="gradcam",
        target_classes=pred.predicted_indices().tolist(),
    )
    page = render_html(classification_report(pred), predictions=pred, explained=explained)
    assert "heatmaps: gradcam" in page
    thumbs = [p for p in embedded_pngs(page) if p.size[0] == p.size[1] and p.size[0] <= 200]
    assert thumbs
    arr = np.asarray(thumbs[0].convert("RGB")).astype(int)
    # jet red in the hot corner, blue where the heatmap is 0
    corner, rest = arr[:20, :20].mean((0, 1)), arr[-20:, -20:].mean((0, 1))
    assert corner[0] > corner[2] and rest[2] > rest[0]


def test_anomaly_page_histogram_roc_and_misses(tmp_path: Path) -> None:
    sc = scores()
    report = anomaly_report(sc)
    page = write_html(report, tmp_path, scores=sc).read_text()
    assert "Anomaly scores" not in page  # drawn, not written: the title is inside a PNG
    assert "image_auroc" in page and "threshold" in page
    truth = anomaly_truth(sc)
    flagged = sc.is_anomalous.numpy()
    misses, alarms = int((truth & ~flagged).sum()), int((~truth & flagged).sum())
    assert misses and alarms
    assert f"{misses} missed defects and {alarms} false alarms" in page
    # histogram + ROC + one thumbnail per shown mistake
    assert len(embedded_pngs(page)) == 2 + min(misses, 8) + min(alarms, 8)


def test_details_matrix_is_drawn_and_rest_listed() -> None:
    report = Report(
        title="continual",
        metrics={"forgetting": 0.2},
        details={
            "accuracy_matrix": {
                "matrix": [[0.9, None], [0.7, 0.8]],
                "rows": ["a", "b"],
                "columns": ["a", "b"],
            },
            "note": {"k": 1},
        },
    )
    page = render_html(report)
    assert len(embedded_pngs(page)) == 1
    assert "&quot;k&quot;: 1" in page


def test_anomaly_truth_follows_flags_then_labels() -> None:
    data = ImageSet(
        images=torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
        samples=[
            SampleMeta(id="a", label="good"),
            SampleMeta(id="b", label="crack"),
            SampleMeta(id="c", label="crack", meta={"anomalous": False}),
            SampleMeta(id="d"),
        ],
        classes=["good", "crack"],
    )
    assert anomaly_truth(data).tolist() == [False, True, False, False]


def test_bad_arguments_raise_data_error(tmp_path: Path) -> None:
    report = Report(title="x")
    with pytest.raises(DataError, match="needs a Report"):
        write_html({"metrics": {}}, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="scores must be a AnomalyScores"):
        write_html(report, tmp_path, scores=predictions())  # type: ignore[arg-type]
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(DataError, match="exists and is not a folder"):
        write_html(report, blocker)
    assert blocker.read_text() == "keep me"
    assert not list(tmp_path.glob(".report.html*"))  # no temporary file left behind


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)"
)
def test_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    pred = predictions()
    path = write_html(classification_report(pred), tmp_path / "r", predictions=pred)
    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,1400",
        f"--screenshot={shot}",
        path.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (1400, 1000)
    # a rendered page, not a blank one: dark text and the blue confusion matrix are there
    assert (img.sum(2) < 200).mean() > 0.002
    blue = (img[..., 2] > 120) & (img[..., 0] < 80)
    assert blue.sum() > 500


def test_thumbnails_outline_the_true_defect_mask_and_boxes() -> None:
    from inspectkit.records import Box
    from inspectkit.report import _thumbnail

    image = torch.full((1, 40, 40), 60, dtype=torch.uint8)
    mask = torch.zeros(1, 40, 40, dtype=torch.uint8)
    mask[0, 10:30, 10:30] = 1
    plain = np.asarray(_thumbnail(image, None, "image", size=80))
    outlined = np.asarray(_thumbnail(image, None, "image", size=80, mask=mask))
    changed = (outlined != plain).any(-1)
    assert changed.any() and (outlined[changed] == 255).all()
    rows, cols = np.nonzero(changed)
    # the outline sits on the mask's border (20..60 in the 2× thumbnail), not inside it
    assert rows.min() >= 20 and rows.max() < 60 and cols.min() >= 20 and cols.max() < 60
    assert not changed[30:50, 30:50].any()
    boxed = np.asarray(
        _thumbnail(
            image, None, "image", size=80, boxes=[Box(label="d", xmin=0, ymin=0, xmax=20, ymax=20)]
        )
    )
    drawn = (boxed != plain).any(-1)
    assert drawn[0, 0:40].all() and drawn[0:40, 0].all() and not drawn[45:, 45:].any()
    empty = np.asarray(_thumbnail(image, None, "image", size=80, mask=torch.zeros_like(mask)))
    assert np.array_equal(empty, plain)


# ---------------------------------------------------------------------- anomaly colours
def test_an_anomaly_map_has_the_same_colours_in_its_overlay_file_and_in_the_report(
    tmp_path: Path,
) -> None:
    from inspectkit.metrics.anomaly import flagged
    from inspectkit.xai.overlay import REGION_COLOUR, write_anomaly_overlays

    sc = scores().replace(masks=None)  # no mask outline: the thumbnail is only the overlay
    maps = sc.maps.clone()
    maps[0, 0, 0] = 50.0  # one extreme pixel: a min/max scale would turn every map blue
    sc = sc.replace(maps=maps)
    files = write_anomaly_overlays(sc, tmp_path / "maps")
    page = render_html(anomaly_report(sc), scores=sc)
    thumbs = dict(
        re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="(t\d+)"', page)
    )
    shown = {sid: b64 for b64, sid in thumbs.items()}
    assert len(shown) == 3  # one missed defect and two false alarms
    for sid, b64 in shown.items():
        thumb = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
        i = int(sid[1:])
        file = Image.open(files[i]).convert("RGB")
        assert thumb.size == (160, 160) and file.size == (24, 24)
        a, b = np.asarray(thumb), np.asarray(file.resize(thumb.size, Image.NEAREST))
        # the defect region's outline (magenta, drawn at each picture's own scale) aside
        outline = (a == REGION_COLOUR).all(-1) | (b == REGION_COLOUR).all(-1)
        assert outline.mean() < 0.5 and np.array_equal(a[~outline], b[~outline])
        assert outline.any() == bool(flagged(sc)[i])  # a flagged part's region, only
    # the defect square is hot, the rest of a defective part cool, on the shared scale
    arr = np.asarray(Image.open(files[-1]).convert("RGB")).astype(int)
    assert arr[10:14, 10:14, 0].mean() > arr[10:14, 10:14, 2].mean()
    assert arr[18:, 18:, 2].mean() > arr[18:, 18:, 0].mean()


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=200),
    threshold=st.one_of(st.none(), st.floats(-1e3, 1e3)),
)
def test_anomaly_scale_puts_the_threshold_at_most_half_way(values, threshold) -> None:  # type: ignore[no-untyped-def]
    from inspectkit.xai.overlay import anomaly_scale, scale_map

    maps = torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1)
    lo, hi = anomaly_scale(maps, threshold)
    assert lo == pytest.approx(float(maps.min()))
    assert hi >= float(torch.quantile(maps.flatten(), 0.995)) - 1e-3
    scaled = scale_map(maps, lo, hi)
    assert float(scaled.min()) >= 0 and float(scaled.max()) <= 1
    if threshold is not None and threshold >= lo and hi > lo:
        assert float(scale_map(torch.tensor(threshold), lo, hi)) <= 0.5 + 1e-5


def test_anomaly_overlays_index_their_files_and_refuse_records_without_maps(
    tmp_path: Path,
) -> None:
    from inspectkit.xai.overlay import anomaly_scale, write_anomaly_overlays

    sc = scores()
    files = write_anomaly_overlays(sc, tmp_path / "maps")
    index = json.loads((tmp_path / "maps" / "overlays.json").read_text())
    assert index["method"] == "anomaly_map" and index["threshold"] == 0.8
    assert index["scale"] == list(anomaly_scale(sc.maps, 0.8))
    assert [e["file"] for e in index["overlays"]] == [f.name for f in files]
    assert [e["anomalous"] for e in index["overlays"]] == sc.is_anomalous.tolist()
    assert files[-1].name.startswith("00019_t19_anomalous_")
    with pytest.raises(DataError, match="no anomaly maps"):
        write_anomaly_overlays(sc.replace(maps=None), tmp_path / "none")
    with pytest.raises(DataError, match="needs an AnomalyScores record"):
        write_anomaly_overlays(ImageSet(**sc.base_fields()), tmp_path / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_anomaly_overlays(sc, tmp_path / "file")


def test_a_score_at_the_threshold_is_counted_by_the_detectors_rule_everywhere() -> None:
    # issue #16 item 11: the page counted score >= threshold ("1 false alarm") next to a
    # false-alarm rate of 0.000 from the detector's score > threshold
    from inspectkit.anomaly.threshold import verdict

    g = torch.Generator().manual_seed(3)
    s = torch.tensor([0.1, 0.2, 0.5, 0.9, 1.2], dtype=torch.float32)  # 0.5: a good part at it
    data = ImageSet(
        images=torch.randint(0, 256, (5, 1, 8, 8), generator=g, dtype=torch.uint8),
        samples=[SampleMeta(id=f"p{i}", label="good" if i < 3 else "crack") for i in range(5)],
        classes=["good", "crack"],
    )
    for verdicts in (verdict(s, 0.5), None):  # the detector's verdicts, or only its threshold
        sc = AnomalyScores.build(
            **data.base_fields(), scores=s, threshold=0.5, is_anomalous=verdicts
        )
        report = anomaly_report(sc)
        page = render_html(report, scores=sc)
        if verdicts is not None:
            assert report.metrics["false_alarm_rate"] == 0.0 and report.counts["flagged"] == 2
        assert (
            "0 missed defects and 0 false alarms" in page or "No mistake at the threshold" in page
        )
