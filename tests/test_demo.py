"""geoplant demo reuses a step's output only when it was made with the same parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import geoplant.builder
import geoplant.run
import geoplant.synthetic.release
from geoplant.demo import STATE_FILE, demo


class _Steps:
    """Stand-ins for the release writer, the builder and the baseline runner that record
    their calls and leave the files the demo checks for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        monkeypatch.setattr(geoplant.synthetic.release, "write_release", self.release)
        monkeypatch.setattr(geoplant.builder, "build", self.build)
        monkeypatch.setattr(geoplant.run, "run_baseline", self.run)

    def release(self, raw: Path, **kw: Any) -> None:
        self.calls.append(("release", kw))
        (raw / "truth").mkdir(parents=True, exist_ok=True)
        (raw / "truth" / "parameters.json").write_text(json.dumps(kw))

    def build(self, raw: Path, store: Path, **kw: Any) -> None:
        self.calls.append(("build", kw))
        store.mkdir(parents=True, exist_ok=True)
        (store / "manifest.json").write_text("{}")

    def run(self, name: str, store: Path, target: Path, **kw: Any) -> dict[str, Any]:
        self.calls.append((f"run {name}", kw))
        target.mkdir(parents=True, exist_ok=True)
        metrics = {"test_samples_f1": 0.5, "epochs": kw["parameters"].get("epochs")}
        (target / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    def take(self) -> list[str]:
        names = [name for name, _ in self.calls]
        self.calls.clear()
        return names


def test_demo_remakes_steps_whose_parameters_changed(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _Steps(monkeypatch)
    quiet = {"baselines": ("env-nn",), "maps": False, "progress": False}
    demo(tmp_path, seed=0, **quiet)
    assert steps.take() == ["release", "build", "run env-nn"]
    demo(tmp_path, seed=0, **quiet)  # same parameters: everything reused
    assert steps.take() == []

    demo(tmp_path, seed=0, epochs=2, **quiet)  # other epochs: the runs only, from scratch
    assert [(n, kw["fresh"], kw["parameters"]) for n, kw in steps.calls] == [
        ("run env-nn", True, {"epochs": 2})]
    steps.take()

    rows = demo(tmp_path, seed=1, epochs=2, **quiet)  # another world: every step
    assert steps.calls[0] == ("release", {"preset": "demo", "seed": 1, "overwrite": True,
                                          "progress": False})
    assert steps.calls[1][1]["overwrite"] is True and steps.calls[2][1]["fresh"] is True
    steps.take()
    assert rows[0]["epochs"] == 2
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["release"] == state["store"] == {"preset": "demo", "seed": 1}
    assert state["runs/env-nn"] == {"preset": "demo", "seed": 1, "epochs": 2}


def test_demo_resumes_an_interrupted_step(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _Steps(monkeypatch)
    quiet = {"baselines": ("env-nn",), "maps": False, "progress": False}
    demo(tmp_path, **quiet)
    steps.take()
    (tmp_path / "runs" / "env-nn" / "metrics.json").unlink()  # killed before it finished
    demo(tmp_path, **quiet)
    assert [(n, kw["fresh"]) for n, kw in steps.calls] == [("run env-nn", False)]


def test_demo_compares_paired_runs_and_scores_the_maps(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    import numpy as np
    import pandas as pd

    steps = _Steps(monkeypatch)
    rng = np.random.default_rng(0)
    base = 0.1 + 0.8 * rng.random(400)
    shift = {"mme-multimodal": 0.0, "mme-po-pretrained": 0.03, "env-nn": 0.0,
             "po-env-maxent": 0.0}
    inner = steps.run

    def run(name: str, store: Path, target: Path, **kw: Any) -> dict[str, Any]:
        metrics = inner(name, store, target, **kw)
        if name == "maps":
            metrics = {"model": "env-logistic", "valid_cells": 1234, "map_spearman_mean": 0.61,
                       "map_spearman_mean_ci": [0.55, 0.66], "map_n_species": 40,
                       "map_n_species_ranked": 30,
                       "map_richness_pearson": 0.7}
        else:  # the same surveys, one model better by 0.03 on each, one equal but noisier
            f1 = np.clip(base + shift[name] + (rng.normal(0, 0.2, 400) if name == "po-env-maxent"
                                               else 0), 0, 1)
            pd.DataFrame({"surveyId": np.arange(400), "f1": f1}).to_csv(
                target / "per_survey.csv", index=False)
        return metrics

    monkeypatch.setattr(geoplant.run, "run_baseline", run)
    demo(tmp_path, baselines=tuple(shift), progress=False)
    out = capsys.readouterr().out
    assert "mme-po-pretrained - mme-multimodal: +0.0300" in out
    assert "mme-po-pretrained is better" in out
    assert "po-env-maxent - env-nn" in out and "no difference the interval allows" in out
    assert "po-maxent-target" not in out  # pairs that did not run are not compared
    assert "Spearman 0.610 [0.550, 0.660] (mean over the 30 of 40 species whose map" in out
    assert [n for n, _ in steps.calls][-1] == "run maps"
