"""Checkpoints of :func:`geoplant.train.fit`, and the RNG states that make resume exact.

A checkpoint is a ``torch.save`` of one dict (format version :data:`CHECKPOINT_VERSION`)::

    version, model, optimizer, scheduler, scaler, epoch, best_metric, best_epoch,
    bad_epochs, history, rng, config, settings, world_size

``settings`` are the parts of ``config`` that decide what a run computes (lr, epochs,
loss, seed, the caller's ``extra_settings`` such as batch size and modalities; not where or
how fast it runs): a resume with other settings is refused (:func:`check_resume_settings`)
instead of silently continuing a different run, and one with another model
(:func:`check_model_fits`) gets a one-line error instead of torch's RuntimeError.
``rng`` holds every rank's Python, NumPy, torch (and CUDA) RNG states as plain lists, so
the file loads with ``weights_only=True`` and a resumed run draws the same numbers as an
uninterrupted one. Files are written atomically (temporary file, fsync, rename): a killed
run leaves the previous checkpoint, never half of one.
"""

from __future__ import annotations

import json
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
    "CHECKPOINT_FILES",
    "CHECKPOINT_VERSION",
    "RESUME_FREE",
    "capture_rng_state",
    "check_model_fits",
    "check_resume_settings",
    "discard_checkpoints",
    "load_checkpoint",
    "restore_rng_state",
    "resume_settings",
    "save_checkpoint",
]

CHECKPOINT_VERSION = 1

#: The files a run writes in ``TrainConfig.checkpoint_dir``.
CHECKPOINT_FILES = ("last.pt", "best.pt", "log.jsonl")

#: ``TrainConfig`` fields a resumed run may change: where and how fast it runs, not what
#: it computes.
RESUME_FREE = frozenset({"checkpoint_dir", "resume", "device", "progress", "compile",
                         "channels_last", "find_unused_parameters", "log_every"})

_START_OVER = ("discard them with --fresh (fit_torch(fresh=True); TrainConfig(resume=False)), "
               "or use another --out")


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


def resume_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``config`` (``TrainConfig.to_dict()``) a resume must match.

    Every field but :data:`RESUME_FREE`, normalised through JSON (tuples become lists) so
    that a value read back from a checkpoint compares equal to a fresh one.
    """
    kept = {k: v for k, v in config.items() if k not in RESUME_FREE}
    return json.loads(json.dumps(kept, default=str))


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key old -> new"`` for each differing setting (``extra_settings`` item by item)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if key == "extra_settings" and isinstance(old, dict) and isinstance(new, dict):
            out += _differences(old, new)
        elif old != new:
            out.append(f"{key} {old!r} -> {new!r}")
    return out


def check_resume_settings(saved: Mapping[str, Any] | None, current: Mapping[str, Any],
                          folder: str | os.PathLike[str]) -> None:
    """Refuse to resume a run written with other settings.

    Parameters
    ----------
    saved
        The checkpoint's ``settings`` (None for checkpoints written before they were
        stored: accepted).
    current
        :func:`resume_settings` of the run about to resume.
    folder
        The checkpoint folder (for the message).

    Raises
    ------
    GeoplantError
        One line naming the differences (at most four) and how to start over.
    """
    if saved is None:
        return
    diffs = _differences(saved, current)
    if diffs:
        more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise GeoplantError("the checkpoints here were written with other settings ("
                            + "; ".join(diffs[:4]) + more + ")", path=folder, fix=_START_OVER)


def check_model_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor],
                     path: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint whose weights do not fit ``model`` (other modalities, encoders
    or species), with one line instead of ``load_state_dict``'s RuntimeError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state)
                    if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        example = (missing or unexpected or shapes)[0]
        raise GeoplantError(
            f"the checkpoint holds another model ({len(missing)} weights missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} of another shape, e.g. {example!r})",
            path=path, fix=_START_OVER)


def discard_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete a run's checkpoints and log (:data:`CHECKPOINT_FILES`) in ``folder``.

    Returns
    -------
    list of Path
        The files deleted.
    """
    gone = []
    for name in CHECKPOINT_FILES:
        path = Path(folder) / name
        if path.is_file():
            path.unlink()
            gone.append(path)
    return gone
