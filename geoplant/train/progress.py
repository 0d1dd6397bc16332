"""Progress bars and one-line summaries that reach a terminal, a notebook and papermill.

Bars are :mod:`tqdm.auto` (widgets in a live notebook when ipywidgets is installed, text
otherwise); summaries are printed (``tqdm.write``, so a running bar is not torn) to stdout,
which notebooks and papermill keep in the cell's output, and logged on ``geoplant.train``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["bar", "iterate", "say"]

T = TypeVar("T")

log = logging.getLogger("geoplant.train")


def _tqdm() -> Any:
    """``tqdm.auto.tqdm`` without its warning about missing ipywidgets (it falls back to text)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
        enabled: bool = True, leave: bool = True, unit: str = "batch") -> Any:
    """A tqdm bar over ``iterable`` (or a manual one: ``update(n)``), a no-op when disabled.

    Parameters
    ----------
    iterable
        What to iterate (None: call ``update`` yourself).
    total
        Length when ``iterable`` has none.
    desc, unit, leave
        As in tqdm.
    enabled
        False: nothing is shown (``progress=False``, or a DDP rank other than 0).
    """
    return _tqdm()(iterable, total=total, desc=desc, disable=not enabled, leave=leave,
                   unit=unit, dynamic_ncols=True, file=sys.stderr)


def iterate(iterable: Iterable[T], **kwargs: Any) -> Iterator[T]:
    """Iterate ``iterable`` under a :func:`bar` (closed at the end, even on errors)."""
    progress = bar(iterable, **kwargs)
    try:
        yield from progress
    finally:
        progress.close()


def say(line: str, enabled: bool = True) -> None:
    """Log ``line`` on ``geoplant.train`` and, when ``enabled``, print it to stdout."""
    log.info(line)
    if enabled:
        _tqdm().write(line, file=sys.stdout)
        sys.stdout.flush()
