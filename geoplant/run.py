"""``geoplant run``: execute a named baseline (``baselines/<name>.yaml``) with papermill.

A baseline file names a notebook and its parameters::

    name: mme-multimodal
    notebook: 03_multimodal.ipynb
    description: Multimodal fusion (MME) of Sentinel-2, Landsat, climate and env encoders.
    parameters: {modalities: [sentinel2, landsat, climate, env], epochs: 6}

``geoplant run NAME --data STORE --out DIR [-p KEY VALUE]... [--nproc N] [--fresh]`` saves the
executed notebook, the ``metrics.json`` it writes and a model card (``MODEL_CARD.md``: data
sources and citation, method, initial weights, parameters, metrics, hardware, duration) in
``DIR``.

``--nproc N`` trains on N processes (DDP; one per GPU on CUDA, Gloo on CPU). The notebook
still runs as one papermill kernel: its ``fit_torch`` step starts N torchrun workers,
waits for them, and predicts with the weights they trained, so the executed notebook,
figures and metrics are the same as in a one-process run (``metrics.json`` records
``world_size`` and ``device``). Rerunning into the same ``--out`` resumes from its
checkpoints when the settings are the same, and stops with a one-line error when they are
not; ``--fresh`` discards them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from geoplant import __version__
from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text

_CITATION = ("Picek L., Botella C., Servajean M., et al. GeoPlant: Spatial Plant Species "
             "Prediction Dataset. NeurIPS 2024 Datasets and Benchmarks (arXiv:2408.13928).")


def _repo_dir(name: str) -> Path:
    """``baselines/`` or ``notebooks/``: next to the package (checkout) or packaged."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / name, here / name):
        if candidate.is_dir():
            return candidate.resolve()
    raise GeoplantError(f"no {name}/ folder found", path=here.parent,
                        fix="run from a geoplant checkout (pip install -e .)")


def baselines_dir() -> Path:
    """Folder of the named baselines."""
    return Path(os.environ.get("GEOPLANT_BASELINES", _repo_dir("baselines")))


def list_baselines() -> dict[str, dict[str, Any]]:
    """All baselines by name (sorted)."""
    out = {}
    for path in sorted(baselines_dir().glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        out[spec["name"]] = {**spec, "_file": str(path)}
    return out


def _coerce(value: str) -> Any:
    """A CLI parameter value parsed as YAML (numbers, booleans, lists), else the string."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def run_baseline(name: str, data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 parameters: dict[str, Any] | None = None, progress: bool = True,
                 kernel_name: str | None = None, nproc: int | None = None,
                 fresh: bool = False) -> dict[str, Any]:
    """Execute a baseline notebook with papermill; return its metrics.

    Parameters
    ----------
    name
        Baseline name (a ``baselines/*.yaml``).
    data
        Store folder (``geoplant build``) or URL.
    out
        Output folder: executed notebook, ``metrics.json``, ``MODEL_CARD.md``.
    parameters
        Overrides of the baseline's parameters.
    progress
        Show papermill's cell progress bar and the notebook's printed output (epoch
        summaries) as it runs; the notebook's own bars follow it too.
    kernel_name
        Jupyter kernel (default: the current Python's ``python3`` kernel).
    nproc
        Training processes (the notebook parameter ``nproc``; see the module docstring).
    fresh
        Discard the checkpoints of an earlier run in ``out`` (parameter ``fresh``).

    Raises
    ------
    GeoplantError
        An unknown baseline, a bad ``data`` or ``out``, or a failing notebook: a
        :class:`GeoplantError` raised inside it comes back as its own one line.
    """
    import papermill as pm

    baselines = list_baselines()
    if name not in baselines:
        raise GeoplantError(f"unknown baseline {name!r}",
                            fix=f"use one of: {', '.join(baselines)}")
    spec = baselines[name]
    notebook = _repo_dir("notebooks") / spec["notebook"]
    out_dir = Path(out).expanduser().absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GeoplantError(f"cannot create the output folder ({err.strerror})", path=out_dir,
                            fix="choose a writable --out") from None
    from geoplant.store import open_store

    store = open_store(data)  # fail early, with a clear message, on a bad --data
    params = {**spec.get("parameters", {}), **(parameters or {}),
              "data": str(data), "out_dir": str(out_dir), "baseline": name}
    if nproc is not None:
        if nproc < 1:
            raise GeoplantError(f"--nproc must be >= 1, got {nproc}")
        params["nproc"] = int(nproc)
    if fresh:
        params["fresh"] = True
    started = time.perf_counter()
    executed = out_dir / f"{name}.ipynb"
    _execute(pm, name, notebook, executed, params, progress=progress, kernel_name=kernel_name)
    seconds = time.perf_counter() - started
    metrics_file = out_dir / "metrics.json"
    if not metrics_file.exists():
        raise GeoplantError("the notebook wrote no metrics.json", path=executed,
                            fix="the notebook's last cell must call geoplant.experiment."
                                "write_metrics")
    metrics = json.loads(metrics_file.read_text())
    metrics.setdefault("duration_s", round(seconds, 1))
    atomic_write_text(metrics_file, json.dumps(metrics, indent=1) + "\n")
    atomic_write_text(out_dir / "MODEL_CARD.md",
                      model_card(name, spec, params, metrics, store.manifest, seconds))
    return metrics


def _execute(pm: Any, name: str, notebook: Path, executed: Path, params: dict[str, Any], *,
             progress: bool, kernel_name: str | None) -> None:
    """Run the notebook with papermill; its printed output reaches our stdout when
    ``progress``. A failing cell becomes one GeoplantError line (the notebook's own
    GeoplantError message as is: it already says what to do)."""
    try:
        pm.execute_notebook(str(notebook), str(executed), parameters=params,
                            progress_bar=progress, kernel_name=kernel_name,
                            cwd=str(notebook.parent),
                            stdout_file=sys.stdout if progress else None)
    except pm.PapermillExecutionError as err:
        if err.ename == "GeoplantError":
            raise GeoplantError(f"baseline {name!r}: {err.evalue}") from None
        raise GeoplantError(f"baseline {name!r} failed in cell {err.exec_count}: "
                            f"{err.ename}: {err.evalue}", path=executed,
                            fix="open the executed notebook to see the failing cell") from None


def _hardware() -> str:
    import torch

    cpu = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"{cpu}; GPU: {names}"
    return cpu


def _weights_line(metrics: dict[str, Any]) -> str:
    """The initial weights of each encoder (they change results: ImageNet or random)."""
    sources = metrics.get("weights_source")
    if not sources:
        return ""
    if isinstance(sources, dict):
        sources = ", ".join(f"{m}: {src}" for m, src in sources.items())
    return f" Initial weights: {sources}."


def _training_line(metrics: dict[str, Any]) -> str:
    """Where training ran: processes and device."""
    world = metrics.get("world_size", 1)
    device = metrics.get("device", "cpu")
    return f"{world} process{'es' if world != 1 else ''} on {device}"


def model_card(name: str, spec: dict[str, Any], params: dict[str, Any],
               metrics: dict[str, Any], manifest: dict[str, Any], seconds: float) -> str:
    """A Markdown model card for an executed baseline."""
    synthetic = (Path(manifest.get("raw_root", "")) / "truth").is_dir()
    data_line = ("a synthetic GeoPlant world written by `geoplant sample` (known truth)"
                 if synthetic else "the GeoPlant / GeoLifeCLEF 2024 data")
    counts = manifest.get("counts", {})
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in metrics.items() if not isinstance(v, dict | list))
    shown = {k: v for k, v in params.items() if k not in ("data", "out_dir")}
    return f"""# Model card: {name}

{spec.get("description", "")}

## Data
- Source: {data_line}; layout `{manifest.get("layout")}`, store built by
  {manifest.get("created_by")}.
- Surveys: {counts.get("pa_train_surveys", "?")} PA train; species: {counts.get("species", "?")}.
- Citation: {_CITATION} Presence-absence surveys from the European Vegetation Archive,
  presence-only records from GBIF. Licence: MIT (dataset and code, per the GeoPlant docs).

## Method
Notebook `{spec["notebook"]}` executed with papermill.{_weights_line(metrics)} Parameters:

```json
{json.dumps(shown, indent=1, default=str)}
```

## Metrics
| metric | value |
|---|---|
{rows}

## Run
- Hardware: {_hardware()}
- Training: {_training_line(metrics)}
- Duration: {seconds:.1f} s
- Software: geoplant {__version__}, Python {platform.python_version()}
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` command's options."""
    parser.add_argument("name", nargs="?", help="baseline name (see --list)")
    parser.add_argument("--data", help="store folder built by `geoplant build`")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("KEY", "VALUE"), help="override a parameter (repeatable)")
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="train on N processes (DDP through torchrun; one per GPU)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the checkpoints of an earlier run in --out and start over")
    parser.add_argument("--list", action="store_true", help="list the baselines and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant run``."""
    if args.list or not args.name:
        for name, spec in list_baselines().items():
            print(f"{name:<22} {spec['notebook']:<26} {spec.get('description', '')}")
        return 0 if args.list else 2
    if not args.data or not args.out:
        raise GeoplantError("--data and --out are required",
                            fix="geoplant run NAME --data STORE --out DIR")
    params = {key: _coerce(value) for key, value in args.parameter}
    metrics = run_baseline(args.name, args.data, args.out, parameters=params,
                           progress=not args.quiet, nproc=args.nproc, fresh=args.fresh)
    shown = {k: v for k, v in metrics.items()
             if isinstance(v, int | float) and not isinstance(v, bool)}
    print(f"{args.name}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in shown.items()))
    print(f"executed notebook, metrics.json and MODEL_CARD.md in {Path(args.out).absolute()}")
    return 0
