"""The ``geoplant build`` command: its options and its run."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from geoplant.builder.core import BuildSummary, build
from geoplant.builder.spec import MODALITIES
from geoplant.errors import GeoplantError

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``build`` command's options."""
    parser.add_argument("raw", help="raw release folder (glc24 or geoplant layout)")
    parser.add_argument("--out", required=True, help="store folder to create or resume")
    parser.add_argument("--splits", nargs="+", help="splits to build (default: all)")
    parser.add_argument("--modalities", nargs="+", choices=tuple(MODALITIES),
                        help="per-survey modalities (default: all the release has)")
    parser.add_argument("--scheduler", help="dask.distributed scheduler address (default: "
                                            "local threads)")
    parser.add_argument("--workers", type=int, help="local worker threads (default: all cores)")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad item")
    parser.add_argument("--no-rasters", action="store_true", help="skip the raster conversion")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what --out holds (a store or other files) and build anew")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant build``."""
    if args.workers is not None and args.workers < 1:
        raise GeoplantError(f"--workers must be >= 1, got {args.workers}")
    if not Path(args.raw).is_dir():
        raise GeoplantError("raw release folder not found", path=args.raw,
                            fix="pass the folder made by `geoplant download` or "
                                "`geoplant sample`")
    summary = build(args.raw, args.out, splits=args.splits, modalities=args.modalities,
                    scheduler=args.scheduler, workers=args.workers, strict=args.strict,
                    rasters=not args.no_rasters, progress=not args.quiet,
                    overwrite=args.overwrite)
    _report(summary)
    return 0


def _report(summary: BuildSummary) -> None:
    """Print what the build wrote, and what it skipped, by kind."""
    counts = ", ".join(f"{k}={v:,}" for k, v in summary.counts.items())
    print(f"built {summary.store} in {summary.seconds:.1f} s ({summary.blocks_done} blocks, "
          f"{summary.blocks_resumed} resumed): {counts}")
    if summary.skipped:
        kinds = pd.Series([s["kind"] for s in summary.skipped]).value_counts()
        print(f"skipped {len(summary.skipped)} bad items ("
              + ", ".join(f"{k}: {v}" for k, v in kinds.items())
              + "); listed in manifest.json")
