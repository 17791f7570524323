"""The Explain / GradCAM / SISE stages in a pipeline after the Classifier."""

from __future__ import annotations

import json

import pytest
import torch

import inspectkit as ik
from inspectkit.errors import DataError, NotFittedError, PipelineError
from inspectkit.records import Box, Explained, ImageSet, SampleMeta
from inspectkit.stages import Classifier, Explain
from inspectkit.xai import SISE, GradCAM, boxes_to_mask, energy_pointing_game, mask_l1

SIZE = 32


def _set(n: int, seed: int, prefix: str) -> ImageSet:
    """Noise with a bright square on the 'defect' images; masks mark the square."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, SIZE, SIZE), generator=g) * 0.5
    masks = torch.zeros((n, 1, SIZE, SIZE), dtype=torch.uint8)
    pos = torch.randint(0, SIZE - 8, (n, 2), generator=g)
    labels = []
    for i in range(n):
        r, c = int(pos[i, 0]), int(pos[i, 1])
        masks[i, 0, r : r + 8, c : c + 8] = 1
        if i % 2:
            x[i, 0, r : r + 8, c : c + 8] += 0.5
        labels.append("defect" if i % 2 else "good")
    return ImageSet(
        images=(x * 255).round().to(torch.uint8),
        masks=masks,
        samples=[SampleMeta(id=f"{prefix}{i}", label=lab) for i, lab in enumerate(labels)],
        classes=["defect", "good"],
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted() -> ik.Pipeline:
    pipe = ik.Pipeline(
        [
            Classifier(
                arch="compact", max_params=20_000, epochs=8, batch_size=32, val_fraction=0, seed=0
            ),
            GradCAM(),
        ]
    )
    return pipe.fit(_set(256, seed=1, prefix="train"))


def test_gradcam_stage_explains_the_classifier(fitted):
    test = _set(24, seed=2, prefix="t")
    out = fitted.run(test)
    assert isinstance(out, Explained)
    assert out.method == "gradcam" and out.heatmaps.shape == (24, SIZE, SIZE)
    assert out.ids == test.ids and out.classes == ["defect", "good"]
    # the heatmaps explain the predicted class, and equal Grad-CAM on the classifier input
    assert out.target_classes == out.predicted_indices().tolist()
    clf = fitted.stages[0]
    direct = GradCAM(clf.model).attribute(clf.preprocess(test.images), target=out.target_classes)
    assert torch.allclose(out.heatmaps, direct, atol=1e-5)
    defect = [i for i, s in enumerate(out.samples) if s.label == "defect"]
    assert sum(out.predicted[i] == "defect" for i in defect) >= 0.9 * len(defect)
    ebpg = energy_pointing_game(out.heatmaps[defect], test.masks[defect])
    assert float(ebpg.mean()) > 1.5 * 64 / SIZE**2


def test_sise_and_explain_stages_share_the_classifier(fitted):
    clf = fitted.stages[0]
    test = _set(6, seed=3, prefix="u")
    preds = clf.run(test)
    for stage in (SISE(max_masks=8), Explain(method="sise", max_masks=8), Explain(target=0)):
        ik.Pipeline([clf, stage])  # attaching finds the classifier
        out = stage.run(preds)
        assert out.heatmaps.shape == (6, SIZE, SIZE)
        assert float(out.heatmaps.min()) >= 0 and float(out.heatmaps.max()) <= 1
    assert out.target_classes == [0] * 6
    assert out.method == "gradcam"


def test_heatmaps_follow_the_image_size(fitted):
    big = _set(4, seed=4, prefix="b")
    big = big.replace(
        images=torch.nn.functional.interpolate(big.images.float(), size=(48, 48))
        .round()
        .to(torch.uint8),
        masks=None,
        boxes=[[Box(label="defect", xmin=0, ymin=0, xmax=24, ymax=24)] for _ in range(4)],
    )
    out = fitted.run(big)
    assert out.heatmaps.shape == (4, 48, 48)
    assert mask_l1(out.heatmaps, out.boxes).shape == (4,)
    assert boxes_to_mask(out.boxes[0], (48, 48)).sum() == 24 * 24


def test_save_and_load_keep_the_explanation(fitted, tmp_path):
    test = _set(6, seed=5, prefix="v")
    before = fitted.run(test)
    fitted.save(tmp_path / "model")
    spec = json.loads((tmp_path / "model" / "pipeline.json").read_text())
    assert [s["name"] for s in spec["stages"]] == ["classifier", "gradcam"]
    loaded = ik.Pipeline.load(tmp_path / "model")
    assert type(loaded.stages[1]) is GradCAM
    after = loaded.run(test)
    assert torch.allclose(before.heatmaps, after.heatmaps, atol=1e-5)
    spec_sise = ik.Pipeline.from_spec(
        {
            "stages": [
                {"name": "classifier", "config": {}},
                {"name": "sise", "config": {"max_masks": 4}},
            ]
        }
    )
    assert spec_sise.stages[1].config.max_masks == 4


def test_wrong_wiring_is_refused(fitted):
    test = _set(4, seed=6, prefix="w")
    preds = fitted.stages[0].run(test)
    with pytest.raises(PipelineError, match="needs a Classifier before it"):
        GradCAM().run(preds)
    with pytest.raises(DataError, match="accepts Predictions; got ImageSet"):
        ik.Pipeline([GradCAM()]).run(test)
    stage = Explain(target=7)
    ik.Pipeline([fitted.stages[0], stage])
    with pytest.raises(DataError, match="out of range"):
        stage.run(preds)
    unfitted = GradCAM()
    ik.Pipeline([Classifier(), unfitted])
    with pytest.raises(NotFittedError, match="fit the pipeline"):
        unfitted.run(preds)
