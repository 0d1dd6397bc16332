"""The training loop: losses, metrics, split, checkpoints/resume, early stopping, DDP (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_script import PlantedDataset
from torch.utils.data import DataLoader

from geoplant.errors import GeoplantError
from geoplant.metrics import samples_f1
from geoplant.models import EnvMLP, MultimodalSDM
from geoplant.train import (
    AsymmetricLoss,
    SoftF1Loss,
    TrainConfig,
    fit,
    load_checkpoint,
    make_loss,
    pos_weight_from_labels,
    predict,
    samples_f1_threshold,
    samples_f1_topk,
    seed_everything,
    select_device,
    spatial_block_split,
)

TESTS = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env_model(seed: int = 0, n_species: int = 8) -> MultimodalSDM:
    seed_everything(seed)
    return MultimodalSDM({"env": EnvMLP(46, hidden=(32,), dropout=0.2)}, n_species,
                         dropout=0.1)


# --- split, losses, metrics ---------------------------------------------------------------


def test_spatial_block_split_keeps_blocks_whole() -> None:
    rng = np.random.default_rng(0)
    # 200 clusters of 10 surveys within ~100 m, centred in 10-km blocks at lat ~45
    lat_c = 45.0 + (np.arange(200) // 20) * 0.1 + 0.045
    x_km = (np.arange(200) % 20) * 10.0 + 5.0
    lon_c = x_km / (111.32 * np.cos(np.deg2rad(lat_c)))
    lon = np.repeat(lon_c, 10) + rng.uniform(-5e-4, 5e-4, 2000)
    lat = np.repeat(lat_c, 10) + rng.uniform(-5e-4, 5e-4, 2000)
    mask = spatial_block_split(lon, lat, block_km=10, val_fraction=0.2, seed=3)
    assert mask.dtype == bool and mask.shape == (2000,)
    per_cluster = mask.reshape(200, 10)
    assert (per_cluster.all(1) | ~per_cluster.any(1)).all()  # clusters never split
    assert 0.2 <= mask.mean() <= 0.2 + 10 / 2000
    assert np.array_equal(mask, spatial_block_split(lon, lat, 10, 0.2, seed=3))
    assert not np.array_equal(mask, spatial_block_split(lon, lat, 10, 0.2, seed=4))
    # 100-km blocks: 2 latitude rows x 10 columns hold 20 clusters each -> coarser split
    coarse = spatial_block_split(lon, lat, block_km=100, val_fraction=0.2, seed=3)
    assert len(np.unique(coarse.reshape(200, 10)[:, 0].reshape(10, 20)[:, :10])) <= 2
    with pytest.raises(GeoplantError):
        spatial_block_split(lon, lat[:-1])
    with pytest.raises(GeoplantError):
        spatial_block_split(lon, lat, val_fraction=1.0)
    with pytest.raises(GeoplantError, match="NaN"):
        spatial_block_split(np.r_[lon[:-1], np.nan], lat)


def test_losses() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    y = (torch.rand(6, 5) < 0.3).float()
    bce_sum = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, y, reduction="none").sum(1).mean()
    # ASL without focusing and margin is BCE (summed over species)
    assert torch.allclose(AsymmetricLoss(0.0, 0.0, 0.0)(logits, y), bce_sum, atol=1e-5)
    # focusing on absences lowers their loss; the margin zeroes absences with p < clip
    assert AsymmetricLoss()(logits, y) < bce_sum
    easy = torch.full((1, 3), -5.0)
    assert AsymmetricLoss(clip=0.05)(easy, torch.zeros(1, 3)) == 0
    # soft-F1: perfect confident predictions ~0, inverted ~1
    assert SoftF1Loss()(y * 40 - 20, y) < 1e-3
    assert SoftF1Loss()(20 - y * 40, y) > 0.99
    # pos_weight enters BCE; computed from label frequencies
    pw = pos_weight_from_labels(np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 1, 1]]))
    assert torch.allclose(pw, torch.tensor([3**0.5, 3**0.5, 1.0]))
    weighted = make_loss("bce", pos_weight=[2.0] * 5)(logits, y)
    assert weighted > make_loss("bce")(logits, y)
    combo = make_loss("bce+soft_f1", soft_f1_weight=0.5)(logits, y)
    assert torch.isclose(combo, make_loss("bce")(logits, y) + 0.5 * SoftF1Loss()(logits, y))
    with pytest.raises(GeoplantError, match="unknown loss"):
        make_loss("hinge")


def test_in_loop_f1_equals_metrics_module() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((50, 12)).astype(np.float32)
    y = (rng.random((50, 12)) < 0.25).astype(np.float32)
    y[0] = 0  # an empty survey
    k = 4
    top = np.argsort(-scores, 1)[:, :k]
    pred = np.zeros_like(y)
    np.put_along_axis(pred, top, 1, 1)
    got = samples_f1_topk(torch.from_numpy(scores), torch.from_numpy(y), k).mean()
    assert np.isclose(float(got), samples_f1(y, pred), atol=1e-6)
    thr = torch.tensor([0.3, 0.7])
    per = samples_f1_threshold(torch.from_numpy(scores), torch.from_numpy(y), thr)
    for i, t in enumerate([0.3, 0.7]):
        assert np.isclose(float(per[i].mean()), samples_f1(y, scores >= t), atol=1e-6)


def test_select_device_and_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device().type in ("cpu", "mps")
    ds = PlantedDataset(n=16, modalities=("env",))
    with pytest.raises(GeoplantError, match="metric"):
        fit(_env_model(), DataLoader(ds, batch_size=8), None, TrainConfig(metric="auc"))
    with pytest.raises(GeoplantError, match="amp"):
        fit(_env_model(), DataLoader(ds, batch_size=8), None, TrainConfig(amp="fp8"))


# --- fit / predict ------------------------------------------------------------------------


def _loaders(n_train: int = 256, n_val: int = 128, invert_val: bool = False
             ) -> tuple[DataLoader, DataLoader]:
    train = PlantedDataset(n=n_train, seed=0, modalities=("env",))
    val = PlantedDataset(n=n_val, seed=1, modalities=("env",), invert_labels=invert_val)
    return (DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64))


def test_fit_learns_logs_and_checkpoints(tmp_path: Path) -> None:
    train, val = _loaders()
    cfg = TrainConfig(epochs=5, lr=5e-3, top_k=3, patience=None, warmup_epochs=1,
                      checkpoint_dir=str(tmp_path), device="cpu", loss="asl")
    result = fit(_env_model(), train, val, cfg)
    h = result.history
    assert [r.epoch for r in h] == list(range(5)) and result.epochs_run == 5
    assert h[-1].train_loss < h[0].train_loss
    assert h[-1].val_f1_topk > h[0].val_f1_topk - 0.02
    assert all(r.samples == 256 and r.samples_per_s > 0 and r.peak_memory_mb > 0 for r in h)
    assert h[0].lr > h[1].lr > h[-1].lr  # warmup over epoch 0, then cosine decay
    assert 0 < h[0].val_best_threshold < 1 and h[0].gpu_utilization is None
    assert result.best_epoch == int(np.argmax([r.val_f1_topk for r in h]))
    assert result.best_metric == max(r.val_f1_topk for r in h)
    assert result.device == "cpu"
    # checkpoints: last and best, complete, no temp files; log lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "log.jsonl"]
    last = load_checkpoint(result.last_checkpoint)
    assert last["epoch"] == 4 and {"model", "optimizer", "scheduler", "scaler", "rng",
                                   "best_metric", "config"} <= set(last)
    best = load_checkpoint(result.best_checkpoint)
    assert best["epoch"] == result.best_epoch
    for k, v in result.model.state_dict().items():  # restore_best: the model holds best.pt
        assert torch.equal(v, best["model"][k])
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(5))
    # predict on the validation loader
    ids, probs = predict(result.model, val, device="cpu")
    assert ids.dtype == np.int64 and probs.shape == (128, 8)
    assert np.array_equal(ids, val.dataset.survey_ids)
    with pytest.raises(GeoplantError, match="unreadable"):
        (tmp_path / "bad.pt").write_bytes(b"junk")
        load_checkpoint(tmp_path / "bad.pt")


def test_resume_continues_identically(tmp_path: Path) -> None:
    """Interrupted after epoch 1 then resumed == uninterrupted (losses and weights)."""
    def cfg(d: Path) -> TrainConfig:
        return TrainConfig(epochs=4, lr=5e-3, top_k=3, patience=None, seed=7,
                           checkpoint_dir=str(d), device="cpu")

    train, val = _loaders()
    full = fit(_env_model(0), train, val, cfg(tmp_path / "full"))

    first = fit(_env_model(0), train, val, cfg(tmp_path / "cut"),
                on_epoch_end=lambda rec: rec.epoch == 1)
    assert first.epochs_run == 2 and not first.stopped_early
    # a differently initialised model: everything must come from the checkpoint
    resumed = fit(_env_model(99), train, val, cfg(tmp_path / "cut"))
    assert resumed.epochs_run == 4
    assert [r.epoch for r in resumed.history] == [0, 1, 2, 3]
    np.testing.assert_allclose([r.train_loss for r in resumed.history],
                               [r.train_loss for r in full.history], rtol=1e-6)
    np.testing.assert_allclose([r.val_loss for r in resumed.history],
                               [r.val_loss for r in full.history], rtol=1e-6)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(),
                         strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    assert resumed.best_epoch == full.best_epoch
    # without resume the same folder starts over
    fresh = fit(_env_model(0), train, val, TrainConfig(
        epochs=1, top_k=3, checkpoint_dir=str(tmp_path / "cut"), resume=False, device="cpu"))
    assert fresh.epochs_run == 1


def test_early_stopping_triggers(tmp_path: Path) -> None:
    # validation labels are the complement of the planted signal: learning hurts them
    train, val = _loaders(invert_val=True)
    cfg = TrainConfig(epochs=30, lr=1e-2, warmup_epochs=0, top_k=3, metric="loss",
                      patience=2, checkpoint_dir=str(tmp_path), device="cpu")
    result = fit(_env_model(), train, val, cfg)
    losses = [r.val_loss for r in result.history]
    assert result.stopped_early and result.epochs_run < 30
    assert result.best_epoch == int(np.argmin(losses))
    assert result.epochs_run == result.best_epoch + 1 + 2  # patience epochs after the best
    assert not any(r.improved for r in result.history[result.best_epoch + 1:])
    # resuming a finished (early-stopped) run does not train further
    again = fit(_env_model(), train, val, cfg)
    assert again.stopped_early and again.epochs_run == result.epochs_run


def test_ddp_two_cpu_processes_gloo(tmp_path: Path) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(TESTS / "ddp_script.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    h0 = json.loads((tmp_path / "rank0.json").read_text())
    h1 = json.loads((tmp_path / "rank1.json").read_text())
    assert h0["world_size"] == 2 and h0["device"] == "cpu"
    losses = [r["train_loss"] for r in h0["history"]]
    assert losses[-1] < losses[0]
    # metrics are all-reduced: both ranks report the same losses and F1 over all samples
    for a, b in zip(h0["history"], h1["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_f1_topk", "samples"):
            assert a[key] == b[key], key
    assert h0["history"][0]["samples"] == 128  # two shards of 64
    # only rank 0 wrote checkpoints and logs (one log line per epoch)
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.pt", "last.pt", "log.jsonl"]
    assert len((ckpt / "log.jsonl").read_text().splitlines()) == 4
    assert load_checkpoint(ckpt / "last.pt")["world_size"] == 2
