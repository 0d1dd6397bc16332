"""Shared fixtures: tiny synthetic releases in both layouts, generated once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from geoplant.synthetic.release import write_release

REAL_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "real-samples" / "geoplant"


@pytest.fixture(scope="session")
def glc24_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny release in the Kaggle GLC24 layout (seed 0)."""
    out = tmp_path_factory.mktemp("releases") / "glc24-tiny"
    write_release(out, layout="glc24", preset="tiny", seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def geoplant_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny release in the 2026 GeoPlant layout (seed 0)."""
    out = tmp_path_factory.mktemp("releases") / "geoplant-tiny"
    write_release(out, layout="geoplant", preset="tiny", seed=0, progress=False)
    return out


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is much faster than two on a busy 2-core machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
