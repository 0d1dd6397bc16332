"""The kit's one error type: what went wrong, where, and how to fix it, in one line."""

from __future__ import annotations

from os import PathLike


class GeoplantError(Exception):
    """A user-facing error: bad input, a missing or corrupt file, a bad argument.

    Parameters
    ----------
    problem
        What is wrong, e.g. ``"missing column 'surveyId'"``.
    path
        The file or folder concerned, if any.
    fix
        What the user should do about it.
    """

    def __init__(
        self, problem: str, *, path: str | PathLike[str] | None = None, fix: str | None = None
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Return the message as one line: ``<path>: <problem> (fix: <fix>)``."""
        text = f"{self.path}: {self.problem}" if self.path else self.problem
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())
