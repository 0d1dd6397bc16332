"""Planted-signal synthetic batches for the model/training tests, and the DDP test's script.

As a script (run by ``tests/test_train_distributed.py`` through ``torch.distributed.run``
with two CPU processes)::

    python -m torch.distributed.run --nproc_per_node=2 --standalone tests/ddp_script.py OUT

each rank trains the same small model with :func:`geoplant.train.fit` (gloo backend) and
writes ``OUT/rank{r}.pt`` (its final weights) and ``OUT/rank{r}.json`` (its history).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

ALL_MODALITIES = ("env", "climate", "landsat", "sentinel2")


class PlantedDataset(Dataset):
    """Batch dicts as geoplant.torch.SurveyDataset yields them, with a planted signal.

    Three latent habitat factors ``z`` are smooth functions of the survey location (plus
    noise); species presence is Bernoulli(sigmoid(z @ B + b)). The factors leak into the
    inputs: env columns 0-2, climate channels 0-1, Landsat channel 0, Sentinel-2 channel 3.

    Attributes
    ----------
    lonlat : (n, 2) coordinates; env : (n, 46); labels : (n, n_species) float32 0/1;
    prob : the true presence probabilities.
    """

    def __init__(self, n: int = 256, n_species: int = 8, seed: int = 0,
                 modalities: Sequence[str] = ALL_MODALITIES, sentinel_size: int = 16,
                 invert_labels: bool = False) -> None:
        g = np.random.default_rng(seed)
        lon, lat = g.uniform(0, 6, n), g.uniform(40, 46, n)
        z = np.stack([np.sin(1.5 * lon), np.cos(1.5 * lat), np.sin(lon + lat)], axis=1)
        z += 0.3 * g.normal(size=z.shape)
        coef = np.random.default_rng(1000).normal(scale=2.0, size=(3, n_species))
        bias = np.random.default_rng(1001).normal(-1.0, 1.0, size=n_species)
        self.prob = 1 / (1 + np.exp(-(z @ coef + bias)))
        labels = (g.random(self.prob.shape) < self.prob).astype(np.float32)
        self.labels = 1 - labels if invert_labels else labels
        self.lonlat = np.stack([lon, lat], axis=1)
        self.modalities = tuple(modalities)
        env = g.normal(size=(n, 46)).astype(np.float32)
        env[:, :3] = z + 0.3 * g.normal(size=z.shape)
        self.env = env
        self.arrays: dict[str, np.ndarray] = {"env": env}
        if "climate" in self.modalities:
            c = g.normal(size=(n, 4, 19, 12)).astype(np.float32)
            c[:, 0] += z[:, 0, None, None]
            c[:, 1] += z[:, 1, None, None]
            self.arrays["climate"] = c
        if "landsat" in self.modalities:
            ls = g.normal(size=(n, 6, 4, 21)).astype(np.float32)
            ls[:, 0] += z[:, 2, None, None]
            self.arrays["landsat"] = ls
        if "sentinel2" in self.modalities:
            s = g.normal(size=(n, 4, sentinel_size, sentinel_size)).astype(np.float32)
            s[:, 3] += z[:, 0, None, None]
            self.arrays["sentinel2"] = s
        self.survey_ids = np.arange(1000, 1000 + n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {m: torch.from_numpy(self.arrays[m][i]) for m in self.modalities}
        item["labels"] = torch.from_numpy(self.labels[i])
        item["surveyId"] = torch.tensor(self.survey_ids[i])
        return item


def main(out: Path) -> None:
    """Train on two gloo ranks; write each rank's weights and history."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from geoplant.models import MultimodalSDM
    from geoplant.train import TrainConfig, fit, seed_everything

    torch.set_num_threads(1)
    train = PlantedDataset(n=128, n_species=8, seed=0, modalities=("env", "climate"))
    val = PlantedDataset(n=64, n_species=8, seed=1, modalities=("env", "climate"))
    seed_everything(0)
    model = MultimodalSDM(["env", "climate"], 8, encoder_kwargs={
        "env": {"hidden": (32,)}, "climate": {"widths": (8, 16)}})
    cfg = TrainConfig(epochs=4, lr=3e-3, warmup_epochs=0.5, top_k=3, patience=None,
                      checkpoint_dir=str(out / "ckpt"), device="cpu")
    result = fit(model, DataLoader(train, batch_size=16, shuffle=True),
                 DataLoader(val, batch_size=16), cfg)
    rank = dist.get_rank()
    torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
    hist = [h.__dict__ for h in result.history]
    (out / f"rank{rank}.json").write_text(json.dumps({
        "history": hist, "world_size": dist.get_world_size(), "device": result.device}))
    # Both ranks reach here before tearing gloo down: destroying while the peer still talks
    # aborted a rank once in CI ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
