"""Encoders, the fusion model and the classic baselines (CPU, synthetic tensors only)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_script import PlantedDataset
from sklearn.linear_model import LogisticRegression
from torchvision.models import resnet18

from geoplant.errors import GeoplantError
from geoplant.metrics import samples_f1
from geoplant.models import (
    DEFAULT_SHAPES,
    CubeResNet,
    EnvLogisticBaseline,
    EnvMLP,
    FrequencyBaseline,
    MultimodalSDM,
    ProbabilisticBaseline,
    Sentinel2ResNet,
    build_encoder,
    imagenet_weights_path,
)


def topk_f1(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    pred = np.zeros_like(y)
    np.put_along_axis(pred, top, 1, axis=1)
    return samples_f1(y, pred)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _empty_torch_hub(tmp_path: Path) -> None:
    """Every test sees an empty torchvision weights cache (no accidental pretrained/network)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield
    torch.hub.set_dir(old)


# --- encoders -----------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["landsat", "climate", "env"])
def test_default_encoder_shapes(modality: str) -> None:
    enc = build_encoder(modality).eval()
    out = enc(torch.randn(3, *DEFAULT_SHAPES[modality]))
    assert out.shape == (3, enc.out_dim)
    assert torch.isfinite(out).all()


def test_cube_resnet_variants_and_nan_input() -> None:
    x = torch.randn(2, 6, 4, 21)
    x[0, :, :, 15:] = float("nan")  # Landsat: NaN after the survey year
    light = CubeResNet(6, blocks=(1, 1), widths=(8, 16), out_dim=5).eval()
    assert light(x).shape == (2, 5) and torch.isfinite(light(x)).all()
    deep = CubeResNet.resnet18(4).eval()
    assert deep(torch.randn(2, 4, 19, 12)).shape == (2, 512)
    n_deep = sum(p.numel() for p in deep.parameters())
    assert 10e6 < n_deep < 12e6  # ResNet-18 body (11M parameters without the fc)
    assert build_encoder("climate", depth="resnet18").out_dim == 512
    with pytest.raises(GeoplantError, match="expects"):
        light(torch.randn(2, 4, 4, 21))
    with pytest.raises(GeoplantError, match="depth"):
        build_encoder("landsat", depth="resnet7")
    with pytest.raises(GeoplantError, match="unknown modality"):
        build_encoder("radar")


def test_env_mlp() -> None:
    mlp = EnvMLP(10, hidden=(16, 8)).eval()
    assert mlp(torch.randn(4, 10)).shape == (4, 8) and mlp.out_dim == 8
    with pytest.raises(GeoplantError):
        mlp(torch.randn(4, 11))


def test_sentinel2_resnet_four_channel_stem() -> None:
    enc = Sentinel2ResNet(weights=None).eval()
    assert enc.backbone.conv1.weight.shape == (64, 4, 7, 7)
    assert enc.weights_source == "random"
    assert enc(torch.randn(2, 4, 128, 128)).shape == (2, 512)
    assert enc(torch.randn(2, 4, 64, 64)).shape == (2, 512)  # GeoTIFF patches
    # each of the four channels influences the output
    x = torch.randn(1, 4, 64, 64)
    base = enc(x)
    for c in range(4):
        y = x.clone()
        y[:, c] += 1.0
        assert not torch.allclose(enc(y), base)


def test_sentinel2_weights_from_file_adapt_rgb_stem(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = resnet18()
    path = tmp_path / "rgb.pth"
    torch.save(ref.state_dict(), path)
    enc = Sentinel2ResNet(weights=path)
    w = enc.backbone.conv1.weight.detach()
    rgb = ref.conv1.weight.detach()
    assert torch.equal(w[:, :3], rgb)
    assert torch.allclose(w[:, 3], rgb.mean(dim=1))
    assert torch.equal(enc.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert enc.weights_source == str(path)
    with pytest.raises(GeoplantError, match="not found"):
        Sentinel2ResNet(weights=tmp_path / "missing.pth")


def test_sentinel2_imagenet_only_from_cache_never_downloaded(tmp_path: Path) -> None:
    cached = imagenet_weights_path("resnet18")
    assert cached.parent == Path(torch.hub.get_dir()) / "checkpoints"
    # empty cache: "auto" falls back to random, "imagenet" refuses (no download)
    assert Sentinel2ResNet().weights_source == "random"
    with pytest.raises(GeoplantError, match="not cached"):
        Sentinel2ResNet(weights="imagenet")
    # a cached file is picked up by both
    torch.manual_seed(1)
    ref = resnet18()
    cached.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), cached)
    for weights in ("auto", "imagenet"):
        enc = Sentinel2ResNet(weights=weights)
        assert enc.weights_source == "imagenet"
        assert torch.equal(enc.backbone.conv1.weight[:, :3], ref.conv1.weight)


# --- fusion -------------------------------------------------------------------------------


def _batch(b: int = 3, s2: int = 32) -> dict[str, torch.Tensor]:
    shapes = dict(DEFAULT_SHAPES, sentinel2=(4, s2, s2))
    batch = {m: torch.randn(b, *shape) for m, shape in shapes.items()}
    batch["surveyId"] = torch.arange(b)
    return batch


@pytest.mark.parametrize("mods", [["env"], ["landsat"], ["climate"], ["sentinel2"],
                                  ["landsat", "climate"],
                                  ["sentinel2", "landsat", "climate", "env"]])
def test_multimodal_any_subset(mods: list[str]) -> None:
    kwargs = {"sentinel2": {"weights": None}} if "sentinel2" in mods else {}
    model = MultimodalSDM(mods, n_species=11, encoder_kwargs=kwargs).eval()
    batch = _batch()
    assert model.modalities == tuple(mods)
    assert model.embed(batch).shape == (3, model.embed_dim)
    expected = {"env": 256, "landsat": 128, "climate": 128, "sentinel2": 512}
    assert model.embed_dim == sum(expected[m] for m in mods)
    assert model(batch).shape == (3, 11)


def test_multimodal_errors_and_prior() -> None:
    with pytest.raises(GeoplantError, match="lacks modalities"):
        MultimodalSDM(["env", "climate"], 4)({"env": torch.randn(2, 46)})
    with pytest.raises(GeoplantError, match="unused"):
        MultimodalSDM(["env"], 4, encoder_kwargs={"landsat": {}})
    with pytest.raises(GeoplantError):
        MultimodalSDM([], 4)
    prior = np.array([0.5, 0.1, 0.01, 0.9])
    model = MultimodalSDM({"env": EnvMLP(46, hidden=(8,))}, 4, prior=prior, head_hidden=16)
    expected = torch.tensor(prior, dtype=torch.float32)
    assert torch.allclose(torch.sigmoid(model.output.bias), expected, atol=1e-6)
    assert model(_batch()).shape == (3, 4)


def test_multimodal_normalizer_runs_first() -> None:
    from geoplant.torch import DeviceNormalizer

    stats = {"modalities": {
        "sentinel2": {"mean": [100.0, 90.0, 80.0, 120.0], "std": [30.0, 25.0, 20.0, 40.0]},
        "env": {"mean": list(np.linspace(-1, 1, 46)), "std": [2.0] * 46}}}
    norm = DeviceNormalizer.from_stats(stats)
    torch.manual_seed(0)
    kwargs = {"sentinel2": {"weights": None}}
    model = MultimodalSDM(["sentinel2", "env"], 7, encoder_kwargs=kwargs,
                          normalizer=norm).eval()
    plain = MultimodalSDM(["sentinel2", "env"], 7, encoder_kwargs=kwargs).eval()
    state = model.state_dict()
    assert "normalizer.sentinel2_scale" in state and "normalizer.env_offset" in state
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("normalizer.")})
    s2 = torch.randint(0, 256, (3, 4, 32, 32), dtype=torch.uint8)
    env = torch.randn(3, 46)
    env[0, 3] = float("nan")
    mean = torch.tensor(stats["modalities"]["sentinel2"]["mean"]).view(1, 4, 1, 1)
    std = torch.tensor(stats["modalities"]["sentinel2"]["std"]).view(1, 4, 1, 1)
    by_hand = {"sentinel2": (s2.float() - mean) / std,
               "env": torch.nan_to_num((env - torch.tensor(stats["modalities"]["env"]["mean"],
                                                            dtype=torch.float32)) / 2.0)}
    with torch.no_grad():
        got = model({"sentinel2": s2, "env": env})
        assert torch.allclose(got, plain(by_hand), atol=1e-4)
        assert not torch.allclose(got, plain({"sentinel2": s2.float(), "env": env}), atol=1e-2)
    assert MultimodalSDM(["env"], 3).normalizer is None


def test_multimodal_learns_planted_signal() -> None:
    """A few epochs on planted data beat chance and the frequency baseline (top-3 F1)."""
    from torch.utils.data import DataLoader

    from geoplant.train import TrainConfig, fit, predict, seed_everything

    mods = ("env", "climate", "landsat")
    train = PlantedDataset(n=512, seed=0, modalities=mods)
    test = PlantedDataset(n=256, seed=1, modalities=mods)
    seed_everything(0)
    model = MultimodalSDM(list(mods), 8, encoder_kwargs={
        "env": {"hidden": (32,)}, "climate": {"widths": (8, 16)},
        "landsat": {"widths": (8, 16)}}, prior=train.labels.mean(0))
    cfg = TrainConfig(epochs=6, lr=3e-3, warmup_epochs=0.5, top_k=3, patience=None,
                      device="cpu")
    fit(model, DataLoader(train, batch_size=32, shuffle=True), None, cfg)
    ids, probs = predict(model, DataLoader(test, batch_size=64), device="cpu")
    assert np.array_equal(ids, test.survey_ids) and probs.shape == (256, 8)
    assert probs.dtype == np.float32 and ((probs >= 0) & (probs <= 1)).all()
    rng = np.random.default_rng(0)
    f1_model = topk_f1(test.labels, probs, 3)
    f1_random = topk_f1(test.labels, rng.random(probs.shape), 3)
    f1_freq = topk_f1(test.labels, np.tile(train.labels.mean(0), (256, 1)), 3)
    f1_oracle = topk_f1(test.labels, test.prob, 3)
    assert f1_model > f1_random + 0.15
    assert f1_model > f1_freq + 0.05
    assert f1_model <= f1_oracle + 0.05


# --- classic baselines --------------------------------------------------------------------


def _planted_tables(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, PlantedDataset]:
    ds = PlantedDataset(n=n, seed=seed, modalities=("env",))
    return np.concatenate([ds.lonlat, ds.env], axis=1), ds.labels, ds


def test_baselines_share_interface() -> None:
    assert isinstance(FrequencyBaseline(), ProbabilisticBaseline)
    assert isinstance(EnvLogisticBaseline(), ProbabilisticBaseline)
    with pytest.raises(GeoplantError, match="not fitted"):
        FrequencyBaseline().predict_proba(np.zeros((1, 2)))
    with pytest.raises(GeoplantError, match="not fitted"):
        EnvLogisticBaseline().predict_proba(np.zeros((1, 2)))


def test_frequency_baseline_global_and_per_cell() -> None:
    X, Y, _ = _planted_tables(2000, 0)
    Xt, Yt, _ = _planted_tables(1000, 1)
    glob = FrequencyBaseline().fit(X, Y)
    p = glob.predict_proba(Xt)
    assert p.shape == (1000, 8) and p.dtype == np.float32
    assert np.allclose(p[0], Y.mean(0))
    cell = FrequencyBaseline(cell_size=0.5, coord_columns=(0, 1)).fit(X, Y)
    f1_random = topk_f1(Yt, np.random.default_rng(0).random(Yt.shape), 3)
    f1_global = topk_f1(Yt, p, 3)
    f1_cell = topk_f1(Yt, cell.predict_proba(Xt), 3)
    assert f1_global > f1_random + 0.05
    assert f1_cell > f1_global + 0.05  # the habitat varies in space
    # unseen cell -> global frequency; smoothing formula
    far = np.zeros((1, X.shape[1]))
    far[0, :2] = [100.0, -50.0]
    assert np.allclose(cell.predict_proba(far)[0], Y.mean(0))
    key = (int(np.floor(X[0, 0] / 0.5)), int(np.floor(X[0, 1] / 0.5)))
    inside = (np.floor(X[:, 0] / 0.5) == key[0]) & (np.floor(X[:, 1] / 0.5) == key[1])
    expected = (Y[inside].sum(0) + Y.mean(0)) / (inside.sum() + 1)
    assert np.allclose(cell.predict_proba(X[:1])[0], expected)


def test_frequency_baseline_group_column_and_sparse_labels() -> None:
    import scipy.sparse as sp

    X = np.array([[0], [0], [1], [1], [1]], dtype=float)
    Y = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]]))
    m = FrequencyBaseline(group_column=0, smoothing=0).fit(X, Y)
    assert np.allclose(m.predict_proba([[0], [1], [7]]),
                       [[1, 0], [1 / 3, 1], [0.6, 0.6]])
    with pytest.raises(GeoplantError, match="not both"):
        FrequencyBaseline(cell_size=1, group_column=0)


def test_env_logistic_matches_sklearn_and_beats_baselines() -> None:
    X, Y, _ = _planted_tables(2000, 0)
    Xt, Yt, _ = _planted_tables(1000, 1)
    Y = Y.copy()
    Y[:, 7] = 0
    Y[:3, 7] = 1  # a rare species: 3 presences < min_presences -> frequency fallback
    model = EnvLogisticBaseline(C=1.0, min_presences=5).fit(X, Y)
    assert 7 not in model.fitted_species_ and len(model.fitted_species_) == 7
    proba = model.predict_proba(Xt)
    assert proba.shape == (1000, 8) and proba.dtype == np.float32
    assert np.allclose(proba[:, 7], 3 / 2000)
    # same optimum as scikit-learn's LogisticRegression on the same features
    ref = LogisticRegression(C=1.0, max_iter=2000, tol=1e-8).fit(model._features(X), Y[:, 0])
    assert np.allclose(ref.coef_[0], model.coef_[:, 0], atol=2e-3)
    assert np.isclose(ref.intercept_[0], model.intercept_[0], atol=2e-3)
    f1_env = topk_f1(Yt[:, :7], proba[:, :7], 3)
    f1_random = topk_f1(Yt[:, :7], np.random.default_rng(0).random((1000, 7)), 3)
    f1_freq = topk_f1(Yt[:, :7], np.tile(Y[:, :7].mean(0), (1000, 1)), 3)
    assert f1_env > f1_random + 0.15
    assert f1_env > f1_freq + 0.1
    # NaN inputs are imputed, not propagated
    Xt_nan = Xt.copy()
    Xt_nan[:, 5] = np.nan
    assert np.isfinite(model.predict_proba(Xt_nan)).all()
    with pytest.raises(GeoplantError, match="features"):
        model.predict_proba(Xt[:, :5])


def test_env_logistic_speed_scaled() -> None:
    """100 species x 2,000 surveys x 48 columns (1/25 of the 500 x 10k benchmark)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 48))
    P = 1 / (1 + np.exp(-(X @ rng.normal(scale=0.3, size=(48, 100)) - 3)))
    Y = rng.random(P.shape) < P
    t0 = time.perf_counter()
    model = EnvLogisticBaseline().fit(X, Y)
    assert time.perf_counter() - t0 < 20
    assert model.coef_.shape == (96, 100)
