"""Records refuse inconsistent data and slice every per-sample field alike."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_image_set

from inspectkit.errors import DataError
from inspectkit.records import (
    AnomalyScores,
    Box,
    Explained,
    ImageSet,
    LazyImages,
    Predictions,
    Report,
    SampleMeta,
)


def _samples(n: int, label: str | None = "a") -> list[SampleMeta]:
    return [SampleMeta(id=f"s{i}", label=label) for i in range(n)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"images": torch.zeros(3, 1, 4, 4), "samples": _samples(2), "classes": ["a"]},
            "3 images but 2",
        ),
        ({"images": torch.zeros(2, 4, 4), "samples": _samples(2), "classes": ["a"]}, "N×C×H×W"),
        (
            {"images": torch.zeros(2, 1, 4, 4), "samples": _samples(2, "zz"), "classes": ["a"]},
            "not in classes",
        ),
        (
            {
                "images": torch.tensor([[[[0.0, math.nan]]]]),
                "samples": _samples(1),
                "classes": ["a"],
            },
            "NaN/inf",
        ),
        (
            {
                "images": torch.full((1, 1, 2, 2), math.inf),
                "samples": _samples(1),
                "classes": ["a"],
            },
            "NaN/inf",
        ),
        (
            {
                "images": torch.full((1, 1, 2, 2), 3, dtype=torch.uint8),
                "samples": _samples(1),
                "classes": ["a"],
                "kind": "wafer",
            },
            "codes must be 0",
        ),
        (
            {
                "images": torch.zeros(2, 1, 4, 4),
                "samples": [SampleMeta(id="x"), SampleMeta(id="x")],
            },
            "occurs more than once",
        ),
        (
            {
                "images": torch.zeros(1, 1, 4, 4),
                "masks": torch.zeros(1, 1, 5, 4),
                "samples": _samples(1),
                "classes": ["a"],
            },
            "masks are",
        ),
        (
            {
                "images": torch.zeros(1, 1, 4, 4, dtype=torch.int32),
                "samples": _samples(1),
                "classes": ["a"],
            },
            "dtype",
        ),
        (
            {"images": torch.zeros(1, 1, 4, 4), "samples": _samples(1), "classes": ["a", "a"]},
            "duplicates",
        ),
    ],
)
def test_inconsistent_sets_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ImageSet.build(**fields)


def test_ragged_masks_must_match_their_images() -> None:
    imgs = [torch.zeros(1, 5, 6, dtype=torch.uint8), torch.zeros(1, 7, 3, dtype=torch.uint8)]
    masks = [torch.zeros(1, 5, 6, dtype=torch.uint8), torch.zeros(1, 3, 7, dtype=torch.uint8)]
    with pytest.raises(DataError, match="mask of 's1' is"):
        ImageSet.build(images=imgs, masks=masks, samples=_samples(2), classes=["a"])


def test_box_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="empty or inverted"):
        Box(label="scratch", xmin=5, ymin=1, xmax=5, ymax=9)
    assert Box(label="s", xmin=1, ymin=2, xmax=3, ymax=4).scaled(2, 0.5).ymax == 2


def test_predictions_subset_and_real_keep_fields_aligned() -> None:
    base = make_image_set(n=6, classes=("a", "b"))
    samples = [s.model_copy(update={"synthetic": i % 2 == 1}) for i, s in enumerate(base.samples)]
    base = base.replace(samples=samples)
    probs = torch.softmax(torch.arange(12, dtype=torch.float32).view(6, 2), 1)
    pred = Predictions.build(
        **base.base_fields(), probs=probs, predicted=["a", "b", None, "a", "b", "a"]
    )
    real = pred.real()
    assert isinstance(real, Predictions)
    assert real.ids == ["s0", "s2", "s4"]
    assert real.predicted == ["a", None, "b"]
    assert torch.equal(real.probs, probs[[0, 2, 4]])
    assert real.predicted_indices().tolist() == [0, -1, 1]


def test_predictions_validate_probabilities() -> None:
    base = make_image_set(n=2, classes=("a", "b"))
    with pytest.raises(DataError, match="sum to 1"):
        Predictions.build(**base.base_fields(), probs=torch.ones(2, 2), predicted=["a", "a"])
    with pytest.raises(DataError, match="2×2"):
        Predictions.build(**base.base_fields(), probs=torch.ones(2, 3) / 3, predicted=["a", "a"])
    with pytest.raises(DataError, match="not in classes"):
        Predictions.build(**base.base_fields(), probs=torch.ones(2, 2) / 2, predicted=["a", "q"])


def test_explained_and_anomaly_scores_validate_shapes() -> None:
    base = make_image_set(n=3, classes=("a", "b"))
    probs = torch.full((3, 2), 0.5)
    with pytest.raises(DataError, match="out of range"):
        Explained.build(
            **base.base_fields(),
            probs=probs,
            predicted=["a"] * 3,
            heatmaps=torch.zeros(3, 16, 16),
            method="gradcam",
            target_classes=[0, 1, 2],
        )
    scores = AnomalyScores.build(**base.base_fields(), scores=torch.tensor([0.1, 0.5, 2.0]))
    assert scores.subset([2]).scores.tolist() == [2.0]
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        AnomalyScores.build(
            **base.base_fields(), scores=torch.zeros(3), normalized=torch.tensor([0.0, 1.5, 0.2])
        )


def test_lazy_images_decode_on_demand_and_batch() -> None:
    calls: list[int] = []

    def loader(key: int) -> torch.Tensor:
        calls.append(key)
        return torch.full((1, 4, 4), key, dtype=torch.uint8)

    lazy = ImageSet(images=LazyImages(list(range(10)), loader), samples=_samples(10), classes=["a"])
    assert calls == []
    sub = lazy.subset([7, 2])
    assert calls == [] and sub.is_lazy
    batches = list(lazy.iter_batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert batches[1].image_tensor()[:, 0, 0, 0].tolist() == [4, 5, 6, 7]
    assert sorted(calls) == list(range(10))


def test_concat_merges_classes_and_refuses_mixed_kinds() -> None:
    a = make_image_set(n=2, classes=("x",))
    b = make_image_set(n=2, classes=("y",)).replace(
        samples=[SampleMeta(id=f"t{i}", label="y") for i in range(2)]
    )
    both = ImageSet.concat([a, b])
    assert both.classes == ["x", "y"] and len(both) == 4
    w = make_image_set(n=1, classes=("x",), kind="wafer").replace(
        samples=[SampleMeta(id="w", label="x")]
    )
    with pytest.raises(DataError, match="kinds"):
        ImageSet.concat([a, w])


def test_image_tensor_refuses_mixed_sizes() -> None:
    s = ImageSet(
        images=[torch.zeros(1, 3, 3), torch.zeros(1, 4, 4)], samples=_samples(2), classes=["a"]
    )
    with pytest.raises(DataError, match="Wrangle"):
        s.image_tensor()


def test_to_json_has_everything_but_pixels() -> None:
    s = make_image_set(n=3)
    data = json.loads(json.dumps(s.to_json()))
    assert data["summary"]["n"] == 3
    assert [x["id"] for x in data["samples"]] == ["s0", "s1", "s2"]


def test_report_json_and_atomic_save(tmp_path: Path) -> None:
    r = Report(
        title="t",
        metrics={"accuracy": 0.5, "auroc": math.nan},
        classes=["a", "b"],
        confusion=[[1, 0], [1, 0]],
    )
    out = r.save(tmp_path / "r.json")
    loaded = json.loads(out.read_text())
    assert loaded["metrics"] == {"accuracy": 0.5, "auroc": None}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(ValueError, match="2×2"):
        Report(classes=["a", "b"], confusion=[[1]])
    with pytest.raises(ValueError, match="plain JSON"):
        Report(details={"x": object()})


def test_sample_meta_refuses_non_finite_metadata() -> None:
    with pytest.raises(ValueError, match="finite"):
        SampleMeta(id="a", meta={"temp": math.inf})
