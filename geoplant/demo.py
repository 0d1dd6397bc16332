"""``geoplant demo``: the whole kit offline on the embedded synthetic world.

sample (the demo world) -> build -> every baseline through papermill -> a table of samples-F1 per
baseline beside the oracle's (the best achievable with the true probabilities).

The neural baselines start from random weights on every machine (their notebooks'
``weights="random"``: no ImageNet weights picked up from a cache); see the README for
which figures still vary between machines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text

#: Where the demo records the parameters each step was made with.
STATE_FILE = "demo.json"

#: The world ``geoplant demo`` writes by default: ``demo`` has tiny's training size and a
#: large test split, so every test samples-F1 is known within about +-0.01 (95%).
DEFAULT_PRESET = "demo"

#: The baseline whose maps the demo scores against the true maps (after the table).
MAPS_BASELINE = "maps"

#: Pairs (a, b) the demo compares survey by survey when both ran: mean samples-F1 of a
#: minus b with a paired bootstrap interval; a claim only where it excludes 0.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("mme-po-pretrained", "mme-multimodal"), ("po-maxent-target", "po-maxent-uniform"),
    ("po-env-maxent", "env-nn"), ("mme-multimodal", "env-logistic"))

#: Presets ``geoplant demo --preset`` takes.
DEMO_PRESETS = ("demo", "tiny", "small")

#: Baselines the demo runs, in order (each a baselines/<name>.yaml). ``sentinel2-nn`` is
#: left out to stay under 15 minutes on 2 cores (its ResNet-18 took 4.4 of 18 minutes; the
#: two multimodal models train the same encoder): ``--baselines`` takes it.
DEMO_BASELINES = ("naive-frequency", "env-logistic", "env-nn", "climate-nn", "landsat-nn",
                  "mme-multimodal", "po-maxent-uniform", "po-maxent-target", "po-env-an",
                  "po-env-maxent", "mme-po-pretrained")


def demo(out: str | Path = "demo", *, preset: str = DEFAULT_PRESET, seed: int = 0,
         baselines: tuple[str, ...] = DEMO_BASELINES, epochs: int | None = None,
         maps: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Run the demo; return one row per baseline (and print the table, the paired
    comparisons of :data:`COMPARISONS` and, with ``maps``, the agreement of the
    :data:`MAPS_BASELINE` maps with the world's true maps).

    Finished steps are kept, keyed on the parameters they were made with (``demo.json`` in
    ``out``): rerunning with the same ``out`` and parameters reuses the release, the store
    and every finished baseline, and resumes an interrupted one; a step made with other
    parameters (``preset``, ``seed``, ``epochs``) is made again, and so is every step after
    it.
    """
    root = Path(out).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    state = _State(root)
    started = time.perf_counter()
    store = _release_and_store(root, state, preset=preset, seed=seed, progress=progress)
    rows = []
    key = {"preset": preset, "seed": seed, "epochs": epochs}
    for i, name in enumerate(baselines, start=1):
        metrics = _baseline(root / "runs" / name, store, state, name, key,
                            f"[3/4] baseline {i}/{len(baselines)}: {name}", progress)
        rows.append({"baseline": name, **metrics})
    _say(table(rows), True)
    for line in comparisons(root / "runs", [r["baseline"] for r in rows]):
        _say(line, True)
    if maps:
        found = _baseline(root / "runs" / MAPS_BASELINE, store, state, MAPS_BASELINE, key,
                          f"[4/4] maps: {MAPS_BASELINE}", progress)
        _say(map_summary(found, root / "runs" / MAPS_BASELINE), True)
    _say(f"done in {time.perf_counter() - started:.0f} s; notebooks, metrics and model cards "
         f"in {root / 'runs'}", True)
    atomic_write_text(root / "results.json", json.dumps(rows, indent=1, default=str) + "\n")
    return rows


class _State:
    """``demo.json``: the parameters each step's output was (or is being) made with.

    A step's key is written *before* it runs, so an interrupted step with the same key is
    resumed and one with another key is made again from scratch.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / STATE_FILE
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError:  # damaged: every step is made again
                self.data = {}

    def key(self, step: str) -> Any:
        """The parameters ``step`` was made with (None: unknown)."""
        return self.data.get(step)

    def set(self, step: str, key: Any) -> None:
        """Record that ``step`` is made with ``key`` (written at once)."""
        self.data[step] = key
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def _changed(state: _State, step: str, key: Any, progress: bool) -> bool:
    """Whether ``step`` was made with other parameters (said aloud when it was made at all)."""
    old = state.key(step)
    if old == key:
        return False
    if old is not None:
        _say(f"{step} was made with {old}, now {key}: making it again", progress)
    return True


def _release_and_store(root: Path, state: _State, *, preset: str, seed: int,
                       progress: bool) -> Path:
    """Steps 1 and 2: the synthetic release and its store, each made or reused; the store."""
    from geoplant.builder import build
    from geoplant.synthetic.release import write_release

    raw, store = root / "raw", root / "store"
    key = {"preset": preset, "seed": seed}
    changed = _changed(state, "release", key, progress)
    if changed or not (raw / "truth" / "parameters.json").exists():
        _say(f"[1/4] writing a {preset} synthetic release to {raw}", progress)
        state.set("release", key)
        write_release(raw, preset=preset, seed=seed, overwrite=True, progress=progress)
    rebuild = _changed(state, "store", key, progress) or changed
    if rebuild or not (store / "manifest.json").exists() or (store / "_build").exists():
        _say(f"[2/4] building the store {store}", progress)
        state.set("store", key)
        build(raw, store, progress=progress, overwrite=rebuild and store.exists())
    return store


def _baseline(target: Path, store: Path, state: _State, name: str, key: dict[str, Any],
              title: str, progress: bool) -> dict[str, Any]:
    """Step 3 for one baseline: its metrics, reused when made with ``key``, else run
    (resumed when interrupted with ``key``, from scratch otherwise)."""
    from geoplant.run import run_baseline

    step = f"runs/{name}"
    metrics_file = target / "metrics.json"
    fresh = _changed(state, step, key, progress)
    if not fresh and metrics_file.exists():
        return dict(json.loads(metrics_file.read_text()))
    _say(title, progress)
    if fresh:
        metrics_file.unlink(missing_ok=True)  # never reused if the run below fails
        state.set(step, key)
    params = {"epochs": key["epochs"]} if key["epochs"] else {}
    return run_baseline(name, store, target, parameters=params, progress=progress, fresh=fresh)


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width table; test scores with their 95% bootstrap interval
    over the test surveys (``[lo, hi]``) where the run recorded one."""
    lines = [f"{'baseline':<18} {'test samples-F1 [95% CI]':>25} {'oracle':>7} "
             f"{'of oracle [95% CI]':>21} {'val F1':>7} {'decoder':>12}"]
    for r in rows:
        f1 = r.get("test_samples_f1", float("nan"))
        oracle = r.get("oracle_samples_f1", float("nan"))
        frac = r.get("fraction_of_oracle", float("nan"))
        lines.append(f"{r['baseline']:<18} {_with_ci(f1, r.get('test_samples_f1_ci'), '.4f'):>25} "
                     f"{oracle:>7.4f} {_with_ci(frac, r.get('fraction_of_oracle_ci'), '.1%'):>21} "
                     f"{r.get('val_samples_f1', float('nan')):>7.4f} {r.get('decoder', ''):>12}")
    return "\n".join(lines)


def comparisons(runs: Path, names: list[str], *, n: int = 1000,
                seed: int = 0) -> list[str]:
    """One line per pair of :data:`COMPARISONS` whose runs both wrote per-survey scores:
    the difference of mean test samples-F1 with its paired 95% bootstrap interval, and
    whether the interval allows a claim."""
    from geoplant.experiment import PER_SURVEY_FILE
    from geoplant.metrics import bootstrap_means

    lines = []
    for a, b in COMPARISONS:
        files = [runs / name / PER_SURVEY_FILE for name in (a, b)]
        if a not in names or b not in names or not all(f.is_file() for f in files):
            continue
        import pandas as pd

        fa, fb = (pd.read_csv(f).set_index("surveyId")["f1"] for f in files)
        common = fa.index.intersection(fb.index)
        ci = bootstrap_means({"a": fa.loc[common], "b": fb.loc[common]},
                             differences={"d": ("a", "b")}, n=n, seed=seed)["d"]
        diff = float(fa.loc[common].mean() - fb.loc[common].mean())
        verdict = (f"{a} is better" if ci[0] > 0 else f"{b} is better" if ci[1] < 0
                   else "no difference the interval allows claiming")
        lines.append(f"{a} - {b}: {diff:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] samples-F1 over "
                     f"{len(common)} test surveys (paired): {verdict}")
    return lines


def map_summary(metrics: dict[str, Any], folder: Path) -> str:
    """The line saying how well the maps baseline's maps agree with the true maps."""
    if "map_spearman_mean" not in metrics:
        return f"maps written to {folder} (no true maps to compare with)"
    lo, hi = metrics.get("map_spearman_mean_ci", (float("nan"), float("nan")))
    return (f"maps ({metrics.get('model', 'model')}, {metrics.get('valid_cells', 0):,} cells) vs "
            f"the true maps: Spearman {metrics['map_spearman_mean']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"(mean over the {metrics.get('map_n_species_ranked', '?')} of "
            f"{metrics.get('map_n_species', '?')} species whose map varies, 95% CI), richness "
            f"Pearson {metrics.get('map_richness_pearson', float('nan')):.3f}; "
            f"{folder / 'maps'}")


def _with_ci(value: float, ci: Any, fmt: str) -> str:
    """``0.4321 [0.4210, 0.4433]`` (the value alone when no interval was recorded)."""
    text = format(value, fmt)
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"
    return text


def _say(text: str, show: bool) -> None:
    if show:
        print(text, flush=True)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` command's options."""
    parser.add_argument("--out", default="demo", help="work folder (default ./demo)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=DEMO_PRESETS,
                        help=f"synthetic world size (default {DEFAULT_PRESET})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baselines", nargs="+", default=list(DEMO_BASELINES),
                        help="baselines to run (default: all)")
    parser.add_argument("--epochs", type=int, help="override every neural baseline's epochs")
    parser.add_argument("--no-maps", action="store_true",
                        help="skip the maps step (wall-to-wall maps scored on the true maps)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant demo``."""
    if args.epochs is not None and args.epochs < 1:
        raise GeoplantError(f"--epochs must be >= 1, got {args.epochs}")
    demo(args.out, preset=args.preset, seed=args.seed, baselines=tuple(args.baselines),
         epochs=args.epochs, maps=not args.no_maps, progress=not args.quiet)
    return 0
