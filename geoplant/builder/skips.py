"""Bad items (a broken file, an unknown species, a survey without env values): skipped, counted
and listed in the manifest, or fatal under ``--strict``."""

from __future__ import annotations

from typing import Any, Final

from geoplant.errors import GeoplantError

__all__ = ["STRICT_FIX", "Skips", "strict_error"]

STRICT_FIX: Final = "repair or re-download the file, or build without --strict to skip bad items"


def strict_error(kind: str, reason: str, *, survey_id: int | None = None,
                 file: str | None = None) -> GeoplantError:
    """The error a bad item raises under ``--strict``."""
    return GeoplantError(f"{kind} of survey {survey_id}: {reason}" if survey_id is not None
                         else f"{kind}: {reason}", path=file, fix=STRICT_FIX)


class Skips:
    """Bad items: counted and listed, or fatal under ``--strict``.

    Parameters
    ----------
    strict
        Raise :func:`strict_error` on the first bad item instead of listing it.
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.items: list[dict[str, Any]] = []

    def add(self, split: str, kind: str, reason: str, *, survey_id: int | None = None,
            file: str | None = None, line: int | None = None) -> None:
        """List a bad item (or raise, under ``strict``)."""
        item = {"split": split, "kind": kind, "surveyId": survey_id, "file": file, "line": line,
                "reason": reason}
        if self.strict:
            raise strict_error(kind, reason, survey_id=survey_id, file=file)
        self.items.append(item)
