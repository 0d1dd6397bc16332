"""Throughput and memory of ``geoplant.torch`` vs the raw-file loading of the official baselines.

Multimodal samples (Sentinel-2 RGB+NIR, Landsat, climate, env, multi-hot labels) of
``pa_train``, random order, batch 64, DataLoader with 0 and N workers:

``raw``            the official notebooks' way, from the raw release the store was built from:
                   per sample two ``torch.load`` of the ``.pt`` cubes, two PIL JPEG decodes,
                   pandas lookups ``df[df.surveyId == sid]`` for labels and env values.
``memory``         ``SurveyDataset`` (arrays in RAM, picked automatically), uniform shuffle.
``disk_block``     ``SurveyDataset(in_memory=False)`` + ``BlockShuffleSampler`` (chunk blocks).
``disk_random``    ``SurveyDataset(in_memory=False)`` in uniform random order.
``limit``          numpy fancy-index gather from arrays already in RAM (no DataLoader), of the
                   stored arrays (``limit_raw``) and of pre-normalised float32 arrays
                   (``limit_normalized``: the same output as ``memory``).

Worker memory (RSS and USS, psutil) is sampled at several points of an epoch. Page caches
are warmed for both the raw files and the store before timing.

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


def _run(loader: DataLoader, max_batches: int | None, memory_points: int = 0
         ) -> dict[str, Any]:
    """Time a loader after its first batch (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    total = len(loader) - 1 if max_batches is None else min(max_batches, len(loader) - 1)
    checkpoints = set(np.linspace(0, total - 1, memory_points).astype(int).tolist()) \
        if memory_points else set()
    memory = []
    n = 0
    start = time.perf_counter()
    for i in range(total):
        batch = next(it)
        n += len(batch["surveyId"])
        if i in checkpoints:
            memory.append({"batch": i + 1, "workers": _worker_memory(),
                           "main_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1)})
    seconds = time.perf_counter() - start
    del it
    out: dict[str, Any] = {"samples": n, "seconds": round(seconds, 3),
                           "samples_per_s": round(n / seconds, 1)}
    if memory:
        out["memory"] = memory
    return out


def _warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as handle:
            while handle.read(1 << 22):
                pass


def _limit(ds: gt.SurveyDataset, order: np.ndarray, batch: int, normalized: bool) -> dict:
    """Fancy-index gather from arrays in RAM: the ceiling of any loader in one process."""
    group = ds.store.cube_group(ds.split)
    arrays = {m: np.asarray(cube_array(group, m)[:]) for m in ds.modalities}
    if normalized:
        norm = ds.normalization  # per modality (scale, offset): x * scale + offset
        arrays = {m: np.nan_to_num(a.astype(np.float32) * norm[m][0] + norm[m][1],
                                   nan=0, posinf=0, neginf=0) for m, a in arrays.items()}
    labels = ds.store.labels(ds.split).matrix.toarray().astype(np.float32)
    ids = ds.survey_ids
    n = 0
    start = time.perf_counter()
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        out = {m: torch.from_numpy(a[idx]) for m, a in arrays.items()}
        out["labels"] = torch.from_numpy(labels[idx])
        out["surveyId"] = torch.from_numpy(ids[idx])
        n += len(idx)
    seconds = time.perf_counter() - start
    return {"samples": n, "seconds": round(seconds, 3), "samples_per_s": round(n / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--raw", help="raw release (default: the store manifest's raw_root)")
    parser.add_argument("--split", default="pa_train")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--raw-batches", type=int, default=40,
                        help="batches timed for the raw baseline")
    parser.add_argument("--random-disk-batches", type=int, default=30,
                        help="batches timed for on-disk uniform random order")
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
    t = time.perf_counter()
    mem = gt.SurveyDataset(store, args.split, mods, stats=stats)
    load_s = time.perf_counter() - t
    n = len(mem)
    order = np.random.default_rng(args.seed).permutation(n)
    species = store.species["speciesId"].to_numpy(np.int64)

    # warm the OS page cache for both sides
    _warm([p for p in (Path(args.store) / "cubes" / f"{args.split}.zarr").rglob("*")
           if p.is_file()])
    raw_ds = RawBaseline(raw, args.split, mem.survey_ids, species)
    raw_n = min(n, (args.raw_batches + 1) * bs)
    _warm([raw_ds._path(f, int(s)) for s in mem.survey_ids[order[:raw_n]]
           for f in ("landsat.cube", "climate.cube", "s2.rgb", "s2.nir")])

    results: dict[str, Any] = {}
    for w in args.workers:
        extra = {"num_workers": w, "persistent_workers": w > 0}
        results[f"raw_w{w}"] = _run(DataLoader(raw_ds, batch_size=bs, sampler=_FixedOrder(
            order[:raw_n]), **extra), args.raw_batches)
        results[f"memory_w{w}"] = _run(DataLoader(
            mem, batch_size=bs, sampler=gt.BlockShuffleSampler(mem, seed=args.seed),
            collate_fn=gt.collate, **extra), None, memory_points=5 if w else 0)
        disk = gt.SurveyDataset(store, args.split, mods, stats=stats, in_memory=False)
        results[f"disk_block_w{w}"] = _run(DataLoader(
            disk, batch_size=bs, sampler=gt.BlockShuffleSampler(disk, seed=args.seed),
            collate_fn=gt.collate, **extra), None, memory_points=5 if w else 0)
        disk = gt.SurveyDataset(store, args.split, mods, stats=stats, in_memory=False)
        results[f"disk_random_w{w}"] = _run(DataLoader(
            disk, batch_size=bs, sampler=gt.BlockShuffleSampler(disk, block_size=1,
                                                                seed=args.seed),
            collate_fn=gt.collate, **extra), args.random_disk_batches)
        print(json.dumps({k: v["samples_per_s"] for k, v in results.items()}), file=sys.stderr)
    results["limit_raw"] = _limit(mem, order, bs, normalized=False)
    results["limit_normalized"] = _limit(mem, order, bs, normalized=True)

    def rate(key: str) -> float:
        return results[key]["samples_per_s"]

    ratios: dict[str, float] = {}
    for w in args.workers:
        ratios[f"memory_vs_raw_w{w}"] = round(rate(f"memory_w{w}") / rate(f"raw_w{w}"), 1)
        ratios[f"disk_block_vs_raw_w{w}"] = round(rate(f"disk_block_w{w}") / rate(f"raw_w{w}"),
                                                  1)
        ratios[f"disk_block_vs_random_w{w}"] = round(
            rate(f"disk_block_w{w}") / rate(f"disk_random_w{w}"), 1)
        ratios[f"memory_vs_limit_normalized_w{w}"] = round(
            rate(f"memory_w{w}") / rate("limit_normalized"), 2)
        ratios[f"memory_vs_limit_raw_w{w}"] = round(rate(f"memory_w{w}") / rate("limit_raw"), 2)
    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "split": args.split, "surveys": n, "batch_size": bs, "modalities": list(mods),
        "species": len(species), "in_memory_modalities": list(mem.in_memory_modalities),
        "stats_seconds": round(stats_s, 2), "memory_load_seconds": round(load_s, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.platform()},
        "results": results, "ratios": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
