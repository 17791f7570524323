"""Property tests for records: random valid sets survive subset/concat/replace/JSON;
random invalid ones are refused with DataError."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inspectkit.errors import DataError
from inspectkit.records import Box, ImageSet, SampleMeta

CLASSES = ["a", "b", "c"]


@st.composite
def image_sets(draw: Any, min_size: int = 0) -> ImageSet:
    n = draw(st.integers(min_size, 7))
    kind = draw(st.sampled_from(["image", "wafer"]))
    ragged = draw(st.booleans())
    channels = 1 if kind == "wafer" else draw(st.sampled_from([1, 3]))
    hi = 3 if kind == "wafer" else 256
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    h0, w0 = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if ragged:
        shapes = [(draw(st.integers(1, 6)), draw(st.integers(1, 6))) for _ in range(n)]
        images: Any = [
            torch.randint(0, hi, (channels, h, w), generator=g, dtype=torch.uint8)
            for h, w in shapes
        ]
    else:
        shapes = [(h0, w0)] * n
        images = torch.randint(0, hi, (n, channels, h0, w0), generator=g, dtype=torch.uint8)
    masks: Any = None
    if draw(st.booleans()):
        ms = [torch.randint(0, 2, (1, h, w), generator=g, dtype=torch.uint8) for h, w in shapes]
        masks = (
            ms if ragged else torch.randint(0, 2, (n, 1, h0, w0), generator=g, dtype=torch.uint8)
        )
    boxes = None
    if draw(st.booleans()):
        boxes = [
            [Box(label="a", xmin=0, ymin=0, xmax=float(w), ymax=float(h))] * draw(st.integers(0, 2))
            for h, w in shapes
        ]
    samples = [
        SampleMeta(
            id=f"s{i}",
            source=draw(st.sampled_from(["", "line1/file.png"])),
            label=draw(st.sampled_from([*CLASSES, None])),
            split=draw(st.sampled_from(["train", "val", "test", None])),
            synthetic=draw(st.booleans()),
            group=draw(st.sampled_from([None, "lot1", "lot2"])),
            meta={"k": draw(st.integers(-5, 5)), "f": draw(st.floats(-1, 1)), "t": "x"},
        )
        for i in range(n)
    ]
    return ImageSet.build(
        images=images, masks=masks, boxes=boxes, samples=samples, classes=CLASSES, kind=kind
    )


def same_pixels(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if len(a) != len(b):
        return False
    return all(torch.equal(x, y) for x, y in zip(a, b))


@settings(max_examples=60, deadline=None)
@given(data=image_sets(), picks=st.data())
def test_subset_slices_every_field_alike(data: ImageSet, picks: Any) -> None:
    idx = (
        picks.draw(st.lists(st.integers(0, max(len(data) - 1, 0)), max_size=len(data), unique=True))
        if len(data)
        else []
    )
    sub = data.subset(idx)
    assert sub.samples == [data.samples[i] for i in idx]
    assert same_pixels(sub.images, [data.images[i] for i in idx])
    if data.masks is not None:
        assert same_pixels(sub.masks, [data.masks[i] for i in idx])
    if data.boxes is not None:
        assert sub.boxes == [data.boxes[i] for i in idx]
    assert sub.kind == data.kind and sub.classes == data.classes
    picked = data.select(lambda s: s.synthetic)
    assert picked.ids == [s.id for s in data.samples if s.synthetic]
    assert data.real().ids == [s.id for s in data.samples if not s.synthetic]


@settings(max_examples=60, deadline=None)
@given(data=image_sets(min_size=1), cut=st.data())
def test_concat_of_two_parts_is_the_whole(data: ImageSet, cut: Any) -> None:
    k = cut.draw(st.integers(0, len(data)))
    joined = ImageSet.concat([data.subset(range(k)), data.subset(range(k, len(data)))])
    assert joined.samples == data.samples
    assert same_pixels(joined.images, data.images)
    assert same_pixels(joined.masks, data.masks)
    assert joined.boxes == data.boxes
    assert joined.class_counts() == data.class_counts()


@settings(max_examples=60, deadline=None)
@given(data=image_sets())
def test_replace_and_json_round_trip(data: ImageSet) -> None:
    relabelled = data.replace(
        samples=[s.model_copy(update={"split": "test"}) for s in data.samples]
    )
    assert all(s.split == "test" for s in relabelled.samples)
    assert relabelled.ids == data.ids and relabelled.labels == data.labels
    assert same_pixels(relabelled.images, data.images) and same_pixels(relabelled.masks, data.masks)
    doc = json.loads(json.dumps(data.to_json(), allow_nan=False))
    assert [SampleMeta(**s) for s in doc["samples"]] == data.samples
    if data.boxes is not None:
        assert [[Box(**b) for b in bl] for bl in doc["boxes"]] == data.boxes
    assert doc["summary"]["n"] == len(data)
    assert doc["summary"]["class_counts"] == data.class_counts()


@settings(max_examples=60, deadline=None)
@given(
    data=image_sets(min_size=1),
    how=st.sampled_from(["label", "length", "dup_id", "code", "nan", "mask"]),
    pick=st.data(),
)
def test_invalid_sets_raise_data_error(data: ImageSet, how: str, pick: Any) -> None:
    i = pick.draw(st.integers(0, len(data) - 1))
    fields = {name: getattr(data, name) for name in ImageSet.model_fields}
    samples = list(data.samples)
    if how == "label":
        samples[i] = samples[i].model_copy(update={"label": "zzz"})
        fields["samples"] = samples
        match = "not in classes"
    elif how == "length":
        fields["samples"] = [*samples, SampleMeta(id="extra")]
        match = "images but"
    elif how == "dup_id":
        if len(data) < 2:
            return
        samples[-1] = samples[-1].model_copy(update={"id": samples[0].id})
        fields["samples"] = samples
        match = "more than once"
    elif how == "code":
        imgs = [t.clone() for t in data.images]
        imgs[i].view(-1)[0] = 3
        fields["images"] = imgs
        fields["kind"] = "wafer"
        fields["masks"] = data.masks if data.kind == "wafer" else None
        if data.kind != "wafer":
            fields["images"] = [t[:1] for t in imgs]
        match = "codes"
    elif how == "nan":
        imgs = [t.float() for t in data.images]
        imgs[i].view(-1)[0] = float("nan")
        fields["images"] = imgs
        fields["kind"] = "image"
        match = "NaN"
    else:
        imgs = list(data.images)
        h, w = imgs[i].shape[-2:]
        fields["masks"] = [torch.zeros((1, h, w), dtype=torch.uint8) for _ in imgs]
        fields["masks"][i] = torch.zeros((1, h + 1, w), dtype=torch.uint8)
        match = "mask"
    with pytest.raises(DataError, match=match):
        ImageSet.build(**fields)


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(
        alphabet=st.characters(blacklist_categories=(), codec=None), min_size=1, max_size=30
    )
    | st.binary(min_size=1, max_size=30).map(lambda b: b.decode("utf-8", "surrogateescape"))
)
def test_any_file_name_makes_a_printable_one_line_sample_id(name: str) -> None:
    from inspectkit.records import printable

    meta = SampleMeta(id=name, source=name, label=name, group=name)
    for value in (meta.id, meta.source, meta.label, meta.group):
        assert value == printable(name)
        assert value.isprintable() and "\n" not in value and "\t" not in value
        value.encode("utf-8")  # never a lone surrogate
    # names that differ only in a control character stay distinct
    assert printable(name + "\t") != printable(name + "\n")
