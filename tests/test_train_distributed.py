"""geoplant.train device and DDP helpers; the kit's DDP path on two CPU processes (gloo)."""

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

import geoplant.experiment as ex
from geoplant.errors import GeoplantError
from geoplant.store import Store, open_store
from geoplant.train import init_distributed, load_checkpoint, select_device
from geoplant.train.distributed import all_reduce, set_epoch, shard_loader, unwrap
from geoplant.train.launch import spawn

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


def _torchrun_env() -> dict[str, str]:
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def ddp_store(loader_store: Path) -> Store:
    return open_store(loader_store)


def test_ddp_through_the_kit_two_cpu_processes(ddp_store: Store, tmp_path: Path) -> None:
    """The kit's own DDP path on two gloo processes: the store's SurveyDataset sharded by
    BlockShuffleSampler (built after the process group exists), fit with gradient
    accumulation (no_sync), rank 0 alone writing."""
    plan = ex.make_plan(ddp_store)
    # an even count: no padding, so every survey is seen exactly once per epoch
    train_ids = plan.train_ids[: len(plan.train_ids) // 2 * 2]
    plan = ex.Plan(train_ids, plan.val_ids, plan.test_split, plan.test_ids)
    job = ex.TorchJob(modalities=("env",), epochs=2, batch_size=64, grad_accum_steps=2,
                      encoder_kwargs={"env": {"hidden": (32,)}}, progress=False,
                      checkpoint_dir=str(tmp_path / "ckpt"))
    folder = ex.write_job(tmp_path / "job", ddp_store, plan, job,
                          ex.training_stats(ddp_store, plan, ["env"]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(TESTS / "ddp_script.py"), str(folder)]
    proc = subprocess.run(cmd, env=_torchrun_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0 = json.loads((folder / "rank0.json").read_text())
    r1 = json.loads((folder / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2 and r0["device"] == "cpu"
    n = len(train_ids)
    per_epoch = [(r0["seen"][e * n // 2:(e + 1) * n // 2], r1["seen"][e * n // 2:(e + 1) * n // 2])
                 for e in range(2)]
    assert len(r0["seen"]) == len(r1["seen"]) == n  # two epochs of n / 2 surveys per rank
    for a, b in per_epoch:  # every training survey exactly once per epoch, across the ranks
        assert sorted(a + b) == sorted(train_ids.tolist())
    assert per_epoch[0][0] != per_epoch[1][0]  # reshuffled each epoch
    w0 = torch.load(folder / "rank0.pt", weights_only=True)
    w1 = torch.load(folder / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # all-reduced logs: both ranks report the same losses and F1 over all surveys
    for a, b in zip(r0["history"], r1["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_f1_threshold", "samples"):
            assert a[key] == b[key], key
    assert r0["history"][0]["samples"] == n
    # rank 0 alone wrote the result and the checkpoints (one log line per epoch)
    assert (folder / "model.pt").is_file() and (folder / "result.json").is_file()
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.pt", "last.pt", "log.jsonl"]
    assert len((ckpt / "log.jsonl").read_text().splitlines()) == 2
    assert load_checkpoint(ckpt / "last.pt")["world_size"] == 2
    result = ex.read_job_result(folder, ddp_store, plan, job)
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, w0[k]), k


def test_spawn_relays_a_worker_error_as_one_line(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _torchrun_env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(GeoplantError) as err:
        spawn("ddp_script:fail", tmp_path, 2)
    assert str(err.value) == "planted failure (fix: nothing to fix)"
