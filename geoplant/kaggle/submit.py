"""``geoplant kaggle submit``: validate a submission against the competition's test surveys,
then submit it (``KaggleApi.competition_submit``).

The test surveyIds come from the RAW release's test metadata, never from a store: a survey
dropped at build (bad coordinates, a missing cube) must still be predicted, and Kaggle scores
every test survey. Every row must hold at least one species: an empty row scores 0 and
Kaggle may reject the file, and threshold decoders can leave rows empty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoplant import __version__
from geoplant.errors import GeoplantError
from geoplant.kaggle.client import kaggle_api, kaggle_error, quiet

DEFAULT_COMPETITION = "geolifeclef-2024"

#: The raw test split of each competition, by raw layout. G26 (``geoplant`` layout): the IID
#: test split carries the GLC24 test surveys (its JPEG patches are GLC24's); GLC25 has its own.
TEST_SPLITS: dict[tuple[str, str], str] = {
    ("glc24", "geolifeclef-2024"): "pa_test",
    ("geoplant", "geolifeclef-2024"): "pa_test_iid",
    ("geoplant", "geolifeclef-2025"): "pa_test_glc25",
}


@dataclass
class SubmitResult:
    """A validated (and possibly submitted) submission."""

    path: Path
    competition: str
    rows: int
    species: int
    test_metadata: str
    submitted: bool = False
    message: str | None = None
    ref: str | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A human summary, one line per item."""
        out = [f"{self.path}: valid: {self.rows} test surveys (all of {self.test_metadata}), "
               f"{self.species} predicted species in all, none empty"]
        if self.submitted:
            ref = f" (submission {self.ref})" if self.ref else ""
            out.append(f"submitted to {self.competition}{ref}: {self.message or 'ok'}")
        else:
            out.append(f"dry run: not submitted; without --dry-run this uploads it to "
                       f"{self.competition} (KaggleApi.competition_submit)")
        return out + self.notes


def competition_test_ids(raw: str | os.PathLike[str], *, competition: str = DEFAULT_COMPETITION,
                    split: str | None = None) -> tuple[np.ndarray, str]:
    """The competition's test surveyIds, read from the raw release's test metadata.

    Parameters
    ----------
    raw
        Root of the raw release (``glc24`` or ``geoplant`` layout, detected).
    competition
        Kaggle competition slug; picks the test split (see :data:`TEST_SPLITS`).
    split
        The raw test split, overriding the choice by competition.

    Returns
    -------
    (ids, source)
        Sorted unique int64 surveyIds and the metadata file they were read from.
    """
    from geoplant.raw import RawRelease

    release = RawRelease(raw)
    chosen = split or TEST_SPLITS.get((release.layout, competition))
    tests = [s for s in release.splits if s.startswith("pa_test")]
    if chosen is None:
        raise GeoplantError(f"no known test split of {competition} in a {release.layout} "
                            "release", path=raw, fix=f"pass --split (one of {', '.join(tests)})")
    if chosen not in tests:
        raise GeoplantError(f"{chosen!r} is not a test split of a {release.layout} release",
                            path=raw, fix=f"pass --split (one of {', '.join(tests)})")
    source = release.describe(release.location("metadata.pa", chosen))
    return release.survey_ids(chosen), source


def check_submission(path: str | os.PathLike[str], raw: str | os.PathLike[str], *,
                     competition: str = DEFAULT_COMPETITION,
                     split: str | None = None) -> SubmitResult:
    """Validate a submission: exact format, exactly the raw test surveys, no empty row.

    Raises
    ------
    GeoplantError
        Naming the file, the line or the missing surveyId, and the fix.
    """
    from geoplant.submission import validate_submission

    ids, source = competition_test_ids(raw, competition=competition, split=split)
    try:
        sub = validate_submission(path, ids, warn_empty=False)
    except GeoplantError as err:
        raise GeoplantError(f"{err.problem} (test surveys of {source})", path=err.path,
                            fix=err.fix) from None
    empty = [i for i, row in enumerate(sub.predictions) if len(row) == 0]
    if empty:
        i = empty[0]
        raise GeoplantError(
            f"line {int(sub.lines[i])}: surveyId {int(sub.survey_ids[i])} predicts no species "
            f"({len(empty)} empty row(s))", path=sub.path,
            fix="predict at least one species per survey (e.g. keep the top-1 species where "
                "a threshold keeps none)")
    return SubmitResult(Path(path), competition, len(sub), int(sum(map(len, sub.predictions))),
                        source)


def submit(path: str | os.PathLike[str], raw: str | os.PathLike[str], *,
           competition: str = DEFAULT_COMPETITION, message: str | None = None,
           split: str | None = None, dry_run: bool = False) -> SubmitResult:
    """Validate a submission (:func:`check_submission`), then submit it to the competition.

    Parameters
    ----------
    path
        The submission CSV (``surveyId,predictions``).
    raw
        Root of the raw release whose test metadata lists the competition's test surveys.
    competition
        Kaggle competition slug.
    message
        Submission description (default: the kit's version and the file name).
    split
        The raw test split, overriding the choice by competition.
    dry_run
        Validate only: no credentials, no network.

    Raises
    ------
    GeoplantError
        An invalid file, missing credentials, competition rules not accepted, a failed upload.
    """
    result = check_submission(path, raw, competition=competition, split=split)
    if dry_run:
        return result
    api = kaggle_api(f"submit to {competition}")
    text = message or f"geoplant {__version__}: {result.path.name}"
    try:
        with quiet():
            response = api.competition_submit(str(result.path), text, competition, quiet=True)
    except Exception as err:  # the client raises requests.HTTPError, ValueError, ...
        raise kaggle_error(err, f"submit to {competition}", path=result.path,
                           forbidden=f"accept the rules of {competition} on kaggle.com "
                                     f"(https://www.kaggle.com/competitions/{competition}/rules)",
                           not_found=f"check the competition slug {competition!r}") from None
    answer = str(getattr(response, "message", "") or "")
    if answer == getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", None):
        raise GeoplantError(f"the upload to {competition} failed", path=result.path,
                            fix="rerun; check the network")
    result.submitted, result.message = True, answer or None
    ref = getattr(response, "ref", None)
    result.ref = str(ref) if ref else None
    return result
