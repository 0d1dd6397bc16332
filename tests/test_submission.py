"""Submission files: write, read, validate (format errors name the file and the line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from geoplant.errors import GeoplantError
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
