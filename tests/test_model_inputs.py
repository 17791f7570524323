"""The model-input contract (``models/inputs.py``): one InputSpec for fit, predict and
explanations; its checks, size policies, encodings, state, and the deprecated aliases."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inspectkit.errors import DataError, PersistenceError
from inspectkit.models.inputs import SPEC_VERSION, ExplainableStage, InputSpec, wafer_one_hot
from inspectkit.records import ImageSet, SampleMeta


def _set(images, kind: str = "image") -> ImageSet:
    n = len(images)
    return ImageSet(
        images=images, samples=[SampleMeta(id=str(i)) for i in range(n)], classes=[], kind=kind
    )


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=6),
    target=st.tuples(st.integers(1, 10), st.integers(1, 10)),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_ragged_wafer_maps_become_one_hot_input_at_the_input_size(
    sizes, target, channels_last, seed
) -> None:
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randint(0, 3, (1, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]
    spec = InputSpec(kind="wafer", data_channels=1, size=target)
    x = spec.prepare(maps, channels_last=channels_last)
    assert x.shape == (len(maps), 3, *target) and x.dtype == torch.float32
    assert torch.equal(x.sum(1), torch.ones(len(maps), *target))  # exactly one code per die
    if channels_last:
        assert x.is_contiguous(memory_format=torch.channels_last)
    # nearest resizing keeps codes: each encoded map is the one-hot of a resized map
    same = [i for i, (h, w) in enumerate(sizes) if (h, w) == target]
    for i in same:
        assert torch.equal(x[i].argmax(0).to(torch.uint8), maps[i][0])


def test_wafer_one_hot_matches_torch_one_hot_and_rounds_float_codes() -> None:
    codes = torch.randint(0, 3, (4, 1, 5, 7), dtype=torch.uint8)
    ref = torch.nn.functional.one_hot(codes[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    assert torch.equal(wafer_one_hot(codes), ref)
    assert torch.equal(wafer_one_hot(codes.float() + 0.2), ref)  # float codes round
    with pytest.raises(DataError, match="N×1×H×W"):
        wafer_one_hot(codes[0])


def test_photos_are_scaled_and_standardised_with_the_statistics_measured() -> None:
    g = torch.Generator().manual_seed(0)
    photos = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    spec = InputSpec(kind="image", data_channels=3, size=(8, 8)).with_stats(photos)
    x = spec.encode(photos)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    plain = InputSpec(kind="image", data_channels=3, size=(8, 8))
    assert torch.equal(plain.encode(photos), photos.float() / 255)
    assert InputSpec(kind="wafer", data_channels=1, size=(8, 8)).with_stats(photos).mean is None


def test_resize_policy_resizes_and_refuse_policy_names_wrangle() -> None:
    big = torch.full((2, 1, 20, 20), 200, dtype=torch.uint8)
    resize = InputSpec(kind="image", data_channels=1, size=(10, 10))
    assert resize.prepare(big).shape == (2, 1, 10, 10)
    assert resize.prepare([big[0], big[1, :, :15]]).shape == (2, 1, 10, 10)
    refuse = InputSpec(kind="image", data_channels=1, size=(10, 10), size_policy="refuse")
    for images in (big, [big[0]], [torch.zeros(1, 10, 10, dtype=torch.uint8), big[0]]):
        with pytest.raises(DataError, match=r"Wrangle\(size=\(10, 10\)\)"):
            refuse.prepare(images)
    with pytest.raises(DataError, match="20×20"):
        refuse.check(_set(big))
    assert refuse.prepare(big[:, :, :10, :10]).shape == (2, 1, 10, 10)


def test_kind_and_channel_mismatches_are_refused_with_the_conversion_to_use() -> None:
    spec = InputSpec(kind="image", data_channels=1, size=(4, 4))
    with pytest.raises(
        DataError, match=r"3-channel images; convert them with Wrangle\(channels=1\)"
    ):
        spec.check(_set(torch.zeros(2, 3, 4, 4, dtype=torch.uint8)), "Classifier")
    with pytest.raises(
        DataError, match="this Classifier was trained on 'image' images but got 'wafer'"
    ):
        spec.check(_set(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), kind="wafer"), "Classifier")
    spec.check(_set(torch.zeros(2, 1, 9, 9, dtype=torch.uint8)))  # resize policy: any size


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "xray"}, "kind"),
        ({"size_policy": "crop"}, "size policy"),
        ({"data_channels": 0}, "channel"),
        ({"size": (0, 5)}, "between"),
        ({"mean": torch.zeros(1)}, "both mean and std"),
    ],
)
def test_bad_contracts_are_refused(kwargs: dict, match: str) -> None:
    args = {"kind": "image", "data_channels": 1, "size": (4, 4), **kwargs}
    with pytest.raises(DataError, match=match):
        InputSpec(**args)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["wafer", "image"]),
    channels=st.integers(1, 4),
    size=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    policy=st.sampled_from(["resize", "refuse"]),
    stats=st.booleans(),
)
def test_state_round_trip_keeps_the_contract(kind, channels, size, policy, stats) -> None:
    mean = torch.rand(channels) if stats else None
    std = torch.rand(channels) + 0.1 if stats else None
    spec = InputSpec(kind, channels, size, mean=mean, std=std, size_policy=policy)
    state = spec.get_state()
    assert state["version"] == SPEC_VERSION
    back = InputSpec.from_state(state)
    assert (back.kind, back.data_channels, back.size, back.size_policy) == (
        kind,
        channels,
        size,
        policy,
    )
    assert back.model_channels == (3 if kind == "wafer" else channels)
    if stats:
        assert torch.equal(back.mean, mean) and torch.equal(back.std, std)
    else:
        assert back.mean is None and back.std is None


def test_newer_or_broken_states_are_persistence_errors() -> None:
    state = InputSpec("image", 1, (4, 4)).get_state()
    with pytest.raises(PersistenceError, match="newer"):
        InputSpec.from_state({**state, "version": SPEC_VERSION + 1})
    with pytest.raises(PersistenceError, match="incomplete"):
        InputSpec.from_state({k: v for k, v in state.items() if k != "size"})


def test_deprecated_aliases_delegate_to_the_contract() -> None:
    from inspectkit.continual.trainer import input_channels, model_input

    codes = torch.randint(0, 3, (2, 1, 4, 4), dtype=torch.uint8)
    with pytest.warns(DeprecationWarning, match="InputSpec"):
        x = model_input(codes, "wafer", channels_last=True)
    assert torch.equal(x, wafer_one_hot(codes))
    with pytest.warns(DeprecationWarning, match="model_channels"):
        assert input_channels(1, "wafer") == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the live names do not warn
        from inspectkit.continual.trainer import wafer_one_hot as again

        assert again is wafer_one_hot


def test_classifiers_offer_a_network_and_its_input_contract() -> None:
    from inspectkit.continual import ContinualClassifier
    from inspectkit.stages import Classifier, Wrangle

    for stage in (Classifier(), ContinualClassifier()):
        assert isinstance(stage, ExplainableStage)
        assert stage.network is None and stage.input_spec is None  # until fitted
    assert not isinstance(Wrangle(size=8), ExplainableStage)
