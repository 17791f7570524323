"""Good-only anomaly detection: detectors, stage, calibration, persistence, bad input."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from inspectkit import Pipeline
from inspectkit.anomaly import (
    AnomalyDetector,
    Ensemble,
    PaDiM,
    PatchCore,
    SelfSupervised,
    cutpaste,
    f1_optimal_threshold,
    greedy_coreset,
    normalize,
    threshold_at_false_alarm_rate,
)
from inspectkit.anomaly.ensemble import feature_plan
from inspectkit.anomaly.patchcore import nearest_distances
from inspectkit.errors import ConfigError, DataError, InspectkitError, NotFittedError
from inspectkit.metrics.anomaly import image_auroc
from inspectkit.models.features import FeatureExtractor
from inspectkit.ops import to_float
from inspectkit.records import AnomalyScores, ImageSet, SampleMeta

SIZE = 64
RADIUS = 6


def textures(n: int, seed: int, defect: bool = False) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Striped gray textures (random period and phase, mild noise); defects are dark discs."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    imgs, masks, centres = [], [], []
    for _ in range(n):
        f = 2 * math.pi / 10
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        img = 0.5 + 0.25 * torch.sin(f * xx + phase) + 0.03 * torch.randn(SIZE, SIZE, generator=g)
        mask = torch.zeros(SIZE, SIZE)
        if defect:
            cy, cx = torch.randint(14, SIZE - 14, (2,), generator=g).tolist()
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS**2
            img[disc] = 0.05
            mask[disc] = 1
            centres.append((cy, cx))
        imgs.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
        masks.append(mask.to(torch.uint8))
    return torch.stack(imgs).unsqueeze(1), torch.stack(masks).unsqueeze(1), centres


def image_set(images: torch.Tensor, label: str | None, prefix: str, masks=None) -> ImageSet:
    samples = [SampleMeta(id=f"{prefix}{i}", label=label) for i in range(images.shape[0])]
    return ImageSet(images=images, masks=masks, samples=samples, classes=["good", "bad"])


@pytest.fixture(scope="module")
def data() -> dict:
    good, _, _ = textures(24, seed=0)
    test_good, test_good_masks, _ = textures(8, seed=1)
    test_bad, test_bad_masks, centres = textures(8, seed=2, defect=True)
    test = ImageSet.concat(
        [
            image_set(test_good, "good", "tg", test_good_masks),
            image_set(test_bad, "bad", "tb", test_bad_masks),
        ]
    )
    return {"train": image_set(good, "good", "g"), "test": test, "centres": centres}


FAST_OPTIONS = {
    "patchcore": {"coreset_ratio": 0.5, "layers": ["layer1", "layer2"]},
    "padim": {"n_features": 64},
    "autoencoder": {"epochs": 12, "batch_size": 8},
    "selfsupervised": {"steps": 8, "crop_size": 32, "batch_size": 8, "n_features": 48},
}
FAST_OPTIONS["ensemble"] = {
    "holdout": 0.25,
    "members": [
        {"method": "patchcore", **FAST_OPTIONS["patchcore"]},
        {"method": "padim", **FAST_OPTIONS["padim"]},
    ],
}


def small_detector(method: str, options: dict | None = None, **config) -> AnomalyDetector:
    """The tests' stage: small options, threshold from a quarter of the goods at 20 %."""
    return AnomalyDetector(
        method=method,
        size=SIZE,
        options={**FAST_OPTIONS[method], **(options or {})},
        progress=False,
        calibration_fraction=0.25,
        target_false_alarm_rate=0.2,
        device="cpu",
        **config,
    )


@pytest.fixture(scope="module")
def fitted(data) -> dict:
    """One fitted stage per method, shared by the tests below (fitting is the slow part)."""
    return {method: small_detector(method).fit(data["train"]) for method in FAST_OPTIONS}


@pytest.mark.parametrize("method", list(FAST_OPTIONS))
def test_defects_score_higher_and_maps_peak_at_defect(fitted, data, method):
    res = fitted[method].run(data["test"])
    assert isinstance(res, AnomalyScores)
    assert tuple(res.maps.shape) == (16, SIZE, SIZE)
    good, bad = res.scores[:8], res.scores[8:]
    assert float(bad.mean()) > float(good.mean())
    assert image_auroc(res) >= 0.9
    # the anomaly map of a defective image peaks at (or right next to) the defect
    hits = 0
    for i, (cy, cx) in enumerate(data["centres"]):
        peak = int(res.maps[8 + i].argmax())
        py, px = divmod(peak, SIZE)
        hits += math.hypot(py - cy, px - cx) <= RADIUS + 8
    assert hits >= 6, f"{method}: map peaked at the defect in {hits}/8 images"
    # verdicts and normalised scores agree with the threshold
    assert res.threshold is not None
    assert torch.equal(res.is_anomalous, res.scores > res.threshold)
    assert torch.equal(res.normalized > 0.5, res.is_anomalous)


@pytest.mark.parametrize("method", list(FAST_OPTIONS))
def test_save_load_through_pipeline_gives_identical_scores(fitted, data, method, tmp_path):
    pipe = Pipeline([fitted[method]])
    before = pipe.run(data["test"])
    pipe.save(tmp_path / "model")
    loaded = Pipeline.load(tmp_path / "model")
    after = loaded.run(data["test"])
    assert torch.equal(before.scores, after.scores)
    assert torch.equal(before.maps, after.maps)
    assert after.threshold == before.threshold
    assert torch.equal(before.normalized, after.normalized)


def test_calibration_hits_target_false_alarm_rate(fitted):
    det = fitted["padim"]
    cal_imgs, _, _ = textures(60, seed=11)
    fresh_imgs, _, _ = textures(60, seed=12)
    det_copy = AnomalyDetector(**det.config.model_dump())
    det_copy.set_state(det.get_state())
    det_copy.calibrate(image_set(cal_imgs, "good", "c"), target_false_alarm_rate=0.25)
    cal = det_copy.run(image_set(cal_imgs, "good", "c"))
    rate = float(cal.is_anomalous.float().mean())
    assert 0.25 - 1 / 60 <= rate <= 0.25  # exact on the calibration images
    fresh = det_copy.run(image_set(fresh_imgs, "good", "f"))
    assert abs(float(fresh.is_anomalous.float().mean()) - 0.25) <= 0.17


def test_threshold_quantile_on_many_scores():
    scores = torch.randn(20_000, generator=torch.Generator().manual_seed(0))
    for rate in (0.005, 0.05, 0.3):
        thr = threshold_at_false_alarm_rate(scores, rate)
        assert abs(float((scores > thr).float().mean()) - rate) <= 1 / 20_000
        fresh = torch.randn(20_000, generator=torch.Generator().manual_seed(1))
        assert abs(float((fresh > thr).float().mean()) - rate) < 0.01


def test_f1_optimal_threshold_separates_labelled_defects():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.8])
    bad = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    thr = f1_optimal_threshold(scores, bad)
    assert torch.equal(scores > thr, bad.bool())


def test_calibrate_with_defects_uses_f1(fitted, data):
    det = AnomalyDetector(**fitted["patchcore"].config.model_dump())
    det.set_state(fitted["patchcore"].get_state())
    det.calibrate(data["test"])
    res = det.run(data["test"])
    truth = torch.tensor([lab == "bad" for lab in res.labels])
    assert float((res.is_anomalous == truth).float().mean()) >= 0.9


def test_normalize_maps_threshold_to_half():
    out = normalize(
        torch.tensor([-1.0, 0.0, 2.0, 5.0, 10.0, 20.0]), threshold=5.0, low=0.0, high=10.0
    )
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.2, 0.5, 1.0, 1.0])


# ---------------------------------------------------------------------- building blocks
def test_greedy_coreset_covers_better_than_random():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 8, generator=g) * 10
    x = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(1000, 8, generator=g)
    sel = greedy_coreset(x, 20, generator=torch.Generator().manual_seed(0))
    assert len(set(sel.tolist())) == 20
    radius = torch.cdist(x, x[sel]).min(1).values.max()
    rand = torch.randperm(1000, generator=g)[:20]
    radius_rand = torch.cdist(x, x[rand]).min(1).values.max()
    assert radius < 1.0 < radius_rand  # one pick per cluster vs. missed clusters


def test_projected_search_finds_true_neighbours_on_structured_features():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(16, 384, generator=g)
    bank = torch.randn(3000, 16, generator=g) @ basis
    queries = torch.randn(500, 16, generator=g) @ basis
    exact_d, exact_i = nearest_distances(queries, bank)
    proj = torch.randn(384, 64, generator=g) / 8
    d, i = nearest_distances(queries, bank, projection=proj, rerank=16)
    assert float((i == exact_i).float().mean()) >= 0.95
    rel = (d - exact_d) / exact_d
    assert float(rel.min()) >= -1e-4  # never closer than the true neighbour
    assert float(rel.mean()) < 0.005 and float(rel.max()) < 0.1


def test_patchcore_bank_respects_ratio_and_cap():
    imgs, _, _ = textures(6, seed=3)
    pc = PatchCore(coreset_ratio=0.5, max_bank_size=40, progress=False, device="cpu").fit(imgs)
    assert pc.memory_bank.shape[0] <= 40
    pc2 = PatchCore(
        coreset_ratio=0.25, max_bank_size=None, chunk_size=64, progress=False, device="cpu"
    )
    pc2.fit(imgs)
    assert pc2.memory_bank.shape[0] == 6 * 64 // 4  # 8×8 grid per 64-px image, chunks of 64


def test_custom_module_backbone_with_layer_names():
    net = nn.Sequential()
    net.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU()))
    net.add_module("mid", nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU()))
    net.add_module("deep", nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU()))
    good, _, _ = textures(8, seed=4)
    pc = PatchCore(backbone=net, layers=["mid", "deep"], progress=False, device="cpu").fit(good)
    scores, maps = pc.score(good[:2])
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)


def test_cutpaste_changes_a_local_region_only():
    img = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))
    for scar in (False, True):
        out = cutpaste(img, torch.Generator().manual_seed(1), scar=scar)
        changed = (out != img).float().mean()
        assert 0 < float(changed) < 0.3


def test_same_seed_same_scores():
    good, _, _ = textures(6, seed=5)
    a = PaDiM(n_features=20, seed=3, progress=False, device="cpu").fit(good).score(good)[0]
    b = PaDiM(n_features=20, seed=3, progress=False, device="cpu").fit(good).score(good)[0]
    assert torch.equal(a, b)


# ---------------------------------------------------------------------- bad input
def test_fit_on_zero_images_is_refused():
    empty = ImageSet(images=torch.zeros(0, 1, SIZE, SIZE, dtype=torch.uint8), samples=[])
    with pytest.raises(DataError, match="empty"):
        AnomalyDetector(method="padim", size=SIZE, progress=False).fit(empty)
    with pytest.raises(DataError, match="at least one good image"):
        PaDiM(progress=False).fit(torch.zeros(0, 1, SIZE, SIZE))


def test_predict_before_fit_is_refused(data):
    with pytest.raises(NotFittedError, match="fit"):
        AnomalyDetector(method="padim", size=SIZE, progress=False).run(data["test"])
    with pytest.raises(NotFittedError, match="fitted"):
        PatchCore(progress=False).score(torch.rand(1, 1, SIZE, SIZE))


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_target_rate_outside_open_unit_interval_is_refused(rate, fitted, data):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        AnomalyDetector(method="padim", target_false_alarm_rate=rate)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        threshold_at_false_alarm_rate(torch.rand(10), rate)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        fitted["padim"].calibrate(data["test"], target_false_alarm_rate=rate)


def test_weights_file_for_another_backbone_is_refused(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "r18.pt"
    torch.save(resnet18(weights=None).state_dict(), path)
    FeatureExtractor("resnet18", ["layer2"], weights=path)  # the right file loads
    det = AnomalyDetector(method="patchcore", backbone="resnet34", weights=str(path), size=32)
    with pytest.raises(ConfigError, match="does not match the architecture"):
        det.fit(image_set(textures(4, seed=7)[0], "good", "w"))
    junk = tmp_path / "junk.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, junk)
    with pytest.raises(ConfigError, match="does not match"):
        PatchCore(backbone="resnet18", weights=junk)
    with pytest.raises(ConfigError, match="does not exist"):
        PatchCore(backbone="resnet18", weights=tmp_path / "missing.pt")


def test_defective_samples_in_fit_are_refused_or_dropped(data, caplog):
    mixed = data["test"]
    with pytest.raises(DataError, match="labelled defective"):
        AnomalyDetector(method="padim", size=SIZE, progress=False).fit(mixed)
    det = AnomalyDetector(
        method="padim", size=SIZE, progress=False, on_defective="drop", options={"n_features": 16}
    )
    with caplog.at_level(logging.WARNING):
        det.fit(mixed)
    assert "dropping 8 defective" in caplog.text
    only_bad = mixed.subset(range(8, 16))
    with pytest.raises(DataError, match="nothing good"):
        AnomalyDetector(method="padim", size=SIZE, on_defective="drop", progress=False).fit(
            only_bad
        )


def test_mixed_image_sizes_are_resized(data):
    imgs, _, _ = textures(6, seed=6)
    ragged = [imgs[i, :, : 40 + 4 * i, :] for i in range(6)]
    ragged_set = ImageSet(images=ragged, samples=[SampleMeta(id=str(i)) for i in range(6)])
    det = AnomalyDetector(method="padim", size=32, progress=False, options={"n_features": 16})
    res = det.fit(ragged_set).run(ragged_set)
    assert tuple(res.maps.shape) == (6, 32, 32)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="options"):
        AnomalyDetector(method="patchcore", options={"coreset_rate": 0.1})
    with pytest.raises(ConfigError, match="coreset_ratio"):
        AnomalyDetector(method="patchcore", options={"coreset_ratio": 0})
    with pytest.raises(ConfigError, match="unknown backbone"):
        AnomalyDetector(method="padim", backbone="resnet_does_not_exist")
    with pytest.raises(ConfigError, match="no layer"):
        AnomalyDetector(method="padim", layers=["layer9"])
    with pytest.raises(ConfigError, match="head"):
        SelfSupervised(head="knn")
    assert issubclass(ConfigError, InspectkitError)


def test_saved_pipeline_carries_backbone_weights(tmp_path):
    from torchvision.models import resnet18

    weights = tmp_path / "r18.pt"
    torch.manual_seed(123)
    torch.save(resnet18(weights=None).state_dict(), weights)
    imgs = image_set(textures(6, seed=8)[0], "good", "w")
    det = AnomalyDetector(method="patchcore", weights=str(weights), size=32, progress=False)
    pipe = Pipeline([det.fit(imgs)])
    before = pipe.run(imgs).scores
    seeded = AnomalyDetector(method="patchcore", size=32, progress=False).fit(imgs)
    assert not torch.equal(before, seeded.run(imgs).scores)  # the file's weights were used
    pipe.save(tmp_path / "model")
    weights.unlink()  # the saved pipeline must not need the weights file any more
    assert torch.equal(Pipeline.load(tmp_path / "model").run(imgs).scores, before)


# ---------------------------------------------------------------------- fast paths = reference
def test_inference_copy_gives_the_same_features_faster_layout():
    fx = FeatureExtractor("resnet18", ["layer1", "layer2", "layer3"], seed=1).eval()
    fast = fx.inference_copy()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # folded
    assert any(isinstance(m, nn.BatchNorm2d) for m in fx.modules())  # original untouched
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = fx(x), fast(x)
    for name in ref:
        assert torch.allclose(out[name], ref[name], rtol=1e-4, atol=1e-4), name
    assert set(fx.state_dict()) == set(FeatureExtractor("resnet18", fx.layers).state_dict())


def test_detector_uses_a_fresh_copy_after_load_state():
    good, _, _ = textures(6, seed=9)
    a = PaDiM(n_features=20, seed=1, progress=False, device="cpu").fit(good)
    b = PaDiM(n_features=20, seed=2, progress=False, device="cpu").fit(good)
    b.score(good[:1])  # builds b's cached fast extractor
    b.load_state(a.state_dict())
    assert torch.allclose(b.score(good)[0], a.score(good)[0], rtol=1e-5)


@pytest.mark.parametrize("grid,size,sigma", [((8, 8), (64, 64), 4.0), ((7, 5), (50, 33), 2.0)])
def test_fused_upsample_smooth_equals_sampling_then_blur(grid, size, sigma):
    model = PaDiM(n_features=8, sigma=sigma, progress=False, device="cpu")
    maps = torch.rand(3, *grid, generator=torch.Generator().manual_seed(0))
    fused = model.upsample_smooth(maps, size)
    ref = model.upsample_smooth_reference(maps, size)
    assert fused.shape == (3, *size)
    assert torch.allclose(fused, ref, atol=1e-5)


def test_padim_inverse_covariances_are_exact_and_chunking_changes_nothing(monkeypatch):
    # the Gaussian per position: inverses of (sample covariance + eps·I), computed from
    # float64 sums chunk by chunk, equal a direct float64 inverse of the embeddings
    g = torch.Generator().manual_seed(0)
    good = torch.rand(12, 3, 32, 32, generator=g)
    ref = PaDiM(n_features=8, progress=False, device="cpu").fit(good)
    with torch.no_grad():
        e = ref.embed(to_float(good)).double()  # N×d×h×w
    n, d, h, w = e.shape
    x = e.permute(2, 3, 0, 1).reshape(h * w, n, d)
    centred = x - x.mean(1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / (n - 1) + ref.eps * torch.eye(d, dtype=torch.float64)
    assert torch.allclose(ref.inv_cov.double(), torch.linalg.inv(cov), rtol=1e-3, atol=1e-3)
    monkeypatch.setattr(PaDiM, "POSITION_CHUNK", 5)  # chunks that do not divide the grid
    small = PaDiM(n_features=8, progress=False, device="cpu").fit(good)
    assert torch.equal(small.mean, ref.mean)
    assert torch.allclose(small.inv_cov, ref.inv_cov, rtol=1e-5, atol=1e-6)


def test_padim_embedding_equals_concatenate_then_select():
    good, _, _ = textures(4, seed=10)
    pd = PaDiM(n_features=50, progress=False, device="cpu").fit(good)
    x = good.float() / 255
    with torch.no_grad():
        feats = list(pd.extractor.eval()(x).values())
        size = feats[0].shape[-2:]
        up = [nn.functional.interpolate(f, size=size, mode="nearest") for f in feats]
        ref = torch.cat(up, 1)[:, pd.channel_index]
        assert torch.allclose(pd.embed(x), ref, rtol=1e-4, atol=1e-4)


def test_exact_search_matches_brute_force_and_bf16_search_finds_neighbours():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(16, 384, generator=g)
    bank = torch.randn(5000, 16, generator=g) @ basis + 3.0  # offset: large norms
    queries = torch.randn(700, 16, generator=g) @ basis + 3.0
    brute_d, brute_i = torch.cdist(queries, bank).min(1)
    d, i = nearest_distances(queries, bank)  # exact: float32, no projection
    assert torch.allclose(d, brute_d, rtol=1e-4)
    assert float((i == brute_i).float().mean()) >= 0.99
    proj = torch.randn(384, 64, generator=g) / 8
    d16, i16 = nearest_distances(
        queries,
        bank,
        projection=proj,
        center=bank.mean(0),
        rerank=16,
        search_dtype=torch.bfloat16,
    )
    assert float((i16 == brute_i).float().mean()) >= 0.95
    rel = (d16 - brute_d) / brute_d
    assert float(rel.min()) >= -1e-4  # exact distances to a real bank row
    assert float(rel.mean()) < 0.005


@pytest.mark.parametrize("search_dtype", [torch.float32, torch.bfloat16])
def test_the_search_answers_the_same_in_blocks_of_any_size(search_dtype, monkeypatch):
    # the blocks of distances share one buffer; the last block is shorter than the rest
    import inspectkit.anomaly.patchcore as pc_module

    g = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(3000, 24, generator=g), torch.randn(500, 24, generator=g)
    whole = nearest_distances(queries, bank, search_dtype=search_dtype)
    monkeypatch.setattr(pc_module, "_DIST_BLOCK", 3000 * 33)  # 33 rows a block
    blocks = nearest_distances(queries, bank, search_dtype=search_dtype)
    assert torch.equal(whole[1], blocks[1]) and torch.equal(whole[0], blocks[0])
    assert torch.equal(whole[1], torch.cdist(queries, bank).argmin(1))
    # queries that need gradients get fresh blocks (out= takes no part in autograd)
    graded = nearest_distances(queries.clone().requires_grad_(), bank, search_dtype=search_dtype)
    assert torch.equal(graded[1], whole[1]) and torch.equal(graded[0].detach(), whole[0])


@pytest.mark.parametrize("search_dtype", [torch.float32, torch.bfloat16])
def test_a_patch_next_to_its_neighbour_gets_its_true_small_distance(search_dtype):
    # large feature norms, patches a hair away from a bank row (a flat, clean surface):
    # ‖b‖² − 2 q·b + ‖q‖² cancels to rounding noise there, four times the true distance
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(500, 152, generator=g) * 10 + 20
    queries = bank[:64] + torch.randn(64, 152, generator=g) * 1e-3
    d, i = nearest_distances(queries, bank, search_dtype=search_dtype)
    true = (queries.double() - bank[:64].double()).norm(dim=1)
    assert torch.equal(i, torch.arange(64))
    assert torch.allclose(d.double(), true, rtol=1e-4, atol=0)


def test_patchcore_search_modes_agree(monkeypatch):
    import inspectkit.anomaly.patchcore as pc_module

    good, _, _ = textures(6, seed=11)
    test, _, _ = textures(3, seed=12, defect=True)
    pc = PatchCore(coreset_ratio=0.5, progress=False, device="cpu", search_dim=0)
    pc.search_dtype = "float32"
    exact_s, exact_m = pc.fit(good).score(test)
    pc.search_dim, pc.search_dtype = 128, "bfloat16"
    pc.reset_caches()
    small_s, _ = pc.score(test)  # a small bank is searched exactly whatever the settings
    assert pc._search_cache[2] is None and pc._search_cache[4] == torch.float32
    assert torch.allclose(small_s, exact_s, rtol=1e-4)
    monkeypatch.setattr(pc_module, "EXACT_SEARCH_MAX_BANK", 0)
    pc.reset_caches()
    s, m = pc.score(test)
    assert pc._search_cache[4] == torch.bfloat16
    assert torch.allclose(s, exact_s, rtol=0.02)
    assert float((m - exact_m).abs().mean() / exact_m.abs().mean()) < 0.01
    with pytest.raises(ConfigError, match="search_dtype"):
        PatchCore(search_dtype="float16")


@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_bfloat16_features_keep_the_verdicts(fitted, data, method, tmp_path):
    # the backbone under bfloat16 autocast: features round to ~3 digits, the ranking of
    # parts and the saved option survive
    det = small_detector(method, {"feature_dtype": "bfloat16"}).fit(data["train"])
    res = det.run(data["test"])
    ref = fitted[method].run(data["test"])
    assert image_auroc(res) >= 0.9
    corr = torch.corrcoef(torch.stack([res.scores, ref.scores]))[0, 1]
    assert float(corr) > 0.95
    assert not torch.equal(res.scores, ref.scores)  # it did run in bfloat16
    pipe = Pipeline([det])
    pipe.save(tmp_path / "bf16")
    again = Pipeline.load(tmp_path / "bf16").run(data["test"])
    assert torch.equal(again.scores, res.scores)
    with pytest.raises(ConfigError, match="feature_dtype"):
        AnomalyDetector(method=method, options={"feature_dtype": "float16"})


def test_intensity_standardisation_ignores_lighting(data, tmp_path):
    # a good part photographed darker and with less contrast is not an anomaly once
    # intensities are standardised; with raw intensities it scores far higher
    def scores(intensity: str) -> tuple[torch.Tensor, torch.Tensor, AnomalyDetector]:
        det = small_detector("padim", intensity=intensity).fit(data["train"])
        test = data["test"]
        dim = test.replace(images=(test.image_tensor().float() * 0.6 + 20).round().to(torch.uint8))
        return det.run(test).scores, det.run(dim).scores, det

    raw, raw_dim, _ = scores("raw")
    std, std_dim, det = scores("standardize")
    good = slice(0, 8)
    assert float(raw_dim[good].mean()) > 1.5 * float(raw[good].mean())
    assert torch.allclose(std_dim, std, rtol=0.1)
    assert image_auroc(det.run(data["test"])) >= 0.9
    Pipeline([det]).save(tmp_path / "std")
    again = Pipeline.load(tmp_path / "std").run(data["test"])
    assert torch.equal(again.scores, std)
    with pytest.raises(ConfigError, match="intensity"):
        AnomalyDetector(method="padim", intensity="equalize")


class Louder(PaDiM):
    """PaDiM whose scores and maps come out in other units (×1000, +5)."""

    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, m = super()._score_batch(x)
        return s * 1000 + 5, m * 1000 + 5


@pytest.mark.parametrize("image_score", ["map_max", "mean"])
def test_ensemble_members_count_the_same_whatever_their_units(data, image_score):
    # each member is put on the scale of its own held-out good scores, so a detector that
    # reports in other units neither dominates the average nor is drowned by it
    x = data["train"].image_tensor()
    test = data["test"].image_tensor()

    def members(padim_cls: type[PaDiM]) -> list:
        return [
            PatchCore(layers=["layer1", "layer2"], coreset_ratio=0.5, progress=False),
            padim_cls(n_features=64, progress=False),
        ]

    plain = Ensemble(members(PaDiM), holdout=0.25, image_score=image_score).fit(x)
    loud = Ensemble(members(Louder), holdout=0.25, image_score=image_score).fit(x)
    s_plain, m_plain = plain.score(test)
    s_loud, m_loud = loud.score(test)
    assert torch.allclose(s_plain, s_loud, atol=1e-3)
    assert torch.allclose(m_plain, m_loud, atol=1e-3)
    # held-out good parts sit at 0 on the common scale, the defects well above the goods
    _, held_out = plain.split(x.shape[0])
    h_scores, h_maps = plain.score(x[held_out])
    assert abs(float(h_maps.mean())) < 1e-3
    if image_score == "mean":
        assert abs(float(h_scores.mean())) < 1e-3
    assert float(s_plain[8:].min()) > float(s_plain[:8].mean())
    # a zero weight leaves a member out: the ranking is then the other member's alone
    alone = Ensemble(members(PaDiM), member_weights=[0, 1], holdout=0.25, image_score=image_score)
    alone.fit(x)
    fit_idx, _ = alone.split(x.shape[0])
    ref = PaDiM(n_features=64, progress=False, device="cpu").fit(x[fit_idx]).score(test)[0]
    assert torch.equal(alone.score(test)[0].argsort(), ref.argsort())


def test_ensemble_members_on_one_backbone_share_its_pass(data, monkeypatch):
    # PatchCore reads layer1+layer2, PaDiM layer1..layer3 of the same resnet18: PaDiM's one
    # pass serves both, with the very scores and maps of two passes
    x = data["train"].image_tensor()
    test = data["test"].image_tensor()

    def build(patchcore_layers=("layer1", "layer2"), padim_seed=0) -> Ensemble:
        return Ensemble(
            [
                PatchCore(layers=list(patchcore_layers), coreset_ratio=0.5, progress=False),
                PaDiM(n_features=64, progress=False, seed=padim_seed),
            ],
            holdout=0.25,
        )

    ens = build().fit(x)
    assert feature_plan(list(ens.members)) == [1, 1]
    passes: list[int] = []
    forward = FeatureExtractor.forward
    monkeypatch.setattr(
        FeatureExtractor, "forward", lambda self, t: passes.append(len(t)) or forward(self, t)
    )
    shared = ens.score(test)
    n_shared, passes[:] = len(passes), []
    ens.__dict__["_feature_plan"] = [None, None]  # each member its own pass
    own = ens.score(test)
    assert sum(passes) == 2 * len(test) and 2 * n_shared == len(passes)
    assert torch.equal(shared[0], own[0]) and torch.equal(shared[1], own[1])
    # the plan is worked out again after a load; other weights or layers not returned by
    # the other pass: each member its own
    ens.load_state(ens.state_dict())
    passes[:] = []
    assert torch.equal(ens.score(test)[0], shared[0]) and len(passes) == n_shared
    monkeypatch.setattr(FeatureExtractor, "forward", forward)
    assert feature_plan(list(build(padim_seed=1).fit(x).members)) == [None, None]
    assert feature_plan(list(build(("layer1", "layer4")).members)) == [None, None]


def test_padim_scores_the_same_whatever_its_position_chunk(data, monkeypatch):
    # the Mahalanobis distances go SCORE_CHUNK positions at a time into a reused buffer;
    # any chunk (one that does not divide the grid, or all positions at once) gives the
    # same numbers, bit for bit
    x, test = data["train"].image_tensor(), data["test"].image_tensor()
    det = PaDiM(n_features=24, progress=False, device="cpu").fit(x)
    monkeypatch.setattr(PaDiM, "SCORE_CHUNK", 10**9)
    whole = det.score(test)
    monkeypatch.setattr(PaDiM, "SCORE_CHUNK", 7)
    chunked = det.score(test)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_a_loaded_state_is_adopted_not_copied_and_stays_its_own(data):
    # the learned buffers take the state's tensors (a saved default model is ~1 GB of
    # inverse covariances: a copy would hold it twice while loading); refitting either
    # detector afterwards leaves the other as it was
    x = data["train"].image_tensor()
    test = data["test"].image_tensor()
    a = PaDiM(n_features=32, progress=False).fit(x)
    state = a.state_dict()
    b = PaDiM(n_features=32, progress=False)
    b.load_state(state)
    assert b.inv_cov.data_ptr() == state["inv_cov"].data_ptr()
    before = b.score(test)[0]
    assert torch.equal(before, a.score(test)[0])
    a.fit(x[: len(x) // 2])  # a new Gaussian for a: b keeps its own
    assert not torch.equal(a.score(test)[0], before)
    assert torch.equal(b.score(test)[0], before)
    b.fit(x[len(x) // 2 :])
    assert not torch.equal(b.score(test)[0], before)


def test_bad_ensembles_are_refused(data):
    def pc():
        return PatchCore(layers=["layer1"], progress=False, device="cpu")

    one = pc()
    with pytest.raises(ConfigError, match="at least 2"):
        Ensemble([pc()])
    with pytest.raises(ConfigError, match="twice"):
        Ensemble([one, one])
    with pytest.raises(ConfigError, match="detectors"):
        Ensemble([pc(), nn.Linear(2, 2)])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="member_weights"):
        Ensemble([pc(), pc()], member_weights=[1, -1])
    with pytest.raises(ConfigError, match="member_weights"):
        Ensemble([pc(), pc()], member_weights=[1])
    with pytest.raises(ConfigError, match="holdout"):
        Ensemble([pc(), pc()], holdout=0.9)
    with pytest.raises(ConfigError, match="image_score"):
        Ensemble([pc(), pc()], image_score="median")
    with pytest.raises(DataError, match="at least 3"):
        Ensemble([pc(), pc()]).fit(data["train"].image_tensor()[:2])
    with pytest.raises(ConfigError, match="list of dicts"):
        AnomalyDetector(method="ensemble", options={"members": "patchcore,padim"})
    with pytest.raises(ConfigError, match="member method"):
        AnomalyDetector(method="ensemble", options={"members": [{"method": "knn"}, {}]})
    with pytest.raises(ConfigError, match="coreset_rate"):
        AnomalyDetector(
            method="ensemble",
            options={"members": [{"method": "patchcore", "coreset_rate": 1}, {"method": "padim"}]},
        )
