"""Benchmark :meth:`geoplant.store.Store.extract`: millions of points, time and peak memory.

Points (uniform over the grid's bounding box, some outside it) are extracted block by block
with :func:`geoplant.points.iter_extract` and reduced on the fly (count of valid values), so
memory stays flat; peak RSS is measured after a first pass of ``--points / 5`` points and
after the full run: equal peaks mean memory does not grow with the number of points. Prints
JSON.

    python benchmarks/extract.py --store STORE --points 5000000
    python benchmarks/extract.py --preset tiny --work /tmp/extract-bench   # generates it
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
from _synthetic import synthetic_release_and_store

from geoplant.points import DEFAULT_BLOCK, iter_extract
from geoplant.store import open_store


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _store(args: argparse.Namespace) -> Path:
    if args.store:
        return Path(args.store)
    return synthetic_release_and_store(args.work, args.preset)[1]


def _run(rasters: dict[str, Any], n: int, block: int, seed: int) -> dict[str, Any]:
    first = next(iter(rasters.values()))
    x, y = first["x"].values, first["y"].values
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    valid = inside = 0
    for start in range(0, n, block):  # points generated per block too: flat memory
        m = min(block, n - start)
        lon = rng.uniform(x.min() - 1, x.max() + 1, m)
        lat = rng.uniform(y.min() - 1, y.max() + 1, m)
        for _, ds in iter_extract(rasters, lon, lat, block=block):
            inside += int(ds["inside"].sum())
            valid += int(sum(int(ds[v].sum()) for v in ds.data_vars
                             if str(v).startswith("valid_")))
    seconds = time.perf_counter() - t0
    return {"points": n, "seconds": round(seconds, 2),
            "points_per_s": round(n / seconds), "inside_share": round(inside / n, 4),
            "valid_values": valid, "peak_rss_mib": round(_peak_rss_mib(), 1)}


def main() -> None:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="a built store with rasters")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--work", default="/tmp/geoplant-extract-bench")
    parser.add_argument("--points", type=int, default=5_000_000)
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK)
    args = parser.parse_args()
    store = open_store(_store(args))
    rasters = store.rasters()
    first = next(iter(rasters.values()))
    n_bands = sum(int(np.prod([s for d, s in da.sizes.items() if d not in ("x", "y")]))
                  for da in rasters.values())
    warm = _run(rasters, max(args.points // 5, 1), args.block, seed=1)
    full = _run(rasters, args.points, args.block, seed=0)
    print(json.dumps({
        "store": store.path, "rasters": len(rasters), "bands": n_bands,
        "grid": [first.sizes["y"], first.sizes["x"]],
        "chunk": [int(first.chunks[-2][0]), int(first.chunks[-1][0])] if first.chunks
        else None,
        "block": args.block, "cpus": os.cpu_count(),
        "first_pass": warm, "full": full,
        "rss_growth_mib": round(full["peak_rss_mib"] - warm["peak_rss_mib"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
