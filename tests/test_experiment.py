"""geoplant.experiment's torch step on the tiny world: reproducible, normalised on the
training surveys, resumable only with the same settings, DDP from one process; and the
weights' source and run settings reaching metrics and model cards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import geoplant.experiment as ex
from geoplant.errors import GeoplantError
from geoplant.stats import compute_normalization_stats
from geoplant.store import Store, open_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = {"env": {"hidden": (32,)}}


@pytest.fixture(scope="module")
def store(loader_store: Path) -> Store:
    return open_store(loader_store)


@pytest.fixture(scope="module")
def plan(store: Store) -> ex.Plan:
    return ex.make_plan(store)


def _fit(store: Store, plan: ex.Plan, **kw: Any) -> tuple[ex.Predictions, ex.Predictions, Any]:
    modalities = kw.pop("modalities", ["env"])
    args: dict[str, Any] = {"epochs": 1, "batch_size": 128, "encoder_kwargs": ENV,
                            "progress": False, **kw}
    return ex.fit_torch(store, plan, modalities, **args)


def test_seeded_cpu_runs_are_reproducible(store: Store, plan: ex.Plan) -> None:
    val_a, test_a, _ = _fit(store, plan, epochs=2)
    val_b, test_b, _ = _fit(store, plan, epochs=2)
    assert np.array_equal(val_a.probs, val_b.probs)
    assert np.array_equal(test_a.probs, test_b.probs)
    val_c, _, _ = _fit(store, plan, epochs=2, seed=1)
    assert not np.array_equal(val_a.probs, val_c.probs)


def test_normalisation_uses_the_training_surveys_only(store: Store, plan: ex.Plan,
                                                      tmp_path: Path) -> None:
    val, _, result = _fit(store, plan, out_dir=tmp_path)
    saved = json.loads((tmp_path / ex.NORMALIZATION_FILE).read_text())
    assert saved["n_surveys"] == len(plan.train_ids) == val.info["normalization_surveys"]
    expected = compute_normalization_stats(store, "pa_train", ["env"],
                                           survey_ids=plan.train_ids, write=False)
    assert saved["survey_ids_sha256"] == expected["survey_ids_sha256"]
    assert saved["modalities"]["env"]["mean"] == expected["modalities"]["env"]["mean"]
    whole = compute_normalization_stats(store, "pa_train", ["env"], write=False)
    assert saved["modalities"]["env"]["mean"] != whole["modalities"]["env"]["mean"]
    # the model normalises on the device with exactly these statistics (in its weights)
    scale = result.model.normalizer.env_scale.numpy()
    std = np.asarray(expected["modalities"]["env"]["std"])
    np.testing.assert_allclose(scale, 1 / np.where(std > 0, std, 1), rtol=1e-6)


def test_rerun_resumes_refuses_changed_settings_and_fresh_restarts(store: Store, plan: ex.Plan,
                                                                   tmp_path: Path) -> None:
    _, test_a, first = _fit(store, plan, out_dir=tmp_path)
    _, test_b, again = _fit(store, plan, out_dir=tmp_path)  # finished: resumes, trains nothing
    assert again.epochs_run == first.epochs_run == 1
    np.testing.assert_array_equal(test_a.probs, test_b.probs)
    for change in ({"lr": 0.01}, {"epochs": 2}, {"batch_size": 64},
                   {"modalities": ["env", "climate"]}):
        with pytest.raises(GeoplantError) as err:
            _fit(store, plan, out_dir=tmp_path, **change)
        text = str(err.value)
        assert "\n" not in text and "other settings" in text and "--fresh" in text, change
    _, _, fresh = _fit(store, plan, out_dir=tmp_path, lr=0.01, epochs=2, fresh=True)
    assert fresh.epochs_run == 2
    log = (tmp_path / "checkpoints" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [0, 1]


def test_two_processes_from_one_kernel(store: Store, plan: ex.Plan, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """fit_torch(nproc=2): torchrun workers train, this process predicts with their
    weights; a rerun with other settings stops before starting workers."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    val, test, result = _fit(store, plan, epochs=2, nproc=2, out_dir=tmp_path)
    assert val.info["world_size"] == 2 and val.info["device"] == "cpu"
    assert result.epochs_run == 2 and result.history[0].samples >= len(plan.train_ids)
    assert test.probs.shape == (len(plan.test_ids), len(store.species))
    assert np.isfinite(test.probs).all()
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["world_size"] == 2
    for k, v in result.model.state_dict().items():  # restore_best: best.pt's weights
        best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)["model"]
        assert torch.equal(v, best[k]), k
    with pytest.raises(GeoplantError, match=r"other settings \(lr 0.001 -> 0.01\)"):
        _fit(store, plan, epochs=2, nproc=2, out_dir=tmp_path, lr=0.01)


def test_weights_source_is_recorded_and_random_by_default(
        store: Store, plan: ex.Plan, tmp_path: Path) -> None:
    """ImageNet weights in torchvision's cache are used only when asked for."""
    from torchvision.models import resnet18

    from geoplant.models import imagenet_weights_path

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        cached = imagenet_weights_path("resnet18")
        cached.parent.mkdir(parents=True)
        torch.save(resnet18(weights=None).state_dict(), cached)  # a stand-in "ImageNet" file
        stats = compute_normalization_stats(store, "pa_train", ["sentinel2"],
                                            survey_ids=plan.train_ids, write=False)
        sources = {w: ex.weights_sources(ex._build_model(
            store, plan, ex.TorchJob(("sentinel2",), weights=w), stats))["sentinel2"]
            for w in ("random", "auto", "imagenet", None)}
    finally:
        torch.hub.set_dir(old)
    assert sources == {"random": "random", "auto": "imagenet", "imagenet": "imagenet",
                       None: "random"}
    val, _, _ = _fit(store, plan)
    assert val.info["weights_source"] == {"env": "random"}


def test_run_settings_reach_the_notebook_and_errors_come_back_in_one_line(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import papermill

    from geoplant.run import model_card, run_baseline

    seen: dict[str, Any] = {}

    def execute(*args: Any, **kwargs: Any) -> None:
        seen.update(kwargs["parameters"])
        raise papermill.PapermillExecutionError(
            cell_index=3, exec_count=3, source="", ename="GeoplantError",
            evalue="/x/checkpoints: the checkpoints here were written with other settings "
                   "(lr 0.001 -> 0.01) (fix: start over with --fresh)", traceback=[])

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    with pytest.raises(GeoplantError) as err:
        run_baseline("env-nn", store.path, tmp_path, parameters={"lr": 0.01}, progress=False,
                     nproc=2, fresh=True)
    assert str(err.value) == ("baseline 'env-nn': /x/checkpoints: the checkpoints here were "
                              "written with other settings (lr 0.001 -> 0.01) (fix: start "
                              "over with --fresh)")
    assert seen["nproc"] == 2 and seen["fresh"] is True and seen["lr"] == 0.01
    card = model_card("mme", {"notebook": "03_multimodal.ipynb"}, {},
                      {"weights_source": {"sentinel2": "random", "env": "random"},
                       "world_size": 2, "device": "cuda:0"}, store.manifest, 1.0)
    assert "Initial weights: sentinel2: random, env: random." in card
    assert "- Training: 2 processes on cuda:0" in card


def test_scores_carry_bootstrap_intervals_and_per_survey_f1(store: Store, plan: ex.Plan,
                                                            tmp_path: Path) -> None:
    val, test, _ = ex.fit_classic(store, plan, "frequency")
    decoder = ex.choose_decoder(val, progress=False)
    metrics = ex.score(store, plan, test, decoder, val, bootstrap=200, seed=2)
    for name in ("test_samples_f1", "oracle_samples_f1", "fraction_of_oracle"):
        lo, hi = metrics[f"{name}_ci"]
        assert lo < metrics[name] < hi, name
    assert metrics["bootstrap"]["n_surveys"] == len(plan.test_ids)
    ex.write_metrics(tmp_path, metrics)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert ex.PER_SURVEY_KEY not in written and written["per_survey_file"] == "per_survey.csv"
    table = ex.read_per_survey(tmp_path)
    assert sorted(table["surveyId"]) == sorted(plan.test_ids.tolist())
    assert table["f1"].mean() == pytest.approx(metrics["test_samples_f1"], abs=1e-4)
    assert table["oracle_f1"].mean() == pytest.approx(metrics["oracle_samples_f1"], abs=1e-4)
    with pytest.raises(GeoplantError, match="no per-survey scores"):
        ex.read_per_survey(tmp_path / "elsewhere")
