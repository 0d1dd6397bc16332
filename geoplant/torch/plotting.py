"""A one-figure view of a survey: Sentinel-2 patch, env values, Landsat and climate series."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot"]


def _to_numpy(value: torch.Tensor | npt.ArrayLike) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _stretch(image: np.ndarray) -> np.ndarray:
    """Per-channel 2-98 percentile stretch to [0, 1] (works for raw and normalised values)."""
    image = image.astype(np.float64)
    out = np.empty_like(image)
    for c in range(image.shape[0]):
        band = image[c]
        finite = band[np.isfinite(band)]
        lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        out[c] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return np.nan_to_num(out)


def plot(sample: Mapping[str, torch.Tensor | npt.ArrayLike], *,
         title: str | None = None) -> Figure:
    """Plot a survey: RGB patch, NIR, env values, Landsat series, climate series.

    Parameters
    ----------
    sample
        A sample dict of :class:`~geoplant.torch.datasets.SurveyDataset` (tensors or
        arrays); for a collated batch the first survey is shown. Missing modalities leave
        their panel empty.
    title
        Figure title (default: the surveyId and the number of species present).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not shown; save it with ``fig.savefig``).
    """
    from matplotlib.figure import Figure

    from geoplant import layouts

    s = {k: _to_numpy(v) for k, v in sample.items()}
    if "surveyId" in s and s["surveyId"].ndim == 1:  # a batch: first survey
        s = {k: v[0] for k, v in s.items()}
    fig = Figure(figsize=(13, 7), layout="constrained")
    grid = fig.add_gridspec(2, 4)
    ax_rgb, ax_nir = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_env = fig.add_subplot(grid[0, 2:])
    ax_ls, ax_cl = fig.add_subplot(grid[1, :2]), fig.add_subplot(grid[1, 2:])
    s2 = s.get("sentinel2")
    if s2 is not None:
        img = _stretch(s2)
        ax_rgb.imshow(np.moveaxis(img[:3], 0, -1))
        ax_nir.imshow(img[3], cmap="magma")
    ax_rgb.set_title("Sentinel-2 RGB")
    ax_nir.set_title("Sentinel-2 NIR")
    for ax in (ax_rgb, ax_nir):
        ax.set_xticks([])
        ax.set_yticks([])
    env = s.get("env")
    if env is not None:
        ax_env.bar(np.arange(len(env)), np.nan_to_num(env.astype(np.float64)), color="0.4")
        ax_env.set_xlabel("env variable")
    ax_env.set_title("environmental values")
    landsat = s.get("landsat")
    if landsat is not None:  # (band, quarter, year) -> time axis year + (quarter - 1) / 4
        years = np.asarray(layouts.LANDSAT_YEARS, np.float64)
        t = (years[None, :] + (np.arange(4)[:, None]) / 4).T.ravel()
        for b, band in enumerate(layouts.LANDSAT_BANDS[: landsat.shape[0]]):
            ax_ls.plot(t, landsat[b].T.ravel(), label=band, lw=1)
        ax_ls.legend(fontsize=7, ncol=3)
        ax_ls.set_xlabel("year")
    ax_ls.set_title("Landsat (quarterly)")
    climate = s.get("climate")
    if climate is not None:  # (variable, year, month)
        years = np.asarray(layouts.CLIMATE_YEARS, np.float64)
        t = (years[:, None] + np.arange(12)[None, :] / 12).ravel()
        for v, var in enumerate(layouts.CLIMATE_VARIABLES[: climate.shape[0]]):
            ax_cl.plot(t, climate[v].ravel(), label=var, lw=1)
        ax_cl.legend(fontsize=7, ncol=4)
        ax_cl.set_xlabel("year")
    ax_cl.set_title("climate (monthly)")
    if title is None:
        parts = []
        if "surveyId" in s:
            parts.append(f"survey {int(s['surveyId'])}")
        if "labels" in s:
            parts.append(f"{int(np.asarray(s['labels']).sum())} species present")
        title = ", ".join(parts)
    if title:
        fig.suptitle(title)
    return fig
