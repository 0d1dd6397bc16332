"""``geoplant kaggle publish | push | pull | submit``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from geoplant.errors import GeoplantError
from geoplant.kaggle.kernels import (
    DEFAULT_COMPETITION,
    parameter_value,
    pull_kernel,
    push_baseline,
    wait_for_kernel,
)
from geoplant.kaggle.publish import publish_store
from geoplant.kaggle.submit import submit


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _publish_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    help_line = "Publish a store as a Kaggle dataset (created, or a new version)."
    p = sub.add_parser("publish", help=help_line, description=help_line + (
        " Writes dataset-metadata.json and a data card (README.md) into a staging folder "
        "beside the store, links the store's entries there, and uploads it with the kaggle "
        "client (folders as zips, which Kaggle unpacks)."))
    p.add_argument("store", help="store folder built by `geoplant build`")
    p.add_argument("--dataset", required=True, metavar="OWNER/SLUG", help="Kaggle dataset")
    p.add_argument("--title", help="dataset title, 6-50 characters (default from the store)")
    p.add_argument("--subtitle", help="dataset subtitle, 20-80 characters")
    p.add_argument("--notes", help="version notes of a new version")
    p.add_argument("--licence", "--license", dest="licence",
                   help="Kaggle licence name (default from the release catalog: MIT -> other)")
    p.add_argument("--public", action="store_true",
                   help="create the dataset public (default private; a version keeps it)")
    p.add_argument("--staging", metavar="DIR", help="staging folder (default STORE.kaggle)")
    p.add_argument("--dry-run", action="store_true",
                   help="write the metadata and data card and list the upload; no credentials, "
                        "no network")


def _push_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    help_line = "Run a named baseline on Kaggle as a notebook kernel."
    p = sub.add_parser("push", help=help_line, description=help_line + (
        " Injects the baseline's parameters into its notebook (papermill), writes "
        "kernel-metadata.json beside it in a staging folder and pushes it with the kaggle "
        "client; Kaggle then runs it with the dataset attached and internet off."))
    p.add_argument("baseline", help="baseline name (geoplant run --list)")
    p.add_argument("--dataset", required=True, metavar="OWNER/SLUG",
                   help="Kaggle dataset holding the store (geoplant kaggle publish)")
    p.add_argument("--competition", default=DEFAULT_COMPETITION,
                   help=f"competition attached as input (default {DEFAULT_COMPETITION}; "
                        "'' for none)")
    p.add_argument("--kernel", metavar="[OWNER/]SLUG",
                   help="kernel id (default YOU/geoplant-BASELINE)")
    p.add_argument("--title", help="kernel title (default: the slug with spaces)")
    p.add_argument("--gpu", action="store_true", help="run on a GPU")
    p.add_argument("--public", action="store_true", help="make the kernel public")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("KEY", "VALUE"), help="override a parameter (repeatable)")
    p.add_argument("--extra-dataset", action="append", default=[], metavar="OWNER/SLUG",
                   help="another dataset input, e.g. one holding the geoplant package")
    p.add_argument("--kernel-source", action="append", default=[], metavar="OWNER/SLUG",
                   help="a kernel input (e.g. a utility script)")
    p.add_argument("--staging", metavar="DIR",
                   help="staging folder (default kaggle-kernels/SLUG)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the run to end; a failed run is an error")
    p.add_argument("--poll-interval", type=_positive, default=30.0, metavar="S",
                   help="seconds between status checks with --wait (default 30)")
    p.add_argument("--timeout", type=_positive, default=12 * 3600.0, metavar="S",
                   help="give up waiting after S seconds (default 43200)")
    p.add_argument("--dry-run", action="store_true",
                   help="write the notebook and kernel-metadata.json only; no credentials, "
                        "no network")


def _pull_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    help_line = "Fetch a kernel's outputs (metrics.json, submission.csv, figures, log)."
    p = sub.add_parser("pull", help=help_line, description=help_line)
    p.add_argument("kernel", metavar="OWNER/SLUG", help="the kernel")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")


def _submit_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    help_line = "Validate a submission against the raw test surveys, then submit it."
    p = sub.add_parser("submit", help=help_line, description=help_line + (
        " The test surveyIds come from the RAW release's test metadata (not a store), and "
        "every row must predict at least one species."))
    p.add_argument("submission", metavar="SUBMISSION.csv", help="surveyId,predictions CSV")
    p.add_argument("--raw", required=True, metavar="RAW_RELEASE",
                   help="root of the raw release (glc24 or geoplant layout)")
    p.add_argument("--competition", default=DEFAULT_COMPETITION,
                   help=f"competition slug (default {DEFAULT_COMPETITION})")
    p.add_argument("--split", help="raw test split (default: the competition's)")
    p.add_argument("--message", help="submission description")
    p.add_argument("--dry-run", action="store_true", help="validate only")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``kaggle`` command's sub-commands."""
    sub = parser.add_subparsers(dest="kaggle_command", metavar="ACTION")
    for add in (_publish_parser, _push_parser, _pull_parser, _submit_parser):
        add(sub)
    parser.set_defaults(kaggle_parser=parser)


def _say(line: str) -> None:
    print(line, flush=True)


def _publish(args: argparse.Namespace) -> None:
    pub = publish_store(args.store, args.dataset, title=args.title, subtitle=args.subtitle,
                        notes=args.notes, licence=args.licence, public=args.public,
                        dry_run=args.dry_run, staging=args.staging)
    for line in pub.lines():
        _say(line)


def _push(args: argparse.Namespace) -> None:
    params = {key: parameter_value(value) for key, value in args.parameter}
    push = push_baseline(args.baseline, args.dataset, dry_run=args.dry_run, kernel=args.kernel,
                         title=args.title, competition=args.competition or None, gpu=args.gpu,
                         public=args.public, parameters=params,
                         extra_datasets=args.extra_dataset, kernel_sources=args.kernel_source,
                         staging=args.staging)
    for line in push.lines():
        _say(line)
    if args.wait and push.pushed:
        ref = str(push.ref)
        wait_for_kernel(ref, poll_interval=args.poll_interval, timeout=args.timeout,
                        report=lambda status: _say(f"kernel {ref}: {status}"))
        _say(f"kernel {ref} finished: complete; fetch its outputs with "
             f"`geoplant kaggle pull {ref} --out DIR`")


def _pull(args: argparse.Namespace) -> None:
    files = pull_kernel(args.kernel, args.out)
    if not files:
        raise GeoplantError(f"kernel {args.kernel} has no output yet", path=args.out,
                            fix="wait for its run to finish (geoplant kaggle push --wait)")
    _say(f"{len(files)} file(s) from {args.kernel} in {args.out}:")
    for f in files:
        _say(f"  {os.path.relpath(f, Path(args.out).expanduser())}")


def _submit(args: argparse.Namespace) -> None:
    result = submit(args.submission, args.raw, competition=args.competition,
                    message=args.message, split=args.split, dry_run=args.dry_run)
    for line in result.lines():
        _say(line)


_ACTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "publish": _publish, "push": _push, "pull": _pull, "submit": _submit}


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant kaggle ACTION``."""
    if not getattr(args, "kaggle_command", None):
        args.kaggle_parser.print_help()
        return 2
    _ACTIONS[args.kaggle_command](args)
    return 0


__all__ = ["configure_parser", "run"]
