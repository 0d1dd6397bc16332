"""The ``geoplant`` command line.

Each sub-command lives in its own module, which provides ``configure_parser(parser)`` and
``run(args) -> int``. Modules are imported only for the command that runs, so ``geoplant
--help`` stays fast and a missing optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from geoplant import __version__
from geoplant.errors import GeoplantError

#: name -> (module, one-line help). Order is the order shown by ``geoplant --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("geoplant.demo", "Run the whole kit offline on a synthetic world: sample, build, "
             "baselines, scores vs oracle."),
    "download": ("geoplant.downloader", "Download GeoPlant / GeoLifeCLEF parts (Kaggle or HTTP)."),
    "build": ("geoplant.builder", "Build a raw release into a store (GeoParquet + Zarr v3)."),
    "evaluate": ("geoplant.evaluate", "Score a Kaggle submission (samples-F1 and more) against "
                 "PA truth or a synthetic oracle."),
    "kaggle": ("geoplant.kaggle", "Kaggle-native: publish a store, push a baseline as a GPU "
               "kernel, pull its outputs, submit."),
    "info": ("geoplant.info", "Summarise a store (counts, modalities, skipped items)."),
    "map": ("geoplant.maps", "Map a saved env model over the store's raster grid: "
            "probability Zarr, COGs, richness, top-K, quick-looks."),
    "run": ("geoplant.run", "Execute a named baseline notebook with papermill (+ model card)."),
    "sample": ("geoplant.sample", "Write a synthetic GeoPlant release in a real raw layout."),
}


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2 (argparse's default code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``command``'s module is imported to configure its options."""
    parser = _Parser(
        prog="geoplant",
        description="Multimodal species distribution modelling on GeoPlant / GeoLifeCLEF.",
    )
    parser.add_argument("--version", action="version", version=f"geoplant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_line) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_line, description=help_line)
        if name == command:
            importlib.import_module(module).configure_parser(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``geoplant`` command; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except GeoplantError as err:
        print(f"geoplant {args.command}: error: {err.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"geoplant {args.command}: interrupted; rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
