"""PO pre-training and PO-only deep models vs their PA-only counterparts, on one store.

Trains, on the same plan (spatial-block PA validation) and seed:

- ``env-nn``: env MLP on PA (``experiment.fit_torch(["env"])``);
- ``po-env-an`` / ``po-env-maxent``: env MLP on PO records pooled into 1 km cells, with the
  assume-negative or DeepMaxent loss (``presence_only.fit_po``), intercepts matched to the PA
  training prevalence;
- ``mme-multimodal``: the multimodal model on PA;
- ``mme-po-pretrained``: the same, its env encoder and head env columns from the PO model
  (``fit_torch(init_from=...)``);

scores each on the PA test surveys against the synthetic truth (decoder tuned on validation,
``experiment.score``: samples-F1, fraction of the oracle's, 95% bootstrap intervals) and
compares pairs survey by survey: the difference of mean samples-F1 and of the fraction of
the oracle, with a paired 95% bootstrap interval (the same resampled test surveys for both
models and the oracle). A pair is called only when the interval excludes 0.

    python benchmarks/po_pretrain.py --store STORE [--epochs 6 --po-epochs 6] [--json out.json]
    python benchmarks/po_pretrain.py --preset tiny --work /tmp/po-bench   # generates a world
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _synthetic import synthetic_release_and_store

from geoplant import experiment as ex
from geoplant import presence_only as po
from geoplant.metrics import bootstrap_means
from geoplant.store import Store, open_store

MODELS = ("env-nn", "po-env-an", "po-env-maxent", "mme-multimodal", "mme-po-pretrained")
#: (a, b): a - b is reported.
PAIRS = (("mme-po-pretrained", "mme-multimodal"), ("po-env-an", "env-nn"),
         ("po-env-maxent", "env-nn"))
MME = ["sentinel2", "landsat", "climate", "env"]


def _store(args: argparse.Namespace) -> Store:
    if args.store:
        return open_store(args.store)
    return open_store(synthetic_release_and_store(args.work, args.preset, args.world_seed)[1])


def _train(name: str, store: Store, plan: ex.Plan, args: argparse.Namespace,
           work: Path) -> tuple[ex.Predictions, ex.Predictions]:
    common = {"seed": args.seed, "progress": False}
    if name == "env-nn":
        val, test, _ = ex.fit_torch(store, plan, ["env"], epochs=args.epochs, **common)
    elif name in ("po-env-an", "po-env-maxent"):
        loss = "po_an" if name == "po-env-an" else "po_maxent"
        val, test, _ = po.fit_po(store, plan, loss=loss, epochs=args.po_epochs,
                                 cell_km=args.cell_km, **common)
    elif name == "mme-multimodal":
        val, test, _ = ex.fit_torch(store, plan, args.modalities, epochs=args.epochs, **common)
    elif name == "mme-po-pretrained":
        _, _, pre = po.fit_po(store, plan, loss=args.po_loss, epochs=args.po_epochs,
                              cell_km=args.cell_km, **common)
        weights = po.save_pretrained(pre.model, work / "po_pretrained.pt")
        val, test, _ = ex.fit_torch(store, plan, args.modalities, epochs=args.epochs,
                                    init_from=weights, **common)
    else:
        raise SystemExit(f"unknown model {name!r}: use some of {', '.join(MODELS)}")
    return val, test


def _paired(a: np.ndarray, b: np.ndarray, oracle: np.ndarray, n: int,
            seed: int) -> dict[str, Any]:
    """Mean F1 difference and fraction-of-oracle difference with paired bootstrap CIs
    (:func:`geoplant.metrics.bootstrap_means`: the same resampled surveys for all three)."""
    ci = bootstrap_means({"diff": a - b, "oracle": oracle}, ratios={"frac": ("diff", "oracle")},
                         n=n, seed=seed)
    diff = float(a.mean() - b.mean())
    return {"samples_f1_diff": round(diff, 4),
            "samples_f1_diff_ci": [round(v, 4) for v in ci["diff"]],
            "fraction_of_oracle_diff": round(diff / float(oracle.mean()), 4),
            "fraction_of_oracle_diff_ci": [round(v, 4) for v in ci["frac"]],
            "n_surveys": len(a),
            "verdict": "a better" if ci["diff"][0] > 0 else "b better" if ci["diff"][1] < 0
            else "no claim (interval includes 0)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="a built store with a synthetic truth")
    parser.add_argument("--preset", default="tiny", help="world to generate without --store")
    parser.add_argument("--work", default=None, help="where a generated world goes")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--epochs", type=int, default=6, help="PA epochs")
    parser.add_argument("--po-epochs", type=int, default=6, help="PO epochs")
    parser.add_argument("--po-loss", default="po_maxent", help="pre-training loss")
    parser.add_argument("--cell-km", type=float, default=1.0)
    parser.add_argument("--modalities", nargs="+", default=MME)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not args.store and args.work is None:
        args.work = tempfile.mkdtemp(prefix="po-pretrain-")

    store = _store(args)
    plan = ex.make_plan(store, seed=args.seed)
    rows: dict[str, dict[str, Any]] = {}
    per_survey: dict[str, np.ndarray] = {}
    oracle = np.zeros(0)
    with tempfile.TemporaryDirectory(prefix="po-pretrain-run-") as tmp:
        for name in args.models:
            started = time.perf_counter()
            val, test = _train(name, store, plan, args, Path(tmp))
            decoder = ex.choose_decoder(val, progress=False)
            m = ex.score(store, plan, test, decoder, val, bootstrap=args.bootstrap,
                         seed=args.seed)
            scores = m.pop(ex.PER_SURVEY_KEY)
            per_survey[name], oracle = np.asarray(scores["f1"]), np.asarray(scores["oracle_f1"])
            rows[name] = {k: m[k] for k in ("test_samples_f1", "test_samples_f1_ci",
                                            "fraction_of_oracle", "fraction_of_oracle_ci",
                                            "oracle_samples_f1", "val_samples_f1", "decoder")}
            rows[name]["seconds"] = round(time.perf_counter() - started, 1)
            print(f"{name:<18} F1 {m['test_samples_f1']:.4f} {m['test_samples_f1_ci']} "
                  f"fraction of oracle {m['fraction_of_oracle']:.3f} "
                  f"{m['fraction_of_oracle_ci']}  ({rows[name]['seconds']} s)", flush=True)
    pairs = {f"{a} - {b}": _paired(per_survey[a], per_survey[b], oracle, args.bootstrap,
                                   args.seed)
             for a, b in PAIRS if a in per_survey and b in per_survey}
    print()
    for label, p in pairs.items():
        print(f"{label}: samples-F1 {p['samples_f1_diff']:+.4f} {p['samples_f1_diff_ci']}, "
              f"fraction of oracle {p['fraction_of_oracle_diff']:+.4f} "
              f"{p['fraction_of_oracle_diff_ci']} over {p['n_surveys']} surveys: {p['verdict']}")
    result = {"store": store.path, "settings": {k: v for k, v in vars(args).items()},
              "models": rows, "pairs": pairs}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
