"""The kit's raw readers, written from the format spec, read the synthetic releases whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplant import layouts
from geoplant.raw import RawRelease
from geoplant.synthetic.world import PRESETS


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_every_split_reads_and_is_consistent(request: pytest.FixtureRequest, layout: str) -> None:
    root: Path = request.getfixturevalue(f"{layout}_tiny")
    with RawRelease(root) as raw:
        assert raw.layout == layout  # detected from the files
        po = raw.read_metadata("po_train")
        assert len(po) == PRESETS["tiny"].n_po_rows and po["speciesId"].dtype == np.int32
        for split in layouts.SPLITS[layout][1:]:
            report = raw.check_consistency(split)
            assert report.ok, report.summary()
            ids = raw.survey_ids(split)
            meta = raw.read_metadata(split)
            assert np.array_equal(ids, np.unique(meta["surveyId"]))
            landsat = raw.read_landsat_cubes(split, ids)
            value_ids, values = raw.landsat_values_cube(split)
            assert np.array_equal(value_ids, ids)
            np.testing.assert_array_equal(landsat.data, values)
            climate = raw.read_climate_cubes(split, ids)
            np.testing.assert_array_equal(climate.data, raw.climate_values_cube(split)[1])
            if "s2.rgb" in raw.families(split):
                patches = raw.read_s2_jpegs(split, ids[:10])
                assert patches.ok.all() and patches.data.shape == (10, 4, 128, 128)
            if "s2.tiff" in raw.families(split):
                tiffs = raw.read_s2_tiffs(split, ids[:10])
                assert tiffs.ok.all() and tiffs.data.shape == (10, 4, 64, 64)
        elevation = raw.raster("elevation")
        assert elevation.rio.crs.to_epsg() == 4326 and elevation.shape == (1, 360, 420)


def test_labels_read_back_equal_the_truth_of_train_draws(glc24_tiny: Path) -> None:
    with RawRelease(glc24_tiny) as raw:
        train = raw.read_metadata("pa_train")
        test = raw.read_metadata("pa_test")
    species = pd.read_csv(glc24_tiny / "truth" / "species.csv")["speciesId"]
    assert set(train["speciesId"]) <= set(species)
    presences = pd.read_csv(glc24_tiny / "truth" / "pa_test_presences.csv")
    assert set(presences["surveyId"]) == set(test["surveyId"])
