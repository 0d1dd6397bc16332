"""Shared fixtures: tiny synthetic releases in both layouts, generated once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from geoplant.synthetic.release import write_release

if TYPE_CHECKING:
    from geoplant.torch import SurveyDataset

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


@pytest.fixture(scope="session")
def loader_store(glc24_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store built from ``glc24_tiny`` (no rasters) for the stats and torch loader tests.

    Shared read-only: a test that modifies a store copies it first.
    """
    from geoplant.builder import build

    out = tmp_path_factory.mktemp("loader") / "store"
    build(glc24_tiny, out, progress=False, rasters=False)
    return out


@pytest.fixture(scope="session")
def loader_stats(loader_store: Path) -> dict[str, Any]:
    """Normalisation statistics of ``loader_store``'s ``pa_train``, written to its stats.json."""
    from geoplant.stats import compute_normalization_stats

    return compute_normalization_stats(loader_store)


@pytest.fixture(scope="session")
def loader_mem_ds(loader_store: Path, loader_stats: dict[str, Any]) -> SurveyDataset:
    """``pa_train`` of ``loader_store`` fully in memory (read-only: do not mutate)."""
    from geoplant.torch import SurveyDataset

    return SurveyDataset(loader_store, "pa_train", in_memory=True)


@pytest.fixture(scope="session")
def raster_store(glc24_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store built from ``glc24_tiny`` with its environmental rasters (read-only)."""
    from geoplant.builder import build

    out = tmp_path_factory.mktemp("rasters") / "store"
    build(glc24_tiny, out, progress=False)
    return out


@pytest.fixture(scope="session")
def env_model_dir(raster_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An env-logistic model of ``raster_store``'s pa_train, saved with ``save_model``."""
    import numpy as np

    from geoplant.experiment import env_features
    from geoplant.models import EnvLogisticBaseline
    from geoplant.models.persist import env_feature_names, save_model
    from geoplant.store import open_store

    store = open_store(raster_store)
    labels = store.labels("pa_train")
    X = env_features(store, "pa_train", labels.survey_ids)
    model = EnvLogisticBaseline(max_iter=100).fit(X, labels.matrix)
    return save_model(model, tmp_path_factory.mktemp("model") / "env-logistic",
                      species_ids=np.asarray(labels.species_ids, dtype=np.int64),
                      feature_names=env_feature_names(store), meta={"store": str(raster_store)})


# -- the download suites: an offline process, a local mirror and a small release on it ------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No connection but to 127.0.0.1, and no Kaggle set-up, proxy or /kaggle/input of the
    user's (`local_http.isolate`)."""
    from local_http import isolate

    isolate(monkeypatch, tmp_path)


@pytest.fixture
def server() -> Iterator[Any]:
    """A `local_http.MirrorServer` (files, Range, faults, the Kaggle API routes)."""
    from local_http import MirrorServer

    srv = MirrorServer()
    yield srv
    srv.close()


@pytest.fixture
def release(server: Any, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A small glc24-layout release served by ``server``: (catalog YAML, served files)."""
    from local_http import make_release

    return make_release(server, tmp_path)
