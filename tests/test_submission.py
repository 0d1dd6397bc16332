"""Submission writer/validator and ``geoplant evaluate`` (called through ``run``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from geoplant import decode, metrics
from geoplant.errors import GeoplantError
from geoplant.evaluate import evaluate_submission, load_truth, run
from geoplant.submission import (
    read_submission,
    read_test_survey_ids,
    validate_submission,
    write_submission,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sub.csv"
    path.write_text(text)
    return path


def test_write_then_validate_roundtrip(tmp_path: Path) -> None:
    sets = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], dtype=bool))
    path = write_submission(tmp_path / "a" / "sub.csv", [7, 3], sets,
                            species_ids=[500, 12, 11254])
    assert path.read_text() == "surveyId,predictions\n7,500 11254\n3,12\n"
    sub = validate_submission(path, [3, 7])
    assert sub.sets_by_survey() == {7: pytest.approx([500, 11254]), 3: pytest.approx([12])}
    write_submission(tmp_path / "b.csv", [1, 2], [{5, 2}, [9]])
    assert (tmp_path / "b.csv").read_text() == "surveyId,predictions\n1,2 5\n2,9\n"


@pytest.mark.parametrize(("text", "match"), [
    ("surveyid,predictions\n1,2\n", "line 1: header"),
    ("surveyId,predictions\n1,2 3\n1,4\n", "line 3: surveyId 1 listed again"),
    ("surveyId,predictions\n1.5,2\n", "line 2: surveyId '1.5' is not an integer"),
    ("surveyId,predictions\n1,2.0 3\n", "line 2: species id '2.0' is not an integer"),
    ("surveyId,predictions\n1,2  3\n", "not separated by single spaces"),
    ("surveyId,predictions\n1,2,3\n", "line 2: 3 fields"),
    ("surveyId,predictions\n1,2 3 2\n", "species 2 listed twice"),
    ("surveyId,predictions\n1,11255\n", "species id 11255 outside 0..11254"),
    ("surveyId,predictions\n1,-1\n", "species id -1 outside"),
])
def test_format_errors_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(GeoplantError, match=match) as info:
        read_submission(path)
    assert str(path) in info.value.one_line() and "(fix:" in info.value.one_line()


def test_survey_coverage_and_known_species(tmp_path: Path) -> None:
    path = _write(tmp_path, "surveyId,predictions\n1,2\n2,3\n\n")  # blank line skipped
    assert len(validate_submission(path, [1, 2])) == 2
    with pytest.raises(GeoplantError, match=r"1 test survey.*missing, e.g. surveyId 9"):
        validate_submission(path, [1, 2, 9])
    with pytest.raises(GeoplantError, match="line 3: surveyId 2 is not a test survey"):
        validate_submission(path, [1])
    with pytest.raises(GeoplantError, match="line 3: species id 3 is not a known species"):
        validate_submission(path, [1, 2], known_species=[2])


def test_empty_rows_are_valid_but_warned(tmp_path: Path) -> None:
    path = _write(tmp_path, "surveyId,predictions\n1,\n2,4\n")
    with pytest.warns(UserWarning, match="1 row.*predict no species.*line 2"):
        sub = validate_submission(path, [1, 2])
    assert len(sub.predictions[0]) == 0 and sub.warnings
    with pytest.warns(UserWarning, match="no predicted species"):
        write_submission(tmp_path / "w.csv", [1], [set()])
    assert (tmp_path / "w.csv").read_text() == "surveyId,predictions\n1,\n"


def test_test_ids_from_metadata(glc24_tiny: Path) -> None:
    ids = read_test_survey_ids(glc24_tiny / "GLC24_PA_metadata_test.csv")
    assert len(ids) == len(np.load(glc24_tiny / "truth" / "pa_test_survey_ids.npy"))
    validate_submission(glc24_tiny / "GLC24_SAMPLE_SUBMISSION.csv", ids)


def _args(**kw: object) -> argparse.Namespace:
    base = {"split": None, "subset": False, "json": False}
    return argparse.Namespace(**{**base, **kw})


def test_evaluate_against_synthetic_truth(glc24_tiny: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    truth = decode.read_synthetic_truth(glc24_tiny)
    sets = decode.top_k(truth.probabilities, 10)
    sub = write_submission(tmp_path / "top10.csv", truth.survey_ids, sets,
                           species_ids=truth.species_ids)
    assert run(_args(submission=str(sub), truth=str(glc24_tiny / "truth"), json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["samples_f1"] == pytest.approx(metrics.samples_f1(truth.labels, sets))
    assert out["n_surveys"] == len(truth.survey_ids)
    assert out["oracle"]["samples_f1_expected_f1_sets"] == pytest.approx(
        metrics.samples_f1(truth.labels, decode.expected_f1_optimal(truth.probabilities)))
    # the solution file scores 1 against the presences; the text report names the oracle
    solution = glc24_tiny / "truth" / "pa_test_solution.csv"
    assert run(_args(submission=str(solution), truth=str(glc24_tiny))) == 0
    text = capsys.readouterr().out
    assert "samples-F1 (competition metric)   1.0000" in text and "oracle" in text


def test_evaluate_against_csv_truth(glc24_tiny: Path, tmp_path: Path) -> None:
    solution = glc24_tiny / "truth" / "pa_test_solution.csv"
    sample = glc24_tiny / "GLC24_SAMPLE_SUBMISSION.csv"
    as_solution = evaluate_submission(sample, load_truth(solution))
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
    truth = decode.read_synthetic_truth(glc24_tiny)
    unknown = sorted(set(range(200)) - set(truth.species_ids.tolist()))[0]
    sub = write_submission(tmp_path / "idx.csv", truth.survey_ids,
                           [[unknown]] * len(truth.survey_ids))
    with pytest.raises(GeoplantError, match=f"line 2: species id {unknown} is not a known"):
        evaluate_submission(sub, load_truth(glc24_tiny))
