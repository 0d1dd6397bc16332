"""geoplant.train.checkpoint: atomic saves, reading back, RNG state capture/restore."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from geoplant.errors import GeoplantError
from geoplant.train import CHECKPOINT_VERSION, load_checkpoint
from geoplant.train.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint


def _draws() -> tuple[float, float, list[float]]:
    return (random.random(), float(np.random.random()),  # noqa: NPY002
            torch.rand(3).tolist())


def test_unreadable_and_missing_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(GeoplantError, match="unreadable"):
        (tmp_path / "bad.pt").write_bytes(b"junk")
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(GeoplantError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_is_atomic_and_loads_with_weights_only(tmp_path: Path) -> None:
    state = {"version": CHECKPOINT_VERSION, "model": {"w": torch.arange(4.0)}, "epoch": 3,
             "rng": [capture_rng_state()], "history": [{"epoch": 0, "train_loss": 1.0}]}
    target = tmp_path / "sub" / "last.pt"
    assert save_checkpoint(state, target) == target
    save_checkpoint({**state, "epoch": 4}, target)  # replaces in place
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]  # no temporaries left
    back = load_checkpoint(target)
    assert back["epoch"] == 4 and torch.equal(back["model"]["w"], torch.arange(4.0))


def test_plain_torch_save_checkpoint_still_loads(tmp_path: Path) -> None:
    """Checkpoints of earlier versions were a plain ``torch.save`` of the same dict."""
    torch.save({"version": 1, "model": {"b": torch.ones(2)}, "rng": [capture_rng_state()]},
               tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["version"] == CHECKPOINT_VERSION


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    save_checkpoint({"rng": [capture_rng_state()]}, tmp_path / "rng.pt")
    expected = _draws()
    _draws()  # move every generator on
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"][0])
    assert _draws() == expected
