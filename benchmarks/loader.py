"""Throughput and memory of ``geoplant.torch`` vs the raw-file loading of the official baselines.

Multimodal samples (Sentinel-2 RGB+NIR, Landsat, climate, env, multi-hot labels) of
``pa_train``, batch 64, DataLoader with 0 and N workers, several epochs (``--min-samples``):

``raw``               the official notebooks' way, from the raw release the store was built
                      from: per sample two ``torch.load`` of the ``.pt`` cubes, two PIL JPEG
                      decodes, pandas lookups ``df[df.surveyId == sid]`` for labels and env.
``memory``            ``SurveyDataset(normalize=False)`` in RAM: stored dtypes (Sentinel-2
                      uint8), normalised later on the device (``DeviceNormalizer``); uniform
                      shuffle. The GPU path.
``memory_cpu_norm``   the same, normalised to float32 on the CPU (``normalize=True``).
``disk_block``        ``SurveyDataset(normalize=False, in_memory=False)`` +
                      ``BlockShuffleSampler`` (chunk blocks), default chunk reader.
``disk_s2_block``     the same with only Sentinel-2 on disk and the small modalities in RAM:
                      what ``in_memory=None`` picks when the patches do not fit.
``disk_random``       the same as ``disk_block`` in uniform random order (a chunk read per
                      survey).
``disk_random_zarr``  the same through zarr-python, one chunk at a time (``reader="zarr"``,
                      ``io_threads=1``): the reads of the loader before the direct reader.
``limit``             numpy fancy-index gather from arrays already in RAM (no DataLoader), of
                      the stored arrays (``limit_raw``) and of pre-normalised float32 arrays
                      (``limit_normalized``).

The on-disk datasets keep every modality on disk, with the default chunk cache (``--cache-mb``
256 per process). Run it on a store whose Sentinel-2 patches exceed the cache (the ``small``
world: 620 MB; the release's are ~125 GB) so that random batches measure reads, not cache
hits: on the ``tiny`` world (62 MB) the zarr-python rows are cache hits after one epoch.
Worker memory (RSS and USS, psutil) is sampled at several points. Page caches are warmed for
both the raw files and the store before timing (the OS page cache, not the loader, holds the
store: figures for data on a cold disk would be lower on both sides).

Usage::

    python benchmarks/loader.py --store STORE [--raw RAW] [--workers 0 2]

Prints JSON and writes ``benchmarks/out/loader.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
from torch.utils.data import DataLoader, Dataset

import geoplant.torch as gt
from geoplant import layouts
from geoplant.stats import scale_offset
from geoplant.store import cube_array, open_store

_ENV_FAMILIES = ("bioclimatic", "elevation", "human_footprint", "landcover", "soilgrids")


class RawBaseline(Dataset):
    """The official GLC24 baseline notebooks' per-sample loading, all modalities at once."""

    def __init__(self, raw: Path, split: str, survey_ids: np.ndarray,
                 species_ids: np.ndarray) -> None:
        self.raw = raw
        self.split = split
        self.survey_ids = survey_ids
        self.species_ids = species_ids
        meta = "metadata.pa"
        self.metadata = pd.read_csv(raw / layouts.location("glc24", meta, split).path)
        env = None
        for fam in _ENV_FAMILIES:
            table = pd.read_csv(raw / layouts.location("glc24", f"env.{fam}", split).path)
            env = table if env is None else env.merge(table, on="surveyId")
        self.env = env

    def __len__(self) -> int:
        return len(self.survey_ids)

    def _path(self, family: str, sid: int) -> Path:
        return self.raw / layouts.location("glc24", family, self.split, survey_id=sid).path

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        sid = int(self.survey_ids[idx])
        landsat = torch.nan_to_num(torch.load(self._path("landsat.cube", sid)))
        climate = torch.nan_to_num(torch.load(self._path("climate.cube", sid)))
        rgb = np.array(Image.open(self._path("s2.rgb", sid)))
        nir = np.array(Image.open(self._path("s2.nir", sid)))
        s2 = np.concatenate([rgb, nir[..., None]], axis=2)
        s2 = torch.from_numpy(s2).permute(2, 0, 1).float() / 255.0  # as transforms.ToTensor
        species = self.metadata[self.metadata.surveyId == sid].speciesId.to_numpy()
        labels = torch.zeros(len(self.species_ids))
        labels[np.searchsorted(self.species_ids, species.astype(np.int64))] = 1
        env_row = self.env[self.env.surveyId == sid].drop(columns="surveyId").to_numpy()[0]
        env = torch.nan_to_num(torch.tensor(env_row, dtype=torch.float32))
        return {"sentinel2": s2, "landsat": landsat.float(), "climate": climate.float(),
                "env": env, "labels": labels, "surveyId": torch.tensor(sid)}


class _FixedOrder(torch.utils.data.Sampler[int]):
    def __init__(self, order: np.ndarray) -> None:
        self.order = order

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


def _worker_memory() -> list[dict[str, float]]:
    out = []
    for child in psutil.Process().children():
        try:
            info = child.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out.append({"pid": child.pid, "rss_mb": round(info.rss / 2**20, 1),
                    "uss_mb": round(info.uss / 2**20, 1)})
    return out


def _run(loader: DataLoader, max_batches: int | None, memory_points: int = 0,
         min_samples: int = 0) -> dict[str, Any]:
    """Time a loader after its first batch (worker start-up excluded), over as many epochs
    as it takes to reach ``min_samples`` (or ``max_batches`` batches)."""
    epoch = 0

    def batches() -> Any:
        nonlocal epoch
        while True:
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            epoch += 1
            yield from loader

    it = batches()
    next(it)
    per_epoch = len(loader)
    if max_batches is not None:
        total = max_batches
    else:
        total = max(per_epoch - 1, -(-min_samples // (loader.batch_size or 1)))
    checkpoints = set(np.linspace(0, total - 1, memory_points).astype(int).tolist()) \
        if memory_points else set()
    memory = []
    n = 0
    paused = 0.0  # time spent sampling memory (reading smaps takes ms), not loading
    start = time.perf_counter()
    for i in range(total):
        batch = next(it)
        n += len(batch["surveyId"])
        if i in checkpoints:
            t = time.perf_counter()
            memory.append({"batch": i + 1, "workers": _worker_memory(),
                           "main_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1)})
            paused += time.perf_counter() - t
    seconds = time.perf_counter() - start - paused
    del it, batch
    out: dict[str, Any] = {"samples": n, "seconds": round(seconds, 3),
                           "samples_per_s": round(n / seconds, 1), "epochs": epoch}
    if memory:
        out["memory"] = memory
    return out


def _warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as handle:
            while handle.read(1 << 22):
                pass


def _limit(ds: gt.SurveyDataset, order: np.ndarray, batch: int, normalized: bool,
           min_samples: int = 0) -> dict:
    """Fancy-index gather from arrays in RAM: the ceiling of any loader in one process (as
    many passes over ``order`` as it takes to reach ``min_samples``, like the loader runs)."""
    group = ds.store.cube_group(ds.split)
    arrays = {m: np.asarray(cube_array(group, m)[:]) for m in ds.modalities}
    if normalized:
        stats = ds.normalization_stats()
        for m, a in arrays.items():
            scale, offset = scale_offset(stats, m)
            shape = (1, -1) + (1,) * (a.ndim - 2)
            arrays[m] = np.nan_to_num(a.astype(np.float32) * scale.reshape(shape)
                                      + offset.reshape(shape), nan=0, posinf=0, neginf=0)
    labels = ds.store.labels(ds.split).matrix.toarray().astype(np.float32)
    ids = ds.survey_ids
    n = 0
    passes = max(1, -(-min_samples // len(order)))
    start = time.perf_counter()
    for s in range(0, passes * len(order), batch):
        idx = order[s % len(order) : s % len(order) + batch]
        out = {m: torch.from_numpy(a[idx]) for m, a in arrays.items()}
        out["labels"] = torch.from_numpy(labels[idx])
        out["surveyId"] = torch.from_numpy(ids[idx])
        n += len(idx)
    seconds = time.perf_counter() - start
    return {"samples": n, "seconds": round(seconds, 3), "samples_per_s": round(n / seconds, 1)}


def _compare_readers(store: Any, split: str, batches: int, seed: int) -> dict[str, Any]:
    """Sentinel-2 surveys/s of each installed Zarr reader on 64-survey batches (decoded into
    numpy, no DataLoader): random surveys, and 16 whole 4-survey chunks (block sampler)."""
    from geoplant.torch.readers import open_chunk_reader

    path = f"{store.root}/cubes/{split}.zarr/sentinel2"
    array = cube_array(store.cube_group(split), "sentinel2")
    n, size = array.shape[0], array.chunks[0]
    rng = np.random.default_rng(seed)
    sets = {"random": [np.sort(rng.choice(n, 64, replace=False)) for _ in range(batches)],
            "block": [np.sort(np.concatenate([np.arange(c * size, c * size + size) for c in
                                              rng.choice(n // size, 64 // size,
                                                         replace=False)]))
                      for _ in range(batches)]}
    direct = open_chunk_reader(array, store.fs, path, "direct")
    out = np.empty((64, *array.shape[1:]), array.dtype)
    readers: dict[str, Any] = {
        "direct": lambda rows: direct.gather_into(rows, out),
        "zarr_oindex": lambda rows: array.get_orthogonal_selection((rows,)),
    }
    try:
        import tensorstore as ts

        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}
        tsa = ts.open(spec, read=True, context=ts.Context(
            {"cache_pool": {"total_bytes_limit": 0}})).result()
        readers["tensorstore_index"] = lambda rows: tsa[rows].read().result()

        def ts_chunks(rows: np.ndarray) -> None:
            starts = np.unique(rows // size) * size
            futures = [tsa[int(s) : min(int(s) + size, n)].read() for s in starts]
            for f in futures:
                f.result()

        readers["tensorstore_chunks"] = ts_chunks
    except ImportError:
        pass
    try:
        import zarr
        import zarrs  # noqa: F401

        with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
            zarrs_array = cube_array(store.cube_group(split), "sentinel2")
        readers["zarrs_oindex"] = lambda rows: zarrs_array.get_orthogonal_selection((rows,))
    except ImportError:
        pass
    out_rates: dict[str, Any] = {}
    for name, read in readers.items():
        for kind, rows_list in sets.items():
            read(rows_list[0])
            start = time.perf_counter()
            for rows in rows_list:
                read(rows)
            out_rates[f"{name}_{kind}"] = round(64 * len(rows_list) /
                                                (time.perf_counter() - start), 1)
    return out_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--raw", help="raw release (default: the store manifest's raw_root)")
    parser.add_argument("--split", default="pa_train")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--raw-batches", type=int, default=40,
                        help="batches timed for the raw baseline")
    parser.add_argument("--random-disk-batches", type=int, default=60,
                        help="batches timed for on-disk uniform random order")
    parser.add_argument("--min-samples", type=int, default=20_000,
                        help="samples timed (whole epochs) for the memory and block runs")
    parser.add_argument("--cache-mb", type=float, default=256,
                        help="chunk cache of the on-disk datasets, per process")
    parser.add_argument("--io-threads", type=int, default=None,
                        help="chunk reads in flight per process (default: the dataset's)")
    parser.add_argument("--compare-readers", action="store_true",
                        help="also time each installed Zarr reader (tensorstore, zarrs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "loader.json"))
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads of the main process (workers use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    store = open_store(args.store)
    raw = Path(args.raw or store.manifest["raw_root"])
    t = time.perf_counter()
    stats = gt.load_normalization_stats(store)
    stats_s = time.perf_counter() - t
    mods = ("sentinel2", "landsat", "climate", "env")
    bs = args.batch_size
    io = {} if args.io_threads is None else {"io_threads": args.io_threads}
    t = time.perf_counter()
    mem = gt.SurveyDataset(store, args.split, mods, normalize=False, stats=stats,
                           in_memory=True, **io)
    load_s = time.perf_counter() - t
    mem_norm = gt.SurveyDataset(store, args.split, mods, stats=stats, in_memory=True, **io)
    n = len(mem)
    order = np.random.default_rng(args.seed).permutation(n)
    species = store.species["speciesId"].to_numpy(np.int64)

    def disk(**kwargs: Any) -> gt.SurveyDataset:
        options = {"in_memory": False, "cache_mb": args.cache_mb, **io, **kwargs}
        return gt.SurveyDataset(store, args.split, mods, normalize=False, stats=stats,
                                **options)

    # warm the OS page cache for both sides
    _warm([p for p in (Path(args.store) / "cubes" / f"{args.split}.zarr").rglob("*")
           if p.is_file()])
    raw_ds = RawBaseline(raw, args.split, mem.survey_ids, species)
    raw_n = min(n, (args.raw_batches + 1) * bs)
    _warm([raw_ds._path(f, int(s)) for s in mem.survey_ids[order[:raw_n]]
           for f in ("landsat.cube", "climate.cube", "s2.rgb", "s2.nir")])

    def loader(ds: gt.SurveyDataset, w: int, **sampler: Any) -> DataLoader:
        return DataLoader(ds, batch_size=bs, sampler=gt.BlockShuffleSampler(
            ds, seed=args.seed, **sampler), collate_fn=gt.collate, num_workers=w,
            persistent_workers=w > 0)

    results: dict[str, Any] = {}
    readers = disk().readers
    for w in args.workers:
        extra = {"num_workers": w, "persistent_workers": w > 0}
        results[f"raw_w{w}"] = _run(DataLoader(raw_ds, batch_size=bs, sampler=_FixedOrder(
            order[:raw_n]), **extra), args.raw_batches)
        results[f"memory_w{w}"] = _run(loader(mem, w), None, memory_points=5 if w else 0,
                                       min_samples=args.min_samples)
        results[f"memory_cpu_norm_w{w}"] = _run(loader(mem_norm, w), None,
                                                min_samples=args.min_samples)
        results[f"disk_block_w{w}"] = _run(loader(disk(), w), None,
                                           memory_points=5 if w else 0,
                                           min_samples=args.min_samples)
        results[f"disk_s2_block_w{w}"] = _run(loader(disk(in_memory=mods[1:]), w), None,
                                              min_samples=args.min_samples)
        results[f"disk_random_w{w}"] = _run(loader(disk(), w, block_size=1),
                                            args.random_disk_batches)
        results[f"disk_random_zarr_w{w}"] = _run(
            loader(disk(reader="zarr", io_threads=1), w, block_size=1),
            args.random_disk_batches)
        print(json.dumps({k: v["samples_per_s"] for k, v in results.items()}), file=sys.stderr)
    if args.compare_readers:
        results["readers"] = _compare_readers(store, args.split, 40, args.seed)
    results["limit_raw"] = _limit(mem, order, bs, normalized=False,
                                  min_samples=args.min_samples)
    results["limit_normalized"] = _limit(mem, order, bs, normalized=True,
                                         min_samples=args.min_samples)

    def rate(key: str) -> float:
        return results[key]["samples_per_s"]

    ratios: dict[str, float] = {}
    for w in args.workers:
        ratios[f"memory_vs_limit_raw_w{w}"] = round(rate(f"memory_w{w}") / rate("limit_raw"), 2)
        ratios[f"memory_vs_raw_w{w}"] = round(rate(f"memory_w{w}") / rate(f"raw_w{w}"), 1)
        ratios[f"memory_cpu_norm_vs_limit_normalized_w{w}"] = round(
            rate(f"memory_cpu_norm_w{w}") / rate("limit_normalized"), 2)
        ratios[f"disk_block_vs_memory_w{w}"] = round(
            rate(f"disk_block_w{w}") / rate(f"memory_w{w}"), 2)
        ratios[f"disk_s2_block_vs_memory_w{w}"] = round(
            rate(f"disk_s2_block_w{w}") / rate(f"memory_w{w}"), 2)
        ratios[f"disk_block_vs_raw_w{w}"] = round(rate(f"disk_block_w{w}") / rate(f"raw_w{w}"),
                                                  1)
        ratios[f"disk_random_vs_zarr_w{w}"] = round(
            rate(f"disk_random_w{w}") / rate(f"disk_random_zarr_w{w}"), 1)
    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "split": args.split, "surveys": n, "batch_size": bs, "modalities": list(mods),
        "species": len(species), "readers": readers, "cache_mb": args.cache_mb,
        "io_threads": mem.io_threads,
        "stats_seconds": round(stats_s, 2), "memory_load_seconds": round(load_s, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.platform(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "results": results, "ratios": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
