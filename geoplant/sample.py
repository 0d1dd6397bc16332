"""``geoplant sample``: write a synthetic GeoPlant release in a real raw layout.

The Python API is :func:`geoplant.synthetic.release.write_release`, re-exported here.
"""

from __future__ import annotations

import argparse
import time

from geoplant.layouts import LAYOUTS
from geoplant.synthetic.release import ReleaseSummary, write_release
from geoplant.synthetic.world import PRESETS

__all__ = ["ReleaseSummary", "configure_parser", "run", "write_release"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``sample`` command's options."""
    parser.add_argument("--out", required=True, help="folder to create (must be empty)")
    parser.add_argument("--layout", choices=LAYOUTS, default="glc24",
                        help="glc24: Kaggle GeoLifeCLEF 2024 tree (default); "
                             "geoplant: the 2026 GeoPlant structure")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="tiny",
                        help="tiny (CI, seconds), demo (geoplant demo: 1.25k train and "
                             "2.5k test surveys), small (10k surveys), large (real sizes)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant sample``."""
    started = time.perf_counter()
    summary = write_release(args.out, layout=args.layout, preset=args.preset, seed=args.seed,
                            overwrite=args.overwrite, progress=not args.quiet)
    counts = ", ".join(f"{k}={v:,}" for k, v in summary.counts.items())
    print(f"wrote {summary.layout} release ({summary.preset}, seed {summary.seed}) to "
          f"{summary.root}: {summary.n_files:,} files, {summary.bytes / 1e6:,.1f} MB "
          f"in {time.perf_counter() - started:.1f} s")
    print(f"  {counts}; {summary.n_species} species; truth in {summary.root / 'truth'}")
    return 0
