"""Tables are never silently wrong: a file cut short, a row with the wrong number of fields and
rows of one survey that disagree each raise one line naming the file, the line and the fix;
extra metadata columns are kept."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplant import cli, layouts
from geoplant.errors import GeoplantError
from geoplant.raw import (
    LANDSAT_VALUE_COLUMNS,
    RawRelease,
    RowProblem,
    iter_metadata_csv,
    read_metadata_csv,
    read_survey_ids_csv,
    read_values_csv,
)

PA_HEADER = ",".join(layouts.PA_TRAIN_COLUMNS) + "\n"
TEST_HEADER = ",".join(layouts.PA_TEST_COLUMNS) + "\n"


def _rows(sids: list[int], species: int = 3) -> str:
    """PA train rows: ``species`` rows per survey, its site repeated on each."""
    return "".join(f"{2 + s / 1e4:.4f},48.1,2019,1,10,ALPINE,France,{k}.0,{s}\n"
                   for s in sids for k in range(species))


def _one_line(err: pytest.ExceptionInfo[GeoplantError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# -- truncation -----------------------------------------------------------------------------


def test_a_last_field_cut_short_is_truncation_even_when_it_parses(tmp_path: Path) -> None:
    p = tmp_path / "PA_metadata_train.csv"
    text = PA_HEADER + _rows([8644, 8650])
    p.write_text(text[:-2])  # "...,8650\n" -> "...,865": a fake survey 865 that parses
    for read in (lambda: read_metadata_csv(p, "pa", bad_rows="drop"),
                 lambda: list(iter_metadata_csv(p, "pa", bad_rows="drop", block_bytes=120)),
                 lambda: read_survey_ids_csv(p)):
        with pytest.raises(GeoplantError) as err:
            read()
        assert _one_line(err).startswith(f"{p}: the file ends in the middle of line 7 ")
        assert "truncated" in str(err.value) and "re-download" in str(err.value)


def test_a_line_cut_before_its_last_field(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text(PA_HEADER + _rows([8644]) + "2.8644,48.1,20")
    with pytest.raises(GeoplantError, match=r"m\.csv: the file ends in the middle of line 5 "
                                            r"\(no newline; 3 of its 9 fields\)"):
        read_metadata_csv(p, "pa", bad_rows="keep")


def test_a_row_with_the_wrong_number_of_fields_names_its_line(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    lines = (PA_HEADER + _rows([1, 2, 3])).splitlines(keepends=True)
    lines[5] = lines[5].rstrip("\n") + ",extra\n"
    p.write_text("".join(lines))
    for read in (lambda: read_metadata_csv(p, "pa", bad_rows="drop"),
                 lambda: list(iter_metadata_csv(p, "pa", bad_rows="drop", block_bytes=200))):
        with pytest.raises(GeoplantError) as err:
            read()
        assert _one_line(err) == (f"{p}: line 6 has 10 field(s), the header 9: the file is "
                                  "damaged or cut short (fix: re-download the file, or repair "
                                  "line 6)")


def test_value_tables_and_zip_members_are_checked_too(tmp_path: Path) -> None:
    p = tmp_path / "elevation.csv"
    p.write_text("surveyId,Elevation\n1,3\n2,41")
    with pytest.raises(GeoplantError, match=r"elevation\.csv: the file ends in the middle of "
                                            r"line 3 .*'41'"):
        read_values_csv(p, ("Elevation",))
    split, sids = "pa_test_ood", [5, 6]
    meta = layouts.location("geoplant", "metadata.pa", split)
    (tmp_path / meta.path).parent.mkdir(parents=True)
    (tmp_path / meta.path).write_text(TEST_HEADER + "".join(
        f"2.5,48.1,2019,1,10,ALPINE,France,{s}\n" for s in sids))
    loc = layouts.location("geoplant", "landsat.values", split, band="red")
    (tmp_path / loc.path).parent.mkdir(parents=True)
    values = ",".join(["1.0"] * 84)
    text = "surveyId," + ",".join(LANDSAT_VALUE_COLUMNS) + f"\n5,{values}\n6,{values[4:]}\n"
    with zipfile.ZipFile(tmp_path / loc.path, "w") as zf:
        zf.writestr(loc.member, text)
    raw = RawRelease(tmp_path)
    with pytest.raises(GeoplantError) as err:
        raw.check_consistency(split).raise_if_bad()
    assert "line 3 has 84 field(s), the header 85" in str(err.value)
    with pytest.raises(GeoplantError, match=r"\.zip::PA-test-ood-landsat_time_series-red\.csv: "
                                            r"line 3 has 84 field\(s\)"):
        raw.read_landsat_values(split, "red")


def test_whole_files_still_read(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text(PA_HEADER + _rows([1, 2]))
    assert read_metadata_csv(p, "pa")["surveyId"].tolist() == [1, 1, 1, 2, 2, 2]
    p.write_bytes((PA_HEADER + _rows([1, 2])).replace("\n", "\r\n").encode())
    assert len(read_metadata_csv(p, "pa")) == 6


# -- rows of one survey ---------------------------------------------------------------------


def test_rows_of_one_survey_must_agree_on_its_site(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    lines = (PA_HEADER + _rows([8644, 8650])).splitlines(keepends=True)
    lines[6] = lines[6].replace(",48.1,", ",49.3,")  # a row of 8650 elsewhere
    p.write_text("".join(lines))
    for mode in ("raise", "drop", "keep"):
        with pytest.raises(GeoplantError) as err:
            read_metadata_csv(p, "pa", bad_rows=mode)
        assert _one_line(err).startswith(
            f"{p}: line 7: surveyId 8650 has lat 49.3 but 48.1 on line 5 ")
        assert "two surveys share an id" in str(err.value) and "repair" in str(err.value)


def test_disagreement_across_streamed_blocks(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    text = PA_HEADER + _rows(list(range(100, 140))) + _rows([100], species=1).replace(
        "2019", "2020")
    p.write_text(text)
    with pytest.raises(GeoplantError, match=r"line 122: surveyId 100 has year 2020 but 2019 on "
                                            r"line 2"):
        for _ in iter_metadata_csv(p, "pa", block_bytes=500):
            pass


def test_a_test_split_with_51_rows_for_50_surveys(tmp_path: Path) -> None:
    sids = list(range(1000, 1050))
    rows = [f"{2 + i / 100:.2f},48.1,2019,1,10,ALPINE,France,{s}\n" for i, s in enumerate(sids)]
    p = tmp_path / "PA_metadata_test_iid.csv"
    p.write_text(TEST_HEADER + "".join(rows) + "9.9,48.1,2019,1,10,ALPINE,France,1017\n")
    with pytest.raises(GeoplantError, match=r"line 52: surveyId 1017 has lon 9\.9 but 2\.17 on "
                                            r"line 19"):
        read_metadata_csv(p, "pa_test", bad_rows="drop")
    # the same row repeated exactly: a row problem, dropped and listed (not a second survey)
    p.write_text(TEST_HEADER + "".join(rows) + rows[17])
    problems: list[RowProblem] = []
    df = read_metadata_csv(p, "pa_test", bad_rows="drop", problems=problems)
    assert len(df) == 50 and df["surveyId"].is_unique
    assert [(q.line, q.survey_id) for q in problems] == [(52, 1017)]
    with pytest.raises(GeoplantError, match=r"line 52: repeated row"):
        read_metadata_csv(p, "pa_test")


def test_area_may_differ_between_rows_of_a_survey(tmp_path: Path) -> None:
    # real GLC24 rows do this (survey 2357522 in shared/real-samples: 100.0 and 0.1)
    p = tmp_path / "m.csv"
    p.write_text(PA_HEADER + _rows([7]).replace(",10,ALPINE", ",0.1,ALPINE", 1))
    assert read_metadata_csv(p, "pa")["areaInM2"].tolist() == [0.1, 10, 10]


# -- extra metadata columns ------------------------------------------------------------------


def test_extra_metadata_columns_are_kept(tmp_path: Path) -> None:
    p = tmp_path / "PA_metadata_train.csv"
    p.write_text(PA_HEADER.rstrip("\n") + ",taxonRank,county,disctrict\n"
                 + "2.5,48.1,2019,1,10,ALPINE,France,3.0,7,SPECIES,Ain,Bourg\n"
                 + "2.5,48.1,2019,1,10,ALPINE,France,4.0,7,SPECIES,Ain,Bourg\n")
    df = read_metadata_csv(p, "pa")
    assert list(df.columns[-3:]) == ["taxonRank", "county", "district"]  # disctrict: renamed
    assert isinstance(df["district"].dtype, pd.CategoricalDtype)
    assert df["district"].tolist() == ["Bourg", "Bourg"]
    # two rows of one survey in two districts: the site disagrees
    first, second = p.read_text().rsplit("Bourg", 1)
    p.write_text(first + "Gex" + second)
    with pytest.raises(GeoplantError, match="line 3: surveyId 7 has district 'Gex' but 'Bourg' "
                                            "on line 2"):
        read_metadata_csv(p, "pa")
    po = tmp_path / "PO_metadata_train.csv"
    po.write_text(",".join(layouts.PO_COLUMNS) + ",region,district\n"
                  "Pl@ntNet,2019,5.0,5.0,43.7,1.5,6.0,SPECIES,2019-05-05,125,3.0,1,"
                  "MEDITERRANEAN,Ain\n")
    df = read_metadata_csv(po, "po")
    assert (df["region"].tolist(), df["district"].tolist()) == (["MEDITERRANEAN"], ["Ain"])


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["cut", "conflict"])
def test_build_of_a_damaged_table_exits_2_with_one_line(
        glc24_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        damage: str) -> None:
    raw = shutil.copytree(glc24_tiny, tmp_path / "raw", ignore=shutil.ignore_patterns("truth"))
    if damage == "cut":  # cut mid-way, inside the last field (surveyId) of a line
        path = raw / layouts.location("glc24", "metadata.pa", "pa_train").path
        data = path.read_bytes()
        end = data.index(b"\n", len(data) // 2)
        path.write_bytes(data[:end - 1])
        want = "the file ends in the middle of line"
    else:  # a test split with one row more than surveys, at another place
        path = raw / layouts.location("glc24", "metadata.pa", "pa_test").path
        test = pd.read_csv(path)
        extra = test.iloc[[3]].assign(lat=test["lat"].iloc[3] + 1)
        pd.concat([test, extra]).to_csv(path, index=False)
        want = f"surveyId {test['surveyId'].iloc[3]} has lat"
    code = cli.main(["build", str(raw), "--out", str(tmp_path / "store"), "--quiet",
                     "--no-rasters"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and want in err and "re-download" in err
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_a_whole_release_is_unaffected(glc24_tiny: Path) -> None:
    raw = RawRelease(glc24_tiny)
    for split in raw.splits:
        assert len(raw.read_metadata(split)) > 0
    assert np.isin(raw.survey_ids("pa_test"), raw.read_env("elevation", "pa_test")["surveyId"]
                   ).all()
