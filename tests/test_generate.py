"""Generate: per-class VAE on wafer maps and photos, fallback, state, fit-time only, bad input."""

from __future__ import annotations

import logging

import pytest
import torch

import inspectkit as ik
from inspectkit.errors import ConfigError, DataError, NotFittedError
from inspectkit.metrics import classification_report
from inspectkit.records import ImageSet, SampleMeta
from inspectkit.stages import Classifier, Generate

SIZE = 32
_C = (SIZE - 1) / 2
_YY, _XX = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
RADIUS = ((_YY - _C) ** 2 + (_XX - _C) ** 2).sqrt()
INSIDE = RADIUS <= SIZE / 2 - 1


def pattern_wafers(counts: dict[str, int], seed: int = 0) -> ImageSet:
    """Disk wafers: "center" fails near the middle, "ring" fails at the edge."""
    g = torch.Generator().manual_seed(seed)
    maps, samples = [], []
    for cls, n in counts.items():
        for i in range(n):
            noise = torch.rand(SIZE, SIZE, generator=g)
            r0 = 4 + 3 * float(torch.rand(1, generator=g))
            if cls == "center":
                fail = (r0 >= RADIUS) & (noise < 0.9) | (noise < 0.03)
            else:
                fail = (SIZE / 2 - 1 - r0 / 2 <= RADIUS) & (noise < 0.9) | (noise < 0.03)
            maps.append(INSIDE.to(torch.uint8) * (1 + (fail & INSIDE).to(torch.uint8)))
            samples.append(SampleMeta(id=f"{cls}{i}", label=cls))
    return ImageSet(
        images=torch.stack(maps).unsqueeze(1),
        samples=samples,
        classes=sorted(counts),
        kind="wafer",
    )


FAST = {"size": 16, "steps": 150, "batch_size": 32, "progress": False, "seed": 0, "threads": 1}


@pytest.fixture(scope="module")
def wafers() -> ImageSet:
    return pattern_wafers({"center": 30, "ring": 30, "rare": 0}, seed=1)


@pytest.fixture(scope="module")
def fitted(wafers: ImageSet) -> tuple[Generate, ImageSet]:
    gen = Generate(per_class=130, classes=["center", "ring"], **FAST)
    return gen, gen.fit_run(wafers)


def fail_share(maps: torch.Tensor, region: torch.Tensor) -> float:
    fail = maps[:, 0] == 2
    return float(fail[:, region].float().mean())


def test_generated_wafers_are_valid_and_have_their_class_shape(fitted) -> None:
    _, out = fitted
    assert out.class_counts() == {"center": 130, "rare": 0, "ring": 130}
    synth = out.select(lambda s: s.synthetic)
    assert len(synth) == 200
    assert all(s.id.startswith(f"gen:{s.label}:") for s in synth.samples)
    x = synth.image_tensor()
    assert x.dtype == torch.uint8 and set(x.unique().tolist()) <= {0, 1, 2}
    # every generated map keeps a real wafer outline: no die outside, no hole inside
    assert torch.equal(x[:, 0] > 0, INSIDE.expand(len(x), -1, -1))
    centre = RADIUS <= 4
    edge = INSIDE & (RADIUS >= SIZE / 2 - 3)
    c = synth.select(lambda s: s.label == "center").image_tensor()
    r = synth.select(lambda s: s.label == "ring").image_tensor()
    assert fail_share(c, centre) > 0.5 > 0.2 > fail_share(c, edge)
    assert fail_share(r, edge) > 0.5 > 0.2 > fail_share(r, centre)
    # generated maps differ from one another (sampled, not a fixed template)
    assert len({bytes(m.numpy()) for m in c}) >= 0.9 * len(c)


def test_run_is_identity(fitted, wafers) -> None:
    gen, _ = fitted
    assert gen.run(wafers) is wafers


def test_saved_pipeline_samples_again_after_load(fitted, wafers, tmp_path) -> None:
    gen, _ = fitted
    pipe = ik.Pipeline([gen])
    pipe.save(tmp_path / "m")
    loaded = ik.Pipeline.load(tmp_path / "m")["generate"]
    assert isinstance(loaded, Generate)
    a = gen.sample("center", 25, seed=7)
    b = loaded.sample("center", 25, seed=7)
    assert torch.equal(a.image_tensor(), b.image_tensor())
    assert a.ids == b.ids and all(s.synthetic for s in b.samples)
    assert b.kind == "wafer" and b.classes == wafers.classes
    more = loaded.sample("ring", 5, start=100)
    assert more.ids == [f"gen:ring:{k}" for k in range(100, 105)]
    with pytest.raises(DataError, match="no generator"):
        loaded.sample("rare", 3)


def test_same_seed_same_generators(wafers) -> None:
    small = wafers.select(lambda s: s.label == "center")
    cfg = FAST | {"steps": 20, "classes": ["center"]}
    a = Generate(per_class=40, **cfg).fit_run(small)
    b = Generate(per_class=40, **cfg).fit_run(small)
    assert len(a) == 40 and sum(s.synthetic for s in a.samples) == 10
    assert torch.equal(a.image_tensor(), b.image_tensor())


def test_few_samples_fall_back_to_augmentation_with_warning(caplog) -> None:
    data = pattern_wafers({"center": 12, "ring": 5})
    with caplog.at_level(logging.WARNING, logger="inspectkit.stages.generate"):
        gen = Generate(per_class=20, fail_budget=None, **(FAST | {"steps": 10}))
        out = gen.fit_run(data)
    assert "'ring' has 5 real samples" in caplog.text
    assert gen.generators["ring"]["method"] == "augment"
    assert gen.generators["center"]["method"] == "vae"
    assert out.class_counts() == {"center": 20, "ring": 20}
    ring = out.select(lambda s: s.label == "ring" and s.synthetic).image_tensor()
    assert torch.equal(ring[:, 0] > 0, INSIDE.expand(len(ring), -1, -1))


def test_generator_that_missed_the_pattern_falls_back(caplog) -> None:
    data = pattern_wafers({"center": 12})
    # one training step: the decoder still says "fail" about everywhere
    with caplog.at_level(logging.WARNING, logger="inspectkit.stages.generate"):
        gen = Generate(per_class=20, **(FAST | {"steps": 1}))
        out = gen.fit_run(data)
    assert "has not learned the pattern" in caplog.text
    assert gen.generators["center"]["method"] == "augment"
    assert gen.generators["center"]["fail_ratio"] > 2
    assert out.class_counts() == {"center": 20}


def test_method_augment_for_every_class() -> None:
    data = pattern_wafers({"center": 10, "ring": 10})
    gen = Generate(method="augment", per_class=25, **FAST)
    out = gen.fit_run(data)
    assert out.class_counts() == {"center": 25, "ring": 25}
    assert {e["method"] for e in gen.generators.values()} == {"augment"}


@pytest.mark.parametrize("channels, dtype", [(1, torch.uint8), (3, torch.float32)])
def test_photos_gray_and_rgb(channels: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    n = 12
    images = torch.rand(n, channels, 20, 24, generator=g)
    images[: n // 2, :, 5:15, 5:15] = 1.0
    if dtype == torch.uint8:
        images = (images * 255).to(torch.uint8)
    data = ImageSet(
        images=images,
        samples=[SampleMeta(id=f"p{i}", label="a" if i < n // 2 else "b") for i in range(n)],
        classes=["a", "b"],
    )
    gen = Generate(per_class=10, **(FAST | {"steps": 15}))
    out = gen.fit_run(data)
    synth = out.select(lambda s: s.synthetic).image_tensor()
    assert synth.shape == (8, channels, 20, 24) and synth.dtype == dtype
    if dtype == torch.float32:
        assert float(synth.min()) >= 0 and float(synth.max()) <= 1


def test_synthetic_samples_are_never_evaluated(wafers) -> None:
    data = wafers.select(lambda s: s.label in ("center", "ring"))
    pipe = ik.Pipeline(
        [
            Generate(method="augment", per_class=45, classes=["center", "ring"], **FAST),
            Classifier(epochs=1, batch_size=32, progress=False, val_fraction=0.0),
        ]
    )
    pipe.fit(data)
    # at inference Generate passes data through: no synthetic sample reaches the classifier
    pred = pipe.run(data)
    assert not any(s.synthetic for s in pred.samples) and len(pred) == len(data)
    # training-time output holds synthetic samples; the report drops every one of them
    train_out = pipe[0].fit_run(data)
    n_synth = sum(s.synthetic for s in train_out.samples)
    assert n_synth == 30
    report = classification_report(pipe[1].run(train_out))
    assert report.counts["synthetic_dropped"] == n_synth
    assert report.counts["scored"] == len(data)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"per_class": 0}, "per_class"),
        ({"per_class": -5}, "per_class"),
        ({"size": 20}, "size"),
        ({"method": "gan"}, "method"),
        ({"augment": {"rotation": 200}}, "rotation"),
        ({"augment": {"shear": -2}}, "shear"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_config_is_refused(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Generate(**kwargs)


def test_bad_data_is_refused() -> None:
    empty = ImageSet(images=torch.zeros(0, 1, 8, 8, dtype=torch.uint8), samples=[], classes=["a"])
    with pytest.raises(DataError, match="empty"):
        Generate(per_class=3).fit(empty)
    no_real = pattern_wafers({"center": 10, "ring": 0})
    with pytest.raises(DataError, match="no real samples"):
        Generate(per_class=12, **FAST).fit(no_real)
    photos = ImageSet(
        images=torch.full((4, 3, 8, 8), 200, dtype=torch.uint8),
        samples=[SampleMeta(id=str(i), label="a") for i in range(4)],
        classes=["a"],
    )
    with pytest.raises(DataError, match="wafer mode"):
        Generate(per_class=8, mode="wafer", **FAST).fit(photos)
    scaled = photos.replace(images=torch.randn(4, 3, 8, 8))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        Generate(per_class=8, **FAST).fit(scaled)
    with pytest.raises(NotFittedError):
        Generate().sample("a", 3)
    with pytest.raises(ConfigError, match="not in the data"):
        Generate(per_class=8, classes=["zzz"], **FAST).fit(photos)
