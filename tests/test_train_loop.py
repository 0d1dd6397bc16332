"""geoplant.train.loop: fit (learning, logs, checkpoints, resume, early stopping), predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_script import PlantedDataset
from torch.utils.data import DataLoader

import geoplant.train
from geoplant.errors import GeoplantError
from geoplant.models import EnvMLP, MultimodalSDM
from geoplant.train import TrainConfig, fit, load_checkpoint, predict, seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env_model(seed: int = 0, n_species: int = 8) -> MultimodalSDM:
    seed_everything(seed)
    return MultimodalSDM({"env": EnvMLP(46, hidden=(32,), dropout=0.2)}, n_species,
                         dropout=0.1)


def _loaders(n_train: int = 256, n_val: int = 128, invert_val: bool = False
             ) -> tuple[DataLoader, DataLoader]:
    train = PlantedDataset(n=n_train, seed=0, modalities=("env",))
    val = PlantedDataset(n=n_val, seed=1, modalities=("env",), invert_labels=invert_val)
    return (DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64))


def test_public_names_are_reexported() -> None:
    for name in geoplant.train.__all__:
        assert getattr(geoplant.train, name) is not None, name
    assert geoplant.train.fit.__module__ == "geoplant.train.loop"


def test_config_errors() -> None:
    ds = PlantedDataset(n=16, modalities=("env",))
    with pytest.raises(GeoplantError, match="metric"):
        fit(_env_model(), DataLoader(ds, batch_size=8), None, TrainConfig(metric="auc"))
    with pytest.raises(GeoplantError, match="amp"):
        fit(_env_model(), DataLoader(ds, batch_size=8), None, TrainConfig(amp="fp8"))


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


def test_fit_without_validation_keeps_the_last_epoch(tmp_path: Path) -> None:
    train, _ = _loaders(n_train=64)
    cfg = TrainConfig(epochs=2, lr=5e-3, checkpoint_dir=str(tmp_path), device="cpu")
    result = fit(_env_model(), train, None, cfg)
    assert result.best_epoch == 1 and result.best_metric is None and not result.stopped_early
    assert result.best_checkpoint is not None
    assert load_checkpoint(result.best_checkpoint)["epoch"] == 1  # best.pt follows last.pt
    assert all(r.val_loss is None and not r.improved for r in result.history)


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


def test_resume_from_a_missing_path_fails(tmp_path: Path) -> None:
    train, val = _loaders(n_train=32, n_val=32)
    with pytest.raises(GeoplantError, match="resume checkpoint not found"):
        fit(_env_model(), train, val, TrainConfig(epochs=1, device="cpu",
                                                  resume=str(tmp_path / "nope.pt")))


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
