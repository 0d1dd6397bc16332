"""``geoplant demo``: the whole kit offline on the embedded synthetic world.

sample (tiny) -> build -> every baseline through papermill -> a table of samples-F1 per
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

#: Baselines the demo runs, in order (each a baselines/<name>.yaml).
DEMO_BASELINES = ("naive-frequency", "env-logistic", "env-nn", "climate-nn", "landsat-nn",
                  "sentinel2-nn", "mme-multimodal")


def demo(out: str | Path = "demo", *, preset: str = "tiny", seed: int = 0,
         baselines: tuple[str, ...] = DEMO_BASELINES, epochs: int | None = None,
         progress: bool = True) -> list[dict[str, Any]]:
    """Run the demo; return one row per baseline (and print the table).

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
    for i, name in enumerate(baselines, start=1):
        key = {"preset": preset, "seed": seed, "epochs": epochs}
        metrics = _baseline(root / "runs" / name, store, state, name, key,
                            f"[3/3] baseline {i}/{len(baselines)}: {name}", progress)
        rows.append({"baseline": name, **metrics})
    _say(table(rows), True)
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
        _say(f"[1/3] writing a {preset} synthetic release to {raw}", progress)
        state.set("release", key)
        write_release(raw, preset=preset, seed=seed, overwrite=True, progress=progress)
    rebuild = _changed(state, "store", key, progress) or changed
    if rebuild or not (store / "manifest.json").exists() or (store / "_build").exists():
        _say(f"[2/3] building the store {store}", progress)
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
