"""ReplayTrainer and ContinualClassifier: replay vs forgetting, growth, persistence, failures."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import inspectkit as ik
from inspectkit.continual import (
    ContinualClassifier,
    ReplayTrainer,
    ReservoirBuffer,
    accuracy_matrix,
    class_incremental_stream,
    continual_summary,
    expand_head,
    merge_classes,
    update_pipeline,
)
from inspectkit.continual import buffers as buffers_mod
from inspectkit.continual.trainer import wafer_one_hot
from inspectkit.errors import ConfigError, DataError, InspectkitError, NotFittedError
from inspectkit.records import ImageSet, Predictions, SampleMeta
from inspectkit.sources import load_wafer_maps
from inspectkit.stages import Wrangle

SIZE = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _patterns(labels: list[int], seed: int) -> torch.Tensor:
    """Class k = a bright 3×3 block at one of several fixed places, plus noise (uint8)."""
    g = torch.Generator().manual_seed(seed)
    spots = [(1, 1), (1, 8), (8, 1), (8, 8), (4, 4), (1, 4)]
    x = torch.randint(0, 60, (len(labels), 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    for i, k in enumerate(labels):
        r, c = spots[k]
        x[i, 0, r : r + 3, c : c + 3] = 255
    return x


def _set(
    class_names: list[str], present: list[str], n_per: int, seed: int, prefix: str
) -> ImageSet:
    labels = [class_names.index(c) for c in present for _ in range(n_per)]
    images = _patterns(labels, seed)
    samples = [SampleMeta(id=f"{prefix}{i}", label=class_names[k]) for i, k in enumerate(labels)]
    return ImageSet(images=images, samples=samples, classes=list(class_names))


class TinyNet(nn.Module):
    """A small CNN with ``embed`` (as the classifier contract has) for trainer tests."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten()
        )
        self.head = nn.Linear(72, k)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _old_class_accuracy(
    buffer: ReservoirBuffer | None, mode: str = "experience", review: int = 0
) -> float:
    torch.manual_seed(0)
    x0 = _patterns([0, 1] * 40, 1)
    y0 = torch.tensor([0, 1] * 40)
    x1 = _patterns([2, 3] * 40, 2)
    y1 = torch.tensor([2, 3] * 40)
    tr = ReplayTrainer(
        TinyNet(2), buffer=buffer, epochs=8, batch_size=16, lr=5e-3, mode=mode, review_epochs=review,
        device="cpu", seed=0, progress=False,
    )  # fmt: skip
    tr.train_experience(x0, y0, 2)
    xt = _patterns([0, 1] * 20, 9)
    yt = torch.tensor([0, 1] * 20)
    before = float((tr.predict_proba(xt).argmax(1) == yt).float().mean())
    assert before > 0.9, "the first experience must be learned for the comparison to mean anything"
    tr.train_experience(x1, y1, 4)
    assert tr.predict_proba(xt).shape == (40, 4)
    return float((tr.predict_proba(xt).argmax(1) == yt).float().mean())


def test_replay_reduces_forgetting_compared_with_fine_tuning() -> None:
    finetune = _old_class_accuracy(None)
    replay = _old_class_accuracy(ReservoirBuffer(40, seed=0))
    batch_review = _old_class_accuracy(ReservoirBuffer(40, seed=0), mode="batch", review=1)
    assert finetune < 0.5  # fine-tuning on the new classes forgets the old ones
    assert replay >= finetune + 0.3
    assert batch_review >= finetune + 0.3


def test_expand_head_keeps_old_rows_and_the_builder_contract() -> None:
    from inspectkit.models import build_classifier

    net = build_classifier("compact", 1, 3, input_size=(16, 16), max_params=5000)
    x = torch.rand(4, 1, 16, 16)
    net.eval()
    before = net(x)
    expand_head(net, 5, seed=1)
    after = net(x)
    assert after.shape == (4, 5) and net.num_classes == 5
    assert torch.allclose(after[:, :3], before, atol=1e-6)
    with pytest.raises(ConfigError, match="shrink"):
        expand_head(net, 2)
    # a model without `head`: the last nn.Linear grows
    seq = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    expand_head(seq, 3)
    assert seq[1].out_features == 3


def _clf(**kw) -> ContinualClassifier:
    # the classes are positions of a bright block: flips would swap them, so no augmentation
    cfg = dict(max_params=3000, buffer="reservoir", capacity=30, epochs=3, batch_size=16, lr=5e-3,
               augment="none", device="cpu", progress=False, seed=0)  # fmt: skip
    cfg.update(kw)
    return ContinualClassifier(**cfg)


ALL = ["a", "b", "c", "d"]


def _exp(t: int, n_per: int = 16) -> ImageSet:
    present = [["a", "b"], ["c"], ["d"]][t]
    classes = [["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"]][t]
    return _set(classes, present, n_per, seed=10 + t, prefix=f"e{t}-")


def test_update_grows_classes_and_predictions() -> None:
    clf = _clf()
    clf.fit(_exp(0))
    assert clf.classes == ["a", "b"]
    clf.update(_exp(1))
    assert clf.classes == ["a", "b", "c"]
    assert clf.buffer is not None and len(clf.buffer) == 30
    assert set(clf.buffer.class_counts()) == {0, 1, 2}
    test = _set(ALL, ALL, 3, seed=99, prefix="t")
    pred = clf.run(test)
    assert isinstance(pred, Predictions)
    # classes the model has not learned are appended with probability 0
    assert pred.classes == ["a", "b", "c", "d"]
    assert float(pred.probs[:, 3].max()) == 0.0
    assert pred.probs.shape == (12, 4)
    assert clf.history[-1]["classes"] == 3


def test_save_load_round_trip_with_buffer_and_ensemble(tmp_path) -> None:
    pipe = ik.Pipeline([_clf(buffer="snnl", quotas="proportional", ensemble=True)])
    pipe.fit(_exp(0))
    update_pipeline(pipe, _exp(1))
    test = _set(ALL[:3], ALL[:3], 4, seed=5, prefix="t")
    expected = pipe.run(test)
    pipe.save(tmp_path / "model")
    back = ik.Pipeline.load(tmp_path / "model")
    got = back.run(test)
    assert torch.allclose(got.probs, expected.probs, atol=1e-6)
    a, b = pipe[0], back[0]
    assert isinstance(b, ContinualClassifier)
    assert b.classes == a.classes and b.experiences == 2
    assert len(b.members) == 2 and b.buffer is not None and a.buffer is not None
    assert type(b.buffer) is type(a.buffer)
    assert b.buffer.quotas == a.buffer.quotas == "proportional"
    assert torch.equal(b.buffer.images, a.buffer.images) and torch.equal(
        b.buffer.labels, a.buffer.labels
    )
    # the loaded stage keeps learning
    b.update(_exp(2))
    assert b.classes == ALL and len(b.members) == 3


def _state_snapshot(clf: ContinualClassifier) -> dict:
    return {
        "classes": list(clf.classes),
        "weights": {k: v.clone() for k, v in clf.model.state_dict().items()},
        "buffer_images": clf.buffer.images.clone(),
        "buffer_labels": clf.buffer.labels.clone(),
        "seen": clf.buffer.seen,
        "experiences": clf.experiences,
    }


def test_failed_update_leaves_model_and_buffer_untouched(tmp_path, monkeypatch) -> None:
    pipe = ik.Pipeline([_clf()])
    pipe.fit(_exp(0))
    clf = pipe[0]
    pipe.save(tmp_path / "model")
    before = _state_snapshot(clf)
    test = _set(["a", "b"], ["a", "b"], 4, seed=3, prefix="t")
    expected = pipe.run(test).probs

    def boom(self, images, labels, features):  # the buffer update comes after training
        raise RuntimeError("disk full while updating the memory")

    monkeypatch.setattr(buffers_mod.ReservoirBuffer, "_update", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        clf.update(_exp(1))
    monkeypatch.undo()
    after = _state_snapshot(clf)
    assert after["classes"] == before["classes"] == ["a", "b"]
    assert after["experiences"] == before["experiences"]
    for k, v in before["weights"].items():
        assert torch.equal(after["weights"][k], v), k
    assert torch.equal(after["buffer_images"], before["buffer_images"])
    assert torch.equal(after["buffer_labels"], before["buffer_labels"])
    assert after["seen"] == before["seen"]
    assert torch.allclose(pipe.run(test).probs, expected)
    # the saved model is untouched too, and a later successful update works
    back = ik.Pipeline.load(tmp_path / "model")
    assert torch.allclose(back.run(test).probs, expected, atol=1e-6)
    clf.update(_exp(1))
    assert clf.classes == ["a", "b", "c"]


def test_bad_input_gives_clear_errors() -> None:
    with pytest.raises(InspectkitError, match="capacity must be at least 1"):
        ContinualClassifier(capacity=0)
    with pytest.raises(InspectkitError, match="capacity must be at least 1"):
        ContinualClassifier(capacity=-3)
    with pytest.raises(InspectkitError, match="quotas"):
        ContinualClassifier(quotas="equal")
    clf = _clf()
    with pytest.raises(NotFittedError, match="fitted"):
        clf.update(_exp(1))
    with pytest.raises(DataError, match="at least two classes"):
        clf.fit(_set(["a"], ["a"], 4, seed=0, prefix="x"))
    clf.fit(_exp(0))
    empty = _exp(1).subset([])
    with pytest.raises(DataError, match="empty"):
        clf.update(empty)
    clashing = _set(["b", "a", "c"], ["c"], 4, seed=1, prefix="c")
    with pytest.raises(DataError, match="collides"):
        clf.update(clashing)
    bigger = ImageSet(
        images=torch.zeros(2, 1, 20, 20, dtype=torch.uint8),
        samples=[SampleMeta(id="p", label="a"), SampleMeta(id="q", label="b")],
        classes=["a", "b"],
    )
    with pytest.raises(DataError, match="Wrangle"):
        clf.update(bigger)
    unlabelled = _exp(1).replace(samples=[SampleMeta(id=f"u{i}") for i in range(len(_exp(1)))])
    with pytest.raises(DataError, match="no label"):
        clf.update(unlabelled)
    assert clf.classes == ["a", "b"]  # nothing above changed the model


def test_same_seed_same_model() -> None:
    test = _set(ALL[:3], ALL[:3], 3, seed=4, prefix="t")
    runs = []
    for _ in range(2):
        clf = _clf(buffer="class_balanced")
        clf.fit(_exp(0)).update(_exp(1))
        runs.append((clf.predict_proba(test), clf.buffer.images.clone()))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_merge_classes_rules() -> None:
    assert merge_classes(["a", "b"], ["a", "b"]) == ["a", "b"]
    assert merge_classes(["a", "b"], ["a"]) == ["a", "b"]  # a domain without class b
    assert merge_classes(["a", "b"], ["a", "b", "c"]) == ["a", "b", "c"]
    assert merge_classes(["a", "b"], ["c", "d"]) == ["a", "b", "c", "d"]
    for bad in (["b", "a"], ["c", "a"], ["a", "c", "b"]):
        with pytest.raises(DataError, match="collides"):
            merge_classes(["a", "b"], bad)


def test_wafer_one_hot_is_the_same_in_both_memory_layouts() -> None:
    codes = torch.randint(0, 3, (4, 1, 5, 7), dtype=torch.uint8)
    ref = torch.nn.functional.one_hot(codes[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    plain = wafer_one_hot(codes)
    last = wafer_one_hot(codes, channels_last=True)
    assert torch.equal(plain, ref) and torch.equal(last, ref)
    assert last.is_contiguous(memory_format=torch.channels_last)


def test_buffer_features_from_the_folded_copy_match_the_live_model() -> None:
    """Buffer updates embed with a BatchNorm-folded copy; it must see what the model sees."""
    from inspectkit.models import build_classifier

    torch.manual_seed(0)
    net = build_classifier("compact", 3, 3, input_size=(16, 16), max_params=5000)
    tr = ReplayTrainer(net, epochs=1, batch_size=8, kind="wafer", device="cpu", progress=False)
    codes = torch.randint(0, 3, (24, 1, 16, 16), dtype=torch.uint8)
    tr.train_experience(codes, torch.arange(24) % 3, 3)  # BatchNorm statistics move
    tr.model.train()
    live = tr.features(codes)
    assert tr.model.training, "embedding must restore the training mode it found"
    folded = tr._feature_fn(fuse=True)(codes)
    assert torch.allclose(live, folded, atol=1e-4)


@pytest.mark.realdata
def test_replay_keeps_old_wafer_defects_that_fine_tuning_forgets(wm811k_dir) -> None:
    """Three experiences of real WM-811K maps (new defect types each): fine-tuning forgets
    every old class, replay from a 100-map memory keeps a good share of them."""
    train = load_wafer_maps(wm811k_dir / "WM811K_train_10_split.npz")
    test = load_wafer_maps(wm811k_dir / "WM811K_test_data.npz")
    rng, by_class = random.Random(0), {}
    for i, s in enumerate(test.samples):
        by_class.setdefault(s.label, []).append(i)
    test = test.subset(sorted(i for v in by_class.values() for i in rng.sample(v, min(60, len(v)))))
    order = [["none", "Center", "Edge-Ring"], ["Edge-Loc", "Loc"], ["Scratch", "Random"]]
    stream = class_incremental_stream(train, test, order, max_train_per_class=150, seed=0)
    wrangle = Wrangle(size=32)
    for e in stream:
        e.train, e.test = wrangle.run(e.train), wrangle.run(e.test)

    def run(buffer: str) -> tuple[dict[str, float], list[list[float]], list[str]]:
        clf = ContinualClassifier(
            arch="compact", max_params=30_000, epochs=6, batch_size=32, lr=3e-3, buffer=buffer,
            capacity=100, device="cpu", progress=False, seed=0,
        )  # fmt: skip
        rows = []
        for t, e in enumerate(stream):
            clf.fit(e.train) if t == 0 else clf.update(e.train)
            row = []
            for seen in stream[: t + 1]:
                pred = [clf.classes[k] for k in clf.predict_proba(seen.test).argmax(1).tolist()]
                row.append(sum(p == s.label for p, s in zip(pred, seen.test.samples)) / len(pred))
            rows.append(row)
        return continual_summary(accuracy_matrix(rows)), rows, clf.classes

    finetune, ft_rows, classes = run("none")
    assert classes == [c for group in order for c in group]
    assert ft_rows[0][0] > 0.7  # the first three patterns are learned (chance: 1/3)
    assert max(ft_rows[-1][:2]) < 0.1  # fine-tuning forgets every old defect type
    for buffer in ("reservoir", "snnl"):
        replay, rows, _ = run(buffer)
        assert rows[-1][0] >= 0.25, buffer  # the first experience's classes survive two updates
        assert replay["forgetting"] <= finetune["forgetting"] - 0.2, buffer
        assert replay["final_avg_accuracy"] > finetune["final_avg_accuracy"], buffer


# ---------------------------------------------------------------------- one loop, one contract
def test_predict_refuses_other_sizes_as_update_does() -> None:
    clf = _clf().fit(_exp(0))
    bigger = _set(["a", "b"], ["a", "b"], 2, seed=3, prefix="p")
    bigger = bigger.replace(
        images=torch.nn.functional.interpolate(bigger.images.float(), size=(20, 20)).to(torch.uint8)
    )
    for call in (clf.predict_proba, clf.run, clf.update):
        with pytest.raises(DataError, match=r"20×20 but the model was trained on 12×12.*Wrangle"):
            call(bigger)
    ragged = bigger.subset([0, 1]).replace(images=[bigger.images[0], _exp(0).images[0]])
    with pytest.raises(DataError, match="Wrangle"):
        clf.predict_proba(ragged)


def test_replay_batches_join_memory_and_see_each_batch_after_its_step() -> None:
    from inspectkit.continual.trainer import ReplayBatches

    memory = ReservoirBuffer(10, seed=0)
    memory.update(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.full((10,), 3))
    seen: list[torch.Tensor] = []
    batches = ReplayBatches(
        torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous(),
        torch.arange(20) % 3,
        batch_size=8,
        buffer=memory,
        replay_ratio=0.5,
        seed=1,
        after_batch=lambda x, y: seen.append(x[:, 0, 0, 0].clone()),
    )
    assert len(batches) == 3
    firsts = []
    for step, (x, y) in enumerate(batches):
        assert len(seen) == step  # the previous batch was handed over after its step
        new = x[y != 3]
        assert len(x) == 2 * len(new) and bool((y[len(new) :] == 3).all())
        firsts.append(new[:, 0, 0, 0])
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(seen, firsts))
    assert sorted(torch.cat(seen).tolist()) == list(range(20))  # one epoch: every sample once
    shares = batches.class_shares(4)
    assert torch.isclose(shares.sum(), torch.tensor(1.0, dtype=shares.dtype))
    assert float(shares[3]) == 0.5  # half of every joined batch comes from memory (class 3)


def test_continual_training_gets_validation_early_stopping_and_ema_from_the_one_loop() -> None:
    clf = _clf(epochs=30, val_fraction=0.25, patience=4, schedule="onecycle", ema=0.9)
    clf.fit(_exp(0, n_per=24)).update(_exp(1, n_per=24))
    for entry in clf.history:
        assert entry["stopped_early"] and entry["epochs"] < 30
        assert 0 <= entry["best_epoch"] < entry["epochs"] and 0 < entry["val_macro_f1"] <= 1
        assert not entry["one_class"]
    # held-out samples are not trained on, but may enter the memory afterwards
    assert clf.buffer is not None and len(clf.buffer) == 30
    test = _set(ALL[:3], ALL[:3], 6, seed=21, prefix="t")
    acc = (clf.predict_proba(test).argmax(1) == test.targets()).float().mean()
    assert float(acc) > 0.6


def test_state_is_versioned_and_0_1_states_still_load(tmp_path) -> None:
    from inspectkit.continual.stage import STATE_VERSION
    from inspectkit.errors import PersistenceError

    clf = _clf().fit(_exp(0))
    state = clf.get_state()
    assert state["version"] == STATE_VERSION == 2 and state["input"]["size_policy"] == "refuse"
    old = {k: v for k, v in state.items() if k not in ("version", "input")}
    old.update(kind="image", channels=1, size=[SIZE, SIZE])  # the 0.1 layout
    back = _clf()
    back.set_state(old)
    test = _set(["a", "b"], ["a", "b"], 3, seed=8, prefix="t")
    # 0.1 fed photos as [0, 1] floats: the migrated contract keeps that (no mean/std)
    assert back.input_spec is not None and back.input_spec.mean is None
    plain = _clf()
    plain.set_state({**state, "input": {**state["input"], "mean": None, "std": None}})
    assert torch.allclose(back.predict_proba(test), plain.predict_proba(test), atol=1e-6)
    with pytest.raises(PersistenceError, match="newer"):
        _clf().set_state({**state, "version": STATE_VERSION + 1})


def test_photos_are_standardised_with_the_first_experience_statistics() -> None:
    clf = _clf().fit(_exp(0))
    spec = clf.input_spec
    assert spec is not None and spec.kind == "image" and spec.mean is not None
    x = spec.encode(_exp(0).images)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
