"""Build and store benchmarks (issue: build and open). Prints JSON lines; writes
``benchmarks/out/build_store.json``.

Usage::

    python benchmarks/build_store.py --raw /work/bench/small [--large /work/bench/large]

Measures, each in one run so the ratios compare like with like:

* ``s2_build``: Sentinel-2 build throughput with one worker thread (surveys/s per core) next
  to the raw JPEG-pair decode rate of the same files with the fastest decoder available;
* ``chunking``: reading 64 surveys' patches from Zarr v3 at several inner chunk sizes, in
  random order and as contiguous blocks (justifies ``CHUNK_SURVEYS``);
* ``po_open``: opening the PO table of the store vs ``pandas.read_csv`` of the raw CSV
  (seconds and peak RSS, each in a fresh process) — run with ``--large``;
* ``build_memory``: peak RSS of whole builds of each given release (flat = good).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS: list[dict] = []


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)
    RESULTS.append(result)


def child(code: str, *args: str) -> dict:
    """Run python code in a fresh process; it prints one JSON line; add its peak RSS.

    The peak RSS comes from GNU time (wait4 of a freshly exec'd child): ``ru_maxrss`` read
    inside a forked child would report the parent's peak, since Linux carries it across fork.
    """
    wrapped = code + "\nimport json as _j\nprint(_j.dumps(RESULT))\n"
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, sys.executable,
                              "-c", wrapped, *args], capture_output=True, text=True, check=True)
        peak_kb = int(Path(rss.name).read_text().split()[-1])
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "peak_rss_mb": peak_kb // 1024}


def bench_s2_build(raw: Path, tmp: Path) -> None:
    from geoplant.builder import build
    from geoplant.raw import RawRelease, decode_jpeg, jpeg_backend

    release = RawRelease(raw)
    ids = release.survey_ids("pa_train")[:4096]
    # Raw decode rate: read + decode both JPEGs of each survey, one thread.
    blobs = []
    for sid in ids:
        rgb = release.read_bytes(release.location("s2.rgb", "pa_train", survey_id=sid))
        nir = release.read_bytes(release.location("s2.nir", "pa_train", survey_id=sid))
        blobs.append((rgb, nir))
    backend = jpeg_backend()
    t = time.perf_counter()
    for rgb, nir in blobs:
        decode_jpeg(rgb, 3, name="rgb", backend=backend)
        decode_jpeg(nir, 1, name="nir", backend=backend)
    decode_rate = len(ids) / (time.perf_counter() - t)
    # Files read from disk too (page cache warm, as for the build below).
    t = time.perf_counter()
    release.read_s2_jpegs("pa_train", ids)
    read_decode_rate = len(ids) / (time.perf_counter() - t)
    t = time.perf_counter()
    summary = build(raw, tmp / "s2store", splits=["pa_train"], modalities=["sentinel2"],
                    workers=1, rasters=False, progress=False)
    n = summary.counts["pa_train_surveys"]
    build_rate = n / (time.perf_counter() - t)
    block_rate = n / summary.phase_seconds["cubes"]
    emit({"bench": "s2_build", "surveys": n, "decoder": backend,
          "raw_decode_surveys_per_s": round(decode_rate),
          "raw_read_decode_surveys_per_s": round(read_decode_rate),
          "cube_phase_surveys_per_s_per_core": round(block_rate),
          "whole_build_surveys_per_s_per_core": round(build_rate),
          "cube_phase_vs_read_decode": round(block_rate / read_decode_rate, 3),
          "cube_phase_vs_decode": round(block_rate / decode_rate, 3),
          "phase_seconds": summary.phase_seconds})


def bench_chunking(raw: Path, tmp: Path) -> None:
    """Write + read 4,096 surveys' patches under several Zarr v3 layouts and codecs."""
    import zarr

    from geoplant.raw import RawRelease

    release = RawRelease(raw)
    ids = release.survey_ids("pa_train")[:4096]
    data = release.read_s2_jpegs("pa_train", ids).data
    rng = np.random.default_rng(0)
    codecs = {"zstd": zarr.codecs.ZstdCodec(level=3),
              "lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")}
    for sharded in (False, True):
        for inner in (4, 16, 64):
            for codec_name, codec in codecs.items():
                path = tmp / f"chunk{inner}-{sharded}-{codec_name}.zarr"
                arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype,
                                        chunks=(inner, 4, 128, 128), compressors=codec,
                                        shards=(1024, 4, 128, 128) if sharded else None)
                t = time.perf_counter()
                arr[:] = data
                write_rate = len(ids) / (time.perf_counter() - t)
                arr = zarr.open_array(str(path), mode="r")
                reps = 10
                t = time.perf_counter()
                for _ in range(reps):
                    idx = np.sort(rng.choice(len(ids), 64, replace=False))
                    arr.get_orthogonal_selection(idx)
                random_rate = reps * 64 / (time.perf_counter() - t)
                t = time.perf_counter()
                for _ in range(reps):
                    start = int(rng.integers(0, len(ids) - 1024))
                    arr[start : start + 1024]
                block_rate = reps * 1024 / (time.perf_counter() - t)
                size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                emit({"bench": "chunking", "inner_chunk_surveys": inner, "sharded": sharded,
                      "codec": codec_name, "write_surveys_per_s": round(write_rate),
                      "random64_surveys_per_s": round(random_rate),
                      "contiguous1024_surveys_per_s": round(block_rate),
                      "megabytes": round(size / 1e6, 1)})


def bench_po_open(raw: Path, store: Path) -> None:
    from geoplant import layouts

    csv = raw / layouts.location("glc24", "metadata.po").path
    ours = child("import sys, time; from geoplant.store import open_store\n"
                 "t = time.perf_counter(); df = open_store(sys.argv[1]).records('po_train')\n"
                 "RESULT = {'rows': len(df), 'seconds': round(time.perf_counter() - t, 2),"
                 " 'megabytes_in_memory': round(df.memory_usage(deep=True).sum() / 1e6)}",
                 str(store))
    pandas = child("import sys, time, pandas as pd\n"
                   "t = time.perf_counter(); df = pd.read_csv(sys.argv[1])\n"
                   "RESULT = {'rows': len(df), 'seconds': round(time.perf_counter() - t, 2),"
                   " 'megabytes_in_memory': round(df.memory_usage(deep=True).sum() / 1e6)}",
                   str(csv))
    emit({"bench": "po_open", "store": ours, "pandas_read_csv": pandas,
          "speedup": round(pandas["seconds"] / max(ours["seconds"], 1e-3), 1)})


def bench_build_memory(raws: list[Path], tmp: Path) -> dict[str, Path]:
    stores = {}
    for raw in raws:
        out = tmp / f"store-{raw.name}"
        if out.exists():
            shutil.rmtree(out)
        result = child("import sys, time; from geoplant.builder import build\n"
                       "t = time.perf_counter()\n"
                       "s = build(sys.argv[1], sys.argv[2], progress=False)\n"
                       "RESULT = {'seconds': round(time.perf_counter() - t, 1),"
                       " 'counts': s.counts}", str(raw), str(out))
        emit({"bench": "build_memory", "release": raw.name, **result})
        stores[raw.name] = out
    return stores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, required=True, help="a glc24 release (small)")
    parser.add_argument("--large", type=Path, help="the large glc24 release (PO open test)")
    parser.add_argument("--memory", type=Path, nargs="*", default=[],
                        help="releases whose whole build's peak RSS to measure")
    parser.add_argument("--keep-stores", type=Path, default=None,
                        help="build the --memory stores here and keep them")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip", nargs="*", default=[], help="benchmarks to skip")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp_name:
        tmp = Path(tmp_name)
        if "s2_build" not in args.skip:
            bench_s2_build(args.raw, tmp)
        if "chunking" not in args.skip:
            bench_chunking(args.raw, tmp)
        stores = bench_build_memory(list(args.memory), args.keep_stores or tmp) \
            if args.memory else {}
        if args.large:
            store = stores.get(args.large.name)
            if store is None:
                from geoplant.builder import build

                store = tmp / "large-records"
                build(args.large, store, splits=["po_train"], rasters=False, progress=False)
            bench_po_open(args.large, store)
    target = Path(__file__).parent / "out" / "build_store.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(RESULTS, indent=1) + "\n")


if __name__ == "__main__":
    main()
