"""Pascal-VOC loader: boxes, labels, hostile XML, and the real NEU-DET annotations."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inspectkit.errors import DataError
from inspectkit.records import LazyImages
from inspectkit.sources import load_voc


def voc_xml(
    filename: str, objects: list[tuple[str, int, int, int, int]], w: int = 40, h: int = 30
) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    return (
        f"<annotation><folder>x</folder><filename>{filename}</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>1</depth></size>{objs}</annotation>"
    )


def make_voc(root: Path) -> tuple[Path, Path]:
    imgs, anns = root / "IMAGES", root / "ANNOTATIONS"
    imgs.mkdir(parents=True)
    anns.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = {
        "crazing_1": [("crazing", 1, 2, 30, 20)],
        "crazing_2": [("crazing", 0, 0, 40, 30), ("patches", 5, 5, 10, 10)],
        "rolled-in_scale_7": [("rolled-in_scale", 3, 4, 13, 14)],
    }
    for stem, objs in entries.items():
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
            imgs / f"{stem}.jpg"
        )
        (anns / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", objs))
    return imgs, anns


def test_voc_boxes_and_prefix_labels(tmp_path: Path) -> None:
    imgs, anns = make_voc(tmp_path)
    s = load_voc(imgs, anns)
    assert s.ids == ["crazing_1.jpg", "crazing_2.jpg", "rolled-in_scale_7.jpg"]
    assert s.labels == ["crazing", "crazing", "rolled-in_scale"]
    assert s.classes == ["crazing", "patches", "rolled-in_scale"]
    assert s.images.shape == (3, 3, 30, 40)
    b = s.boxes[1][1]
    assert (b.label, b.xmin, b.ymin, b.xmax, b.ymax) == ("patches", 5, 5, 10, 10)
    assert s.samples[1].meta["n_boxes"] == 2
    gray = load_voc(imgs, anns, channels=1, limit=1)
    assert gray.images.shape == (1, 1, 30, 40)
    lazy = load_voc(imgs, anns, lazy=True)
    assert isinstance(lazy.images, LazyImages) and torch.equal(lazy.materialize().images, s.images)


def test_label_from_objects_and_none(tmp_path: Path) -> None:
    imgs, anns = make_voc(tmp_path)
    with pytest.raises(DataError, match=r"crazing_2\.xml: cannot tell the image's class"):
        load_voc(imgs, anns, label_from="objects")
    s = load_voc(imgs, anns, label_from="objects", on_error="skip")
    assert s.labels == ["crazing", "rolled-in_scale"] and len(s.skipped) == 1
    assert load_voc(imgs, anns, label_from="none").labels == [None, None, None]


def test_unknown_class_names(tmp_path: Path) -> None:
    imgs, anns = make_voc(tmp_path)
    with pytest.raises(DataError, match=r"crazing_2\.xml: unknown class name\(s\) \['patches'\]"):
        load_voc(imgs, anns, classes=["crazing", "rolled-in_scale"])
    s = load_voc(imgs, anns, classes=["crazing", "rolled-in_scale"], on_error="skip")
    assert s.ids == ["crazing_1.jpg", "rolled-in_scale_7.jpg"]


def test_entity_expansion_and_external_entities_are_refused(tmp_path: Path) -> None:
    imgs, anns = make_voc(tmp_path)
    laughs = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n'
        "<annotation><filename>crazing_1.jpg</filename><object><name>&lol2;</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>"
    )
    (anns / "crazing_1.xml").write_text(laughs)
    with pytest.raises(DataError, match=r"crazing_1\.xml: XML declares a DTD or entities"):
        load_voc(imgs, anns)
    (anns / "crazing_1.xml").write_text(
        '<!doctype a SYSTEM "file:///etc/passwd"><annotation><filename>crazing_1.jpg</filename></annotation>'
    )
    with pytest.raises(DataError, match="DTD"):
        load_voc(imgs, anns)


@pytest.mark.parametrize(
    ("xml", "problem"),
    [
        (voc_xml("crazing_1.jpg", [("crazing", 1, 2, 50, 20)]), "outside the 40x30 image"),
        (voc_xml("crazing_1.jpg", [("crazing", 10, 2, 5, 20)]), "empty, inverted or negative"),
        (voc_xml("crazing_1.jpg", [("crazing", 1, 2, 5, 20)], w=64, h=64), "declares 64x64"),
        ("<annotation><filename>crazing_1.jpg</filename><object>", "malformed XML"),
        (
            voc_xml("crazing_1.jpg", [("crazing", 1, 2, 5, 20)]).replace("<xmax>5<", "<xmax>nan<"),
            "not a finite",
        ),
    ],
    ids=["outside", "inverted", "size-mismatch", "malformed", "nan"],
)
def test_bad_annotations_name_the_file_and_problem(tmp_path: Path, xml: str, problem: str) -> None:
    imgs, anns = make_voc(tmp_path)
    (anns / "crazing_1.xml").write_text(xml)
    with pytest.raises(DataError, match=problem) as info:
        load_voc(imgs, anns)
    assert "crazing_1" in str(info.value)
    s = load_voc(imgs, anns, on_error="skip")
    assert len(s) == 2 and len(s.skipped) == 1 and problem.split()[0] in s.skipped[0]


def test_missing_image_falls_back_to_the_xml_stem_then_fails(tmp_path: Path) -> None:
    imgs, anns = make_voc(tmp_path)
    (anns / "crazing_1.xml").write_text(voc_xml("renamed.jpg", [("crazing", 1, 2, 5, 20)]))
    assert load_voc(imgs, anns).ids[0] == "crazing_1.jpg"  # <filename> stale: the stem is used
    (imgs / "crazing_1.jpg").unlink()
    with pytest.raises(DataError, match=r"crazing_1\.xml: its image renamed\.jpg is not in"):
        load_voc(imgs, anns)


def test_empty_annotation_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "i").mkdir()
    with pytest.raises(DataError, match=r"no \.xml annotation files"):
        load_voc(tmp_path / "i", tmp_path / "a")


@pytest.mark.realdata
def test_real_neu_validation_set_and_first_30(neu_det_dir: Path) -> None:
    val = load_voc(neu_det_dir / "Validation_Images", neu_det_dir / "Validation_Annotations")
    assert len(val) == 30 and not val.skipped
    names = sorted(p.name for p in (neu_det_dir / "Validation_Images").iterdir())
    assert sorted(val.ids) == names
    # labels are the file-name prefixes; count them independently of the loader
    expected = Counter(n.rsplit("_", 1)[0] for n in names)
    assert val.class_counts() == {c: expected.get(c, 0) for c in val.classes}
    assert set(val.classes) == {
        "crazing",
        "inclusion",
        "patches",
        "pitted_surface",
        "rolled-in_scale",
        "scratches",
    }
    assert val.images.shape == (30, 3, 200, 200)
    # stored as JPEG with three equal channels: near-equal after decoding
    assert (val.images[:, 0].int() - val.images[:, 2].int()).abs().max() <= 8
    for boxes in val.boxes:
        assert boxes
        for b in boxes:
            assert 0 <= b.xmin < b.xmax <= 200 and 0 <= b.ymin < b.ymax <= 200
    first = load_voc(neu_det_dir / "IMAGES", neu_det_dir / "ANNOTATIONS", limit=30, channels=1)
    assert len(first) == 30 and first.images.shape == (30, 1, 200, 200)
    assert all(s.label == s.id.rsplit("_", 1)[0] for s in first.samples)
    assert sum(len(b) for b in first.boxes) >= 30
