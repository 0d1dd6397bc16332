"""Checkpoints of :func:`geoplant.train.fit`, and the RNG states that make resume exact.

A checkpoint is a ``torch.save`` of one dict (format version :data:`CHECKPOINT_VERSION`)::

    version, model, optimizer, scheduler, scaler, epoch, best_metric, best_epoch,
    bad_epochs, history, rng, config, world_size

``rng`` holds every rank's Python, NumPy, torch (and CUDA) RNG states as plain lists, so
the file loads with ``weights_only=True`` and a resumed run draws the same numbers as an
uninterrupted one. Files are written atomically (temporary file, fsync, rename): a killed
run leaves the previous checkpoint, never half of one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_with

__all__ = [
    "CHECKPOINT_VERSION",
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_VERSION = 1


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` with ``torch.save`` atomically and fsync'ed (its folder is created).

    Parameters
    ----------
    state
        The checkpoint dict (see the module docstring).
    path
        The target file.

    Returns
    -------
    Path
        ``path``.
    """
    return atomic_write_with(path, lambda tmp: torch.save(state, tmp), fsync=True)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`~geoplant.train.fit` (tensors on CPU).

    ``state["model"]`` is the model's ``state_dict``; ``state["config"]`` the
    :class:`~geoplant.train.TrainConfig` as a dict; ``state["history"]`` the epoch logs.

    Parameters
    ----------
    path
        A ``last.pt`` or ``best.pt``.

    Returns
    -------
    dict
        The checkpoint (see the module docstring).

    Raises
    ------
    GeoplantError
        The file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise GeoplantError("checkpoint not found", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GeoplantError(f"unreadable checkpoint ({type(err).__name__}: {err})", path=path,
                            fix="delete it to start over") from err


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as plain Python values.

    Plain lists and tuples, not arrays or tensors, so that ``all_gather_object`` can pickle
    them and ``torch.load(weights_only=True)`` can read them back.

    Returns
    -------
    dict
        ``"python"``, ``"numpy"``, ``"torch"`` and, once CUDA is initialised, ``"cuda"``.
    """
    np_state: Any = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set Python's, NumPy's global, torch's (and CUDA's) RNGs from
    :func:`capture_rng_state`'s value (as read back from a checkpoint)."""
    random.setstate(_tuplify(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _tuplify(x: Any) -> Any:
    """Lists back to the nested tuples ``random.setstate`` wants (a checkpoint holds lists)."""
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x
