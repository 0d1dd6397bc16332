"""Every notebook runs on the tiny world through papermill (`geoplant run`), end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from geoplant.builder import build
from geoplant.run import list_baselines, run_baseline

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def tiny_store(glc24_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nb") / "store"
    build(glc24_tiny, out, progress=False)
    return out


def test_notebooks_are_stripped_and_parameterised() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path
    referenced = {spec["notebook"] for spec in list_baselines().values()}
    assert referenced == {p.name for p in NOTEBOOKS.glob("*.ipynb")}


#: Training settings every neural notebook exposes as parameters and passes to fit_torch.
TRAIN_PARAMETERS = ("weights", "amp", "channels_last", "torch_compile", "grad_accum_steps",
                    "nproc", "fresh", "progress")


@pytest.mark.parametrize("notebook", ["02_single_modality", "03_multimodal", "04_submission",
                                      "06_presence_only"])
def test_training_settings_are_notebook_parameters(notebook: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{notebook}.ipynb", as_version=4)
    tagged = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    defaults: dict = {}
    exec(tagged.source, {}, defaults)  # our own notebook's parameters cell
    assert {k: defaults[k] for k in TRAIN_PARAMETERS} == {
        "weights": "random", "amp": "auto", "channels_last": False, "torch_compile": False,
        "grad_accum_steps": 1, "nproc": 1, "fresh": False, "progress": True}
    call = next(c.source for c in nb.cells if "ex.fit_torch(" in c.source)
    for name in TRAIN_PARAMETERS:
        assert f"{name}={name}" in call, (notebook, name)


@pytest.mark.parametrize("name, params", [
    ("explore", {}),
    ("maps", {"top": 2, "truth_draws": 2}),
    ("env-logistic", {}),
    ("landsat-nn", {"epochs": 1}),
    ("mme-multimodal", {"epochs": 1}),
    ("submission", {"epochs": 1, "modalities": ["landsat", "env"]}),
    # one run per branch of 06_presence_only (po-maxent-target and po-env-maxent differ from
    # these by a parameter: the target-group background and DeepMaxent loss have unit tests)
    ("po-maxent-uniform", {"n_background": 500, "max_species": 3}),
    ("po-env-an", {"po_epochs": 1}),
    ("mme-po-pretrained", {"po_epochs": 1, "epochs": 1, "modalities": ["landsat", "env"]}),
])
def test_baseline_notebooks_run_and_score(tiny_store: Path, tmp_path: Path, name: str,
                                          params: dict) -> None:
    out = tmp_path / name
    metrics = run_baseline(name, tiny_store, out, parameters=params, progress=False)
    executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
    assert json.loads((out / "metrics.json").read_text()) == metrics
    card = (out / "MODEL_CARD.md").read_text()
    assert name in card and "Hardware" in card and "arXiv:2408.13928" in card
    if name == "explore":
        assert metrics["pa_surveys"] > 0 and (out / "survey_map.png").stat().st_size > 0
        return
    if name == "maps":  # wall-to-wall maps, indicators and agreement with the true maps
        assert (out / "maps" / "richness.tif").stat().st_size > 0
        assert (out / "maps" / "indicators" / "species_indicators.csv").is_file()
        lo, hi = metrics["map_spearman_mean_ci"]
        assert 0.2 < lo <= metrics["map_spearman_mean"] <= hi
        return
    assert 0 < metrics["test_samples_f1"] <= 1
    assert 0 < metrics["oracle_samples_f1"] <= 1
    assert metrics["decoder"] in ("top_k", "average_k", "threshold", "expected_f1")
    if name.startswith("po-") or name == "mme-po-pretrained":  # saved, ready for geoplant map
        assert (out / "model" / "model.json").is_file()
        assert metrics["fraction_of_oracle_ci"][0] <= metrics["fraction_of_oracle"]
    if name == "mme-po-pretrained":
        assert metrics["weights_source"]["env"] == "pretrained:po_pretrained.pt"
        assert (out / "po" / "po_pretrained.pt").is_file()
    if name == "submission":
        sub = pd.read_csv(out / "submission.csv")
        assert list(sub.columns) == ["surveyId", "predictions"]
        assert sub["surveyId"].is_unique and (out / "richness_map.png").exists()
        truth = Path(json.loads((tiny_store / "manifest.json").read_text())["raw_root"])
        scored = subprocess.run([sys.executable, "-m", "geoplant.cli", "evaluate",
                                 str(out / "submission.csv"), "--truth", str(truth / "truth"),
                                 "--json"], capture_output=True, text=True, timeout=120)
        assert scored.returncode == 0, scored.stderr
        report = json.loads(scored.stdout)
        assert abs(report["metrics"]["samples_f1"] - metrics["test_samples_f1"]) < 1e-3
        assert report["oracle"]["samples_f1_expected_f1_sets"] == pytest.approx(
            metrics["oracle_samples_f1"], abs=1e-3)


def test_run_cli_lists_and_rejects_unknown(tiny_store: Path, tmp_path: Path) -> None:
    listing = subprocess.run([sys.executable, "-m", "geoplant.cli", "run", "--list"],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "mme-multimodal" in listing.stdout
    bad = subprocess.run([sys.executable, "-m", "geoplant.cli", "run", "nope", "--data",
                          str(tiny_store), "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "unknown baseline 'nope'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
