"""Planted-signal synthetic batches for the model/training tests, and the DDP test's script.

As a script (run by ``tests/test_train_distributed.py`` through ``torch.distributed.run``
with two CPU processes, on a job folder written by ``geoplant.experiment.write_job``)::

    python -m torch.distributed.run --nproc_per_node=2 --standalone tests/ddp_script.py JOB

each rank runs the kit's own DDP worker (``geoplant.experiment.train_worker``: the store's
SurveyDataset, BlockShuffleSampler sharding and ``geoplant.train.fit`` on gloo) and writes
``JOB/rank{r}.pt`` (its final weights) and ``JOB/rank{r}.json`` (the surveys it trained on,
its history).
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


def main(job_dir: Path) -> int:
    """One torchrun worker of the kit's own DDP path, recording what it trained on.

    Runs ``geoplant.train.launch.main("geoplant.experiment:train_worker", job_dir)``
    (process group, SurveyDataset + BlockShuffleSampler, fit) with two test hooks: the
    model's forward records the training surveys of each batch, and ``_train``'s result
    (every rank's final weights) is saved. Writes ``job_dir/rank{r}.pt`` and
    ``job_dir/rank{r}.json`` (surveys seen in training, in order; world size; device).
    """
    import geoplant.experiment as ex
    from geoplant.models import MultimodalSDM
    from geoplant.train.launch import main as launch_main

    torch.set_num_threads(1)
    seen: list[int] = []
    forward = MultimodalSDM.forward

    def recording_forward(self: MultimodalSDM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.training:
            seen.extend(batch["surveyId"].tolist())
        return forward(self, batch)

    train = ex._train

    def keeping_train(*args: object, **kwargs: object) -> object:
        import torch.distributed as dist

        result = train(*args, **kwargs)  # type: ignore[arg-type]
        rank = dist.get_rank()
        torch.save(result.model.state_dict(), job_dir / f"rank{rank}.pt")
        (job_dir / f"rank{rank}.json").write_text(json.dumps({
            "seen": seen, "world_size": dist.get_world_size(), "device": result.device,
            "history": [h.__dict__ for h in result.history]}))
        return result

    MultimodalSDM.forward = recording_forward  # type: ignore[method-assign]
    ex._train = keeping_train  # type: ignore[assignment]
    return launch_main(["geoplant.experiment:train_worker", str(job_dir)])


def fail(job_dir: str) -> None:
    """A torchrun target that fails the way the kit reports (for the launcher's test)."""
    from geoplant.errors import GeoplantError

    raise GeoplantError("planted failure", fix="nothing to fix")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
