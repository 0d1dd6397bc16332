"""The ``geoplant download`` command: its options and its run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Final

from geoplant.downloader.core import download
from geoplant.downloader.plan import SOURCES

__all__ = ["RELEASES", "configure_parser", "int_at_least", "run"]

RELEASES: Final = ("glc24", "geoplant")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {value}")
        return value

    return parse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``geoplant download`` options to ``parser``."""
    parser.epilog = ("Parts are catalog names or globs (quote them: 's24-rasters-*'); 'all' is "
                     "every part. List them with --dry-run. Kaggle needs KAGGLE_USERNAME and "
                     "KAGGLE_KEY or ~/.kaggle/kaggle.json.")
    parser.add_argument("parts", nargs="*", metavar="PART", help="part names or globs, or 'all'")
    parser.add_argument("--dest", metavar="DIR", default=None,
                        help="release root to download into (default: data/<release>)")
    parser.add_argument("--release", choices=RELEASES, default="glc24",
                        help="which release catalog (default: glc24)")
    parser.add_argument("--catalog", metavar="FILE", default=None,
                        help="use this catalog YAML instead of --release")
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="kaggle, http or auto (default: auto)")
    parser.add_argument("--mirror", metavar="URL", default=None,
                        help="HTTP(S) base URL of a copy of the release, or a Seafile share link")
    parser.add_argument("--dry-run", action="store_true",
                        help="list parts, sizes, total and what is present; fetch nothing")
    parser.add_argument("--extract", action="store_true", help="unzip archive parts once")
    parser.add_argument("--jobs", type=int_at_least(1), default=4, metavar="N",
                        help="files fetched in parallel (default: 4)")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash present files instead of trusting the lock file")
    parser.add_argument("--accept-size", action="store_true",
                        help="accept a file whose size is far from the catalog's approximate "
                             "size (outside 0.5x-2x of it); exact sizes and checksums still "
                             "apply")
    parser.add_argument("--retries", type=int_at_least(0), default=5, metavar="N",
                        help="HTTP retries per file (default: 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant download``; return the exit code."""
    report = download(
        args.parts or None, dest=args.dest, release=args.release, source=args.source,
        mirror=args.mirror, dry_run=args.dry_run, extract=args.extract, jobs=args.jobs,
        verify=args.verify, accept_size=args.accept_size, retries=args.retries,
        progress=not args.no_progress, catalog=args.catalog,
    )
    if report.dry_run:
        print(f"release {report.release} -> {report.dest} (dry run: nothing fetched)")
    for line in report.lines():
        print(line)
    return 0
