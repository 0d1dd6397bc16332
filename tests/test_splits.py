"""geoplant.splits: spatial block split, torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from geoplant.errors import GeoplantError
from geoplant.splits import spatial_block_split


def test_spatial_block_split_keeps_blocks_whole() -> None:
    rng = np.random.default_rng(0)
    # 200 clusters of 10 surveys within ~100 m, centred in 10-km blocks at lat ~45
    lat_c = 45.0 + (np.arange(200) // 20) * 0.1 + 0.045
    x_km = (np.arange(200) % 20) * 10.0 + 5.0
    lon_c = x_km / (111.32 * np.cos(np.deg2rad(lat_c)))
    lon = np.repeat(lon_c, 10) + rng.uniform(-5e-4, 5e-4, 2000)
    lat = np.repeat(lat_c, 10) + rng.uniform(-5e-4, 5e-4, 2000)
    mask = spatial_block_split(lon, lat, block_km=10, val_fraction=0.2, seed=3)
    assert mask.dtype == bool and mask.shape == (2000,)
    per_cluster = mask.reshape(200, 10)
    assert (per_cluster.all(1) | ~per_cluster.any(1)).all()  # clusters never split
    assert 0.2 <= mask.mean() <= 0.2 + 10 / 2000
    assert np.array_equal(mask, spatial_block_split(lon, lat, 10, 0.2, seed=3))
    assert not np.array_equal(mask, spatial_block_split(lon, lat, 10, 0.2, seed=4))
    # 100-km blocks: 2 latitude rows x 10 columns hold 20 clusters each -> coarser split
    coarse = spatial_block_split(lon, lat, block_km=100, val_fraction=0.2, seed=3)
    assert len(np.unique(coarse.reshape(200, 10)[:, 0].reshape(10, 20)[:, :10])) <= 2
    with pytest.raises(GeoplantError):
        spatial_block_split(lon, lat[:-1])
    with pytest.raises(GeoplantError):
        spatial_block_split(lon, lat, val_fraction=1.0)
    with pytest.raises(GeoplantError, match="NaN"):
        spatial_block_split(np.r_[lon[:-1], np.nan], lat)


def test_spatial_block_split_rejects_bad_blocks_and_keeps_a_training_block() -> None:
    lon, lat = np.array([1.0, 1.0, 1.001]), np.array([45.0, 45.0, 45.0])
    with pytest.raises(GeoplantError, match="block_km"):
        spatial_block_split(lon, lat, block_km=0)
    two = spatial_block_split([0.0, 5.0], [45.0, 45.0], val_fraction=0.9)
    assert two.sum() == 1  # never every block in validation


def test_splits_imports_without_torch() -> None:
    """Planning a split must not pay for importing torch (a fresh interpreter checks)."""
    code = "import sys, geoplant.splits; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_train_reexports_the_split() -> None:
    import geoplant.train

    assert geoplant.train.spatial_block_split is spatial_block_split
