"""Kaggle-attached data: a store attached is used; a raw release attached (read-only, as Kaggle
mounts it) is built once into the working folder and reused; nothing attached is one line.

The input root is ``GEOPLANT_KAGGLE_INPUT``-style: ``INPUT/geolifeclef-2024/`` holds the tiny
synthetic glc24 release (the unzipped competition tree), made read-only.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from geoplant.errors import GeoplantError
from geoplant.kaggle import attached, find_attached_release, find_attached_store, resolve_data
from geoplant.kaggle.attached import INPUT_ENV, STORE_NAME, WORKING_ENV

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MOUNT = "geolifeclef-2024"


def _set_writable(root: Path, writable: bool) -> None:
    """``chmod -R a-w`` (or give the owner write access back)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable
                   else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: (size, mtime in ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


def _manifest(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def _resolve(*args, **kwargs) -> tuple[str, str]:
    """``resolve_data`` and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        path = resolve_data(*args, **kwargs)
    return path, out.getvalue()


@pytest.fixture(scope="module")
def kaggle_input(glc24_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``INPUT/geolifeclef-2024``: the tiny release, read-only, as Kaggle mounts it."""
    root = tmp_path_factory.mktemp("kaggle") / "input"
    shutil.copytree(glc24_tiny, root / MOUNT)
    _set_writable(root, False)
    yield root
    _set_writable(root, True)


@dataclass
class FirstBuild:
    working: Path
    store: Path
    printed: str
    release_before: dict[str, tuple[int, int]]


@pytest.fixture(scope="module")
def first_build(kaggle_input: Path, tmp_path_factory: pytest.TempPathFactory) -> FirstBuild:
    """The first notebook of a session: only the raw release attached, Landsat needed."""
    working = tmp_path_factory.mktemp("kaggle") / "working"
    before = _snapshot(kaggle_input)
    path, printed = _resolve(None, modalities=["landsat"], input_root=kaggle_input,
                             working_root=working)
    return FirstBuild(working, Path(path), printed, before)


def _copy_working(first: FirstBuild, dest: Path) -> Path:
    """A copy of the session's working folder (tests that change the store use their own)."""
    shutil.copytree(first.working, dest, symlinks=True)
    return dest


# ---------------------------------------------------------------------------------------------


def test_explicit_data_is_returned_untouched(tmp_path: Path) -> None:
    missing = tmp_path / "no-kaggle-input"
    assert resolve_data("runs/store", input_root=missing) == "runs/store"
    assert resolve_data(Path("/data/store"), modalities=["nope"], input_root=missing) \
        == "/data/store"
    assert not missing.exists()


def test_nothing_attached_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "input"
    (empty / "some-other-dataset" / "images").mkdir(parents=True)
    (empty / "some-other-dataset" / "manifest.json").write_text('{"name": "not a store"}')
    with pytest.raises(GeoplantError) as err:
        resolve_data(None, input_root=empty, working_root=tmp_path / "working")
    message = str(err.value)
    assert "\n" not in message and "nothing usable attached" in message
    assert "geolifeclef-2024" in message and "`data`" in message
    assert not (tmp_path / "working").exists()

    monkeypatch.setenv(INPUT_ENV, str(tmp_path / "not-on-kaggle"))
    with pytest.raises(GeoplantError, match="no Kaggle input folder") as err:
        resolve_data(None)
    assert str(tmp_path / "not-on-kaggle") in str(err.value) and "\n" not in str(err.value)


def test_finds_stores_and_releases_a_few_levels_down(tmp_path: Path) -> None:
    root = tmp_path / "input"
    competition = root / "competitions" / "geolifeclef-2024"
    competition.mkdir(parents=True)
    (competition / "GLC24_PA_metadata_train.csv").touch()
    geoplant_data = root / "geoplant" / "GeoPlantData"
    geoplant_data.mkdir(parents=True)
    assert find_attached_release(root) == competition
    assert find_attached_release(root / "geoplant") == root / "geoplant"
    deep = tmp_path / "deep" / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (deep / "GLC24_PA_metadata_test.csv").touch()
    assert find_attached_release(tmp_path / "deep") is None  # 5 levels down...
    assert find_attached_release(tmp_path / "deep" / "a") == deep  # ...4 levels down

    assert find_attached_store(root) is None
    for name, manifest in [("z-store", {"format": "geoplant-store/1"}),
                           ("b-store/inside", {"format": "geoplant-store/1"}),
                           ("a-not-a-store", {"format": "something else"})]:
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text(json.dumps(manifest))
    (root / ".hidden").mkdir()
    (root / ".hidden" / "manifest.json").write_text('{"format": "geoplant-store/1"}')
    assert find_attached_store(root) == root / "b-store" / "inside"
    assert find_attached_store(tmp_path / "missing") is None


def test_only_the_raw_release_attached_is_built_into_working(first_build: FirstBuild,
                                                            kaggle_input: Path) -> None:
    import geoplant

    store = first_build.store
    assert store == first_build.working / STORE_NAME
    assert "building the store" in first_build.printed
    manifest = _manifest(store)
    assert manifest["raw_root"] == str((kaggle_input / MOUNT).resolve())
    assert manifest["modalities"] == {"pa_train": ["landsat", "env"],
                                      "pa_test": ["landsat", "env"]}
    assert manifest["rasters"] == [] and manifest["counts"]["pa_train_surveys"] > 0
    assert not (store / "_build").exists() and not (store / ".geoplant-build.lock").exists()
    assert _snapshot(kaggle_input) == first_build.release_before  # the mount is untouched
    assert geoplant.open_store(store).cube("pa_train")["landsat"].shape[1:] == (6, 4, 21)


def test_later_calls_reuse_the_store(first_build: FirstBuild, kaggle_input: Path) -> None:
    before = _snapshot(first_build.store)
    for modalities in (["landsat"], ["env"], "landsat", ["env", "landsat", "env"]):
        path, printed = _resolve(None, modalities=modalities, input_root=kaggle_input,
                                 working_root=first_build.working)
        assert path == str(first_build.store) and printed == ""
    assert _snapshot(first_build.store) == before  # not rebuilt: same files, same mtimes


def test_more_modalities_rebuild_the_store(first_build: FirstBuild, kaggle_input: Path,
                                           tmp_path: Path) -> None:
    working = _copy_working(first_build, tmp_path / "working")
    path, printed = _resolve(None, modalities=["climate"], input_root=kaggle_input,
                             working_root=working)
    assert path == str(working / STORE_NAME) and "with more modalities" in printed
    assert _manifest(Path(path))["modalities"]["pa_train"] == ["landsat", "climate", "env"]
    again, printed = _resolve(None, modalities=["landsat", "climate"], input_root=kaggle_input,
                              working_root=working)
    assert again == path and printed == ""


def test_an_attached_store_is_used(first_build: FirstBuild, kaggle_input: Path,
                                   tmp_path: Path) -> None:
    both = tmp_path / "both"
    both.mkdir()
    (both / "my-geoplant-store").symlink_to(first_build.store, target_is_directory=True)
    (both / MOUNT).symlink_to(kaggle_input / MOUNT, target_is_directory=True)
    working = tmp_path / "working"
    for modalities in (None, ["landsat"], ["env"]):
        path, printed = _resolve(None, modalities=modalities, input_root=both,
                                 working_root=working)
        assert path == str(both / "my-geoplant-store") and printed == ""
    assert not working.exists()

    # a store lacking a needed modality: built from the raw release when one is attached...
    path, printed = _resolve(None, modalities=["climate"], input_root=both,
                             working_root=working)
    assert path == str(working / STORE_NAME) and "building the store" in printed
    assert "climate" in _manifest(Path(path))["modalities"]["pa_train"]
    # ...else the store is all there is
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "my-geoplant-store").symlink_to(first_build.store, target_is_directory=True)
    assert resolve_data(None, modalities=["climate"], input_root=alone,
                        working_root=tmp_path / "unused") == str(alone / "my-geoplant-store")


def test_modalities_are_checked_before_building(kaggle_input: Path, tmp_path: Path) -> None:
    working = tmp_path / "working"
    with pytest.raises(GeoplantError, match="unknown modality 'none'"):
        resolve_data(None, modalities=["none"], input_root=kaggle_input, working_root=working)
    with pytest.raises(GeoplantError, match="has no sentinel2_tiff data") as err:
        resolve_data(None, modalities=["sentinel2_tiff"], input_root=kaggle_input,
                     working_root=working)
    assert "\n" not in str(err.value) and "use some of: sentinel2, landsat" in str(err.value)
    assert not working.exists()


def test_an_unwritable_working_folder_is_one_line(kaggle_input: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(WORKING_ENV, str(blocker / "working"))
    with pytest.raises(GeoplantError, match="cannot create the store folder") as err:
        resolve_data(None, modalities=["env"], input_root=kaggle_input)
    assert "\n" not in str(err.value) and WORKING_ENV in str(err.value)


def test_a_second_notebook_waits_for_the_build(first_build: FirstBuild, kaggle_input: Path,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from geoplant.builder.lock import LOCK_NAME, acquire_lock, release_lock

    working = _copy_working(first_build, tmp_path / "working")
    store = working / STORE_NAME
    fd = acquire_lock(store)  # as a build running in another notebook holds it
    release = threading.Timer(1.0, release_lock, (store, fd))
    try:
        monkeypatch.setattr(attached, "LOCK_WAIT_S", 0.3)
        with pytest.raises(GeoplantError, match="is still writing the store") as err:
            _resolve(None, modalities=["landsat"], input_root=kaggle_input,
                     working_root=working)
        assert "\n" not in str(err.value) and f"pid {os.getpid()}" in str(err.value)

        monkeypatch.setattr(attached, "LOCK_WAIT_S", 60.0)
        release.start()  # the other build ends in a second
        started = time.monotonic()
        path, printed = _resolve(None, modalities=["landsat"], input_root=kaggle_input,
                                 working_root=working)
    finally:
        if release.is_alive() or release.finished.is_set():
            release.join()
        else:
            release_lock(store, fd)
    assert path == str(store) and "waiting for it" in printed
    assert time.monotonic() - started >= 0.9

    # a lock its holder left behind (killed) is no reason to wait
    (store / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "?"}))
    assert resolve_data(None, modalities=["landsat"], input_root=kaggle_input,
                        working_root=working) == str(store)


def test_an_interrupted_build_is_resumed(kaggle_input: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import geoplant.builder.core

    def killed(store: Path) -> None:
        raise KeyboardInterrupt  # the notebook stopped before the build marked the store done

    working = tmp_path / "working"
    with monkeypatch.context() as patch:
        patch.setattr(geoplant.builder.core, "finish", killed)
        with pytest.raises(KeyboardInterrupt):
            _resolve(None, modalities=["landsat"], input_root=kaggle_input,
                     working_root=working)
    store = working / STORE_NAME
    assert (store / "_build").is_dir()
    path, printed = _resolve(None, modalities=["env"], input_root=kaggle_input,
                             working_root=working)
    assert path == str(store) and "resuming the interrupted build" in printed
    assert _manifest(store)["modalities"]["pa_train"] == ["landsat", "env"]
    assert not (store / "_build").exists()


# ---------------------------------------------------------------------------------------------
# End to end: a notebook with `data = None` and only the raw release attached.


def _locate_data_uses_resolve_data() -> bool:
    from geoplant import experiment

    return "resolve_data" in inspect.getsource(experiment.locate_data)


@pytest.mark.skipif(not _locate_data_uses_resolve_data(),
                    reason="LEAD: runs once geoplant.experiment.locate_data(data, modalities=None) "
                           "returns geoplant.kaggle.resolve_data(data, modalities=modalities)")
def test_notebook_with_only_the_raw_release_attached(kaggle_input: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import papermill as pm

    working = tmp_path / "kaggle-working"
    monkeypatch.setenv(INPUT_ENV, str(kaggle_input))  # inherited by the notebook's kernel
    monkeypatch.setenv(WORKING_ENV, str(working))
    out = tmp_path / "run"
    pm.execute_notebook(str(NOTEBOOKS / "02_single_modality.ipynb"), str(tmp_path / "nb.ipynb"),
                        parameters={"data": None, "out_dir": str(out), "method": "logistic",
                                    "modality": "env", "baseline": "env-logistic"},
                        progress_bar=False, cwd=str(NOTEBOOKS))
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["test_samples_f1"] <= 1  # scored: the truth beside the attached release
    store = working / STORE_NAME
    assert _manifest(store)["raw_root"] == str((kaggle_input / MOUNT).resolve())
    assert "env" in _manifest(store)["modalities"]["pa_train"]
