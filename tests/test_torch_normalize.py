"""geoplant.torch.normalize: DeviceNormalizer gives the CPU path's floats, bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

import geoplant.torch as gt
from geoplant.errors import GeoplantError
from geoplant.models import MultimodalSDM
from geoplant.stats import compute_normalization_stats

MODS = ("sentinel2", "landsat", "climate", "env")


def _bits(x: torch.Tensor) -> torch.Tensor:
    """float32 as int32: equality of these is equality of every bit (+0.0 vs -0.0 too)."""
    assert x.dtype == torch.float32
    return x.view(torch.int32)


@pytest.fixture(scope="module")
def flawed_store(loader_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny store with missing items (valid_<m> false) in every modality."""
    copy = tmp_path_factory.mktemp("flawed") / "store"
    shutil.copytree(loader_store, copy)
    group = zarr.open_group(copy / "cubes" / "pa_train.zarr", mode="r+")
    for m, row in zip(MODS, (3, 10, 11, 500), strict=True):
        valid = group[f"valid_{m}"]
        flags = valid[:]
        flags[row] = False
        valid[:] = flags
    return copy


@pytest.mark.parametrize("in_memory", [True, False])
def test_device_path_equals_cpu_path_bit_for_bit(flawed_store: Path,
                                                 loader_stats: dict[str, Any],
                                                 in_memory: bool) -> None:
    cpu = gt.SurveyDataset(flawed_store, "pa_train", stats=loader_stats, in_memory=in_memory)
    raw = gt.SurveyDataset(flawed_store, "pa_train", normalize=False, stats=loader_stats,
                           in_memory=in_memory)
    norm = gt.DeviceNormalizer.from_dataset(raw)
    idx = np.arange(len(cpu))
    expected, stored = cpu.get_batch(idx), raw.get_batch(idx)
    assert stored["sentinel2"].dtype == torch.uint8
    assert stored["landsat"].dtype == torch.float32 and stored["landsat"].isnan().any()
    assert stored["env"].isinf().any()  # the tiny world has inf in env
    for m, row in zip(MODS, (3, 10, 11, 500), strict=True):
        assert not stored[f"valid_{m}"][row] and stored[f"valid_{m}"].sum() == len(idx) - 1
    got = norm(stored)
    for m in MODS:
        assert got[m].dtype == torch.float32
        assert torch.equal(_bits(got[m]), _bits(expected[m])), m
    for m, row in zip(MODS, (3, 10, 11, 500), strict=True):
        assert (_bits(got[m][row]) == 0).all()  # +0.0 exactly, as the CPU path writes
    # untouched keys pass through
    assert got["labels"] is stored["labels"] and got["surveyId"] is stored["surveyId"]


def test_normaliser_is_saved_with_the_model(loader_store: Path,
                                            loader_stats: dict[str, Any],
                                            loader_mem_ds: gt.SurveyDataset,
                                            one_torch_thread: None) -> None:
    raw = gt.SurveyDataset(loader_store, "pa_train", ("landsat", "env"), normalize=False,
                           in_memory=True)
    norm = gt.DeviceNormalizer.from_dataset(raw)
    assert norm.modalities == ("landsat", "env")
    torch.manual_seed(0)
    model = MultimodalSDM(["landsat", "env"], raw.n_species, normalizer=norm).eval()
    state = model.state_dict()
    assert {"normalizer.landsat_scale", "normalizer.landsat_offset", "normalizer.env_scale",
            "normalizer.env_offset"} <= set(state)
    scale, offset = loader_mem_ds.normalization["landsat"]
    assert torch.equal(state["normalizer.landsat_scale"], torch.tensor(scale.ravel()))
    assert torch.equal(state["normalizer.landsat_offset"], torch.tensor(offset.ravel()))
    # the model on stored dtypes == the same weights on CPU-normalised batches
    batch = raw.get_batch([0, 5, 9])
    plain = MultimodalSDM(["landsat", "env"], raw.n_species).eval()
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("normalizer.")})
    with torch.no_grad():
        assert torch.equal(model(batch), plain(loader_mem_ds.get_batch([0, 5, 9])))
    # a model built from other statistics takes the trained ones back from the checkpoint
    other = compute_normalization_stats(loader_store, survey_ids=raw.survey_ids[:100])
    restored = MultimodalSDM(["landsat", "env"], raw.n_species,
                             normalizer=gt.DeviceNormalizer.from_stats(other,
                                                                       ["landsat", "env"]))
    assert not torch.equal(restored.normalizer.landsat_scale, norm.landsat_scale)
    restored.load_state_dict(state)
    restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(batch), model(batch))
    # casting the model leaves the statistics float32 and exact
    before = norm.landsat_scale.clone()
    half = model.half().normalizer
    assert half is norm and half.landsat_scale.dtype == torch.float32
    assert torch.equal(half.landsat_scale, before)
    assert next(model.head.parameters()).dtype == torch.float16


def test_normaliser_checks_its_inputs(loader_stats: dict[str, Any]) -> None:
    norm = gt.DeviceNormalizer.from_stats(loader_stats, ["landsat"])
    with pytest.raises(GeoplantError, match="expected"):
        norm({"landsat": torch.zeros(2, 5, 4, 21)})
    with pytest.raises(GeoplantError, match="no statistics"):
        norm.normalize("env", torch.zeros(2, 46))
    with pytest.raises(GeoplantError, match="radar"):
        gt.DeviceNormalizer.from_stats(loader_stats, ["radar"])
    # a batch without valid_<m> counts as all valid; other modalities pass through
    x = torch.full((2, 6, 4, 21), float("nan"))
    out = norm({"landsat": x, "env": torch.ones(2, 3)})
    assert (out["landsat"] == 0).all() and torch.equal(out["env"], torch.ones(2, 3))
    assert "landsat: 6 channels" in repr(norm)
