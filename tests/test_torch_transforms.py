"""geoplant.torch.transforms and plot: augmentations and the one-survey figure."""

from __future__ import annotations

from pathlib import Path

import torch

import geoplant.torch as gt


def test_flip_rotate_is_one_symmetry_for_all_channels() -> None:
    x = torch.arange(4 * 5 * 5, dtype=torch.float32).reshape(4, 5, 5)
    aug = gt.RandomFlipRotate(generator=torch.Generator().manual_seed(0))
    symmetries = [gt.RandomFlipRotate.apply(x, k, f) for k in range(4) for f in (False, True)]
    seen = set()
    for _ in range(64):
        out = aug({"sentinel2": x, "env": torch.ones(3)})
        match = [i for i, s in enumerate(symmetries) if torch.equal(out["sentinel2"], s)]
        assert len(match) == 1  # every channel moved the same way
        seen.add(match[0])
        assert torch.equal(out["env"], torch.ones(3))
    assert len(seen) == 8
    batch = torch.stack([x, x + 1000, x + 2000])
    out = aug({"sentinel2": batch})["sentinel2"]
    for i in range(3):
        assert any(torch.equal(out[i], gt.RandomFlipRotate.apply(batch[i], k, f))
                   for k in range(4) for f in (False, True))


def test_transforms_apply_per_batch_or_per_sample(loader_store: Path,
                                                  loader_mem_ds: gt.SurveyDataset) -> None:
    plain = loader_mem_ds
    # a batch-aware transform runs once on the whole batch, in the packed buffer
    aug = gt.RandomFlipRotate(generator=torch.Generator().manual_seed(3))
    ds = gt.SurveyDataset(loader_store, "pa_train", in_memory=False, transforms=aug,
                          return_mask=True)
    batch = ds.__getitems__(list(range(16)))
    assert isinstance(batch, gt.SurveyBatch) and isinstance(batch.tensors, gt.PackedBatch)
    base = batch.tensors.flat.untyped_storage().data_ptr()
    assert batch.tensors["sentinel2"].untyped_storage().data_ptr() == base
    ref = plain.get_batch(list(range(16)))
    again = gt.RandomFlipRotate(generator=torch.Generator().manual_seed(3))(ref)
    assert torch.equal(batch.tensors["sentinel2"], again["sentinel2"])
    assert not torch.equal(batch.tensors["sentinel2"], ref["sentinel2"])
    assert torch.equal(batch.tensors["env"], ref["env"])
    # any other callable runs per sample
    ds = gt.SurveyDataset(loader_store, "pa_train", in_memory=False,
                          transforms=lambda sample: dict(sample))
    samples = ds.__getitems__([1, 2])
    assert isinstance(samples, list) and len(samples) == 2
    assert torch.equal(gt.collate(samples)["sentinel2"], plain.get_batch([1, 2])["sentinel2"])


def test_flip_rotate_commutes_with_device_normalisation(loader_store: Path,
                                                        loader_stats: dict) -> None:
    raw = gt.SurveyDataset(loader_store, "pa_train", ("sentinel2",), normalize=False,
                           in_memory=False)
    norm = gt.DeviceNormalizer.from_dataset(raw)
    batch = raw.get_batch(list(range(32)))
    a = norm(gt.RandomFlipRotate(generator=torch.Generator().manual_seed(5))(batch))
    b = gt.RandomFlipRotate(generator=torch.Generator().manual_seed(5))(norm(batch))
    assert batch["sentinel2"].dtype == torch.uint8 and torch.equal(a["sentinel2"],
                                                                   b["sentinel2"])
    # one symmetry for the whole batch takes the no-gather path
    aug = gt.RandomFlipRotate(rotate=False, generator=torch.Generator().manual_seed(0))
    x = batch["sentinel2"][:1]
    out = aug({"sentinel2": x})["sentinel2"]
    assert any(torch.equal(out[0], gt.RandomFlipRotate.apply(x[0], 0, f)) for f in (0, 1))


# --- plotting (geoplant.torch.plotting) --------------------------------------------------------


def test_plot_writes_a_figure(loader_mem_ds: gt.SurveyDataset, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    ds = loader_mem_ds
    fig = ds.plot(3)
    assert len(fig.axes) == 5
    assert len(fig.axes[0].images) == 1 and len(fig.axes[3].lines) == 6
    assert len(fig.axes[4].lines) == 4
    assert str(ds.survey_ids[3]) in fig.get_suptitle()
    out = tmp_path / "sample.png"
    fig.savefig(out, dpi=60)
    assert out.stat().st_size > 10_000
    gt.plot(ds.get_batch([0, 1]))  # a batch plots its first survey
