"""Benchmark the build's PO env phase (rasters sampled at every PO survey): time and peak memory
at millions of PO records.

A scratch store gets the rasters of a built glc24 store (linked, read only) and a PO records
file of ``--rows`` records over ``--rows / 1.32`` surveys (the GLC24 ratio: 5.08M records,
~3.85M surveys) at random points of the grid's bounding box; then the phase runs as the build
runs it (:func:`geoplant.builder.po_env.plan_po_env` + the build's task runner). Peak RSS is
measured in a fresh process per size; equal peaks at 1M and 5M mean memory does not grow with
the points. Prints JSON.

    python benchmarks/po_env.py --raw RAW --store STORE --rows 1000000 5079797
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _scratch(store: Path, work: Path, rows: int, seed: int) -> np.ndarray:
    """A store folder with ``store``'s rasters and ``rows`` PO records; its survey ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geoplant.store import open_store

    shutil.rmtree(work, ignore_errors=True)
    (work / "records").mkdir(parents=True)
    (work / "_build").mkdir()
    (work / "rasters.zarr").symlink_to(store / "rasters.zarr")
    first = next(iter(open_store(store).rasters().values()))
    x, y = first["x"].values, first["y"].values
    rng = np.random.default_rng(seed)
    n_surveys = round(rows / 1.32)
    survey = np.sort(rng.choice(np.arange(1, 2 * n_surveys), n_surveys, replace=False))
    of = np.concatenate([np.arange(n_surveys), rng.integers(0, n_surveys, rows - n_surveys)])
    lon = rng.uniform(x.min(), x.max(), n_surveys)[of]
    lat = rng.uniform(y.min(), y.max(), n_surveys)[of]
    pq.write_table(pa.table({"surveyId": survey[of], "lon": lon, "lat": lat}),
                   work / "records" / "po_train.parquet")
    return survey


def _one(raw_root: str, store: str, work: str, rows: int, workers: int | None) -> dict[str, Any]:
    from geoplant.builder.po_env import plan_po_env
    from geoplant.builder.skips import Skips
    from geoplant.builder.spec import BLOCK_SURVEYS
    from geoplant.builder.tasks import run_tasks
    from geoplant.raw import RawRelease
    from geoplant.store import open_store

    raw = RawRelease(raw_root)
    ids = _scratch(Path(store), Path(work), rows, seed=0)
    names = open_store(store).manifest["rasters"]
    rss_ready = _peak_rss_mib()
    t0 = time.perf_counter()
    plan = plan_po_env(raw, Path(work), ["po_train"], None, {"po_train": ids}, names,
                       Skips(False), BLOCK_SURVEYS)
    t_plan = time.perf_counter() - t0
    run_tasks(plan.tasks, None, workers, "po_train env blocks", progress=False)
    seconds = time.perf_counter() - t0
    import zarr

    valid = zarr.open_group(str(Path(work) / "cubes" / "po_train.zarr"), mode="r")["valid_env"]
    return {"rows": rows, "surveys": len(ids), "tasks": len(plan.tasks),
            "workers": workers or os.cpu_count(), "plan_s": round(t_plan, 2),
            "seconds": round(seconds, 2), "surveys_per_s": round(len(ids) / seconds),
            "valid_fraction": round(float(np.asarray(valid[:]).mean()), 3),
            "peak_rss_mib_before_phase": round(rss_ready), "peak_rss_mib": round(_peak_rss_mib())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", required=True, help="the glc24 release the store was built from")
    parser.add_argument("--store", required=True, help="a built glc24 store with rasters")
    parser.add_argument("--work", default="/tmp/po-env-bench", help="scratch store folder")
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_079_797])
    parser.add_argument("--workers", type=int, help="worker threads (default: all cores)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.raw, args.store, args.work, args.rows[0], args.workers)))
        return
    for rows in args.rows:  # a fresh process each: its peak RSS is this size's own
        cmd = [sys.executable, __file__, "--one", "--raw", args.raw, "--store", args.store,
               "--work", args.work, "--rows", str(rows)]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        subprocess.run(cmd, check=True)
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
