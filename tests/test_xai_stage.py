"""The Explain / GradCAM / SISE stages in a pipeline after the Classifier."""

from __future__ import annotations

import json

import pytest
import torch

import inspectkit as ik
from inspectkit.errors import ConfigError, DataError, NotFittedError, PipelineError
from inspectkit.records import Box, Explained, ImageSet, Predictions, SampleMeta
from inspectkit.stages import Classifier, Explain, Wrangle
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


# ---------------------------------------------------------------------- methods and wiring
def test_explain_builds_the_registered_method_with_its_own_settings() -> None:
    sise = Explain(method="sise", max_masks=8)
    assert type(sise) is SISE and sise.config.max_masks == 8 and sise.registry_name() == "sise"
    grad = Explain({"method": "gradcam", "layer": "features"})
    assert type(grad) is GradCAM and grad.config.layer == "features"
    assert issubclass(GradCAM.Config, Explain.Config) and issubclass(SISE.Config, Explain.Config)
    assert set(Explain.Config.model_fields) < set(SISE.Config.model_fields)
    with pytest.raises(ConfigError, match=r"unknown explanation method 'lime'.*gradcam.*sise"):
        Explain(method="lime")
    with pytest.raises(ConfigError, match="unknown explanation method 'wrangle'"):
        Explain(method="wrangle")  # a stage, but not an explanation method
    with pytest.raises(ConfigError, match="max_masks"):
        GradCAM(max_masks=8)  # a SISE setting
    with pytest.raises(ConfigError):
        GradCAM(method="sise")


def test_a_saved_explain_spec_of_the_previous_release_still_loads() -> None:
    """inspectkit 0.1 saved ``Explain`` under the name "explain" with every method's
    settings; the settings of the other method are dropped while they hold their old
    defaults."""
    old = {"layer": None, "blocks": None, "max_masks": 16, "max_blocks": 4}
    old.update(target="predicted", batch_size=32, progress=False)
    explainers = [
        ik.Pipeline.from_spec(
            {"stages": [{"name": "classifier", "config": {}}, {"name": "explain", "config": c}]}
        ).stages[1]
        for c in ({**old, "method": "sise", "max_masks": 4}, {**old, "method": "gradcam"})
    ]
    assert type(explainers[0]) is SISE and explainers[0].config.max_masks == 4
    assert type(explainers[1]) is GradCAM and explainers[1].config.layer is None
    with pytest.raises(ConfigError, match="belongs to another explanation method"):
        Explain({**old, "method": "gradcam", "max_masks": 4})


class _Constant(ik.Stage[ImageSet, Predictions]):
    """Predictions without a network (e.g. a rule-based sorter)."""

    name = "constant_predictions"

    def run(self, data: ImageSet) -> Predictions:
        probs = torch.full((len(data), len(data.classes)), 1 / len(data.classes))
        return Predictions.build(
            **data.base_fields(), probs=probs, predicted=[data.classes[0]] * len(data)
        )


def test_a_stage_without_a_network_before_the_explanation_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"none of the stages before it \(_Constant\)"):
        ik.Pipeline([_Constant(), GradCAM()])


def test_xai_has_no_import_circle() -> None:
    """No module of inspectkit.xai imports one that (transitively) imports it back, at
    module or function level; the Explain base imports no method."""
    import ast
    from pathlib import Path

    import inspectkit.xai as xai

    folder = Path(xai.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        name = f"inspectkit.xai.{path.stem}" if path.stem != "__init__" else "inspectkit.xai"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d.startswith("inspectkit.xai.")}
    assert not graph["inspectkit.xai.stage"] & {"inspectkit.xai.gradcam", "inspectkit.xai.sise"}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    modules = [m for m in graph if m != "inspectkit.xai"]
    assert not [m for m in modules if reaches(m, m, {m})]


@pytest.mark.realdata
def test_gradcam_explains_a_continual_classifier_on_wafer_maps(wm811k_dir, tmp_path) -> None:
    """``Pipeline([Wrangle, ContinualClassifier, GradCAM])`` fitted and updated on real
    WM-811K maps: heatmaps in [0, 1] at the maps' size, the same after save and load."""
    from inspectkit.continual import ContinualClassifier, update_pipeline
    from inspectkit.sources import load_wafer_maps

    maps = load_wafer_maps(wm811k_dir / "WM811K_train_1_split.npz")
    first = maps.select(lambda s: s.label in ("none", "Center", "Edge-Ring"))
    first = first.replace(classes=["none", "Center", "Edge-Ring"])
    second = maps.select(lambda s: s.label in ("Edge-Loc", "Loc"))
    second = second.replace(classes=[*first.classes, "Edge-Loc", "Loc"])
    pipe = ik.Pipeline(
        [
            Wrangle(size=32),
            ContinualClassifier(
                max_params=20_000,
                capacity=40,
                epochs=8,
                lr=3e-3,
                schedule="onecycle",
                device="cpu",
                progress=False,
            ),
            GradCAM(progress=False),
        ]
    )
    pipe.fit(first)
    update_pipeline(pipe, second)
    test = second.subset(range(12))  # raw maps of their own sizes
    out = pipe.run(test)
    assert isinstance(out, Explained) and out.method == "gradcam"
    assert len(out.heatmaps) == 12 and out.heatmaps.shape[-2:] == (32, 32)
    assert float(out.heatmaps.min()) >= 0 and float(out.heatmaps.max()) <= 1
    shown = out.heatmaps.flatten(1).max(1).values > 0  # Grad-CAM's ReLU may blank a map
    assert float(shown.float().mean()) >= 0.5
    assert out.classes == second.classes
    pipe.save(tmp_path / "model")
    back = ik.Pipeline.load(tmp_path / "model")
    assert type(back.stages[-1]) is GradCAM
    again = back.run(test)
    assert torch.allclose(again.heatmaps, out.heatmaps, atol=1e-5)
    assert again.predicted == out.predicted
