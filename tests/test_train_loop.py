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


# ---------------------------------------------------------------------------------------------
# resume correctness, NaN, accumulation, layouts, progress


def test_resume_without_validation_ends_on_the_last_epoch(tmp_path: Path) -> None:
    """Without validation the latest epoch is the best: a resumed run must not restore the
    interrupted epoch's weights (best.pt at resume time) at the end."""
    train, _ = _loaders(n_train=64)
    cfg = TrainConfig(epochs=3, lr=5e-3, checkpoint_dir=str(tmp_path), device="cpu",
                      progress=False)
    fit(_env_model(), train, None, cfg, on_epoch_end=lambda rec: rec.epoch == 0)
    interrupted = load_checkpoint(tmp_path / "last.pt")["model"]
    resumed = fit(_env_model(), train, None, cfg)
    assert resumed.epochs_run == 3 and resumed.best_epoch == 2
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 2
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, last["model"][k]), k
    assert not all(torch.equal(v, interrupted[k]) for k, v in resumed.model.state_dict().items())


def _one_line_error(err: pytest.ExceptionInfo[GeoplantError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_resume_refuses_other_settings_and_fresh_starts_over(tmp_path: Path) -> None:
    train, val = _loaders(n_train=64, n_val=32)

    def cfg(**kw: object) -> TrainConfig:
        base: dict = {"epochs": 2, "lr": 5e-3, "top_k": 3, "checkpoint_dir": str(tmp_path),
                      "device": "cpu", "progress": False,
                      "extra_settings": {"batch_size": 32}}
        return TrainConfig(**{**base, **kw})

    fit(_env_model(), train, val, cfg())
    for change, shown in [({"lr": 1e-2}, "lr 0.005 -> 0.01"), ({"epochs": 3}, "epochs 2 -> 3"),
                          ({"extra_settings": {"batch_size": 16}}, "batch_size 32 -> 16")]:
        with pytest.raises(GeoplantError) as err:
            fit(_env_model(), train, val, cfg(**change))
        text = _one_line_error(err)
        assert "other settings" in text and shown in text and "--fresh" in text
    # where and how fast it runs may change: device, progress, compile, channels_last...
    again = fit(_env_model(), train, val, cfg(progress=True, channels_last=True))
    assert again.epochs_run == 2
    # resume=False (--fresh) discards the old checkpoints and log, then trains anew
    fresh = fit(_env_model(), train, val, cfg(lr=1e-2, epochs=3, resume=False))
    assert fresh.epochs_run == 3
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]
    assert load_checkpoint(tmp_path / "last.pt")["settings"]["lr"] == 1e-2


def test_resume_refuses_another_model_in_one_line(tmp_path: Path) -> None:
    train, _ = _loaders(n_train=32)
    cfg = TrainConfig(epochs=1, checkpoint_dir=str(tmp_path), device="cpu", progress=False)
    fit(_env_model(n_species=8), train, None, cfg)
    seed_everything(0)
    other = MultimodalSDM({"env": EnvMLP(46, hidden=(16,))}, 8)  # another encoder width
    with pytest.raises(GeoplantError) as err:
        fit(other, train, None, cfg)  # same settings, another model
    assert "another model" in _one_line_error(err)


class _PoisonedLabels(PlantedDataset):
    """Labels of the surveys ``poisoned`` are NaN: their batch's loss is NaN."""

    def __init__(self, poisoned: slice, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.labels = self.labels.copy()
        self.labels[poisoned] = np.nan


@pytest.mark.parametrize("grad_clip", [5.0, None])
def test_nan_loss_stops_before_the_optimizer_step(tmp_path: Path,
                                                  grad_clip: float | None) -> None:
    ds = _PoisonedLabels(slice(32, 48), n=64, modalities=("env",))
    loader = DataLoader(ds, batch_size=16)  # batch 2 (0-based) is poisoned
    model = _env_model()
    with pytest.raises(GeoplantError, match="not finite at epoch 0 step 2") as err:
        fit(model, loader, None, TrainConfig(epochs=1, device="cpu", grad_clip=grad_clip,
                                             progress=False))
    assert "weights were left as before" in _one_line_error(err)
    # the weights are those after step 1: finite, and equal to a run that stops there
    # (same warmup: 4 steps there, 2 steps x 2 epochs here)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    reference = _env_model()
    fit(reference, loader, None, TrainConfig(epochs=1, device="cpu", grad_clip=grad_clip,
                                             steps_per_epoch=2, warmup_epochs=2,
                                             progress=False))
    # (parameters: BatchNorm's running statistics saw the poisoned batch's forward pass)
    for (k, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b), k


class _LinearOnEnv(torch.nn.Module):
    """No BatchNorm or dropout: a gradient over a batch is the mean over its halves'."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(46, 8)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(batch["env"])


def test_gradient_accumulation_equals_a_larger_batch() -> None:
    ds = PlantedDataset(n=128, modalities=("env",))

    def run(batch_size: int, accum: int) -> dict[str, torch.Tensor]:
        seed_everything(0)
        model = _LinearOnEnv()
        fit(model, DataLoader(ds, batch_size=batch_size), None, TrainConfig(
            epochs=2, lr=1e-2, warmup_epochs=0.5, grad_accum_steps=accum, device="cpu",
            progress=False))
        return model.state_dict()

    big, accumulated, plain = run(32, 1), run(16, 2), run(16, 1)
    for k in big:
        torch.testing.assert_close(accumulated[k], big[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain["linear.weight"], big["linear.weight"], atol=1e-4)
    with pytest.raises(GeoplantError, match="grad_accum_steps"):
        fit(_LinearOnEnv(), DataLoader(ds, batch_size=16), None,
            TrainConfig(grad_accum_steps=0, device="cpu"))


def test_channels_last_and_compile_train_like_the_plain_model() -> None:
    from geoplant.models import CubeResNet

    ds = PlantedDataset(n=64, modalities=("env", "climate"))

    def run(**kw: object) -> tuple[MultimodalSDM, list[float]]:
        seed_everything(0)
        model = MultimodalSDM({"climate": CubeResNet(4, widths=(8, 16))}, 8)
        result = fit(model, DataLoader(ds, batch_size=32), None,
                     TrainConfig(epochs=2, lr=3e-3, device="cpu", progress=False, **kw))
        return result.model, [h.train_loss for h in result.history]

    _, plain = run()
    model, fast = run(channels_last=True, compile="eager")
    np.testing.assert_allclose(fast, plain, rtol=1e-4)
    assert not hasattr(model, "_orig_mod")  # the plain module comes back, plain layout
    conv = model.encoders["climate"].stem[0].weight
    assert conv.is_contiguous()


def test_progress_prints_one_summary_line_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    train, val = _loaders(n_train=64, n_val=32)
    fit(_env_model(), train, val, TrainConfig(epochs=2, top_k=3, device="cpu"))
    out = capsys.readouterr()
    lines = [x for x in out.out.splitlines() if x.startswith("epoch ")]
    assert [x.split()[1] for x in lines] == ["1/2", "2/2"]
    assert all("train_loss" in x and "val_f1_topk" in x and "samples/s" in x for x in lines)
    assert "epoch 1/2" in out.err  # the tqdm bar
    predict(_env_model(), val, device="cpu")
    assert "predict" in capsys.readouterr().err
    fit(_env_model(), train, val, TrainConfig(epochs=1, top_k=3, device="cpu", progress=False))
    predict(_env_model(), val, device="cpu", progress=False)
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
