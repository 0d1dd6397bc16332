"""Maps of a PA-trained and a PO-trained model against the true maps, gap species apart.

Maps the saved models of a finished ``geoplant demo`` folder (``runs/NAME/model``) with
:func:`geoplant.maps.make_maps`, scores them on the true maps the ``maps`` baseline wrote
(``runs/maps/truth_maps``) and splits the species into the world's gap species (recorded by
PO only) and the others. A constant map ranks nothing: its Spearman counts as 0. Intervals:
95% bootstrap over species, paired for the difference. Prints JSON.

    python benchmarks/po_maps.py --demo demo [--pa env-nn] [--po po-env-maxent]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoplant.map_eval import score_maps
from geoplant.maps import make_maps
from geoplant.metrics import bootstrap_means


def _species_scores(demo: Path, name: str, work: Path) -> tuple[pd.DataFrame, float]:
    maps = work / name
    make_maps(demo / "runs" / name / "model", demo / "store", maps, top=0, progress=False,
              quicklooks=False)
    scores = score_maps(maps, demo / "runs" / "maps" / "truth_maps")
    table = scores["species"].set_index("speciesId")
    table["spearman"] = table["spearman"].fillna(0.0)  # constant map: no ranking
    return table, float(scores["richness_pearson"])


def compare(demo: Path, pa: str, po: str, work: Path) -> dict[str, Any]:
    """Per-group mean Spearman of both models, their paired difference and richness r."""
    gap = pd.read_csv(demo / "raw" / "truth" / "species.csv").set_index("speciesId")
    (ta, ra), (tb, rb) = _species_scores(demo, pa, work), _species_scores(demo, po, work)
    is_gap = gap["gap_species"].reindex(ta.index).astype(bool).to_numpy()
    out: dict[str, Any] = {"pa_model": pa, "po_model": po,
                           "richness_pearson": {pa: ra, po: rb}, "groups": {}}
    for label, rows in (("gap species", is_gap), ("other species", ~is_gap)):
        a, b = ta["spearman"][rows].to_numpy(), tb.loc[ta.index[rows], "spearman"].to_numpy()
        ci = bootstrap_means({pa: a, po: b}, differences={"po - pa": (po, pa)}, n=2000)
        out["groups"][label] = {
            "n_species": int(rows.sum()), pa: float(np.mean(a)), po: float(np.mean(b)),
            "ci": {k: list(v) for k, v in ci.items()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", required=True, help="a finished geoplant demo folder")
    parser.add_argument("--pa", default="env-nn", help="PA-trained mappable baseline")
    parser.add_argument("--po", default="po-env-maxent", help="PO-trained mappable baseline")
    parser.add_argument("--work", default="benchmarks/out/po_maps", help="where maps go")
    args = parser.parse_args()
    result = compare(Path(args.demo), args.pa, args.po, Path(args.work))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
