"""geoplant.synthetic.truth: reading a synthetic release's truth, and the oracle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplant import decode as gd
from geoplant.errors import GeoplantError
from geoplant.synthetic import truth as st


def test_read_truth_matches_the_written_files(glc24_tiny: Path, geoplant_tiny: Path) -> None:
    assert st.truth_splits(glc24_tiny) == ["pa_test"]
    assert st.truth_splits(geoplant_tiny / "truth") == ["pa_test_glc25", "pa_test_iid",
                                                        "pa_test_ood"]
    truth = st.read_synthetic_truth(glc24_tiny)  # the only split; the release root is enough
    assert truth.probabilities.shape == (len(truth.survey_ids), len(truth.species_ids))
    presences = pd.read_csv(glc24_tiny / "truth" / "pa_test_presences.csv")
    rows, cols = truth.labels.nonzero()
    got = set(zip(truth.survey_ids[rows].tolist(), truth.species_ids[cols].tolist(),
                  strict=True))
    assert got == set(presences.itertuples(index=False, name=None))
    ood = st.read_synthetic_truth(geoplant_tiny, "pa_test_ood")
    np.testing.assert_array_equal(
        ood.survey_ids, np.load(geoplant_tiny / "truth" / "pa_test_ood_survey_ids.npy"))
    with pytest.raises(GeoplantError, match="3 test splits with truth here"):
        st.read_synthetic_truth(geoplant_tiny)
    with pytest.raises(GeoplantError, match="no truth for split 'pa_test_ood'"):
        st.read_synthetic_truth(glc24_tiny, "pa_test_ood")
    with pytest.raises(GeoplantError, match="not a synthetic truth folder"):
        st.truth_folder(glc24_tiny / "truth" / "nope")


def test_old_names_still_import_from_decode_lazily() -> None:
    for name in st.__all__:
        assert getattr(gd, name) is getattr(st, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gd.nope  # noqa: B018
    # decode is a lower floor: importing it must not load the synthetic world
    code = ("import sys, geoplant.decode; "
            "assert not any(m.startswith('geoplant.synthetic') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_oracle_report_on_tiny_world(glc24_tiny: Path) -> None:
    table = st.oracle_report(glc24_tiny / "truth", "pa_test")
    assert set(table["decoder"]) == {"top_k", "threshold", "relative_threshold", "average_k",
                                     "expected_f1"}
    assert table["samples_f1"].between(0, 1).all()
    assert table["samples_f1"].is_monotonic_decreasing
    # a decoder tuned on the split is at least as good as its fixed parameter
    for name in gd.DEFAULT_GRIDS:
        rows = table[table["decoder"] == name].set_index("tuned")["samples_f1"]
        assert rows[True] >= rows[False] - 1e-12
    ef1 = table[table["decoder"] == "expected_f1"].iloc[0]
    assert 0 < ef1["expected_f1"] <= 1
    top25 = table[(table["decoder"] == "top_k") & ~table["tuned"]].iloc[0]
    assert ef1["samples_f1"] > top25["samples_f1"]


def test_gap_species_live_where_pa_surveys_are_not(glc24_tiny: Path) -> None:
    """Gap species (half the world's) are near-absent from the PA test surveys' true
    probabilities, yet likely at their range centres (parameters.json), where PO records
    them."""
    import json

    from scipy.special import expit

    from geoplant.synthetic.maps import load_world

    truth = st.read_synthetic_truth(glc24_tiny)
    species = pd.read_csv(glc24_tiny / "truth" / "species.csv")
    assert np.array_equal(species["speciesId"], truth.species_ids)
    gap = species["gap_species"].to_numpy(bool)
    p = truth.probabilities
    assert p[:, gap].mean() < 0.02 * p[:, ~gap].mean()
    params = json.loads((glc24_tiny / "truth" / "parameters.json").read_text())
    ranges = [s["range"] for s in params["species"] if "range" in s]
    assert len(ranges) == gap.sum()
    world = load_world(glc24_tiny / "truth")
    index = np.flatnonzero(gap)[:10]
    lon = np.repeat([ranges[i]["lon"] for i in range(10)], 64)
    lat = np.repeat([ranges[i]["lat"] for i in range(10)], 64)
    sites = world.sites(np.random.default_rng(0), lon, lat)
    logits = world.niche_logits(sites, index) + world.intercept[index]
    own = expit(logits).reshape(10, 64, 10)[np.arange(10), :, np.arange(10)]  # (species, site)
    assert (own.mean(axis=1) > 20 * p[:, index].mean(axis=0) + 0.01).all()
