"""geoplant.train device and DDP helpers; fit on two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_script import PlantedDataset
from torch.utils.data import DataLoader

from geoplant.train import init_distributed, load_checkpoint, select_device
from geoplant.train.distributed import all_reduce, set_epoch, shard_loader, unwrap

TESTS = Path(__file__).resolve().parent


def test_select_device() -> None:
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device().type in ("cpu", "mps")


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") is False
    assert all_reduce([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0]
    loader = DataLoader(PlantedDataset(n=8, modalities=("env",)), batch_size=4)
    model = torch.nn.Linear(2, 2)
    assert unwrap(model) is model
    set_epoch(loader, 3)  # nothing listens: no error
    iterable = [{"labels": torch.zeros(1)}]
    assert shard_loader(iterable, shuffle=True, seed=0) is iterable  # type: ignore[arg-type]


def test_ddp_two_cpu_processes_gloo(tmp_path: Path) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(TESTS / "ddp_script.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    h0 = json.loads((tmp_path / "rank0.json").read_text())
    h1 = json.loads((tmp_path / "rank1.json").read_text())
    assert h0["world_size"] == 2 and h0["device"] == "cpu"
    losses = [r["train_loss"] for r in h0["history"]]
    assert losses[-1] < losses[0]
    # metrics are all-reduced: both ranks report the same losses and F1 over all samples
    for a, b in zip(h0["history"], h1["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_f1_topk", "samples"):
            assert a[key] == b[key], key
    assert h0["history"][0]["samples"] == 128  # two shards of 64
    # only rank 0 wrote checkpoints and logs (one log line per epoch)
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.pt", "last.pt", "log.jsonl"]
    assert len((ckpt / "log.jsonl").read_text().splitlines()) == 4
    assert load_checkpoint(ckpt / "last.pt")["world_size"] == 2
