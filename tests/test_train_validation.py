"""geoplant.train.validation: the in-loop samples-F1 equals geoplant.metrics'; best tracking."""

from __future__ import annotations

import math

import numpy as np
import torch

from geoplant.metrics import samples_f1
from geoplant.train import samples_f1_threshold, samples_f1_topk
from geoplant.train.validation import is_better, monitored_value


def test_in_loop_f1_equals_metrics_module() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((50, 12)).astype(np.float32)
    y = (rng.random((50, 12)) < 0.25).astype(np.float32)
    y[0] = 0  # an empty survey
    k = 4
    top = np.argsort(-scores, 1)[:, :k]
    pred = np.zeros_like(y)
    np.put_along_axis(pred, top, 1, 1)
    got = samples_f1_topk(torch.from_numpy(scores), torch.from_numpy(y), k).mean()
    assert np.isclose(float(got), samples_f1(y, pred), atol=1e-6)
    thr = torch.tensor([0.3, 0.7])
    per = samples_f1_threshold(torch.from_numpy(scores), torch.from_numpy(y), thr)
    for i, t in enumerate([0.3, 0.7]):
        assert np.isclose(float(per[i].mean()), samples_f1(y, scores >= t), atol=1e-6)


def test_is_better_and_monitored_value() -> None:
    assert is_better(0.5, None, "f1_topk", 0.0)
    assert is_better(0.5, math.nan, "f1_topk", 0.0)
    assert not is_better(math.nan, None, "loss", 0.0)
    assert is_better(0.6, 0.5, "f1_topk", 0.05) and not is_better(0.54, 0.5, "f1_topk", 0.05)
    assert is_better(0.4, 0.5, "loss", 0.0) and not is_better(0.6, 0.5, "loss", 0.0)
    metrics = {"val_loss": 1.0, "val_f1_topk": 0.2, "val_f1_threshold": 0.3}
    assert [monitored_value(metrics, m) for m in ("loss", "f1_topk", "f1_threshold")] == \
        [1.0, 0.2, 0.3]
