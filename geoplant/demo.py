"""``geoplant demo``: the whole kit offline on the embedded synthetic world.

sample (tiny) -> build -> every baseline through papermill -> a table of samples-F1 per
baseline beside the oracle's (the best achievable with the true probabilities).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from geoplant.errors import GeoplantError

#: Baselines the demo runs, in order (each a baselines/<name>.yaml).
DEMO_BASELINES = ("naive-frequency", "env-logistic", "env-nn", "climate-nn", "landsat-nn",
                  "sentinel2-nn", "mme-multimodal")


def demo(out: str | Path = "demo", *, preset: str = "tiny", seed: int = 0,
         baselines: tuple[str, ...] = DEMO_BASELINES, epochs: int | None = None,
         progress: bool = True) -> list[dict[str, Any]]:
    """Run the demo; return one row per baseline (and print the table).

    Finished steps are kept: rerunning with the same ``out`` reuses the release, the store
    and every baseline whose ``metrics.json`` exists.
    """
    from geoplant.build import build
    from geoplant.run import run_baseline
    from geoplant.synthetic.release import write_release

    root = Path(out).expanduser().absolute()
    raw, store = root / "raw", root / "store"
    started = time.perf_counter()
    if not (raw / "truth" / "parameters.json").exists():
        _say(f"[1/3] writing a {preset} synthetic release to {raw}", progress)
        write_release(raw, preset=preset, seed=seed, overwrite=True, progress=progress)
    if not (store / "manifest.json").exists() or (store / "_build").exists():
        _say(f"[2/3] building the store {store}", progress)
        build(raw, store, progress=progress)
    rows = []
    for i, name in enumerate(baselines, start=1):
        target = root / "runs" / name
        metrics_file = target / "metrics.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
        else:
            _say(f"[3/3] baseline {i}/{len(baselines)}: {name}", progress)
            params = {"epochs": epochs} if epochs else {}
            metrics = run_baseline(name, store, target, parameters=params, progress=progress)
        rows.append({"baseline": name, **metrics})
    _say(table(rows), True)
    _say(f"done in {time.perf_counter() - started:.0f} s; notebooks, metrics and model cards "
         f"in {root / 'runs'}", True)
    (root / "results.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width table."""
    lines = [f"{'baseline':<18} {'test samples-F1':>15} {'oracle':>8} {'of oracle':>9} "
             f"{'val F1':>7} {'decoder':>12}"]
    for r in rows:
        f1 = r.get("test_samples_f1", float("nan"))
        oracle = r.get("oracle_samples_f1", float("nan"))
        lines.append(f"{r['baseline']:<18} {f1:>15.4f} {oracle:>8.4f} "
                     f"{r.get('fraction_of_oracle', float('nan')):>9.1%} "
                     f"{r.get('val_samples_f1', float('nan')):>7.4f} {r.get('decoder', ''):>12}")
    return "\n".join(lines)


def _say(text: str, show: bool) -> None:
    if show:
        print(text, flush=True)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` command's options."""
    parser.add_argument("--out", default="demo", help="work folder (default ./demo)")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small"),
                        help="synthetic world size (default tiny: ~10 min on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baselines", nargs="+", default=list(DEMO_BASELINES),
                        help="baselines to run (default: all)")
    parser.add_argument("--epochs", type=int, help="override every neural baseline's epochs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant demo``."""
    if args.epochs is not None and args.epochs < 1:
        raise GeoplantError(f"--epochs must be >= 1, got {args.epochs}")
    demo(args.out, preset=args.preset, seed=args.seed, baselines=tuple(args.baselines),
         epochs=args.epochs, progress=not args.quiet)
    return 0
