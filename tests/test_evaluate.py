"""``geoplant evaluate``: reference sets from CSVs or synthetic truth, scoring, the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from geoplant import metrics
from geoplant.decode import expected_f1_optimal, top_k
from geoplant.errors import GeoplantError
from geoplant.evaluate import ReferenceSets, evaluate_submission, load_truth, run
from geoplant.submission import write_submission
from geoplant.synthetic.truth import read_synthetic_truth


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sub.csv"
    path.write_text(text)
    return path


def _args(**kw: object) -> argparse.Namespace:
    base = {"split": None, "subset": False, "json": False}
    return argparse.Namespace(**{**base, **kw})


def test_evaluate_against_synthetic_truth(glc24_tiny: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    truth = read_synthetic_truth(glc24_tiny)
    sets = top_k(truth.probabilities, 10)
    sub = write_submission(tmp_path / "top10.csv", truth.survey_ids, sets,
                           species_ids=truth.species_ids)
    assert run(_args(submission=str(sub), truth=str(glc24_tiny / "truth"), json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["samples_f1"] == pytest.approx(metrics.samples_f1(truth.labels, sets))
    assert out["n_surveys"] == len(truth.survey_ids)
    assert out["oracle"]["samples_f1_expected_f1_sets"] == pytest.approx(
        metrics.samples_f1(truth.labels, expected_f1_optimal(truth.probabilities)))
    # the solution file scores 1 against the presences; the text report names the oracle
    solution = glc24_tiny / "truth" / "pa_test_solution.csv"
    assert run(_args(submission=str(solution), truth=str(glc24_tiny))) == 0
    text = capsys.readouterr().out
    assert "samples-F1 (competition metric)   1.0000" in text and "oracle" in text


def test_evaluate_against_csv_truth(glc24_tiny: Path, tmp_path: Path) -> None:
    solution = glc24_tiny / "truth" / "pa_test_solution.csv"
    sample = glc24_tiny / "GLC24_SAMPLE_SUBMISSION.csv"
    reference = load_truth(solution)
    assert isinstance(reference, ReferenceSets) and reference.kind == "solution"
    as_solution = evaluate_submission(sample, reference)
    as_folder = evaluate_submission(sample, load_truth(glc24_tiny / "truth"))
    assert as_solution["metrics"]["samples_f1"] == pytest.approx(
        as_folder["metrics"]["samples_f1"])
    assert as_solution["oracle"] is None
    # PA records CSV (float speciesIds) as truth, scoring a subset of its surveys
    train = load_truth(glc24_tiny / "GLC24_PA_metadata_train.csv")
    ids = train.survey_ids[:20]
    part = write_submission(tmp_path / "part.csv", ids, train.labels[:20],
                            species_ids=np.arange(train.labels.shape[1]))
    result = evaluate_submission(part, train, subset=True)
    assert result["metrics"]["samples_f1"] == pytest.approx(1.0)
    assert result["n_surveys"] == 20
    with pytest.raises(GeoplantError, match=r"test survey.*missing"):
        evaluate_submission(part, train)


def test_evaluate_errors(glc24_tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(GeoplantError, match="no truth for split 'pa_test_ood'"):
        load_truth(glc24_tiny / "truth", "pa_test_ood")
    bad = _write(tmp_path, "a,b\n1,2\n")
    with pytest.raises(GeoplantError, match="unrecognised columns"):
        load_truth(bad)
    # a column index written instead of a speciesId is caught by the world's species list
    truth = read_synthetic_truth(glc24_tiny)
    unknown = sorted(set(range(200)) - set(truth.species_ids.tolist()))[0]
    sub = write_submission(tmp_path / "idx.csv", truth.survey_ids,
                           [[unknown]] * len(truth.survey_ids))
    with pytest.raises(GeoplantError, match=f"line 2: species id {unknown} is not a known"):
        evaluate_submission(sub, load_truth(glc24_tiny))


def test_evaluate_intervals(glc24_tiny: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    truth = read_synthetic_truth(glc24_tiny)
    sub = write_submission(tmp_path / "top10.csv", truth.survey_ids,
                           top_k(truth.probabilities, 10), species_ids=truth.species_ids)
    assert run(_args(submission=str(sub), truth=str(glc24_tiny), json=True,
                     bootstrap=200, seed=1)) == 0
    out = json.loads(capsys.readouterr().out)
    m = out["metrics"]
    for key in ("samples_f1", "micro_f1", "macro_f1", "mean_predicted"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi, key
    assert "n_surveys_ci" not in m and out["bootstrap"] == {"n": 200, "seed": 1,
                                                            "level": 0.95}
    lo, hi = out["oracle"]["samples_f1_expected_f1_sets_ci"]
    assert lo <= out["oracle"]["samples_f1_expected_f1_sets"] <= hi
    # the same seed gives the same intervals; the text report prints them
    again = evaluate_submission(sub, load_truth(glc24_tiny), bootstrap=200, seed=1)
    assert again["metrics"]["samples_f1_ci"] == m["samples_f1_ci"]
    assert run(_args(submission=str(sub), truth=str(glc24_tiny), bootstrap=100)) == 0
    text = capsys.readouterr().out
    lo, hi = evaluate_submission(sub, load_truth(glc24_tiny), bootstrap=100)["metrics"][
        "samples_f1_ci"]
    assert f"[{lo:.4f}, {hi:.4f}]" in text and "bootstrap intervals" in text
    # no bootstrap: no intervals
    plain = evaluate_submission(sub, load_truth(glc24_tiny), bootstrap=0)
    assert "samples_f1_ci" not in plain["metrics"] and plain["bootstrap"] is None
