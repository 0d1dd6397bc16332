"""``geoplant info``: summarise a store."""

from __future__ import annotations

import argparse
import json

from geoplant.store import open_store


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``info`` command's options."""
    parser.add_argument("store", help="store folder or fsspec URL")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant info``."""
    info = open_store(args.store).info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['path']}  ({info['layout']} layout, {info['created_by']}, "
          f"{info['bytes'] / 1e6:,.1f} MB)")
    for key, value in info["counts"].items():
        print(f"  {key:<24} {value:>12,}")
    for split, mods in info["modalities"].items():
        print(f"  cube {split:<19} {', '.join(mods)}")
    print(f"  rasters                  {info['rasters']:>12,}")
    print(f"  skipped items            {info['skipped']:>12,}  {info['skipped_by_kind'] or ''}")
    return 0
