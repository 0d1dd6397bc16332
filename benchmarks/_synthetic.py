"""The synthetic world a benchmark runs on: written and built once under a work folder.

Shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this folder is on
``sys.path``): a glc24-layout release in ``WORK/raw`` and its store in ``WORK/store``, each
made only when missing, so reruns measure the same world.
"""

from __future__ import annotations

from pathlib import Path


def synthetic_release_and_store(work: str | Path, preset: str, seed: int = 0
                                ) -> tuple[Path, Path]:
    """``(release, store)`` of a ``preset`` world under ``work``, made where missing."""
    from geoplant.builder import build
    from geoplant.synthetic.release import write_release

    work = Path(work)
    raw, store = work / "raw", work / "store"
    if not (raw / "truth").is_dir():
        write_release(raw, layout="glc24", preset=preset, seed=seed, progress=False)
    if not (store / "manifest.json").is_file():
        build(raw, store, progress=False)
    return raw, store
