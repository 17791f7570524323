"""``sources.detect`` / ``sources.load`` / ``sources.load_inputs`` on every built-in layout."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from test_cli import make_mvtec, make_tree, make_wafer_npz
from test_sources_folders import gray, save
from test_sources_voc import make_voc

from inspectkit import sources
from inspectkit.errors import DataError
from inspectkit.records import LazyImages
from inspectkit.sources import detect, load, load_inputs

SOURCES_DIR = Path(sources.__file__).parent


def make_tiles(root: Path, n: int = 3) -> Path:
    for cls in ("Free", "Crack"):
        for i in range(n):
            img = root / f"MT_{cls}" / "Imgs" / f"exp{i}.jpg"
            save(img, gray(12, 16, i), fmt="JPEG")
            mask = np.zeros((12, 16), np.uint8)
            if cls == "Crack":
                mask[4:8, 4:8] = 255
            save(img.with_suffix(".png"), mask)
    return root


@pytest.fixture
def trees(tmp_path: Path) -> dict[str, Path]:
    """One small tree per built-in layout (LSWMD needs pandas and has its own test)."""
    flat = tmp_path / "flat"
    for i in range(3):
        save(flat / f"p{i}.png", gray(8, 8, i))
    make_voc(tmp_path / "voc")
    return {
        "class-folders": make_tree(tmp_path / "tree", n=4),
        "mvtec": make_mvtec(tmp_path / "mvtec"),
        "magnetic-tile": make_tiles(tmp_path / "tiles"),
        "voc": tmp_path / "voc",
        "wafer-npz": make_wafer_npz(tmp_path / "maps.npz", per_class=4),
        "images": flat,
    }


def test_detect_names_every_layout_and_asks_specific_layouts_first(trees) -> None:  # type: ignore[no-untyped-def]
    for name, path in trees.items():
        assert detect(path) == name
        assert detect(str(path)) == name
    assert detect(trees["images"] / "p0.png") == "images"
    order = sources.available_layouts()
    assert set(trees) | {"lswmd"} <= set(order)
    # the VOC tree also looks like class folders (IMAGES/ holds images): VOC is asked first
    assert order.index("voc") < order.index("class-folders") < order.index("images")
    priorities = [sources.get_layout(n).priority for n in order]
    assert priorities == sorted(priorities, reverse=True)


def test_load_train_and_evaluate_sets(trees) -> None:  # type: ignore[no-untyped-def]
    tree = load(trees["class-folders"])
    assert tree.classes == ["ok", "scratch"] and tree.class_counts() == {"ok": 4, "scratch": 4}
    # an anomaly model trains on the good parts only: "ok" is a good label
    good = load(trees["class-folders"], task="anomaly")
    assert set(good.labels) == {"ok"} and len(good) == 4

    mvtec_train = load(trees["mvtec"], task="anomaly")
    assert len(mvtec_train) == 10 and {s.split for s in mvtec_train.samples} == {"train"}
    mvtec_test = load(trees["mvtec"], purpose="evaluate", task="anomaly")
    assert len(mvtec_test) == 6 and mvtec_test.masks is not None
    assert {s.split for s in mvtec_test.samples} == {"test"}

    tiles = load(trees["magnetic-tile"], purpose="evaluate", task="anomaly")
    assert tiles.class_counts() == {"Crack": 3, "Free": 3} and tiles.channels == 1
    assert set(load(trees["magnetic-tile"], task="anomaly").labels) == {"Free"}

    steel = load(trees["voc"], channels=1)
    assert steel.labels == ["crazing", "crazing", "rolled-in_scale"] and steel.channels == 1
    assert [len(b) for b in steel.boxes] == [1, 2, 1]

    maps = load(trees["wafer-npz"])
    assert maps.kind == "wafer" and maps.class_counts()["Center"] == 4 and len(maps) == 12


def test_limit_is_per_class_for_class_layouts(trees) -> None:  # type: ignore[no-untyped-def]
    assert load(trees["class-folders"], limit=2).class_counts() == {"ok": 2, "scratch": 2}
    assert load(trees["mvtec"], purpose="evaluate", limit=1).class_counts() == {
        "good": 1,
        "spot": 1,
    }
    assert load(trees["magnetic-tile"], limit=1).class_counts() == {"Crack": 1, "Free": 1}
    assert len(load(trees["voc"], limit=2)) == 2
    assert len(load(trees["wafer-npz"], limit=5)) == 5
    with pytest.raises(DataError, match="limit must be at least 1"):
        load(trees["class-folders"], limit=0)


def test_predict_loads_image_layouts_lazily_by_file(trees) -> None:  # type: ignore[no-untyped-def]
    for name in ("class-folders", "mvtec", "magnetic-tile", "voc", "images"):
        data = load(trees[name], purpose="predict")
        assert isinstance(data.images, LazyImages), name
        assert data.labels == [None] * len(data)
        assert all(Path(s.id).is_file() and s.id == s.source for s in data.samples)
    voc = load(trees["voc"], purpose="predict")
    assert sorted(Path(s.id).parent.name for s in voc.samples) == ["IMAGES"] * 3
    # predict reads the parts (train/ and test/), never the ground-truth masks
    assert len(load(trees["mvtec"], purpose="predict")) == 16
    tiles = load(trees["magnetic-tile"], purpose="predict")
    assert len(tiles) == 6 and all(s.id.endswith(".jpg") for s in tiles.samples)
    # predict keeps the unlabelled maps training leaves out
    assert len(load(trees["wafer-npz"], purpose="predict")) == 12


def test_a_flat_folder_trains_only_a_good_only_detector(trees) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="no labels") as info:
        load(trees["images"])
    assert str(info.value).startswith(str(trees["images"]))
    parts = load(trees["images"], task="anomaly")  # unlabelled parts count as good
    assert len(parts) == 3 and parts.labels == [None] * 3


def test_detect_and_load_errors_name_the_path(tmp_path: Path, trees) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="no such file or folder") as info:
        detect(missing)
    assert str(missing) in str(info.value)
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(DataError, match=r"unrecognised file type \.txt"):
        detect(notes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load(tmp_path / "empty")
    with pytest.raises(DataError, match=r"unknown layout .nope.; known layouts: .*voc"):
        load(trees["voc"], layout="nope")
    with pytest.raises(DataError, match="purpose must be one of"):
        load(trees["voc"], purpose="fit")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="task must be one of"):
        load(trees["voc"], task="segment")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no good samples to learn from"):
        load(trees["voc"], task="anomaly")  # every NEU image is a defect class


def test_layout_can_be_forced(trees) -> None:  # type: ignore[no-untyped-def]
    # a VOC tree read as class folders: its sub-folders become classes, boxes are lost
    as_folders = load(trees["voc"], layout="class-folders")
    assert as_folders.class_counts() == {"ANNOTATIONS": 0, "IMAGES": 3}
    assert as_folders.boxes is None


def test_load_inputs_joins_files_and_folders_into_one_lazy_set(trees) -> None:  # type: ignore[no-untyped-def]
    folder, one = trees["class-folders"] / "ok", trees["images"] / "p1.png"
    data = load_inputs([folder, one, one])
    assert isinstance(data.images, LazyImages) and len(data) == 6
    assert data.ids[-2:] == [str(one), str(one) + "'"]  # a repeated input keeps a unique id
    assert [s.source for s in data.samples][-2:] == [str(one), str(one)]
    assert data.images[4].shape == (1, 8, 8)
    two = load_inputs([trees["wafer-npz"], trees["wafer-npz"]], kind="wafer")
    assert two.kind == "wafer" and len(two) == 24 and len(set(two.ids)) == 24
    with pytest.raises(DataError, match="this model reads wafer maps") as info:
        load_inputs([trees["wafer-npz"], one], kind="wafer")
    assert str(info.value).startswith(str(one))
    with pytest.raises(DataError, match="this model reads images"):
        load_inputs([trees["wafer-npz"]], kind="image")
    with pytest.raises(DataError, match="no inputs"):
        load_inputs([])


def test_lswmd_pickle_is_detected_and_loaded(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    from test_sources_lswmd import lswmd_frame

    pkl = tmp_path / "LSWMD.pkl"
    lswmd_frame(8).to_pickle(pkl)
    assert detect(pkl) == "lswmd"
    labelled = load(pkl)
    assert len(labelled) == 6 and None not in labelled.labels  # 2 of 8 rows unlabelled
    assert len(load(pkl, purpose="predict")) == 8


def _imports(path: Path) -> set[str]:
    """Every ``inspectkit.sources`` module ``path`` imports, at any depth of the code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("inspectkit.sources.")}


def test_source_modules_import_each_other_without_a_circle() -> None:
    modules = {f"inspectkit.sources.{p.stem}": p for p in SOURCES_DIR.glob("*.py")}
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or reaches(nxt, goal, seen | {nxt}) for nxt in graph[start] - seen)

    circles = [m for m in graph if reaches(m, m, set())]
    assert not circles, {m: sorted(graph[m]) for m in circles}
    # the check sees imports inside functions too (load_wafer_maps imports lswmd there)
    assert "inspectkit.sources.lswmd" in graph["inspectkit.sources.wafer"]


# ---------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_layouts_are_detected(
    wm811k_dir: Path, magnetic_tile_dir: Path, neu_det_dir: Path
) -> None:
    assert detect(wm811k_dir / "WM811K_train_1_split.npz") == "wafer-npz"
    assert detect(magnetic_tile_dir) == "magnetic-tile"
    assert detect(neu_det_dir) == "voc"


@pytest.mark.realdata
def test_real_neu_loads_as_voc_with_prefix_labels_and_boxes(neu_det_dir: Path) -> None:
    steel = load(neu_det_dir, limit=12, channels=1)
    assert len(steel) == 12 and steel.images.shape == (12, 1, 200, 200)
    assert all(s.label == s.id.rsplit("_", 1)[0] for s in steel.samples)
    assert all(boxes for boxes in steel.boxes)
    inputs = load(neu_det_dir, purpose="predict")
    assert len(inputs) == len(list((neu_det_dir / "IMAGES").iterdir()))


@pytest.mark.realdata
def test_real_magnetic_tile_good_only_and_evaluation(magnetic_tile_dir: Path) -> None:
    good = load(magnetic_tile_dir, task="anomaly", limit=4)
    assert good.labels == ["Free"] * 4
    test = load(magnetic_tile_dir, purpose="evaluate", task="anomaly", limit=2)
    assert set(test.class_counts().values()) == {2} and len(test.classes) == 6
    assert test.masks is not None


@pytest.mark.realdata
def test_real_wafer_split_loads_labelled(wm811k_dir: Path) -> None:
    maps = load(wm811k_dir / "WM811K_train_1_split.npz", limit=40)
    assert len(maps) == 40 and maps.kind == "wafer" and None not in maps.labels
