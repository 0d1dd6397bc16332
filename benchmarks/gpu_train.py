"""Training throughput of the multimodal model: samples/s, data-wait fraction, peak memory.

The GPU path end to end: ``SurveyDataset(normalize=False)`` (stored dtypes, Sentinel-2
uint8) -> ``ds.loader`` (packed batches, pinned when CUDA is there) -> non-blocking copies
to the device -> ``RandomFlipRotate`` on the device -> ``MultimodalSDM`` with a
``DeviceNormalizer`` (normalisation inside the model) -> BCE loss, AdamW step.

For each batch size: ``--warmup`` steps, then ``--steps`` timed steps. A step's time is the
wait for the next batch (``data_wait``: the loader could not keep up) plus the copy and the
compute (synchronised at the end of the step on CUDA, so each step is measured whole). Peak
device memory is ``torch.cuda.max_memory_allocated`` per batch size (CUDA only); the RSS of
the main process after each batch size is reported everywhere. The same script runs
unchanged on CPU and CUDA.

Usage::

    python benchmarks/gpu_train.py --store STORE [--device cuda] [--batch-sizes 64 256 1024]

Prints JSON and writes ``benchmarks/out/gpu_train.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

import geoplant.torch as gt
from geoplant.models import MultimodalSDM

MODS = ("sentinel2", "landsat", "climate", "env")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(loader: Any) -> Any:
    """Endless batches over epochs (a new shuffle each epoch)."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        epoch += 1
        yield from loader


def run_batch_size(ds: gt.SurveyDataset, bs: int, args: argparse.Namespace,
                   device: torch.device) -> dict[str, Any]:
    """Train ``--warmup`` + ``--steps`` steps at batch size ``bs``; time the last ones."""
    torch.manual_seed(args.seed)
    model = MultimodalSDM(list(ds.modalities), ds.n_species,
                          encoder_kwargs={"sentinel2": {"weights": None}}
                          if "sentinel2" in ds.modalities else None,
                          normalizer=gt.DeviceNormalizer.from_dataset(ds)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    augment = gt.RandomFlipRotate()
    amp = args.amp and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    non_blocking = device.type == "cuda"
    loader = ds.loader(batch_size=bs, shuffle=True, seed=args.seed, drop_last=len(ds) >= bs,
                       num_workers=args.workers, persistent_workers=args.workers > 0,
                       pin_memory=device.type == "cuda")
    it = _batches(loader)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wait = total = 0.0
    samples = 0
    model.train()
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        batch = {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
        batch = augment(batch)
        with autocast:
            logits = model(batch)
        loss = loss_fn(logits.float(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        t2 = time.perf_counter()
        if step >= args.warmup:
            wait += t1 - t0
            total += t2 - t0
            samples += len(batch["surveyId"])
    del it, loader
    out: dict[str, Any] = {
        "batch_size": bs, "steps": args.steps, "samples": samples,
        "samples_per_s": round(samples / total, 1),
        "step_ms": round(1e3 * total / args.steps, 1),
        "data_wait_ms": round(1e3 * wait / args.steps, 2),
        "data_wait_fraction": round(wait / total, 4),
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "peak_device_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if device.type == "cuda" else None,
        "final_loss": round(float(loss), 4),
    }
    return out


def loader_only(ds: gt.SurveyDataset, bs: int, args: argparse.Namespace,
                device: torch.device, samples: int = 10_000) -> float:
    """Samples/s of the loader alone (with the copy to the device): the data ceiling."""
    loader = ds.loader(batch_size=bs, shuffle=True, seed=args.seed, drop_last=len(ds) >= bs,
                       num_workers=args.workers, persistent_workers=args.workers > 0,
                       pin_memory=device.type == "cuda")
    it = _batches(loader)
    next(it)
    n = 0
    t = time.perf_counter()
    for _ in range(max(10, -(-samples // bs))):
        batch = next(it)
        batch = {k: v.to(device, non_blocking=device.type == "cuda") for k, v in batch.items()}
        n += len(batch["surveyId"])
    _sync(device)
    return round(n / (time.perf_counter() - t), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--split", default="pa_train")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default: 64 128 256 512 1024 on CUDA, 32 64 on CPU")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per batch size (default: 30 on CUDA, 4 on CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--in-memory", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--no-amp", dest="amp", action="store_false",
                        help="no bf16 autocast on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "gpu_train.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch_sizes = args.batch_sizes or ([64, 128, 256, 512, 1024] if cuda else [32, 64])
    args.steps = args.steps or (30 if cuda else 4)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if cuda:
        torch.backends.cudnn.benchmark = True

    in_memory = {"auto": None, "yes": True, "no": False}[args.in_memory]
    ds = gt.SurveyDataset(args.store, args.split, MODS, normalize=False, in_memory=in_memory)
    results = []
    for bs in args.batch_sizes:
        row = run_batch_size(ds, bs, args, device)
        row["loader_only_samples_per_s"] = loader_only(ds, bs, args, device)
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
        if cuda:
            torch.cuda.empty_cache()
    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor(),
        "split": args.split, "surveys": len(ds), "species": ds.n_species,
        "modalities": list(MODS), "in_memory_modalities": list(ds.in_memory_modalities),
        "workers": args.workers, "amp_bf16": bool(args.amp and cuda),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
